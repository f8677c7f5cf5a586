"""What the ledger hands out: frozen records, detached from any database session.

Callers (CLI, review page, gate) never see ORM objects, so nothing they do can write to the
ledger by accident, and a record stays valid after its session is gone.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pipeline.ledger.errors import NotInLedger


class RowStatus(str, Enum):
    """Where a row stands. Only ``accepted`` and ``pending`` are ever stored (as the scan's
    initial decision); ``released`` and ``rejected`` are derived from the row's review action."""

    ACCEPTED = "accepted"
    PENDING = "pending"  # quarantined by the scan, awaiting a steward
    RELEASED = "released"  # a steward let it through to training
    REJECTED = "rejected"  # a steward confirmed it stays out


class ReviewAction(str, Enum):
    RELEASE = "release"
    REJECT = "reject"

    @property
    def outcome(self) -> RowStatus:
        return RowStatus.RELEASED if self is ReviewAction.RELEASE else RowStatus.REJECTED

    @property
    def past_tense(self) -> str:
        return "released" if self is ReviewAction.RELEASE else "rejected"


@dataclass(frozen=True)
class BatchRecord:
    """A scanned batch as recorded, with the current tally of its rows."""

    id: str  # printable and stable: the shortest free prefix (>= 12 hex) of sha256
    sha256: str
    dataset: str
    file: str
    source: str
    submitter: str
    mlflow_run_id: str | None
    scanned_at: dt.datetime  # UTC
    rows: int
    accepted: int  # by the scan
    quarantined: int  # by the scan
    pending: int  # quarantined rows not yet reviewed
    released: int
    rejected: int
    # sha256 of each file of the batch's workspace folder at commit; None if recorded before
    # the ledger kept them (revision 0002)
    files: dict[str, str] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class ReviewRecord:
    id: int
    row_id: str
    action: ReviewAction
    by: str
    reason: str
    at: dt.datetime  # UTC


@dataclass(frozen=True)
class RowRecord:
    """One row of a batch: the scan's decision and, once reviewed, the steward's."""

    id: str  # "<batch id>:<row number>"
    batch_id: str
    batch_sha256: str
    dataset: str
    row_number: int  # 0-based position in the batch file, as in the workspace's parquet files
    status: RowStatus  # current, derived
    initial_status: RowStatus  # accepted or pending, as the scan decided
    suspicion: float
    reasons: tuple[str, ...]
    scores: dict[str, Any] = field(hash=False)  # per detector: calibrated and "<name>_raw"
    review: ReviewRecord | None = None


@dataclass(frozen=True)
class ChainHead:
    """The last entry of the hash chain. Copied somewhere the database's writers cannot reach
    (an MLflow tag, a signed report), it lets ``verify`` notice entries cut off the end."""

    sequence: int
    entry_hash: str


_ROW_ID = re.compile(r"^([0-9a-f]{12,64}(?:-[A-Za-z0-9._-]+)?):(0|[1-9][0-9]*)$")


def row_id(batch_id: str, row_number: int) -> str:
    return f"{batch_id}:{row_number}"


def parse_row_id(value: str) -> tuple[str, int]:
    """``"3f2a9c1b0d4e:12"`` → ``("3f2a9c1b0d4e", 12)``."""
    match = _ROW_ID.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise NotInLedger(
            f"{value!r} is not a row id; row ids look like '3f2a9c1b0d4e:12' "
            "(the batch id, a colon, the row number in the batch file)."
        )
    return match.group(1), int(match.group(2))
