"""Outputs hold the input exactly: accepted.parquet and quarantined.parquet carry each cell as it
arrived (a CSV's text, a Parquet file's values and types), whatever the detectors read."""

from __future__ import annotations

import decimal
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.findings import empty_findings
from pipeline.io import ROW_NUMBER, as_common_types, read_table
from pipeline.store import ScanOutputs, write_outputs
from pipeline.validation import column_kinds, infer_suite, validate_table

# Hostile cells, one column each kind of trouble. The CSV is written by hand: quoting is the point.
HOSTILE_CSV = (
    "zip,app_id,word,note,amount,label\n"
    '00501,10000000000000000001,NaN,"Zoë, naïve ☃",1.50,yes\n'
    "02134,10000000000000000002,null,,2.0,no\n"
    '90210,10000000000000000003,"","line one\nline two",1e308,yes\n'
    "00007,99999999999999999999,NA,日本語,0.1,no\n"
    '10001,10000000000000000005,N/A," spaces ",-0,yes\n'
)
# The file's cells as they are written: None for an unquoted empty cell, "" for a quoted one.
EXPECTED_TEXT = {
    "zip": ["00501", "02134", "90210", "00007", "10001"],
    "app_id": [
        "10000000000000000001",
        "10000000000000000002",
        "10000000000000000003",
        "99999999999999999999",
        "10000000000000000005",
    ],
    "word": ["NaN", "null", "", "NA", "N/A"],
    "note": ["Zoë, naïve ☃", None, "line one\nline two", "日本語", " spaces "],
    "amount": ["1.50", "2.0", "1e308", "0.1", "-0"],
    "label": ["yes", "no", "yes", "no", "yes"],
}


def _scan_outputs(path, out, held_rows=(1, 3)):
    """Write a scan's outputs for the file at ``path`` with ``held_rows`` quarantined, through the
    scan's own validation (``validate_table``) and writer (``write_outputs``)."""
    batch = read_table(path)
    kinds = column_kinds(batch.frame)
    suite = infer_suite(batch.frame.drop(columns=[ROW_NUMBER]), "label", "t")
    conformed, _ = validate_table(batch, kinds, suite)
    held = pd.DataFrame(
        {
            ROW_NUMBER: np.array(held_rows, dtype=np.int64),
            "suspicion": [1.0] * len(held_rows),
            "reasons": [["held for the test"]] * len(held_rows),
        }
    )
    outputs = ScanOutputs(
        rows=conformed,
        held=held,
        scores=pd.DataFrame({ROW_NUMBER: np.arange(batch.n_rows)}),
        findings=empty_findings(),
        summary={},
        report_html="",
        chunk_rows=2,
    )
    write_outputs(outputs, out)
    return batch, pq.read_table(out / "accepted.parquet"), pq.read_table(out / "quarantined.parquet")


def _cells_as_written(table: pa.Table, column: str) -> list:
    """An output column written back as text: strings as they are, numbers by Arrow or Python's repr."""
    values = table[column]
    if pa.types.is_string(values.type):
        return values.to_pylist()
    return [None if v is None else repr(v) for v in values.to_pylist()]


def test_csv_outputs_carry_every_cell_as_written(tmp_path):
    path = tmp_path / "hostile.csv"
    path.write_text(HOSTILE_CSV, encoding="utf-8")
    _, accepted, quarantined = _scan_outputs(path, tmp_path / "out")
    assert accepted["row_number"].to_pylist() == [0, 2, 4] and quarantined["row_number"].to_pylist() == [1, 3]
    for part in (accepted, quarantined):
        rows = part["row_number"].to_pylist()
        for column, cells in EXPECTED_TEXT.items():
            assert _cells_as_written(part, column) == [cells[r] for r in rows], column
    # leading zeros, ids past int64, "NaN" words: kept as text, not numbers
    for column in ("zip", "app_id", "word", "amount"):
        assert pa.types.is_string(accepted.schema.field(column).type), column


