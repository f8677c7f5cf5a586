"""Tracebacks on the console: scan, gate, verify and review through the real ``poisonguard``
command, each as a normal and as a refused run, N times each (20 by default), counting the runs
whose stdout or stderr shows a traceback or an exception line that is not poisonguard's own
one-line error.

    .venv/bin/python benchmarks/console_noise.py [--runs 20]     # writes console_noise.json

The runs, each in its own process (as a cron job or a retraining job starts them):

| command | normal | refused |
|---|---|---|
| scan | a new batch (90 % of batch_01's rows, drawn with its own seed) | a file that is not a batch (exit 2) |
| gate | ``--max-pending 100000`` (exit 0) | ``--max-pending 0`` while rows await review (exit 3) |
| verify | an intact ledger (exit 0) | a copy of the workspace whose ledger was edited (exit 3) |
| review | ``review list`` (exit 0) | ``review release`` of a row that does not exist (exit 2) |

The reference is a 400-row sample of data_samples/reference.parquet (the fit is cached after the
first scan), so most of a scan's time is process start, Prefect's temporary server and MLflow.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"
OUT = Path(__file__).resolve().parent / "console_noise.json"
POISONGUARD = Path(sys.executable).parent / "poisonguard"
DATASET = "noise"
# a traceback, or an exception's own line ("asyncio.exceptions.CancelledError", "KeyError: 'x'")
NOISE = re.compile(r"Traceback \(most recent call last\)|^\s*[\w.]*(Error|Exception)\b(?!.*poisonguard)", re.M)


def noisy(text: str) -> bool:
    ours = "\n".join(
        line for line in text.splitlines() if not line.startswith(("poisonguard: error:", "poisonguard: tampered:", "  - "))
    )
    return bool(NOISE.search(ours))


def main() -> None:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    root = Path(tempfile.mkdtemp(prefix="console-noise-"))
    workspace, tampered = root / "ws", root / "ws-tampered"
    reference = root / "reference.parquet"
    pd.read_parquet(SAMPLES / "reference.parquet").sample(n=400, random_state=0).sort_index().to_parquet(reference)
    clean = pd.read_csv(SAMPLES / "batch_01_clean.csv")
    bad = root / "not-a-batch.csv"
    bad.write_bytes(b"\x00\x01 not a table")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "PREFECT_API_URL", "POISONGUARD_DATABASE_URL")}
    env |= {
        "OMP_NUM_THREADS": "1",
        "POISONGUARD_WORKSPACE": str(workspace),
        "POISONGUARD_CACHE_KEY": os.urandom(32).hex(),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
    }
    scan_args = [
        "--reference",
        str(reference),
        "--holdout",
        str(SAMPLES / "holdout.parquet"),
        "--suite",
        str(REPO / "expectations" / "hmda.json"),
        "--label",
        "deny",
        "--dataset",
        DATASET,
    ]
    results: dict[str, dict[str, object]] = {}

    def run(name: str, args: list[str], expect: int, workspace_dir: Path = workspace) -> None:
        started = time.perf_counter()
        done = subprocess.run(
            [str(POISONGUARD), *args],
            env=env | {"POISONGUARD_WORKSPACE": str(workspace_dir)},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        entry = results.setdefault(
            name, {"runs": 0, "with_traceback": 0, "unexpected_exit": 0, "seconds": 0.0, "examples": []}
        )
        entry["runs"] += 1
        entry["seconds"] += time.perf_counter() - started
        output = done.stdout + done.stderr
        if noisy(output):
            entry["with_traceback"] += 1
            if len(entry["examples"]) < 2:
                entry["examples"].append(output[-1500:])
        if done.returncode != expect:
            entry["unexpected_exit"] += 1
            if len(entry["examples"]) < 2:
                entry["examples"].append(f"exit {done.returncode}: {output[-1500:]}")

    for i in range(runs):
        batch = root / f"batch-{i:02d}.csv"
        clean.sample(frac=0.9, random_state=i).to_csv(batch, index=False)
        run("scan (normal)", ["scan", str(batch), *scan_args, "--out", str(root / "out" / str(i))], 0)
        run("scan (refused: not a batch)", ["scan", str(bad), *scan_args, "--out", str(root / "out-bad")], 2)
        if i == 0:
            _make_tampered_copy(workspace, tampered)
        run("gate (normal)", ["gate", "--dataset", DATASET, "--out", str(root / "gate"), "--max-pending", "100000"], 0)
        run("gate (refused: rows await review)", ["gate", "--dataset", DATASET, "--out", str(root / "gate-refused")], 3)
        run("verify (normal)", ["verify"], 0)
        run("verify (refused: ledger edited)", ["verify"], 3, tampered)
        run("review list (normal)", ["review", "list", "--dataset", DATASET], 0)
        run("review release (refused: no such row)", ["review", "release", "nosuchbatch:1", "--by", "a", "--reason", "b"], 2)
        print(
            f"round {i + 1}/{runs}: " + ", ".join(f"{k.split(' ')[0]} {v['with_traceback']}" for k, v in results.items()),
            flush=True,
        )
        _write(results, i + 1, runs)  # after every round: a run cut short still reports what it did
    print(json.dumps({k: (v["with_traceback"], v["unexpected_exit"]) for k, v in results.items()}, indent=1))
    shutil.rmtree(root, ignore_errors=True)


def _write(results: dict[str, dict[str, object]], rounds: int, planned: int) -> None:
    commands = {
        name: {**entry, "seconds": round(float(entry["seconds"]) / int(entry["runs"]), 1)}  # mean per run
        for name, entry in results.items()
    }
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}",
        "rounds_planned": planned,
        "rounds_completed": rounds,
        "runs_with_traceback": sum(int(e["with_traceback"]) for e in results.values()),
        "runs_with_unexpected_exit": sum(int(e["unexpected_exit"]) for e in results.values()),
        "commands": commands,
    }
    OUT.write_text(json.dumps(report, indent=2) + "\n")


def _make_tampered_copy(workspace: Path, tampered: Path) -> None:
    """A copy of the workspace whose ledger has one batch's recorded file name edited."""
    shutil.copytree(workspace, tampered, ignore=shutil.ignore_patterns("prefect", "staging"))
    with sqlite3.connect(tampered / "ledger.sqlite") as connection:
        connection.execute("UPDATE batches SET file = 'edited.csv'")


if __name__ == "__main__":
    main()
