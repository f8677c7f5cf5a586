"""docs/security.md's threat model, one test per row: what each party can do, and what the gate
then proves. One batch is scanned and reviewed for real with a ledger anchor outside the
workspace; each test tampers with copies of that workspace (and of its anchor).
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from tests.conftest import SAMPLES, SUITE

DATASET = "threat-model"


@dataclass(frozen=True)
class Scanned:
    workspace: Path
    anchor: Path
    anchor_key: str
    rejected: tuple[str, ...]
    pending: int


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> Scanned:
    from threadpoolctl import threadpool_limits

    from pipeline.cli import run_scan
    from pipeline.review import act, open_ledger

    root = tmp_path_factory.mktemp("threat")
    anchor, key = root / "outside" / "ledger-heads.jsonl", secrets.token_hex(32)
    saved = {k: os.environ.get(k) for k in ("POISONGUARD_LEDGER_ANCHOR", "POISONGUARD_ANCHOR_KEY")}
    os.environ.update({"POISONGUARD_LEDGER_ANCHOR": str(anchor), "POISONGUARD_ANCHOR_KEY": key})
    try:
        with threadpool_limits(limits=1):
            run_scan(
                batch=SAMPLES / "batch_03_impossible_and_outliers.csv",
                reference=SAMPLES / "reference.parquet",
                label="deny",
                out=root / "out",
                suite=SUITE,
                holdout=SAMPLES / "holdout.parquet",
                source="partner-t",
                dataset=DATASET,
                workspace=root / "ws",
            )
        settings = _settings(root / "ws", anchor, key)
        with open_ledger(settings) as ledger:
            held = [r.id for r in ledger.list_rows(dataset=DATASET, status="pending")]
            act(settings, ledger, "release", held[:2], "alice", "income confirmed")
            act(settings, ledger, "reject", held[2:5], "bob", "impossible ratios")
            pending = ledger.pending_count(DATASET)
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
    return Scanned(root / "ws", anchor, key, tuple(held[2:5]), pending)


def _settings(workspace: Path, anchor: Path | None, key: str | None = None):
    from pipeline.config import Settings

    env = {k: v for k, v in os.environ.items() if k not in ("POISONGUARD_LEDGER_ANCHOR", "POISONGUARD_ANCHOR_KEY")}
    if anchor is not None:
        env["POISONGUARD_LEDGER_ANCHOR"] = str(anchor)
    if key is not None:
        env["POISONGUARD_ANCHOR_KEY"] = key
    return Settings.from_environment(workspace, environ=env)


def _copy(scanned: Scanned, tmp_path: Path) -> tuple[Path, Path]:
    workspace = tmp_path / "ws"
    shutil.copytree(scanned.workspace, workspace, ignore=shutil.ignore_patterns("prefect", "staging"))
    anchor = tmp_path / "outside" / "ledger-heads.jsonl"
    anchor.parent.mkdir()
    shutil.copy(scanned.anchor, anchor)
    return workspace, anchor


def _gate(settings, out: Path, pending: int, expect_head: str | None = None):
    import pipeline

    return pipeline.gate(DATASET, out=out, max_pending=pending, settings=settings, expect_head=expect_head)


def _refusal(settings, out: Path, pending: int, expect_head: str | None = None) -> str:
    from pipeline.errors import GateRefused

    with pytest.raises(GateRefused) as refused:
        _gate(settings, out, pending, expect_head)
    assert not (out / "snapshot.parquet").exists()
    return str(refused.value)


def _delete_gate_runs(workspace: Path) -> None:
    """The insider also deletes every gate run MLflow kept for this ledger (its recorded heads)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(f"poisonguard-{DATASET}")
    for run in client.search_runs([experiment.experiment_id], "tags.stage = 'gate'"):
        if run.data.tags.get("ledger_url") == f"sqlite:///{workspace.resolve() / 'ledger.sqlite'}":
            client.delete_run(run.info.run_id)


