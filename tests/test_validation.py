"""Suites: inference from trusted data, loading, conforming types, row- and batch-level findings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import SuiteError
from pipeline.io import ROW_NUMBER
from pipeline.validation import column_kinds, conform, infer_suite, load_suite, validate
from tests.conftest import SAMPLES, SUITE


@pytest.fixture(scope="module")
def reference():
    return pd.read_parquet(SAMPLES / "reference.parquet")


def _numbered(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.reset_index(drop=True).copy()
    frame[ROW_NUMBER] = range(len(frame))
    return frame


def test_inferred_suite_accepts_the_data_it_came_from(reference):
    suite = infer_suite(reference, "deny", "hmda")
    conformed, type_findings = conform(_numbered(reference), column_kinds(reference))
    outcome = validate(conformed, suite)
    assert type_findings.empty and outcome.row_findings.empty and not outcome.batch_findings


def test_inferred_ranges_have_margin_and_stay_non_negative(reference):
    suite = infer_suite(reference, "deny", "hmda", range_margin=0.1)
    between = {
        e["kwargs"]["column"]: e["kwargs"]
        for e in suite.document["expectations"]
        if e["type"] == "expect_column_values_to_be_between"
    }
    lo, hi = reference["unemp"].min(), reference["unemp"].max()
    assert between["unemp"]["min_value"] == pytest.approx(lo - 0.1 * (hi - lo), rel=1e-4)
    assert between["unemp"]["max_value"] == pytest.approx(hi + 0.1 * (hi - lo), rel=1e-4)
    assert between["hirat"]["min_value"] == 0.0  # reference min is 0: never a negative ratio
    domains = {
        e["kwargs"]["column"]: e["kwargs"]["value_set"]
        for e in suite.document["expectations"]
        if e["type"] == "expect_column_values_to_be_in_set"
    }
    assert domains["deny"] == ["no", "yes"]


def test_row_level_failures_name_the_rows_and_the_rule(reference):
    batch = _numbered(reference.head(50))
    batch.loc[3, "pirat"] = 40.0  # out of range
    batch.loc[5, "deny"] = "maybe"  # not in the label domain
    batch.loc[8, ["pirat", "hirat"]] = [0.2, 0.9]  # integrity: housing > total debt
    conformed, _ = conform(batch, column_kinds(reference))
    outcome = validate(conformed, load_suite(SUITE))
    by_row = outcome.row_findings.groupby(ROW_NUMBER)["message"].apply(list).to_dict()
    assert set(by_row) == {3, 5, 8}
    assert any("pirat=40" in m for m in by_row[3])
    assert any("deny='maybe'" in m for m in by_row[5])
    assert any("cannot exceed" in m for m in by_row[8])
    assert not outcome.batch_findings


def test_schema_failures_hold_the_batch(reference):
    batch = _numbered(reference.head(20)).drop(columns=["lvrat"])
    batch["extra"] = 1
    conformed, _ = conform(batch, column_kinds(reference))
    outcome = validate(conformed, load_suite(SUITE))
    messages = " ".join(f.message for f in outcome.batch_findings)
    assert "'lvrat'" in messages and "'extra'" in messages


def test_conform_records_text_in_numeric_cells_and_infinities(reference):
    batch = _numbered(reference.head(10)).astype({"pirat": object})
    batch.loc[2, "pirat"] = "abc"
    batch.loc[4, "lvrat"] = np.inf
    conformed, findings = conform(batch, column_kinds(reference))
    assert findings.set_index(ROW_NUMBER)["reason_code"].to_dict() == {2: "not_a_number", 4: "non_finite"}
    assert np.isnan(conformed.loc[2, "pirat"]) and np.isnan(conformed.loc[4, "lvrat"])
    assert conformed["pirat"].dtype == np.float64


def test_mostly_text_numeric_column_is_left_for_the_type_check(reference):
    batch = _numbered(reference.head(10)).astype({"chist": object})
    batch["chist"] = "high"
    conformed, findings = conform(batch, column_kinds(reference))
    outcome = validate(conformed, load_suite(SUITE))
    assert findings.empty
    assert any(f.reason_code.value == "wrong_type" and "'chist'" in f.message for f in outcome.batch_findings)


@pytest.mark.parametrize(
    "content,match",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"name": "x"}), "no 'expectations' list"),
        (json.dumps({"name": "x", "expectations": [{"type": "expect_nonsense", "kwargs": {}}]}), "unknown expectation"),
        (
            json.dumps(
                {"name": "x", "expectations": [{"type": "expect_column_values_to_be_between", "kwargs": {"colum": "a"}}]}
            ),
            r"invalid expectation: expectations\[0\] \(expect_column_values_to_be_between\)\.kwargs\.column: field required",
        ),
        (
            json.dumps(
                {
                    "name": "x",
                    "expectations": [
                        {"type": "expect_column_to_exist", "kwargs": {"column": "a"}},
                        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "a", "min_value": "low"}},
                    ],
                }
            ),
            r"expectations\[1\] \(expect_column_values_to_be_between\)\.kwargs\.min_value: value is not a valid float",
        ),
        (
            json.dumps({"name": "x", "meta": {"poisonguard": {"protected": "afam"}}, "expectations": []}),
            r"meta\.poisonguard\.protected must be a list of column names",
        ),
        (json.dumps({"name": "x", "meta": [], "expectations": []}), "meta must be an object"),
        (
            json.dumps(
                {
                    "name": "x",
                    "expectations": [
                        {
                            "type": "expect_column_values_to_be_between",
                            "kwargs": {"column": "a", "min_value": 5, "max_value": 1},
                        }
                    ],
                }
            ),
            r"expectations\[0\] \(expect_column_values_to_be_between\): kwargs\.min_value \(5\) is greater than "
            r"kwargs\.max_value \(1\)",
        ),
    ],
)
def test_bad_suites_fail_with_the_file_named(tmp_path, content, match):
    path = tmp_path / "suite.json"
    path.write_text(content)
    with pytest.raises(SuiteError, match=match) as info:
        load_suite(path)
    assert str(path) in str(info.value)


def test_committed_hmda_suite_has_a_cross_column_integrity_rule():
    suite = load_suite(SUITE)
    pair = [e for e in suite.document["expectations"] if "column_A" in e["kwargs"]]
    assert pair and pair[0]["meta"]["rule_id"] == "housing_within_total_debt"
    assert suite.protected_columns == ("afam",)
