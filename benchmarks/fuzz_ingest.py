"""Fuzzing ingestion and the scan at scale: the figures of the README's "Reliability and security".

Runs the strategies of tests/test_fuzz_input.py (which runs a few hundred of the same cases in CI)
for many more cases, with a fixed seed, and counts outcomes: each case must end in a refusal of
one printable line (counted by what it says) or in a table read whole / a scan whose outputs,
read back, hold every input row exactly once. Anything else is counted as a failure, and its
input saved under benchmarks/fuzz-failures/ to reproduce it.

    .venv/bin/python benchmarks/fuzz_ingest.py                      # 5,000 read cases, 300 scan cases
    .venv/bin/python benchmarks/fuzz_ingest.py --read-cases 500 --scan-cases 30

Writes benchmarks/fuzz_ingest.json (counts, machine, date) and prints the same.
"""

from __future__ import annotations

import argparse
import datetime as dt
import faulthandler
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import pandas as pd
from hypothesis import Phase, given, seed, settings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import test_fuzz_input as fuzz  # noqa: E402  (the repository root must be importable first)

FAILURES = REPO / "benchmarks" / "fuzz-failures"
RESULTS = REPO / "benchmarks" / "fuzz_ingest.json"
SEED = 20261126
# A case that runs this long is a hang: faulthandler prints every thread's stack and exits.
HANG_SECONDS = 300
# How the read cases are shared among the three file generators.
READ_SHARES = {"random bytes": 0.2, "CSV": 0.5, "Parquet": 0.3}


