"""Large batches: spooled to a memory-mapped Arrow file, validated a group of whole columns at a
time, scored, keyed and written a chunk at a time, and decided exactly as a batch held whole."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from pipeline import io, scan
from pipeline.config import Settings
from pipeline.io import ROW_NUMBER, read_table
from pipeline.scan_run import evaluate
from pipeline.store import write_outputs
from pipeline.validation import load_suite, suite_from_document, validate_table
from tests.conftest import SAMPLES, SUITE, assert_conserved

SMALL_CSV_BLOCK = 4096  # so that the edge CSV's columns change type after the first block


@pytest.fixture(scope="module")
def edge_files(tmp_path_factory) -> dict[str, Path]:
    """Columns whose pandas dtype depends on rows far from the first: text, a decimal or a value
    after thousands of blank cells in a CSV; nulls, booleans, categories, timestamps in Parquet."""
    folder = tmp_path_factory.mktemp("edge")
    n, rng = 3000, np.random.default_rng(0)
    ints = pd.Series(rng.integers(0, 100, n)).astype(object)
    ints[2500] = "x"
    decimals = pd.Series(rng.integers(0, 100, n)).astype(object)
    decimals[2600] = "1.5"
    late = pd.Series([None] * n, dtype=object)
    late[2700] = "7"
    flags = pd.Series(rng.random(n) > 0.5, dtype=object)
    flags[2800] = None
    pd.DataFrame(
        {"text_late": ints, "decimal_late": decimals, "value_late": late, "flag": flags, "x": rng.random(n)}
    ).to_csv(folder / "edge.csv", index=False)
    counts = pd.array(rng.integers(0, 9, n), dtype="Int64")
    counts[2900] = pd.NA
    pd.DataFrame(
        {
            "count": counts,
            "grade": pd.Categorical(rng.choice(["a", "b", "c"], n)),
            "flag": pd.array(np.where(np.arange(n) == 10, None, rng.random(n) > 0.5), dtype="boolean"),
            "at": pd.date_range("2020-01-01", periods=n, freq="h"),
        }
    ).to_parquet(folder / "edge.parquet", row_group_size=700)
    return {"csv": folder / "edge.csv", "parquet": folder / "edge.parquet"}


@pytest.mark.parametrize(
    "name", ["csv", "parquet", "batch_03_impossible_and_outliers.csv", "batch_05_clean.parquet", "reference.parquet"]
)
def test_a_spooled_file_is_the_table_a_read_into_memory_gives(name, edge_files, tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_SPOOL_CSV_BLOCK", SMALL_CSV_BLOCK)
    path = edge_files.get(name) or SAMPLES / name
    whole = read_table(path)
    spooled = read_table(path, spool_dir=tmp_path / "spool")
    assert (spooled.sha256, spooled.schema_fingerprint) == (whole.sha256, whole.schema_fingerprint)
    assert spooled.table.equals(whole.table)
    pd.testing.assert_frame_equal(spooled.frame, whole.frame, check_exact=True)
    assert list((tmp_path / "spool").iterdir()) == [], "the spool is removed once it is mapped"


def test_csv_columns_that_change_type_late_are_widened_as_a_whole_read_widens_them(edge_files, tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_SPOOL_CSV_BLOCK", SMALL_CSV_BLOCK)
    with pytest.raises(pa.ArrowInvalid, match="CSV conversion error"):  # what the streaming reader alone does
        pacsv.open_csv(edge_files["csv"], read_options=pacsv.ReadOptions(block_size=SMALL_CSV_BLOCK)).read_all()
    spooled = read_table(edge_files["csv"], spool_dir=tmp_path)
    types = dict(zip(spooled.table.schema.names, spooled.table.schema.types))
    assert (types["text_late"], types["decimal_late"]) == (pa.string(), pa.float64())
    assert spooled.frame.loc[2600, "decimal_late"] == 1.5 and spooled.frame.loc[2500, "text_late"] == "x"


def test_slices_convert_to_the_dtypes_of_the_whole_frame(edge_files):
    loaded = read_table(edge_files["parquet"])
    first = loaded.rows(0, 100)  # no null among them: alone, "count" would be int64 and "flag" bool
    assert first.dtypes.to_dict() == loaded.frame.dtypes.to_dict()
    pd.testing.assert_frame_equal(pd.concat(list(loaded.chunks(7))), loaded.frame, check_exact=True)
    positions = np.array([2900, 10, 0, 2999])
    pd.testing.assert_frame_equal(loaded.take(positions), loaded.frame.iloc[positions], check_exact=True)
    pd.testing.assert_frame_equal(loaded.select(["count"]), loaded.frame[["count", ROW_NUMBER]], check_exact=True)


def test_a_killed_scans_spool_is_removed_and_a_live_scans_is_kept(tmp_path):
    spool = tmp_path / "spool"
    abandoned, live = spool / "spool-killed", spool / "spool-live"
    for folder in (abandoned, live):
        folder.mkdir(parents=True)
        (folder / ".lock").touch()
        (folder / "copy.csv").write_text("a,b\n1,2\n")
        os.utime(folder, (time.time() - 600, time.time() - 600))
    with open(live / ".lock", "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        read_table(SAMPLES / "batch_01_clean.csv", spool_dir=spool)
        assert live.exists() and not abandoned.exists()
    assert sorted(p.name for p in spool.iterdir()) == ["spool-live"]


@pytest.fixture(scope="module")
def trusted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trusted")
    request = scan.ScanRequest(
        batch=SAMPLES / "batch_01_clean.csv",
        reference=SAMPLES / "reference.parquet",
        label="deny",
        out=folder / "out",
        suite=SUITE,
        holdout=SAMPLES / "holdout.parquet",
        dataset="large",
    )
    settings = Settings.from_environment(folder / "workspace", environ={})
    return request, settings, scan.load_trusted(request, settings)


def _awkward_batch(path: Path) -> Path:
    """The sample batches with impossible values and outliers and with label flips, one after
    the other, plus: a numeric column that is mostly text, nulls in a column the suite below
    allows a few of, and a repeated id 250 rows apart."""
    frame = pd.concat(
        [pd.read_csv(SAMPLES / "batch_03_impossible_and_outliers.csv"), pd.read_csv(SAMPLES / "batch_02_label_flips.csv")],
        ignore_index=True,
    )
    frame["pirat"] = frame["pirat"].astype(object)
    frame.loc[frame.index[:200], "pirat"] = "unknown"
    frame.loc[frame.index[::15], "lvrat"] = None
    frame["loan_id"] = np.arange(len(frame))
    frame.loc[260, "loan_id"] = 10
    frame.to_csv(path, index=False)
    return path


def _awkward_suite():
    document = json.loads(SUITE.read_text())
    for expectation in document["expectations"]:
        if expectation["type"] == "expect_table_columns_to_match_set":
            expectation["kwargs"]["column_set"] = [*expectation["kwargs"]["column_set"], "loan_id"]
        if expectation["type"] == "expect_column_values_to_not_be_null" and expectation["kwargs"]["column"] == "lvrat":
            expectation["kwargs"]["mostly"] = 0.95
    document["expectations"] += [
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "loan_id"}, "meta": {}},
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"max_value": 250}, "meta": {}},
    ]
    return suite_from_document(document, "awkward")


@pytest.mark.parametrize("batch_name", ["awkward", "batch_04_extra_column.csv"])
def test_validating_a_few_whole_columns_at_a_time_finds_what_validating_the_batch_finds(batch_name, trusted, tmp_path):
    _, _, fitted = trusted
    path = _awkward_batch(tmp_path / "awkward.csv") if batch_name == "awkward" else SAMPLES / batch_name
    suite = _awkward_suite() if batch_name == "awkward" else load_suite(SUITE)
    batch = read_table(path)
    whole_rows, whole = validate_table(batch, fitted.kinds, suite)
    piece_rows, pieces = validate_table(batch, fitted.kinds, suite, max_cells=2 * batch.n_rows)

    def findings(outcome):
        return outcome.row_findings.sort_values([ROW_NUMBER, "check"]).reset_index(drop=True).astype(str)

    pd.testing.assert_frame_equal(findings(pieces), findings(whole))
    assert sorted(map(str, pieces.batch_findings)) == sorted(map(str, whole.batch_findings))
    assert pieces.checks == whole.checks
    pd.testing.assert_frame_equal(piece_rows.frame, whole_rows.frame, check_exact=True)
    if batch_name == "awkward":  # each kind of whole-column judgement was made
        assert {f.check for f in whole.batch_findings} >= {
            "validation:column_values_to_be_in_type_list:pirat",
            "validation:column_values_to_not_be_null:lvrat",
            "validation:table_row_count_to_be_between",
        }
        assert set(
            whole.row_findings.loc[
                whole.row_findings["check"] == "validation:column_values_to_be_unique:loan_id", ROW_NUMBER
            ]
        ) == {10, 260}
    else:
        assert [f.reason_code.value for f in whole.batch_findings][:1] == ["unexpected_column"]


def _scan_to(folder: Path, request, settings, trusted_data, max_cells: int) -> dict:
    batch = scan.ingest(request, settings)
    judged = evaluate(batch, trusted_data, settings, max_cells=max_cells)
    impacts = scan.confirm_impact(trusted_data, judged.conformed, judged.outcome, judged.decisions, settings)
    outputs = scan.build_outputs(
        request,
        settings,
        batch,
        trusted_data,
        judged.conformed,
        judged.outcome,
        judged.decisions,
        impacts,
        judged.checks,
        np.array([]),
        "run",
        scan.now(),
        judged.verdict,
    )
    write_outputs(outputs, folder)
    return outputs.summary


def test_a_batch_read_in_pieces_is_decided_and_written_exactly_as_a_batch_held_whole(trusted, tmp_path):
    request, settings, fitted = trusted
    frame = pd.concat(
        [pd.read_csv(SAMPLES / "batch_03_impossible_and_outliers.csv"), pd.read_csv(SAMPLES / "batch_02_label_flips.csv")],
        ignore_index=True,
    )
    frame.to_parquet(tmp_path / "batch.parquet", index=False)
    request = dataclasses.replace(request, batch=tmp_path / "batch.parquet")
    whole = _scan_to(tmp_path / "whole", request, settings, fitted, 10**9)
    pieces_settings = dataclasses.replace(settings, chunk_rows=37, spool_bytes=0)
    pieces = _scan_to(tmp_path / "pieces", request, pieces_settings, fitted, 3 * len(frame))
    assert (settings.workspace / "spool").is_dir(), "the batch was spooled"
    assert list((settings.workspace / "spool").iterdir()) == []
    for name in ("accepted", "quarantined", "scores", "findings"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "pieces" / f"{name}.parquet"),
            pd.read_parquet(tmp_path / "whole" / f"{name}.parquet"),
            check_exact=True,
        )
    for key in ("counts", "checks", "batch_findings", "alarms", "roni", "verdict"):
        assert pieces[key] == whole[key], key
    assert 0 < whole["counts"]["quarantined"] < len(frame)
    held_by = {check for check, rows in whole["checks"].items() if rows}
    assert any(c.startswith("validation:") for c in held_by) and any(c.startswith("detector:") for c in held_by)


def test_a_scan_spools_a_batch_over_the_limit_and_leaves_no_spool(scan_sample, monkeypatch, tmp_path):
    monkeypatch.setenv("POISONGUARD_SPOOL_MIB", "0")
    monkeypatch.setenv("POISONGUARD_CHUNK_ROWS", "30")
    result, out = scan_sample(SAMPLES / "batch_03_impossible_and_outliers.csv")
    assert result.exit_code == 0, result.stderr
    assert_conserved(out, 140)
    assert (tmp_path / "ws" / "spool").is_dir() and not list((tmp_path / "ws" / "spool").iterdir())
