"""The one registry of detectors. Config, CLI, reports and the conformance tests all read it.

Adding a detector = one module + one line here + it passes tests/test_detector_conformance.py.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline.detectors.base import SCORE_COLUMNS, Detector, FeatureSpec, conformal_pvalues
from pipeline.detectors.duplicates import DuplicateFlood
from pipeline.detectors.influence import RoniInfluence
from pipeline.detectors.labels import LabelConsistency
from pipeline.detectors.outliers import FeatureOutlier
from pipeline.detectors.triggers import TriggerPattern
from pipeline.errors import PoisonguardError

DETECTORS: dict[str, type[Detector]] = {
    FeatureOutlier.name: FeatureOutlier,
    LabelConsistency.name: LabelConsistency,
    RoniInfluence.name: RoniInfluence,
    TriggerPattern.name: TriggerPattern,
    DuplicateFlood.name: DuplicateFlood,
}

# RONI's per-row influence is registered but not on by default: on HMDA's noisy labels its
# single-row AUROC is ~0.5 (0.94 on breast cancer); groups get exact RONI in every scan instead.
DEFAULT_DETECTORS: dict[str, dict[str, Any]] = {"outliers": {}, "label_consistency": {}, "trigger": {},
                                                "duplicates": {}}


def build_detectors(config: dict[str, dict[str, Any]]) -> dict[str, Detector]:
    """Instantiate detectors from ``{name: params}``; unknown names and parameters fail clearly."""
    detectors = {}
    for name, params in config.items():
        if name not in DETECTORS:
            raise PoisonguardError(f"Unknown detector {name!r}; known detectors: {', '.join(DETECTORS)}.")
        cls = DETECTORS[name]
        try:
            detectors[name] = cls(**(params or {}))
        except TypeError:
            allowed = ", ".join(cls._parameter_constraints)
            raise PoisonguardError(f"Detector {name!r} got unknown parameters {sorted(params)}; it takes {allowed}.") from None
    return detectors


def fit_all(detectors: dict[str, Detector], reference: pd.DataFrame, spec: FeatureSpec,
            holdout: pd.DataFrame | None = None) -> dict[str, Detector]:
    return {name: detector.fit(reference, spec, holdout) for name, detector in detectors.items()}


def score_all(detectors: dict[str, Detector], batch: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {name: detector.score(batch) for name, detector in detectors.items()}


__all__ = ["DETECTORS", "DEFAULT_DETECTORS", "SCORE_COLUMNS", "Detector", "FeatureSpec",
           "build_detectors", "conformal_pvalues", "fit_all", "score_all"]
