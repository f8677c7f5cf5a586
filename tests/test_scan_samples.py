"""End-to-end scans of the committed samples through the CLI: outputs, conservation, detections."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from tests.conftest import SAMPLES, assert_conserved, read_outputs

GROUND_TRUTH = pd.read_csv(SAMPLES / "ground_truth.csv")


def truth(batch: str, *attacks: str) -> set[int]:
    rows = GROUND_TRUTH[GROUND_TRUTH["batch"] == batch]
    if attacks:
        rows = rows[rows["attack"].isin(attacks)]
    return set(rows["row_number"])


@pytest.mark.parametrize("batch", sorted(p.name for p in SAMPLES.glob("batch_*")))
def test_every_sample_row_lands_in_exactly_one_output(scan_sample, batch):
    result, out = scan_sample(SAMPLES / batch)
    assert result.exit_code == 0, result.stderr
    n_rows = len(pd.read_parquet(SAMPLES / batch) if batch.endswith(".parquet") else pd.read_csv(SAMPLES / batch))
    assert_conserved(out, n_rows)
    assert (out / "report.html").read_text().startswith("<!doctype html>")


def test_impossible_records_are_quarantined_with_the_rule_as_reason(scan_sample):
    batch = "batch_03_impossible_and_outliers.csv"
    result, out = scan_sample(SAMPLES / batch)
    assert result.exit_code == 0
    _, quarantined, _, _ = read_outputs(out)
    held = set(quarantined["row_number"])
    assert truth(batch, "impossible", "natural_impossible") <= held
    integrity = quarantined[quarantined["reasons"].map(lambda r: any("cannot exceed" in x for x in r))]
    assert set(integrity["row_number"]) >= truth(batch, "natural_impossible")


def test_injected_outliers_are_flagged_by_the_outlier_detector(scan_sample):
    batch = "batch_03_impossible_and_outliers.csv"
    _, out = scan_sample(SAMPLES / batch)
    _, quarantined, scores, _ = read_outputs(out)
    outliers = truth(batch, "outlier")
    by_detector = set(
        quarantined.loc[quarantined["reasons"].map(lambda r: any(x.startswith("outlier") for x in r)), "row_number"]
    )
    assert len(outliers & by_detector) >= 5
    clean = scores[~scores["row_number"].isin(truth(batch))]
    assert clean["quarantined"].mean() <= 0.05


def test_extra_column_quarantines_the_whole_batch_with_the_column_named(scan_sample):
    result, out = scan_sample(SAMPLES / "batch_04_extra_column.csv")
    assert result.exit_code == 0
    accepted, quarantined, _, summary = read_outputs(out)
    assert accepted.empty and len(quarantined) == 120
    assert "referral_code" in summary["batch_findings"][0]["message"]
    assert all(any("referral_code" in r for r in reasons) for reasons in quarantined["reasons"])


def test_clean_batch_is_mostly_accepted(scan_sample):
    result, out = scan_sample(SAMPLES / "batch_01_clean.csv")
    _, _quarantined, _, summary = read_outputs(out)
    assert summary["counts"]["quarantined"] <= 0.03 * summary["counts"]["rows"]
    assert summary["verdict"]["poisoned"] is False and summary["verdict"]["p_value"] > 0.01
    assert result.stdout.lstrip().startswith("Verdict: clean")


def test_the_label_flip_batch_is_called_poisoned_first_in_the_cli_and_the_report(scan_sample):
    """40 of 140 labels flipped: too few stand out one by one (HMDA's label is weakly predictable),
    but the batch as a whole is poisoned, and the estimate's interval holds the true count."""
    batch = "batch_02_label_flips.csv"
    result, out = scan_sample(SAMPLES / batch)
    _, quarantined, _, summary = read_outputs(out)
    verdict = summary["verdict"]
    assert verdict["poisoned"] is True and verdict["p_value"] < 0.01
    flips = truth(batch)
    assert verdict["interval"][0] <= len(flips) <= verdict["interval"][1]
    assert verdict["by_kind"]["label_flips"]["estimated_rows"] >= len(flips) / 2
    assert result.stdout.lstrip().startswith("Verdict: POISONED")
    held = set(quarantined["row_number"])
    assert len(held & flips) >= len(flips) / 2 and len(held - flips) <= 0.05 * (140 - len(flips))
    report = (out / "report.html").read_text()
    assert report.index(verdict["headline"].split(":")[0] + ": POISONED") < report.index("<h2>Outcome</h2>")


def test_rescanning_the_same_bytes_ingests_nothing_twice(scan_sample, tmp_path):
    batch = SAMPLES / "batch_01_clean.csv"
    _first, out = scan_sample(batch, dataset="dedupe")
    summary_first = read_outputs(out)[3]
    second, _out_again = scan_sample(batch, "--out", str(tmp_path / "again"), dataset="dedupe")
    assert second.exit_code == 0
    assert "already scanned" in second.stdout
    again = read_outputs(tmp_path / "again")
    assert again[3]["mlflow"]["run_id"] == summary_first["mlflow"]["run_id"]
    assert again[3]["duplicate"] is True
    assert len(list((tmp_path / "ws" / "datasets" / "dedupe" / "batches").iterdir())) == 1


def test_a_source_whose_quarantine_rate_jumps_raises_an_alarm(scan_sample):
    first, _ = scan_sample(SAMPLES / "batch_01_clean.csv", "--source", "partner-a", dataset="history")
    assert first.exit_code == 0 and "alarm" not in first.stdout  # no history yet: nothing to compare
    second, out = scan_sample(SAMPLES / "batch_03_impossible_and_outliers.csv", "--source", "partner-a", dataset="history")
    summary = read_outputs(out)[3]
    alarms = {a["check"]: a for a in summary["alarms"]}
    assert "source_history" in alarms
    assert f"{summary['counts']['quarantined']}/140 rows quarantined" in alarms["source_history"]["message"]
    assert "alarm: source 'partner-a'" in second.stdout
    assert "source_history" in (out / "report.html").read_text()


def test_relabelling_one_segment_raises_a_segment_alarm_with_the_rates(scan_sample, tmp_path):
    batch = pd.read_parquet(SAMPLES / "holdout.parquet")
    batch.loc[batch["afam"] == "yes", "deny"] = "yes"
    path = tmp_path / "afam_relabelled.csv"
    batch.to_csv(path, index=False)
    result, out = scan_sample(path)
    assert result.exit_code == 0, result.stderr
    summary = read_outputs(out)[3]
    segment = [a for a in summary["alarms"] if a["check"] == "segment_shift"]
    assert segment and "afam='yes'" in segment[0]["message"] and "rate 1.00 in the batch" in segment[0]["message"]
    shifted = [r for r in summary["batch_checks"]["segment_shift"] if r["shifted"]]
    assert [(r["segment"], r["value"]) for r in shifted] == [("afam", "yes")]


def test_progress_prints_one_line_per_stage_with_rows_per_second(scan_sample):
    result, _out = scan_sample(SAMPLES / "batch_05_clean.parquet", "--progress")
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("poisonguard: ")]
    stages = [line.split()[1] for line in lines]
    assert stages == [
        "ingested",
        "trusted",
        "run",
        "batch",
        "validated",
        "detectors",
        "scored",
        "batch",
        "decided",
        "impact",
        "outputs",
        "results",
        "delivered",
    ]
    assert all(re.search(r" 40 rows .* rows/s   peak \d+\.\d\d GiB$", line) for line in lines), lines
    quiet, _ = scan_sample(SAMPLES / "batch_01_clean.csv", "--no-progress")
    assert quiet.exit_code == 0 and "rows/s" not in quiet.stderr
