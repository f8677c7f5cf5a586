"""The quarantine policy (Bonferroni fusion + false-quarantine target + Benjamini–Hochberg) and
decide(), on hand-computed cases and on simulated p-values with known truth."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.config import Settings
from pipeline.decide import content_keys, decide
from pipeline.detectors.base import REASON_PVALUE, SCORE_COLUMNS, InvalidParameter
from pipeline.errors import PoisonguardError
from pipeline.findings import BatchFinding, ReasonCode, empty_findings, findings_frame
from pipeline.policy import QuarantinePolicy, benjamini_hochberg_threshold, fired, fuse

# --- Benjamini–Hochberg ---------------------------------------------------------------------------

# m = 10 sorted p-values. BH finds the LARGEST k with p_(k) <= q·k/m (step-up).
BH_EXAMPLE = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216]


def test_bh_threshold_hand_computed_at_q_005():
    # q·k/m for k = 1..10: 0.005 0.010 0.015 0.020 0.025 0.030 0.035 0.040 0.045 0.050
    # p_(k) <= q·k/m only for k = 1 (0.001 <= 0.005) and k = 2 (0.008 <= 0.010);
    # k = 3..10 all fail (0.039 > 0.015, ..., 0.216 > 0.050). Largest k = 2 → threshold p_(2) = 0.008.
    assert benjamini_hochberg_threshold(np.array(BH_EXAMPLE), 0.05) == 0.008


def test_bh_threshold_is_step_up_not_step_down():
    # q = 0.25: q·k/m = 0.025 0.050 0.075 0.100 0.125 0.150 0.175 0.200 0.225 0.250
    # k = 1..7 pass; k = 8 FAILS (0.205 > 0.200); k = 9 (0.212 <= 0.225) and k = 10
    # (0.216 <= 0.250) pass. Step-up takes the largest passing k = 10 → 0.216, not 0.074 (where a
    # step-down procedure stopping at the first failure would end).
    assert benjamini_hochberg_threshold(np.array(BH_EXAMPLE), 0.25) == 0.216


def test_bh_threshold_does_not_depend_on_input_order():
    shuffled = np.random.default_rng(0).permutation(BH_EXAMPLE)
    assert benjamini_hochberg_threshold(shuffled, 0.05) == 0.008
    assert benjamini_hochberg_threshold(shuffled, 0.25) == 0.216


def test_bh_threshold_includes_the_boundary():
    # p_(1) = q·1/m exactly is a rejection ("<=").
    assert benjamini_hochberg_threshold(np.array([0.025, 0.9]), 0.05) == 0.025


@pytest.mark.parametrize(
    "pvalues, q",
    [
        (BH_EXAMPLE, 0.0),  # q = 0 turns BH off, even with p = 0.001 present
        ([0.0, 0.0, 0.0], 0.0),  # ... even with p = 0
        ([0.5, 0.6, 0.9], 0.3),  # 0.5 > 0.3·1/3, 0.6 > 0.3·2/3, 0.9 > 0.3: no rejection
        ([], 0.3),  # no rows
    ],
)
def test_bh_threshold_is_zero_when_nothing_is_rejected(pvalues, q):
    assert benjamini_hochberg_threshold(np.array(pvalues, dtype=float), q) == 0.0


# --- fusion and firing -----------------------------------------------------------------------------


def test_fuse_is_the_bonferroni_minimum_capped_at_one_with_nan_as_one():
    pvalues = {
        "a": np.array([0.01, 0.20, 0.40, np.nan]),
        "b": np.array([0.03, 0.10, np.nan, np.nan]),
        "c": np.array([0.50, 0.50, 0.50, np.nan]),
    }
    # D = 3: row 0 → 3·0.01; row 1 → 3·0.10; row 2 → 3·0.40 = 1.2 capped to 1;
    # row 3 has no p-value from anyone → treated as 1 → 3 capped to 1 (and never NaN).
    np.testing.assert_allclose(fuse(pvalues, 4), [0.03, 0.30, 1.0, 1.0])


def test_fuse_multiplies_by_the_number_of_detectors_not_of_finite_values():
    # A detector that saw nothing still counts: Bonferroni is over the detectors that ran.
    np.testing.assert_allclose(fuse({"a": np.array([0.1]), "b": np.array([np.nan])}, 1), [0.2])
    np.testing.assert_allclose(fuse({"a": np.array([0.1])}, 1), [0.1])


def test_fuse_without_detectors_gives_one_per_row():
    fused = fuse({}, 5)
    np.testing.assert_array_equal(fused, np.ones(5))


def test_fired_compares_the_detectors_own_bonferroni_pvalue_with_the_threshold():
    p = np.array([0.004, 0.005, 0.006, np.nan, 0.9])
    # D = 2, threshold 0.01: 2·0.004 = 0.008 yes, 2·0.005 = 0.01 yes (<=), 2·0.006 = 0.012 no,
    # NaN → 1 → no, 2·0.9 capped 1 → no.
    assert fired(p, 2, 0.01).tolist() == [True, True, False, False, False]
    # the same p-values with one detector: 0.006 <= 0.01 now fires
    assert fired(p, 1, 0.01).tolist() == [True, True, True, False, False]


# --- QuarantinePolicy parameters and threshold ----------------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [
        ("false_quarantine_target", 0.0),  # open at 0: a target of 0 would hold nothing ever
        ("false_quarantine_target", -0.01),
        ("false_quarantine_target", 0.51),  # capped at REASON_PVALUE
        ("false_quarantine_target", math.nan),
        ("false_quarantine_target", True),
        ("false_quarantine_target", "0.01"),
        ("false_discovery_rate", -0.01),
        ("false_discovery_rate", 0.6),
        ("false_discovery_rate", math.nan),
        ("false_discovery_rate", "0.3"),
    ],
)
def test_policy_rejects_out_of_range_parameters_naming_them(key, value):
    with pytest.raises(InvalidParameter, match=key) as info:
        QuarantinePolicy(**{key: value})
    assert f"Got {value!r}" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"false_quarantine_target": REASON_PVALUE},
        {"false_quarantine_target": 1e-6},
        {"false_discovery_rate": 0.0},
        {"false_discovery_rate": REASON_PVALUE},
        {"false_discovery_rate": 0},  # an int is a Real
    ],
)
def test_policy_accepts_the_ends_of_its_ranges(kwargs):
    policy = QuarantinePolicy(**kwargs)
    assert (
        policy.as_dict()
        == {"false_quarantine_target": 0.01, "false_discovery_rate": 0.1, "verdict_alpha": 0.01, "evidence_hold": "likely"}
        | kwargs
    )


def test_policy_threshold_is_the_larger_of_target_and_bh():
    fused = np.array(BH_EXAMPLE)
    # BH at q = 0.05 is 0.008 < target 0.01 → the target
    assert QuarantinePolicy(false_quarantine_target=0.01, false_discovery_rate=0.05).threshold(fused) == 0.01
    # BH at q = 0.25 is 0.216 > 0.01 → BH
    assert QuarantinePolicy(false_quarantine_target=0.01, false_discovery_rate=0.25).threshold(fused) == 0.216
    # target 0.3 > BH 0.216 → the target
    assert QuarantinePolicy(false_quarantine_target=0.3, false_discovery_rate=0.25).threshold(fused) == 0.3
    # BH off
    assert QuarantinePolicy(false_quarantine_target=0.01, false_discovery_rate=0.0).threshold(fused) == 0.01


# --- statistical validity on simulated p-values ----------------------------------------------------


def _clean_fused(rng: np.random.Generator, n: int) -> np.ndarray:
    # two detectors, independent uniform p-values: the null for every row
    return fuse({"a": rng.uniform(size=n), "b": rng.uniform(size=n)}, n)


def test_clean_batches_hold_at_most_the_target_share():
    """P(fused <= t) = 1 − (1 − t/2)² = t − t²/4 ≈ 0.009975 at t = 0.01 for two independent
    uniforms. Pooled over 20 × 10,000 rows the held share has sd √(0.01·0.99/200,000) ≈ 0.00022,
    so 0.0107 is the target + 3 sd. Without Bonferroni (plain min) it would be 1 − 0.99² ≈ 0.0199."""
    policy = QuarantinePolicy()  # target 1 %, q = 0.3
    rng = np.random.default_rng(20)
    held = total = 0
    for _ in range(20):
        fused = _clean_fused(rng, 10_000)
        threshold = policy.threshold(fused)
        # BH adds nothing on a clean batch: to lift the threshold above 1 % it would need ≥ 334
        # rejections (0.3·k/m >= 0.01) while only ~100 of the 10,000 null p-values fall below 0.01.
        assert threshold == policy.false_quarantine_target
        # and when BH rejects at all (probability <= q on an all-null batch), it is a handful of rows
        assert benjamini_hochberg_threshold(fused, policy.false_discovery_rate) < 0.001
        held += int((fused <= threshold).sum())
        total += len(fused)
    assert 0.0092 <= held / total <= 0.0107


def test_bh_rejects_nothing_on_most_clean_batches():
    """On an all-null batch BH's false-discovery rate is its family-wise error: P(any rejection) <= q.
    At q = 0.3 over 100 clean batches the count is ≈ Binomial(100, ≤ 0.3); ≤ 45 is > 3 sd above 30."""
    rng = np.random.default_rng(21)
    any_rejection = sum(benjamini_hochberg_threshold(_clean_fused(rng, 2_000), 0.3) > 0 for _ in range(100))
    assert any_rejection <= 45


def test_bh_lifts_the_threshold_on_a_poisoned_batch_and_keeps_false_discoveries_under_q():
    """20 % poison with p ~ U(0, 0.01) on one detector (fused ~ U(0, 0.02)): the target alone holds
    about half of it. BH at q = 0.1 solves t = 0.1·(2,000 + 8,000·t)/10,000 → t ≈ 0.0217, so it
    holds all of it; its expected false-discovery proportion is q·m0/m = 0.08. (BH lifts only
    where the p-values near 0 are >= 1/q times as dense as uniform ones: 10 % poison spread over
    U(0, 0.02) is 5x, and stays at the target.)"""
    policy = QuarantinePolicy()
    rng = np.random.default_rng(22)
    n, n_poison = 10_000, 2_000
    fdps = []
    for _ in range(10):
        a, b = rng.uniform(size=n), rng.uniform(size=n)
        a[:n_poison] = rng.uniform(0.0, 0.01, size=n_poison)
        fused = fuse({"a": a, "b": b}, n)
        threshold = policy.threshold(fused)
        held = fused <= threshold
        assert 0.02 < threshold < 0.025
        assert held[:n_poison].mean() >= 0.99
        assert (fused[:n_poison] <= policy.false_quarantine_target).mean() < 0.6  # what the target alone holds
        fdps.append(held[n_poison:].sum() / held.sum())
    assert np.mean(fdps) <= policy.false_discovery_rate
    assert max(fdps) <= policy.false_discovery_rate + 0.03


# --- decide() ---------------------------------------------------------------------------------------


def _scores(calibrated: dict[int, float], name: str) -> pd.DataFrame:
    """A detector's score frame; rows listed in the order given (deliberately not row order)."""
    frame = pd.DataFrame(
        {
            "row_number": list(calibrated),
            "score": [10 * c for c in calibrated.values()],
            "calibrated": list(calibrated.values()),
            "flagged": [1 - c <= 0.01 for c in calibrated.values()],  # a detector's own alpha
            "reason": [f"{name} suspects row {r}" for r in calibrated],
        }
    )
    return frame[SCORE_COLUMNS]


