"""A scan killed by SIGKILL leaves Prefect's temporary server behind (the next command stops it,
see pipeline/orphans.py); that server must not hold the scan's stdout and stderr open.

Before: Prefect started the server with the scan's own stdout and stderr, so whoever read the
scan's output through a pipe (``| tee``, cron's mail, ``subprocess.run``) waited for an end of
output that came only when the next command stopped the orphan.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.orphans import stop_orphaned_servers
from tests.conftest import SAMPLES, SUITE

SERVER_APP = b"prefect.server.api.server:create_app"


def server_children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == parent and SERVER_APP in command:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the server")
def test_a_killed_scans_output_ends_when_the_scan_dies(tmp_path):
    home = tmp_path / "prefect"
    # a flow run on Prefect's temporary server (a one-off scan without a server starts none)
    env = {**os.environ, "PREFECT_HOME": str(home), "OMP_NUM_THREADS": "1", "POISONGUARD_ORCHESTRATOR": "prefect"}
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "scan",
        str(SAMPLES / "batch_01_clean.csv"),
        "--reference",
        str(SAMPLES / "reference.parquet"),
        "--holdout",
        str(SAMPLES / "holdout.parquet"),
        "--suite",
        str(SUITE),
        "--label",
        "deny",
        "--dataset",
        "killed",
        "--workspace",
        str(tmp_path / "ws"),
        "--out",
        str(tmp_path / "out"),
    ]
    scan = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 180
        while not server_children(scan.pid):
            assert scan.poll() is None, scan.stderr.read().decode(errors="replace")
            assert time.monotonic() < deadline, "the scan started no temporary Prefect server"
            time.sleep(0.2)
        scan.send_signal(signal.SIGKILL)
        scan.wait()
        started = time.monotonic()
        try:
            scan.communicate(timeout=15)  # returns at end of output: every writer gone
        except subprocess.TimeoutExpired:
            pytest.fail("the scan's output stayed open after it was killed: its orphaned server holds it")
        assert time.monotonic() - started < 15
    finally:
        if scan.poll() is None:
            scan.kill()
        for pipe in (scan.stdout, scan.stderr):
            pipe.close()
        time.sleep(0.5)  # let init adopt the orphan before looking for it
        stop_orphaned_servers(home)
