"""The quarantine ledger, on SQLite always and on PostgreSQL when POISONGUARD_TEST_DATABASE_URL
points at a server (each test then gets a schema of its own, dropped afterwards).

Scan outputs here are built by hand in the shape ``pipeline.scan.build_outputs`` gives them, so
these tests run in seconds; the scan's own tests cover how those outputs come about.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from pipeline.errors import PoisonguardError
from pipeline.ledger import (
    Ledger,
    LedgerError,
    NotInLedger,
    ReviewAction,
    ReviewRefused,
    RowStatus,
    ledger_url,
    parse_row_id,
)
from pipeline.ledger.models import Base

PG_URL = os.environ.get("POISONGUARD_TEST_DATABASE_URL", "").strip()
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
SHA_A = "3f2a9c1b0d4e" + "a" * 52
SHA_B = "77e1d0c4b2a9" + "b" * 52
START = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC)
TABLES = {"batches", "row_decisions", "review_actions", "ledger_entries", "poisonguard_ledger_version"}


def test_postgresql_is_tested_when_configured():
    if not PG_URL:
        pytest.skip("PostgreSQL not tested: set POISONGUARD_TEST_DATABASE_URL=postgresql+psycopg://user@host/db")
    assert make_url(PG_URL).get_backend_name() == "postgresql"


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path) -> Iterator[str]:
    """A ledger URL nobody else uses: a SQLite file in the test's folder, or on PostgreSQL a
    schema of its own (cheaper than a database: ~10 ms against ~300 ms), dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        return
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    schema = f"ledger_test_{uuid.uuid4().hex[:16]}"  # "pg_" names are reserved for schemas
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


def ticking_clock():
    """Review times one minute apart, so every test sees the same timestamps."""
    ticks = itertools.count()
    return lambda: START + dt.timedelta(minutes=next(ticks))


@pytest.fixture
def ledger(database_url) -> Iterator[Ledger]:
    with Ledger.open(database_url, clock=ticking_clock()) as opened:
        yield opened


@pytest.fixture
def raw_sql(database_url):
    """Run SQL straight against the database, as someone with a database client would."""
    engine = create_engine(database_url)

    def run(statement: str, **params: Any) -> list[Any]:
        with engine.begin() as connection:
            result = connection.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    yield run
    engine.dispose()


