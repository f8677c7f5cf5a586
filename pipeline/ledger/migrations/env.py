"""Alembic's entry point for the ledger's migrations.

``pipeline.ledger.database.migrate`` runs it with the connection it has already opened (and
locked) in ``config.attributes["connection"]``; it works on SQLite files, in-memory SQLite and
PostgreSQL alike. There is no alembic.ini: the ledger is always migrated by poisonguard itself,
when it is opened.
"""

from __future__ import annotations

from alembic import context

from pipeline.ledger.database import VERSION_TABLE
from pipeline.ledger.models import Base

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "The ledger's migrations run when the ledger is opened (pipeline.ledger.Ledger.open), "
        "with a live connection; they are not run from the alembic command line."
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # not Alembic's default alembic_version: MLflow keeps its own revision there, and both may
    # share one database
    version_table=VERSION_TABLE,
    # SQLite cannot ALTER most constraints; batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