# Two detectors, BH off, target 0.1 → threshold exactly 0.1 and D = 2.
#             row:      0      1      2      3      4      5
# p_a = 1 − cal_a:   0.01   0.04   0.50   1.00   0.045  0.06
# p_b = 1 − cal_b:   0.10   1e-05  0.03   0.90   0.70   0.80
# fused 2·min:       0.02   2e-05  0.06   1.00   0.09   0.12   (row 3: 1.8 capped)
# held (<= 0.1):     yes    yes    yes    no     yes    no
# a fired (2p_a<=.1) yes    yes    no     -      yes    no
# b fired (2p_b<=.1) no(.2) yes    yes    -      no     no
CAL_A = {5: 0.94, 3: 0.0, 0: 0.99, 4: 0.955, 2: 0.5, 1: 0.96}
CAL_B = {2: 0.97, 0: 0.9, 1: 0.99999, 5: 0.2, 4: 0.3, 3: 0.1}
FUSED = [0.02, 2e-05, 0.06, 1.0, 0.09, 0.12]
TIGHT = QuarantinePolicy(false_quarantine_target=0.1, false_discovery_rate=0.0)


def _decide(validation=None, batch=(), policy=TIGHT, rows=range(6)):
    return decide(
        pd.Series(list(rows)),
        empty_findings() if validation is None else validation,
        list(batch),
        {"a": _scores(CAL_A, "a"), "b": _scores(CAL_B, "b")},
        policy,
    )


