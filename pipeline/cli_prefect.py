"""How the command line runs Prefect flows: quiet, self-contained in the workspace, and on a
temporary server only when no server is configured (``PREFECT_API_URL``).

The CLI's one-off ``scan`` and ``gate`` run their steps in process unless
``settings.orchestrator`` is ``prefect`` (``pipeline/config.py``); ``serve`` and
``ingest-landing`` always run flows.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.config import Settings, prefect_environment


def quiet_libraries() -> None:
    """MLflow configures its own logger on import (from MLFLOW_LOGGING_LEVEL); its INFO lines
    about creating tables, like GX's and alembic's, drown the result."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for noisy in ("mlflow", "great_expectations", "alembic", "distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Dask reads its logging config from the environment, in the scan and in its worker processes
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


def prepare_prefect(settings: Settings) -> None:
    """Prefect reads its settings from the environment: set quiet, self-contained defaults for
    the ephemeral mode, unless the user points at a server (PREFECT_API_URL)."""
    (settings.workspace / "prefect").mkdir(parents=True, exist_ok=True)
    quiet_libraries()
    for key, value in prefect_environment(settings.workspace).items():
        if key == "PREFECT_HOME" and os.environ.get("PREFECT_API_URL"):
            continue
        os.environ.setdefault(key, value)
    if not os.environ.get("PREFECT_API_URL"):
        from pipeline.orphans import stop_orphaned_servers

        stop_orphaned_servers(Path(os.environ["PREFECT_HOME"]))
        _temporary_server_output_to(Path(os.environ["PREFECT_HOME"]) / "temporary-server.log")


def run_flow(settings: Settings, module: str, name: str, *args: Any) -> Any:
    """Run the flow ``module.name`` (e.g. ``flows.ingest``, ``run_scan_flow``) on ``args``, with
    Prefect prepared. The CLI reports the outcome itself (one line for bad input, a refusal);
    Prefect's run loggers would print the same failure again with a traceback. Run states still
    reach the Prefect API."""
    prepare_prefect(settings)
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    # imported before the loggers are quietened: importing Prefect's flows configures them
    flow = getattr(importlib.import_module(module), name)

    # EventsWorker warns while it drains events at exit; nothing is lost and nothing to act on.
    for run_logger in ("prefect.task_runs", "prefect.flow_runs", "EventsWorker"):
        logging.getLogger(run_logger).setLevel(logging.CRITICAL)
    # The heartbeat thread costs ~1 s per flow run and tells an ephemeral server nothing useful.
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return flow(*args)


def _temporary_server_output_to(log: Path) -> None:
    """Prefect's temporary server is a child process that writes to our stdout and stderr; shut
    down at exit, it printed a traceback on a normal run (asyncio's CancelledError in aiosqlite).
    Its output goes to ``log`` instead: the child is started with that file as its fds 1 and 2,
    everything else about its start is Prefect's own."""
    from prefect.server.api.server import SubprocessASGIServer

    start = SubprocessASGIServer._run_uvicorn_command
    if getattr(start, "poisonguard_log", None) == log:
        return
    start = getattr(start, "__wrapped__", start)

    def started_with_output_to_log(server: SubprocessASGIServer) -> Any:
        log.parent.mkdir(parents=True, exist_ok=True)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved = os.dup(1), os.dup(2)
        with open(log, "ab") as handle:
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
            try:
                return start(server)  # the child inherits the log as stdout and stderr
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])

    started_with_output_to_log.__wrapped__ = start  # type: ignore[attr-defined]
    started_with_output_to_log.poisonguard_log = log  # type: ignore[attr-defined]
    # patched on purpose; the replacement names its argument server, not self
    SubprocessASGIServer._run_uvicorn_command = started_with_output_to_log  # type: ignore[method-assign,assignment]
