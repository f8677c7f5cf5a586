"""A scan end to end, with the one list of its steps: ``run(request, settings, runner)``.

ingest → (already recorded? re-deliver) → load reference, holdout, suite → start MLflow run →
validate → detect → verdict → decide → impact → outputs → log to MLflow → commit to the
workspace and the ledger → deliver to ``--out``.

The part of it that judges a batch, validate → score → batch checks → verdict → decide, is
``evaluate``: ``run`` calls it, and so does everything else that judges batches without the rest
of a scan (the benchmarks, the tests of a step), so that none of them judges a batch by a list of
its own.

The runner decides how each step runs. ``PlainRunner`` calls them in this process, with a
thread per core for the batch's chunks: a one-off ``poisonguard scan`` pays nothing for
orchestration. The Prefect flow ``poisonguard-scan`` (``flows/ingest.py``) passes a runner that
makes each step a task, so a scheduled or served scan is a flow run with its task runs visible
in Prefect. The summary says which (``orchestration``), and so does the scan's MLflow run.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pandas as pd

from pipeline import detectors as registry
from pipeline import provenance, scan
from pipeline.alarms import BatchCheck, CheckResult
from pipeline.config import Settings
from pipeline.decide import Decisions
from pipeline.detectors import ChunkMap, ChunkResult, Detector, read_each
from pipeline.faults import checkpoint
from pipeline.io import LoadedTable
from pipeline.progress import StageProgress
from pipeline.store import Workspace, copy_outputs, file_hashes, write_outputs
from pipeline.validation import VALIDATION_CELLS, ConformedBatch, ValidationOutcome
from pipeline.verdict import Verdict

Step = TypeVar("Step", bound=Callable[..., Any])


class Result(Protocol):
    def result(self) -> Any: ...


class StepRunner(Protocol):
    """How a scan's steps run: ``step(fn)`` wraps one step, ``submit(fn, *args)`` starts a
    chunk's work and returns something with ``.result()``."""

    def step(self, fn: Step) -> Step: ...

    def submit(self, fn: Callable[..., Any], *args: Any) -> Result: ...

    def orchestration(self) -> dict[str, str]: ...


class PlainRunner:
    """Steps as plain calls in this process; a batch's chunks on a thread per core."""

    def __init__(self, workers: int | None = None) -> None:
        self._workers = workers or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None

    def step(self, fn: Step) -> Step:
        return fn

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="poisonguard-chunk")
        return self._pool.submit(fn, *args)

    def orchestration(self) -> dict[str, str]:
        return {"runner": "plain"}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> PlainRunner:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def read_chunks(runner: StepRunner, detectors: dict[str, Detector], chunks: Iterable[pd.DataFrame]) -> list[ChunkResult]:
    """Each chunk through ``registry.read_chunk`` on the runner. Chunks are read as they are
    submitted, and no more are submitted while two per core wait: a 10^7-row batch is never in
    memory as chunks all at once."""
    in_flight: deque[Result] = deque()
    results: list[ChunkResult] = []
    for chunk in chunks:
        in_flight.append(runner.submit(registry.read_chunk, detectors, chunk))
        del chunk  # the submitted work holds it until it is done
        if len(in_flight) >= 2 * (os.cpu_count() or 1):
            results.append(in_flight.popleft().result())
    results.extend(future.result() for future in in_flight)
    return results


class StepWrapper(Protocol):
    """What ``evaluate`` runs each step through: ``runner.step``, a timer, or nothing."""

    def __call__(self, fn: Step, /) -> Step: ...


def plain_step(fn: Step) -> Step:
    return fn


