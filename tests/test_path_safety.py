"""File names from batches and names and IDs from users cannot escape the workspace.

Every command that takes a dataset name or an ID is run with traversal payloads (``../..``,
absolute paths, NUL bytes, newlines, very long values, SQL and URL tricks). Each one ends in exit
2 with one line on stderr, or in a success that wrote nothing outside the workspace and the
output folder. Batch files with hostile names are scanned through the library steps into a real
workspace, and must land only in ``<workspace>/datasets/<dataset>/batches/<sha256>`` and ``--out``.

Each test runs from an empty current directory inside ``tmp_path``, so a write to a relative path
would show up in the listing the test checks.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest

from pipeline import scan
from pipeline.config import Settings
from pipeline.scan_run import evaluate
from pipeline.store import Workspace, copy_outputs, write_outputs
from tests.conftest import SAMPLES, SUITE

CLEAN = SAMPLES / "batch_01_clean.csv"
TOKEN = "a-test-token-that-is-long-enough"


def traversal_names(root: Path) -> list[str]:
    """Dataset names that, followed as paths from the workspace, would leave it; the absolute
    one points into ``root`` so that the listing check would see a write there."""
    return [
        "../../escaped",
        "..",
        ".",
        "a/../../escaped",
        str(root / "escaped-absolute"),
        "nul\x00byte",
        "line\nbreak",
        "trailing-newline\n",
        "x" * 129,
        "~",
        ".hidden",
        "-dash",
        "back\\slash",
        "名前",
        " leading-space",
        "escaped/",
    ]


HOSTILE_IDS = [
    "../../etc/passwd",
    "../../etc/passwd:1",
    "/etc/passwd",
    "3f2a9c1b0d4e:../../x",
    "3f2a9c1b0d4e/../..:1",
    "nul\x00:1",
    "line\nbreak:1",
    "x" * 10_000,
    "%2e%2e%2f%2e%2e%2f",
    "' OR 1=1 --",
    "3f2a9c1b0d4e:1; DROP TABLE batches",
    "*",
    "%",
    "3f2a9c1b0d4e:-1",
    "3f2a9c1b0d4e:99999999999999999999999",
]


@pytest.fixture
def place(tmp_path, monkeypatch):
    """An empty current directory, a workspace and an output folder inside tmp_path."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("POISONGUARD_DATABASE_URL", raising=False)  # the ledger lives in the workspace
    monkeypatch.delenv("POISONGUARD_WORKSPACE", raising=False)
    return tmp_path


def written_outside(root: Path, *allowed: str) -> list[str]:
    """Everything under ``root`` that is not inside one of the ``allowed`` top-level folders."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.relative_to(root).parts[0] not in allowed and p.name != "cwd"
    )


def assert_refused_in_one_line(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("poisonguard: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- dataset names ---------------------------------------------------------------------------


def test_scan_refuses_dataset_names_that_leave_the_workspace(run_cli, place):
    for name in traversal_names(place):
        result = run_cli(
            "scan",
            CLEAN,
            "--reference",
            SAMPLES / "reference.parquet",
            "--label",
            "deny",
            "--dataset",
            name,
            "--workspace",
            place / "ws",
            "--out",
            place / "out",
        )
        assert_refused_in_one_line(result, "dataset name")
        assert written_outside(place) == [], name
        assert not (place / "ws").exists() and not (place / "out").exists(), name


def test_gate_refuses_dataset_names_that_leave_the_workspace(run_cli, place):
    for name in traversal_names(place):
        result = run_cli("gate", "--dataset", name, "--out", place / "out", "--workspace", place / "ws")
        assert_refused_in_one_line(result, "dataset name")
        assert written_outside(place) == [], name
        assert not (place / "out").exists(), name


def test_review_list_filters_on_any_dataset_name_without_touching_paths(run_cli, place):
    for name in traversal_names(place):
        result = run_cli("review", "list", "--dataset", name, "--format", "json", "--workspace", place / "ws")
        assert result.exit_code == 0, (name, result.stderr)
        assert json.loads(result.stdout) == []
    assert written_outside(place, "ws") == []


# --- IDs from users --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "release", "reject"])
def test_review_refuses_hostile_ids_in_one_line(run_cli, place, command):
    review = ("--by", "mallory", "--reason", "testing") if command != "show" else ()
    for row_id in HOSTILE_IDS:
        result = run_cli("review", command, row_id, *review, "--workspace", place / "ws")
        line = assert_refused_in_one_line(result)
        assert any(n in line for n in ("not a row id", "no batch", "no row", "no such row")), line
        assert line.isprintable(), line
    assert written_outside(place, "ws") == []
    assert sorted(p.name for p in (place / "ws").iterdir()) == ["ledger.sqlite"]
    from pipeline.review import open_ledger

    with open_ledger(Settings.from_environment(place / "ws")) as ledger:
        assert ledger.head() is None, "a refused review wrote to the ledger"


def test_review_page_answers_hostile_ids_with_not_found(place):
    from fastapi.testclient import TestClient

    from pipeline.ui import create_app

    app = create_app(Settings.from_environment(place / "ws"), TOKEN)
    try:
        client = TestClient(app, base_url="http://127.0.0.1:8765")
        signed_in = client.post("/sign-in", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
        assert signed_in.status_code == 303, signed_in.text
        # A bare ".." is resolved by the client (and any browser) before a request is sent.
        for raw in [i for i in HOSTILE_IDS if "\x00" not in i] + ["../ledger.sqlite", "..%2Fledger.sqlite"]:
            encoded = quote(raw, safe="")
            for url in (f"/batches/{encoded}", f"/batches/{encoded}/report", f"/rows/{encoded}"):
                response = client.get(url)
                assert response.status_code == 404, (url, response.status_code)
                assert "root:" not in response.text and "SQLite format" not in response.text
    finally:
        app.state.ledger.close()
    assert written_outside(place, "ws") == []


# --- batch file names ------------------------------------------------------------------------

HOSTILE_FILE_NAMES = [
    "...csv",
    "batch\nsecond line\ttab.csv",
    "x" * 250 + ".csv",
    "-rf $(touch pwned) `id` 'q\".csv",
    "<img src=x onerror=alert(1)>.csv",
    "\u202evsc.exe 名前 back\\slash.csv",
]

# The only folders a scan creates in the workspace: named by the checked dataset name and the sha256.
WORKSPACE_FOLDER = re.compile(
    r"datasets(/names-\d+(/batches(/[0-9a-f]{64})?)?)?|staging(/names-\d+)?|"
    r"locks(/names-\d+)?"
)


@pytest.fixture(scope="module")
def trusted_without_detectors(tmp_path_factory):
    """The scan's trusted side with no detectors: file names matter here, not scores."""
    folder = tmp_path_factory.mktemp("trusted")
    reference = folder / "reference.parquet"
    pd.read_parquet(SAMPLES / "reference.parquet").sample(200, random_state=0).to_parquet(reference, index=False)
    request = scan.ScanRequest(
        batch=CLEAN, reference=reference, label="deny", out=folder / "out", suite=SUITE, dataset="names"
    )
    settings = Settings.from_environment(folder / "unused", environ={})
    settings = dataclasses.replace(settings, detectors={})
    return request, settings, scan.load_trusted(request, settings)


