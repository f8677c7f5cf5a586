"""Every command ends in its documented exit code: 0 done, 2 bad usage or input, 3 refused or
tampered (README "Command line"). Table-driven and fast: no case here starts Prefect or fits a
detector, so each one runs in well under a second; the scan and gate paths that do are covered
in test_gate.py and test_hostile_cli.py.

Before: ``main()`` ran the app with ``standalone_mode=False``, in which click *returns* the code
of a ``typer.Exit`` instead of raising it, so ``verify`` printed "tampered" and exited 0, and
``profile``'s errors exited 0.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import SAMPLES

REFERENCE = SAMPLES / "reference.parquet"
BATCH = SAMPLES / "batch_01_clean.csv"


@dataclass(frozen=True)
class Case:
    title: str
    args: Callable[[Path], list]  # the command line, given a fresh folder
    code: int
    stderr: str = ""  # a fragment of the one line on stderr ("" when the command succeeds)
    ledger: str = ""  # "", "recorded" (one batch in the ledger) or "tampered" (then edited by hand)


def record_batch(workspace: Path) -> str:
    """One batch in the workspace's ledger, recorded as a scan records it (without the scan)."""
    from pipeline.ledger import Ledger

    numbers = [0, 1, 2]
    scores = pd.DataFrame(
        {
            "row_number": numbers,
            "suspicion": [0.1, 0.99, 0.2],
            "quarantined": [False, True, False],
            "outliers": [0.1, 0.99, 0.2],
            "outliers_raw": [1.0, 9.0, 2.0],
        }
    )
    quarantined = pd.DataFrame(
        {"row_number": [1], "income": [50.0], "suspicion": [0.99], "reasons": [["value outside the trusted range"]]}
    )
    summary = {
        "dataset": "hmda",
        "scanned_at": "2026-11-26T10:15:00+00:00",
        "batch": {
            "file": "b.csv",
            "path": "/data/b.csv",
            "sha256": "ab" * 32,
            "rows": 3,
            "source": "feed",
            "submitter": "carol",
        },
        "counts": {"rows": 3, "accepted": 2, "quarantined": 1},
        "mlflow": {"run_id": "0123456789abcdef", "tracking_uri": "sqlite:///mlflow.db"},
        "duplicate": False,
    }
    workspace.mkdir(parents=True, exist_ok=True)
    start = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC)
    with Ledger.open(f"sqlite:///{workspace / 'ledger.sqlite'}", clock=lambda: start) as ledger:
        return ledger.record_scan(summary, scores, quarantined)


def ws(folder: Path) -> list:
    return ["--workspace", folder / "ws"]


