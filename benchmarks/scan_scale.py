"""How a scan's cost grows with batch and reference size: 10^4, 10^5 and 10^6 rows × 30 features.

The data is synthetic so any size can be drawn: two Gaussian classes (35 % / 65 %) in 30
correlated dimensions, 25 kept as numeric features and 5 cut into 4-level categorical ones,
2 % natural label noise. The reference, the holdout and
every batch are draws from one distribution, so the batch is clean and what is measured is the
cost of scanning it. Each size runs in its own process (peak memory is the process's maximum
resident set, ``VmHWM``, and the peak of its anonymous memory, sampled) through the library's
steps (``pipeline.scan``), writing the outputs and recording every row in a SQLite ledger as a
scan does, without Prefect and MLflow, whose per-batch cost ``scan_wall_time.py`` measures.

    .venv/bin/python benchmarks/scan_scale.py                       # 10^4, 10^5, 10^6 vs 200k
    .venv/bin/python benchmarks/scan_scale.py --rows 100000 --reference 50000

Writes ``benchmarks/scan_scale.json`` (one record per case, appended by size) and prints a
markdown table. Generated data goes to ``benchmarks/data/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / "data"
OUT = REPO / "benchmarks" / "scan_scale.json"
N_NUMERIC, N_CATEGORICAL = 25, 5
HOLDOUT_ROWS = 20_000
# The stage each step of ``scan_run.evaluate`` is timed as (the scoring: see ``Stages.reached``).
STEP_STAGES = {
    "validate_batch": "validate",
    "fit_detectors": "fit detectors",
    "fit_checks": "fit batch checks",
    "check_batch": "batch checks",
    "assess": "verdict",
    "decide_batch": "decide",
}


def draw(n_rows: int, seed: int) -> pd.DataFrame:
    """Rows of one fixed distribution (its parameters come from seed 0 whatever the size; the
    rows from ``seed``): two Gaussian classes with a shared random covariance, 2 % label noise."""
    d = N_NUMERIC + N_CATEGORICAL
    parameters = np.random.default_rng(0)
    mixing = parameters.normal(size=(d, d)) / np.sqrt(d)
    shift = parameters.normal(scale=0.6, size=d)
    rng = np.random.default_rng(seed)
    y = rng.random(n_rows) < 0.35
    X = rng.normal(size=(n_rows, d)) @ mixing + np.where(y[:, None], shift, -shift)
    y ^= rng.random(n_rows) < 0.02
    frame = pd.DataFrame(X[:, :N_NUMERIC].round(5), columns=[f"x{i:02d}" for i in range(N_NUMERIC)])
    for j in range(N_CATEGORICAL):
        codes = np.digitize(X[:, N_NUMERIC + j], [-1.0, 0.0, 1.0])
        frame[f"c{j}"] = np.array(["low", "mid", "high", "top"])[codes]
    frame["label"] = np.where(y, "yes", "no")
    return frame


def dataset(kind: str, n_rows: int) -> Path:
    """reference / holdout / batch files, drawn once and kept in benchmarks/data/."""
    path = DATA / f"scale_{kind}_{n_rows}.parquet"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        seed = {"reference": 1, "holdout": 2, "batch": 3}[kind]
        # numbers, not strings, for the (many) numeric cells: the file is what a feed would send
        draw(n_rows, seed).to_parquet(path, index=False)
    return path


class Stages:
    """Seconds, and the process's peak resident set (MiB) after, each named step; and the peak
    of its anonymous memory (RssAnon: the heap, without file pages), sampled every 10 ms. A
    spooled batch is memory-mapped: its pages count in the resident set once touched, but they
    are the page cache's, and the kernel drops them under memory pressure."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_mib: dict[str, int] = {}
        self.peak_anon_mib: dict[str, int] = {}
        self.anon_peak_kib = 0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            self.anon_peak_kib = max(self.anon_peak_kib, anon_kib())
            time.sleep(0.01)

    def __call__(self, name: str, function, *args):
        started = time.perf_counter()
        result = function(*args)
        self._record(name, started)
        return result

    def step(self, function):
        """``function`` timed under its stage's name: the step hook of ``scan_run.evaluate``."""
        return functools.wraps(function)(lambda *args: self(STEP_STAGES[function.__name__], function, *args))

    def reached(self, point: str) -> None:
        """The scoring is no step (its chunks are): it is timed between the stage boundaries that
        ``scan_run.evaluate`` reports around it."""
        if point == "scan.detectors_fitted":
            self._scoring = time.perf_counter()
        elif point == "scan.scored":
            self._record("score", self._scoring)

    def _record(self, name: str, started: float) -> None:
        self.seconds[name] = round(time.perf_counter() - started, 2)
        self.peak_mib[name] = round(status_kib("VmHWM") / 1024)
        self.anon_peak_kib = max(self.anon_peak_kib, anon_kib())
        self.peak_anon_mib[name] = round(self.anon_peak_kib / 1024)


