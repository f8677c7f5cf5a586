"""The flows that ``poisonguard serve`` deploys for each configured dataset.

``poisonguard-landing`` runs one landing pass, which claims every new file exactly once
(``pipeline.landing.run_pass``). Each claimed file is scanned by the scan flow
``poisonguard-scan`` as a subflow of the task ``scan-landed-file``. Prefect retries that task,
with exponential backoff, when it fails for a reason other than its input (MLflow or the ledger
database unreachable). A retry leaves nothing half-done: the scan commits its workspace folder
atomically and redelivers a decision that is already committed, and re-recording it in the
ledger changes nothing. Each pass that handled files leaves two artifacts under fixed keys:
a table of counts per check, and a markdown summary that links each report and MLflow run.

``poisonguard-gate-dataset`` runs the gate (``flows/gate.py``) for a configured dataset. Its
parameters are names and paths, so it can be started from the Prefect UI or with
``prefect deployment run``.

Parameters are the config file's path and a dataset name, never objects: a deployment's
parameters travel through the Prefect API as JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import State
from prefect.tasks import exponential_backoff

from flows.gate import gate_flow
from flows.ingest import run_scan_flow
from pipeline import landing
from pipeline.config import Settings
from pipeline.errors import PoisonguardError
from pipeline.gating import GateRequest
from pipeline.scan import ScanRequest, preflight
from pipeline.store import Workspace


def transient_failure(task: Any, task_run: Any, state: State) -> bool:
    """Retry what may pass on its own. A bad batch (``PoisonguardError``) fails the same way every time."""
    return not isinstance(state.result(raise_on_failure=False), PoisonguardError)


@task(
    name="scan-landed-file",
    task_run_name="scan {request.batch.name}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=transient_failure,
    retry_jitter_factor=0.5,
)
def scan_landed_file(request: ScanRequest, settings: Settings) -> dict[str, Any]:
    preflight(request)
    return run_scan_flow(request, settings)


def scan_request(dataset: landing.DatasetConfig, batch: Path, out: Path) -> ScanRequest:
    return ScanRequest(
        batch=batch,
        reference=dataset.reference,
        label=dataset.label,
        out=out,
        suite=dataset.suite,
        holdout=dataset.holdout,
        source=dataset.source,
        dataset=dataset.name,
        roles=dataset.roles,
    )


@flow(name="poisonguard-landing", log_prints=False, validate_parameters=False)
def landing_flow(config: str, dataset: str) -> landing.PassReport:
    """Scan every new file in a dataset's landing area exactly once; resume abandoned claims."""
    configured = landing.load_config(config).dataset(dataset)
    area = landing.prepare_landing(configured)
    settings = Settings.from_environment(configured.workspace)
    workspace = Workspace(settings.workspace)
    scan = scan_landed_file.with_options(
        retries=configured.retries, retry_delay_seconds=exponential_backoff(configured.retry_delay_seconds)
    )
    report = landing.run_pass(
        area,
        configured.rules,
        scan=lambda batch, out: scan(scan_request(configured, batch, out), settings),
        recorded=lambda sha256: workspace.recorded(configured.name, sha256),
        out=configured.out,
        work_dir=settings.workspace / "landing" / configured.name,
    )
    if report.files:
        create_table_artifact(
            key=landing.artifact_key(configured.name, "checks"),
            table=landing.checks_table(report),
            description=f"Rows held per check, per file landed for dataset '{configured.name}'",
        )
        create_markdown_artifact(
            key=landing.artifact_key(configured.name, "summary"),
            markdown=landing.summary_markdown(configured.name, report),
            description=f"Landing pass for dataset '{configured.name}'",
        )
    if report.left_for_next_pass:
        raise landing.LandingIncomplete.of(report)
    return report


@flow(name="poisonguard-gate-dataset", log_prints=False, validate_parameters=False)
def gate_dataset_flow(config: str, dataset: str, out: str | None = None, max_pending: int = 0) -> dict[str, Any]:
    """The pre-retrain gate for a configured dataset; the snapshot goes to ``out``, by default
    ``<the dataset's out>/training-snapshot``."""
    configured = landing.load_config(config).dataset(dataset)
    settings = Settings.from_environment(configured.workspace)
    request = GateRequest(configured.name, Path(out) if out else configured.out / "training-snapshot", max_pending)
    result = gate_flow(request, settings)
    return {
        "snapshot": str(result.path),
        "sha256": result.sha256,
        "rows": result.rows,
        "manifest": str(result.manifest_path),
        "mlflow_run_id": result.run_id,
    }