def no_progress(point: str) -> None:
    return None


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` found of a batch: the batch as the suite conformed it, the validation
    outcome, the detectors that scored it and their scores, the batch checks' results (drift,
    segment label rates), the batch verdict, and each row's decision."""

    conformed: ConformedBatch
    outcome: ValidationOutcome
    detectors: dict[str, Detector]
    scores: dict[str, pd.DataFrame]
    checks: list[CheckResult]
    verdict: Verdict
    decisions: Decisions


def evaluate(
    batch: LoadedTable,
    trusted: scan.TrustedData,
    settings: Settings,
    *,
    detectors: dict[str, Detector] | None = None,
    checks: dict[str, BatchCheck] | None = None,
    step: StepWrapper = plain_step,
    map_chunks: ChunkMap = read_each,
    reached: Callable[[str], None] = no_progress,
    max_cells: int = VALIDATION_CELLS,
) -> Evaluation:
    """The one list of the steps that judge a batch against the trusted data: validate → score →
    batch checks → verdict → decide (given the verdict and the trusted data).

    ``detectors`` and ``checks`` are fitted on the trusted data here, each where the scan fits
    it, unless given fitted (a benchmark fits them once for many batches). Every step but the
    scoring runs through ``step`` (``run`` makes each a Prefect task there); the scoring reads
    the batch's chunks through ``map_chunks`` (a task per chunk there), and ``reached`` hears
    each stage boundary (the scan's progress lines and crash points)."""
    conformed, outcome = step(scan.validate_batch)(batch, trusted, max_cells)
    reached("scan.validated")
    if detectors is None:
        detectors = step(scan.fit_detectors)(trusted, settings)
    reached("scan.detectors_fitted")
    scores = scan.score_batch(detectors, conformed, outcome.batch_findings, settings.chunk_rows, map_chunks)
    reached("scan.scored")
    if checks is None:
        checks = step(scan.fit_checks)(trusted)
    results = step(scan.check_batch)(checks, conformed, outcome.batch_findings)
    reached("scan.batch_checked")
    verdict = step(scan.assess)(conformed, outcome, detectors, scores, trusted, results, settings)
    decisions = step(scan.decide_batch)(conformed, outcome, detectors, scores, settings, verdict, trusted)
    reached("scan.decided")
    return Evaluation(conformed, outcome, detectors, scores, results, verdict, decisions)


def run(request: scan.ScanRequest, settings: Settings, runner: StepRunner) -> dict[str, Any]:
    """Scan one batch end to end; returns the scan's summary (``duplicate`` says if it was new)."""
    checkpoint("scan.started")
    progress = StageProgress(0, enabled=settings.show_progress)
    batch = runner.step(scan.ingest)(request, settings)
    progress.rows = batch.n_rows
    progress.reached("scan.ingested")
    workspace = Workspace(settings.workspace)
    # A second scan of the same bytes waits here for the first, then delivers its decision; and
    # runs of the batch still RUNNING once the lock is ours were left by scans that are gone.
    with workspace.batch_lock(request.dataset_name, batch.sha256):
        recorded = workspace.recorded(request.dataset_name, batch.sha256)
        if recorded:
            return runner.step(redeliver)(recorded, request.out, settings)
        return _scan(request, settings, runner, batch, workspace, progress)


def _scan(
    request: scan.ScanRequest,
    settings: Settings,
    runner: StepRunner,
    batch: LoadedTable,
    workspace: Workspace,
    progress: StageProgress,
) -> dict[str, Any]:
    step = runner.step
    trusted = step(scan.load_trusted)(request, settings)
    progress.reached("scan.trusted_loaded")
    provenance.close_abandoned_runs(settings.tracking_uri, batch.sha256, request.dataset_name)
    checkpoint("scan.abandoned_runs_closed")
    experiment_id = provenance.ensure_experiment(settings.tracking_uri, request.dataset_name, settings.artifact_root)
    run_id = provenance.start_scan_run(
        settings.tracking_uri, experiment_id, f"scan-{request.batch.name}", scan.run_tags(request, settings, batch, trusted)
    )
    progress.reached("scan.run_started")
    try:
        provenance.log_batch_input(
            settings.tracking_uri,
            run_id,
            request.batch,
            request.batch.name,
            batch.sha256,
            batch.rows(0, 0),
            "training-candidate",
            {"source": request.source, "rows": str(batch.n_rows)},
        )
        progress.reached("scan.batch_input_logged")
        started = scan.now()
        judged = evaluate(
            batch,
            trusted,
            settings,
            step=step,
            map_chunks=lambda fitted, chunks: read_chunks(runner, fitted, chunks),
            reached=progress.reached,
        )
        conformed, outcome, detectors, decisions = judged.conformed, judged.outcome, judged.detectors, judged.decisions
        earlier = step(provenance.source_history)(settings.tracking_uri, request.dataset_name, request.source, run_id)
        checks = [*judged.checks, step(scan.check_source)(request, earlier, decisions)]
        impacts = step(scan.confirm_impact)(trusted, conformed, outcome, decisions, settings)
        progress.reached("scan.impact_confirmed")
        outputs = step(scan.build_outputs)(
            request,
            settings,
            batch,
            trusted,
            conformed,
            outcome,
            decisions,
            impacts,
            checks,
            step(scan.trusted_suspicion)(detectors, trusted, settings),
            run_id,
            started,
            judged.verdict,
        )
        outputs.summary["orchestration"] = runner.orchestration()
        progress.reached("scan.outputs_built")
        del judged, conformed, outcome, detectors, decisions  # the outputs hold what is kept
        staging, files = step(stage)(outputs, request, settings, batch, trusted, run_id)
        progress.passed("scan.results_logged")
        summary = outputs.summary
        del outputs  # written; recording 10^6 rows in the ledger needs the room
        committed = step(record)(staging, files, request, settings, batch)
        progress.passed("scan.delivered")
    except BaseException:
        provenance.finish_run(settings.tracking_uri, run_id, "FAILED")
        raise
    if not committed:  # a concurrent scan of the same bytes committed first: its decision stands
        provenance.finish_run(settings.tracking_uri, run_id, "KILLED")
        return step(redeliver)(workspace.batch_dir(request.dataset_name, batch.sha256), request.out, settings)
    provenance.finish_run(settings.tracking_uri, run_id)
    checkpoint("scan.run_finished")
    return summary


def redeliver(recorded: Path, out: Path, settings: Settings) -> dict[str, Any]:
    """Deliver a batch scanned before. Recording is idempotent: this also repairs a crash between
    the workspace commit and the ledger, and finishes the MLflow run such a crash left RUNNING."""
    checkpoint("redeliver.started")
    record_in_ledger(settings, recorded)
    checkpoint("redeliver.ledger_recorded")
    summary = copy_outputs(recorded, out, {"duplicate": True, "redelivered_at": scan.now().isoformat(timespec="seconds")})
    provenance.finish_committed_run(settings.tracking_uri, summary["mlflow"]["run_id"])
    return summary


def record_in_ledger(settings: Settings, folder: Path, files: dict[str, str] | None = None) -> str:
    from pipeline.anchor import open_ledger

    with open_ledger(settings) as ledger:  # with an anchor configured, the new head goes there too
        return ledger.record_scan_folder(folder, files)


def stage(
    outputs, request: scan.ScanRequest, settings: Settings, batch, trusted, run_id: str
) -> tuple[Path, dict[str, str]]:
    """Write outputs to a staging folder and log them to MLflow; returns the folder and the
    sha256 of its files."""
    staging = Workspace(settings.workspace).staging_dir(request.dataset_name, batch.sha256)
    write_outputs(outputs, staging)
    checkpoint("store.staging_written")
    files = file_hashes(staging)  # what is committed, for the ledger's chain and the scan's run
    provenance.log_batch_input(
        settings.tracking_uri,
        run_id,
        request.reference,
        request.reference.name,
        trusted.reference.sha256,
        trusted.reference.frame,
        "reference",
    )
    provenance.log_results(
        settings.tracking_uri,
        run_id,
        params=scan.run_params(request, settings),
        metrics=scan.run_metrics(outputs.summary),
        tags={"status": "scanned", **scan.result_tags(outputs.summary), **provenance.file_tags(files)},
        artifacts=[staging / "summary.json", staging / "report.html", staging / "scores.parquet"],
    )
    checkpoint("scan.results_logged")
    return staging, files


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