def scan_outputs(
    sha256: str = SHA_A,
    dataset: str = "hmda",
    rows: int = 6,
    held: tuple[int, ...] = (1, 3, 4),
    file: str = "batch_02_label_flips.csv",
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """summary, scores and quarantined rows as a scan writes them."""
    numbers = list(range(rows))
    scores = pd.DataFrame(
        {
            "row_number": numbers,
            "suspicion": [0.995 if r in held else r / 100 for r in numbers],
            "quarantined": [r in held for r in numbers],
            "outliers": [float("nan") if r == 4 else r / 50 for r in numbers],  # a detector that skipped a row
            "outliers_raw": [r * 1.5 for r in numbers],
            "label_consistency": [0.995 if r in held else 0.2 for r in numbers],
            "label_consistency_raw": [0.7 if r in held else 0.1 for r in numbers],
        }
    )
    quarantined = pd.DataFrame(
        {
            "row_number": list(held),
            "income": [50.0] * len(held),
            "suspicion": [0.995] * len(held),
            "reasons": [
                [f"label 'no' but 9/10 nearest trusted neighbours say 'yes' (row {r})", "value outside the trusted range"]
                for r in held
            ],
        }
    )
    summary = {
        "dataset": dataset,
        "scanned_at": "2026-11-26T10:15:00+00:00",
        "batch": {
            "file": file,
            "path": f"/data/{file}",
            "sha256": sha256,
            "rows": rows,
            "source": "partner-feed",
            "submitter": "carol",
        },
        "counts": {"rows": rows, "accepted": rows - len(held), "quarantined": len(held)},
        "mlflow": {"run_id": "0123456789abcdef", "tracking_uri": "sqlite:///mlflow.db"},
        "duplicate": False,
    }
    return summary, scores, quarantined


def snapshot(ledger: Ledger) -> tuple[Any, ...]:
    return (ledger.list_rows(), ledger.list_batches(), ledger.head(), ledger.pending_count())


# --- schema and migrations -----------------------------------------------------------------


def test_migrations_create_the_schema_from_nothing_and_reopening_changes_nothing(database_url, raw_sql):
    with Ledger.open(database_url) as ledger:
        batch_id = ledger.record_scan(*scan_outputs())
        head = ledger.head()
    engine = create_engine(database_url)
    assert TABLES <= set(inspect(engine).get_table_names())
    engine.dispose()
    assert raw_sql("SELECT version_num FROM poisonguard_ledger_version") == [("0002",)]

    with Ledger.open(database_url) as reopened:
        assert reopened.head() == head
        assert reopened.get_batch(batch_id).rows == 6
        assert reopened.verify() == []
    assert raw_sql("SELECT version_num FROM poisonguard_ledger_version") == [("0002",)]


def test_the_head_revision_that_skips_alembic_is_alembics_head(database_url, monkeypatch):
    """A ledger at HEAD_REVISION is opened without Alembic: the constant must name the newest
    migration, or a ledger would be left on an old schema."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from pipeline.ledger import database

    config = Config()
    config.set_main_option("script_location", str(database.MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == database.HEAD_REVISION
    Ledger.open(database_url).close()  # created: the long way
    monkeypatch.setattr("alembic.command.upgrade", lambda *a, **k: pytest.fail("Alembic ran on a current ledger"))
    with Ledger.open(database_url) as reopened:
        assert reopened.verify() == []


def test_models_and_migrations_describe_the_same_schema(ledger, database_url):
    engine = create_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": "poisonguard_ledger_version"})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == []


def test_a_ledger_whose_revision_is_in_alembic_version_moves_it_to_its_own_table(database_url, raw_sql):
    """Ledgers made before issue 22 kept their revision in alembic_version, MLflow's table."""
    with Ledger.open(database_url) as ledger:
        ledger.record_scan(*scan_outputs())
    raw_sql("DROP TABLE poisonguard_ledger_version")  # as Alembic's default made it
    raw_sql(
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
        "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
    )
    raw_sql("INSERT INTO alembic_version VALUES ('0002')")
    with Ledger.open(database_url) as reopened:
        assert reopened.verify() == []
    assert raw_sql("SELECT version_num FROM poisonguard_ledger_version") == [("0002",)]
    engine = create_engine(database_url)
    assert "alembic_version" not in inspect(engine).get_table_names()  # free for MLflow
    engine.dispose()


def test_the_ledger_and_mlflow_share_one_database(database_url, raw_sql, tmp_path):
    """Both keep an Alembic revision; with one version table each, either can be made first."""
    from mlflow.tracking import MlflowClient

    with Ledger.open(database_url) as ledger:
        batch_id = ledger.record_scan(*scan_outputs())
    client = MlflowClient(tracking_uri=database_url)
    client.create_experiment("shared", artifact_location=str(tmp_path / "artifacts"))
    with Ledger.open(database_url) as reopened:
        assert reopened.get_batch(batch_id).rows == 6 and reopened.verify() == []
    MlflowClient(tracking_uri=database_url).get_experiment_by_name("shared")


def test_in_memory_sqlite_ledger_works():
    with Ledger.open("sqlite://") as ledger:
        batch_id = ledger.record_scan(*scan_outputs())
        ledger.reject([f"{batch_id}:1"], by="dana", reason="duplicate of row 0")
        assert ledger.get_row(f"{batch_id}:1").status is RowStatus.REJECTED
        assert ledger.verify() == []


def test_a_database_from_a_newer_poisonguard_is_refused(database_url, raw_sql):
    Ledger.open(database_url).close()
    raw_sql("UPDATE poisonguard_ledger_version SET version_num = '9999'")
    with pytest.raises(LedgerError, match="newer poisonguard"):
        Ledger.open(database_url)


# --- database URLs -------------------------------------------------------------------------


def test_ledger_url_is_a_workspace_sqlite_file_unless_the_environment_names_a_database(tmp_path):
    assert ledger_url(tmp_path, {}) == f"sqlite:///{tmp_path.resolve() / 'ledger.sqlite'}"
    assert ledger_url(tmp_path, {"POISONGUARD_DATABASE_URL": "  "}).endswith("ledger.sqlite")
    url = "postgresql+psycopg://steward@db.internal:5432/poisonguard"
    assert ledger_url(tmp_path, {"POISONGUARD_DATABASE_URL": url}) == url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://bob:s3cret-pw@127.0.0.1:1/poisonguard",  # nothing listens on port 1
        "mysql+pymysql://bob:s3cret-pw@127.0.0.1/poisonguard",
        "bob:s3cret-pw@nowhere",
    ],
)
def test_passwords_never_appear_in_errors(url):
    with pytest.raises(LedgerError) as refused:
        Ledger.open(url)
    message = str(refused.value)
    assert "s3cret-pw" not in message
    assert "\n" not in message


