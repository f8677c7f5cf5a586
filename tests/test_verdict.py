"""The batch verdict (pipeline/verdict.py): its test, its estimate and its union of kinds, on
simulated p-values whose truth is known, and the holds decide() takes from it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.decide import decide
from pipeline.detectors.base import SCORE_COLUMNS, PoisonModel, conformal_pvalues
from pipeline.findings import ReasonCode, empty_findings
from pipeline.policy import QuarantinePolicy
from pipeline.verdict import (
    CellCounts,
    KindEvidence,
    combine,
    excess_pvalue,
    fit_mixture,
    group_evidence,
    invalid_evidence,
    row_evidence,
    visible_excess,
)


def _clean_pvalues(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """Conformal p-values of n exchangeable rows against one calibration set of m rows."""
    return conformal_pvalues(rng.normal(size=m), rng.normal(size=n), rng.random(n))


def _flipped_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """p-values of a poison that piles up near 0 (a Beta(0.3, 1) shape)."""
    return rng.beta(0.3, 1.0, size=n)


def test_the_excess_test_keeps_its_error_rate_on_clean_batches_sharing_a_calibration_set():
    """A batch of 5,000 rows against 300 calibration rows: a binomial count would alarm on many
    clean batches (the calibration set's own spread dominates); the beta-binomial does not."""
    rng = np.random.default_rng(0)
    pvalues = [excess_pvalue(_clean_pvalues(rng, 5000, 300), np.zeros(5000, int), {0: 300}) for _ in range(200)]
    assert np.mean(np.array(pvalues) <= 0.05) <= 0.08
    assert np.mean(np.array(pvalues) <= 0.01) <= 0.02


def test_the_excess_test_sees_a_tenth_of_the_batch_poisoned_that_no_row_shows_alone():
    rng = np.random.default_rng(1)
    clean = _clean_pvalues(rng, 540, 1000)
    poisoned = np.concatenate([clean, rng.uniform(0.002, 0.05, size=60)])  # none below 0.002
    assert excess_pvalue(poisoned, np.zeros(600, int), {0: 1000}) < 1e-6
    assert excess_pvalue(clean, np.zeros(540, int), {0: 1000}) > 0.01


def test_rows_beyond_every_trusted_row_are_their_own_threshold():
    """Nine far outliers in 332 rows against 300 trusted rows: at p <= 0.01 they hide among the
    3 clean rows expected there; beyond every trusted row (p <= 1/301) they stand out, as much as
    300 trusted rows allow (all nine of 632 rows' most extreme in the batch: about 0.003)."""
    rng = np.random.default_rng(2)
    calibration = rng.normal(size=300)
    scores = np.concatenate([rng.normal(size=323), np.full(9, 50.0)])
    pvalues = conformal_pvalues(calibration, scores, rng.random(332))
    assert excess_pvalue(pvalues, np.zeros(332, int), {0: 300}) < 0.01
    assert excess_pvalue(pvalues[:323], np.zeros(323, int), {0: 300}) > 0.1


def test_cells_are_tested_each_against_their_own_calibration_rows():
    rng = np.random.default_rng(3)
    pvalues = np.concatenate([_clean_pvalues(rng, 400, 200), _clean_pvalues(rng, 400, 50)])
    cells = np.repeat([0, 1], 400)
    assert excess_pvalue(pvalues, cells, {0: 200, 1: 50}) > 0.01
    assert excess_pvalue(pvalues, np.full(800, -1), {0: 200}) == 1.0  # rows not tested


@pytest.mark.parametrize("share", [0.0, 0.1, 0.3])
def test_the_mixture_interval_holds_the_true_share_of_poison(share):
    rng = np.random.default_rng(4)
    simulated = _flipped_like(rng, 2000)
    model = PoisonModel("label_flips", {0: 1000}, simulated, np.zeros(2000, int))
    covered = 0
    for _ in range(30):
        n_poison = int(share * 600)
        pvalues = np.concatenate([_clean_pvalues(rng, 600 - n_poison, 1000), _flipped_like(rng, n_poison)])
        mixture = fit_mixture(CellCounts.of(pvalues, np.zeros(600, int), model))
        covered += mixture.low * 600 <= n_poison <= mixture.high * 600
    assert covered >= 27


def test_row_evidence_ranks_rows_most_likely_poison_first_and_estimates_their_number():
    rng = np.random.default_rng(5)
    model = PoisonModel("label_flips", {0: 1000}, _flipped_like(rng, 2000), np.zeros(2000, int))
    pvalues = np.concatenate([_clean_pvalues(rng, 500, 1000), rng.uniform(0, 0.002, size=100)])
    evidence = row_evidence("label_consistency", pvalues, np.zeros(600, int), model)
    assert evidence.p_value < 1e-6 and evidence.ranked
    assert evidence.interval[0] <= 100 <= evidence.interval[1]
    assert set(evidence.chosen(100)) >= set(range(500, 600)) - set(evidence.rows[100:])
    assert (evidence.rows[:50] >= 500).mean() > 0.95


def _group_scores(groups: dict[int, list[int]], expected: dict[int, float], n: int, pvalue: float) -> pd.DataFrame:
    group = np.full(n, -1)
    for g, rows in groups.items():
        group[rows] = g
    flagged = group >= 0
    return pd.DataFrame(
        {
            "row_number": np.arange(n),
            "score": 0.0,
            "calibrated": np.where(flagged, 1 - pvalue, 0.0),
            "flagged": flagged,
            "reason": "",
            "group": group,
            "group_expected": [expected.get(g, 0.0) for g in group],
        }
    )


def test_a_weak_detectors_estimate_is_no_more_than_the_counts_show():
    """The detector's simulated poison is almost uniform (labels barely predictable), while 60
    real flips sit at p in 0.002-0.08: the mixture alone explains that excess with hundreds of
    rows; the estimate stays within what the counts of small p-values show, and its interval
    holds the truth."""
    rng = np.random.default_rng(6)
    model = PoisonModel("label_flips", {0: 1000}, rng.beta(0.9, 1.0, size=2000), np.zeros(2000, int))
    pvalues = np.concatenate([_clean_pvalues(rng, 700, 1000), rng.uniform(0.002, 0.08, size=60)])
    mixture = fit_mixture(CellCounts.of(pvalues, np.zeros(760, int), model))
    evidence = row_evidence("label_consistency", pvalues, np.zeros(760, int), model)
    visible, low = visible_excess(pvalues, np.zeros(760, int), {0: 1000})
    assert mixture.share * 760 > 2 * 60  # what the cap is for
    assert evidence.estimate <= round(visible) < 90 and low < 60
    assert evidence.interval[0] <= 60 <= evidence.interval[1]


def test_the_f1_hold_takes_the_rows_that_maximise_the_expected_f1():
    chance = np.concatenate([np.full(10, 0.9), np.full(10, 0.4), np.full(80, 0.05)])
    evidence = KindEvidence(
        "label_flips", 1e-9, 17, (10, 30), "", "label_consistency", np.arange(100), ranked=True, chance=chance
    )
    # expected F1 of the top k: 2 * 9 / (10 + 17) = 0.67 at 10, 2 * 13 / (20 + 17) = 0.70 at 20, then less
    assert evidence.to_hold("f1", 0.1) == 20
    assert evidence.to_hold("likely", 0.1) == 10


def test_a_group_kind_counts_its_held_rows_less_what_the_trusted_rate_explains():
    scores = _group_scores({0: list(range(10)), 1: list(range(20, 30))}, {0: 0.0, 1: 4.0}, 100, 1e-6)
    evidence = group_evidence("copies", "duplicates", scores)
    assert evidence.estimate == 16 and evidence.interval[1] == 20
    assert evidence.p_value == pytest.approx(1e-6)
    assert sorted(evidence.rows) == [*range(10), *range(20, 30)]


def test_invalid_values_are_judged_against_the_holdouts_share():
    assert invalid_evidence(np.arange(2), 400, 2, 400).p_value > 0.2  # as the holdout
    assert invalid_evidence(np.arange(12), 400, 0, 400).p_value < 1e-4


def test_kinds_overlap_and_the_batch_counts_each_row_once():
    # a flood of 10 flipped copies: the flips' ranking puts them first, sure they are flips
    chance = np.concatenate([np.ones(10), np.full(20, 0.5), np.zeros(70)])
    flips = KindEvidence(
        "label_flips", 1e-9, 20, (15, 30), "", "label_consistency", np.arange(100), ranked=True, chance=chance
    )
    copies = KindEvidence("copies", 1e-9, 10, (10, 10), "", "duplicates", np.arange(10))
    verdict = combine([flips, copies], 100, alpha=0.01)
    assert verdict.poisoned and verdict.estimated_poisoned_rows == 20
    assert verdict.interval == (15, 30)
    assert verdict.significant("label_flips") and verdict.significant("copies")


def test_flipped_copies_are_not_counted_again_where_the_flips_ranking_puts_them_lower():
    # the copies rank 41-50 by label consistency: their expected flips come off the flips' count,
    # and the flips' other rows are the most suspect ones not yet named
    rows = np.arange(100)
    chance = np.where(rows < 40, 0.1, np.where(rows < 50, 0.9, 0.0))
    flips = KindEvidence("label_flips", 1e-9, 13, (5, 20), "", "label_consistency", rows, ranked=True, chance=chance)
    copies = KindEvidence("copies", 1e-9, 10, (10, 10), "", "duplicates", np.arange(40, 50))
    verdict = combine([flips, copies], 100, alpha=0.01)
    assert verdict.estimated_poisoned_rows == 10 + (13 - 9)  # 9 of the 13 flips expected among the copies
    assert verdict.interval == (10, 10 + 20 - 9)


def test_a_kind_that_does_not_carry_the_verdict_widens_only_the_high_end():
    flips = KindEvidence(
        "label_flips", 0.3, 90, (0, 300), "", "label_consistency", np.arange(700), ranked=True, chance=np.full(700, 0.1)
    )
    copies = KindEvidence("copies", 1e-9, 60, (60, 60), "", "duplicates", np.arange(700, 760))
    verdict = combine([flips, copies], 760, alpha=0.01)
    assert verdict.poisoned and verdict.estimated_poisoned_rows == 60
    assert verdict.interval == (60, 360)
    clean = combine([flips], 700, alpha=0.01)
    assert not clean.poisoned and clean.estimated_poisoned_rows == 0 and clean.interval == (0, 300)
    # "clean" says what it cannot rule out
    assert clean.headline().endswith(
        "Up to 300 of 700 rows could still be poisoned without this batch showing it (at most 300 flipped labels)."
    )


def test_the_verdict_is_bonferroni_over_the_kinds():
    kinds = [KindEvidence(k, 0.004, 0, (0, 0), "") for k in ("outliers", "copies", "triggers")]
    assert not combine(kinds, 10, alpha=0.01).poisoned  # 3 x 0.004 > 0.01
    assert combine(kinds[:2], 10, alpha=0.01).poisoned
    assert combine([], 10, alpha=0.01).p_value == 1.0


def _scores(pvalues: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "row_number": np.arange(len(pvalues)),
            "score": -np.log(pvalues),
            "calibrated": 1 - pvalues,
            "flagged": pvalues <= 0.01,
            "reason": [f"row {i} looks flipped" for i in range(len(pvalues))],
        }
    )
    return frame[SCORE_COLUMNS]


