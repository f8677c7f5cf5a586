"""Batch-level alarms: drift, segment label-rate shift and source history, on real HMDA splits
with planted shifts and on synthetic data with known truth."""

from __future__ import annotations

import copy
import functools
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.exceptions import NotFittedError

from pipeline.alarms import BatchDrift, SegmentShift, SourceRecord, source_history
from pipeline.alarms.drift import psi
from pipeline.detectors import FeatureSpec
from pipeline.validation import column_kinds

HMDA = Path("/work/shared/datasets/hmda.parquet")
LABEL = "deny"
SEGMENT = "afam"


@pytest.fixture(scope="module")
def hmda() -> pd.DataFrame:
    return pd.read_parquet(HMDA)


@pytest.fixture(scope="module")
def spec(hmda) -> FeatureSpec:
    # afam is the protected attribute: a segment, never a model feature
    return FeatureSpec.from_kinds(column_kinds(hmda), LABEL, exclude=(SEGMENT,))


def split(frame: pd.DataFrame, seed: int, n_reference: int = 1500, n_batch: int = 400):
    order = np.random.default_rng(seed).permutation(len(frame))
    return (
        frame.iloc[order[:n_reference]].reset_index(drop=True),
        frame.iloc[order[n_reference : n_reference + n_batch]].reset_index(drop=True),
    )


@pytest.fixture(scope="module")
def clean(hmda):
    return split(hmda, seed=0)


def _moved(result) -> list[str]:
    return result.table.loc[result.table["moved"], "column"].tolist()


# --- BatchDrift ---------------------------------------------------------------------------------------


def test_drift_is_quiet_on_a_clean_split_and_tests_every_column_once(clean, spec):
    reference, batch = clean
    result = BatchDrift().fit(reference, spec).check(batch)
    assert result.alarm is None
    assert not result.table["moved"].any()
    # 6 numeric + 6 categorical features + the label; afam (excluded) is not among them
    assert sorted(result.table["column"]) == sorted([*spec.features, LABEL])
    assert len(result.table) == 13 and SEGMENT not in set(result.table["column"])
    assert result.table.set_index("column").loc[list(spec.numeric), "test"].eq("KS").all()
    assert result.table.set_index("column").loc[[*spec.categorical, LABEL], "test"].eq("chi-square").all()
    assert result.table["is_label"].sum() == 1


def test_drift_names_a_scaled_feature_first(clean, spec):
    reference, batch = clean
    batch = batch.assign(lvrat=batch["lvrat"] * 1.5)
    result = BatchDrift().fit(reference, spec).check(batch)
    assert result.alarm is not None
    assert _moved(result) == ["lvrat"]
    assert result.table["column"].iloc[0] == "lvrat"
    assert result.alarm.details[0]["column"] == "lvrat"
    assert result.alarm.message.startswith("batch drift: 1 of 13 columns moved against the reference: lvrat (PSI ")
    assert result.alarm.pvalue == result.table["pvalue_adjusted"].iloc[0] <= 0.01


def test_drift_names_a_shifted_label_mix(clean, spec):
    reference, batch = clean
    batch = batch.copy()
    no = batch.index[batch[LABEL] == "no"]
    flipped = np.random.default_rng(1).choice(no, size=int(0.3 * len(no)), replace=False)
    batch.loc[flipped, LABEL] = "yes"
    result = BatchDrift().fit(reference, spec).check(batch)
    assert result.alarm is not None
    assert _moved(result) == [LABEL]  # relabelling leaves every feature where it was
    assert result.alarm.details[0]["is_label"]
    assert f"label {LABEL} (PSI" in result.alarm.message
    share = (batch[LABEL] == "yes").mean()
    assert f"share of 'yes' {share:.3f}" in result.alarm.message