def test_passwords_are_masked_in_repr(database_url):
    if not database_url.startswith("postgresql"):
        assert repr(Ledger.open(database_url)) == f"Ledger({database_url!r})"
        return
    # The test server trusts local connections, so any password is accepted and must be hidden.
    with Ledger.open(make_url(database_url).set(password="s3cret-pw")) as ledger:
        assert "s3cret-pw" not in repr(ledger) and "***" in ledger.url


# --- recording scans -----------------------------------------------------------------------


def test_record_then_list_and_show(ledger):
    batch_id = ledger.record_scan(*scan_outputs())
    assert batch_id == SHA_A[:12]

    batch = ledger.get_batch(batch_id)
    assert (batch.sha256, batch.dataset, batch.file, batch.source, batch.submitter, batch.mlflow_run_id) == (
        SHA_A,
        "hmda",
        "batch_02_label_flips.csv",
        "partner-feed",
        "carol",
        "0123456789abcdef",
    )
    assert batch.scanned_at == dt.datetime(2026, 11, 26, 10, 15, tzinfo=dt.UTC)
    assert (batch.rows, batch.accepted, batch.quarantined, batch.pending, batch.released) == (6, 3, 3, 3, 0)

    rows = ledger.list_rows(dataset="hmda")
    assert [r.id for r in rows] == [f"{batch_id}:{n}" for n in range(6)]
    assert [r.status for r in rows] == [
        RowStatus.ACCEPTED,
        RowStatus.PENDING,
        RowStatus.ACCEPTED,
        RowStatus.PENDING,
        RowStatus.PENDING,
        RowStatus.ACCEPTED,
    ]
    pending = ledger.list_rows(status="pending")
    assert [r.row_number for r in pending] == [1, 3, 4]

    row = ledger.get_row(f"{batch_id}:4")
    assert row.batch_sha256 == SHA_A and row.suspicion == 0.995 and row.review is None
    assert row.reasons == (
        "label 'no' but 9/10 nearest trusted neighbours say 'yes' (row 4)",
        "value outside the trusted range",
    )
    assert row.scores == {"outliers": None, "outliers_raw": 6.0, "label_consistency": 0.995, "label_consistency_raw": 0.7}
    assert ledger.get_row(f"{batch_id}:0").reasons == ()
    assert ledger.list_rows(dataset="other") == [] and ledger.list_rows(batch_id="ffffffffffff") == []
    assert ledger.pending_count("hmda") == 3 and ledger.pending_count("other") == 0