class Tally:
    """Outcomes of one generator: counts by outcome class, time, and saved failures."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.outcomes: Counter[str] = Counter()
        self.slowest = 0.0
        self.seconds = 0.0
        self.rows_in = self.rows_accepted = self.rows_quarantined = self.rows_lost = self.rows_duplicated = 0
        self.current: fuzz.GeneratedFile | None = None  # the case being run, saved if it fails

    def run(self, case) -> str:
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
        started = time.perf_counter()
        try:
            outcome = case()
        except Exception as error:  # the property failed: count it, keep the input, go on
            outcome = f"FAILED: {type(error).__name__}: {str(error).splitlines()[0][:100] if str(error) else ''}"
            self._save_failure(error)
        finally:
            faulthandler.cancel_dump_traceback_later()
            elapsed = time.perf_counter() - started
            self.slowest, self.seconds = max(self.slowest, elapsed), self.seconds + elapsed
        self.outcomes[outcome] += 1
        return outcome

    def _save_failure(self, error: Exception) -> None:
        FAILURES.mkdir(parents=True, exist_ok=True)
        number = sum(n for o, n in self.outcomes.items() if o.startswith("FAILED")) + 1
        stem = FAILURES / f"{self.name.replace(' ', '-')}-{number}"
        stem.with_suffix(".txt").write_text("".join(traceback.format_exception(error)))
        if self.current is not None:
            stem.with_suffix(".bin").write_bytes(self.current.data)
            stem.with_suffix(".case.txt").write_text(repr(self.current))

    def as_dict(self) -> dict:
        result = {
            "cases": sum(self.outcomes.values()),
            "outcomes": dict(self.outcomes.most_common()),
            "seconds": round(self.seconds, 1),
            "slowest_case_seconds": round(self.slowest, 2),
        }
        if self.rows_in:
            result["rows"] = {
                "in": self.rows_in,
                "accepted": self.rows_accepted,
                "quarantined": self.rows_quarantined,
                "lost": self.rows_lost,
                "duplicated": self.rows_duplicated,
            }
        return result


def run_reads(tally: Tally, strategy, cases: int, folder: Path) -> None:
    if cases < 1:
        return

    @seed(SEED)
    @settings(max_examples=cases, phases=[Phase.generate], **fuzz.FUZZ_SETTINGS | {"derandomize": False})
    @given(document=strategy)
    def read_one(document: fuzz.GeneratedFile) -> None:
        tally.current = document
        tally.run(lambda: fuzz.check_read(document, folder))

    read_one()


def run_scans(tally: Tally, cases: int, folder: Path) -> None:
    if cases < 1:
        return
    fitted = fuzz.fit_small_scan(folder)

    @seed(SEED)
    @settings(max_examples=cases, phases=[Phase.generate], **fuzz.FUZZ_SETTINGS | {"derandomize": False})
    @given(document=fuzz.scan_batches())
    def scan_one(document: fuzz.GeneratedFile) -> None:
        tally.current = document
        outcome = tally.run(lambda: fuzz.check_scan(document, fitted, folder, group_roni=True))
        if outcome.startswith("scanned"):
            recount(tally, folder / "outputs", document.rows)

    scan_one()


def recount(tally: Tally, out: Path, n_rows: int) -> None:
    """Count the rows of a completed scan again from its files, apart from the test's assertion."""
    accepted = pd.read_parquet(out / "accepted.parquet", columns=["row_number"])["row_number"].tolist()
    quarantined = pd.read_parquet(out / "quarantined.parquet", columns=["row_number"])["row_number"].tolist()
    both = accepted + quarantined
    tally.rows_in += n_rows
    tally.rows_accepted += len(accepted)
    tally.rows_quarantined += len(quarantined)
    tally.rows_lost += len(set(range(n_rows)) - set(both))
    tally.rows_duplicated += len(both) - len(set(both))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--read-cases", type=int, default=5000)
    parser.add_argument("--scan-cases", type=int, default=300)
    args = parser.parse_args()
    started = time.perf_counter()
    tallies = {name: Tally(name) for name in [*READ_SHARES, "scan"]}
    strategies = {"random bytes": fuzz.random_files(), "CSV": fuzz.csv_files(), "Parquet": fuzz.parquet_files()}
    with tempfile.TemporaryDirectory(prefix="poisonguard-fuzz-bench-") as name:
        folder = Path(name)
        for generator, share in READ_SHARES.items():
            run_reads(tallies[generator], strategies[generator], round(args.read_cases * share), folder)
        run_scans(tallies["scan"], args.scan_cases, folder)
    report = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "seed": SEED,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "generators": {name: tally.as_dict() for name, tally in tallies.items()},
    }
    reads = [tallies[name] for name in READ_SHARES]
    scan_rows = tallies["scan"]
    report["totals"] = {
        "read_cases": sum(sum(t.outcomes.values()) for t in reads),
        "scan_cases": sum(tallies["scan"].outcomes.values()),
        "failures": sum(n for t in tallies.values() for o, n in t.outcomes.items() if o.startswith("FAILED")),
        "completed_scans": sum(n for o, n in tallies["scan"].outcomes.items() if o.startswith("scanned")),
        "rows_scanned": scan_rows.rows_in,
        "rows_lost": scan_rows.rows_lost,
        "rows_duplicated": scan_rows.rows_duplicated,
    }
    RESULTS.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print_report(report)


def print_report(report: dict) -> None:
    print(f"poisonguard fuzzing, {report['date']}, {report['machine']}, seed {report['seed']}, {report['wall_seconds']} s")
    for name, tally in report["generators"].items():
        print(f"\n{name}: {tally['cases']:,} cases in {tally['seconds']} s (slowest {tally['slowest_case_seconds']} s)")
        for outcome, count in tally["outcomes"].items():
            print(f"  {count:6,}  {outcome}")
        if "rows" in tally:
            rows = tally["rows"]
            print(
                f"  rows: {rows['in']:,} in, {rows['accepted']:,} accepted, {rows['quarantined']:,} quarantined, "
                f"{rows['lost']} lost, {rows['duplicated']} duplicated"
            )
    totals = report["totals"]
    print(
        f"\nTotal: {totals['read_cases']:,} read cases, {totals['scan_cases']:,} scan cases "
        f"({totals['completed_scans']:,} completed, {totals['rows_scanned']:,} rows); "
        f"failures {totals['failures']}; rows lost {totals['rows_lost']}, duplicated {totals['rows_duplicated']}."
    )


if __name__ == "__main__":
    main()