def _rewrite_history(workspace: Path, row_id: str) -> None:
    """Turn a steward's reject into a release and recompute every digest and hash after it:
    the chain is consistent again, and 'poisonguard verify' alone says intact."""
    from pipeline.ledger.chain import digest, entry_hash, review_payload
    from pipeline.ledger.models import LedgerEntry, ReviewActionRow

    engine = create_engine(f"sqlite:///{workspace / 'ledger.sqlite'}")
    with Session(engine) as session, session.begin():
        action = session.scalars(select(ReviewActionRow).where(ReviewActionRow.row_id == row_id)).one()
        action.action = "release"
        session.flush()
        payload = review_payload(action)
        prev = None
        for entry in session.scalars(select(LedgerEntry).order_by(LedgerEntry.sequence)):
            if entry.kind == "review" and entry.subject == row_id:
                entry.payload_digest, entry.recorded = digest(payload), payload
            if prev is not None:
                entry.prev_hash = prev
            entry.entry_hash = entry_hash(entry.prev_hash, entry.sequence, entry.kind, entry.subject, entry.payload_digest)
            prev = entry.entry_hash
    engine.dispose()


def _append_forged_release(workspace: Path, row_id: str) -> None:
    """Add a release of a pending row, with a correct chain entry after the head."""
    import datetime as dt

    from pipeline.ledger.chain import digest, entry_hash, review_payload
    from pipeline.ledger.models import LedgerEntry, ReviewActionRow

    engine = create_engine(f"sqlite:///{workspace / 'ledger.sqlite'}")
    with Session(engine) as session, session.begin():
        last = session.scalars(select(LedgerEntry).order_by(LedgerEntry.sequence.desc()).limit(1)).one()
        action = ReviewActionRow(
            row_id=row_id, action="release", by="alice", reason="looks fine", at=dt.datetime.now(dt.UTC)
        )
        session.add(action)
        session.flush()
        payload = review_payload(action)
        session.add(
            LedgerEntry(
                sequence=last.sequence + 1,
                kind="review",
                subject=row_id,
                payload_digest=digest(payload),
                recorded=payload,
                prev_hash=last.entry_hash,
                entry_hash=entry_hash(last.entry_hash, last.sequence + 1, "review", row_id, digest(payload)),
            )
        )
    engine.dispose()


# --- workspace writer -----------------------------------------------------------------------


def test_workspace_writer_editing_accepted_data_is_refused(scanned, tmp_path):
    workspace, anchor = _copy(scanned, tmp_path)
    folder = next((workspace / "datasets" / DATASET / "batches").iterdir())
    frame = pd.read_parquet(folder / "accepted.parquet")
    first, second = sorted(frame["deny"].astype(str).unique())[:2]
    frame.loc[:9, "deny"] = frame.loc[:9, "deny"].astype(str).map({first: second, second: first})  # ten labels flipped
    frame.to_parquet(folder / "accepted.parquet", index=False)
    message = _refusal(_settings(workspace, anchor, scanned.anchor_key), tmp_path / "out", scanned.pending)
    assert "accepted.parquet was changed since acceptance" in message


def test_workspace_writer_rewriting_history_is_refused_by_the_anchor(scanned, tmp_path, run_cli, monkeypatch):
    """The issue's attack: entries rewritten with recomputed hashes, MLflow's gate runs deleted."""
    workspace, anchor = _copy(scanned, tmp_path)
    settings = _settings(workspace, anchor, scanned.anchor_key)
    _gate(settings, tmp_path / "before", scanned.pending)  # a gate run that logs the head to MLflow
    _rewrite_history(workspace, scanned.rejected[0])
    _delete_gate_runs(workspace)

    message = _refusal(settings, tmp_path / "out", scanned.pending)
    assert "is not the entry recorded as the head earlier" in message
    verify = run_cli("verify", "--workspace", workspace)
    assert verify.exit_code == 0  # without the anchor in its environment, the chain alone looks intact
    monkeypatch.setenv("POISONGUARD_LEDGER_ANCHOR", str(anchor))
    monkeypatch.setenv("POISONGUARD_ANCHOR_KEY", scanned.anchor_key)
    verify = run_cli("verify", "--workspace", workspace)
    assert verify.exit_code == 3 and "is not the entry recorded as the head earlier" in verify.stderr


