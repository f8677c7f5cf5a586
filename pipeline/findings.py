"""Row-level and batch-level findings: one long table, collected from every check before deciding."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import pandas as pd

FINDING_COLUMNS = ["row_number", "check", "column", "reason_code", "observed", "message"]


class ReasonCode(str, Enum):
    """Why a row (or a whole batch) was held. Stable strings: reports and the ledger store them."""

    NOT_A_NUMBER = "not_a_number"
    NON_FINITE = "non_finite"
    MISSING_VALUE = "missing_value"
    OUT_OF_RANGE = "out_of_range"
    NOT_IN_DOMAIN = "not_in_domain"
    INTEGRITY = "integrity"
    EXPECTATION = "expectation"
    MISSING_COLUMN = "missing_column"
    UNEXPECTED_COLUMN = "unexpected_column"
    WRONG_TYPE = "wrong_type"
    BATCH_EXPECTATION = "batch_expectation"
    # id and time columns (pipeline.roles)
    MISSING_ID = "missing_id"
    DUPLICATE_ID = "duplicate_id"
    BAD_ID_FORMAT = "bad_id_format"
    BAD_TIME = "bad_time"
    FUTURE_TIME = "future_time"
    OUTSIDE_WINDOW = "outside_window"
    DETECTOR = "detector"
    # held because the batch verdict estimates this many poisoned rows and the row ranks among them
    BATCH_EVIDENCE = "batch_evidence"


# Reasons that come from scores, not from rules the row breaks: a row held only for them keeps
# its fused suspicion instead of 1, and reviewers can release it.
SOFT_REASONS = frozenset({ReasonCode.DETECTOR.value, ReasonCode.BATCH_EVIDENCE.value})


@dataclass(frozen=True)
class BatchFinding:
    """A failure of the batch as a whole: every row is held with this reason."""

    check: str
    reason_code: ReasonCode
    message: str


def findings_frame(records: list[dict]) -> pd.DataFrame:
    """Build the long findings table; ``observed`` is kept as text so mixed values fit one column
    (each value's own text: a column of them all numbers would make an int a float first)."""
    frame = pd.DataFrame.from_records(records, columns=FINDING_COLUMNS)
    frame["row_number"] = frame["row_number"].astype("int64")
    frame["observed"] = pd.Series(
        [None if r["observed"] is None else str(r["observed"]) for r in records], index=frame.index, dtype=object
    )
    frame["reason_code"] = frame["reason_code"].map(lambda c: ReasonCode(c).value)
    return frame


def empty_findings() -> pd.DataFrame:
    return findings_frame([])