def _synthetic(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({"x": rng.normal(shift, 1.0, size=n), "y": rng.choice(["a", "b"], size=n)})


def test_drift_needs_an_effect_size_not_only_significance():
    """A 0.1 sd shift on 200,000 rows: KS D ≈ 0.04, p ≈ 0 after Bonferroni, but PSI ≈ shift² ≈ 0.01
    is far below the 0.1 'moderate shift' line, so no alarm; with min_psi = 0 the same batch alarms."""
    rng = np.random.default_rng(3)
    spec = FeatureSpec(label="y", numeric=("x",), categorical=())
    reference, batch = _synthetic(rng, 20_000), _synthetic(rng, 200_000, shift=0.1)
    result = BatchDrift().fit(reference, spec).check(batch)
    x = result.table.set_index("column").loc["x"]
    assert x["pvalue_adjusted"] < 1e-12
    assert x["psi"] < 0.03
    assert result.alarm is None
    assert _moved(BatchDrift(min_psi=0.0).fit(reference, spec).check(batch)) == ["x"]


def test_drift_bonferroni_counts_only_the_columns_tested(clean, spec):
    reference, batch = clean
    result = BatchDrift().fit(reference, spec).check(batch.drop(columns=["lvrat", "phist"]))
    assert len(result.table) == 11 and not {"lvrat", "phist"} & set(result.table["column"])
    np.testing.assert_allclose(result.table["pvalue_adjusted"], np.minimum(1.0, 11 * result.table["pvalue"]))


def test_psi_hand_computed():
    # batch 80/20 over two equal reference bins, n = 100, smoothed by 0.5 per bin:
    # b = (80.5/101, 20.5/101) = (0.79703, 0.20297); PSI = Σ (b − r) ln(b / r)
    #   = 0.29703 · ln(1.59406) + (−0.29703) · ln(0.40594) = 0.29703 · (0.46628 + 0.90155) = 0.40629
    assert psi(np.array([0.5, 0.5]), np.array([0.8, 0.2]), 100) == pytest.approx(0.40629, abs=1e-4)
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5]), 100) == pytest.approx(0.0, abs=1e-12)


def test_checks_refuse_to_run_before_fit_and_never_write_to_self(clean, spec):
    reference, batch = clean
    for check in (BatchDrift(), SegmentShift()):
        with pytest.raises(NotFittedError):
            check.check(batch)
        check.fit(reference, spec, (SEGMENT,))
        before = pickle.dumps(copy.deepcopy(vars(check)))
        check.check(batch)
        assert pickle.dumps(vars(check)) == before


def test_ks_part_of_drift_is_calibrated_even_with_a_small_reference():
    """KS is a two-sample test, so the reference's own sampling noise is accounted for: on clean
    draws (reference 100, batch 2,000) a column is significant with probability <= alpha = 0.01.
    200 draws → Binomial(200, ≤ 0.01), mean ≤ 2; ≤ 6 holds with probability > 0.995."""
    rng = np.random.default_rng(4)
    spec = FeatureSpec(label="y", numeric=("x",), categorical=())
    significant = 0
    for _ in range(200):
        table = BatchDrift().fit(_synthetic(rng, 100), spec).check(_synthetic(rng, 2000)).table
        significant += bool((table.loc[table["column"] == "x", "pvalue_adjusted"] <= 0.01).any())
    assert significant <= 6


def _categorical(rng: np.random.Generator, n: int) -> pd.DataFrame:
    levels, shares = list("abcdef"), [0.3, 0.25, 0.2, 0.1, 0.1, 0.05]
    return pd.DataFrame({"c": rng.choice(levels, size=n, p=shares), "y": rng.choice(["no", "yes"], size=n, p=[0.85, 0.15])})


@functools.cache  # both tests below read the same 200 runs
def _categorical_runs(n_runs: int = 200):
    rng = np.random.default_rng(5)
    spec = FeatureSpec(label="y", numeric=(), categorical=("c",))
    return [BatchDrift().fit(_categorical(rng, 100), spec).check(_categorical(rng, 2000)) for _ in range(n_runs)]