def test_without_an_anchor_a_rewritten_history_passes_the_gate(scanned, tmp_path):
    """What docs/security.md says holds without the anchor: nothing against this rewrite."""
    workspace, _ = _copy(scanned, tmp_path)
    _rewrite_history(workspace, scanned.rejected[0])
    _delete_gate_runs(workspace)
    result = _gate(_settings(workspace, None), tmp_path / "out", scanned.pending)
    assert int(scanned.rejected[0].split(":")[1]) in set(
        pd.read_parquet(result.path).query(f"poisonguard_batch_id == '{scanned.rejected[0].split(':')[0]}'")["row_number"]
    )


def test_a_pinned_head_refuses_a_rewritten_history_without_an_anchor(scanned, tmp_path):
    workspace, _ = _copy(scanned, tmp_path)
    settings = _settings(workspace, None)
    from pipeline.anchor import describe
    from pipeline.ledger import Ledger

    with Ledger.open(settings.database_url.get_secret_value()) as ledger:
        pinned = describe(ledger.head())
    _gate(settings, tmp_path / "pinned", scanned.pending, expect_head=pinned)  # the pinned head passes
    _rewrite_history(workspace, scanned.rejected[0])
    message = _refusal(settings, tmp_path / "out", scanned.pending, expect_head=pinned)
    assert "as pinned with --expect-head" in message


def test_workspace_writer_appending_a_forged_review_is_refused(scanned, tmp_path):
    workspace, anchor = _copy(scanned, tmp_path)
    settings = _settings(workspace, anchor, scanned.anchor_key)
    from pipeline.ledger import Ledger

    with Ledger.open(settings.database_url.get_secret_value()) as ledger:
        pending_row = ledger.list_rows(dataset=DATASET, status="pending")[0].id
    _append_forged_release(workspace, pending_row)
    message = _refusal(settings, tmp_path / "out", scanned.pending)
    assert "were not anchored" in message


def test_workspace_writer_cutting_off_the_newest_entries_is_refused(scanned, tmp_path):
    workspace, anchor = _copy(scanned, tmp_path)
    engine = create_engine(f"sqlite:///{workspace / 'ledger.sqlite'}")
    with engine.begin() as connection:
        last, subject = connection.exec_driver_sql(
            "SELECT sequence, subject FROM ledger_entries ORDER BY sequence DESC LIMIT 1"
        ).one()
        connection.exec_driver_sql("DELETE FROM ledger_entries WHERE sequence = ?", (last,))
        connection.exec_driver_sql("DELETE FROM review_actions WHERE row_id = ?", (subject,))
    engine.dispose()
    message = _refusal(_settings(workspace, anchor, scanned.anchor_key), tmp_path / "out", scanned.pending + 1)
    assert f"the chain ends at entry {last - 1}, but entry {last} was recorded as its head earlier" in message


def test_a_signed_anchor_in_the_workspace_refuses_a_forged_head(scanned, tmp_path):
    """With POISONGUARD_ANCHOR_KEY and no anchor file, signed heads live in the workspace: the
    writer can append a head of their own, but not sign it."""
    from pipeline.anchor import WORKSPACE_ANCHOR

    workspace, anchor = _copy(scanned, tmp_path)
    shutil.copy(anchor, workspace / WORKSPACE_ANCHOR)
    settings = _settings(workspace, None, scanned.anchor_key)
    assert settings.anchor is not None and settings.anchor.path == workspace / WORKSPACE_ANCHOR
    _rewrite_history(workspace, scanned.rejected[0])
    from pipeline.ledger import Ledger

    with Ledger.open(settings.database_url.get_secret_value()) as ledger:
        head = ledger.head()
    with open(workspace / WORKSPACE_ANCHOR, "a") as handle:  # the forged head, unsigned
        handle.write(json.dumps({"sequence": head.sequence + 0, "entry_hash": head.entry_hash}) + "\n")
    message = _refusal(settings, tmp_path / "out", scanned.pending)
    assert "is not a head signed with POISONGUARD_ANCHOR_KEY" in message


