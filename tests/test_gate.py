"""The pre-retrain gate, end to end: real scans and reviews, then the gate through the CLI (its
Prefect flow) and through ``pipeline.gate``; tampering with the workspace or the ledger refuses
with exit 3, naming files and rows; a clean state gives the same snapshot every time; a model
registered from the snapshot leads back, through MLflow alone, to the scans of its batches.

Tampering happens on copies of one scanned and reviewed workspace, so one real scan (the costly
part: its detectors are fitted on the reference) serves the whole module.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import SAMPLES, SUITE

DATASET = "gate-test"
EXPERIMENT = f"poisonguard-{DATASET}"
REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("POISONGUARD_TEST_DATABASE_URL", "").strip()


@dataclass(frozen=True)
class Scanned:
    workspace: Path
    summaries: dict[str, dict[str, Any]]  # by batch file name
    batch_id: str  # batch 03's, the one with quarantined rows
    released: tuple[str, ...]
    rejected: tuple[str, ...]
    pending: int


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> Scanned:
    """Batch 03 (impossible records and outliers: ~20 rows held) scanned for real; two held rows
    released, three rejected, the rest left pending."""
    from threadpoolctl import threadpool_limits

    from pipeline.cli import run_scan
    from pipeline.config import Settings
    from pipeline.review import act, open_ledger

    root = tmp_path_factory.mktemp("gate")
    name = "batch_03_impossible_and_outliers.csv"
    # One OpenMP thread: on 2 shared cores, the detectors' gradient boosting would otherwise spin
    # its threads against other processes' and the scan take minutes rather than tens of seconds.
    with threadpool_limits(limits=1):
        summary = run_scan(
            batch=SAMPLES / name,
            reference=SAMPLES / "reference.parquet",
            label="deny",
            out=root / "out",
            suite=SUITE,
            holdout=SAMPLES / "holdout.parquet",
            source="partner-g",
            dataset=DATASET,
            workspace=root / "ws",
        )
    settings = Settings.from_environment(root / "ws")
    with open_ledger(settings) as ledger:
        held = [r.id for r in ledger.list_rows(dataset=DATASET, status="pending")]
        assert len(held) >= 8, held
        act(settings, ledger, "release", held[:2], "alice", "income confirmed with the lender")
        act(settings, ledger, "reject", held[2:5], "bob", "impossible ratios")
        pending = ledger.pending_count(DATASET)
    return Scanned(root / "ws", {name: summary}, held[0].split(":")[0], tuple(held[:2]), tuple(held[2:5]), pending)


def copy_workspace(scanned: Scanned, destination: Path) -> Path:
    shutil.copytree(scanned.workspace, destination, ignore=shutil.ignore_patterns("prefect", "staging"))
    return destination


def batch_folder(workspace: Path, scanned: Scanned) -> Path:
    sha256 = scanned.summaries["batch_03_impossible_and_outliers.csv"]["batch"]["sha256"]
    return workspace / "datasets" / DATASET / "batches" / sha256


def sql(workspace: Path, statement: str, **params: Any) -> list[Any]:
    """As someone with a database client would: straight at the ledger, no poisonguard code."""
    engine = create_engine(f"sqlite:///{workspace / 'ledger.sqlite'}")
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def gate_runs(workspace: Path) -> list[Any]:
    """This workspace's gate runs in MLflow, newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    ledger = f"sqlite:///{workspace.resolve() / 'ledger.sqlite'}"
    return [
        r
        for r in client.search_runs(
            [experiment.experiment_id], "tags.stage = 'gate'", order_by=["attributes.start_time DESC"]
        )
        if r.data.tags.get("ledger_url") == ledger
    ]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- a clean state ---------------------------------------------------------------------------


