"""The one registry of detectors. Config, CLI, reports and the conformance tests all read it.

Adding a detector = one module + one line here + it passes tests/test_detector_conformance.py.
"""

from __future__ import annotations

from typing import Any, Callable

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


# Scores a list of chunks with the same detectors: in turn (``score_each``), on threads, or on a
# Dask cluster (the ingest flow passes its Prefect task runner's map).
ChunkMap = Callable[[dict[str, Detector], list[pd.DataFrame]], list[dict[str, pd.DataFrame]]]


def score_each(detectors: dict[str, Detector], chunks: list[pd.DataFrame]) -> list[dict[str, pd.DataFrame]]:
    return [score_all(detectors, chunk) for chunk in chunks]


def score_in_chunks(detectors: dict[str, Detector], batch: pd.DataFrame, chunk_rows: int,
                    map_chunks: ChunkMap = score_each) -> dict[str, pd.DataFrame]:
    """``score_all``, with chunkable detectors fed ``chunk_rows`` rows at a time.

    A ``chunkable`` detector's score of a row depends on that row alone (the conformance suite
    checks it), so chunks change nothing but peak memory, and may be scored in parallel. The
    others (floods, triggers, RONI) compare batch rows with each other and see the whole batch.
    """
    row_scoped = {name: d for name, d in detectors.items() if d.chunkable}
    scores: dict[str, pd.DataFrame] = {}
    if row_scoped:
        chunks = [batch.iloc[start:start + chunk_rows] for start in range(0, len(batch), chunk_rows)] or [batch]
        parts = map_chunks(row_scoped, chunks)
        scores = {name: pd.concat([part[name] for part in parts], ignore_index=True) for name in row_scoped}
    scores.update(score_all({name: d for name, d in detectors.items() if name not in row_scoped}, batch))
    return {name: scores[name] for name in detectors}


__all__ = ["DETECTORS", "DEFAULT_DETECTORS", "SCORE_COLUMNS", "ChunkMap", "Detector", "FeatureSpec",
           "build_detectors", "conformal_pvalues", "fit_all", "score_all", "score_each", "score_in_chunks"]