def _by_row(decisions) -> pd.DataFrame:
    return decisions.table.set_index("row_number")


def test_decide_holds_exactly_the_rows_whose_fused_pvalue_clears_the_threshold():
    decisions = _decide()
    table = _by_row(decisions)
    assert decisions.threshold == 0.1
    assert table["quarantined"].tolist() == [True, True, True, False, True, False]
    assert sorted(decisions.quarantined_rows) == [0, 1, 2, 4]
    np.testing.assert_allclose(table["suspicion"], 1 - np.array(FUSED))
    # the detector columns carry calibrated scores aligned by row_number, not by frame position
    np.testing.assert_allclose(table["a"], [CAL_A[r] for r in range(6)])
    np.testing.assert_allclose(table["b_raw"], [10 * CAL_B[r] for r in range(6)])


def test_the_row_rules_natural_share_is_taken_from_the_detectors_target():
    # the holdout shows 3 % of clean rows break a rule: the detectors get 0.1 - 0.03 of the target
    decisions = decide(
        pd.Series(range(6)), empty_findings(), [], {"a": _scores(CAL_A, "a"), "b": _scores(CAL_B, "b")}, TIGHT, spent=0.03
    )
    assert decisions.threshold == pytest.approx(0.07)
    assert sorted(decisions.quarantined_rows) == [0, 1, 2]  # fused 0.09 (row 4) no longer held
    assert TIGHT.row_target(0.5) == 0.0 and TIGHT.row_target(-1.0) == 0.1