def test_a_clean_state_releases_the_same_snapshot_every_time(run_cli, scanned, tmp_path):
    import pipeline
    from pipeline.config import Settings

    first = run_cli(
        "gate",
        "--dataset",
        DATASET,
        "--workspace",
        scanned.workspace,
        "--out",
        tmp_path / "one",
        "--max-pending",
        scanned.pending,
    )
    assert first.exit_code == 0, first.stderr
    assert "Gate passed" in first.stdout and first.stderr == ""
    again = run_cli(
        "gate",
        "--dataset",
        DATASET,
        "--workspace",
        scanned.workspace,
        "--out",
        tmp_path / "two",
        "--max-pending",
        scanned.pending,
    )
    assert again.exit_code == 0, again.stderr
    snapshot = tmp_path / "one" / "snapshot.parquet"
    assert sha256_of(snapshot) == sha256_of(tmp_path / "two" / "snapshot.parquet")  # hashed twice: same bytes
    assert (tmp_path / "one" / "manifest.json").read_bytes() == (tmp_path / "two" / "manifest.json").read_bytes()
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert manifest["snapshot"]["sha256"] == sha256_of(snapshot) and sha256_of(snapshot) in first.stdout

    # the library function (no Prefect) gives the same bytes as the flow
    result = pipeline.gate(
        DATASET, out=tmp_path / "lib", max_pending=scanned.pending, settings=Settings.from_environment(scanned.workspace)
    )
    assert result.sha256 == manifest["snapshot"]["sha256"] == sha256_of(result.path)
    assert result.dataset.digest == result.sha256[:32]

    # what the manifest says: every batch with its sha256 and file hashes, reviews, the ledger head
    batches = {b["file"]: b for b in manifest["batches"]}
    for name, summary in scanned.summaries.items():
        assert batches[name]["sha256"] == summary["batch"]["sha256"]
        assert batches[name]["mlflow_run_id"] == summary["mlflow"]["run_id"]
        assert {"accepted.parquet", "quarantined.parquet", "summary.json"} <= set(batches[name]["files"])
    assert manifest["reviews"] == {"actions": 5, "released": 2, "rejected": 3, "pending": scanned.pending}
    assert manifest["ledger"]["head_sequence"] > 0 and len(manifest["ledger"]["head_hash"]) == 64

    # the gate's MLflow run: stage=gate, the snapshot as an input with our digest, the head, the manifest
    run = gate_runs(scanned.workspace)[0]
    assert run.info.run_id == result.run_id and run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["gate_status"] == "passed" and tags["snapshot_sha256"] == result.sha256
    assert tags["ledger_head_sequence"] == str(manifest["ledger"]["head_sequence"])
    assert tags["expected_head_sequence"] == tags["ledger_head_sequence"]  # the earlier gates' head was checked
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert inputs[f"{DATASET}-snapshot"].dataset.digest == result.sha256[:32]
    assert {t.key: t.value for t in inputs[f"{DATASET}-snapshot"].tags}["sha256"] == result.sha256
    assert {b["sha256"] for b in manifest["batches"]} == {v for k, v in tags.items() if k.startswith("batch_sha256.")}


def test_released_rows_reach_the_snapshot_rejected_and_pending_ones_do_not(run_cli, scanned, tmp_path):
    result = run_cli(
        "gate", "--dataset", DATASET, "--workspace", scanned.workspace, "--out", tmp_path, "--max-pending", scanned.pending
    )
    assert result.exit_code == 0, result.stderr
    snapshot = pd.read_parquet(tmp_path / "snapshot.parquet")
    ids = {f"{b}:{n}" for b, n in zip(snapshot["poisonguard_batch_id"], snapshot["row_number"])}
    assert set(scanned.released) <= ids
    assert not set(scanned.rejected) & ids
    accepted = sum(s["counts"]["accepted"] for s in scanned.summaries.values())
    assert len(snapshot) == len(ids) == accepted + len(scanned.released)
    assert "suspicion" not in snapshot.columns and "reasons" not in snapshot.columns
    assert list(snapshot["row_number"]) == sorted(snapshot["row_number"])  # released rows in their place

    dropped = run_cli(
        "gate",
        "--dataset",
        DATASET,
        "--workspace",
        scanned.workspace,
        "--out",
        tmp_path / "bare",
        "--max-pending",
        scanned.pending,
        "--drop-provenance",
    )
    assert dropped.exit_code == 0, dropped.stderr
    bare = pd.read_parquet(tmp_path / "bare" / "snapshot.parquet")
    assert list(bare.columns) == [c for c in snapshot.columns if c not in ("poisonguard_batch_id", "row_number")]
    assert len(bare) == len(snapshot)