def test_a_significant_kind_holds_its_estimate_with_the_batch_as_reason():
    rng = np.random.default_rng(6)
    pvalues = np.concatenate([rng.uniform(0.02, 1, 90), np.linspace(0.012, 0.019, 10)])  # no row clears 1 % alone
    order = np.argsort(pvalues, kind="stable")
    flips = KindEvidence(
        "label_flips", 1e-8, 10, (6, 14), "", "label_consistency", order, ranked=True, chance=np.linspace(0.99, 0.0, 100)
    )
    verdict = combine([flips], 100, alpha=0.01)
    scores = {"label_consistency": _scores(pvalues)}
    held = decide(
        pd.Series(range(100)), empty_findings(), [], scores, QuarantinePolicy(false_discovery_rate=0.0), verdict=verdict
    )
    assert sorted(held.quarantined_rows) == list(range(90, 100))
    findings = held.findings
    assert (findings["reason_code"] == ReasonCode.BATCH_EVIDENCE.value).all()
    assert findings["message"].iloc[0].startswith("the batch is estimated to hold 10 flipped labels (6-14); this row ranks")
    # suspicion stays the fused p-value's: a held-for-evidence row is not a hard failure
    assert held.table.set_index("row_number").loc[95, "suspicion"] < 1.0
    lower = decide(
        pd.Series(range(100)),
        empty_findings(),
        [],
        scores,
        QuarantinePolicy(false_discovery_rate=0.0, evidence_hold="lower"),
        verdict=verdict,
    )
    assert len(lower.quarantined_rows) == 6
    off = decide(
        pd.Series(range(100)),
        empty_findings(),
        [],
        scores,
        QuarantinePolicy(false_discovery_rate=0.0, evidence_hold="off"),
        verdict=verdict,
    )
    assert len(off.quarantined_rows) == 0