def test_decide_lists_only_detectors_that_fired_smallest_pvalue_first():
    table = _by_row(_decide())
    assert table.loc[0, "reasons"] == ["a suspects row 0"]  # b's 2·0.10 = 0.2 did not fire
    # p 1e-05 before 0.04: sorted as numbers, not as the text "1e-05" > "0.04"
    assert table.loc[1, "reasons"] == ["b suspects row 1", "a suspects row 1"]
    assert table.loc[2, "reasons"] == ["b suspects row 2"]
    assert table.loc[4, "reasons"] == ["a suspects row 4"]
    assert table.loc[3, "reasons"] == [] and table.loc[5, "reasons"] == []


def test_decide_findings_table_has_one_detector_finding_per_fired_pair():
    decisions = _decide()
    findings = decisions.findings
    assert set(zip(findings["row_number"], findings["check"])) == {
        (0, "detector:a"),
        (1, "detector:a"),
        (1, "detector:b"),
        (2, "detector:b"),
        (4, "detector:a"),
    }
    assert len(findings) == 5
    assert (findings["reason_code"] == ReasonCode.DETECTOR.value).all()
    observed = findings.set_index(["row_number", "check"])["observed"]
    assert observed[(1, "detector:b")] == "1e-05" and observed[(4, "detector:a")] == "0.045"
    assert decisions.counts_by_check() == {"detector:a": 3, "detector:b": 2}


