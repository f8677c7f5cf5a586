"""A clean console: no traceback from a background service on a normal run, and every failure of
ours is one line. benchmarks/console_noise.py runs each command 20 times and counts tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLES, SUITE

POISONGUARD = Path(sys.executable).parent / "poisonguard"


def test_the_temporary_servers_output_goes_to_its_log_not_the_console(tmp_path, capfd, monkeypatch):
    """Stands in for Prefect's server: a child that prints a shutdown traceback to stdout and stderr."""
    from prefect.server.api.server import SubprocessASGIServer

    from pipeline.cli_prefect import _temporary_server_output_to

    def noisy_child(server):
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; print('served');"
                "sys.stderr.write('Traceback (most recent call last):\\n"
                "asyncio.exceptions.CancelledError\\n')",
            ]
        )

    monkeypatch.setattr(SubprocessASGIServer, "_run_uvicorn_command", noisy_child)
    log = tmp_path / "prefect" / "temporary-server.log"
    _temporary_server_output_to(log)
    _temporary_server_output_to(log)  # a second scan in the same process: wrapped once
    SubprocessASGIServer._run_uvicorn_command(object()).wait()
    console = capfd.readouterr()
    assert "Traceback" not in console.out + console.err and "served" not in console.out
    assert "served" in log.read_text() and "CancelledError" in log.read_text()
    print("still ours")  # our own fds are back
    assert capfd.readouterr().out == "still ours\n"


@pytest.mark.parametrize("content", [b"", b"not hex at all", b"\xff\xfe\x00garbage", b"ab" * 8])
def test_a_corrupted_cache_key_file_is_one_line_and_nothing_starts(run_cli, tmp_path, monkeypatch, content):
    key_file = tmp_path / "config" / "fit-cache.key"
    key_file.parent.mkdir()
    key_file.write_bytes(content)
    monkeypatch.delenv("POISONGUARD_CACHE_KEY")
    monkeypatch.setenv("POISONGUARD_FIT_CACHE", "on")
    monkeypatch.setenv("POISONGUARD_CACHE_KEY_FILE", str(key_file))
    result = run_cli(
        "scan",
        SAMPLES / "batch_01_clean.csv",
        "--reference",
        SAMPLES / "reference.parquet",
        "--label",
        "deny",
        "--workspace",
        tmp_path / "ws",
        "--out",
        tmp_path / "out",
    )
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("poisonguard: error: The fit-cache key") and "delete it" in lines[0]
    assert not (tmp_path / "ws" / "prefect").exists()  # failed before Prefect was started


def test_a_scan_and_a_gate_print_no_traceback(tmp_path):
    """The real CLI: a scan as a flow run, Prefect's temporary server and all (its shutdown
    printed a traceback), and a gate run in process, as a one-off gate without a server is."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "PREFECT_API_URL")}
    env |= {"OMP_NUM_THREADS": "1", "POISONGUARD_WORKSPACE": str(tmp_path / "ws"), "POISONGUARD_ORCHESTRATOR": "prefect"}
    scan = subprocess.run(
        [
            str(POISONGUARD),
            "scan",
            SAMPLES / "batch_01_clean.csv",
            "--reference",
            SAMPLES / "reference.parquet",
            "--holdout",
            SAMPLES / "holdout.parquet",
            "--suite",
            SUITE,
            "--label",
            "deny",
            "--dataset",
            "console",
            "--out",
            tmp_path / "out",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    gate = subprocess.run(
        [str(POISONGUARD), "gate", "--dataset", "console", "--out", tmp_path / "gate", "--max-pending", "1000"],
        env={**env, "POISONGUARD_ORCHESTRATOR": "plain"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    for done in (scan, gate):
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stderr == "" and "Traceback" not in done.stdout
    assert (tmp_path / "ws" / "prefect" / "temporary-server.log").exists()
