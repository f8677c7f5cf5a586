"""What a `poisonguard` process costs, start to exit, on this machine (issue 20).

Every case is a new process, timed from outside; the scans run with ``--progress`` so that each
one's own stages (ingest, trusted data, MLflow run, validate, fit, score, verdict, decide,
impact, outputs, MLflow results, commit) are summed beside its wall time. The difference is what
the process pays before the first stage and after the last: interpreter start, imports (measured
alone as ``import floor``: Great Expectations, scikit-learn, PyOD and MLflow, which every scan
needs), settings, exit.

    .venv/bin/python benchmarks/scan_wall_time.py            # writes benchmarks/scan_wall_time.json
    .venv/bin/python benchmarks/scan_wall_time.py --prefect  # also: the same scan through a Prefect server

Cases: ``--help`` and ``review list`` on an empty workspace beside ``python -c "import pandas"``;
a 1,000-row batch (HMDA sample rows resampled with ±3 % jitter) against
data_samples/reference.parquet (1,400 rows): in a new workspace with an empty fit cache, in a new
workspace with the fit cached (another dataset against the same reference), in the same workspace
again; 100,000 rows warm; ``poisonguard demo`` (all five sample batches) from nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"
DATA = REPO / "benchmarks" / "data"
BIN = Path(sys.executable).parent
POISONGUARD = BIN / "poisonguard"
STAGE_LINE = re.compile(r"^poisonguard: (?P<stage>.+?)\s+[\d,]+ rows\s+(?P<seconds>[\d.]+) s")
REPEATS = 5


def synthetic_batch(n_rows: int, seed: int) -> Path:
    path = DATA / f"hmda_resampled_{n_rows}_{seed}.parquet"
    if path.exists():
        return path
    pool = pd.concat([pd.read_parquet(SAMPLES / "holdout.parquet"), pd.read_parquet(SAMPLES / "batch_05_clean.parquet")])
    rng = np.random.default_rng(seed)
    batch = pool.sample(n=n_rows, replace=True, random_state=seed).reset_index(drop=True)
    for col in ("pirat", "hirat", "lvrat"):
        batch[col] = (batch[col] * rng.uniform(0.97, 1.03, size=n_rows)).round(4)
    batch["hirat"] = np.minimum(batch["hirat"], batch["pirat"])
    DATA.mkdir(parents=True, exist_ok=True)
    batch.to_parquet(path, index=False)
    return path


def clean_environment(cache_home: Path, **extra: str) -> dict[str, str]:
    """The user's environment without anything that points at a server or a test's state; the
    fit cache and its key under ``cache_home`` (a user's ~/.cache and ~/.config)."""
    dropped = (
        "PREFECT_API_URL",
        "PREFECT_HOME",
        "MLFLOW_TRACKING_URI",
        "POISONGUARD_FIT_CACHE",
        "POISONGUARD_CACHE_KEY",
        "POISONGUARD_ORCHESTRATOR",
        "POISONGUARD_WORKSPACE",
    )
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(
        {
            "XDG_CACHE_HOME": str(cache_home / "cache"),
            "XDG_CONFIG_HOME": str(cache_home / "config"),
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
        },
        **extra,
    )
    return env


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return elapsed, done


def startup(root: Path) -> dict:
    """Median of REPEATS new processes each: the light commands beside importing pandas."""
    env = clean_environment(root / "user")
    cases = {
        "import pandas": [sys.executable, "-c", "import pandas"],
        "import floor (GX, scikit-learn, PyOD, MLflow)": [
            sys.executable,
            "-c",
            "import great_expectations, sklearn.ensemble, pyod.models.ecod, mlflow",
        ],
        "poisonguard --help": [str(POISONGUARD), "--help"],
    }
    times: dict[str, list[float]] = {name: [] for name in [*cases, "poisonguard review list (empty workspace)"]}
    for i in range(REPEATS):  # interleaved, so that a busy moment hits every case alike
        for name, command in cases.items():
            times[name].append(timed(command, env, root)[0])
        workspace = root / f"empty-{i}"
        times["poisonguard review list (empty workspace)"].append(
            timed([str(POISONGUARD), "review", "list", "--workspace", str(workspace)], env, root)[0]
        )
    medians = {name: round(statistics.median(values), 2) for name, values in times.items()}
    pandas_time = medians["import pandas"]
    return {
        "median_seconds": medians,
        "all_seconds": {k: [round(v, 2) for v in vs] for k, vs in times.items()},
        "ratio_to_import_pandas": {k: round(v / pandas_time, 2) for k, v in medians.items()},
    }


def scan(batch: Path, workspace: Path, out: Path, env: dict[str, str], dataset: str) -> dict:
    elapsed, done = timed(
        [
            str(POISONGUARD),
            "scan",
            str(batch),
            "--reference",
            str(SAMPLES / "reference.parquet"),
            "--holdout",
            str(SAMPLES / "holdout.parquet"),
            "--label",
            "deny",
            "--suite",
            str(REPO / "expectations" / "hmda.json"),
            "--dataset",
            dataset,
            "--workspace",
            str(workspace),
            "--out",
            str(out),
            "--progress",
        ],
        env,
        workspace.parent,
    )
    stages = {m["stage"].strip(): float(m["seconds"]) for m in map(STAGE_LINE.match, done.stderr.splitlines()) if m}
    summary = json.loads((out / "summary.json").read_text())
    staged = sum(stages.values())
    return {
        "batch": batch.name,
        "rows": summary["counts"]["rows"],
        "seconds": round(elapsed, 2),
        "stages_seconds": round(staged, 2),
        "wall_over_stages": round(elapsed / staged, 2) if staged else None,
        "before_and_after_stages_seconds": round(elapsed - staged, 2),
        "stages": stages,
        "orchestration": summary.get("orchestration"),
        "quarantined": summary["counts"]["quarantined"],
        "mlflow_run_id": summary["mlflow"]["run_id"],
    }


def scans(root: Path) -> dict:
    small = [synthetic_batch(1_000, seed) for seed in (11, 12, 13)]
    large = synthetic_batch(100_000, 1)
    user = root / "user-scans"
    env = clean_environment(user)
    results = {
        "1,000 rows, new workspace, empty fit cache": scan(small[0], root / "ws-a", root / "out-a", env, "bench-a"),
        "1,000 rows, new workspace, fit cached": scan(small[1], root / "ws-b", root / "out-b", env, "bench-b"),
        "1,000 rows, same workspace again": scan(small[2], root / "ws-b", root / "out-c", env, "bench-b"),
        "100,000 rows, warm workspace": scan(large, root / "ws-b", root / "out-d", env, "bench-b"),
    }
    return results


def demo(root: Path) -> dict:
    """`poisonguard demo` from nothing: a new workspace, output folder and user cache."""
    folder = root / "demo"
    folder.mkdir()
    elapsed, done = timed(
        [str(POISONGUARD), "demo", "--workspace", str(folder / "ws"), "--out", str(folder / "out")],
        clean_environment(folder / "user"),
        folder,
    )
    per_batch = [float(s) for s in re.findall(r"^\(([\d.]+) s\)$", done.stdout, flags=re.M)]
    return {"seconds": round(elapsed, 2), "batches": len(per_batch), "per_batch_seconds": per_batch}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def through_prefect(root: Path) -> dict:
    """The 1,000-row scan through a Prefect server started here: its flow run and task runs as
    the server records them, and the MLflow run's keys beside a plain scan's."""
    port, home = free_port(), root / "prefect-server"
    server_env = {
        **clean_environment(root / "user-prefect"),
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        started = time.perf_counter()
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.perf_counter() - started > 120 or server.poll() is not None:
                    raise SystemExit("the Prefect server did not start") from None
                time.sleep(0.5)
        env = {**clean_environment(root / "user-scans"), "PREFECT_API_URL": api, "PREFECT_HOME": str(home)}
        batch = synthetic_batch(1_000, 14)
        result = scan(batch, root / "ws-prefect", root / "out-prefect", env, "bench-prefect")
        flow_run_id = (result["orchestration"] or {}).get("flow_run_id")
        task_runs = subprocess.run(
            [sys.executable, "-c", _TASK_RUNS, flow_run_id or ""],
            capture_output=True,
            text=True,
            check=True,
            env={**env, "PREFECT_LOGGING_LEVEL": "ERROR"},
        ).stdout
        result["prefect"] = json.loads(task_runs)
        return result
    finally:
        server.terminate()
        server.wait(timeout=60)


# What the server holds of the flow run: its name and state, and the names of its task runs.
_TASK_RUNS = """
import asyncio, json, sys
from uuid import UUID
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter

async def main(flow_run_id):
    async with get_client() as client:
        run = await client.read_flow_run(UUID(flow_run_id))
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        print(json.dumps({"flow_run": run.name, "state": run.state_name,
                          "task_runs": sorted({t.name.rsplit("-", 1)[0] for t in tasks}),
                          "task_run_count": len(tasks)}))

asyncio.run(main(sys.argv[1]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefect", action="store_true", help="also scan through a Prefect server started here")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="poisonguard-wall-time-"))
    try:
        record = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "startup": startup(root),
        }
        print(json.dumps(record["startup"]["median_seconds"]), flush=True)
        record["scans"] = scans(root)
        for name, result in record["scans"].items():
            print(name, {k: result[k] for k in ("seconds", "stages_seconds", "wall_over_stages")}, flush=True)
        record["demo"] = demo(root)
        print("demo", record["demo"], flush=True)
        if args.prefect:
            record["prefect"] = through_prefect(root)
            print("prefect", {k: record["prefect"][k] for k in ("seconds", "stages_seconds", "prefect")}, flush=True)
        (REPO / "benchmarks" / "scan_wall_time.json").write_text(json.dumps(record, indent=2) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
