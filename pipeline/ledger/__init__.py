"""The quarantine ledger: every scanned batch, the scan's decision on each of its rows, and each
steward's release or reject, in SQLite (default, ``<workspace>/ledger.sqlite``) or PostgreSQL
(``$POISONGUARD_DATABASE_URL``), hash-chained so that an edit made by hand in the database shows.

Wiring (for ``Settings`` and the CLI)::

    from pipeline.ledger import Ledger, ledger_url
    url = ledger_url(settings.workspace, os.environ)   # read once, next to the other settings
    with Ledger.open(url) as ledger:                    # creates or upgrades the schema
        ledger.record_scan(outputs.summary, outputs.scores, outputs.quarantined,
                           files=file_hashes(batch_folder))  # sha256 per workspace file, chained

Modules: ``models`` (tables), ``migrations/`` (Alembic, applied by ``Ledger.open``),
``database`` (URLs, engines, the write lock), ``intake`` (scan outputs → rows), ``chain`` (what
each entry's hash covers), ``verify`` (recomputing it), ``ledger`` (the API), ``records`` (what
the API returns). Every error is a ``PoisonguardError``: one line, exit code 2 in the CLI.
"""

from pipeline.ledger.database import DATABASE_URL_VARIABLE, ledger_url
from pipeline.ledger.errors import LedgerError, NotInLedger, ReviewRefused
from pipeline.ledger.ledger import Ledger
from pipeline.ledger.records import (
    BatchRecord,
    ChainHead,
    ReviewAction,
    ReviewRecord,
    RowRecord,
    RowStatus,
    parse_row_id,
)

__all__ = [
    "DATABASE_URL_VARIABLE",
    "Ledger",
    "ledger_url",
    "LedgerError",
    "NotInLedger",
    "ReviewRefused",
    "BatchRecord",
    "ChainHead",
    "ReviewAction",
    "ReviewRecord",
    "RowRecord",
    "RowStatus",
    "parse_row_id",
]
