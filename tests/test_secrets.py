"""Secrets stay in the environment. A real ``poisonguard scan`` runs with the review page's token
(``POISONGUARD_UI_TOKEN``), MLflow credentials (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``), the fit
cache's signing key (``POISONGUARD_CACHE_KEY``) and, when a PostgreSQL server is at hand
(``POISONGUARD_TEST_DATABASE_URL``, as ``.ci/run`` provides), a ledger URL with a password in it.
None of them may appear in what the scan leaves behind: its stdout and stderr (with Prefect and
MLflow logging at INFO), every file of --out (summary.json, report.html, the Parquet files) and
of the workspace (the batch folder, MLflow's database and artifacts, logs), the MLflow run's
params, tags, metrics and inputs, or the ledger's tables. Prefect's record of the flow run is
searched on its own: the ledger's password is known to leak there (see that test).
"""

from __future__ import annotations

import json
import os
import secrets as random_secrets
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from tests.conftest import REPO, SAMPLES, SUITE

PG_URL = os.environ.get("POISONGUARD_TEST_DATABASE_URL", "").strip()
DATASET = "secrets"
POISONGUARD = Path(sys.executable).parent / "poisonguard"


@dataclass(frozen=True)
class Scanned:
    secrets: dict[str, str]  # what → value
    workspace: Path
    out: Path
    output: str  # stdout and stderr
    returncode: int
    ledger_url: str | None
    schema: str | None


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    root = tmp_path_factory.mktemp("secrets")
    workspace, out = root / "ws", root / "out"
    # a 400-row sample of the reference: fitting the detectors is most of a scan's data work,
    # and the secrets take the same paths whatever the data
    reference = root / "reference.parquet"
    (
        pd.read_parquet(SAMPLES / "reference.parquet")
        .sample(n=400, random_state=0)
        .sort_index()
        .to_parquet(reference, index=False)
    )
    secrets = {
        "review-page token": f"ui-token-{uuid.uuid4().hex}",
        "MLflow password": f"mlflow-password-{uuid.uuid4().hex}",
        "fit-cache signing key": random_secrets.token_hex(32),
    }
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_HOME", "PREFECT_API_URL", "POISONGUARD_DATABASE_URL", "POISONGUARD_FIT_CACHE")
    }
    env.update(
        {
            "POISONGUARD_UI_TOKEN": secrets["review-page token"],
            "MLFLOW_TRACKING_USERNAME": "steward",
            "MLFLOW_TRACKING_PASSWORD": secrets["MLflow password"],
            "POISONGUARD_CACHE_KEY": secrets["fit-cache signing key"],
            "MLFLOW_TRACKING_URI": f"sqlite:///{workspace / 'mlflow.db'}",
            "OMP_NUM_THREADS": "1",
            # as talkative as the libraries get without a debugger: whatever they log is searched
            "PREFECT_LOGGING_LEVEL": "INFO",
            "MLFLOW_LOGGING_LEVEL": "INFO",
            # a flow run: Prefect's record of its parameters (the settings) is searched too
            "POISONGUARD_ORCHESTRATOR": "prefect",
        }
    )
    schema = admin = None
    ledger_url = None
    if PG_URL:
        schema = f"secrets_test_{uuid.uuid4().hex[:16]}"
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        secrets["ledger database password"] = f"db-password-{uuid.uuid4().hex}"
        # the test server trusts local connections, so any password is accepted and must then be kept quiet
        ledger_url = (
            make_url(PG_URL)
            .set(password=secrets["ledger database password"])
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
        env["POISONGUARD_DATABASE_URL"] = ledger_url
    try:
        scan = subprocess.run(
            [
                str(POISONGUARD),
                "scan",
                str(SAMPLES / "batch_03_impossible_and_outliers.csv"),
                "--reference",
                str(reference),
                "--holdout",
                str(SAMPLES / "holdout.parquet"),
                "--suite",
                str(SUITE),
                "--label",
                "deny",
                "--dataset",
                DATASET,
                "--workspace",
                str(workspace),
                "--out",
                str(out),
            ],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        yield Scanned(secrets, workspace, out, scan.stdout + scan.stderr, scan.returncode, ledger_url, schema)
    finally:
        if admin is not None:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            admin.dispose()


def found_in(scanned: Scanned, haystack: bytes | str) -> list[str]:
    data = haystack.encode() if isinstance(haystack, str) else haystack
    return [what for what, value in scanned.secrets.items() if value.encode() in data]


def test_the_scan_ran_with_the_secrets_set(scanned):
    assert scanned.returncode == 0, scanned.output[-2000:]
    assert (scanned.out / "summary.json").is_file()


def leaks_in(scanned: Scanned, folder: Path) -> dict[str, list[str]]:
    return {
        str(path.relative_to(folder)): found
        for path in sorted(folder.rglob("*"))
        if path.is_file() and (found := found_in(scanned, path.read_bytes()))
    }


def test_no_secret_in_the_scans_output_or_any_file_it_wrote(scanned):
    assert found_in(scanned, scanned.output) == []
    assert leaks_in(scanned, scanned.out) == {}
    prefect_state = scanned.workspace / "prefect"  # searched on its own, below
    assert {
        path: found
        for path, found in leaks_in(scanned, scanned.workspace).items()
        if not (scanned.workspace / path).is_relative_to(prefect_state)
    } == {}


def test_no_secret_in_prefects_record_of_the_flow_run(scanned):
    """Prefect stores each flow run's parameters (in <workspace>/prefect/prefect.db, or on the
    server PREFECT_API_URL names). The scan's settings are a parameter, and the ledger's URL is
    one of them: a SecretStr, which Prefect stores as '**********'."""
    assert (scanned.workspace / "prefect" / "prefect.db").is_file()
    assert leaks_in(scanned, scanned.workspace / "prefect") == {}


def test_no_secret_in_the_mlflow_run(scanned):
    from mlflow.tracking import MlflowClient

    from pipeline.io import sha256_file
    from pipeline.provenance import find_scan_runs

    uri = f"sqlite:///{scanned.workspace / 'mlflow.db'}"
    runs = find_scan_runs(uri, sha256_file(SAMPLES / "batch_03_impossible_and_outliers.csv"), DATASET)
    assert len(runs) == 1
    run = MlflowClient(uri).get_run(runs[0].info.run_id)
    recorded = [*run.data.params.items(), *run.data.tags.items(), *run.data.metrics]
    recorded += [(d.dataset.name, d.dataset.source, *(t.value for t in d.tags)) for d in run.inputs.dataset_inputs]
    assert found_in(scanned, repr(recorded)) == []


def test_no_secret_in_the_ledger_tables(scanned):
    if scanned.ledger_url is None:
        pytest.skip("the ledger's password is tested on PostgreSQL: set POISONGUARD_TEST_DATABASE_URL")
    engine = create_engine(PG_URL, connect_args={"options": f"-csearch_path={scanned.schema}"})
    try:
        with engine.connect() as connection:
            tables = inspect(connection).get_table_names()
            assert "batches" in tables
            dump = [row for table in tables for row in connection.execute(text(f'SELECT * FROM "{table}"'))]
    finally:
        engine.dispose()
    assert found_in(scanned, repr(dump)) == []


# --- every command, with passwords in the ledger's URL and in MLflow's (issue 22) -------------


@dataclass(frozen=True)
class Session:
    passwords: dict[str, str]
    roots: dict[str, Path]  # what → folder searched
    outputs: dict[str, str]  # command → stdout and stderr
    codes: dict[str, int]
    schema: str


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A scan, review list/release, verify, the gate (passing and refused), a failed scan (the
    ledger's database unreachable, password in the query) and a scan of a bad file, each through
    the real CLI, with the
    ledger and MLflow in one PostgreSQL schema whose URLs carry passwords."""
    if not PG_URL:
        pytest.skip("passwords in database URLs are tested on PostgreSQL: set POISONGUARD_TEST_DATABASE_URL")
    root = tmp_path_factory.mktemp("passwords")
    workspace = root / "ws"
    reference = root / "reference.parquet"
    (
        pd.read_parquet(SAMPLES / "reference.parquet")
        .sample(n=400, random_state=0)
        .sort_index()
        .to_parquet(reference, index=False)
    )
    passwords = {
        "ledger": f"ledger-pw-{uuid.uuid4().hex}",
        "mlflow": f"mlflow-pw-{uuid.uuid4().hex}",
        "unreachable ledger": f"query-pw-{uuid.uuid4().hex}",
    }
    schema = f"secrets_shared_{uuid.uuid4().hex[:16]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')

    def url(password: str) -> str:  # the test server trusts local connections: any password is accepted
        return (
            make_url(PG_URL)
            .set(password=password)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_HOME", "PREFECT_API_URL", "POISONGUARD_FIT_CACHE", "MLFLOW_TRACKING_PASSWORD")
    }
    env.update(
        {
            "POISONGUARD_DATABASE_URL": url(passwords["ledger"]),
            "MLFLOW_TRACKING_URI": url(passwords["mlflow"]),
            "OMP_NUM_THREADS": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "MLFLOW_LOGGING_LEVEL": "INFO",
            "POISONGUARD_WORKSPACE": str(workspace),
        }
    )
    outputs, codes = {}, {}

    def run(name: str, *args: str | Path, extra: dict[str, str] | None = None) -> None:
        done = subprocess.run(
            [str(POISONGUARD), *map(str, args)],
            env={**env, **(extra or {})},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        outputs[name], codes[name] = done.stdout + done.stderr, done.returncode

    scan_args = (
        "--reference",
        reference,
        "--holdout",
        SAMPLES / "holdout.parquet",
        "--suite",
        SUITE,
        "--label",
        "deny",
        "--dataset",
        DATASET,
    )
    bad = root / "bad.csv"
    bad.write_text("not,a\nbatch\x00\n")
    unreachable = (
        make_url(PG_URL)
        .set(database=f"missing_{uuid.uuid4().hex[:8]}")
        .update_query_dict({"password": passwords["unreachable ledger"]})
        .render_as_string(hide_password=False)
    )
    try:
        run("scan", "scan", SAMPLES / "batch_03_impossible_and_outliers.csv", *scan_args, "--out", root / "out")
        run("review list", "review", "list", "--format", "json")
        listed = outputs["review list"]
        held = json.loads(listed[: listed.rindex("]") + 1]) if codes["review list"] == 0 else []
        run(
            "review release",
            "review",
            "release",
            held[0]["id"] if held else "none:0",
            "--by",
            "steward",
            "--reason",
            "checked by hand",
        )
        run("verify", "verify")
        run("gate", "gate", "--dataset", DATASET, "--out", root / "gate", "--max-pending", "1000")
        run("gate refused", "gate", "--dataset", DATASET, "--out", root / "gate-refused")
        # last: a scan that cannot reach its ledger leaves its batch folder for the next scan to record
        run(
            "failed scan",
            "scan",
            SAMPLES / "batch_02_label_flips.csv",
            *scan_args,
            "--out",
            root / "out-failed",
            extra={"POISONGUARD_DATABASE_URL": unreachable},
        )
        run("scan of a bad file", "scan", bad, *scan_args, "--out", root / "out-bad")
        yield Session(passwords, {"workspace": workspace, "outputs": root}, outputs, codes, schema)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


def _found(session: Session, data: bytes) -> list[str]:
    return [what for what, value in session.passwords.items() if value.encode() in data]


def test_every_command_ran_as_intended(session):
    assert session.codes["scan"] == 0, session.outputs["scan"][-2000:]
    assert session.codes["failed scan"] != 0 and "Cannot open the ledger database" in session.outputs["failed scan"]
    assert session.codes["scan of a bad file"] == 2
    assert session.codes["review release"] == 0, session.outputs["review release"]
    assert session.codes["verify"] == 0 and "Ledger intact" in session.outputs["verify"]
    assert session.codes["gate"] == 0, session.outputs["gate"][-2000:]
    assert session.codes["gate refused"] == 3


def test_no_password_on_any_console(session):
    assert {
        name: _found(session, text.encode()) for name, text in session.outputs.items() if _found(session, text.encode())
    } == {}
    assert "***" in session.outputs["failed scan"]  # the URL was shown, masked


def test_no_password_in_any_file_of_the_workspace_or_the_outputs(session):
    leaks = {
        str(path): found
        for folder in session.roots.values()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and (found := _found(session, path.read_bytes()))
    }
    assert leaks == {}


def test_no_password_in_the_mlflow_store_or_the_ledger(session):
    """MLflow's tables and the ledger's share the schema: every row of every table is searched."""
    engine = create_engine(PG_URL, connect_args={"options": f"-csearch_path={session.schema}"})
    try:
        with engine.connect() as connection:
            tables = inspect(connection).get_table_names()
            assert {"runs", "params", "tags", "batches", "ledger_entries"} <= set(tables)
            dump = [row for table in tables for row in connection.execute(text(f'SELECT * FROM "{table}"'))]
    finally:
        engine.dispose()
    assert _found(session, repr(dump).encode()) == []
