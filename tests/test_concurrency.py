"""Scans and reviews at the same time.

Three real ``poisonguard scan`` processes start together on one workspace: two of the same
batch and one of another batch of the same dataset. The same bytes are ingested once (the other
scan reports the duplicate and delivers the recorded decision), both batches are recorded
whole, and the ledger's chain holds. Then stewards' reviews race gates in threads: every
snapshot a gate releases is the ledger's state at the head that gate recorded.

The scans run against a 400-row sample of the reference, to keep the module near a minute on
2 cores: what is tested is the bookkeeping, not the detection.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import SAMPLES, assert_conserved, crash_harness

DATASET = "concurrent"
BATCH_A = SAMPLES / "batch_03_impossible_and_outliers.csv"  # quarantines ~20 rows: the reviews' material
BATCH_B = SAMPLES / "batch_01_clean.csv"


harness = crash_harness()


@dataclass(frozen=True)
class Scanned:
    workspace: Path
    outs: dict[str, Path]  # "a1", "a2" (batch A twice), "b"
    attempts: dict[str, Any]
    sha256: dict[str, str]  # "a", "b"


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> Scanned:
    root = tmp_path_factory.mktemp("concurrent")
    reference, holdout = root / "reference.parquet", root / "holdout.parquet"
    (
        pd.read_parquet(SAMPLES / "reference.parquet")
        .sample(n=400, random_state=0)
        .sort_index()
        .to_parquet(reference, index=False)
    )
    pd.read_parquet(SAMPLES / "holdout.parquet").sample(n=200, random_state=0).sort_index().to_parquet(holdout, index=False)
    workspace = root / "ws"
    inputs = {
        name: harness.ScanInputs(batch=batch, reference=reference, holdout=holdout, dataset=DATASET)
        for name, batch in (("a1", BATCH_A), ("a2", BATCH_A), ("b", BATCH_B))
    }
    outs = {name: root / f"out-{name}" for name in inputs}
    running = {name: harness.start_scan(inputs[name], workspace, outs[name]) for name in inputs}
    attempts = {name: scan.finish() for name, scan in running.items()}
    from pipeline.io import sha256_file

    return Scanned(workspace, outs, attempts, {"a": sha256_file(BATCH_A), "b": sha256_file(BATCH_B)})


def settings_for(workspace: Path):
    from pipeline.config import Settings

    return Settings.from_environment(workspace, harness.scan_environment(workspace))


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


def test_two_scans_of_one_batch_at_once_ingest_it_once(scanned):
    from pipeline import provenance
    from pipeline.ledger import Ledger

    for name, attempt in scanned.attempts.items():
        assert attempt.returncode == 0, f"{name}: {attempt.output_tail}"
    first, second = summary(scanned.outs["a1"]), summary(scanned.outs["a2"])
    assert sorted([bool(first.get("duplicate")), bool(second.get("duplicate"))]) == [False, True]
    for out in (scanned.outs["a1"], scanned.outs["a2"]):
        assert_conserved(out, 140)
    placed = [
        (sorted(pd.read_parquet(out / "quarantined.parquet")["row_number"]))
        for out in (scanned.outs["a1"], scanned.outs["a2"])
    ]
    assert placed[0] == placed[1]

    settings = settings_for(scanned.workspace)
    with Ledger.open(settings.database_url.get_secret_value()) as ledger:
        batches = ledger.list_batches(DATASET)
        assert sorted(b.sha256 for b in batches) == sorted(scanned.sha256.values())  # each batch once
        a = next(b for b in batches if b.sha256 == scanned.sha256["a"])
        assert len(ledger.list_rows(batch_id=a.id)) == 140
        assert ledger.verify() == []
    folders = sorted(p.name for p in (scanned.workspace / "datasets" / DATASET / "batches").iterdir())
    assert folders == sorted(scanned.sha256.values())

    runs = provenance.find_scan_runs(settings.tracking_uri, scanned.sha256["a"], DATASET)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert [r.info.run_id for r in finished] == [a.mlflow_run_id] == [first["mlflow"]["run_id"]]
    assert second["mlflow"]["run_id"] == a.mlflow_run_id
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # a live scan's run is never taken for one a killed scan abandoned
    assert "abandoned" not in finished[0].data.tags


def test_scans_of_two_batches_of_one_dataset_at_once_are_both_recorded(scanned, tmp_path):
    import pipeline
    from pipeline import provenance
    from pipeline.ledger import Ledger, RowStatus

    other = summary(scanned.outs["b"])
    assert not other.get("duplicate") and other["batch"]["sha256"] == scanned.sha256["b"]
    assert_conserved(scanned.outs["b"], 140)
    settings = settings_for(scanned.workspace)
    with Ledger.open(settings.database_url.get_secret_value()) as ledger:
        b = next(b for b in ledger.list_batches(DATASET) if b.sha256 == scanned.sha256["b"])
        held = [r.row_number for r in ledger.list_rows(batch_id=b.id) if r.initial_status == RowStatus.PENDING]
    assert held == sorted(pd.read_parquet(scanned.outs["b"] / "quarantined.parquet")["row_number"])
    runs = provenance.find_scan_runs(settings.tracking_uri, scanned.sha256["b"], DATASET)
    assert [(r.info.run_id, r.info.status) for r in runs] == [(other["mlflow"]["run_id"], "FINISHED")]

    result = pipeline.gate(DATASET, out=tmp_path / "gate", settings=settings, max_pending=1000, review_poisoned=False)
    accepted = sum(len(pd.read_parquet(scanned.outs[name] / "accepted.parquet")) for name in ("a1", "b"))
    assert result.rows == accepted


def _ledger_tables(workspace: Path) -> tuple[list[tuple[int, str, str]], set[str]]:
    """Every review as (its entry's sequence, row id, action), and the rows the scans accepted,
    read straight from the ledger's tables."""
    engine = create_engine(f"sqlite:///{workspace / 'ledger.sqlite'}")
    try:
        with engine.connect() as connection:
            reviews = [
                tuple(r)
                for r in connection.execute(
                    text(
                        "SELECT e.sequence, r.row_id, r.action FROM review_actions r "
                        "JOIN ledger_entries e ON e.kind = 'review' AND e.subject = r.row_id"
                    )
                )
            ]
            accepted = {
                row_id
                for (row_id,) in connection.execute(
                    text("SELECT id FROM row_decisions WHERE dataset = :dataset AND initial_status = 'accepted'"),
                    {"dataset": DATASET},
                )
            }
    finally:
        engine.dispose()
    return reviews, accepted


def test_a_gate_racing_reviews_releases_the_ledger_state_at_its_head(scanned, tmp_path):
    import pipeline
    from pipeline.errors import PoisonguardError
    from pipeline.ledger import Ledger
    from pipeline.review import act

    settings = settings_for(scanned.workspace)
    with Ledger.open(settings.database_url.get_secret_value()) as ledger:
        pending = [r.id for r in ledger.list_rows(dataset=DATASET, status="pending")]
        start = ledger.head().sequence
    assert len(pending) >= 6, pending
    reviews_done = threading.Event()
    failures: list[BaseException] = []

    def review() -> None:
        try:
            with Ledger.open(settings.database_url.get_secret_value()) as ledger:
                for i, row in enumerate(pending):
                    act(settings, ledger, "release" if i % 2 == 0 else "reject", [row], "racer", "concurrency test")
                    time.sleep(0.05)
        except BaseException as error:  # reported by the test, not lost in the thread
            failures.append(error)
        finally:
            reviews_done.set()

    released: list[dict[str, Any]] = []  # manifest and snapshot rows of each gate that passed
    retries = 0

    def gate_once(k: int) -> None:
        nonlocal retries
        try:
            result = pipeline.gate(
                DATASET, out=tmp_path / f"gate-{k}", settings=settings, max_pending=1000, review_poisoned=False
            )
        except PoisonguardError as error:
            assert "changed while the gate read it" in str(error), error
            retries += 1
            return
        rows = pd.read_parquet(result.path, columns=["poisonguard_batch_id", "row_number"])
        released.append(
            {
                "manifest": result.manifest,
                "rows": {f"{b}:{n}" for b, n in zip(rows["poisonguard_batch_id"], rows["row_number"])},
            }
        )

    reviewer = threading.Thread(target=review)
    reviewer.start()
    k = 0
    while not reviews_done.is_set():
        gate_once(k)
        k += 1
    reviewer.join()
    assert not failures, failures
    gate_once(k)  # the state after every review

    reviews, accepted = _ledger_tables(scanned.workspace)
    end = max(sequence for sequence, _, _ in reviews)
    assert len(reviews) == len(pending) and end == start + len(pending)
    heads = [g["manifest"]["ledger"]["head_sequence"] for g in released]
    assert heads[-1] == end
    for gate in released:
        head = gate["manifest"]["ledger"]["head_sequence"]
        at_head = {row: action for sequence, row, action in reviews if sequence <= head}
        released_then = {row for row, action in at_head.items() if action == "release"}
        assert gate["rows"] == accepted | released_then, f"gate at head {head}"
        assert gate["manifest"]["reviews"] == {
            "actions": len(at_head),
            "released": len(released_then),
            "rejected": len(at_head) - len(released_then),
            "pending": len(pending) - len(at_head),
        }
    print(f"{len(released)} gates passed at heads {heads} (reviews {start + 1}..{end}), {retries} retried")


def test_a_gate_waits_for_a_scan_between_its_commit_and_its_ledger_record(scanned):
    """A committed batch folder whose scan still holds the batch lock is a scan about to record it
    in the ledger, not a folder added by hand: the gate waits for the lock instead of alarming."""
    from pipeline.gating import settle_scans
    from pipeline.store import Workspace

    workspace = Workspace(scanned.workspace)
    holding, released = threading.Event(), threading.Event()

    def committing_scan() -> None:
        with workspace.batch_lock(DATASET, scanned.sha256["b"]):
            holding.set()
            time.sleep(1.0)
            released.set()

    scan = threading.Thread(target=committing_scan)
    scan.start()
    assert holding.wait(10)
    settle_scans(settings_for(scanned.workspace), DATASET)
    assert released.is_set()
    scan.join()
