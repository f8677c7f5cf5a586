"""Scheduled ingestion from a landing folder: every file is ingested exactly once and none is lost.

One module-scoped landing area carries the costly part, which is real scans through the CLI's
``ingest-landing`` and its Prefect flow. Before the first pass, a worker process claims
batch 05 and is killed with SIGKILL mid-scan. The first pass resumes that claim and scans
batches 01 and 04. The ledger database is made unreachable once, just after batch 01's
workspace commit, so its scan is retried. The pass also finds a copy of batch 01 under a new
name (already recorded), a garbage file (failed/), and files it must leave alone. The second
pass finds batch 01 and 04 dropped again, and a claim abandoned after its scan had committed.

The pass's own logic (concurrent passes, released and abandoned claims, settling, remote
filesystems) is tested on ``pipeline.landing.run_pass`` with a stand-in scan, in milliseconds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.landing import (
    ClaimId,
    ConfigError,
    LandedFile,
    Landing,
    Outcome,
    PassReport,
    PassRules,
    artifact_key,
    load_config,
    prepare_landing,
    run_pass,
    this_host,
)
from tests.conftest import REPO, SAMPLES, SUITE

DATASET = "landing-test"
FIRST = ("batch_05_clean.parquet", "batch_01_clean.csv", "batch_04_extra_column.csv")
ROWS = {"batch_01_clean.csv": 140, "batch_04_extra_column.csv": 120, "batch_05_clean.parquet": 40}
GARBAGE = bytes(range(256)) * 8  # NUL bytes: not CSV text
CONFIG = """\
workspace = "ws"

[datasets.{dataset}]
reference = "{samples}/reference.parquet"
label = "deny"
suite = "{suite}"
holdout = "{samples}/holdout.parquet"
source = "partner-l"
landing = "landing"
out = "out"
interval_seconds = 60
settle_seconds = 0
retries = 2
retry_delay_seconds = 0.05
"""
# A worker that claims the first new file and then hangs in its scan until it is killed.
HANGING_WORKER = """
import sys, time
from pathlib import Path
from pipeline.landing import Landing, PassRules, run_pass

def scan_until_killed(batch, out):
    Path(sys.argv[2]).write_text(str(batch))
    time.sleep(600)

run_pass(Landing(sys.argv[1]), PassRules(settle_seconds=0), scan=scan_until_killed, recorded=lambda sha256: None,
         out=Path(sys.argv[3]), work_dir=Path(sys.argv[3]))
"""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def batch_files(folder: Path) -> list[Path]:
    """Landed batch files under ``folder``: everything but sidecars and bookkeeping."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".csv", ".parquet"))


def state_files(landing: Path, state: str) -> dict[str, Path]:
    return {p.name: p for p in batch_files(landing / ".poisonguard" / state)}


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def stale_claim(
    landing: Path, name: str, content: bytes, attempt: int = 1, pid: int | None = None, error: str | None = None
) -> Path:
    """A claim as a dead worker leaves it in inflight/."""
    claim_id = ClaimId(
        dt.datetime.now(dt.UTC).replace(microsecond=0), attempt, dead_pid() if pid is None else pid, "0badc0de", this_host()
    )
    folder = landing / ".poisonguard" / "inflight" / str(claim_id)
    folder.mkdir(parents=True)
    (folder / name).write_bytes(content)
    if error is not None:
        (folder / f"{name}.error.txt").write_text(error)
    return folder / name


@dataclass
class CliRun:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def errors(self) -> list[str]:
        """Our lines on stderr. Under pytest, library DeprecationWarnings that Prefect logs land there too."""
        return [line for line in self.stderr.splitlines() if line.startswith("poisonguard:") or "Traceback" in line]


def run_cli(*args: str | os.PathLike) -> CliRun:
    """``poisonguard ARGS`` through the real entry point, in this process (module-scoped use)."""
    from pipeline.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["poisonguard", *map(str, args)]
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return CliRun(code, stdout.getvalue(), stderr.getvalue())