def scan_into_workspace(batch: Path, workspace: Path, out: Path, dataset: str, trusted_side) -> dict:
    """The scan flow's steps without Prefect and MLflow: ingest, validate, decide, write to a
    staging folder, commit into the workspace, deliver to ``out``."""
    request, settings, trusted = trusted_side
    request = dataclasses.replace(request, batch=batch, out=out, dataset=dataset)
    settings = dataclasses.replace(settings, workspace=workspace)
    loaded = scan.ingest(request)
    judged = evaluate(loaded, trusted, settings, detectors={}, checks={})
    outputs = scan.build_outputs(
        request,
        settings,
        loaded,
        trusted,
        judged.conformed,
        judged.outcome,
        judged.decisions,
        [],
        judged.checks,
        scan.np.array([]),
        "no-run",
        scan.now(),
        judged.verdict,
    )
    space = Workspace(workspace)
    staging = space.staging_dir(request.dataset_name, loaded.sha256)
    write_outputs(outputs, staging)
    assert space.commit(staging, request.dataset_name, loaded.sha256)
    return copy_outputs(space.batch_dir(request.dataset_name, loaded.sha256), out)


def test_batch_file_names_cannot_steer_where_outputs_go(place, trusted_without_detectors):
    inputs = place / "inputs"
    inputs.mkdir()
    text = CLEAN.read_text()
    for i, name in enumerate(HOSTILE_FILE_NAMES):
        batch = inputs / name
        batch.write_text(text + text.splitlines()[1 + i] + "\n")  # distinct bytes: a distinct batch
        out = place / "out" / str(i)
        summary = scan_into_workspace(batch, place / "ws", out, f"names-{i}", trusted_without_detectors)
        assert summary["batch"]["file"] == name
        folders = [str(p.relative_to(place / "ws")) for p in (place / "ws").rglob("*") if p.is_dir()]
        assert all(WORKSPACE_FOLDER.fullmatch(folder) for folder in folders), folders
        assert sorted(p.name for p in out.iterdir()) == sorted(
            ["accepted.parquet", "quarantined.parquet", "scores.parquet", "findings.parquet", "summary.json", "report.html"]
        )
        assert "<img src=x onerror" not in (out / "report.html").read_text(), "the file name reached the report raw"
    assert written_outside(place, "ws", "out", "inputs") == []
    assert not list(place.rglob("pwned"))


def test_scan_of_a_file_named_with_a_newline_is_refused_or_reported_in_one_line(run_cli, place):
    batch = place / "inputs" / "batch\npoisonguard: error: forged.csv"
    batch.parent.mkdir()
    batch.write_bytes(b"\x00binary\x00")
    result = run_cli(
        "scan",
        batch,
        "--reference",
        SAMPLES / "reference.parquet",
        "--label",
        "deny",
        "--workspace",
        place / "ws",
        "--out",
        place / "out",
    )
    line = assert_refused_in_one_line(result, "is binary")
    assert "batch\\npoisonguard: error: forged.csv" in line
    assert written_outside(place, "inputs") == []


@pytest.mark.parametrize("bad", ["nul\x00byte.csv", "n" * 300 + ".csv"], ids=["nul-byte", "name-too-long"])
@pytest.mark.parametrize("role", ["batch", "reference", "holdout", "suite"])
def test_unopenable_names_of_every_input_are_refused_in_one_line(run_cli, place, bad, role):
    """NUL bytes and names longer than the file system allows, as batch, reference, holdout, suite."""
    inputs = {"batch": CLEAN, "reference": SAMPLES / "reference.parquet"}
    inputs[role] = place / (bad.replace(".csv", ".json") if role == "suite" else bad)
    options = [f"--{role}", inputs[role]] if role in ("holdout", "suite") else []
    result = run_cli(
        "scan",
        inputs["batch"],
        "--reference",
        inputs["reference"],
        *options,
        "--label",
        "deny",
        "--dataset",
        "names",
        "--workspace",
        place / "ws",
        "--out",
        place / "out",
    )
    line = assert_refused_in_one_line(result)
    assert role in line, (role, line)
    assert written_outside(place) == []