def test_an_anchor_inside_the_workspace_without_a_key_is_refused(tmp_path):
    from pipeline.errors import PoisonguardError

    with pytest.raises(PoisonguardError, match="inside the workspace"):
        _settings(tmp_path / "ws", tmp_path / "ws" / "heads.jsonl")


def test_workspace_writer_cannot_run_code_through_the_fit_cache(tmp_path):
    from pipeline.fit_cache import FitCache

    workspace, marker = tmp_path / "ws", tmp_path / "pwned"
    key = os.urandom(32)
    (workspace / "keys").mkdir(parents=True)
    (workspace / "keys" / "fit-cache.key").write_text(key.hex())
    attacker = FitCache(tmp_path / "home" / ".cache" / "poisonguard" / "fits", key)  # where the cache reads
    parts = {"reference": "x"}
    payload, tag = attacker._paths(attacker.key(parts))
    payload.parent.mkdir(parents=True)
    payload.write_bytes(pickle.dumps(_Planted(marker)))
    tag.write_text(attacker._tag(payload.read_bytes()))
    cache = FitCache.for_workspace(workspace, {"HOME": str(tmp_path / "home")})
    assert cache is not None and cache.get_or_fit(parts, lambda: "refitted") == "refitted"
    assert not marker.exists()


class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.write_text, (self.marker, "planted code ran"))


def test_workspace_writer_finds_no_secret_in_the_workspace(scanned):
    """The anchor key signed every head of the scan and the reviews; no file of the workspace holds it."""
    leaked = [p for p in scanned.workspace.rglob("*") if p.is_file() and scanned.anchor_key.encode() in p.read_bytes()]
    assert leaked == []


# --- data provider --------------------------------------------------------------------------


def test_data_provider_cannot_make_the_scan_read_another_file(run_cli, tmp_path):
    link = tmp_path / "batch.csv"
    link.symlink_to(SAMPLES / "batch_01_clean.csv")
    result = run_cli(
        "scan",
        link,
        "--reference",
        SAMPLES / "reference.parquet",
        "--label",
        "deny",
        "--workspace",
        tmp_path / "ws",
        "--out",
        tmp_path / "out",
    )
    assert result.exit_code == 2 and "symbolic link" in result.stderr and "Traceback" not in result.stderr


def test_a_link_in_a_landing_area_must_stay_inside_it(tmp_path):
    from pipeline.errors import InputError
    from pipeline.input_paths import check_batch_path

    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "inside.csv").write_text("a\n1\n")
    (landing / "to-inside.csv").symlink_to(landing / "inside.csv")
    (landing / "to-outside.csv").symlink_to(SAMPLES / "batch_01_clean.csv")
    check_batch_path(landing / "inside.csv", roots=[landing])
    check_batch_path(landing / "to-inside.csv", allow_symlinks=True, roots=[landing])
    with pytest.raises(InputError, match="symbolic link"):
        check_batch_path(landing / "to-inside.csv", roots=[landing])
    with pytest.raises(InputError, match="outside the landing area"):
        check_batch_path(landing / "to-outside.csv", allow_symlinks=True, roots=[landing])
    with pytest.raises(InputError, match="not a regular file"):
        check_batch_path(Path("/dev/null"))


# --- steward and operator -------------------------------------------------------------------


def test_a_stewards_action_is_recorded_with_who_and_why_and_anchored(scanned):
    from pipeline.anchor import Anchor
    from pipeline.ledger import Ledger

    with Ledger.open(f"sqlite:///{scanned.workspace / 'ledger.sqlite'}") as ledger:
        record = ledger.get_row(scanned.rejected[0])
        head = ledger.head()
    assert record.review is not None and (record.review.by, record.review.reason) == ("bob", "impossible ratios")
    anchored, problems = Anchor(scanned.anchor, bytes.fromhex(scanned.anchor_key)).newest()
    assert problems == [] and anchored == head


def test_the_operators_keys_come_from_the_environment_and_are_checked(tmp_path):
    from pipeline.errors import PoisonguardError

    with pytest.raises(PoisonguardError, match="POISONGUARD_ANCHOR_KEY must hold at least 32 bytes"):
        _settings(tmp_path / "ws", tmp_path / "outside" / "a.jsonl", "ab" * 8)