def test_chi_square_part_of_drift_is_calibrated_even_with_a_small_reference():
    """Same bound as for KS: clean draws, reference 100, batch 2,000, family-wise alpha 0.01 over
    the 2 columns → at most 6 of 200 draws with a significant column. A goodness-of-fit test
    against the reference's shares (treating them as exact) gave 200 of 200, with p-values like
    1e-46; the two-sample homogeneity test gives 0."""
    significant = sum(bool((r.table["pvalue_adjusted"] <= 0.01).any()) for r in _categorical_runs())
    assert significant <= 6


def test_drift_false_alarm_rate_with_a_small_reference_is_at_most_alpha():
    """An alarm needs significance, so a valid test keeps false alarms <= alpha = 0.01: at most 6 of
    200 clean draws (see above). The goodness-of-fit version raised 20 of 200: the PSI line did
    not save it."""
    alarms = sum(r.alarm is not None for r in _categorical_runs())
    assert alarms <= 6


# --- SegmentShift -------------------------------------------------------------------------------------


def _rate(frame: pd.DataFrame, value: str) -> tuple[int, int]:
    rows = frame[frame[SEGMENT] == value]
    return int((rows[LABEL] == "yes").sum()), len(rows)


def test_segment_shift_names_a_relabelled_group_with_both_rates(clean, spec):
    reference, batch = clean
    batch = batch.copy()
    group = batch.index[batch[SEGMENT] == "yes"]
    relabelled = np.random.default_rng(2).choice(group, size=len(group) // 2, replace=False)
    batch.loc[relabelled, LABEL] = "yes"
    result = SegmentShift().fit(reference, spec, (SEGMENT,)).check(batch)
    assert result.alarm is not None
    hits, n = _rate(batch, "yes")
    ref_hits, ref_n = _rate(reference, "yes")
    assert hits / n > ref_hits / ref_n + 0.25  # the planted shift is large
    message = result.alarm.message
    assert f"{SEGMENT}='yes': {LABEL}='yes' rate {hits / n:.2f} in the batch ({hits}/{n})" in message
    assert f"vs {ref_hits / ref_n:.2f} in the reference" in message
    assert [(d["segment"], d["value"], d["label"]) for d in result.alarm.details] == [(SEGMENT, "yes", "yes")]
    assert "afam='no'" not in message  # the untouched group is not blamed


def test_segment_shift_is_two_sided(clean, spec):
    reference, batch = clean
    batch = batch.copy()
    batch.loc[batch[SEGMENT] == "yes", LABEL] = "no"  # nobody in the group denied: a drop from ~29 %
    result = SegmentShift().fit(reference, spec, (SEGMENT,)).check(batch)
    assert result.alarm is not None and result.alarm.details[0]["value"] == "yes"
    assert result.alarm.details[0]["rate"] == 0.0


def test_segment_shift_is_quiet_on_a_clean_split(clean, spec):
    reference, batch = clean
    result = SegmentShift().fit(reference, spec, (SEGMENT,)).check(batch)
    assert result.alarm is None
    # two groups, one tested label: deny='yes', the rarer class
    assert sorted(zip(result.table["value"], result.table["label"])) == [("no", "yes"), ("yes", "yes")]
    np.testing.assert_allclose(result.table["pvalue_adjusted"], np.minimum(1.0, 2 * result.table["pvalue"]))


def test_segment_values_with_too_few_batch_rows_are_not_tested(clean, spec):
    reference, batch = clean
    small = pd.concat([batch[batch[SEGMENT] == "no"], batch[batch[SEGMENT] == "yes"].head(5)], ignore_index=True)
    small.loc[small[SEGMENT] == "yes", LABEL] = "yes"  # 5 of 5 denied: extreme, but only 5 rows
    fitted = SegmentShift().fit(reference, spec, (SEGMENT,))  # min_rows = 10
    result = fitted.check(small)
    assert result.table["value"].tolist() == ["no"]
    assert result.alarm is None
    # the same rows are tested once min_rows allows them: the rule is what left them out
    assert "yes" in SegmentShift(min_rows=5).fit(reference, spec, (SEGMENT,)).check(small).table["value"].tolist()


@pytest.mark.parametrize("missing", [SEGMENT, LABEL])
def test_segment_shift_without_the_segment_or_label_column_tests_nothing(clean, spec, missing):
    reference, batch = clean
    result = SegmentShift().fit(reference, spec, (SEGMENT,)).check(batch.drop(columns=[missing]))
    assert result.alarm is None
    assert result.table.empty


# --- source history -----------------------------------------------------------------------------------


def test_source_history_without_earlier_batches_never_alarms():
    result = source_history("partner-a", [], rows=500, quarantined=500)
    assert result.alarm is None
    row = result.table.iloc[0]
    assert row["pvalue"] == 1.0 and row["earlier_rate"] is None and row["rate"] == 1.0


def test_source_history_pvalue_hand_computed():
    # one earlier batch of 1 row, 0 held → Beta(0 + 0.5, 1 + 0.5) predictive for 1 new row:
    # P(X >= 1) = a / (a + b) = 0.5 / 2 = 0.25, and P(X >= 0) = 1
    assert source_history("s", [SourceRecord(1, 0)], rows=1, quarantined=1).table["pvalue"].iloc[0] == pytest.approx(0.25)
    assert source_history("s", [SourceRecord(1, 0)], rows=1, quarantined=0).table["pvalue"].iloc[0] == pytest.approx(1.0)


EARLIER = [SourceRecord(1000, 10), SourceRecord(1000, 12), SourceRecord(1000, 8)]  # 30/3000 = 1 %


def test_source_history_alarms_on_a_jump_with_the_numbers():
    result = source_history("partner-a", EARLIER, rows=500, quarantined=100)
    assert result.alarm is not None
    message = result.alarm.message
    for part in ("'partner-a'", "100/500", "20.0%", "30/3000", "1.0%", "3 earlier batch(es)"):
        assert part in message
    assert result.alarm.pvalue < 1e-10


def test_source_history_is_quiet_in_line_with_history():
    result = source_history("partner-a", EARLIER, rows=500, quarantined=8)  # 1.6 %, expected 5
    assert result.alarm is None and result.table["pvalue"].iloc[0] > 0.05


def test_source_history_is_one_sided():
    earlier = [SourceRecord(1000, 200)] * 3  # 20 %
    result = source_history("partner-a", earlier, rows=500, quarantined=0)
    assert result.alarm is None and result.table["pvalue"].iloc[0] == pytest.approx(1.0)


def test_source_history_false_alarm_probability_is_at_most_alpha():
    """Exact, not simulated: with history 30/3000 and a batch of 500 from the same 1 % rate,
    P(alarm) = Σ_k Binomial(500, 0.01)(k) over the counts k that alarm; it must be <= alpha."""
    alarming = [k for k in range(501) if source_history("s", EARLIER, 500, k).alarm is not None]
    assert alarming == list(range(alarming[0], 501))  # alarms are monotone in the count
    assert stats.binom(500, 0.01).sf(alarming[0] - 1) <= 0.01


# --- false alarms on real clean splits ----------------------------------------------------------------


def test_drift_and_segment_rarely_alarm_on_clean_hmda_splits(hmda, spec):
    """Each check is family-wise at alpha = 0.01 (Bonferroni over what it tests; drift also needs
    PSI >= 0.1), so over 40 clean splits × 2 checks the expected number of alarms is <= 0.8.
    Even as a Poisson(0.8) count, P(>= 4) ≈ 0.009, so <= 3 fails only if a check is miscalibrated."""
    alarms = []
    for seed in range(100, 140):
        reference, batch = split(hmda, seed)
        for check in (BatchDrift(), SegmentShift()):
            result = check.fit(reference, spec, (SEGMENT,)).check(batch)
            if result.alarm is not None:
                alarms.append((seed, result.alarm.message))
    assert len(alarms) <= 3, alarms
