"""The registry of batch-level checks (drift, segment label-rate shift) and source history."""

from __future__ import annotations

import pandas as pd

from pipeline.alarms.base import Alarm, BatchCheck, CheckResult
from pipeline.alarms.drift import BatchDrift
from pipeline.alarms.history import SourceRecord, source_history
from pipeline.alarms.segments import SegmentShift
from pipeline.detectors.base import FeatureSpec

BATCH_CHECKS: dict[str, type[BatchCheck]] = {BatchDrift.name: BatchDrift, SegmentShift.name: SegmentShift}


def fit_batch_checks(reference: pd.DataFrame, spec: FeatureSpec, segments: tuple[str, ...]) -> dict[str, BatchCheck]:
    return {name: cls().fit(reference, spec, segments) for name, cls in BATCH_CHECKS.items()}


def run_batch_checks(checks: dict[str, BatchCheck], batch: pd.DataFrame) -> list[CheckResult]:
    return [check.check(batch) for check in checks.values()]


__all__ = [
    "Alarm",
    "BATCH_CHECKS",
    "BatchCheck",
    "CheckResult",
    "SourceRecord",
    "fit_batch_checks",
    "run_batch_checks",
    "source_history",
]