def anon_kib() -> int:
    return status_kib("RssAnon")


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB. The peak resident set is ``VmHWM``, not ru_maxrss:
    a child's ru_maxrss starts at its parent's resident set when it was forked (1.3 GiB once the
    parent had drawn a 2×10^6-row batch)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def scan_steps(request, settings, folder: Path, ledger_url: str, timed: Stages) -> int:
    """A scan's library steps in this process, as the flow runs them (its judging of the batch
    is ``scan_run.evaluate``, timed a step at a time), writing the outputs to ``folder`` and
    recording them in the ledger at ``ledger_url``, without Prefect and MLflow; returns the rows
    held."""
    from pipeline import scan
    from pipeline.ledger import Ledger
    from pipeline.scan_run import evaluate
    from pipeline.store import write_outputs

    batch = timed("ingest", scan.ingest, request, settings)
    trusted = timed("load trusted data", scan.load_trusted, request, settings)
    judged = evaluate(batch, trusted, settings, step=timed.step, reached=timed.reached)
    decisions = judged.decisions
    impacts = timed("exact group RONI", scan.confirm_impact, trusted, judged.conformed, judged.outcome, decisions, settings)
    outputs = timed(
        "build outputs",
        scan.build_outputs,
        request,
        settings,
        batch,
        trusted,
        judged.conformed,
        judged.outcome,
        decisions,
        impacts,
        judged.checks,
        np.array([]),
        "benchmark",
        scan.now(),
        judged.verdict,
    )
    held = int(decisions.table["quarantined"].sum())
    del judged, decisions  # as the flow does before recording
    shutil.rmtree(folder, ignore_errors=True)
    timed("write outputs", write_outputs, outputs, folder)
    del outputs  # as the flow does once they are written
    with Ledger.open(ledger_url) as ledger:
        timed("ledger record", ledger.record_scan_folder, folder)
    return held


def run_case(n_rows: int, n_reference: int) -> dict:
    """One scan's steps, timed, in this process."""
    started = time.perf_counter()
    from pipeline import scan
    from pipeline.config import Settings

    imported = round(time.perf_counter() - started, 2)
    request = scan.ScanRequest(
        batch=dataset("batch", n_rows),
        reference=dataset("reference", n_reference),
        label="label",
        out=DATA / "out",
        holdout=dataset("holdout", HOLDOUT_ROWS),
        dataset="scale",
    )
    settings = Settings.from_environment(DATA / "workspace")
    batch_bytes = request.batch.stat().st_size
    ledger_file = DATA / "workspace" / f"ledger-{n_rows}.sqlite"
    ledger_file.unlink(missing_ok=True)
    timed = Stages()
    begun = time.perf_counter()
    held = scan_steps(request, settings, DATA / "out" / f"batch-{n_rows}", f"sqlite:///{ledger_file}", timed)
    total = time.perf_counter() - begun
    peak_mib = status_kib("VmHWM") / 1024
    return {
        "rows": n_rows,
        "reference_rows": n_reference,
        "features": N_NUMERIC + N_CATEGORICAL,
        "seconds": round(total, 1),
        "rows_per_second": round(n_rows / total),
        "peak_mib": round(peak_mib),
        "peak_anon_mib": round(timed.anon_peak_kib / 1024),
        "quarantined": held,
        "false_quarantine": round(held / n_rows, 4),
        "spooled": batch_bytes > settings.spool_bytes,
        "stages": {"import": imported, **timed.seconds},
        "peak_mib_after": timed.peak_mib,
        "peak_anon_mib_after": timed.peak_anon_mib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--reference", type=int, default=200_000)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.rows[0], args.reference)))
        return
    for kind, n in [("reference", args.reference), ("holdout", HOLDOUT_ROWS), *(("batch", r) for r in args.rows)]:
        dataset(kind, n)
    records = json.loads(OUT.read_text())["cases"] if OUT.exists() else []
    for n_rows in args.rows:
        child = subprocess.run(
            [sys.executable, __file__, "--one", "--rows", str(n_rows), "--reference", str(args.reference)],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            raise SystemExit(f"{n_rows} rows failed:\n{child.stderr[-3000:]}")
        record = json.loads(child.stdout.strip().splitlines()[-1])
        record.update(
            date=date.today().isoformat(),
            machine=f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        )
        print(json.dumps(record), flush=True)
        records = [r for r in records if (r["rows"], r["reference_rows"]) != (n_rows, args.reference)] + [record]
    records.sort(key=lambda r: (r["reference_rows"], r["rows"]))
    OUT.write_text(json.dumps({"cases": records}, indent=2) + "\n")
    print(markdown(records))


def markdown(records: list[dict]) -> str:
    """Seconds per stage, then (for the runs that measured it) the peak after each stage."""
    tables = [_table(records, "stages")]
    with_peaks = [r for r in records if "peak_mib_after" in r]
    if with_peaks:
        tables.append("Peak MiB after each stage:\n\n" + _table(with_peaks, "peak_mib_after"))
    with_anon = [r for r in records if "peak_anon_mib_after" in r]
    if with_anon:
        tables.append("Peak anonymous MiB (RssAnon) after each stage:\n\n" + _table(with_anon, "peak_anon_mib_after"))
    return "\n\n".join(tables)


def _table(records: list[dict], per_stage: str) -> str:
    stage_names = list(dict.fromkeys(name for r in records for name in r[per_stage] if name != "import"))
    head = ["batch rows", "reference rows", "seconds", "rows/s", "peak MiB", "peak anon MiB", "held", *stage_names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        cells = [
            f"{r['rows']:,}",
            f"{r['reference_rows']:,}",
            r["seconds"],
            f"{r['rows_per_second']:,}",
            f"{r['peak_mib']:,}",
            f"{r['peak_anon_mib']:,}" if "peak_anon_mib" in r else "",
            f"{r['false_quarantine']:.2%}",
            *(r[per_stage].get(s, "") for s in stage_names),
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