def test_recording_the_same_batch_twice_is_a_no_op(ledger):
    first = ledger.record_scan(*scan_outputs())
    before = snapshot(ledger)
    summary, scores, quarantined = scan_outputs()
    assert ledger.record_scan({**summary, "duplicate": True}, scores, quarantined) == first
    assert snapshot(ledger) == before


def test_the_same_bytes_for_another_dataset_get_their_own_batch_id(ledger):
    first = ledger.record_scan(*scan_outputs(dataset="hmda"))
    second = ledger.record_scan(*scan_outputs(dataset="hmda-eu"))
    assert first == SHA_A[:12] and second == SHA_A[:16]
    assert len(ledger.list_rows(dataset="hmda-eu")) == 6 and ledger.verify() == []


def test_record_a_committed_batch_folder(ledger, tmp_path):
    summary, scores, quarantined = scan_outputs(held=(0, 5))
    folder = tmp_path / "datasets" / "hmda" / "batches" / SHA_A
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    scores.to_parquet(folder / "scores.parquet")
    quarantined.to_parquet(folder / "quarantined.parquet")
    batch_id = ledger.record_scan_folder(folder)
    assert [r.row_number for r in ledger.list_rows(status=RowStatus.PENDING)] == [0, 5]
    assert ledger.get_row(f"{batch_id}:5").reasons[1] == "value outside the trusted range"