def test_an_extreme_only_kind_ignores_a_moderate_excess_that_covariate_shift_brings():
    """Outliers are counted at p <= 0.01 and beyond every trusted row: a batch drawn from part of
    the population crowds p 0.02-0.2 (HMDA above one median: 30 rows at 0.05 of 252), which the
    default ladder calls poisoned and the extreme bins do not; planted outliers beyond every
    trusted row are seen either way."""
    rng = np.random.default_rng(5)
    shifted = np.concatenate([_clean_pvalues(rng, 200, 1000), rng.uniform(0.011, 0.2, size=60)])
    cells = np.zeros(len(shifted), int)
    assert excess_pvalue(shifted, cells, {0: 1000}) < 1e-3
    assert excess_pvalue(shifted, cells, {0: 1000}, thresholds=(0.01,)) > 0.05
    planted = np.concatenate([_clean_pvalues(rng, 250, 1000), np.full(10, 1 / 1001)])
    assert excess_pvalue(planted, np.zeros(260, int), {0: 1000}, thresholds=(0.01,)) < 1e-4


def test_the_likely_hold_stops_where_a_row_is_no_longer_more_likely_poison_than_clean():
    chance = np.array([0.99, 0.9, 0.7, 0.55, 0.5, 0.3, 0.2, 0.1])
    evidence = KindEvidence(
        "label_flips", 1e-6, 7, (3, 12), "", "label_consistency", np.arange(8), ranked=True, chance=chance
    )
    assert evidence.to_hold("estimate", 0.1) == 7
    assert evidence.to_hold("likely", 0.1) == 5  # 0.99 ... 0.5
    assert evidence.to_hold("fdr", 0.1) == 2  # clean share (0.01 + 0.1) / 2 = 0.055; with 0.3 it is 0.137
    assert evidence.to_hold("lower", 0.1) == 3


def test_a_kind_whose_rows_are_all_left_untested_is_no_evidence():
    """Every row in cell -1 (the outlier detector held them all, an invalid batch): no cell, no
    excess, nothing to rank; the verdict is not an internal error."""
    model = PoisonModel("label_flips", {0: 500}, np.full(100, 0.01), np.zeros(100, int))
    evidence = row_evidence("label_consistency", np.full(40, 0.001), np.full(40, -1), model)
    assert evidence.p_value == 1.0 and evidence.estimate == 0 and len(evidence.rows) == 0
