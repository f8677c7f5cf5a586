"""MLflow provenance: a scan's run is found by the batch's SHA-256 and holds its artifacts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.provenance import find_scan_runs, redact
from tests.conftest import SAMPLES, read_outputs


def test_scan_run_is_found_by_sha256_and_holds_artifacts(scan_sample):
    batch = SAMPLES / "batch_02_label_flips.csv"
    result, out = scan_sample(batch, "--source", "partner-feed", dataset="provenance")
    assert result.exit_code == 0, result.stderr
    sha256 = hashlib.sha256(batch.read_bytes()).hexdigest()
    summary = read_outputs(out)[3]
    assert summary["batch"]["sha256"] == sha256

    uri = os.environ["MLFLOW_TRACKING_URI"]
    runs = find_scan_runs(uri, sha256, dataset="provenance")
    assert [r.info.run_id for r in runs] == [summary["mlflow"]["run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["source"] == "partner-feed" and tags["submitter"] == "test-steward"
    assert tags["suite_name"] == "hmda" and len(tags["schema_fingerprint"]) == 64
    assert tags["reference_sha256"] == hashlib.sha256((SAMPLES / "reference.parquet").read_bytes()).hexdigest()
    assert run.data.metrics["rows_rows"] == 140
    assert run.data.metrics["rows_quarantined"] == summary["counts"]["quarantined"]

    client = MlflowClient(uri)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "report.html", "scores.parquet"} <= artifacts
    scores = pd.read_parquet(client.download_artifacts(run.info.run_id, "scores.parquet"))
    assert len(scores) == 140

    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert inputs[batch.name].dataset.digest == sha256[:32]
    assert {t.key: t.value for t in inputs[batch.name].tags}["sha256"] == sha256
    assert "reference.parquet" in inputs


def test_credentials_are_redacted_from_tracking_uris():
    assert redact("postgresql://alice:s3cret@db.example:5432/mlflow") == "postgresql://alice:***@db.example:5432/mlflow"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


@pytest.mark.parametrize(
    "uri,expected",
    [
        ("sqlite:///{ws}/mlflow.db", "{ws}/mlartifacts"),  # the workspace's own store
        ("sqlite:///{ws}/elsewhere/runs.db", "{ws}/elsewhere/mlartifacts"),
        ("postgresql://mlflow@db.internal/mlflow", "{ws}/mlartifacts"),
        ("http://mlflow.internal:5000", None),  # the server decides
        ("file:///srv/mlruns", None),
    ],
)
def test_artifacts_never_land_in_the_current_folder(uri, expected, tmp_path):
    from pipeline.config import Settings

    ws = tmp_path / "ws"
    settings = Settings.from_environment(ws, {"MLFLOW_TRACKING_URI": uri.format(ws=ws)})
    assert settings.artifact_root == (None if expected is None else Path(expected.format(ws=ws.resolve())))