def test_rows_awaiting_review_beyond_max_pending_refuse(run_cli, scanned, tmp_path):
    (tmp_path / "snapshot.parquet").write_bytes(b"an earlier snapshot")
    result = run_cli(
        "gate",
        "--dataset",
        DATASET,
        "--workspace",
        scanned.workspace,
        "--out",
        tmp_path,
        "--max-pending",
        scanned.pending - 1,
    )
    assert result.exit_code == 3
    assert f"{scanned.pending} row(s) of dataset '{DATASET}' await review (allowed: {scanned.pending - 1})" in result.stderr
    assert not (tmp_path / "snapshot.parquet").exists()  # nothing released, not even an old snapshot
    run = gate_runs(scanned.workspace)[0]
    assert run.info.status == "FAILED" and run.data.tags["refusal"] == "pending" and "alarm" not in run.data.tags
    assert run_cli("gate", "--dataset", DATASET, "--workspace", scanned.workspace, "--out", tmp_path).exit_code == 3


# --- tampering -------------------------------------------------------------------------------


def _edit_cell(folder: Path, name: str = "accepted.parquet") -> int:
    frame = pd.read_parquet(folder / name)
    frame.loc[3, "pirat"] = frame.loc[3, "pirat"] + 0.01  # one cell, a plausible value
    frame.to_parquet(folder / name, index=False)
    return int(frame.loc[3, "row_number"])


def cell_edited(ws: Path, s: Scanned) -> list[str]:
    row = _edit_cell(batch_folder(ws, s))
    return ["accepted.parquet was changed since acceptance", f"values changed in row(s) {s.batch_id}:{row}"]


def rejected_row_moved_into_accepted(ws: Path, s: Scanned) -> list[str]:
    folder = batch_folder(ws, s)
    quarantined, accepted = pd.read_parquet(folder / "quarantined.parquet"), pd.read_parquet(folder / "accepted.parquet")
    number = int(s.rejected[0].split(":")[1])
    row = quarantined[quarantined["row_number"] == number].drop(columns=["suspicion", "reasons"])
    pd.concat([accepted, row], ignore_index=True).to_parquet(folder / "accepted.parquet", index=False)
    quarantined[quarantined["row_number"] != number].to_parquet(folder / "quarantined.parquet", index=False)
    return [
        "accepted.parquet was changed since acceptance",
        f"row(s) added {s.rejected[0]}",
        "quarantined.parquet was changed since acceptance",
        f"row(s) removed {s.rejected[0]}",
    ]


def file_deleted(ws: Path, s: Scanned) -> list[str]:
    (batch_folder(ws, s) / "quarantined.parquet").unlink()
    return [f"batch {s.batch_id} (batch_03_impossible_and_outliers.csv)", "quarantined.parquet is missing"]


def file_added_to_a_batch(ws: Path, s: Scanned) -> list[str]:
    (batch_folder(ws, s) / "extra_rows.parquet").write_bytes(b"PAR1")
    return ["extra_rows.parquet is not a file the ledger recorded for this batch"]


def batch_folder_added(ws: Path, s: Scanned) -> list[str]:
    fake = "f" * 64
    shutil.copytree(batch_folder(ws, s), batch_folder(ws, s).parent / fake)
    return [f"datasets/{DATASET}/batches/{fake} is a batch folder the ledger does not know"]


def review_flipped_in_the_database(ws: Path, s: Scanned) -> list[str]:
    sql(ws, "UPDATE review_actions SET action = 'release' WHERE row_id = :row", row=s.rejected[0])
    return ["ledger: entry", f"(review of {s.rejected[0]}): recorded action changed from reject to release"]


