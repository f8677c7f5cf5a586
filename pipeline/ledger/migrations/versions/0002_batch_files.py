"""Batches keep the sha256 of each file of their workspace folder, so the hash chain covers them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

The column is nullable: batches recorded before this revision have no file hashes, and their
ledger entries (whose payload had no ``files``) still verify, because ``chain.batch_payload``
leaves ``files`` out when it is NULL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("files", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    # Dropping the column would leave every batch entry recorded since unverifiable.
    raise RuntimeError(
        "The ledger's file hashes are not downgraded: the hash chain covers them, so dropping "
        "them would make every batch recorded since revision 0002 fail verification."
    )
