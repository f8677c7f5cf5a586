"""The ledger's tables as SQLAlchemy 2.0 declarative models.

Every table is append-only: a row's current status is its initial decision overridden by at
most one review action, so nothing is ever updated in place or deleted, and every write is an
insert that the hash chain (``ledger_entries``) covers.

The schema itself is created by the Alembic migrations in ``migrations/versions/``, never by
``metadata.create_all``; ``tests/test_ledger.py`` checks that the two agree.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints, so that later migrations (and SQLite's batch mode) can address them by
# the same name on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

HASH_LENGTH = 64  # hex sha256


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Batch(Base):
    """One scanned batch of one dataset: what its summary.json says about where it came from."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(HASH_LENGTH))
    dataset: Mapped[str] = mapped_column(String(128))
    file: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    submitter: Mapped[str] = mapped_column(Text)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    scanned_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    rows: Mapped[int] = mapped_column(Integer)
    accepted: Mapped[int] = mapped_column(Integer)
    quarantined: Mapped[int] = mapped_column(Integer)
    # The sha256 of every file of the batch's workspace folder when it was committed (file name
    # -> hex digest): what the pre-retrain gate checks the workspace against. NULL for batches
    # recorded before revision 0002, which the gate therefore cannot vouch for.
    files: Mapped[dict[str, str] | None] = mapped_column(JSON(none_as_null=True), nullable=True)

    __table_args__ = (
        # A batch is the same batch when the same bytes arrive for the same dataset.
        UniqueConstraint("dataset", "sha256", name="uq_batches_dataset_sha256"),
    )


class RowDecision(Base):
    """The scan's decision on one row of a batch; written once, when the scan is recorded."""

    __tablename__ = "row_decisions"

    id: Mapped[str] = mapped_column(String(220), primary_key=True)  # "<batch id>:<row number>"
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"))
    dataset: Mapped[str] = mapped_column(String(128))  # copied from the batch: the steward's filter
    row_number: Mapped[int] = mapped_column(Integer)
    initial_status: Mapped[str] = mapped_column(String(16))
    suspicion: Mapped[float] = mapped_column(Float)
    reasons: Mapped[list[str]] = mapped_column(JSON)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (
        UniqueConstraint("batch_id", "row_number", name="uq_row_decisions_batch_row"),
        CheckConstraint("initial_status IN ('accepted', 'pending')", name="initial_status"),
        Index("ix_row_decisions_dataset_status", "dataset", "initial_status"),
    )


class ReviewActionRow(Base):
    """A steward's release or reject of one pending row. At most one per row, ever."""

    __tablename__ = "review_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # unique: two stewards acting on the same row at once cannot both be recorded
    row_id: Mapped[str] = mapped_column(ForeignKey("row_decisions.id"), unique=True)
    action: Mapped[str] = mapped_column(String(16))
    by: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("action IN ('release', 'reject')", name="action"),
        CheckConstraint('length(trim("by")) > 0', name="by_not_blank"),
        CheckConstraint("length(trim(reason)) > 0", name="reason_not_blank"),
    )


class LedgerEntry(Base):
    """One link of the hash chain: ``entry_hash = sha256(prev_hash + canonical JSON of
    {sequence, kind, subject, payload_digest})``; see ``chain.py``.

    ``recorded`` keeps a copy of what was written (the batch's fields, the review action, or a
    digest-free summary of a batch's decisions), so that ``verify`` can say what an edit changed,
    not only that something did.
    """

    __tablename__ = "ledger_entries"

    sequence: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(220))
    payload_digest: Mapped[str] = mapped_column(String(HASH_LENGTH))
    recorded: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    entry_hash: Mapped[str] = mapped_column(String(HASH_LENGTH), unique=True)

    __table_args__ = (
        CheckConstraint("kind IN ('batch', 'decisions', 'review')", name="kind"),
        UniqueConstraint("kind", "subject", name="uq_ledger_entries_kind_subject"),
    )
