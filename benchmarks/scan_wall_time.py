"""Wall time of `poisonguard scan` end to end (process start to exit) on this machine.

Cases: the demo batch (140 rows of data_samples/) and a 100,000-row batch resampled from the
HMDA sample rows with small numeric jitter, both against data_samples/reference.parquet. Each
case runs in a fresh workspace, cold (first scan: Prefect's temporary server and MLflow's
database are created) and warm (second scan of a different batch in the same workspace).

    .venv/bin/python benchmarks/scan_wall_time.py          # writes benchmarks/scan_wall_time.json
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"
DATA = REPO / "benchmarks" / "data"
POISONGUARD = Path(sys.executable).parent / "poisonguard"


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


def timed_scan(batch: Path, workspace: Path, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    started = time.perf_counter()
    proc = subprocess.run(
        [str(POISONGUARD), "scan", str(batch), "--reference", str(SAMPLES / "reference.parquet"),
         "--holdout", str(SAMPLES / "holdout.parquet"), "--label", "deny",
         "--suite", str(REPO / "expectations" / "hmda.json"), "--dataset", "bench",
         "--workspace", str(workspace), "--out", str(out)],
        capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"scan of {batch} failed: {proc.stderr.strip()}")
    summary = json.loads((out / "summary.json").read_text())
    return {"batch": batch.name, "rows": summary["counts"]["rows"], "seconds": round(elapsed, 1),
            "quarantined": summary["counts"]["quarantined"]}


def main() -> None:
    root = DATA / "runs"
    shutil.rmtree(root, ignore_errors=True)
    results = []
    cases = [("demo batch", SAMPLES / "batch_02_label_flips.csv", SAMPLES / "batch_01_clean.csv"),
             ("100k rows", synthetic_batch(100_000, 1), synthetic_batch(100_000, 2))]
    for name, first, second in cases:
        workspace = root / name.replace(" ", "-")
        cold = timed_scan(first, workspace, workspace / "out-cold")
        warm = timed_scan(second, workspace, workspace / "out-warm")
        results.append({"case": name, "cold": cold, "warm": warm})
        print(name, "cold", cold, "warm", warm, flush=True)
    record = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}", "results": results}
    (REPO / "benchmarks" / "scan_wall_time.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