@dataclass
class Landed:
    root: Path
    landing: Path
    shas: dict[str, str]  # sample name -> sha256
    killed_claim: Path  # where the killed worker's claim was
    killed_pid: int
    ledger_failures: list[str]  # batch folders whose ledger write was made to fail
    first: CliRun
    first_processed: dict[str, Path]
    first_failed: dict[str, Path]
    second: CliRun

    @property
    def workspace(self) -> Path:
        return self.root / "ws"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def results(self, which_pass: int) -> dict[str, dict[str, Any]]:
        """File name -> its result.json, for the files one pass processed (a name can land twice)."""
        first = list(self.first_processed.values())
        paths = (
            first
            if which_pass == 1
            else [p for p in batch_files(self.landing / ".poisonguard" / "processed") if p not in first]
        )
        return {p.name: json.loads(p.with_name(p.name + ".result.json").read_text()) for p in paths}


@pytest.fixture(scope="module")
def landed(tmp_path_factory) -> Landed:
    from threadpoolctl import threadpool_limits

    import pipeline.scan_run

    root = tmp_path_factory.mktemp("landing")
    landing = root / "landing"
    landing.mkdir()
    config = root / "poisonguard.toml"
    config.write_text(CONFIG.format(dataset=DATASET, samples=SAMPLES, suite=SUITE))
    shas = {name: sha256_of(SAMPLES / name) for name in ROWS}

    # A worker claims batch 05 (the only file yet) and is killed while scanning it.
    shutil.copyfile(SAMPLES / "batch_05_clean.parquet", landing / "batch_05_clean.parquet")
    marker = root / "claimed"
    worker = subprocess.Popen(
        [sys.executable, "-c", HANGING_WORKER, str(landing), str(marker), str(root / "work")], cwd=REPO
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert worker.poll() is None and time.monotonic() < deadline, "the worker never claimed the file"
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    killed_claim = Path(marker.read_text())

    for name in ("batch_01_clean.csv", "batch_04_extra_column.csv"):
        shutil.copyfile(SAMPLES / name, landing / name)
    shutil.copyfile(SAMPLES / "batch_01_clean.csv", landing / "batch_01_copy.csv")  # same bytes, new name
    (landing / "garbage.csv").write_bytes(GARBAGE)
    (landing / "notes.txt").write_text("not a batch")
    (landing / ".upload-in-progress.csv").write_text("deny,pirat\n")

    # The ledger database is unreachable once, right after batch 01's workspace commit.
    original_record = pipeline.scan_run.record_in_ledger
    ledger_failures: list[str] = []

    def ledger_unreachable_once(settings, folder, files=None):
        if folder.name == shas["batch_01_clean.csv"] and not ledger_failures:
            ledger_failures.append(str(folder))
            raise ConnectionError("could not connect to the ledger database (injected)")
        return original_record(settings, folder, files)

    # One OpenMP thread: on 2 shared cores gradient boosting would otherwise fight other processes.
    with pytest.MonkeyPatch.context() as patch, threadpool_limits(limits=1):
        patch.setattr(pipeline.scan_run, "record_in_ledger", ledger_unreachable_once)
        first = run_cli("ingest-landing", "--config", config, "--dataset", DATASET)
        first_processed = state_files(landing, "processed")
        first_failed = state_files(landing, "failed")

        # Dropped again: batch 01 under its first name, batch 04 under a new one; and a claim
        # whose worker died after the scan had committed (batch 04's bytes).
        shutil.copyfile(SAMPLES / "batch_01_clean.csv", landing / "batch_01_clean.csv")
        shutil.copyfile(SAMPLES / "batch_04_extra_column.csv", landing / "resent.csv")
        stale_claim(landing, "batch_04_after_commit.csv", (SAMPLES / "batch_04_extra_column.csv").read_bytes())
        second = run_cli("ingest-landing", "--config", config, "--dataset", DATASET)
    return Landed(
        root, landing, shas, killed_claim, worker.pid, ledger_failures, first, first_processed, first_failed, second
    )


def cli_lines(run: CliRun) -> dict[str, str]:
    """File name -> what the CLI said about it ("  name: outcome…")."""
    return dict(line.strip().split(": ", 1) for line in run.stdout.splitlines() if line.startswith("  "))


def test_first_pass_scans_each_landed_batch_once(landed):
    assert (landed.first.exit_code, landed.first.errors) == (0, []), landed.first.stderr
    lines = cli_lines(landed.first)
    assert sorted(lines) == sorted([*FIRST, "batch_01_copy.csv", "garbage.csv"])
    for name in FIRST:  # batch 01's retry delivered the decision its failed attempt had committed
        again = " (decision recorded earlier, delivered again)" if name == "batch_01_clean.csv" else ""
        assert lines[name].startswith(f"scanned{again}, batch {landed.shas[name][:12]}: {ROWS[name]} rows"), lines[name]
    assert lines["batch_01_copy.csv"] == (
        f"already scanned as batch {landed.shas['batch_01_clean.csv'][:12]}; "
        f"nothing ingested again. Moved to {landed.first_processed['batch_01_copy.csv']}"
    )
    assert lines["garbage.csv"].startswith("failed: The batch file ")
    assert sorted(landed.first_processed) == sorted([*FIRST, "batch_01_copy.csv"])
    assert sorted(landed.first_failed) == ["garbage.csv"]
    for name, path in landed.first_processed.items():  # moved, not copied: the bytes are the landed ones
        assert sha256_of(path) == landed.shas[name.replace("_copy", "_clean")]

    # one committed workspace folder, one ledger entry and one MLflow run per distinct batch
    from pipeline.config import Settings
    from pipeline.provenance import find_scan_runs
    from pipeline.review import open_ledger

    committed = sorted(p.name for p in (landed.workspace / "datasets" / DATASET / "batches").iterdir())
    assert committed == sorted(landed.shas.values())
    settings = Settings.from_environment(landed.workspace)
    with open_ledger(settings) as ledger:
        batches = ledger.list_batches(DATASET)
    assert sorted((b.sha256, b.rows, b.source) for b in batches) == sorted(
        (landed.shas[name], rows, "partner-l") for name, rows in ROWS.items()
    )
    for name, sha256 in landed.shas.items():
        assert len(find_scan_runs(settings.tracking_uri, sha256, DATASET)) == 1, name

    # each scanned batch's results in <out>/<stem>-<batch id>/, counts as scanned
    for name, rows in ROWS.items():
        summary = json.loads((landed.out / f"{Path(name).stem}-{landed.shas[name][:12]}" / "summary.json").read_text())
        assert summary["counts"]["rows"] == rows and summary["batch"]["sha256"] == landed.shas[name]
    assert (
        json.loads(
            (
                landed.out / f"batch_04_extra_column-{landed.shas['batch_04_extra_column.csv'][:12]}" / "summary.json"
            ).read_text()
        )["counts"]["quarantined"]
        == 120
    )


def test_files_that_are_not_batches_stay_where_they_landed(landed):
    remaining = sorted(p.name for p in landed.landing.iterdir())
    assert remaining == [".poisonguard", ".upload-in-progress.csv", "notes.txt"]
    assert batch_files(landed.landing / ".poisonguard" / "inflight") == []


def test_killed_worker_claim_is_resumed_by_the_next_pass(landed):
    claim = ClaimId.parse(landed.killed_claim.parent.name)
    assert claim is not None and claim.pid == landed.killed_pid and claim.attempt == 1
    assert landed.killed_claim.name == "batch_05_clean.parquet"
    assert not landed.killed_claim.parent.exists()  # taken over, its folder removed
    resumed = ClaimId.parse(landed.first_processed["batch_05_clean.parquet"].parent.name)
    assert resumed is not None and resumed.attempt == 2 and resumed.pid == os.getpid()
    result = landed.results(1)["batch_05_clean.parquet"]
    assert (result["outcome"], result["attempt"], result["rows"], result["redelivered"]) == ("scanned", 2, 40, False)


def test_unreachable_ledger_is_retried_without_partial_state(landed):
    batch_01 = landed.shas["batch_01_clean.csv"]
    assert [Path(f).name for f in landed.ledger_failures] == [batch_01]  # the failure happened, once
    result = landed.results(1)["batch_01_clean.csv"]
    # the retry found the committed folder and recorded it; nothing was scanned twice
    assert (result["outcome"], result["attempt"], result["redelivered"], result["rows"]) == ("scanned", 1, True, 140)
    from pipeline.config import Settings
    from pipeline.review import open_ledger

    with open_ledger(Settings.from_environment(landed.workspace)) as ledger:
        batch = next(b for b in ledger.list_batches(DATASET) if b.sha256 == batch_01)
        decided = ledger.list_rows(dataset=DATASET)
    assert batch.accepted + batch.quarantined == 140
    assert sum(row.batch_id == batch.id for row in decided) == 140
    assert list((landed.workspace / "staging").glob("*/summary.json")) == []


def test_garbage_is_moved_to_failed_with_its_error(landed):
    failed = landed.first_failed["garbage.csv"]
    assert failed.read_bytes() == GARBAGE
    error = (failed.parent / "garbage.csv.error.txt").read_text()
    assert "garbage.csv failed for good" in error and "is binary, not CSV text" in error
    assert not (landed.workspace / "datasets" / DATASET / "batches" / hashlib.sha256(GARBAGE).hexdigest()).exists()


def test_batches_dropped_again_are_not_ingested_again(landed):
    assert (landed.second.exit_code, landed.second.errors) == (0, []), landed.second.stderr
    lines = cli_lines(landed.second)
    assert sorted(lines) == ["batch_01_clean.csv", "batch_04_after_commit.csv", "resent.csv"]
    assert lines["batch_01_clean.csv"].startswith(f"already scanned as batch {landed.shas['batch_01_clean.csv'][:12]}")
    assert lines["resent.csv"].startswith(f"already scanned as batch {landed.shas['batch_04_extra_column.csv'][:12]}")
    # a claim abandoned after its commit is scanned again: the recorded decision is redelivered
    assert lines["batch_04_after_commit.csv"].startswith("scanned (decision recorded earlier, delivered again)")
    result = landed.results(2)["batch_04_after_commit.csv"]
    assert (result["attempt"], result["redelivered"]) == (2, True)
    assert sorted(landed.results(2)) == ["batch_01_clean.csv", "batch_04_after_commit.csv", "resent.csv"]
    assert [landed.results(2)[name]["outcome"] for name in ("batch_01_clean.csv", "resent.csv")] == ["already recorded"] * 2
    # two results for batch_01_clean.csv: its first landing and the drop again (same file name)
    assert (
        sorted(p.name for p in batch_files(landed.landing / ".poisonguard" / "processed")).count("batch_01_clean.csv") == 2
    )

    from pipeline.config import Settings
    from pipeline.provenance import find_scan_runs
    from pipeline.review import open_ledger

    settings = Settings.from_environment(landed.workspace)
    with open_ledger(settings) as ledger:
        assert sorted(b.sha256 for b in ledger.list_batches(DATASET)) == sorted(landed.shas.values())
    assert sorted(p.name for p in (landed.workspace / "datasets" / DATASET / "batches").iterdir()) == sorted(
        landed.shas.values()
    )
    for sha256 in landed.shas.values():
        assert len(find_scan_runs(settings.tracking_uri, sha256, DATASET)) == 1
    # already recorded bytes get no output folder; the resumed claim gets its decision delivered
    assert sorted(p.name for p in landed.out.iterdir()) == sorted(
        [f"{Path(n).stem}-{landed.shas[n][:12]}" for n in ROWS]
        + [f"batch_04_after_commit-{landed.shas['batch_04_extra_column.csv'][:12]}"]
    )


def test_each_pass_leaves_a_checks_table_and_a_summary_in_prefect(landed):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    def versions(key: str) -> list[Any]:
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
        return sorted(found, key=lambda artifact: artifact.created)

    tables = versions(artifact_key(DATASET, "checks"))
    summaries = versions(artifact_key(DATASET, "summary"))
    assert [a.type for a in tables] == ["table", "table"] and [a.type for a in summaries] == ["markdown"] * 2
    first = {row["file"]: row for row in json.loads(tables[0].data)}
    assert sorted(first) == sorted([*FIRST, "batch_01_copy.csv", "garbage.csv"])
    assert (first["batch_04_extra_column.csv"]["rows"], first["batch_04_extra_column.csv"]["quarantined"]) == (120, 120)
    batch_04 = first["batch_04_extra_column.csv"]
    held_all = [check for check, held in batch_04.items() if held == 120 and check not in ("rows", "quarantined")]
    assert held_all, batch_04  # the schema check that held the whole batch
    assert first["garbage.csv"]["outcome"] == "failed" and first["garbage.csv"]["rows"] is None

    markdown = summaries[0].data
    result = landed.results(1)["batch_05_clean.parquet"]
    assert (Path(result["out"]) / "report.html").as_uri() in markdown
    assert f"`{result['mlflow_run_id']}`" in markdown  # a SQLite store: the run id and how to open it
    assert "mlflow ui --backend-store-uri sqlite:///" in markdown
    assert "3 scanned, 1 already recorded, 1 failed" in markdown


# --- the pass itself, with a stand-in scan ---------------------------------------------------------


def fake_summary(batch: Path) -> dict[str, Any]:
    return {
        "counts": {"rows": 1, "accepted": 1, "quarantined": 0},
        "checks": {},
        "duplicate": False,
        "mlflow": {"run_id": f"run-{batch.name}", "tracking_uri": "http://mlflow:5000"},
    }


def drop(landing: Path, count: int) -> list[str]:
    landing.mkdir(parents=True, exist_ok=True)
    names = [f"batch_{i:02d}.csv" for i in range(count)]
    for name in names:
        (landing / name).write_text(f"x\n{name}\n")
    return names


def test_two_passes_at_once_scan_each_file_once(tmp_path):
    names = drop(tmp_path / "landing", 12)
    scanned: list[tuple[str, str]] = []
    both_scanning = threading.Barrier(2, timeout=30)

    def scan_in(thread: str):
        def scan(batch: Path, out: Path) -> dict[str, Any]:
            if not any(who == thread for who, _ in scanned):
                scanned.append((thread, batch.name))
                both_scanning.wait()  # both passes hold a claim at the same moment
            else:
                scanned.append((thread, batch.name))
            time.sleep(0.005)
            return fake_summary(batch)

        return scan

    reports: dict[str, PassReport] = {}

    def one_pass(thread: str) -> None:
        reports[thread] = run_pass(
            Landing(str(tmp_path / "landing")),
            PassRules(settle_seconds=0),
            scan=scan_in(thread),
            recorded=lambda sha256: None,
            out=tmp_path / "out",
            work_dir=tmp_path / "work",
        )

    threads = [threading.Thread(target=one_pass, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(name for _, name in scanned) == names  # each once, none missing
    assert {who for who, _ in scanned} == {"a", "b"}
    assert sorted(f.name for r in reports.values() for f in r.files) == names
    assert sorted(state_files(tmp_path / "landing", "processed")) == names
    assert batch_files(tmp_path / "landing" / ".poisonguard" / "inflight") == []


def test_transient_failure_releases_the_claim_for_the_next_pass(tmp_path):
    landing = tmp_path / "landing"
    drop(landing, 1)
    attempts = []

    def scan(batch: Path, out: Path) -> dict[str, Any]:
        attempts.append(batch.name)
        if len(attempts) == 1:
            raise ConnectionError("MLflow tracking server unreachable")
        return fake_summary(batch)

    rules = PassRules(settle_seconds=0, max_attempts=3)
    first = run_pass(
        Landing(str(landing)),
        rules,
        scan=scan,
        recorded=lambda sha256: None,
        out=tmp_path / "out",
        work_dir=tmp_path / "work",
    )
    assert [(f.outcome, f.attempt, f.error) for f in first.files] == [
        (Outcome.RETRY, 1, "ConnectionError: MLflow tracking server unreachable")
    ]
    released = batch_files(landing / ".poisonguard" / "inflight")
    assert [p.name for p in released] == ["batch_00.csv"]
    claim = ClaimId.parse(released[0].parent.name)
    assert claim is not None and (claim.pid, claim.attempt) == (0, 1)
    assert "unreachable" in (released[0].parent / "batch_00.csv.error.txt").read_text()

    second = run_pass(
        Landing(str(landing)),
        rules,
        scan=scan,
        recorded=lambda sha256: None,
        out=tmp_path / "out",
        work_dir=tmp_path / "work",
    )
    assert [(f.outcome, f.attempt) for f in second.files] == [(Outcome.SCANNED, 2)]
    assert attempts == ["batch_00.csv", "batch_00.csv"]
    assert list(state_files(landing, "processed")) == ["batch_00.csv"]
    assert batch_files(landing / ".poisonguard" / "inflight") == []


def test_a_claim_that_keeps_failing_goes_to_failed_after_max_attempts(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    stale_claim(landing, "poison_pill.csv", b"a,b\n1,2\n", attempt=3, error="MemoryError: killed by the OOM killer")

    def scan(batch: Path, out: Path) -> dict[str, Any]:
        raise AssertionError("a file past max_attempts is not scanned again")

    report = run_pass(
        Landing(str(landing)),
        PassRules(settle_seconds=0, max_attempts=3),
        scan=scan,
        recorded=lambda sha256: None,
        out=tmp_path / "out",
        work_dir=tmp_path / "work",
    )
    assert [(f.name, f.outcome) for f in report.files] == [("poison_pill.csv", Outcome.FAILED)]
    failed = state_files(landing, "failed")["poison_pill.csv"]
    assert failed.read_bytes() == b"a,b\n1,2\n"
    error = (failed.parent / "poison_pill.csv.error.txt").read_text()
    assert "gave up after 3 attempt(s); last error: MemoryError" in error


def test_a_live_claim_is_left_to_its_holder(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    stale_claim(landing, "busy.csv", b"a\n1\n", pid=os.getpid())  # this process: alive

    def scan(batch: Path, out: Path) -> dict[str, Any]:
        raise AssertionError("another pass holds this claim")

    rules = PassRules(settle_seconds=0, claim_timeout_seconds=600)
    assert (
        run_pass(
            Landing(str(landing)),
            rules,
            scan=scan,
            recorded=lambda sha256: None,
            out=tmp_path / "out",
            work_dir=tmp_path / "work",
        ).files
        == ()
    )
    # past the timeout the holder is taken as gone (a pid reused, or a host this one cannot ask)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=601)
    report = run_pass(
        Landing(str(landing)),
        rules,
        scan=lambda b, o: fake_summary(b),
        recorded=lambda sha256: None,
        out=tmp_path / "out",
        work_dir=tmp_path / "work",
        clock=lambda: later,
    )
    assert [(f.name, f.outcome, f.attempt) for f in report.files] == [("busy.csv", Outcome.SCANNED, 2)]


def test_a_file_still_being_written_waits_until_it_settles(tmp_path):
    landing = tmp_path / "landing"
    drop(landing, 1)
    rules = PassRules(settle_seconds=30)
    now = dt.datetime.now(dt.UTC)
    kwargs: dict[str, Any] = dict(
        scan=lambda b, o: fake_summary(b), recorded=lambda sha256: None, out=tmp_path / "out", work_dir=tmp_path / "work"
    )
    assert run_pass(Landing(str(landing)), rules, clock=lambda: now, **kwargs).files == ()
    assert (landing / "batch_00.csv").exists()
    later = now + dt.timedelta(seconds=31)
    report = run_pass(Landing(str(landing)), rules, clock=lambda: later, **kwargs)
    assert [f.name for f in report.files] == ["batch_00.csv"]


def test_a_landing_bucket_is_scanned_from_a_local_copy(tmp_path):
    import fsspec

    bucket = fsspec.filesystem("memory")
    bucket.pipe("/bucket-test/in/batch.csv", b"deny,pirat\nno,0.2\n")
    seen: list[tuple[str, bytes]] = []

    def scan(batch: Path, out: Path) -> dict[str, Any]:
        seen.append((str(batch), batch.read_bytes()))
        return fake_summary(batch)

    report = run_pass(
        Landing("memory://bucket-test/in"),
        PassRules(settle_seconds=0),
        scan=scan,
        recorded=lambda sha256: None,
        out=tmp_path / "out",
        work_dir=tmp_path / "work",
    )
    assert seen == [(str(tmp_path / "work" / seen[0][0].split("/")[-2] / "batch.csv"), b"deny,pirat\nno,0.2\n")]
    assert not Path(seen[0][0]).exists()  # the local copy is gone after the scan
    landed_file: LandedFile = report.files[0]
    assert landed_file.location is not None and landed_file.location.startswith(
        "memory://bucket-test/in/.poisonguard/processed/"
    )
    processed = [p for p in bucket.find("/bucket-test") if p.endswith("batch.csv")]
    assert len(processed) == 1 and "/.poisonguard/processed/" in processed[0]
    assert bucket.cat(processed[0]) == b"deny,pirat\nno,0.2\n"


# --- configuration ----------------------------------------------------------------------------------

VALID = f"""\
[datasets.hmda]
reference = "{SAMPLES}/reference.parquet"
label = "deny"
landing = "landing"
out = "out"
"""


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "poisonguard.toml: datasets: missing; add one [datasets.NAME] table per dataset"),
        ("datasets = 3", "poisonguard.toml: datasets: must hold one [datasets.NAME] table per dataset"),
        ("[datasets.hmda\n", "poisonguard.toml: not valid TOML: "),
        (
            "workspace = 'ws'\nworkspaces = 'x'\n" + VALID,
            "poisonguard.toml: workspaces: unknown setting (known: workspace, datasets)",
        ),
        (VALID.replace('label = "deny"\n', ""), "poisonguard.toml: datasets.hmda.label: missing"),
        (
            VALID.replace('label = "deny"', "label = 3"),
            "poisonguard.toml: datasets.hmda.label: must be a non-empty string; got 3",
        ),
        (VALID.replace('label = "deny"', 'lable = "deny"'), "poisonguard.toml: datasets.hmda.lable: unknown setting"),
        (
            VALID.replace("reference.parquet", "nope.parquet"),
            f"poisonguard.toml: datasets.hmda.reference: {SAMPLES}/nope.parquet does not exist",
        ),
        (VALID + 'suite = "."\n', "poisonguard.toml: datasets.hmda.suite: "),
        (VALID.replace('out = "out"\n', ""), "poisonguard.toml: datasets.hmda.out: missing"),
        (
            VALID.replace('"out"', '"s3://bucket/out"'),
            "poisonguard.toml: datasets.hmda.out: must be a local path; got 's3://bucket/out'",
        ),
        (
            VALID + 'cron = "0 * * * *"\ninterval_seconds = 60\n',
            "poisonguard.toml: datasets.hmda.cron: set cron or interval_seconds, not both",
        ),
        (VALID + "interval_seconds = 0\n", "poisonguard.toml: datasets.hmda.interval_seconds: must be a number >= 1; got 0"),
        (VALID + "max_attempts = 1.5\n", "poisonguard.toml: datasets.hmda.max_attempts: must be an integer >= 1; got 1.5"),
        (
            VALID + "settle_seconds = true\n",
            "poisonguard.toml: datasets.hmda.settle_seconds: must be a number >= 0; got True",
        ),
        (
            VALID + 'timezone = "Mars/Olympus"\n',
            "poisonguard.toml: datasets.hmda.timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            VALID.replace("[datasets.hmda]", '[datasets."../escape"]'),
            "poisonguard.toml: datasets.../escape: The dataset name '../escape' may only contain",
        ),
    ],
)
def test_config_errors_name_the_file_and_the_field(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    Path("poisonguard.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config("poisonguard.toml")
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "poisonguard.toml").write_text(VALID + "interval_seconds = 900\n")
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/poisonguard.toml")
    hmda = config.dataset("hmda")
    assert (hmda.landing, hmda.out, hmda.interval_seconds, hmda.source) == (
        str(tmp_path / "conf" / "landing"),
        tmp_path / "conf" / "out",
        900,
        "unknown",
    )
    assert hmda.rules == PassRules() and (hmda.retries, hmda.retry_delay_seconds) == (3, 10.0)
    with pytest.raises(
        ConfigError,
        match=r"^conf/poisonguard.toml: datasets.other: no such dataset \(configured: "
        r"hmda\)$",
    ):
        config.dataset("other")
    (tmp_path / "conf" / "poisonguard.toml").write_text(VALID.replace('"landing"', '"file://incoming"'))
    hmda = load_config("conf/poisonguard.toml").dataset("hmda")
    assert hmda.landing == str(tmp_path / "conf" / "incoming")


def test_config_problems_found_before_a_pass_claims_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("poisonguard.toml").write_text(VALID.replace('"deny"', '"denied"'))
    with pytest.raises(
        ConfigError,
        match=r"^poisonguard.toml: datasets.hmda.label: 'denied' is not a column of the "
        r"reference",
    ):
        prepare_landing(load_config("poisonguard.toml").dataset("hmda"))
    Path("poisonguard.toml").write_text(VALID)
    with pytest.raises(ConfigError, match=r"^poisonguard.toml: datasets.hmda.landing: .*/landing is not a folder"):
        prepare_landing(load_config("poisonguard.toml").dataset("hmda"))
    Path("landing").mkdir()
    assert prepare_landing(load_config("poisonguard.toml").dataset("hmda")).root == str(tmp_path / "landing")


def test_the_example_config_points_at_the_samples():
    hmda = load_config(REPO / "examples" / "poisonguard.toml").dataset("hmda")
    assert (hmda.reference, hmda.holdout, hmda.suite) == (SAMPLES / "reference.parquet", SAMPLES / "holdout.parquet", SUITE)
    assert (hmda.label, hmda.cron, hmda.timezone) == ("deny", "*/15 * * * *", "Europe/Berlin")


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("poisonguard.toml").write_text(VALID.replace('label = "deny"\n', ""))
    result = run_cli("ingest-landing", "--dataset", "hmda")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.errors == ["poisonguard: error: poisonguard.toml: datasets.hmda.label: missing"], result.stderr


def test_serve_without_a_prefect_server_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    Path("landing").mkdir()
    Path("poisonguard.toml").write_text(VALID)
    result = run_cli("serve")
    assert result.exit_code == 2 and len(result.errors) == 1, result.stderr
    assert "needs a Prefect server" in result.errors[0] and "PREFECT_API_URL" in result.errors[0]


def test_serve_deploys_each_landing_on_its_schedule_and_each_gate_on_demand(tmp_path):
    from pipeline.cli_serve import build_deployments

    config = tmp_path / "poisonguard.toml"
    config.write_text(
        VALID
        + 'cron = "*/15 * * * *"\ntimezone = "Europe/Berlin"\n'
        + VALID.replace("hmda", "loans")
        + "interval_seconds = 300\n"
    )
    deployments = build_deployments(load_config(config), config)
    assert [(d.flow_name, d.name, d.entrypoint) for d in deployments] == [
        ("poisonguard-landing", "hmda", "flows.landing.landing_flow"),
        ("poisonguard-gate-dataset", "hmda", "flows.landing.gate_dataset_flow"),
        ("poisonguard-landing", "loans", "flows.landing.landing_flow"),
        ("poisonguard-gate-dataset", "loans", "flows.landing.gate_dataset_flow"),
    ]
    hmda, hmda_gate, loans, loans_gate = deployments
    assert (hmda.schedules[0].schedule.cron, hmda.schedules[0].schedule.timezone) == ("*/15 * * * *", "Europe/Berlin")
    assert loans.schedules[0].schedule.interval == dt.timedelta(seconds=300)
    assert hmda_gate.schedules == [] and loans_gate.schedules == []
    assert hmda.parameters == hmda_gate.parameters == {"config": str(config), "dataset": "hmda"}

    config.write_text(VALID + 'cron = "every hour"\n')
    with pytest.raises(ConfigError, match=r"poisonguard.toml: datasets.hmda.cron: Invalid cron string"):
        build_deployments(load_config(config), config)


def test_a_pass_whose_scans_cannot_reach_mlflow_exits_1_and_keeps_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    Path("landing").mkdir()
    shutil.copyfile(SAMPLES / "batch_05_clean.parquet", "landing/batch_05_clean.parquet")
    Path("poisonguard.toml").write_text(
        VALID.replace("[datasets.hmda]", 'workspace = "ws"\n\n[datasets.hmda]')
        + "settle_seconds = 0\nretries = 1\nretry_delay_seconds = 0\n"
    )
    result = run_cli("ingest-landing", "--dataset", "hmda")
    assert result.exit_code == 1, result.stderr
    assert result.stdout.splitlines()[1].startswith("  batch_05_clean.parquet: left for the next pass (attempt 1): ")
    assert len(result.errors) == 1 and result.errors[0].startswith(
        f"poisonguard: error: 1 file(s) in {tmp_path / 'landing'} could not be scanned and are left for the next "
        "pass: batch_05_clean.parquet: MlflowException: "
    ), result.stderr
    released = batch_files(tmp_path / "landing" / ".poisonguard" / "inflight")
    assert [p.name for p in released] == ["batch_05_clean.parquet"]
    claim = ClaimId.parse(released[0].parent.name)
    assert claim is not None and (claim.pid, claim.attempt) == (0, 1)
    assert (released[0].parent / "batch_05_clean.parquet.error.txt").read_text().startswith("MlflowException")
    assert not (tmp_path / "ws" / "datasets" / "hmda" / "batches").exists()