def test_a_csv_column_whose_numbers_write_back_exactly_stays_numeric(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("x,n,label\n1.5,3,yes\n2.0,4,no\n0.25,5,yes\n", encoding="utf-8")
    _, accepted, _ = _scan_outputs(path, tmp_path / "out", held_rows=())
    assert accepted.schema.field("x").type == pa.float64() and accepted.schema.field("n").type == pa.int64()
    assert accepted["x"].to_pylist() == [1.5, 2.0, 0.25]


def test_parquet_outputs_keep_values_and_types(tmp_path):
    big = [2**64 - 1, 2**63 + 7, None, 1, 2**63]
    table = pa.table(
        {
            "big_id": pa.array(big, pa.uint64()),
            "zip": pa.array(["00501", "", None, "NaN", "☃"]),
            "price": pa.array(
                [
                    decimal.Decimal("1.10"),
                    decimal.Decimal("0.005"),
                    None,
                    decimal.Decimal("-3"),
                    decimal.Decimal("12345678901234567.89"),
                ],
                pa.decimal128(20, 3),
            ),
            "when": pa.array(pd.to_datetime(["2026-01-01T10:00Z"] * 4 + [None], utc=True)),
            "small": pa.array([1, 2, 3, None, 5], pa.int8()),
            "label": pa.array(["yes", "no", "yes", "no", "yes"]),
        }
    )
    path = tmp_path / "hostile.parquet"
    pq.write_table(table, path)
    _, accepted, quarantined = _scan_outputs(path, tmp_path / "out")
    for part in (accepted, quarantined):
        rows = part["row_number"].to_pylist()
        for column in table.schema.names:
            assert part.schema.field(column).type == table.schema.field(column).type, column
            assert part[column].to_pylist() == table[column].take(pa.array(rows)).to_pylist(), column


def test_a_spooled_csv_keeps_its_text_too(tmp_path):
    path = tmp_path / "hostile.csv"
    path.write_text(HOSTILE_CSV, encoding="utf-8")
    in_memory = read_table(path)
    spooled = read_table(path, spool_dir=tmp_path / "spool")
    assert spooled.exact.equals(in_memory.exact)
    assert spooled.exact["zip"].to_pylist() == EXPECTED_TEXT["zip"]


def test_the_detectors_still_read_typed_values(tmp_path):
    path = tmp_path / "hostile.csv"
    path.write_text(HOSTILE_CSV, encoding="utf-8")
    batch = read_table(path)
    assert batch.frame["zip"].tolist() == [501, 2134, 90210, 7, 10001]
    assert batch.exact["zip"].to_pylist() == EXPECTED_TEXT["zip"]


@pytest.mark.parametrize("numbers", [pd.Series([1.5, 2.0]), pd.Series([1, 2])])
def test_batches_whose_column_types_differ_stack_as_text(numbers):
    text = pd.DataFrame({"zip": ["00501", None], ROW_NUMBER: [0, 1]})
    typed = pd.DataFrame({"zip": numbers, ROW_NUMBER: [0, 1]})
    stacked = pd.concat(as_common_types([text, typed]), ignore_index=True)
    written = pc.cast(pa.array(numbers), pa.string()).to_pylist()
    assert [None if pd.isna(v) else v for v in stacked["zip"]] == ["00501", None, *written]
    assert pa.Table.from_pandas(stacked).schema.field("zip").type == pa.string()


def test_frames_of_one_type_are_left_as_they_are():
    frames = [pd.DataFrame({"x": [1.0]}), pd.DataFrame({"x": [2.0]})]
    assert as_common_types(frames) is frames


# --- through a real scan and the gate ------------------------------------------------------------


def test_the_gates_training_snapshot_carries_the_cells_that_arrived(run_cli, tmp_path):
    """A CSV batch (zips with leading zeros, 20-digit ids, a quoted "NaN" word) and a Parquet
    batch of the same dataset (typed zips): the snapshot holds each batch's cells as they came."""
    from pathlib import Path

    samples = Path(__file__).resolve().parents[1] / "data_samples"
    rng = np.random.default_rng(5)
    reference = pd.read_parquet(samples / "reference.parquet").sample(300, random_state=1).reset_index(drop=True)
    reference.insert(0, "app_id", [str(10**19 + i) for i in range(len(reference))])
    reference["zip"] = rng.choice(["00501", "02134", "90210"], len(reference))
    reference.to_csv(tmp_path / "reference.csv", index=False)
    batch = pd.read_csv(samples / "batch_01_clean.csv").iloc[:40].reset_index(drop=True)
    batch.insert(0, "app_id", [str(10**19 + 10_000 + i) for i in range(len(batch))])
    batch["zip"] = rng.choice(["00501", "02134", "90210"], len(batch))
    batch.to_csv(tmp_path / "batch.csv", index=False)
    typed = pd.read_csv(samples / "batch_01_clean.csv").iloc[40:60].reset_index(drop=True)
    typed.insert(0, "app_id", [str(10**19 + 20_000 + i) for i in range(len(typed))])
    typed["zip"] = np.array([501, 2134, 90210] * 7)[: len(typed)]
    typed.to_parquet(tmp_path / "typed.parquet", index=False)
    common = [
        "--reference",
        tmp_path / "reference.csv",
        "--label",
        "deny",
        "--workspace",
        tmp_path / "ws",
        "--dataset",
        "exact",
        "--id",
        "app_id",
    ]
    for name in ("batch.csv", "typed.parquet"):
        scanned = run_cli("scan", tmp_path / name, *common, "--out", tmp_path / f"out-{name}")
        assert scanned.exit_code == 0, scanned.stderr
    pending = sum(
        json.loads((tmp_path / f"out-{n}" / "summary.json").read_text())["counts"]["quarantined"]
        for n in ("batch.csv", "typed.parquet")
    )
    gated = run_cli(
        "gate",
        "--dataset",
        "exact",
        "--workspace",
        tmp_path / "ws",
        "--out",
        tmp_path / "snap",
        "--max-pending",
        str(pending),
    )
    assert gated.exit_code == 0, gated.stderr
    snapshot = pq.read_table(tmp_path / "snap" / "snapshot.parquet").to_pandas()
    assert pa.types.is_string(pq.read_schema(tmp_path / "snap" / "snapshot.parquet").field("zip").type)
    by_id = snapshot.set_index("app_id")
    from_csv = batch.set_index("app_id").loc[[i for i in batch["app_id"] if i in by_id.index]]
    assert len(from_csv) >= 35
    assert by_id.loc[from_csv.index, "zip"].tolist() == from_csv["zip"].tolist()  # "00501", not 501
    from_parquet = typed.set_index("app_id").loc[[i for i in typed["app_id"] if i in by_id.index]]
    assert by_id.loc[from_parquet.index, "zip"].tolist() == [str(z) for z in from_parquet["zip"]]

    # a later batch that reuses an accepted id: that row is held as an integrity finding
    later = pd.read_csv(samples / "batch_01_clean.csv").iloc[60:80].reset_index(drop=True)
    later.insert(0, "app_id", [str(10**19 + 30_000 + i) for i in range(len(later))])
    later["zip"] = "02134"
    reused = from_csv.index[0]
    later.loc[4, "app_id"] = reused
    later.to_csv(tmp_path / "later.csv", index=False)
    scanned = run_cli("scan", tmp_path / "later.csv", *common, "--out", tmp_path / "out-later")
    assert scanned.exit_code == 0, scanned.stderr
    held = pq.read_table(tmp_path / "out-later" / "quarantined.parquet").to_pandas().set_index("row_number")
    assert any(f"app_id='{reused}' is the id of a row already accepted" in r for r in held.at[4, "reasons"])


def test_the_review_pages_neighbours_read_a_row_whose_cells_were_kept_as_text(tmp_path):
    from pipeline.review import trusted_neighbours

    path = tmp_path / "reference.csv"
    pd.DataFrame(
        {
            "x": [1.0, 2.0, 3.0, 10.0, 2.25, 1.5],
            "zip": ["00501", "02134", "00501", "02134", "90210", "00501"],
            "y": ["a", "b", "a", "b", "a", "b"],
        }
    ).to_csv(path, index=False)
    summary = {
        "reference": {"path": str(path), "sha256": read_table(path).sha256},
        "label": "y",
        "features": {"numeric": ["x"], "categorical": ["zip"]},
    }
    # as quarantined.parquet holds it: the zip's text, a number written "2.10"
    row = pd.DataFrame({"x": ["2.10"], "zip": ["90210"], "y": ["b"], ROW_NUMBER: [0]})
    nearest = trusted_neighbours(summary, row, k=1)
    assert nearest[["x", "zip"]].to_dict("records") == [{"x": 2.25, "zip": 90210}]  # same zip, not x=2.0