@pytest.mark.parametrize(
    "spoil, problem",
    [
        (lambda s, sc, q: (s, sc, q.iloc[:2]), "quarantined in one output but not the other"),
        (lambda s, sc, q: (s, sc.iloc[:-1], q), "scores cover 5 rows but the summary counts 6"),
        (lambda s, sc, q: ({**s, "counts": {**s["counts"], "accepted": 4}}, sc, q), "counts disagree"),
        (lambda s, sc, q: ({k: v for k, v in s.items() if k != "batch"}, sc, q), "summary lacks"),
        (lambda s, sc, q: (s, sc.drop(columns=["suspicion"]), q), "lack the column(s) suspicion"),
    ],
    ids=["held-rows-differ", "row-missing", "counts-wrong", "no-batch", "no-suspicion"],
)
def test_inconsistent_scan_outputs_record_nothing(ledger, spoil, problem):
    with pytest.raises(LedgerError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        ledger.record_scan(*spoil(*scan_outputs()))
    assert ledger.list_batches() == [] and ledger.head() is None


def test_batches_with_nothing_or_everything_quarantined(ledger):
    clean = ledger.record_scan(*scan_outputs(sha256=SHA_A, held=()))
    schema_failure = ledger.record_scan(*scan_outputs(sha256=SHA_B, held=tuple(range(6))))
    assert ledger.get_batch(clean).pending == 0 and ledger.get_batch(schema_failure).pending == 6
    assert [b.id for b in ledger.list_batches("hmda")] == [clean, schema_failure]
    assert ledger.verify() == []


# --- reviewing -----------------------------------------------------------------------------


def test_release_and_reject(ledger):
    batch_id = ledger.record_scan(*scan_outputs())
    released = ledger.release([f"{batch_id}:1", f" {batch_id}:3 "], by="alice", reason="income confirmed with lender")
    rejected = ledger.reject(f"{batch_id}:4", by="bob", reason="label flip confirmed")

    assert [(r.row_id, r.action, r.by, r.at) for r in released] == [
        (f"{batch_id}:1", ReviewAction.RELEASE, "alice", START),
        (f"{batch_id}:3", ReviewAction.RELEASE, "alice", START),
    ]
    assert (rejected[0].action, rejected[0].at) == (ReviewAction.REJECT, START + dt.timedelta(minutes=1))
    assert [r.status for r in ledger.list_rows()] == [
        RowStatus.ACCEPTED,
        RowStatus.RELEASED,
        RowStatus.ACCEPTED,
        RowStatus.RELEASED,
        RowStatus.REJECTED,
        RowStatus.ACCEPTED,
    ]
    row = ledger.get_row(f"{batch_id}:4")
    assert row.initial_status is RowStatus.PENDING and row.review is not None and row.review.reason == "label flip confirmed"
    assert ledger.pending_count("hmda") == 0
    assert ledger.released_rows("hmda") == [f"{batch_id}:1", f"{batch_id}:3"]
    assert [r.id for r in ledger.list_rows(status="rejected")] == [f"{batch_id}:4"]
    batch = ledger.get_batch(batch_id)
    assert (batch.pending, batch.released, batch.rejected) == (0, 2, 1)
    assert ledger.verify() == []


REFUSALS = [
    {"title": "unknown row", "ids": ["{b}:99"], "by": "alice", "reason": "ok", "says": "{b}:99: there is no such row"},
    {"title": "unknown batch", "ids": ["ffffffffffff:1"], "by": "alice", "reason": "ok", "says": "no such row"},
    {"title": "not a row id", "ids": ["row one"], "by": "alice", "reason": "ok", "says": "'row one'"},
    {"title": "accepted by the scan", "ids": ["{b}:0"], "by": "alice", "reason": "ok", "says": "the scan accepted it"},
    {
        "title": "already released",
        "ids": ["{b}:1"],
        "by": "erin",
        "reason": "ok",
        "says": "{b}:1: it was already released by dana at 2026-11-27 09:00 UTC ('checked'); a review is final",
    },
    {"title": "already rejected", "ids": ["{b}:3"], "by": "erin", "reason": "ok", "says": "already rejected by dana"},
    {
        "title": "one bad id spoils the request",
        "ids": ["{b}:4", "{b}:0"],
        "by": "alice",
        "reason": "ok",
        "says": "Cannot {action} {b}:0",
    },
    {
        "title": "several bad ids",
        "ids": ["{b}:0", "{b}:2", "{b}:4"],
        "by": "alice",
        "reason": "ok",
        "says": "1 more of the 3 rows cannot be",
    },
    {"title": "empty by", "ids": ["{b}:4"], "by": "", "reason": "ok", "says": "'by' is empty"},
    {"title": "blank by", "ids": ["{b}:4"], "by": "   ", "reason": "ok", "says": "'by' is empty"},
    {"title": "no by", "ids": ["{b}:4"], "by": None, "reason": "ok", "says": "'by' is empty"},
    {"title": "empty reason", "ids": ["{b}:4"], "by": "alice", "reason": "", "says": "'reason' is empty"},
    {"title": "blank reason", "ids": ["{b}:4"], "by": "alice", "reason": "\n\t", "says": "'reason' is empty"},
    {"title": "no ids", "ids": [], "by": "alice", "reason": "ok", "says": "no row ids were given"},
]


# Each case runs as a release or a reject, alternately: the checks are shared, the time is not.
REFUSALS = [{**case, "action": ("release", "reject")[i % 2]} for i, case in enumerate(REFUSALS)]


@pytest.mark.parametrize("case", REFUSALS, ids=[f"{c['action']}-{c['title']}" for c in REFUSALS])
def test_every_refusal_changes_nothing(ledger, case):
    action = case["action"]
    batch_id = ledger.record_scan(*scan_outputs())
    ledger.release([f"{batch_id}:1"], by="dana", reason="checked")
    ledger.reject([f"{batch_id}:3"], by="dana", reason="checked")
    before = snapshot(ledger)

    with pytest.raises(ReviewRefused) as refused:
        getattr(ledger, action)([i.format(b=batch_id) for i in case["ids"]], by=case["by"], reason=case["reason"])
    message = str(refused.value)
    assert case["says"].format(b=batch_id, action=action) in message
    assert "\n" not in message and message.endswith("Nothing was changed.")
    assert isinstance(refused.value, PoisonguardError) and refused.value.exit_code == 2
    assert snapshot(ledger) == before


def test_status_comes_from_the_review_action_and_a_second_action_is_refused_by_the_database(ledger, raw_sql):
    batch_id = ledger.record_scan(*scan_outputs())
    ledger.release([f"{batch_id}:1"], by="alice", reason="checked")
    # Nothing was updated in place: the scan's decision is still stored as it was.
    assert raw_sql("SELECT initial_status FROM row_decisions WHERE id = :id", id=f"{batch_id}:1") == [("pending",)]
    with pytest.raises(IntegrityError):
        raw_sql(
            'INSERT INTO review_actions (row_id, action, "by", reason, at) '
            "VALUES (:id, 'reject', 'mallory', 'changed my mind', :at)",
            id=f"{batch_id}:1",
            at=START,
        )
    assert ledger.get_row(f"{batch_id}:1").status is RowStatus.RELEASED


def test_two_stewards_releasing_the_same_row_at_once_one_wins(database_url):
    with Ledger.open(database_url) as setup:
        batch_id = setup.record_scan(*scan_outputs())
    target = f"{batch_id}:4"
    stewards = [Ledger.open(database_url), Ledger.open(database_url)]  # separate engines and sessions
    start = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def act(ledger: Ledger, name: str) -> None:
        start.wait()
        try:
            outcomes[name] = ledger.release([target], by=name, reason=f"{name} checked it")
        except ReviewRefused as refused:
            outcomes[name] = refused

    threads = [threading.Thread(target=act, args=(s, n)) for s, n in zip(stewards, ["alice", "bob"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for steward in stewards:
        steward.close()

    winners = [name for name, outcome in outcomes.items() if isinstance(outcome, list)]
    losers = [outcome for outcome in outcomes.values() if isinstance(outcome, ReviewRefused)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert f"it was already released by {winners[0]}" in str(losers[0])
    with Ledger.open(database_url) as after:
        assert after.get_row(target).review.by == winners[0]
        assert after.verify() == []


def test_concurrent_reviews_of_different_rows_keep_one_chain(database_url):
    with Ledger.open(database_url) as setup:
        batch_id = setup.record_scan(*scan_outputs(rows=12, held=tuple(range(12))))
    stewards = [Ledger.open(database_url) for _ in range(3)]
    start = threading.Barrier(3)

    def act(ledger: Ledger, offset: int) -> None:
        start.wait()
        for n in range(offset, 12, 3):
            ledger.reject([f"{batch_id}:{n}"], by=f"steward-{offset}", reason="confirmed")

    threads = [threading.Thread(target=act, args=(s, i)) for i, s in enumerate(stewards)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for steward in stewards:
        steward.close()
    with Ledger.open(database_url) as after:
        assert after.pending_count() == 0 and after.head().sequence == 2 + 12
        assert after.verify() == []


def test_row_ids_parse():
    assert parse_row_id("3f2a9c1b0d4e:12") == ("3f2a9c1b0d4e", 12)
    with pytest.raises(NotInLedger, match="not a row id"):
        parse_row_id("3f2a9c1b0d4e:-1")


def test_unknown_batch_row_and_status_are_explained(ledger):
    with pytest.raises(NotInLedger, match="no batch 'abcdefabcdef'"):
        ledger.get_batch("abcdefabcdef")
    with pytest.raises(NotInLedger, match="no row 'abcdefabcdef:1'"):
        ledger.get_row("abcdefabcdef:1")
    with pytest.raises(LedgerError, match="use one of: accepted, pending, released, rejected"):
        ledger.list_rows(status="quarantined")


# --- the hash chain ------------------------------------------------------------------------


@pytest.fixture
def reviewed(ledger) -> tuple[Ledger, str]:
    """Entries: 1 batch A, 2 decisions A, 3 batch B, 4 decisions B, 5 release A:1, 6 reject A:3, 7 reject A:4."""
    batch_id = ledger.record_scan(*scan_outputs())
    ledger.record_scan(*scan_outputs(sha256=SHA_B, file="batch_03.csv"))
    ledger.release([f"{batch_id}:1"], by="alice", reason="income confirmed")
    ledger.reject([f"{batch_id}:3"], by="bob", reason="label flip")
    ledger.reject([f"{batch_id}:4"], by="bob", reason="outlier")
    return ledger, batch_id


def test_the_chain_of_a_clean_ledger_verifies(reviewed):
    ledger, _ = reviewed
    assert ledger.verify() == []
    head = ledger.head()
    assert head is not None and head.sequence == 7
    assert ledger.verify(expected_head=head) == []


TAMPERING = [
    {
        "title": "action turned from reject to release",
        "sql": "UPDATE review_actions SET action = 'release' WHERE row_id = '{b}:3'",
        "finds": ["entry 6 (review of {b}:3): recorded action changed from reject to release"],
    },
    {
        "title": "reviewer renamed",
        "sql": "UPDATE review_actions SET \"by\" = 'carol' WHERE row_id = '{b}:1'",
        "finds": ["entry 5 (review of {b}:1): recorded by changed from alice to carol"],
    },
    {
        "title": "reason rewritten",
        "sql": "UPDATE review_actions SET reason = 'looked fine' WHERE row_id = '{b}:4'",
        "finds": ["entry 7 (review of {b}:4): recorded reason changed from 'outlier' to 'looked fine'"],
    },
    {
        "title": "pending row made accepted",
        "sql": "UPDATE row_decisions SET initial_status = 'accepted' WHERE id = '77e1d0c4b2a9:4'",
        "finds": ["entry 4 (decisions of batch 77e1d0c4b2a9): row 77e1d0c4b2a9:4 was recorded as pending, now accepted"],
    },
    {
        "title": "suspicion lowered",
        "sql": "UPDATE row_decisions SET suspicion = 0.1 WHERE id = '77e1d0c4b2a9:4'",
        "finds": ["entry 4 (decisions of batch 77e1d0c4b2a9): the suspicion, reasons, scores or dataset"],
    },
    {
        "title": "row moved to another dataset",
        "sql": "UPDATE row_decisions SET dataset = 'other' WHERE id = '77e1d0c4b2a9:1'",
        "finds": ["entry 4 (decisions of batch 77e1d0c4b2a9)"],
    },
    {
        "title": "batch submitter changed",
        "sql": "UPDATE batches SET submitter = 'trusted-team' WHERE id = '{b}'",
        "finds": ["entry 1 (batch {b}): recorded submitter changed from carol to trusted-team"],
    },
    {
        "title": "entry in the middle deleted",
        "sql": "DELETE FROM ledger_entries WHERE sequence = 5",
        "finds": [
            "entry 5 is missing: the chain jumps from entry 4 to entry 6",
            "review of {b}:1 (release by alice) has no ledger entry",
        ],
    },
    {
        "title": "last entry deleted",
        "sql": "DELETE FROM ledger_entries WHERE sequence = 7",
        "finds": ["review of {b}:4 (reject by bob) has no ledger entry"],
    },
    {
        "title": "review action deleted",
        "sql": "DELETE FROM review_actions WHERE row_id = '{b}:3'",
        "finds": ["entry 6 (review of {b}:3): the review action is missing from the review_actions table (deleted)"],
    },
    {
        "title": "review added outside the ledger",
        "sql": 'INSERT INTO review_actions (row_id, action, "by", reason, at) '
        "VALUES ('77e1d0c4b2a9:1', 'release', 'mallory', 'trust me', '2026-11-27 10:00:00')",
        "finds": ["review of 77e1d0c4b2a9:1 (release by mallory) has no ledger entry"],
    },
    {
        "title": "entry digest edited",
        "sql": "UPDATE ledger_entries SET payload_digest = '" + "0" * 64 + "' WHERE sequence = 6",
        "finds": ["entry 6 (review of {b}:3): its hash does not match its content"],
    },
    {
        "title": "readable copy of a review replaced",
        "sql": "UPDATE ledger_entries SET recorded = '\"nothing to see\"' WHERE sequence = 6",
        "finds": ["entry 6 (review of {b}:3): its recorded copy was edited"],
    },
    {
        "title": "readable summary of decisions replaced",
        "sql": "UPDATE ledger_entries SET recorded = '[]' WHERE sequence = 2",
        "finds": ["entry 2 (decisions of batch {b}): its recorded summary was edited"],
    },
    {
        "title": "entry hash recomputed by hand",
        "sql": "UPDATE ledger_entries SET entry_hash = '" + "1" * 64 + "' WHERE sequence = 3",
        "finds": [
            "entry 3 (batch 77e1d0c4b2a9): its hash does not match its content",
            "entry 4 (decisions of batch 77e1d0c4b2a9): does not link to the entry before it",
        ],
    },
]


@pytest.mark.parametrize("case", TAMPERING, ids=[c["title"] for c in TAMPERING])
def test_verify_detects_edits_made_in_the_database(reviewed, raw_sql, case):
    ledger, batch_id = reviewed
    for statement in case["sql"].split(";"):
        raw_sql(statement.format(b=batch_id))
    problems = ledger.verify()
    for expected in case["finds"]:
        expected = expected.format(b=batch_id)
        assert any(expected in problem for problem in problems), (expected, problems)


def test_a_saved_head_catches_the_newest_review_removed_with_its_entry(reviewed, raw_sql):
    ledger, batch_id = reviewed
    head = ledger.head()
    raw_sql("DELETE FROM ledger_entries WHERE sequence = 7")
    raw_sql("DELETE FROM review_actions WHERE row_id = :id", id=f"{batch_id}:4")
    assert ledger.verify() == []  # consistent on its own: only an outside copy of the head shows it
    assert ledger.verify(expected_head=head) == [
        "the chain ends at entry 6, but entry 7 was recorded as its head earlier: entries were cut off the end"
    ]
    assert ledger.get_row(f"{batch_id}:4").status is RowStatus.PENDING


def test_verify_reports_a_value_edited_into_something_unreadable(reviewed, raw_sql, database_url):
    if database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL refuses to store invalid JSON in the first place")
    ledger, batch_id = reviewed
    raw_sql("UPDATE row_decisions SET scores = '{not json' WHERE id = :id", id=f"{batch_id}:2")
    problems = ledger.verify()
    assert len(problems) == 1 and "cannot be read back" in problems[0]


def test_the_decisions_digest_is_the_digest_of_the_whole_payload_however_it_is_sliced():
    """The chain's definition (chain.py): sha256 of the canonical JSON of every row decision in
    row order. The digest is taken a slice at a time so that 10^6 rows never make one string;
    it must not depend on where the slices fall, or ledgers written before would stop verifying."""
    import hashlib

    from pipeline.ledger.chain import DecisionsDigest

    rows = [
        {
            "id": f"b:{n}",
            "dataset": "hmda",
            "row_number": n,
            "initial_status": "pending" if n % 3 else "accepted",
            "suspicion": n / 7,
            "reasons": ["naïve ≥ reason"] if n % 3 else [],
            "scores": {"outliers": n / 11, "x": None},
        }
        for n in range(10)
    ]
    whole = json.dumps(
        {
            "batch_id": "b",
            "rows": [
                [r["id"], r["dataset"], r["row_number"], r["initial_status"], r["suspicion"], r["reasons"], r["scores"]]
                for r in rows
            ],
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    expected = hashlib.sha256(whole.encode("utf-8")).hexdigest()
    for size in (1, 3, 10):
        decisions = DecisionsDigest("b")
        for start in range(0, len(rows), size):
            decisions.add(rows[start : start + size])
            decisions.add([])
        assert decisions.hexdigest() == expected
        assert decisions.summary() == {"batch_id": "b", "rows": 10, "pending": [1, 2, 4, 5, 7, 8]}
    with pytest.raises(ValueError, match="row order"):
        DecisionsDigest("b").add(rows[::-1])
