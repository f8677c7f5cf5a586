"""A steward's whole workflow through the CLI: scan → review list/show → release/reject, and the
ledger, the accepted data and MLflow agree afterwards."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SAMPLES


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """One real scan of the batch with impossible records and outliers (~20 rows held)."""
    from pipeline.cli import run_scan

    root = tmp_path_factory.mktemp("review")
    summary = run_scan(
        batch=SAMPLES / "batch_03_impossible_and_outliers.csv",
        reference=SAMPLES / "reference.parquet",
        label="deny",
        out=root / "out",
        suite=SAMPLES.parent / "expectations" / "hmda.json",
        holdout=SAMPLES / "holdout.parquet",
        source="partner-b",
        dataset="review-cli",
        workspace=root / "ws",
    )
    return root / "ws", summary


def _pending(run_cli, workspace) -> list[dict]:
    result = run_cli("review", "list", "--dataset", "review-cli", "--format", "json", "--workspace", workspace)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_pending_rows_are_the_scans_quarantined_rows_most_suspect_first(run_cli, scanned):
    workspace, summary = scanned
    pending = _pending(run_cli, workspace)
    assert len(pending) == summary["counts"]["quarantined"]
    assert [r["suspicion"] for r in pending] == sorted((r["suspicion"] for r in pending), reverse=True)
    assert all(r["reasons"] for r in pending)


def test_show_puts_the_row_beside_its_trusted_neighbours(run_cli, scanned):
    workspace, _ = scanned
    row = _pending(run_cli, workspace)[0]
    result = run_cli("review", "show", row["id"], "--workspace", workspace)
    assert result.exit_code == 0, result.stderr
    assert f"row {row['id']}" in result.stdout and "status pending" in result.stdout
    assert "trusted #5" in result.stdout and "distance" in result.stdout
    assert "scores (1 − p-value against trusted rows): outliers" in result.stdout
    assert row["reasons"][0][:60] in result.stdout


def test_release_and_reject_are_recorded_mirrored_and_final(run_cli, scanned):
    from pipeline import provenance
    from pipeline.config import Settings
    from pipeline.review import accepted_data, open_ledger

    workspace, summary = scanned
    first, second, third = (r["id"] for r in _pending(run_cli, workspace)[:3])
    released = run_cli(
        "review", "release", first, "--by", "alice", "--reason", "confirmed with the lender", "--workspace", workspace
    )
    assert released.exit_code == 0, released.stderr
    rejected = run_cli("review", "reject", second, "--by", "bob", "--reason", "impossible ratio", "--workspace", workspace)
    assert rejected.exit_code == 0, rejected.stderr

    # refusals: exit 2, one line, nothing changed
    for args in (
        ("release", first, "--by", "carol", "--reason", "again"),  # already decided
        ("reject", "000000000000:1", "--by", "carol", "--reason", "x"),  # unknown id
        ("release", third, "--by", " ", "--reason", "x"),  # no identity
        ("release", third, second, "--by", "carol", "--reason", "batch"),
    ):  # one bad id: none
        refused = run_cli("review", *args, "--workspace", workspace)
        assert refused.exit_code == 2 and refused.stderr.count("\n") == 1, (args, refused.stderr)
    settings = Settings.from_environment(workspace)
    with open_ledger(settings) as ledger:
        assert ledger.get_row(first).status.value == "released"
        assert ledger.get_row(first).review.by == "alice"
        assert ledger.get_row(second).status.value == "rejected"
        assert ledger.get_row(third).status.value == "pending"
        assert ledger.verify() == []
        data = accepted_data(settings, ledger, "review-cli")
    numbers = set(data["row_number"])
    assert int(first.split(":")[1]) in numbers and int(second.split(":")[1]) not in numbers
    assert len(data) == summary["counts"]["accepted"] + 1

    run = provenance._client(settings.tracking_uri).get_run(summary["mlflow"]["run_id"])
    assert run.data.tags[f"review.row.{first.split(':')[1]}"].startswith("released by alice")
    assert run.data.tags[f"review.row.{second.split(':')[1]}"].startswith("rejected by bob")
    assert run.data.metrics["review.released"] == 1 and run.data.metrics["review.rejected"] == 1


def test_verify_reports_an_intact_ledger(run_cli, scanned):
    workspace, _ = scanned
    result = run_cli("verify", "--workspace", workspace)
    assert result.exit_code == 0 and "Ledger intact" in result.stdout


def test_a_failed_mirror_to_mlflow_says_the_review_is_recorded(run_cli, scanned, monkeypatch):
    import pipeline.review
    from pipeline.config import Settings
    from pipeline.review import open_ledger

    workspace, _ = scanned
    row = _pending(run_cli, workspace)[-1]["id"]

    def unreachable(*args, **kwargs):
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(pipeline.review, "_mirror_to_mlflow", unreachable)
    result = run_cli(
        "review", "reject", row, "--by", "dana", "--reason", "duplicate of a known fraud case", "--workspace", workspace
    )
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "Rejected 1 row(s) in the ledger, but mirroring" in result.stderr and "internal error" not in result.stderr
    with open_ledger(Settings.from_environment(workspace)) as ledger:
        assert ledger.get_row(row).status.value == "rejected"