def file_hash_rewritten_in_the_database(ws: Path, s: Scanned) -> list[str]:
    """The insider edits a file and the hash the ledger holds for it: the chain shows the latter."""
    folder = batch_folder(ws, s)
    _edit_cell(folder)
    (files,) = sql(ws, "SELECT files FROM batches WHERE id = :id", id=s.batch_id)[0]
    files = json.loads(files) | {"accepted.parquet": sha256_of(folder / "accepted.parquet")}
    sql(ws, "UPDATE batches SET files = :files WHERE id = :id", files=json.dumps(files), id=s.batch_id)
    return [f"(batch {s.batch_id}): recorded sha256 of accepted.parquet changed from"]


TAMPERING: list[Callable[[Path, Scanned], list[str]]] = [
    cell_edited,
    rejected_row_moved_into_accepted,
    file_deleted,
    file_added_to_a_batch,
    batch_folder_added,
    review_flipped_in_the_database,
    file_hash_rewritten_in_the_database,
]


@pytest.mark.parametrize("tamper", TAMPERING, ids=[t.__name__ for t in TAMPERING])
def test_tampering_refuses_names_what_changed_and_raises_an_alarm(run_cli, scanned, tmp_path, tamper):
    workspace = copy_workspace(scanned, tmp_path / "ws")
    expected = tamper(workspace, scanned)
    result = run_cli(
        "gate", "--dataset", DATASET, "--workspace", workspace, "--out", tmp_path / "out", "--max-pending", scanned.pending
    )
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert "nothing was released" in result.stderr and "Traceback" not in result.stderr
    for message in expected:
        assert message in result.stderr, (message, result.stderr)
    assert not (tmp_path / "out" / "snapshot.parquet").exists()
    refused = json.loads((tmp_path / "out" / "refused.json").read_text())
    assert refused["tampered"] and refused["problems"]
    run = gate_runs(workspace)[0]
    assert run.info.status == "FAILED" and run.data.tags["alarm"] == "tampered"
    assert run.data.tags["alarm_message"] == refused["problems"][0]["message"][:5000]


def test_newest_ledger_entries_cut_off_are_caught_by_the_head_kept_in_mlflow(run_cli, scanned, tmp_path):
    workspace = copy_workspace(scanned, tmp_path / "ws")
    args = (
        "gate",
        "--dataset",
        DATASET,
        "--workspace",
        workspace,
        "--out",
        tmp_path / "out",
        "--max-pending",
        scanned.pending,
    )
    assert run_cli(*args).exit_code == 0  # this gate logs the head of this copy's ledger
    ((last, subject),) = sql(workspace, "SELECT sequence, subject FROM ledger_entries ORDER BY sequence DESC LIMIT 1")
    sql(workspace, "DELETE FROM ledger_entries WHERE sequence = :n", n=last)
    sql(workspace, "DELETE FROM review_actions WHERE row_id = :row", row=subject)  # the chain alone is consistent
    result = run_cli(*args[:-1], scanned.pending + 1)
    assert result.exit_code == 3
    assert f"the chain ends at entry {last - 1}, but entry {last} was recorded as its head earlier" in result.stderr


# --- lineage ---------------------------------------------------------------------------------


