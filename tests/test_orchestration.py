"""A scan is the same steps however it is orchestrated (issue 20): a one-off CLI scan calls them
in process; with a Prefect server configured (or POISONGUARD_ORCHESTRATOR=prefect) it is a flow
run with a task run per step. Both record the same provenance and the same decisions."""

from __future__ import annotations

from uuid import UUID

import pandas as pd

from tests.conftest import SAMPLES, read_outputs

STEPS = {
    "ingest",
    "load_trusted",
    "validate_batch",
    "fit_detectors",
    "read_chunk",
    "fit_checks",
    "check_batch",
    "assess",
    "decide_batch",
    "source_history",
    "check_source",
    "confirm_impact",
    "trusted_suspicion",
    "build_outputs",
    "stage",
    "record",
}


def test_a_plain_scan_and_a_prefect_flow_run_record_the_same_decisions_and_provenance(scan_sample, monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    batch = SAMPLES / "batch_02_label_flips.csv"
    plain, plain_out = scan_sample(batch, dataset="orchestrated-plain")
    monkeypatch.setenv("POISONGUARD_ORCHESTRATOR", "prefect")
    same_bytes = tmp_path / "flips-again.csv"  # its own output folder
    same_bytes.write_bytes(batch.read_bytes())
    flowed, flow_out = scan_sample(same_bytes, dataset="orchestrated-prefect")
    assert plain.exit_code == 0 and flowed.exit_code == 0, (plain.stderr, flowed.stderr)

    *plain_frames, plain_summary = read_outputs(plain_out)
    *flow_frames, flow_summary = read_outputs(flow_out)
    assert plain_summary["orchestration"] == {"runner": "plain"}
    assert flow_summary["orchestration"]["runner"] == "prefect"
    for ours, theirs in zip(plain_frames, flow_frames):
        pd.testing.assert_frame_equal(
            ours.drop(columns=["reasons"], errors="ignore"), theirs.drop(columns=["reasons"], errors="ignore")
        )
    assert plain_summary["verdict"]["headline"] == flow_summary["verdict"]["headline"]

    # The flow run is in Prefect's API, completed, with a task run for every step.
    flow_run_id = UUID(flow_summary["orchestration"]["flow_run_id"])
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert flow_run.state_name == "Completed"
    assert STEPS <= {run.name.rsplit("-", 1)[0] for run in task_runs}

    # MLflow holds the same provenance either way: the same tags, params and metrics.
    client = MlflowClient(plain_summary["mlflow"]["tracking_uri"])
    plain_run, flow_run_record = (client.get_run(s["mlflow"]["run_id"]) for s in (plain_summary, flow_summary))
    assert plain_run.data.tags["orchestration.runner"] == "plain"
    assert flow_run_record.data.tags["orchestration.runner"] == "prefect"
    assert flow_run_record.data.tags["orchestration.flow_run_id"] == str(flow_run_id)
    differing = {
        "dataset",
        "orchestration.runner",
        "orchestration.flow_run_id",
        "orchestration.server",
        "mlflow.runName",
        "batch_id",
    }
    assert set(plain_run.data.tags) - differing == set(flow_run_record.data.tags) - differing
    assert plain_run.data.params == flow_run_record.data.params
    assert plain_run.data.metrics == flow_run_record.data.metrics
    assert plain_run.info.status == flow_run_record.info.status == "FINISHED"
