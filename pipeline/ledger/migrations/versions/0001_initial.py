"""The ledger's first schema: batches, row decisions, review actions and the hash chain.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Written out in full rather than imported from ``models.py``: a migration is a snapshot of the
schema at one point in history, and must not change when the models do.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("dataset", sa.String(128), nullable=False),
        sa.Column("file", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("submitter", sa.Text(), nullable=False),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("scanned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("quarantined", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
        sa.UniqueConstraint("dataset", "sha256", name="uq_batches_dataset_sha256"),
    )
    op.create_table(
        "row_decisions",
        sa.Column("id", sa.String(220), nullable=False),
        sa.Column("batch_id", sa.String(200), nullable=False),
        sa.Column("dataset", sa.String(128), nullable=False),
        sa.Column("row_number", sa.Integer(), nullable=False),
        sa.Column("initial_status", sa.String(16), nullable=False),
        sa.Column("suspicion", sa.Float(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_row_decisions"),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name="fk_row_decisions_batch_id_batches"),
        sa.UniqueConstraint("batch_id", "row_number", name="uq_row_decisions_batch_row"),
        sa.CheckConstraint("initial_status IN ('accepted', 'pending')", name="ck_row_decisions_initial_status"),
    )
    op.create_index("ix_row_decisions_dataset_status", "row_decisions", ["dataset", "initial_status"])
    op.create_table(
        "review_actions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("row_id", sa.String(220), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("by", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_review_actions"),
        sa.ForeignKeyConstraint(["row_id"], ["row_decisions.id"], name="fk_review_actions_row_id_row_decisions"),
        sa.UniqueConstraint("row_id", name="uq_review_actions_row_id"),
        sa.CheckConstraint("action IN ('release', 'reject')", name="ck_review_actions_action"),
        sa.CheckConstraint('length(trim("by")) > 0', name="ck_review_actions_by_not_blank"),
        sa.CheckConstraint("length(trim(reason)) > 0", name="ck_review_actions_reason_not_blank"),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("sequence", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(220), nullable=False),
        sa.Column("payload_digest", sa.String(64), nullable=False),
        sa.Column("recorded", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("sequence", name="pk_ledger_entries"),
        sa.UniqueConstraint("entry_hash", name="uq_ledger_entries_entry_hash"),
        sa.UniqueConstraint("kind", "subject", name="uq_ledger_entries_kind_subject"),
        sa.CheckConstraint("kind IN ('batch', 'decisions', 'review')", name="ck_ledger_entries_kind"),
    )


def downgrade() -> None:
    # Going below the first revision would drop the audit trail with the tables.
    raise RuntimeError(
        "The ledger's first schema is not downgraded: that would destroy its audit trail. "
        "Drop the database deliberately instead."
    )
