"""The pre-retrain gate as a Prefect flow: run it on demand before retraining (``poisonguard
gate``), or as the first subflow of a retraining flow so nothing trains on unverified data.

Each step of ``pipeline/gating.py`` runs as a task, in the order ``pipeline.gating.run`` gives. A refusal raises
``GateRefused`` inside the ``refuse`` task, so the flow run fails, visibly, in Prefect's UI.
Parameters are a request and the settings, never DataFrames (ECOSYSTEM.md §2).
"""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipeline import gating as steps
from pipeline.config import Settings
from pipeline.gating import GateRequest, GateResult

step = task(cache_policy=NO_CACHE, persist_result=False)


@flow(name="poisonguard-gate", log_prints=False, validate_parameters=False)
def gate_flow(request: GateRequest, settings: Settings) -> GateResult:
    """Verify the dataset's accepted batches and the ledger, then release the training snapshot."""
    return steps.run(request, settings, step=step)
