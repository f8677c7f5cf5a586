"""Named crash points, so that tests can kill a scan exactly between two of its stages.

A scan must survive being killed at any moment (a scheduler's timeout, the OOM killer, a lost
node): after a rerun every row is in exactly one of accepted/quarantined, the ledger and MLflow
agree, and no run is left RUNNING. Killing a process after a random delay rarely lands on the
few instructions between, say, the workspace commit and the ledger write, where the bugs are;
a named point does, every time. ``benchmarks/crash_injection.py`` and
``tests/test_crash_recovery.py`` kill a scan at each point in ``CRASH_POINTS``.

``checkpoint(name)`` does nothing unless ``$POISONGUARD_FAULT_AT`` names that point; then the
process sends itself SIGKILL: no ``finally``, no ``atexit``, no buffered write flushed, as in a
real crash. The variable is read at each call (never at import) and is meant for tests only.
"""

from __future__ import annotations

import os
import signal

FAULT_VARIABLE = "POISONGUARD_FAULT_AT"

# Every point, in the order a scan passes them, with what has happened when it is reached.
CRASH_POINTS: dict[str, str] = {
    "scan.started": "the flow run has begun; nothing read yet",
    "scan.ingested": "the batch is read and hashed; the workspace not yet asked whether it is known",
    "scan.trusted_loaded": "reference, holdout and suite are loaded; no MLflow run yet",
    "mlflow.database_created": "a new workspace's MLflow tables exist in a temporary file, not yet moved into place",
    "scan.abandoned_runs_closed": "runs left RUNNING by earlier killed scans of the batch are marked FAILED",
    "scan.run_started": "the scan's MLflow run exists (RUNNING), with its tags",
    "scan.batch_input_logged": "the batch is logged to the run as a dataset input",
    "scan.validated": "the batch is conformed and validated against the suite",
    "scan.detectors_fitted": "the detectors are fitted on the trusted rows",
    "scan.scored": "the batch is scored by every detector",
    "scan.batch_checked": "the batch-level alarms (drift, segments) are computed",
    "scan.decided": "every row is accepted or quarantined, in memory",
    "scan.impact_confirmed": "source history read and exact group RONI measured",
    "scan.outputs_built": "the outputs (tables, summary, report) exist in memory",
    "store.staging_created": "an empty staging folder exists in the workspace",
    "store.staging_half_written": "accepted and quarantined rows are in the staging folder, the rest not",
    "store.staging_before_summary": "every staged file but summary.json (the completeness mark) is written",
    "store.staging_written": "the staging folder is complete",
    "scan.results_logged": "params, metrics, file tags and artifacts are on the MLflow run",
    "store.renamed": "the staging folder is renamed into the workspace, the rename not yet fsynced",
    "scan.committed": "the batch folder is committed; the ledger does not know the batch yet",
    "scan.ledger_recorded": "the ledger holds the batch and its decisions; nothing delivered to --out",
    "store.delivery_before_summary": "every output file but summary.json is copied to --out",
    "scan.delivered": "--out holds the outputs; the MLflow run is still RUNNING",
    "scan.run_finished": "the MLflow run is FINISHED; the process has not returned",
    "redeliver.started": "a rerun found the batch committed and starts delivering the recorded decision",
    "redeliver.ledger_recorded": "a rerun made sure the ledger holds the batch; --out not yet written",
}


def checkpoint(name: str) -> None:
    """Die here, by SIGKILL, if ``$POISONGUARD_FAULT_AT`` is ``name``; otherwise do nothing."""
    if name not in CRASH_POINTS:
        raise ValueError(f"Unknown crash point {name!r}; add it to pipeline.faults.CRASH_POINTS.")
    if os.environ.get(FAULT_VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)
