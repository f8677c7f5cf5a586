"""Where the ledger lives and how it is written to: URLs, engines, write transactions, and the
Alembic migrations that create and upgrade its schema.

Writes are serialised. Each ledger entry names the hash of the one before it, so two writers
must never both append after the same entry: on PostgreSQL every write transaction first takes
a transaction-scoped advisory lock, on SQLite it starts with ``BEGIN IMMEDIATE`` (the file's
write lock). The unique constraints stay as the last line of defence. The loser of a race waits
for the winner's commit and then sees its result, so "already released by alice" is what it
reports, not a database error.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

# The ledger's URL is a setting, read with the others at the edge (Settings.from_environment)
from pipeline.config import DATABASE_URL_VARIABLE, ledger_url  # noqa: F401  (re-exported)
from pipeline.ledger.errors import LedgerError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SUPPORTED_BACKENDS = ("sqlite", "postgresql")

# The newest revision in migrations/versions (tests/test_ledger.py checks it against Alembic's
# head): a ledger at it is opened without importing Alembic.
HEAD_REVISION = "0002"
VERSION_TABLE = "poisonguard_ledger_version"  # the ledger's Alembic revision (MLflow's is in alembic_version)
_WRITE = "poisonguard_ledger_write"  # execution option marking a write transaction
# pg_advisory_xact_lock takes a signed 64-bit key; one derived from a name no other program uses
_ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"poisonguard ledger").digest()[:8], "big", signed=True)
_SQLITE_BUSY_TIMEOUT_S = 30  # how long a writer waits for another's commit before giving up


def parse_url(url: str | URL) -> URL:
    """A SQLAlchemy URL for a supported backend; plain ``postgresql://`` means psycopg 3,
    the driver poisonguard installs."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        # The text may hold a password, so it is not echoed.
        raise LedgerError(
            f"The ledger database URL is not a URL (set {DATABASE_URL_VARIABLE} to e.g. "
            "postgresql+psycopg://user@host:5432/dbname, or leave it unset for SQLite in the workspace)."
        ) from None
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
        raise LedgerError(
            f"The ledger runs on SQLite or PostgreSQL; {display_url(parsed)} is neither "
            f"(set {DATABASE_URL_VARIABLE} to postgresql+psycopg://... or leave it unset)."
        )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def display_url(url: URL) -> str:
    """The URL with its password, and any password or token in its query, shown as ***."""
    from pipeline.redaction import redact

    return redact(url.render_as_string(hide_password=True))


def ledger_exists(url: str | URL) -> bool:
    """False only where no ledger was ever written: a SQLite file that is not there. A read-only
    command (``review list``) need not create one to find it empty."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite" or is_memory(parsed):
        return True
    return Path(str(parsed.database)).exists()


def is_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def create_ledger_engine(url: URL) -> Engine:
    """An engine whose write transactions are serialised (see the module docstring)."""
    try:
        engine = _sqlite_engine(url) if url.get_backend_name() == "sqlite" else create_engine(url, pool_pre_ping=True)
    except (NoSuchModuleError, ImportError) as exc:
        raise LedgerError(
            f"Cannot use the ledger database {display_url(url)}: its driver is not installed ({exc})."
        ) from None
    return engine


def _sqlite_engine(url: URL) -> Engine:
    kwargs: dict[str, Any] = {"connect_args": {"timeout": _SQLITE_BUSY_TIMEOUT_S}}
    if is_memory(url):
        # One shared connection: otherwise every pooled connection would see its own empty database.
        kwargs = {"connect_args": {"check_same_thread": False}, "poolclass": StaticPool}
    elif url.database:
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _take_over_transactions(dbapi_connection: Any, _record: Any) -> None:
        # Python's sqlite3 would otherwise begin transactions only before DML, and never with
        # IMMEDIATE; SQLAlchemy's documented recipe hands BEGIN to us (see _begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


@contextlib.contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session in a transaction that holds the ledger's write lock until it commits (on
    leaving the block) or rolls back (on an exception)."""
    with Session(engine.execution_options(**{_WRITE: True}), expire_on_commit=False) as session, session.begin():
        if engine.dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        yield session


def migrate(engine: Engine, url: URL) -> None:
    """Bring the schema to the newest revision shipped in ``migrations/versions``: creates it
    in an empty database, does nothing on one already current. Runs under the write lock, so
    two processes opening a new ledger at once do not both create it. A ledger already at
    ``HEAD_REVISION`` costs one query: Alembic is imported only when there is work for it."""
    if current_revision(engine) == HEAD_REVISION:
        return
    import alembic.command
    import alembic.config
    import alembic.util

    config = alembic.config.Config()
    # configparser interpolates '%'; a path containing one must be escaped
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    try:
        with write_session(engine) as session:
            config.attributes["connection"] = session.connection()
            _adopt_version_table(session.connection(), config)
            alembic.command.upgrade(config, "head")
    except alembic.util.CommandError as exc:
        raise LedgerError(
            f"Cannot bring the ledger database {display_url(url)} to this poisonguard's schema: {exc} "
            "(a database written by a newer poisonguard needs that version)."
        ) from None
    except SQLAlchemyError as exc:
        raise LedgerError(f"Cannot open the ledger database {display_url(url)}: {first_line(exc, url)}") from None


def current_revision(engine: Engine) -> str | None:
    """The ledger's schema revision, or None when it has none yet (or cannot be read: then
    ``migrate`` goes the long way and reports what is wrong)."""
    try:
        with engine.connect() as connection:
            return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    except SQLAlchemyError:
        return None


def _adopt_version_table(connection: Connection, config: Any) -> None:
    """A ledger made before the ledger had its own version table kept its revision in
    ``alembic_version``, where MLflow keeps its own ("Can't locate revision identified by
    '0002'" when both shared a database). Move ours to ``VERSION_TABLE``; leave MLflow's."""
    from alembic.script import ScriptDirectory

    tables = set(inspect(connection).get_table_names())
    if VERSION_TABLE in tables or "alembic_version" not in tables or "ledger_entries" not in tables:
        return
    ours = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    found = [r for r in connection.execute(text("SELECT version_num FROM alembic_version")).scalars() if r in ours]
    if not found:
        return
    connection.execute(
        text(
            f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL, "
            f"CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))"
        )
    )
    for revision in found:
        connection.execute(text(f"INSERT INTO {VERSION_TABLE} (version_num) VALUES (:r)"), {"r": revision})
        connection.execute(text("DELETE FROM alembic_version WHERE version_num = :r"), {"r": revision})
    if connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 0:
        connection.execute(text("DROP TABLE alembic_version"))


def first_line(exc: BaseException, url: URL) -> str:
    """The driver's own explanation, on one line, with the password taken out should a driver
    ever echo it."""
    message = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    from pipeline.redaction import known_secrets, redact

    line = message[0] if message else type(exc).__name__
    password = str(url.password) if url.password else None
    return redact(line, [*known_secrets(), *([password] if password else [])])
