"""Every command against hostile inputs ends in its documented exit code, in one clear line, with
nothing raw from the data reaching the terminal and no input file changed (sha256 before and
after). The matrix is benchmarks/hostile_cli.py's, run here in-process; one real scan (of a
batch whose cells, name and source hold terminal escapes) serves the whole module.

Before: verify exited 0 on an edited ledger; the scan's review output replayed escape sequences
from cells, the file name, --by and --reason; the gate's snapshot overwrote the dataset's own
batch_id column (and --drop-provenance deleted it); ten-digit ids fell outside their own
inferred range; a Parquet column '__index_level_0__' was dropped silently.
"""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from tests.conftest import benchmark_module


def hostile_harness():
    return benchmark_module("hostile_cli")


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """(outcomes by title, the folder) of the whole matrix, run once through ``main()``."""
    from threadpoolctl import threadpool_limits

    harness = hostile_harness()
    root = tmp_path_factory.mktemp("hostile")
    mp = pytest.MonkeyPatch()

    def runner(args: tuple) -> tuple[int, str, str]:
        import contextlib
        import io

        from pipeline.cli import main

        stdout, stderr = io.StringIO(), io.StringIO()
        mp.setattr(sys, "argv", ["poisonguard", *map(str, args)])
        code = 0
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return code, stdout.getvalue(), stderr.getvalue()

    try:
        with threadpool_limits(limits=1):
            outcomes = harness.run_matrix(root, runner)
    finally:
        mp.undo()
    return {o.title: o for o in outcomes}, root


def test_every_run_keeps_the_documented_contract(matrix):
    outcomes, _ = matrix
    problems = {title: o.problems for title, o in outcomes.items() if o.problems}
    assert problems == {}, {t: (p, outcomes[t].stdout[-400:], outcomes[t].stderr[-400:]) for t, p in problems.items()}
    assert {o.expected for o in outcomes.values()} == {0, 2, 3}
    assert len(outcomes) >= 40


def test_text_from_data_and_people_is_shown_escaped(matrix):
    outcomes, _ = matrix
    row = outcomes["review show hostile row"].stdout
    assert "\\x1b[2J\\x1b[H\\x1b]0;all rows checked\\x07no" in row  # the cell value, visibly
    released = outcomes["review show released row"].stdout
    assert "by \\x1b[31mmallory\\x1b[0m" in released
    assert "\\x1b[1A\\x1b[2Kreleased after checking\\x0dfine" in released
    batch = outcomes["review show batch"].stdout
    assert "batch\\x1b[2J" in batch and "\\u202e.csv" in batch and "source feed\\x1b[2J" in batch


def test_the_snapshot_keeps_the_datasets_own_batch_id(matrix):
    harness = hostile_harness()
    _, root = matrix
    snapshot = pd.read_parquet(root / "out" / "gate" / "snapshot.parquet")
    manifest = json.loads((root / "out" / "gate" / "manifest.json").read_text())
    assert set(snapshot["batch_id"]) == {harness.USER_BATCH_ID}  # was the tool's id in every row
    assert set(snapshot["poisonguard_batch_id"]) == {b["id"] for b in manifest["batches"]}
    bare = pd.read_parquet(root / "out" / "gate-bare" / "snapshot.parquet")
    assert "batch_id" in bare.columns and set(bare["batch_id"]) == {harness.USER_BATCH_ID}
    assert not {"poisonguard_batch_id", "row_number"} & set(bare.columns)


def test_ten_digit_ids_hold_no_row(matrix):
    """Were rounded to 6 significant digits: the range collapsed and every row was held. Now the
    increasing, unique loan_id is profiled as an id (pipeline.roles): no range at all, checked
    for repeats instead (tests/test_cli_contract.py holds full-precision ranges of features)."""
    harness = hostile_harness()
    _, root = matrix
    suite = json.loads((root / "suites" / "hostile.json").read_text())
    assert suite["meta"]["poisonguard"]["roles"]["loan_id"] == "id"
    assert not [
        e
        for e in suite["expectations"]
        if e["type"] == "expect_column_values_to_be_between" and e["kwargs"].get("column") == "loan_id"
    ]
    findings = pd.read_parquet(root / "out" / "scan" / "findings.parquet")
    assert not (findings["column"] == "loan_id").any()
    quarantined = pd.read_parquet(root / "out" / "scan" / "quarantined.parquet")
    assert set(harness.HELD_ROWS) <= set(quarantined["row_number"])
    assert len(quarantined) < 20


def test_refused_inputs_are_named_in_one_line(matrix):
    outcomes, _ = matrix
    assert "the name pandas gives an unnamed row index" in outcomes["scan pandas_index.parquet"].stderr
    assert "which poisonguard reserves" in outcomes["scan reserved_batch_column.csv"].stderr
    assert "is the folder of the input" in outcomes["scan --out the inputs' folder"].stderr
    assert "is inside the workspace" in outcomes["gate --out inside the workspace"].stderr
    assert outcomes["verify after an edit by hand"].stderr.startswith("poisonguard: tampered: ")