def test_hard_findings_force_suspicion_one_and_come_first_in_reasons():
    validation = findings_frame(
        [
            {
                "row_number": 3,
                "check": "range:lvrat",
                "column": "lvrat",
                "reason_code": ReasonCode.OUT_OF_RANGE,
                "observed": "7.5",
                "message": "lvrat 7.5 is outside 0..3",
            },
            {
                "row_number": 1,
                "check": "domain:phist",
                "column": "phist",
                "reason_code": ReasonCode.NOT_IN_DOMAIN,
                "observed": "maybe",
                "message": "phist 'maybe' is not a known value",
            },
        ]
    )
    table = _by_row(_decide(validation))
    # row 3 was clean for both detectors (fused 1.0) and is held on the validation finding alone
    assert table.loc[3, "quarantined"] and table.loc[3, "suspicion"] == 1.0
    assert table.loc[3, "reasons"] == ["lvrat 7.5 is outside 0..3"]
    # row 1: hard finding first, then the detectors by ascending p-value
    assert table.loc[1, "suspicion"] == 1.0
    assert table.loc[1, "reasons"] == ["phist 'maybe' is not a known value", "b suspects row 1", "a suspects row 1"]
    # rows without hard findings keep 1 − fused p
    np.testing.assert_allclose(table.loc[[0, 2, 4, 5], "suspicion"], [0.98, 0.94, 0.91, 0.88])
    assert not table.loc[5, "quarantined"]


def test_batch_findings_hold_every_row_with_suspicion_one():
    finding = BatchFinding("batch:row_count", ReasonCode.BATCH_EXPECTATION, "the batch has 6 rows; at least 100 expected")
    decisions = _decide(batch=[finding])
    table = _by_row(decisions)
    assert table["quarantined"].all()
    assert (table["suspicion"] == 1.0).all()
    assert table.loc[5, "reasons"] == [finding.message]
    assert table.loc[1, "reasons"] == [finding.message, "b suspects row 1", "a suspects row 1"]
    assert decisions.counts_by_check()["batch:row_count"] == 6


def test_every_batch_row_appears_exactly_once_in_batch_order():
    rows = [12, 10, 11, 13, 15, 14]  # row numbers need not be 0.. nor sorted
    cal_a = dict(zip(rows, [0.99, 0.5, 0.5, 0.5, 0.5, 0.5]))
    cal_b = dict.fromkeys(reversed(rows), 0.5)
    decisions = decide(pd.Series(rows), empty_findings(), [], {"a": _scores(cal_a, "a"), "b": _scores(cal_b, "b")}, TIGHT)
    assert decisions.table["row_number"].tolist() == rows
    assert decisions.quarantined_rows.tolist() == [12]
    assert list(decisions.table.columns[:4]) == ["row_number", "suspicion", "quarantined", "reasons"]


def test_a_row_missing_from_a_detectors_scores_counts_as_p_one_for_it():
    cal_a = dict(CAL_A)
    del cal_a[1]  # detector a did not score row 1; b's p 1e-05 still holds it
    decisions = decide(
        pd.Series(range(6)), empty_findings(), [], {"a": _scores(cal_a, "a"), "b": _scores(CAL_B, "b")}, TIGHT
    )
    table = _by_row(decisions)
    assert table.loc[1, "quarantined"] and table.loc[1, "reasons"] == ["b suspects row 1"]
    assert table.loc[1, "suspicion"] == pytest.approx(1 - 2 * 1e-05)


def test_no_detectors_and_no_findings_hold_nothing():
    decisions = decide(pd.Series(range(4)), empty_findings(), [], {}, QuarantinePolicy())
    assert not decisions.table["quarantined"].any()
    assert (decisions.table["suspicion"] == 0.0).all()
    assert decisions.findings.empty
    assert decisions.threshold == QuarantinePolicy().false_quarantine_target