def test_a_registered_model_leads_back_to_its_batches_and_their_scans(scanned, tmp_path):
    """model version → run → input digest = snapshot sha256 → gate run → manifest → batch
    sha256s → scan runs (tags.batch_sha256) → the reviews mirrored there; MLflow's API only."""
    from mlflow.tracking import MlflowClient

    spec = importlib.util.spec_from_file_location("train_with_gate", REPO / "examples" / "train_with_gate.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    name = f"gate-test-{uuid.uuid4().hex[:8]}"
    trained = example.main(
        [
            "--workspace",
            str(scanned.workspace),
            "--dataset",
            DATASET,
            "--out",
            str(tmp_path),
            "--max-pending",
            str(scanned.pending),
            "--model-name",
            name,
            "--experiment",
            f"{name}-training",
        ]
    )

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    version = client.get_model_version(name, trained["version"])
    training_run = client.get_run(version.run_id)
    (snapshot_input,) = [
        d
        for d in training_run.inputs.dataset_inputs
        if {t.key: t.value for t in d.tags}.get("mlflow.data.context") == "training"
    ]
    snapshot_sha256 = {t.key: t.value for t in snapshot_input.tags}["sha256"]
    assert snapshot_input.dataset.digest == snapshot_sha256[:32]
    assert snapshot_sha256 == sha256_of(tmp_path / "snapshot.parquet")

    experiments = [e.experiment_id for e in client.search_experiments()]
    gate_run = client.search_runs(
        experiments,
        f"tags.stage = 'gate' and tags.snapshot_sha256 = '{snapshot_sha256}'",
        order_by=["attributes.start_time DESC"],
    )[0]
    manifest = json.loads(Path(client.download_artifacts(gate_run.info.run_id, "manifest.json")).read_text())
    assert manifest["snapshot"]["sha256"] == snapshot_sha256
    batch_sha256s = {b["sha256"] for b in manifest["batches"]}
    assert batch_sha256s == {v for k, v in gate_run.data.tags.items() if k.startswith("batch_sha256.")}
    assert batch_sha256s == {s["batch"]["sha256"] for s in scanned.summaries.values()}

    for sha256 in batch_sha256s:
        # other tests scan the same sample batches for other datasets into this session's MLflow
        (scan_run,) = client.search_runs(experiments, f"tags.batch_sha256 = '{sha256}' and tags.dataset = '{DATASET}'")
        summary = next(s for s in scanned.summaries.values() if s["batch"]["sha256"] == sha256)
        assert scan_run.info.run_id == summary["mlflow"]["run_id"]
        entry = next(b for b in manifest["batches"] if b["sha256"] == sha256)
        # the file hashes the gate checked are the ones the scan run recorded at commit
        assert entry["files"]["accepted.parquet"] == scan_run.data.tags["file_sha256.accepted.parquet"]
        if sha256 == scanned.summaries["batch_03_impossible_and_outliers.csv"]["batch"]["sha256"]:
            released = scanned.released[0].split(":")[1]
            assert scan_run.data.tags[f"review.row.{released}"].startswith("released by alice")


# --- ledgers from before file hashes, and the pieces -----------------------------------------


@pytest.fixture(params=["sqlite"] + (["postgresql"] if PG_URL else []))
def old_ledger_url(request, tmp_path):
    """A ledger database at revision 0001 (no file hashes), with one batch recorded as
    poisonguard recorded it then."""
    import alembic.command
    import alembic.config

    from pipeline.ledger.chain import GENESIS_HASH, digest, entry_hash
    from pipeline.ledger.database import MIGRATIONS

    if request.param == "sqlite":
        url, cleanup = f"sqlite:///{tmp_path / 'ws' / 'ledger.sqlite'}", None
        (tmp_path / "ws").mkdir()
    else:
        from sqlalchemy.engine import make_url

        schema = f"gate_test_{uuid.uuid4().hex[:16]}"
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
        cleanup = (admin, schema)
    engine = create_engine(url)
    config = alembic.config.Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    sha256 = "ab" * 32
    payload = {
        "id": sha256[:12],
        "sha256": sha256,
        "dataset": DATASET,
        "file": "old.csv",
        "source": "feed",
        "submitter": "carol",
        "mlflow_run_id": None,
        "scanned_at": "2026-11-01T09:00:00.000000+00:00",
        "rows": 0,
        "accepted": 0,
        "quarantined": 0,
    }
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        alembic.command.upgrade(config, "0001")
        connection.execute(
            text(
                "INSERT INTO batches (id, sha256, dataset, file, source, submitter, mlflow_run_id, scanned_at, rows, "
                "accepted, quarantined) VALUES (:id, :sha256, :dataset, :file, :source, :submitter, NULL, :at, 0, 0, 0)"
            ),
            payload | {"at": "2026-11-01 09:00:00+00:00"},
        )
        connection.execute(
            text(
                "INSERT INTO ledger_entries (sequence, kind, subject, payload_digest, recorded, prev_hash, entry_hash) "
                "VALUES (1, 'batch', :id, :digest, :recorded, :prev, :hash)"
            ),
            {
                "id": payload["id"],
                "digest": digest(payload),
                "recorded": json.dumps(payload),
                "prev": GENESIS_HASH,
                "hash": entry_hash(GENESIS_HASH, 1, "batch", payload["id"], digest(payload)),
            },
        )
    engine.dispose()
    yield url, payload
    if cleanup:
        admin, schema = cleanup
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


def test_a_ledger_from_before_file_hashes_upgrades_and_still_verifies(old_ledger_url, run_cli, tmp_path):
    from pipeline.ledger import Ledger

    url, payload = old_ledger_url
    with Ledger.open(url) as ledger:  # migrates 0001 → 0002
        assert ledger.verify() == []
        assert ledger.get_batch(payload["id"]).files is None
    if not url.startswith("sqlite"):
        return
    # the gate cannot vouch for such a batch, and says so
    (tmp_path / "ws" / "datasets" / DATASET / "batches" / payload["sha256"]).mkdir(parents=True)
    result = run_cli("gate", "--dataset", DATASET, "--workspace", tmp_path / "ws", "--out", tmp_path / "out")
    assert result.exit_code == 3
    assert "recorded before the ledger kept file hashes" in result.stderr


def test_snapshot_parquet_bytes_depend_on_the_data_only():
    from pipeline.gating import parquet_bytes

    frame = pd.DataFrame({"deny": ["no", "yes", None], "pirat": [0.2, 0.35, float("nan")], "row_number": [0, 1, 2]})
    assert parquet_bytes(frame) == parquet_bytes(frame.copy())
    assert parquet_bytes(frame) != parquet_bytes(frame.assign(pirat=[0.2, 0.36, float("nan")]))
    assert b"pandas" not in parquet_bytes(frame)  # no pandas version (or anything else of the writer's day)
    assert pd.read_parquet(__import__("io").BytesIO(parquet_bytes(frame))).equals(frame)


def test_the_gate_is_a_prefect_flow_and_a_refusal_exits_3():
    from flows.gate import gate_flow
    from pipeline.errors import GateRefused

    assert gate_flow.name == "poisonguard-gate"
    assert GateRefused.exit_code == 3


# --- a batch called poisoned ----------------------------------------------------------------------


def _poisoned_case(released: int, pending: int):
    import datetime as dt

    from pipeline.gating import GateRequest, LedgerState, VerifiedBatch, WorkspaceCheck
    from pipeline.ledger.records import BatchRecord

    record = BatchRecord(
        id="0123456789ab",
        sha256="0123456789ab" + "0" * 52,
        dataset=DATASET,
        file="flips.csv",
        source="partner",
        submitter="mallory",
        mlflow_run_id=None,
        scanned_at=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        rows=140,
        accepted=110,
        quarantined=30,
        pending=pending,
        released=released,
        rejected=30 - pending - released,
    )
    headline = "Verdict: POISONED (p = 7.1e-07): an estimated 28 of 140 rows (13-47) are poisoned: 28 flipped labels."
    batch = VerifiedBatch(record, pd.DataFrame(), pd.DataFrame(), headline)
    state = LedgerState(DATASET, "sqlite://", (record,), {}, pending, None, None, ())
    return GateRequest(DATASET, Path("out"), max_pending=30), state, WorkspaceCheck((batch,), (), 0)


def test_a_poisoned_batch_nobody_has_reviewed_refuses_whatever_max_pending_allows():
    from pipeline.gating import decide

    refusal = decide(*_poisoned_case(released=0, pending=30))
    assert refusal is not None and not refusal.tampered and refusal.pending <= refusal.max_pending
    message = refusal.message(DATASET, None, None)
    assert "batch 0123456789ab (flips.csv) was called poisoned by its scan" in message
    assert "28 flipped labels" in message and "poisonguard review show 0123456789ab" in message
    assert refusal.as_dict(DATASET)["unreviewed_poisoned_batches"][0]["pending"] == 30
    # once a steward has acted on its rows, --max-pending governs the rest as for any batch
    assert decide(*_poisoned_case(released=1, pending=29)) is None
