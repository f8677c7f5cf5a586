"""One conformance suite over every registered detector (the contract in pipeline/detectors/base.py).

Each detector's own tests cover only its maths; this file covers the contract, so adding a
detector to the registry puts it under every check here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from pipeline.detectors import DETECTORS, SCORE_COLUMNS, FeatureSpec
from pipeline.detectors.base import InvalidParameter
from pipeline.io import ROW_NUMBER
from pipeline.validation import column_kinds
from tests.conftest import SAMPLES


@pytest.fixture(scope="module")
def planted():
    """Trusted HMDA rows, and a batch of held-out clean rows with 12 planted far-off rows."""
    reference = pd.read_parquet(SAMPLES / "reference.parquet")
    batch = pd.read_parquet(SAMPLES / "holdout.parquet").head(200).reset_index(drop=True)
    rng = np.random.default_rng(7)
    poisoned = rng.choice(len(batch), size=12, replace=False)
    for col in ("pirat", "hirat", "lvrat", "unemp"):
        top = reference[col].quantile(0.999)
        batch.loc[poisoned, col] = top * rng.uniform(1.5, 2.0, size=len(poisoned))
    reference[ROW_NUMBER] = range(len(reference))
    batch[ROW_NUMBER] = range(len(batch))
    spec = FeatureSpec.from_kinds(column_kinds(reference), "deny", exclude=("afam",))
    truth = np.isin(np.arange(len(batch)), poisoned)
    return reference, batch, spec, truth


def _ids(name: str, check: str) -> str:
    return f"{name}:{check}"


CHECKS = ["score_before_fit_raises", "fit_returns_self", "one_result_per_row", "calibrated_in_unit_interval",
          "score_does_not_mutate", "refit_is_deterministic", "rejects_bad_parameter", "beats_chance_on_planted"]


@pytest.mark.parametrize("name,check", [(n, c) for n in DETECTORS for c in CHECKS],
                         ids=[_ids(n, c) for n in DETECTORS for c in CHECKS])
def test_detector_contract(name, check, planted):
    reference, batch, spec, truth = planted
    cls = DETECTORS[name]
    detector = cls()
    if check == "score_before_fit_raises":
        with pytest.raises(NotFittedError):
            detector.score(batch)
        return
    if check == "rejects_bad_parameter":
        key = next(iter(cls._parameter_constraints))
        setattr(detector, key, object())
        with pytest.raises(InvalidParameter, match=f"The '{key}' parameter of {cls.__name__} must be"):
            detector.fit(reference, spec)
        return
    assert detector.fit(reference, spec) is detector if check == "fit_returns_self" else True
    if check == "fit_returns_self":
        return
    detector.fit(reference, spec)
    result = detector.score(batch)
    if check == "one_result_per_row":
        assert list(result.columns) == SCORE_COLUMNS
        assert list(result[ROW_NUMBER]) == list(batch[ROW_NUMBER])
    elif check == "calibrated_in_unit_interval":
        assert result["calibrated"].between(0.0, 1.0).all()
        assert result["flagged"].dtype == bool
        assert (result.loc[result["flagged"], "reason"].str.len() > 0).all()
    elif check == "score_does_not_mutate":
        params = detector.get_params()
        state = {k: v for k, v in vars(detector).items() if k.endswith("_")}
        again = detector.score(batch)
        pd.testing.assert_frame_equal(result, again)
        assert detector.get_params() == params
        assert set(k for k in vars(detector) if k.endswith("_")) == set(state)
    elif check == "refit_is_deterministic":
        other = cls().fit(reference, spec).score(batch)
        pd.testing.assert_frame_equal(result, other)
    elif check == "beats_chance_on_planted":
        assert roc_auc_score(truth, result["score"]) > 0.9
        assert result["flagged"].to_numpy()[truth].mean() >= 0.75
        assert result["flagged"].to_numpy()[~truth].mean() <= 0.05
