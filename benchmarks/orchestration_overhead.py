"""What orchestration costs a batch: Prefect, MLflow, the workspace commit and delivery around a
scan's steps, for 1,000-row batches in one long-running process (as a served deployment or
``poisonguard demo`` runs them), after its first scan.

Each batch is scanned twice in the same process and workspace: through ``pipeline.cli.run_scan``
(the flow a deployment runs: Prefect tasks, an MLflow run with its inputs, metrics and
artifacts, the batch lock, the workspace commit, the ledger and delivery to ``--out``), and
through the same library steps called plainly (``scan_scale.scan_steps``, which also writes the
outputs and records them in a ledger). The difference is the orchestration's cost. The plain
steps run first, so the detectors' fit is in the fit cache before the first flow run; that first
flow run also starts Prefect's temporary server and creates MLflow's database, and is reported
apart as the warm-up.

    .venv/bin/python benchmarks/orchestration_overhead.py      # writes orchestration_overhead.json

Data: the synthetic distribution of ``scan_scale.py`` (30 features), a 20,000-row reference and
holdout, six 1,000-row batches drawn from it. Generated files go to ``benchmarks/data/``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_scale import DATA, HOLDOUT_ROWS, Stages, dataset, draw, scan_steps

OUT = Path(__file__).resolve().parent / "orchestration_overhead.json"
BATCHES, BATCH_ROWS, REFERENCE_ROWS = 6, 1_000, 20_000


def main() -> None:
    from pipeline.cli import run_scan
    from pipeline.config import Settings
    from pipeline.scan import ScanRequest

    root = DATA / "overhead"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    reference, holdout = dataset("reference", REFERENCE_ROWS), dataset("holdout", HOLDOUT_ROWS)
    workspace = root / "workspace"
    settings = Settings.from_environment(workspace)
    runs = []
    for index in range(BATCHES):
        batch = root / f"batch_{index}.parquet"
        draw(BATCH_ROWS, seed=100 + index).to_parquet(batch, index=False)
        request = ScanRequest(
            batch=batch,
            reference=reference,
            label="label",
            out=root / f"plain-{index}",
            holdout=holdout,
            dataset="overhead-plain",
        )
        started = time.perf_counter()
        scan_steps(request, settings, root / f"plain-{index}", f"sqlite:///{root / 'plain-ledger.sqlite'}", Stages())
        plain = time.perf_counter() - started
        started = time.perf_counter()
        summary = run_scan(
            batch=batch,
            reference=reference,
            label="label",
            out=root / f"flow-{index}",
            holdout=holdout,
            dataset="overhead",
            workspace=workspace,
        )
        flow = time.perf_counter() - started
        assert summary["counts"]["rows"] == BATCH_ROWS and not summary["duplicate"]
        runs.append(
            {
                "batch": index,
                "plain_seconds": round(plain, 2),
                "flow_seconds": round(flow, 2),
                "overhead_seconds": round(flow - plain, 2),
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    later = [run["overhead_seconds"] for run in runs[1:]]
    record = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "batch_rows": BATCH_ROWS,
        "reference_rows": REFERENCE_ROWS,
        "runs": runs,
        "warm_up_overhead_seconds": runs[0]["overhead_seconds"],
        "median_overhead_seconds": round(statistics.median(later), 2),
        "max_overhead_seconds": max(later),
    }
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"orchestration per 1,000-row batch after the first: median {record['median_overhead_seconds']} s, "
        f"max {record['max_overhead_seconds']} s (first run of the process: {record['warm_up_overhead_seconds']} s)"
    )


if __name__ == "__main__":
    main()