def test_decide_uses_the_policys_threshold_including_bh():
    """Random detectors with a poisoned block: held ⇔ fused <= threshold, the threshold is the
    policy's on the fused p-values, and every held row has a finding from a detector that fired."""
    rng = np.random.default_rng(5)
    n = 600
    cal = {name: rng.uniform(size=n) for name in ("a", "b", "c")}
    cal["a"][:60] = 1 - rng.uniform(0, 0.002, size=60)  # p-values <= 0.002 on 10 % of rows
    rows = np.arange(100, 100 + n)
    scores = {name: _scores(dict(zip(rows.tolist(), c.tolist())), name) for name, c in cal.items()}
    policy = QuarantinePolicy(false_quarantine_target=0.005, false_discovery_rate=0.3)
    decisions = decide(pd.Series(rows), empty_findings(), [], scores, policy)

    expected_fused = fuse({name: 1 - c for name, c in cal.items()}, n)
    assert decisions.threshold == policy.threshold(expected_fused)
    assert decisions.threshold > policy.false_quarantine_target  # BH carried it above the target
    held = decisions.table["quarantined"].to_numpy()
    np.testing.assert_array_equal(held, expected_fused <= decisions.threshold)
    np.testing.assert_allclose(decisions.table["suspicion"], 1 - expected_fused)
    assert held[:60].all()
    # each finding is a held row where that detector alone clears the threshold
    for row_number, check in zip(decisions.findings["row_number"], decisions.findings["check"]):
        i = row_number - 100
        p = 1 - cal[check.removeprefix("detector:")][i]
        assert held[i] and min(1.0, 3 * p) <= decisions.threshold
    assert set(decisions.findings["row_number"]) == set(rows[held])


# --- configuration ----------------------------------------------------------------------------------


def test_settings_read_the_policy_from_the_environment(tmp_path):
    env = {"POISONGUARD_USER": "s", "POISONGUARD_FALSE_QUARANTINE_TARGET": "0.05", "POISONGUARD_FALSE_DISCOVERY_RATE": "0"}
    settings = Settings.from_environment(tmp_path, environ=env)
    assert settings.policy == QuarantinePolicy(false_quarantine_target=0.05, false_discovery_rate=0.0)


def test_settings_default_the_policy_when_unset_or_empty(tmp_path):
    for env in (
        {"POISONGUARD_USER": "s"},
        {"POISONGUARD_USER": "s", "POISONGUARD_FALSE_QUARANTINE_TARGET": "", "POISONGUARD_FALSE_DISCOVERY_RATE": ""},
    ):
        assert Settings.from_environment(tmp_path, environ=env).policy == QuarantinePolicy()


@pytest.mark.parametrize("variable", ["POISONGUARD_FALSE_QUARANTINE_TARGET", "POISONGUARD_FALSE_DISCOVERY_RATE"])
@pytest.mark.parametrize("raw", ["abc", "2"])
def test_settings_reject_a_bad_policy_variable_naming_it(tmp_path, variable, raw):
    with pytest.raises(PoisonguardError, match=variable) as info:
        Settings.from_environment(tmp_path, environ={"POISONGUARD_USER": "s", variable: raw})
    message = str(info.value)
    assert raw in message
    if raw == "2":  # a number out of range: the message also says which policy parameter and its range
        parameter = variable.removeprefix("POISONGUARD_").lower()
        assert parameter in message and "0.5" in message


