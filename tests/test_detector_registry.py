"""The open detector contract: docs/detectors.md's worked example passes check_detector, a broken
detector is told what it broke, and detectors of other packages are found by entry point, with
one clear line when they clash or fail to load."""

from __future__ import annotations

import re

import pytest

from pipeline.config import Settings
from pipeline.detectors import (
    DEFAULT_DETECTORS,
    DETECTORS,
    DetectorRegistryError,
    build_detectors,
    clone,
    detector_class,
    register_detector,
)
from pipeline.detectors.checks import DetectorCheckFailed, check_detector
from pipeline.errors import PoisonguardError
from pipeline.params import InvalidParameter
from tests.conftest import docs_example

BLOCKS, PYPROJECT = docs_example()
PROJECT = PYPROJECT["project"]
EXAMPLE_NAME, EXAMPLE_TARGET = next(iter(PROJECT["entry-points"]["poisonguard.detectors"].items()))
EXAMPLE_MODULE = EXAMPLE_TARGET.partition(":")[0]


@pytest.fixture
def example():
    """The worked example's namespace, every code block of the page run in order (its
    ``check_detector`` calls too); the registry as it was afterwards."""
    registered = dict(DETECTORS)
    namespace: dict = {"__name__": "docs_detectors_example"}
    try:
        for block in BLOCKS:
            exec(compile(block, "docs/detectors.md", "exec"), namespace)
        yield namespace
    finally:
        DETECTORS.clear()
        DETECTORS.update(registered)


def test_the_docs_worked_example_runs_and_registers_its_detector(example):
    cls = example["FarFromMean"]
    assert DETECTORS[cls.name] is cls
    assert isinstance(build_detectors({cls.name: {"alpha": 0.05}})[cls.name], cls)


def test_check_detector_names_every_check_a_broken_detector_fails(example):
    class Remembers(example["FarFromMean"]):
        """Learns from the batch it scores, and takes its parameter positionally."""

        def __init__(self, alpha: float = 0.01) -> None:
            super().__init__(alpha=alpha)

        def _score(self, batch, explain):
            self.batches_seen_ = getattr(self, "batches_seen_", 0) + 1
            return super()._score(batch, explain)

    with pytest.raises(DetectorCheckFailed) as failed:
        check_detector(Remembers)
    lines = str(failed.value).splitlines()[1:]
    assert [line.split(":")[1] for line in lines] == ["params_are_keyword_only", "score_does_not_mutate"], lines


def test_parameters_come_from_the_signature_and_unknown_ones_are_named():
    detector = DETECTORS["trigger"](min_group=7)
    assert detector.get_params() == {"alpha": 0.01, "min_group": 7}
    copied = clone(detector)
    assert copied is not detector and copied.get_params() == detector.get_params()
    with pytest.raises(
        InvalidParameter,
        match=re.escape("TriggerPattern has no parameter 'min_grop'; its parameters are: alpha, min_group."),
    ):
        detector.set_params(min_grop=3)
    with pytest.raises(PoisonguardError, match="Detector 'trigger': TriggerPattern has no parameter 'x'"):
        build_detectors({"trigger": {"x": 1}})


def test_a_second_detector_with_a_taken_name_is_refused():
    class Another(DETECTORS["outliers"]):
        pass

    with pytest.raises(
        DetectorRegistryError,
        match=re.escape("Two detectors are named 'outliers': pipeline.detectors.outliers.FeatureOutlier and"),
    ):
        register_detector(Another)
    assert DETECTORS["outliers"].__name__ == "FeatureOutlier"


def test_an_installed_package_is_found_by_its_entry_point_and_passes_check_detector(install_package):
    install_package(PROJECT, {EXAMPLE_MODULE: BLOCKS[0]})
    assert EXAMPLE_NAME not in DETECTORS
    built = build_detectors({**DEFAULT_DETECTORS, EXAMPLE_NAME: {"alpha": 0.02}})
    cls = type(built[EXAMPLE_NAME])
    assert cls.__module__ == EXAMPLE_MODULE and DETECTORS[EXAMPLE_NAME] is cls
    assert built[EXAMPLE_NAME].get_params() == {"alpha": 0.02}
    check_detector(cls)


def test_built_in_detectors_never_load_entry_points(install_package):
    install_package(
        {
            "name": "broken-detector",
            "version": "1.0",
            "entry-points": {"poisonguard.detectors": {"broken": "broken_detector:Broken"}},
        },
        {"broken_detector": "raise ImportError('needs libfoo')\n"},
    )
    assert set(build_detectors(DEFAULT_DETECTORS)) == set(DEFAULT_DETECTORS)


def test_a_package_that_fails_to_load_is_one_line_naming_it(install_package):
    install_package(
        {
            "name": "broken-detector",
            "version": "1.0",
            "entry-points": {"poisonguard.detectors": {"broken": "broken_detector:Broken"}},
        },
        {"broken_detector": "raise ImportError('needs libfoo\\nand more')\n"},
    )
    with pytest.raises(DetectorRegistryError) as failed:
        build_detectors({"broken": {}})
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(
        "The detector 'broken' (broken_detector:Broken in broken-detector 1.0) failed to load: "
        "ImportError: needs libfoo and more."
    )


@pytest.mark.parametrize(
    "entry_points,expected",
    [
        (
            {"outliers": "clash_a:X", "mine": "clash_a:X"},
            "declares a detector 'outliers' (clash_a:X), the name of poisonguard's own FeatureOutlier",
        ),
        ({"mine": "clash_a:X"}, "Two installed packages declare a detector 'mine'"),
    ],
    ids=["builtin_name", "two_packages"],
)
def test_entry_points_that_claim_a_taken_name_fail_clearly(install_package, entry_points, expected):
    install_package(
        {"name": "clash-a", "version": "1.0", "entry-points": {"poisonguard.detectors": entry_points}}, {"clash_a": ""}
    )
    install_package(
        {"name": "clash-b", "version": "1.0", "entry-points": {"poisonguard.detectors": {"mine": "clash_b:Y"}}},
        {"clash_b": ""},
    )
    with pytest.raises(DetectorRegistryError, match=re.escape(expected)):
        detector_class("mine")


def test_an_unknown_name_lists_the_built_in_and_installed_detectors(install_package):
    install_package(PROJECT, {EXAMPLE_MODULE: BLOCKS[0]})
    with pytest.raises(
        DetectorRegistryError,
        match=f"Unknown detector 'outlier'; known detectors: .*outliers.*; installed: {EXAMPLE_NAME}\\.",
    ):
        build_detectors({"outlier": {}})


def test_the_operator_names_a_scans_detectors_in_the_environment():
    settings = Settings.from_environment("ws", {"POISONGUARD_DETECTORS": " outliers, far_from_mean ,outliers"})
    assert settings.detectors == {"outliers": {}, "far_from_mean": {}}
    assert Settings.from_environment("ws", {}).detectors == DEFAULT_DETECTORS
    with pytest.raises(PoisonguardError, match="POISONGUARD_DETECTORS must be comma-separated detector names"):
        Settings.from_environment("ws", {"POISONGUARD_DETECTORS": "outliers;rm -rf"})
