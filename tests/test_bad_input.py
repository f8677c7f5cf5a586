"""Bad input never crashes a scan: each case ends in exit 2 with one "poisonguard: error:" line on
stderr and no traceback, or in a completed scan (exit 0) whose affected rows are quarantined with a
reason naming the problem, every row accounted for exactly once.

Every bad file is built in tmp_path from the committed samples (batch_01_clean.csv: 140 rows).
"""

from __future__ import annotations

import logging
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, SAMPLES, SUITE, assert_conserved, read_outputs

CLEAN = SAMPLES / "batch_01_clean.csv"
N_ROWS = 140
COLUMNS = [
    "deny",
    "pirat",
    "hirat",
    "lvrat",
    "chist",
    "mhist",
    "phist",
    "unemp",
    "selfemp",
    "insurance",
    "condomin",
    "afam",
    "single",
    "hschool",
]


# --- helpers -------------------------------------------------------------------------------------


def clean_text() -> pd.DataFrame:
    """The clean batch as text, cell for cell as in the file, so rewriting it changes nothing else."""
    frame = pd.read_csv(CLEAN, dtype=str, keep_default_na=False)
    assert list(frame.columns) == COLUMNS and len(frame) == N_ROWS
    return frame


def write_csv(frame: pd.DataFrame, path: Path, **kwargs) -> Path:
    frame.to_csv(path, index=False, **kwargs)
    return path


def assert_clean_error(result, caplog, *needles: str) -> str:
    """Exit 2, exactly one stderr line starting with the prefix, no traceback anywhere.

    In a real process a log record carrying exc_info prints a traceback on stderr; under pytest the
    logging plugin swallows it, so such records are checked through caplog as well.
    """
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("poisonguard: error:"), line
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING and (r.exc_info or "Traceback" in r.getMessage())]
    assert not logged, [f"{r.name}: {r.getMessage()[:200]}" for r in logged]
    return line


def assert_no_outputs(out: Path) -> None:
    assert not (out / "accepted.parquet").exists() and not (out / "quarantined.parquet").exists()


def reasons_by_row(quarantined: pd.DataFrame) -> dict[int, list[str]]:
    return {int(r): [str(x) for x in reasons] for r, reasons in zip(quarantined["row_number"], quarantined["reasons"])}


def assert_completed(result, out: Path, n_rows: int = N_ROWS) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert_conserved(out, n_rows)
    accepted, quarantined, _, summary = read_outputs(out)
    return accepted, quarantined, summary


def assert_whole_batch_held(out: Path, *needles: str) -> dict:
    accepted, quarantined, _, summary = read_outputs(out)
    assert accepted.empty and len(quarantined) == N_ROWS
    assert summary["batch_findings"], summary
    assert summary["detectors_skipped"] is True
    for needle in needles:
        assert any(needle in f["message"] for f in summary["batch_findings"]), (needle, summary["batch_findings"])
        assert all(any(needle in r for r in reasons) for reasons in reasons_by_row(quarantined).values())
    return summary


# --- 1. missing file -----------------------------------------------------------------------------


def test_missing_batch_file(scan_sample, tmp_path, caplog):
    result, out = scan_sample(tmp_path / "nowhere.csv")
    assert_clean_error(result, caplog, "does not exist", "nowhere.csv")
    assert_no_outputs(out)