def test_a_group_detectors_shared_pvalue_does_not_enter_bh_as_many_discoveries():
    """The breast-cancer clean batch that held 17.5 % of its rows: one unremarkable 20-row trigger
    group (p = 0.012, batch-corrected) is one test, not 20. Counted as 20 BH discoveries it
    lifted the threshold over them all; at the target alone it holds none."""
    rows = range(114)
    group = {r: (1 - 0.0119 if r < 20 else 0.0) for r in rows}
    plain = dict.fromkeys(rows, 0.5)
    scores = {
        "trigger": _scores(group, "trigger"),
        "duplicates": _scores(dict.fromkeys(rows, 0.0), "duplicates"),
        "outliers": _scores(plain, "outliers"),
        "label_consistency": _scores(plain, "label_consistency"),
    }
    decisions = decide(pd.Series(list(rows)), empty_findings(), [], scores, QuarantinePolicy())
    assert not decisions.table["quarantined"].any()
    # the same p-values from a row-scoped detector are 20 separate tests, and BH may hold them
    renamed = {
        "row_a": scores["trigger"],
        "row_b": scores["duplicates"],
        "outliers": scores["outliers"],
        "label_consistency": scores["label_consistency"],
    }
    at_03 = QuarantinePolicy(false_discovery_rate=0.3)  # 20 discoveries of 114 at q = 0.3: BH lifts to 0.053
    assert decide(pd.Series(list(rows)), empty_findings(), [], renamed, at_03).table["quarantined"].sum() == 20
    assert not decide(pd.Series(list(rows)), empty_findings(), [], scores, at_03).table["quarantined"].any()


def test_a_group_is_held_at_its_detectors_own_alpha_whatever_the_row_detectors():
    """A flood or trigger group is one test, already corrected for the batch's groups: it is held
    when its detector flags it, with no per-row weight in the way (a 0.01 weight made a 47-row
    flood need p <= 5e-5 and held it 0 of 47). Group p-values do not enter the row fusion."""
    rows = range(50)
    group = {r: (1 - 0.004 if r < 8 else 1 - 0.3 if r < 16 else 0.0) for r in rows}
    scores = {
        "trigger": _scores(group, "trigger"),
        "outliers": _scores(dict.fromkeys(rows, 0.5), "outliers"),
        "label_consistency": _scores(dict.fromkeys(rows, 0.5), "label_consistency"),
    }
    decisions = decide(pd.Series(list(rows)), empty_findings(), [], scores, QuarantinePolicy())
    held = decisions.table.loc[decisions.table["quarantined"], "row_number"].tolist()
    assert held == list(range(8))
    assert set(decisions.findings["check"]) == {"detector:trigger"}
    # its suspicion is 1 - the group's corrected p-value; the row fusion is over two detectors
    table = _by_row(decisions)
    assert table.loc[0, "suspicion"] == pytest.approx(0.996)
    assert table.loc[20, "suspicion"] == pytest.approx(0.0)


def test_bh_counts_exact_copies_of_a_row_as_one_hypothesis():
    """A flood of copies shares one p-value; as 40 hypotheses it would lift the BH threshold
    over the moderately small p-values of ordinary rows, as one it does not."""
    rng = np.random.default_rng(11)
    ordinary = rng.uniform(size=160)
    ordinary[:8] = np.linspace(0.03, 0.06, 8)  # the clean rows a lifted threshold would sweep in
    flood = np.full(40, 1e-6)
    fused = np.concatenate([ordinary, flood])
    content = np.concatenate([np.arange(160), np.full(40, -1)])
    policy = QuarantinePolicy(false_quarantine_target=0.005, false_discovery_rate=0.3)

    counted_apart = policy.threshold(fused)
    counted_once = policy.threshold(fused, content)
    assert counted_apart >= 0.06  # 40 discoveries: every one of the 8 is under it
    assert counted_once == policy.false_quarantine_target
    assert policy.threshold(fused, np.arange(200)) == counted_apart  # distinct rows: plain BH


def test_decide_keys_rows_by_content_for_bh():
    batch = pd.DataFrame({"row_number": range(6), "x": [1.0, 1.0, 1.0, 2.0, 3.0, 4.0], "y": list("aaabbb")})
    keys = content_keys(batch)
    assert len(set(keys[:3])) == 1 and len(set(keys[2:])) == 4
    shifted = batch.assign(row_number=batch["row_number"] + 100)
    np.testing.assert_array_equal(content_keys(shifted), keys)  # the position is not content
