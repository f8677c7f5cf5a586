"""Prefect's temporary API server, left running by a scan that was killed.

Without a Prefect server (``PREFECT_API_URL`` unset) Prefect starts its API as a child process
(``uvicorn … prefect.server.api.server:create_app``, environment ``PREFECT__SERVER_EPHEMERAL=1``)
and stops it when the scan exits. A scan killed by SIGKILL cannot: its server is adopted by init
(or the nearest subreaper) and keeps its port and its hold on the workspace's Prefect database.
Before a command starts a server of its own, ``stop_orphaned_servers`` ends such orphans of the
same workspace. A server whose parent is a Python process belongs to a live scan (or test run):
the process that starts one is always Python, and an orphan's new parent is init or a
subreaper, never Python. (The parent's PREFECT_HOME cannot tell: /proc shows the environment a
process started with, and poisonguard sets PREFECT_HOME after it starts.)
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

_PROC = Path("/proc")
_SERVER_APP = b"prefect.server.api.server:create_app"


def stop_orphaned_servers(prefect_home: Path) -> list[int]:
    """SIGTERM every orphaned temporary Prefect server started for ``prefect_home``; returns
    their process ids. Does nothing where there is no /proc (not Linux)."""
    home = str(prefect_home)
    stopped = []
    for pid in _pids():
        process = _read(pid)
        if process is None:
            continue
        parent, environ, command = process
        if (
            _SERVER_APP not in command
            or environ.get("PREFECT__SERVER_EPHEMERAL") != "1"
            or environ.get("PREFECT_HOME") != home
        ):
            continue
        if parent != 1 and _is_python(parent):
            continue  # its scan is alive
        try:
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
        except OSError:  # gone meanwhile, or not ours to signal
            pass
    return stopped


def _pids() -> list[int]:
    try:
        return [int(p.name) for p in _PROC.iterdir() if p.name.isdigit()]
    except OSError:
        return []


def _is_python(pid: int) -> bool:
    try:
        executable = (_PROC / str(pid) / "cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return Path(executable.decode(errors="replace")).name.startswith("python")


def _read(pid: int) -> tuple[int, dict[str, str], bytes] | None:
    """(parent pid, environment, command line) of a process, or None if it cannot be read."""
    folder = _PROC / str(pid)
    try:
        stat = (folder / "stat").read_text()
        environ = (folder / "environ").read_bytes()
        command = (folder / "cmdline").read_bytes()
    except OSError:
        return None
    parent = int(stat.rpartition(")")[2].split()[1])  # the name in parentheses may hold spaces
    pairs = (item.partition(b"=") for item in environ.split(b"\0") if b"=" in item)
    return parent, {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}, command
