"""A scan killed with SIGKILL between two of its stages, then run again: every row in exactly
one of accepted/quarantined, the ledger and MLflow agreeing, no run left RUNNING.

``benchmarks/crash_injection.py`` kills the scan at every crash point of ``pipeline/faults.py``
and at timed moments; this module runs its checks on two representative points, chained in one
workspace so that each kill is also the rerun of the one before:

1. ``scan.run_started``: the scan's MLflow run exists, RUNNING, and nothing else. The next scan
   must mark that run FAILED (abandoned) and scan anew.
2. ``scan.committed``: the batch folder is committed, but the ledger does not know the batch and
   the run is still RUNNING. The next scan must deliver the committed decision, record it in
   the ledger and finish the run that produced it.

The scans run against a 400-row sample of the reference: detector fitting is most of a scan's
data work, and what is tested here is the bookkeeping, not the detection.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, SAMPLES, crash_harness

BATCH = SAMPLES / "batch_03_impossible_and_outliers.csv"  # rows both accepted and quarantined


harness = crash_harness()


@pytest.fixture(scope="module")
def small_trusted(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("trusted")
    reference, holdout = folder / "reference.parquet", folder / "holdout.parquet"
    (
        pd.read_parquet(SAMPLES / "reference.parquet")
        .sample(n=400, random_state=0)
        .sort_index()
        .to_parquet(reference, index=False)
    )
    pd.read_parquet(SAMPLES / "holdout.parquet").sample(n=200, random_state=0).sort_index().to_parquet(holdout, index=False)
    return reference, holdout


def test_every_crash_point_is_placed_once_in_the_scan_code():
    placed = []
    for path in (REPO / "pipeline" / "scan_run.py", REPO / "pipeline" / "store.py", REPO / "pipeline" / "provenance.py"):
        # progress.reached(point) is the checkpoint at stage ends that also report progress (passed to
        # evaluate as its `reached` hook)
        placed += re.findall(r'(?:checkpoint|reached)\("([^"]+)"\)', path.read_text())
    assert sorted(placed) == sorted(harness.CRASH_POINTS)


def test_a_checkpoint_is_inert_unless_named_and_refuses_unknown_names(monkeypatch):
    from pipeline.faults import FAULT_VARIABLE, checkpoint

    monkeypatch.setenv(FAULT_VARIABLE, "scan.committed")
    checkpoint("scan.ingested")  # another point: the process lives on
    with pytest.raises(ValueError, match="Unknown crash point"):
        checkpoint("scan.comitted")


def test_a_scan_killed_at_two_crash_points_recovers_on_the_next_run(tmp_path, small_trusted):
    reference, holdout = small_trusted
    inputs = harness.ScanInputs(batch=BATCH, reference=reference, holdout=holdout, dataset="crash-test")
    workspace, out = tmp_path / "ws", tmp_path / "out"

    # A one-off scan runs its steps in process (no temporary Prefect server): killed, it leaves
    # no process behind. (A killed flow run's orphaned server: tests/test_killed_scan_output.py.)
    first = harness.start_scan(inputs, workspace, out, harness.Kill("scan.run_started"))
    assert first.process.wait(timeout=harness.SCAN_TIMEOUT_S) == -9
    try:
        assert harness.session_members(first.process.pid) == {}
        assert harness.left_behind(workspace, inputs) == {
            "runs": {"RUNNING": 1},
            "staging": 0,
            "committed": False,
            "in_ledger": False,
        }

        second = harness.run_scan(inputs, workspace, out, harness.Kill("scan.committed"))
        assert second.killed, second.output_tail
        assert second.left_behind == {
            "runs": {"FAILED": 1, "RUNNING": 1},
            "staging": 0,
            "committed": True,
            "in_ledger": False,
        }
    finally:
        harness.end_session(first.process.pid)

    final = harness.run_scan(inputs, workspace, out)
    assert final.returncode == 0, final.output_tail
    assert json.loads((out / "summary.json").read_text())["duplicate"] is True  # delivered, not scanned again

    # the ledger's chain is verified in this process (``poisonguard verify`` runs the same code;
    # the harness runs the command itself)
    recovery = harness.recovery_check(inputs, workspace, out, run_verify_cli=False, gate_out=tmp_path / "gate")
    assert recovery.problems == []
    assert (recovery.rows, recovery.rows_lost, recovery.rows_duplicated) == (140, 0, 0)
    assert recovery.runs == {"FAILED": 1, "FINISHED": 1}


def test_staging_folders_of_killed_scans_are_removed_and_those_of_running_scans_kept(tmp_path):
    from pipeline.store import Workspace

    workspace = Workspace(tmp_path)
    killed, running, this = "a" * 64, "b" * 64, "c" * 64
    left_by_kill = workspace.staging_dir("d", killed)  # its scan is gone: no one holds its lock
    with workspace.batch_lock("d", killed):
        pass  # the lock file exists, free
    with workspace.batch_lock("d", running):
        in_progress = workspace.staging_dir("d", running)
        earlier_of_this = workspace.staging_dir("d", this)
        with workspace.batch_lock("d", this):
            mine = workspace.staging_dir("d", this)
        assert not left_by_kill.exists()
        assert in_progress.exists()
        assert not earlier_of_this.exists()  # a scan holding this batch's lock owns every staging of it
        assert mine.exists()
