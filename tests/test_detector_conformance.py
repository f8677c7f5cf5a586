"""Every registered detector through the public conformance suite (pipeline/detectors/checks.py),
one test per detector and check, so a failure reads ``label_consistency:score_does_not_mutate``.

Each detector's own tests cover only its maths; the suite covers the contract, so registering a
detector puts it under every check. The checks of one detector share one fit (``Trial``).
"""

from __future__ import annotations

import pytest

from pipeline.detectors import DETECTORS
from pipeline.detectors.checks import CHECKS, Trial, planted_data, run_check

BUILTIN = dict(DETECTORS)  # as registered at collection: a test that registers more restores it


@pytest.fixture(scope="module")
def trials():
    data = planted_data()
    made: dict[str, Trial] = {}

    def trial(name: str) -> Trial:
        if name not in made:
            made[name] = Trial(BUILTIN[name], data)
        return made[name]

    return trial


@pytest.mark.parametrize(
    "name,check", [(n, c) for n in BUILTIN for c in CHECKS], ids=[f"{n}:{c}" for n in BUILTIN for c in CHECKS]
)
def test_detector_contract(name, check, trials):
    run_check(check, trials(name))
