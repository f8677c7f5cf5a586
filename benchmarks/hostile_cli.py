"""Every command against hostile inputs: does the command line keep its word?

The matrix (``hostile_runs``) is one session a steward could live through with a hostile data
provider: bad files and names that must be refused in one line (exit 2); output folders that
would overwrite inputs or the workspace (exit 2, before any work); a batch whose cells, file name
and source hold terminal escape sequences, whose rows carry the dataset's own ``batch_id`` column
and ten-digit ids, scanned (exit 0), reviewed with hostile ``--by``/``--reason`` (exit 0), shown,
released into a snapshot by the gate (exit 0); then the ledger edited by hand, and ``verify`` and
the gate refusing (exit 3). For each run it checks the documented exit code, that no traceback and
no raw control character reaches the terminal, that a failure says so in one line, and that no
input file changed (sha256 before and after).

    .venv/bin/python benchmarks/hostile_cli.py          # runs the matrix through the installed CLI
    PYTHONPATH=/tmp/old .venv/bin/python benchmarks/hostile_cli.py --results /tmp/before.json
                                                        # the same against another checkout's code

Writes benchmarks/hostile_cli.json (counts, machine, date) and prints the same.
tests/test_hostile_cli.py runs the same matrix in-process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"
RESULTS = REPO / "benchmarks" / "hostile_cli.json"
DATASET = "hostile"
# What a data provider would put in a cell or a name: clear the screen, home the cursor, set the
# window title, colour, a right-to-left override.
ESCAPES = "\x1b[2J\x1b[H\x1b]0;all rows checked\x07"
HOSTILE_CELL = f"{ESCAPES}no"
HOSTILE_NAME = f"batch{ESCAPES}\u202e.csv"
HOSTILE_BY = "\x1b[31mmallory\x1b[0m"
HOSTILE_REASON = "\x1b[1A\x1b[2Kreleased after checking\rfine"
USER_BATCH_ID = "partner-7"
FIRST_ID = 9_876_543_210  # ten-digit ids: rounded to 6 significant digits, their range collapsed
HELD_ROWS = (0, 1)  # the rows of the batch given a hostile cell (out of the trusted domain: held)


@dataclass(frozen=True)
class Run:
    """One command line and what the README promises for it."""

    title: str
    args: tuple
    code: int
    then: Callable[[Path], None] | None = None  # a change made before the run (an edit by hand)


@dataclass
class Outcome:
    title: str
    code: int
    expected: int
    stdout: str
    stderr: str
    seconds: float
    modified: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        found = []
        text = self.stdout + self.stderr
        if self.code != self.expected:
            found.append(f"exit {self.code}, documented {self.expected}")
        if "Traceback" in text or "internal error" in text:
            found.append("traceback or internal error")
        if any(ch in text for ch in "\x1b\x07\u202e\r"):
            found.append("raw control character printed")
        if (
            self.code != 0
            and (len(self.stderr.strip().splitlines()) != 1 or not self.stderr.startswith("poisonguard: "))
            and not (self.expected == 3 and self.stderr.startswith("poisonguard: "))
        ):  # refusals list problems
            found.append("not one line on stderr")
        if self.modified:
            found.append(f"input modified: {', '.join(self.modified)}")
        return found


# --- the hostile inputs ------------------------------------------------------------------------


def write_inputs(folder: Path) -> dict[str, Path]:
    """The tables and files of the matrix, in ``folder``; returns them by role."""
    folder.mkdir(parents=True, exist_ok=True)
    reference = pd.read_parquet(SAMPLES / "reference.parquet")
    reference = reference.assign(batch_id=USER_BATCH_ID, loan_id=FIRST_ID + pd.RangeIndex(len(reference)))
    batch = pd.read_csv(SAMPLES / "batch_01_clean.csv")
    batch = batch.assign(batch_id=USER_BATCH_ID, loan_id=FIRST_ID + len(reference) + pd.RangeIndex(len(batch)))
    batch.loc[list(HELD_ROWS), "phist"] = HOSTILE_CELL
    paths = {"reference": folder / "reference.parquet", "batch": folder / HOSTILE_NAME}
    reference.to_parquet(paths["reference"], index=False)
    batch.to_csv(paths["batch"], index=False)

    small = pd.DataFrame({"deny": ["no", "yes"], "pirat": [0.2, 0.3]})
    files = {
        "empty.csv": b"",
        "binary.csv": bytes(range(256)) * 8,
        "utf16.csv": "deny,pirat\nno,0.2\n".encode("utf-16"),
        "header_only.csv": b"deny,pirat\n",
        "duplicated.csv": b"deny,deny\nno,yes\n",
        "semicolon.csv": b"deny;pirat\nno;0.2\n",
        "escape_in_name.csv": f"deny,pi{ESCAPES}rat\nno,0.2\n".encode(),
        "reserved_row_number.csv": b"deny,row_number\nno,1\n",
        "reserved_batch_column.csv": b"deny,poisonguard_batch_id\nno,x\n",
        "truncated.parquet": (SAMPLES / "reference.parquet").read_bytes()[:500],
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths[name] = folder / name
    paths["pandas_index.parquet"] = folder / "pandas_index.parquet"
    small.set_axis([5, 9]).to_parquet(paths["pandas_index.parquet"])  # stores '__index_level_0__'
    paths["nested.parquet"] = folder / "nested.parquet"
    pq.write_table(pa.table({"deny": ["no", "yes"], "pirat": pa.array([[1.0], [2.0]])}), paths["nested.parquet"])
    paths["a_file"] = folder / "notes.txt"
    paths["a_file"].write_text("a file, not a folder")
    return paths


def hostile_runs(root: Path) -> tuple[list[Run], dict[str, Path]]:
    """The matrix, in order (later runs use the workspace earlier ones filled), and its inputs."""
    inputs = write_inputs(root / "in")
    ws, out = root / "ws", root / "out"
    workspace = ("--workspace", ws)
    reference, batch = inputs["reference"], inputs["batch"]
    batch_id = hashlib.sha256(batch.read_bytes()).hexdigest()[:12]
    rows = [f"{batch_id}:{n}" for n in HELD_ROWS]

    def scan(table: Path, out_dir: Path, *extra) -> tuple:
        return (
            "scan",
            table,
            "--reference",
            reference,
            "--label",
            "deny",
            "--dataset",
            DATASET,
            "--out",
            out_dir,
            *workspace,
            *extra,
        )

    runs = []
    bad = [name for name in inputs if name not in ("reference", "batch", "a_file")]
    for name in bad:  # refused by profile (as a reference) and by scan (as a batch): one line, exit 2
        runs.append(
            Run(
                f"profile {name}", ("profile", inputs[name], "--label", "deny", "--out", root / "suites" / f"{name}.json"), 2
            )
        )
        runs.append(Run(f"scan {name}", scan(inputs[name], out / name), 2))
    runs += [
        Run("scan --out the inputs' folder", scan(batch, root / "in"), 2),
        Run("scan --out inside the workspace", scan(batch, ws / "datasets"), 2),
        Run("scan --out a file", scan(batch, inputs["a_file"]), 2),
        Run(
            "scan --workspace a file",
            (
                "scan",
                batch,
                "--reference",
                reference,
                "--label",
                "deny",
                "--out",
                out / "x",
                "--workspace",
                inputs["a_file"],
            ),
            2,
        ),
        Run(
            "profile the hostile reference",
            ("profile", reference, "--label", "deny", "--out", root / "suites" / "hostile.json"),
            0,
        ),
        Run("scan the hostile batch", scan(batch, out / "scan", "--source", f"feed{ESCAPES}"), 0),
        Run("review list", ("review", "list", "--dataset", DATASET, *workspace), 0),
        Run("review list json", ("review", "list", "--format", "json", *workspace), 0),
        Run("review show batch", ("review", "show", batch_id, *workspace), 0),
        Run("review show hostile row", ("review", "show", rows[0], *workspace), 0),
        Run(
            "review release, hostile --by/--reason",
            ("review", "release", rows[0], "--by", HOSTILE_BY, "--reason", HOSTILE_REASON, *workspace),
            0,
        ),
        Run("review show released row", ("review", "show", rows[0], *workspace), 0),
        Run(
            "review reject hostile id",
            ("review", "reject", f"{batch_id}:{ESCAPES}", "--by", "a", "--reason", "b", *workspace),
            2,
        ),
        Run("review reject, empty --reason", ("review", "reject", rows[1], "--by", "a", "--reason", " ", *workspace), 2),
        Run("verify", ("verify", *workspace), 0),
        Run(
            "gate --out inside the workspace",
            ("gate", "--dataset", DATASET, "--out", ws / "snap", *workspace, "--max-pending", "1000"),
            2,
        ),
        Run("gate", ("gate", "--dataset", DATASET, "--out", out / "gate", *workspace, "--max-pending", "1000"), 0),
        Run(
            "gate --drop-provenance",
            (
                "gate",
                "--dataset",
                DATASET,
                "--out",
                out / "gate-bare",
                *workspace,
                "--max-pending",
                "1000",
                "--drop-provenance",
            ),
            0,
        ),
        Run("verify after an edit by hand", ("verify", *workspace), 3, then=lambda _: edit_ledger(ws, batch_id)),
        Run(
            "gate after an edit by hand",
            ("gate", "--dataset", DATASET, "--out", out / "gate-refused", *workspace, "--max-pending", "1000"),
            3,
        ),
        # last: where it is not refused, it replaces the reference every run above needs
        Run("profile --out its reference", ("profile", reference, "--label", "deny", "--out", reference), 2),
    ]
    return runs, inputs


def edit_ledger(workspace: Path, batch_id: str) -> None:
    """As someone with a database client would."""
    with sqlite3.connect(workspace / "ledger.sqlite") as db:
        db.execute("UPDATE batches SET submitter = 'trusted-team' WHERE id = ?", (batch_id,))


def digests(inputs: dict[str, Path]) -> dict[str, str]:
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in inputs.items()}


def run_matrix(root: Path, runner: Callable[[tuple], tuple[int, str, str]]) -> list[Outcome]:
    """Run every command of the matrix with ``runner`` (args -> exit code, stdout, stderr)."""
    runs, inputs = hostile_runs(root)
    outcomes = []
    for run in runs:
        if run.then is not None:
            run.then(root)
        before = digests(inputs)
        started = time.perf_counter()
        code, stdout, stderr = runner(run.args)
        after = digests(inputs)
        outcomes.append(
            Outcome(
                run.title,
                code,
                run.code,
                stdout,
                stderr,
                time.perf_counter() - started,
                sorted(name for name in inputs if before[name] != after[name]),
            )
        )
    return outcomes


def subprocess_runner(args: tuple) -> tuple[int, str, str]:
    command = [str(REPO / ".venv" / "bin" / "poisonguard"), *map(str, args)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        errors="surrogateescape",
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=900,
    )
    return done.returncode, done.stdout, done.stderr


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="Where to write the counts.")
    results = parser.parse_args().results
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="poisonguard-hostile-") as name:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path(name) / 'mlflow.db'}")
        outcomes = run_matrix(Path(name), subprocess_runner)
    failed = {o.title: o.problems for o in outcomes if o.problems}
    result = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "code": os.environ.get("PYTHONPATH") or "this checkout",
        "wall_seconds": round(time.perf_counter() - started, 1),
        "runs": len(outcomes),
        "exit_codes": {str(code): sum(o.expected == code for o in outcomes) for code in (0, 2, 3)},
        "exit_code_as_documented": sum(o.code == o.expected for o in outcomes),
        "tracebacks": sum("Traceback" in o.stdout + o.stderr or "internal error" in o.stderr for o in outcomes),
        "raw_control_characters_printed": sum(any(ch in o.stdout + o.stderr for ch in "\x1b\x07\u202e\r") for o in outcomes),
        "inputs_modified": sum(bool(o.modified) for o in outcomes),
        "runs_with_a_problem": len(failed),
        "problems": failed,
        "slowest_run_seconds": round(max(o.seconds for o in outcomes), 1),
    }
    results.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