def test_missing_batch_file_through_the_console_script(tmp_path):
    """The only subprocess test: the installed entry point, real stderr, real exit code."""
    script = Path(sys.executable).parent / "poisonguard"
    proc = subprocess.run(
        [
            str(script),
            "scan",
            str(tmp_path / "nowhere.csv"),
            "--reference",
            str(SAMPLES / "reference.parquet"),
            "--label",
            "deny",
            "--out",
            str(tmp_path / "out"),
            "--workspace",
            str(tmp_path / "ws"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("poisonguard: error:"), proc.stderr
    assert "does not exist" in lines[0]
    assert not (tmp_path / "out").exists()


# --- 2-4. empty, header only, not CSV at all -------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"\n\n"], ids=["zero-bytes", "blank-lines"])
def test_empty_file(scan_sample, tmp_path, caplog, content):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    result, out = scan_sample(path)
    assert_clean_error(result, caplog, "empty")
    assert_no_outputs(out)


def test_header_only(scan_sample, tmp_path, caplog):
    path = tmp_path / "header.csv"
    path.write_text(CLEAN.read_text().splitlines()[0] + "\n")
    result, out = scan_sample(path)
    assert_clean_error(result, caplog, "no rows")
    assert_no_outputs(out)


PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00"


@pytest.mark.parametrize(
    "content, needle",
    [
        (random.Random(7).randbytes(4096), "binary"),
        (PNG_HEADER + random.Random(8).randbytes(512), "binary"),
        (bytes(range(0x80, 0x100)) * 16, "UTF-8"),  # no NUL byte: caught as non-UTF-8 text
    ],
    ids=["random-bytes", "png-header", "high-bytes-no-nul"],
)
def test_non_csv_bytes_with_csv_suffix(scan_sample, tmp_path, caplog, content, needle):
    path = tmp_path / "image.csv"
    path.write_bytes(content)
    result, out = scan_sample(path)
    line = assert_clean_error(result, caplog, needle)
    assert line.isprintable()  # hostile bytes are not echoed to the terminal
    assert_no_outputs(out)


# --- 5. wrong delimiter ----------------------------------------------------------------------------


@pytest.mark.parametrize("sep", [";", "\t"], ids=["semicolon", "tab"])
def test_wrong_delimiter_is_named(scan_sample, tmp_path, caplog, sep):
    path = write_csv(clean_text(), tmp_path / "semi.csv", sep=sep)
    result, out = scan_sample(path)
    assert_clean_error(result, caplog, f"{sep!r}-separated")
    assert_no_outputs(out)


# --- 6-7. bad cells in numeric columns -------------------------------------------------------------

TEXT_ROWS = [5, 17, 99]


def test_text_in_numeric_cells_quarantines_exactly_those_rows(scan_sample, tmp_path):
    frame = clean_text()
    frame.loc[TEXT_ROWS, "pirat"] = "abc"
    result, out = scan_sample(write_csv(frame, tmp_path / "text_cells.csv"))
    _, quarantined, summary = assert_completed(result, out)
    assert not summary["batch_findings"]
    reasons = reasons_by_row(quarantined)
    assert set(TEXT_ROWS) <= set(reasons)
    for row in TEXT_ROWS:
        assert any("pirat='abc' is not a number" in r for r in reasons[row]), reasons[row]
        assert not any("pirat is missing" in r for r in reasons[row]), reasons[row]  # no echo of NaN
    not_a_number = {row for row, rs in reasons.items() if any("is not a number" in r for r in rs)}
    assert not_a_number == set(TEXT_ROWS)
    assert len(set(reasons) - set(TEXT_ROWS)) <= 0.05 * N_ROWS  # a few detector flags at most


BAD_CELLS = {  # row -> (column, text written into the cell, expected reason)
    3: ("pirat", "inf", "pirat=inf is not a finite number"),
    8: ("lvrat", "-inf", "lvrat=-inf is not a finite number"),
    12: ("unemp", "", "unemp is missing"),
    20: ("hirat", "nan", "hirat is missing"),
    31: ("chist", "NaN", "chist is missing"),
}


def test_nan_and_inf_cells_quarantine_exactly_those_rows(scan_sample, tmp_path):
    frame = clean_text()
    for row, (col, text, _) in BAD_CELLS.items():
        frame.loc[row, col] = text
    result, out = scan_sample(write_csv(frame, tmp_path / "non_finite.csv"))
    _, quarantined, summary = assert_completed(result, out)
    assert not summary["batch_findings"]
    reasons = reasons_by_row(quarantined)
    for row, (col, _, expected) in BAD_CELLS.items():
        assert row in reasons, row
        assert any(expected in r for r in reasons[row]), (row, reasons[row])
        if "finite" in expected:  # the inf cell is not reported a second time as missing
            assert not any(f"{col} is missing" in r for r in reasons[row]), (row, reasons[row])
    finite_or_missing = {
        row for row, rs in reasons.items() if any("not a finite number" in r or "is missing" in r for r in rs)
    }
    assert finite_or_missing == set(BAD_CELLS)
    assert len(set(reasons) - set(BAD_CELLS)) <= 0.05 * N_ROWS


# --- 8. duplicated column names --------------------------------------------------------------------


def test_duplicated_column_name_is_named(scan_sample, tmp_path, caplog):
    lines = CLEAN.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace("hschool", "pirat")
    path = tmp_path / "dup_columns.csv"
    path.write_text("".join(lines))
    result, out = scan_sample(path)
    assert_clean_error(result, caplog, "duplicated column", "'pirat'")
    assert_no_outputs(out)


# --- 9-11. missing and unexpected columns ----------------------------------------------------------


@pytest.mark.parametrize("suite", [SUITE, None], ids=["hmda-suite", "inferred-suite"])
def test_label_missing_from_batch_holds_the_whole_batch(scan_sample, tmp_path, suite):
    path = write_csv(clean_text().drop(columns=["deny"]), tmp_path / "no_label.csv")
    result, out = scan_sample(path, suite=suite)
    assert_completed(result, out)
    summary = assert_whole_batch_held(out, "missing column(s) 'deny'")
    # the root cause comes first, and GX's follow-on "could not be evaluated" errors are dropped
    assert summary["batch_findings"][0]["reason_code"] == "missing_column"
    assert not any("could not be evaluated" in f["message"] and "deny" in f["check"] for f in summary["batch_findings"]), (
        summary["batch_findings"]
    )


def test_label_missing_from_reference(scan_sample, tmp_path, caplog):
    reference = tmp_path / "reference_no_label.parquet"
    pd.read_parquet(SAMPLES / "reference.parquet").drop(columns=["deny"]).to_parquet(reference, index=False)
    result, out = scan_sample(CLEAN, "--reference", str(reference), suite=None)
    assert_clean_error(result, caplog, "label column 'deny'", "reference")
    assert_no_outputs(out)


def test_unknown_extra_column_holds_the_whole_batch(scan_sample, tmp_path):
    frame = clean_text()
    frame.insert(3, "promo_score", [str(i % 7) for i in range(N_ROWS)])  # numeric, mid-table
    result, out = scan_sample(write_csv(frame, tmp_path / "extra.csv"))
    assert_completed(result, out)
    summary = assert_whole_batch_held(out, "unexpected column(s) 'promo_score'")
    assert any(f["reason_code"] == "unexpected_column" for f in summary["batch_findings"])


# --- 12. broken suites -----------------------------------------------------------------------------


def test_suite_that_is_not_json(scan_sample, tmp_path, caplog):
    suite = tmp_path / "broken.json"
    suite.write_text(SUITE.read_text()[:200])
    result, out = scan_sample(CLEAN, suite=suite)
    assert_clean_error(result, caplog, "not valid JSON", "broken.json")
    assert_no_outputs(out)


def _suite_with_unknown_type(tmp_path: Path) -> Path:
    text = SUITE.read_text()
    assert text.count('"expect_column_values_to_not_be_null"') >= 1
    suite = tmp_path / "unknown_type.json"
    suite.write_text(text.replace('"expect_column_values_to_not_be_null"', '"expect_column_values_to_be_purple"', 1))
    return suite


def test_suite_with_unknown_expectation_type_exits_2(scan_sample, tmp_path):
    """Exit code and final message; the next test checks that GX logs no traceback first."""
    result, out = scan_sample(CLEAN, suite=_suite_with_unknown_type(tmp_path))
    assert result.exit_code == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("poisonguard: error:"), result.stderr
    assert "unknown expectation type(s): expect_column_values_to_be_purple" in last
    assert_no_outputs(out)


def test_suite_with_unknown_expectation_type_logs_no_traceback(scan_sample, tmp_path, caplog):
    result, _ = scan_sample(CLEAN, suite=_suite_with_unknown_type(tmp_path))
    assert_clean_error(result, caplog, "unknown expectation type")


@pytest.mark.parametrize(
    "document",
    ['["not", "an", "object"]', '{"name": "x", "expectations": [{"kwargs": {}}]}'],
    ids=["json-list", "expectation-without-type"],
)
def test_suite_json_of_the_wrong_shape(scan_sample, tmp_path, caplog, document):
    suite = tmp_path / "shape.json"
    suite.write_text(document)
    result, out = scan_sample(CLEAN, suite=suite)
    assert_clean_error(result, caplog, "suite")
    assert_no_outputs(out)


# --- 13. a numeric column of text ------------------------------------------------------------------


def test_numeric_column_of_text_is_a_wrong_type_for_the_whole_batch(scan_sample, tmp_path):
    frame = clean_text()
    frame["pirat"] = "high"
    result, out = scan_sample(write_csv(frame, tmp_path / "text_column.csv"))
    assert_completed(result, out)
    summary = assert_whole_batch_held(out, "column 'pirat' holds")
    wrong_type = [f for f in summary["batch_findings"] if f["reason_code"] == "wrong_type"]
    assert wrong_type and all("'pirat'" in f["message"] for f in wrong_type), summary["batch_findings"]
    assert "the suite expects" in wrong_type[0]["message"]


def test_numeric_column_of_dates_is_a_wrong_type_for_the_whole_batch(scan_sample, tmp_path):
    import datetime as dt

    frame = pd.read_parquet(SAMPLES / "batch_05_clean.parquet")
    frame["pirat"] = pd.Timestamp(dt.datetime(2020, 1, 1))
    path = tmp_path / "date_column.parquet"
    frame.to_parquet(path, index=False)
    result, out = scan_sample(path)
    accepted, _quarantined, summary = assert_completed(result, out, n_rows=len(frame))
    assert accepted.empty
    assert any(f["reason_code"] == "wrong_type" and "'pirat'" in f["message"] for f in summary["batch_findings"]), summary[
        "batch_findings"
    ]


# --- 14-15. unsupported suffix, broken Parquet -----------------------------------------------------


@pytest.mark.parametrize("suffix", [".xlsx", ".json", ""], ids=["xlsx", "json", "no-suffix"])
def test_unsupported_suffix(scan_sample, tmp_path, caplog, suffix):
    path = tmp_path / f"batch{suffix}"
    path.write_bytes(CLEAN.read_bytes())
    result, out = scan_sample(path)
    assert_clean_error(result, caplog, f"suffix '{suffix}'", ".csv and .parquet")
    assert_no_outputs(out)


def _truncated_parquet(path: Path) -> None:
    full = path.with_name("full.parquet")
    pd.read_csv(CLEAN).to_parquet(full, index=False)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "make", [_truncated_parquet, lambda p: p.write_bytes(CLEAN.read_bytes())], ids=["truncated", "csv-named-parquet"]
)
def test_broken_parquet(scan_sample, tmp_path, caplog, make):
    path = tmp_path / "batch.parquet"
    make(path)
    result, out = scan_sample(path)
    assert_clean_error(result, caplog, "could not be read as Parquet")
    assert_no_outputs(out)


# --- 16. dataset names that would escape the workspace ---------------------------------------------


@pytest.mark.parametrize("dataset", ["../evil", "..", "a/../../evil", "/tmp/evil", ".hidden"])
def test_dataset_name_cannot_escape_the_workspace(scan_sample, tmp_path, caplog, dataset):
    result, out = scan_sample(CLEAN, dataset=dataset)
    assert_clean_error(result, caplog, "dataset name", repr(dataset))
    assert_no_outputs(out)
    assert not list(tmp_path.rglob("evil")) and not list(tmp_path.rglob(".hidden"))
    assert not (REPO / "evil").exists()


# --- extra: structural damage found while writing these -------------------------------------------


def test_ragged_row(scan_sample, tmp_path, caplog):
    lines = CLEAN.read_text().splitlines(keepends=True)
    lines[42] = lines[42].rstrip("\n") + ",surplus\n"
    path = tmp_path / "ragged.csv"
    path.write_text("".join(lines))
    result, out = scan_sample(path)
    assert_clean_error(result, caplog, "could not be read as CSV", "expected 14 columns, got 15")
    assert_no_outputs(out)


def test_reserved_column_name(scan_sample, tmp_path, caplog):
    frame = clean_text().rename(columns={"hschool": "row_number"})
    result, out = scan_sample(write_csv(frame, tmp_path / "reserved.csv"))
    assert_clean_error(result, caplog, "'row_number'", "reserves")
    assert_no_outputs(out)


def test_a_missing_option_is_a_usage_error_in_one_line_not_an_internal_error(run_cli, tmp_path):
    result = run_cli(
        "scan",
        SAMPLES / "batch_01_clean.csv",
        "--reference",
        SAMPLES / "reference.parquet",
        "--out",
        tmp_path / "out",
        "--workspace",
        tmp_path / "ws",
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["poisonguard: error: Missing option '--label'."]
    assert not (tmp_path / "ws" / "logs").exists()


def test_an_internal_error_is_one_line_and_its_traceback_goes_to_the_given_workspace(run_cli, monkeypatch, tmp_path):
    import pipeline.cli

    def broken(**_):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(pipeline.cli, "run_scan", broken)
    result = run_cli(
        "scan",
        SAMPLES / "batch_01_clean.csv",
        "--reference",
        SAMPLES / "reference.parquet",
        "--label",
        "deny",
        "--out",
        tmp_path / "out",
        "--workspace",
        tmp_path / "ws",
    )
    assert result.exit_code == 1
    log = tmp_path / "ws" / "logs" / "last-error.txt"
    assert result.stderr.strip().splitlines() == [
        f"poisonguard: internal error: RuntimeError: a bug, not bad input (details in {log})"
    ]
    assert "Traceback" in log.read_text() and "a bug, not bad input" in log.read_text()
