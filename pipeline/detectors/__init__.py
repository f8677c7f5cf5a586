"""The detectors: the contract (``base``), the one registry (``registry``), poisonguard's own
detectors (a module per family) and how a scan runs them over a batch in chunks.

Adding a detector = a ``RowDetector`` or ``GroupDetector`` subclass registered with
``@register_detector`` (here: a module imported below; in another package: an entry point in
the ``poisonguard.detectors`` group), that passes ``check_detector`` (pipeline/detectors/checks.py).
docs/detectors.md has the contract and a worked example.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import DEFAULT_DETECTORS
from pipeline.detectors.base import (
    SCORE_COLUMNS,
    Detector,
    FeatureSpec,
    GroupDetector,
    RowDetector,
    RowFetch,
    Summary,
    clone,
    concat_summaries,
    conformal_pvalues,
)

# poisonguard's own detectors, imported for their @register_detector
from pipeline.detectors.duplicates import DuplicateFlood  # noqa: F401
from pipeline.detectors.influence import RoniInfluence  # noqa: F401
from pipeline.detectors.labels import LabelConsistency  # noqa: F401
from pipeline.detectors.outliers import FeatureOutlier  # noqa: F401
from pipeline.detectors.registry import (
    DETECTORS,
    ENTRY_POINT_GROUP,
    DetectorRegistryError,
    detector_class,
    find_detector_class,
    register_detector,
)
from pipeline.detectors.triggers import TriggerPattern  # noqa: F401
from pipeline.errors import PoisonguardError
from pipeline.io import ROW_NUMBER
from pipeline.params import InvalidParameter


def build_detectors(config: dict[str, dict[str, Any]]) -> dict[str, Detector]:
    """Instantiate detectors from ``{name: params}``, poisonguard's own or installed packages'
    (see ``registry``); unknown names and parameters fail clearly."""
    detectors = {}
    for name, params in config.items():
        cls = detector_class(name)
        try:
            cls._check_param_names(params or {})
        except InvalidParameter as error:
            raise PoisonguardError(f"Detector {name!r}: {error}") from None
        detectors[name] = cls(**(params or {}))
    return detectors


def fit_all(
    detectors: dict[str, Detector], reference: pd.DataFrame, spec: FeatureSpec, holdout: pd.DataFrame | None = None
) -> dict[str, Detector]:
    return {name: detector.fit(reference, spec, holdout) for name, detector in detectors.items()}


def score_all(detectors: dict[str, Detector], batch: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {name: detector.score(batch) for name, detector in detectors.items()}


# What one chunk of a batch gives each detector: a row-scoped detector's scores of its rows, a
# batch-scoped detector's summary of them.
ChunkResult = dict[str, pd.DataFrame | Summary]
# Reads chunks with the same detectors (``read_chunk``): in turn (``read_each``), on threads, or
# on a Dask cluster (the ingest flow passes its Prefect task runner). Chunks come as they are
# read, so a map should hold only the few it is working on.
ChunkMap = Callable[[dict[str, Detector], Iterable[pd.DataFrame]], list[ChunkResult]]


def read_chunk(detectors: dict[str, Detector], chunk: pd.DataFrame) -> ChunkResult:
    """One pass over a chunk: row-scoped detectors score it (without reasons: ``explain_rows``
    gives those of the rows a scan holds), batch-scoped ones summarise it."""
    return {name: d.score(chunk, explain=False) if d.chunkable else d.summarise(chunk) for name, d in detectors.items()}


def explain_rows(
    detectors: dict[str, Detector], scores: dict[str, pd.DataFrame], fetch: RowFetch
) -> Callable[[str, np.ndarray], list[str]]:
    """The reasons ``name`` gives the batch rows at ``positions``: a row-scoped detector scores
    them again (a row's score is its own, so its reason is the one a whole-batch score gives);
    a batch-scoped one gave its reasons with its scores."""

    def explain(name: str, positions: np.ndarray) -> list[str]:
        if not len(positions):
            return []
        if detectors[name].chunkable:
            return detectors[name].score(fetch(positions))["reason"].to_list()
        return scores[name].set_index(ROW_NUMBER)["reason"].reindex(positions).to_list()

    return explain


def read_each(detectors: dict[str, Detector], chunks: Iterable[pd.DataFrame]) -> list[ChunkResult]:
    return [read_chunk(detectors, chunk) for chunk in chunks]


def score_in_chunks(
    detectors: dict[str, Detector], chunks: Iterable[pd.DataFrame], fetch: RowFetch, map_chunks: ChunkMap = read_each
) -> dict[str, pd.DataFrame]:
    """``score_all`` of the batch that ``chunks`` (consecutive slices of it) make up, reading them
    with ``read_chunk``, in parallel where ``map_chunks`` is; ``fetch`` returns batch rows by
    position.

    A row-scoped detector's score of a row depends on that row alone, and a batch-scoped one's
    summaries of consecutive chunks concatenate to the whole batch's (the conformance suite
    checks both), so chunks change nothing but peak memory.
    """
    return combine_chunks(detectors, map_chunks(detectors, chunks), fetch)


def combine_chunks(detectors: dict[str, Detector], parts: list[ChunkResult], fetch: RowFetch) -> dict[str, pd.DataFrame]:
    """Every detector's scores of the batch, from what its chunks gave (``read_chunk``, in batch
    order); ``fetch`` returns batch rows by position, for the few a batch-scoped detector must
    see whole. Each detector's parts are let go once combined."""
    scores: dict[str, pd.DataFrame] = {}
    for name, detector in detectors.items():
        mine = [part.pop(name) for part in parts]
        scores[name] = (
            pd.concat(mine, ignore_index=True)
            if detector.chunkable
            else detector.score_summary(concat_summaries(mine), fetch)
        )
    return scores


__all__ = [
    "DETECTORS",
    "DEFAULT_DETECTORS",
    "ENTRY_POINT_GROUP",
    "SCORE_COLUMNS",
    "ChunkMap",
    "ChunkResult",
    "Detector",
    "DetectorRegistryError",
    "FeatureSpec",
    "GroupDetector",
    "RowDetector",
    "RowFetch",
    "Summary",
    "build_detectors",
    "clone",
    "combine_chunks",
    "conformal_pvalues",
    "detector_class",
    "find_detector_class",
    "fit_all",
    "read_chunk",
    "read_each",
    "register_detector",
    "score_all",
    "score_in_chunks",
    "explain_rows",
]
