"""The batch ingestion flow: one run per batch, each pipeline step a task.

Parameters are paths and names, never DataFrames: Prefect serialises flow parameters to its
API, and a large frame there times out (ECOSYSTEM.md §2). Tasks use NO_CACHE because hashing a
large frame for the default cache key costs ~1 s per call and results are not persisted anyway.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from prefect import flow, task
from prefect.futures import PrefectFuture
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline import detectors as registry
from pipeline import provenance, scan
from pipeline.config import Settings
from pipeline.detectors import ChunkResult, Detector
from pipeline.errors import PoisonguardError
from pipeline.faults import checkpoint
from pipeline.io import LoadedTable
from pipeline.progress import StageProgress
from pipeline.store import Workspace, copy_outputs, file_hashes, write_outputs

step = task(cache_policy=NO_CACHE, persist_result=False)

ingest = step(scan.ingest)
load_trusted = step(scan.load_trusted)
validate_batch = step(scan.validate_batch)
fit_detectors = step(scan.fit_detectors)
fit_checks = step(scan.fit_checks)
read_chunk = task(registry.read_chunk, name="read-chunk", cache_policy=NO_CACHE, persist_result=False)
check_batch = step(scan.check_batch)
source_history = step(provenance.source_history)
check_source = step(scan.check_source)
trusted_suspicion = step(scan.trusted_suspicion)
assess = step(scan.assess)
decide_batch = step(scan.decide_batch)
confirm_impact = step(scan.confirm_impact)
build_outputs = step(scan.build_outputs)


def read_chunks_as_tasks(detectors: dict[str, Detector], chunks: Iterable[pd.DataFrame]) -> list[ChunkResult]:
    """One task per chunk, run by the flow's task runner (``task_runner``). Chunks are read as
    tasks are submitted, and no more are submitted while two per worker wait: a 10^7-row batch
    is never in memory as chunks all at once."""
    in_flight: deque[PrefectFuture] = deque()
    results: list[ChunkResult] = []
    for chunk in chunks:
        in_flight.append(read_chunk.submit(detectors, chunk))
        del chunk  # the task holds it until it is done
        if len(in_flight) >= 2 * (os.cpu_count() or 1):
            results.append(in_flight.popleft().result())
    results.extend(future.result() for future in in_flight)
    return results


def task_runner(settings: Settings):
    """A thread per core, or a DaskTaskRunner when ``settings.dask`` names a cluster. (Prefect's
    default pool has no bound: every chunk of a 10^6-row batch at once, each with its own
    copies and its native libraries' threads, fighting over two cores.)"""
    if settings.dask is None:
        return ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise PoisonguardError("POISONGUARD_DASK is set but prefect-dask is not installed: "
                               "pip install 'poisonguard[dask]'.") from None
    if settings.dask == "local":
        # processes: scoring is CPU-bound Python as much as BLAS, and threads share one GIL
        return DaskTaskRunner(cluster_kwargs={"n_workers": os.cpu_count() or 1, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    return DaskTaskRunner(address=settings.dask)


def run_scan_flow(request: scan.ScanRequest, settings: Settings) -> dict[str, Any]:
    """``scan_batch_flow`` on the task runner the settings ask for."""
    return scan_batch_flow.with_options(task_runner=task_runner(settings))(request, settings)


@step
def redeliver(recorded: Path, out: Path, settings: Settings) -> dict[str, Any]:
    # Recording is idempotent: this also repairs a crash between the workspace commit and the ledger,
    # and finishes the MLflow run that such a crash left RUNNING.
    checkpoint("redeliver.started")
    record_in_ledger(settings, recorded)
    checkpoint("redeliver.ledger_recorded")
    summary = copy_outputs(recorded, out, {"duplicate": True,
                                           "redelivered_at": scan.now().isoformat(timespec="seconds")})
    provenance.finish_committed_run(settings.tracking_uri, summary["mlflow"]["run_id"])
    return summary


def record_in_ledger(settings: Settings, folder: Path, files: dict[str, str] | None = None) -> str:
    from pipeline.anchor import open_ledger

    with open_ledger(settings) as ledger:  # with an anchor configured, the new head goes there too
        return ledger.record_scan_folder(folder, files)


@step
def stage(outputs, request: scan.ScanRequest, settings: Settings, batch, trusted,
          run_id: str) -> tuple[Path, dict[str, str]]:
    """Write outputs to a staging folder and log them to MLflow; returns the folder and the
    sha256 of its files."""
    workspace = Workspace(settings.workspace)
    staging = workspace.staging_dir(request.dataset_name, batch.sha256)
    write_outputs(outputs, staging)
    checkpoint("store.staging_written")
    files = file_hashes(staging)  # what is committed, for the ledger's chain and the scan's run
    provenance.log_batch_input(settings.tracking_uri, run_id, request.reference, request.reference.name,
                               trusted.reference.sha256, trusted.reference.frame, "reference")
    provenance.log_results(
        settings.tracking_uri, run_id,
        params=scan.run_params(request, settings),
        metrics=scan.run_metrics(outputs.summary),
        tags={"status": "scanned", **scan.result_tags(outputs.summary), **provenance.file_tags(files)},
        artifacts=[staging / "summary.json", staging / "report.html", staging / "scores.parquet"],
    )
    checkpoint("scan.results_logged")
    return staging, files


@step
def record(staging: Path, files: dict[str, str], request: scan.ScanRequest, settings: Settings, batch) -> bool:
    """Commit the staging folder to the workspace, record it in the ledger, deliver to --out.
    False when a concurrent scan of the same bytes committed first."""
    workspace = Workspace(settings.workspace)
    committed = workspace.commit(staging, request.dataset_name, batch.sha256)
    checkpoint("scan.committed")
    source = workspace.batch_dir(request.dataset_name, batch.sha256)
    if committed:
        record_in_ledger(settings, source, files)
        checkpoint("scan.ledger_recorded")
    copy_outputs(source, request.out)
    checkpoint("scan.delivered")
    return committed


@flow(name="poisonguard-scan", log_prints=False, validate_parameters=False)
def scan_batch_flow(request: scan.ScanRequest, settings: Settings) -> dict[str, Any]:
    """Scan one batch end to end; returns the scan's summary (``duplicate`` says if it was new)."""
    checkpoint("scan.started")
    batch = ingest(request, settings)
    checkpoint("scan.ingested")
    workspace = Workspace(settings.workspace)
    # A second scan of the same bytes waits here for the first, then delivers its decision; and
    # runs of the batch still RUNNING once the lock is ours were left by scans that are gone.
    with workspace.batch_lock(request.dataset_name, batch.sha256):
        return _scan_unless_recorded(request, settings, batch, workspace)


def _scan_unless_recorded(request: scan.ScanRequest, settings: Settings, batch: LoadedTable,
                          workspace: Workspace) -> dict[str, Any]:
    recorded = workspace.recorded(request.dataset_name, batch.sha256)
    if recorded:
        return redeliver(recorded, request.out, settings)
    trusted = load_trusted(request, settings)
    checkpoint("scan.trusted_loaded")
    provenance.close_abandoned_runs(settings.tracking_uri, batch.sha256, request.dataset_name)
    checkpoint("scan.abandoned_runs_closed")
    experiment_id = provenance.ensure_experiment(
        settings.tracking_uri, request.dataset_name,
        settings.artifact_root)
    run_id = provenance.start_scan_run(settings.tracking_uri, experiment_id,
                                       f"scan-{request.batch.name}", scan.run_tags(request, settings, batch, trusted))
    checkpoint("scan.run_started")
    try:
        provenance.log_batch_input(settings.tracking_uri, run_id, request.batch, request.batch.name,
                                   batch.sha256, batch.rows(0, 0), "training-candidate",
                                   {"source": request.source, "rows": str(batch.n_rows)})
        checkpoint("scan.batch_input_logged")
        started = scan.now()
        progress = StageProgress(batch.n_rows, enabled=settings.show_progress)
        conformed, outcome = validate_batch(batch, trusted)
        progress.reached("scan.validated")
        detectors = fit_detectors(trusted, settings)
        progress.reached("scan.detectors_fitted")
        scores = scan.score_batch(detectors, conformed, outcome.batch_findings, settings.chunk_rows,
                                  read_chunks_as_tasks)
        progress.reached("scan.scored")
        checks = check_batch(fit_checks(trusted), conformed, outcome.batch_findings)
        progress.reached("scan.batch_checked")
        verdict = assess(conformed, outcome, detectors, scores, trusted, checks, settings)
        decisions = decide_batch(conformed, outcome, detectors, scores, settings, verdict)
        progress.reached("scan.decided")
        earlier = source_history(settings.tracking_uri, request.dataset_name, request.source, run_id)
        checks = [*checks, check_source(request, earlier, decisions)]
        impacts = confirm_impact(trusted, conformed, outcome, decisions, settings)
        progress.reached("scan.impact_confirmed")
        outputs = build_outputs(request, settings, batch, trusted, conformed, outcome, decisions, impacts,
                                checks, trusted_suspicion(detectors, trusted, settings), run_id, started, verdict)
        progress.reached("scan.outputs_built")
        del conformed, scores, decisions  # the outputs hold what is kept
        staging, files = stage(outputs, request, settings, batch, trusted, run_id)
        progress.passed("scan.results_logged")
        summary = outputs.summary
        del outputs  # written; recording 10^6 rows in the ledger needs the room
        committed = record(staging, files, request, settings, batch)
        progress.passed("scan.delivered")
    except BaseException:
        provenance.finish_run(settings.tracking_uri, run_id, "FAILED")
        raise
    if not committed:  # a concurrent scan of the same bytes committed first: its decision stands
        provenance.finish_run(settings.tracking_uri, run_id, "KILLED")
        return redeliver(workspace.batch_dir(request.dataset_name, batch.sha256), request.out, settings)
    provenance.finish_run(settings.tracking_uri, run_id)
    checkpoint("scan.run_finished")
    return summary

