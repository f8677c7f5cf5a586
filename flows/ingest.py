"""The batch ingestion flow: one run per batch, each step of ``pipeline.scan_run`` a task.

Parameters are a request and the settings, never DataFrames: Prefect serialises flow parameters
to its API, and a large frame there times out (ECOSYSTEM.md §2). Tasks use NO_CACHE because
hashing a large frame for the default cache key costs ~1 s per call and results are not
persisted anyway.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline import scan, scan_run
from pipeline.config import Settings
from pipeline.errors import PoisonguardError


@functools.cache
def as_task(fn: Callable[..., Any]):
    return task(cache_policy=NO_CACHE, persist_result=False)(fn)  # the form Prefect's overloads type


class PrefectRunner:
    """Each step a task run of the current flow run; chunks submitted to its task runner."""

    def step(self, fn):
        return as_task(fn)

    def submit(self, fn: Callable[..., Any], *args: Any) -> PrefectFuture:
        return as_task(fn).submit(*args)

    def orchestration(self) -> dict[str, str]:
        from prefect.runtime import flow_run
        from prefect.settings import PREFECT_API_URL

        return {"runner": "prefect", "flow_run_id": str(flow_run.id), "server": PREFECT_API_URL.value() or "temporary"}


def task_runner(settings: Settings):
    """A thread per core, or a DaskTaskRunner when ``settings.dask`` names a cluster. (Prefect's
    default pool has no bound: every chunk of a 10^6-row batch at once, each with its own
    copies and its native libraries' threads, fighting over two cores.)"""
    if settings.dask is None:
        return ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise PoisonguardError(
            "POISONGUARD_DASK is set but prefect-dask is not installed: pip install 'poisonguard[dask]'."
        ) from None
    if settings.dask == "local":
        # processes: scoring is CPU-bound Python as much as BLAS, and threads share one GIL
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": os.cpu_count() or 1,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    return DaskTaskRunner(address=settings.dask)


def run_scan_flow(request: scan.ScanRequest, settings: Settings) -> dict[str, Any]:
    """``scan_batch_flow`` on the task runner the settings ask for."""
    return scan_batch_flow.with_options(task_runner=task_runner(settings))(request, settings)


@flow(name="poisonguard-scan", log_prints=False, validate_parameters=False)
def scan_batch_flow(request: scan.ScanRequest, settings: Settings) -> dict[str, Any]:
    """Scan one batch end to end; returns the scan's summary (``duplicate`` says if it was new)."""
    return scan_run.run(request, settings, PrefectRunner())