CASES = [
    # --- usage ---------------------------------------------------------------------------------
    Case("no command", lambda t: [], 2, "Usage"),
    Case("unknown command", lambda t: ["nosuch"], 2, "No such command 'nosuch'"),
    Case("missing option", lambda t: ["scan", BATCH], 2, "Missing option"),
    Case("option out of range", lambda t: ["ui", "--port", "0", *ws(t)], 2, "--port"),
    # --- profile -------------------------------------------------------------------------------
    Case("profile ok", lambda t: ["profile", REFERENCE, "--label", "deny", "--out", t / "suite.json"], 0),
    Case(
        "profile label missing",
        lambda t: ["profile", REFERENCE, "--label", "nope", "--out", t / "s.json"],
        2,
        "The label column 'nope' is not in the reference",
    ),
    Case(
        "profile protected missing",
        lambda t: ["profile", REFERENCE, "--label", "deny", "--protected", "nope", "--out", t / "s.json"],
        2,
        "not in the reference",
    ),
    # on copies in the test's folder: on the old code these overwrote their input
    Case(
        "profile out is its reference",
        lambda t: ["profile", t / "in" / "ref.parquet", "--label", "deny", "--out", t / "in" / "ref.parquet"],
        2,
        "is the input",
    ),
    Case("profile out is a folder", lambda t: ["profile", REFERENCE, "--label", "deny", "--out", t], 2, "is a folder"),
    Case(
        "profile reference missing",
        lambda t: ["profile", t / "none.csv", "--label", "deny", "--out", t / "s.json"],
        2,
        "none.csv",
    ),
    # --- scan: bad paths, refused before any work ----------------------------------------------
    Case(
        "scan batch missing",
        lambda t: ["scan", t / "none.csv", "--reference", REFERENCE, "--label", "deny", "--out", t / "out", *ws(t)],
        2,
        "none.csv",
    ),
    Case(
        "scan out is a file",
        lambda t: ["scan", BATCH, "--reference", REFERENCE, "--label", "deny", "--out", t / "file.txt", *ws(t)],
        2,
        "is a file, not a folder",
    ),
    Case(
        "scan out is the inputs' folder",
        lambda t: [
            "scan",
            t / "in" / "batch.csv",
            "--reference",
            t / "in" / "ref.parquet",
            "--label",
            "deny",
            "--out",
            t / "in",
            *ws(t),
        ],
        2,
        "is the folder of the input",
    ),
    Case(
        "scan out inside the workspace",
        lambda t: ["scan", BATCH, "--reference", REFERENCE, "--label", "deny", "--out", t / "ws" / "out", *ws(t)],
        2,
        "is inside the workspace",
    ),
    Case(
        "scan out under a file",
        lambda t: ["scan", BATCH, "--reference", REFERENCE, "--label", "deny", "--out", t / "file.txt" / "out", *ws(t)],
        2,
        "cannot be created",
    ),
    Case(
        "scan workspace is a file",
        lambda t: [
            "scan",
            BATCH,
            "--reference",
            REFERENCE,
            "--label",
            "deny",
            "--out",
            t / "out",
            "--workspace",
            t / "file.txt",
        ],
        2,
        "--workspace",
    ),
    Case("demo out is a file", lambda t: ["demo", "--out", t / "file.txt", *ws(t)], 2, "cannot be created"),
    # --- review and verify ---------------------------------------------------------------------
    Case("review list, empty ledger", lambda t: ["review", "list", *ws(t)], 0),
    Case("review list, one batch", lambda t: ["review", "list", *ws(t)], 0, ledger="recorded"),
    Case("review show batch", lambda t: ["review", "show", "abababababab", *ws(t)], 0, ledger="recorded"),
    Case("review show unknown batch", lambda t: ["review", "show", "cdcdcdcdcdcd", *ws(t)], 2, "cdcdcdcdcdcd"),
    Case(
        "review release, empty --by",
        lambda t: ["review", "release", "abababababab:1", "--by", " ", "--reason", "x", *ws(t)],
        2,
        "--by and --reason must not be empty",
        ledger="recorded",
    ),
    Case(
        "review reject, unknown row",
        lambda t: ["review", "reject", "abababababab:7", "--by", "a", "--reason", "x", *ws(t)],
        2,
        "abababababab:7",
        ledger="recorded",
    ),
    Case("verify intact", lambda t: ["verify", *ws(t)], 0, ledger="recorded"),
    Case("verify tampered", lambda t: ["verify", *ws(t)], 3, "poisonguard: tampered:", ledger="tampered"),
    # --- gate: bad paths, refused before Prefect starts -----------------------------------------
    Case(
        "gate out is a file",
        lambda t: ["gate", "--dataset", "hmda", "--out", t / "file.txt", *ws(t)],
        2,
        "is a file, not a folder",
    ),
    Case(
        "gate out inside the workspace",
        lambda t: ["gate", "--dataset", "hmda", "--out", t / "ws" / "snap", *ws(t)],
        2,
        "is inside the workspace",
    ),
    Case("gate bad dataset name", lambda t: ["gate", "--dataset", "../x", "--out", t / "snap", *ws(t)], 2, "dataset name"),
    # --- services --------------------------------------------------------------------------------
    Case("ui on a public address", lambda t: ["ui", "--host", "0.0.0.0", *ws(t)], 2, "Refusing to listen on 0.0.0.0"),
    Case("serve, no config", lambda t: ["serve", "--config", t / "none.toml"], 2, "none.toml"),
    Case(
        "ingest-landing, no config",
        lambda t: ["ingest-landing", "--config", t / "none.toml", "--dataset", "d"],
        2,
        "none.toml",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.title for c in CASES])
def test_every_command_ends_in_its_documented_exit_code(run_cli, tmp_path, case):
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "in").mkdir()
    for source, name in [(REFERENCE, "ref.parquet"), (BATCH, "batch.csv")]:
        (tmp_path / "in" / name).write_bytes(source.read_bytes())
    before = {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()}
    if case.ledger:
        batch_id = record_batch(tmp_path / "ws")
        if case.ledger == "tampered":
            with sqlite3.connect(tmp_path / "ws" / "ledger.sqlite") as db:
                db.execute("UPDATE batches SET submitter = 'trusted-team' WHERE id = ?", (batch_id,))
    result = run_cli(*case.args(tmp_path))
    assert result.exit_code == case.code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert "internal error" not in result.stderr
    if case.code == 0:
        assert result.stderr == ""
    elif case.stderr != "Usage":  # click's usage error prints the help after its line
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert case.stderr in result.stderr, result.stderr
        assert result.stderr.startswith("poisonguard: ")
    assert {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()} == before  # inputs untouched


def test_a_refused_scan_leaves_no_output_and_no_workspace_behind(run_cli, tmp_path):
    """Paths are checked before any work: nothing is created when --out is refused."""
    (tmp_path / "in").mkdir()
    reference = tmp_path / "in" / "accepted.parquet"  # the name of one of the scan's outputs
    reference.write_bytes(REFERENCE.read_bytes())
    result = run_cli(
        "scan", BATCH, "--reference", reference, "--label", "deny", "--out", tmp_path / "in", "--workspace", tmp_path / "ws"
    )
    assert result.exit_code == 2
    assert "is the folder of the input" in result.stderr
    assert not (tmp_path / "ws").exists()
    assert reference.read_bytes() == REFERENCE.read_bytes()
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["accepted.parquet"]
