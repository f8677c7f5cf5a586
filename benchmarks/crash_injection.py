"""Crash injection: kill `poisonguard scan` with SIGKILL at every named crash point and at timed
moments spread over a scan's measured duration, run the scan again, and check that nothing was
lost, duplicated or left dangling.

Each scenario starts from a fresh workspace (its own MLflow database, ledger and Prefect state,
as on a new machine). The scan is killed one or more times, by a named point of
``pipeline/faults.py`` (``$POISONGUARD_FAULT_AT``: the process kills itself there) or by SIGKILL
from outside after a delay, then run again to completion. Then:

- every row of the batch is in exactly one of accepted/quarantined, in --out, in the workspace
  and in the ledger, with the decision an uninterrupted scan makes;
- the workspace holds one folder for the batch, the ledger one batch, and MLflow exactly one
  FINISHED run for it (the run summary.json and the ledger name, holding the artifacts and the
  file hashes the ledger recorded) and no RUNNING one;
- ``poisonguard verify`` exits 0, and the pre-retrain gate (``pipeline.gate``) passes;
- what each kill left behind (runs by status, staging folders, the committed folder, the ledger)
  and the processes it orphaned are recorded.

    .venv/bin/python benchmarks/crash_injection.py          # every point, 2 double kills, 6 timed: ~75 min, 2 cores
    .venv/bin/python benchmarks/crash_injection.py --points scan.committed,scan.decided --timed 0

Writes benchmarks/crash_injection.json and benchmarks/crash_injection.md (a table for RESULTS.md).
``tests/test_crash_recovery.py`` imports ``run_scan`` and ``recovery_check`` from here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's packages, not an installed copy
    sys.path.insert(0, str(REPO))

from pipeline.faults import CRASH_POINTS, FAULT_VARIABLE  # noqa: E402

SAMPLES = REPO / "data_samples"
POISONGUARD = Path(sys.executable).parent / "poisonguard"
DATASET = "crash"
# Batch 03 has rows both accepted and quarantined (by rules and by detectors), so a lost or
# misplaced row shows in either direction.
DEFAULT_BATCH = SAMPLES / "batch_03_impossible_and_outliers.csv"
TIMED_KILLS = 6
SCAN_TIMEOUT_S = 600
# Taken out of the scans' environment so that every scenario has only its own workspace's state.
_ISOLATED = (
    "PREFECT_API_URL",
    "PREFECT_HOME",
    "MLFLOW_TRACKING_URI",
    "POISONGUARD_DATABASE_URL",
    "POISONGUARD_WORKSPACE",
    FAULT_VARIABLE,
)
_RUN_ARTIFACTS = ("summary.json", "report.html", "scores.parquet")


@dataclass(frozen=True)
class ScanInputs:
    batch: Path
    reference: Path = SAMPLES / "reference.parquet"
    holdout: Path = SAMPLES / "holdout.parquet"
    suite: Path = REPO / "expectations" / "hmda.json"
    label: str = "deny"
    dataset: str = DATASET
    source: str = "crash-feed"

    def command(self, workspace: Path, out: Path) -> list[str]:
        return [
            str(POISONGUARD),
            "scan",
            str(self.batch),
            "--reference",
            str(self.reference),
            "--holdout",
            str(self.holdout),
            "--suite",
            str(self.suite),
            "--label",
            self.label,
            "--dataset",
            self.dataset,
            "--source",
            self.source,
            "--workspace",
            str(workspace),
            "--out",
            str(out),
        ]


@dataclass(frozen=True)
class Kill:
    """Where a scan dies: at a named crash point, or ``after_s`` seconds after it started."""

    point: str | None = None
    after_s: float | None = None

    def __post_init__(self) -> None:
        if (self.point is None) == (self.after_s is None):
            raise ValueError("A kill needs either a crash point or a delay.")
        if self.point is not None and self.point not in CRASH_POINTS:
            raise ValueError(f"Unknown crash point {self.point!r}; see pipeline.faults.CRASH_POINTS.")

    @property
    def label(self) -> str:
        return self.point if self.point is not None else f"SIGKILL after {self.after_s:.1f} s"


@dataclass(frozen=True)
class Scenario:
    name: str
    kills: tuple[Kill, ...]  # the scans killed one after the other before the one run to completion


@dataclass
class Attempt:
    kill: Kill | None
    returncode: int
    seconds: float
    orphans: list[str]  # processes the scan left running (killed by the harness)
    left_behind: dict[str, Any]  # state of the workspace and MLflow once the process was gone
    output_tail: str

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


@dataclass
class Recovery:
    problems: list[str] = field(default_factory=list)
    rows: int = 0
    rows_lost: int = 0
    rows_duplicated: int = 0
    staging_left: int = 0  # staging folders left by killed scans (never read; safe to delete)
    runs: dict[str, int] = field(default_factory=dict)  # the batch's MLflow runs by status

    @property
    def recovered(self) -> bool:
        return not self.problems


# --- running a scan ------------------------------------------------------------------------------


def scan_environment(workspace: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATED}
    env.update(
        {
            # The workspace's own MLflow database, so artifacts land in <workspace>/mlartifacts too.
            "MLFLOW_TRACKING_URI": f"sqlite:///{workspace.resolve() / 'mlflow.db'}",
            "POISONGUARD_USER": "crash-injection",
            # One thread per native library: the machine is shared, and a thread pool spinning against
            # other processes makes a scan's duration (which the timed kills are spread over) erratic.
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
    )
    return env


@dataclass
class RunningScan:
    """A ``poisonguard scan`` process started by ``start_scan``; ``finish`` waits for it."""

    inputs: ScanInputs
    workspace: Path
    kill: Kill | None
    process: subprocess.Popen
    log: Path
    started: float

    def finish(self, timeout_s: float = SCAN_TIMEOUT_S) -> Attempt:
        """Wait for the scan (or kill it after its delay); then end what it left running.

        Only the scan's own process is killed, as the OOM killer would; what it started and
        left running (Prefect's temporary API server) is found by the session id afterwards,
        recorded and ended, so that the next attempt starts clean."""
        timed = self.kill is not None and self.kill.after_s is not None
        remaining = self.started + self.kill.after_s - time.perf_counter() if timed else timeout_s
        try:
            self.process.wait(timeout=max(remaining, 0))
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        seconds = time.perf_counter() - self.started
        orphans = end_session(self.process.pid)
        tail = "\n".join(self.log.read_text(errors="replace").strip().splitlines()[-3:])
        return Attempt(
            self.kill, self.process.returncode, round(seconds, 1), orphans, left_behind(self.workspace, self.inputs), tail
        )


def start_scan(inputs: ScanInputs, workspace: Path, out: Path, kill: Kill | None = None) -> RunningScan:
    """Start ``poisonguard scan`` in a session of its own, to be killed as ``kill`` says."""
    env = scan_environment(workspace)
    if kill is not None and kill.point is not None:
        env[FAULT_VARIABLE] = kill.point
    workspace.parent.mkdir(parents=True, exist_ok=True)
    # Output goes to a file, not a pipe: an orphaned child would hold a pipe open, and reading
    # it to its end would wait for the orphan.
    log = workspace.parent / f"scan-{time.time_ns()}.log"
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(
            inputs.command(workspace, out),
            env=env,
            stdout=output,
            stderr=output,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=REPO,
        )
    return RunningScan(inputs, workspace, kill, process, log, started)


def run_scan(
    inputs: ScanInputs, workspace: Path, out: Path, kill: Kill | None = None, timeout_s: float = SCAN_TIMEOUT_S
) -> Attempt:
    """Run ``poisonguard scan`` to its end, or to its death as ``kill`` says."""
    return start_scan(inputs, workspace, out, kill).finish(timeout_s)


def session_members(session_id: int) -> dict[int, str]:
    """Live processes of a session (Linux /proc), with their command lines."""
    members = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
            if int(fields[3]) == session_id and fields[0] != "Z":
                members[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return members


def end_session(session_id: int, grace_s: float = 5.0) -> list[str]:
    """End what a scan left running in its session; returns their command lines."""
    members = session_members(session_id)
    for pid in members:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and set(session_members(session_id)) & set(members):
        time.sleep(0.1)
    for pid in set(session_members(session_id)) & set(members):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return [_short_command(c) for c in members.values()]


def _short_command(command: str) -> str:
    if "prefect.server.api.server:create_app" in command:
        return "Prefect temporary API server (uvicorn)"
    return command[:120]


# --- what a kill left behind ---------------------------------------------------------------------


def _read_only(database: Path, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]] | None:
    """Rows from a SQLite file opened read-only: looking must not create or repair anything
    the next scan would otherwise find broken."""
    if not database.is_file():
        return None
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
        try:
            return connection.execute(query, params).fetchall()
        finally:
            connection.close()
    except sqlite3.Error:
        return None  # tables not created yet


def left_behind(workspace: Path, inputs: ScanInputs) -> dict[str, Any]:
    sha256 = _sha256(inputs.batch)
    runs = _read_only(
        workspace / "mlflow.db",
        "SELECT status, count(*) FROM runs WHERE run_uuid IN "
        "(SELECT run_uuid FROM tags WHERE key = 'batch_sha256' AND value = ?) GROUP BY status",
        (sha256,),
    )
    in_ledger = _read_only(workspace / "ledger.sqlite", "SELECT count(*) FROM batches WHERE sha256 = ?", (sha256,))
    staging = workspace / "staging"
    return {
        "runs": dict(runs or []),
        "staging": len([p for p in staging.glob("*/*") if p.is_dir()]),
        "committed": (workspace / "datasets" / inputs.dataset / "batches" / sha256 / "summary.json").is_file(),
        "in_ledger": bool(in_ledger and in_ledger[0][0]),
    }


def describe(state: dict[str, Any]) -> str:
    runs = ", ".join(f"{n} {status}" for status, n in sorted(state["runs"].items())) or "no run"
    parts = [f"run: {runs}"]
    if state["staging"]:
        parts.append(f"{state['staging']} staging")
    parts.append("committed" if state["committed"] else "not committed")
    parts.append("in ledger" if state["in_ledger"] else "not in ledger")
    return "; ".join(parts)


# --- checking the recovery -----------------------------------------------------------------------


def recovery_check(
    inputs: ScanInputs,
    workspace: Path,
    out: Path,
    expected_quarantined: set[int] | None = None,
    run_verify_cli: bool = True,
    gate_out: Path | None = None,
) -> Recovery:
    """Everything the final (uninterrupted) scan must have left, as a list of problems."""
    import pandas as pd

    from pipeline import gate, provenance
    from pipeline.config import Settings
    from pipeline.errors import GateRefused, PoisonguardError
    from pipeline.ledger import Ledger, RowStatus

    result = Recovery()
    problems = result.problems
    env = scan_environment(workspace)
    settings = Settings.from_environment(workspace, env)
    sha256 = _sha256(inputs.batch)
    n_rows = len(pd.read_parquet(inputs.batch) if inputs.batch.suffix == ".parquet" else pd.read_csv(inputs.batch))
    result.rows = n_rows
    everything = set(range(n_rows))

    # the batch folders: exactly one, complete
    batches_dir = workspace / "datasets" / inputs.dataset / "batches"
    folders = sorted(p.name for p in batches_dir.iterdir()) if batches_dir.is_dir() else []
    if folders != [sha256]:
        problems.append(f"workspace batch folders {folders}, expected only {sha256[:12]}")
    folder = batches_dir / sha256
    staging = workspace / "staging"
    result.staging_left = len(list(staging.glob("*/*")))

    placements: dict[str, tuple[list[int], list[int]]] = {}  # where → (accepted, quarantined) row numbers
    summary: dict[str, Any] = {}
    for where, path in (("--out", out), ("workspace", folder)):
        try:
            accepted = pd.read_parquet(path / "accepted.parquet", columns=["row_number"])["row_number"]
            quarantined = pd.read_parquet(path / "quarantined.parquet", columns=["row_number"])["row_number"]
            summary = json.loads((path / "summary.json").read_text()) if where == "--out" else summary
        except (OSError, ValueError, KeyError) as exc:
            problems.append(f"{where}: outputs unreadable ({type(exc).__name__}: {exc})")
            continue
        placements[where] = (sorted(map(int, accepted)), sorted(map(int, quarantined)))

    recorded: Any = None
    try:
        with Ledger.open(settings.database_url.get_secret_value()) as ledger:
            chain = ledger.verify()
            problems.extend(f"ledger: {p}" for p in chain)
            recorded = ledger.list_batches(inputs.dataset)
            rows = ledger.list_rows(dataset=inputs.dataset)
    except PoisonguardError as exc:
        problems.append(f"ledger unreadable: {exc}")
        rows = []
    if recorded is not None and [b.sha256 for b in recorded] != [sha256]:
        problems.append(f"ledger holds {len(recorded)} batch(es) for the dataset, expected exactly this one")
    placements["ledger"] = (
        sorted(r.row_number for r in rows if r.initial_status == RowStatus.ACCEPTED),
        sorted(r.row_number for r in rows if r.initial_status == RowStatus.PENDING),
    )

    for where, (accepted, quarantined) in placements.items():
        both = accepted + quarantined
        lost = everything - set(both)
        duplicated = len(both) - len(set(both))
        result.rows_lost = max(result.rows_lost, len(lost))
        result.rows_duplicated = max(result.rows_duplicated, duplicated)
        if lost or duplicated or set(both) != everything:
            problems.append(f"{where}: {len(lost)} row(s) in neither accepted nor quarantined, {duplicated} counted twice")
    reference = placements.get("workspace")
    for where, placed in placements.items():
        if reference is not None and placed != reference:
            problems.append(f"{where} places rows differently from the workspace's committed folder")
    if expected_quarantined is not None and reference is not None and set(reference[1]) != expected_quarantined:
        differing = sorted(set(reference[1]) ^ expected_quarantined)
        problems.append(f"decisions differ from an uninterrupted scan's on rows {differing[:10]}")

    # MLflow: one FINISHED run, the one the outputs and the ledger name; none left RUNNING
    runs = provenance.find_scan_runs(settings.tracking_uri, sha256, inputs.dataset)
    for run in runs:
        result.runs[run.info.status] = result.runs.get(run.info.status, 0) + 1
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if len(finished) != 1 or result.runs.get("RUNNING"):
        problems.append(f"MLflow runs for the batch: {result.runs or 'none'}; expected exactly one FINISHED, none RUNNING")
    if finished:
        run = finished[0]
        named = {summary.get("mlflow", {}).get("run_id")} | {b.mlflow_run_id for b in recorded or []}
        if named != {run.info.run_id}:
            problems.append(
                f"the FINISHED run {run.info.run_id} is not the one summary.json and the ledger name "
                f"({sorted(map(str, named))})"
            )
        from mlflow.tracking import MlflowClient

        artifacts = {a.path for a in MlflowClient(settings.tracking_uri).list_artifacts(run.info.run_id)}
        if not set(_RUN_ARTIFACTS) <= artifacts:
            problems.append(f"the FINISHED run lacks artifacts {sorted(set(_RUN_ARTIFACTS) - artifacts)}")
        tagged = {
            k[len(provenance.FILE_TAG_PREFIX) :]: v
            for k, v in run.data.tags.items()
            if k.startswith(provenance.FILE_TAG_PREFIX)
        }
        if recorded and tagged != (recorded[0].files or {}):
            problems.append("the FINISHED run's file_sha256 tags differ from the files the ledger recorded")

    if run_verify_cli:
        verify = subprocess.run(
            [str(POISONGUARD), "verify", "--workspace", str(workspace)],
            env=env,
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        if verify.returncode != 0:
            problems.append(f"poisonguard verify exited {verify.returncode}: {verify.stderr.strip()[:300]}")
    try:
        gate(
            inputs.dataset,
            out=gate_out or workspace.parent / "gate",
            settings=settings,
            max_pending=n_rows,
            review_poisoned=False,
        )  # recovery, not review, is under test
    except (GateRefused, PoisonguardError) as exc:
        problems.append(f"the gate refused: {str(exc).splitlines()[0][:300]}")
    return result


def _sha256(path: Path) -> str:
    from pipeline.io import sha256_file

    return sha256_file(path)


# --- the scenarios -------------------------------------------------------------------------------


def named_scenarios(points: list[str]) -> list[Scenario]:
    scenarios = []
    for point in points:
        if point.startswith("redeliver."):  # reached only by a rerun after a kill between commit and ledger
            scenarios.append(Scenario(point, (Kill("scan.committed"), Kill(point))))
        else:
            scenarios.append(Scenario(point, (Kill(point),)))
    return scenarios


def repeated_scenarios() -> list[Scenario]:
    """Killed again while recovering: two abandoned runs, or an abandoned run with results."""
    return [
        Scenario(
            "twice: scan.run_started, then scan.detectors_fitted", (Kill("scan.run_started"), Kill("scan.detectors_fitted"))
        ),
        Scenario("twice: scan.results_logged, then scan.committed", (Kill("scan.results_logged"), Kill("scan.committed"))),
    ]


def timed_scenarios(duration_s: float, count: int) -> list[Scenario]:
    """Kills spread evenly over an uninterrupted scan's duration (the middle of each of
    ``count`` equal slices), to land where no named point is: inside MLflow, Prefect, SQLite."""
    fractions = [(i + 0.5) / count for i in range(count)]
    return [Scenario(f"timed {100 * f:.0f} %", (Kill(after_s=round(duration_s * f, 1)),)) for f in fractions]


def run_scenario(
    inputs: ScanInputs, scenario: Scenario, root: Path, expected_quarantined: set[int] | None
) -> dict[str, Any]:
    workspace, out = root / "ws", root / "out"
    attempts = [run_scan(inputs, workspace, out, kill) for kill in scenario.kills]
    final = run_scan(inputs, workspace, out)
    problems = []
    for attempt in attempts:
        if attempt.kill is not None and attempt.kill.point is not None and not attempt.killed:
            problems.append(f"{attempt.kill.point} was never reached (exit {attempt.returncode}: {attempt.output_tail})")
    if final.returncode != 0:
        problems.append(f"the rerun exited {final.returncode}: {final.output_tail}")
        recovery = Recovery(problems=["not checked: the rerun failed"])
    else:
        recovery = recovery_check(inputs, workspace, out, expected_quarantined, gate_out=root / "gate")
    return {
        "scenario": scenario.name,
        "attempts": [
            {
                "kill": a.kill.label if a.kill else None,
                "killed": a.killed,
                "exit": a.returncode,
                "seconds": a.seconds,
                "left_behind": a.left_behind,
                "orphans": a.orphans,
            }
            for a in attempts
        ],
        "rerun": {
            "exit": final.returncode,
            "seconds": final.seconds,
            "orphans": final.orphans,
            "duplicate": _was_redelivered(out),
        },
        "recovered": recovery.recovered and not problems,
        "problems": problems + recovery.problems,
        "rows": recovery.rows,
        "rows_lost": recovery.rows_lost,
        "rows_duplicated": recovery.rows_duplicated,
        "staging_left": recovery.staging_left,
        "runs": recovery.runs,
        "orphans": sum(len(a.orphans) for a in attempts) + len(final.orphans),
    }


def _was_redelivered(out: Path) -> bool:
    try:
        return bool(json.loads((out / "summary.json").read_text()).get("duplicate"))
    except (OSError, ValueError):
        return False


# --- the report ----------------------------------------------------------------------------------


def markdown(record: dict[str, Any]) -> str:
    totals = record["totals"]
    cut_short = "" if totals["scenarios"] == totals["planned"] else f" (of {totals['planned']} planned)"
    lines = [
        f"Crash injection (`benchmarks/crash_injection.py`, {record['date']}, {record['machine']}): "
        f"`poisonguard scan` of {record['batch']} ({record['rows']} rows), SIGKILLed in "
        f"{totals['scenarios']} scenarios{cut_short} ({totals['kills']} kills: {totals['named_points']} named "
        "crash points "
        f"of `pipeline/faults.py`, {totals['timed']} at timed moments over the {record['calibration_s']} s an "
        "uninterrupted scan takes), each in a fresh workspace, then run again to completion.",
        "",
        f"**Recovered: {totals['recovered']}/{totals['scenarios']}. Rows lost: {totals['rows_lost']}. "
        f"Rows duplicated: {totals['rows_duplicated']}. Processes orphaned by the kills: {totals['orphans']}.**",
        "",
        "| # | killed at | left behind | rerun | recovered | rows lost | MLflow runs after | staging left "
        "| orphans | problems |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(record["scenarios"], 1):
        killed = "; then ".join(f"{a['kill']}" + ("" if a["killed"] else " (not killed)") for a in s["attempts"])
        behind = describe(s["attempts"][-1]["left_behind"])
        rerun = "redelivered" if s["rerun"]["duplicate"] else "full scan"
        runs = ", ".join(f"{n} {k}" for k, n in sorted(s["runs"].items())) or "none"
        problems = "; ".join(s["problems"]).replace("|", "\\|") or "–"
        lines.append(
            f"| {i} | {killed} | {behind} | {rerun} ({s['rerun']['seconds']} s) | "
            f"{'yes' if s['recovered'] else '**no**'} | {s['rows_lost']} | {runs} | {s['staging_left']} | "
            f"{s['orphans']} | {problems} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=Path, default=DEFAULT_BATCH)
    parser.add_argument(
        "--points",
        default=",".join(CRASH_POINTS),
        help="comma-separated crash points (default: all of pipeline.faults.CRASH_POINTS)",
    )
    parser.add_argument("--timed", type=int, default=TIMED_KILLS, help=f"kills at timed moments (default {TIMED_KILLS})")
    parser.add_argument("--no-repeated", action="store_true", help="skip the scenarios killed twice")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "crash_injection.json")
    parser.add_argument("--markdown", type=Path, default=REPO / "benchmarks" / "crash_injection.md")
    parser.add_argument("--keep", action="store_true", help="keep every scenario's workspace, not only failed ones")
    args = parser.parse_args(argv)
    points = [p.strip() for p in args.points.split(",") if p.strip()]
    for point in points:
        Kill(point)  # an unknown name fails here, before any scan runs
    inputs = ScanInputs(batch=args.batch.resolve())
    root = Path(tempfile.mkdtemp(prefix="poisonguard-crash-"))
    print(f"workspaces under {root}", flush=True)

    calibration = run_scan(inputs, root / "calibration" / "ws", root / "calibration" / "out")
    if calibration.returncode != 0:
        print(f"the uninterrupted scan failed: {calibration.output_tail}", file=sys.stderr)
        return 1
    baseline = recovery_check(
        inputs, root / "calibration" / "ws", root / "calibration" / "out", gate_out=root / "calibration" / "gate"
    )
    if not baseline.recovered:
        print(f"the uninterrupted scan is not consistent itself: {baseline.problems}", file=sys.stderr)
        return 1
    import pandas as pd

    expected = set(map(int, pd.read_parquet(root / "calibration" / "out" / "quarantined.parquet")["row_number"]))
    print(f"uninterrupted scan: {calibration.seconds} s, {len(expected)} of {baseline.rows} rows quarantined", flush=True)

    # Timed kills first, while the machine's load is the one the calibration ran under.
    scenarios = (
        timed_scenarios(calibration.seconds, args.timed)
        + named_scenarios(points)
        + ([] if args.no_repeated else repeated_scenarios())
    )
    results: list[dict[str, Any]] = []
    for i, scenario in enumerate(scenarios, 1):
        folder = root / f"{i:02d}"
        result = run_scenario(inputs, scenario, folder, expected)
        results.append(result)
        print(
            f"[{i}/{len(scenarios)}] {scenario.name}: {'recovered' if result['recovered'] else 'FAILED'} "
            f"(left behind: {describe(result['attempts'][-1]['left_behind'])}; "
            f"orphans {result['orphans']}) {'; '.join(result['problems'])}",
            flush=True,
        )
        if result["recovered"] and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        # written after every scenario, so that a run cut short still leaves its results
        record = results_record(inputs, baseline.rows, calibration.seconds, results, len(scenarios))
        args.json.write_text(json.dumps(record, indent=2, default=str) + "\n")
        args.markdown.write_text(markdown(record))
    print(markdown(record))
    if record["totals"]["recovered"] == len(results) and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if record["totals"]["recovered"] == len(results) else 1


def results_record(
    inputs: ScanInputs, rows: int, calibration_s: float, results: list[dict[str, Any]], planned: int
) -> dict[str, Any]:
    kills = [a for r in results for a in r["attempts"]]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "batch": inputs.batch.name,
        "rows": rows,
        "calibration_s": calibration_s,
        "scenarios": results,
        "totals": {
            "scenarios": len(results),
            "planned": planned,
            "kills": len(kills),
            "named_points": len({a["kill"] for a in kills if not a["kill"].startswith("SIGKILL")}),
            "timed": sum(1 for a in kills if a["kill"].startswith("SIGKILL")),
            "kills_landed": sum(1 for a in kills if a["killed"]),
            "recovered": sum(1 for r in results if r["recovered"]),
            "rows_lost": sum(r["rows_lost"] for r in results),
            "rows_duplicated": sum(r["rows_duplicated"] for r in results),
            "orphans": sum(r["orphans"] for r in results),
        },
        "crash_points": CRASH_POINTS,
    }


if __name__ == "__main__":
    sys.exit(main())
