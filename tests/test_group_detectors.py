"""The maths of the group detectors (TriggerPattern, DuplicateFlood) on small planted cases whose
answer is known, plus their false-alarm rate on clean batches, synthetic and real (HMDA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp
from scipy.stats import betabinom, hypergeom

from pipeline.detectors.base import FeatureSpec
from pipeline.detectors.duplicates import CloseCounter, DuplicateFlood, _principal_axes, _row_keys, _Rows, tarone_count
from pipeline.detectors.triggers import Binning, TriggerPattern, upper_tail_pvalue
from pipeline.io import ROW_NUMBER
from pipeline.validation import column_kinds

HMDA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hmda.parquet"


def _numbered(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.reset_index(drop=True)
    frame[ROW_NUMBER] = np.arange(len(frame))
    return frame


def _mixed(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Five numerics (two correlated, one discrete), two categoricals, a label that depends on them."""
    x = rng.normal(size=(n, 5))
    x[:, 1] = 0.7 * x[:, 0] + 0.3 * x[:, 1]
    x[:, 4] = np.round(2 * np.abs(x[:, 4]))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(5)])
    frame["colour"] = rng.choice(["red", "green", "blue"], size=n, p=[0.6, 0.3, 0.1])
    frame["flag"] = rng.choice(["yes", "no"], size=n)
    frame["label"] = np.where(x[:, 0] + rng.normal(size=n) > 1.0, "bad", "good")
    return _numbered(frame)


MIXED_SPEC = FeatureSpec(label="label", numeric=tuple(f"x{i}" for i in range(5)), categorical=("colour", "flag"))


# --- the shared predictive tail ------------------------------------------------------------------


def test_upper_tail_is_the_beta_binomial_tail_where_it_matters_and_never_below_it():
    """The negative binomial stands in for the beta-binomial predictive: never smaller in the tail
    (p < 0.01), so it cannot raise an alarm the beta-binomial would not, and within a factor 1.4
    for a rare cell (where triggers and copies live) and a group of up to 2 % of the batch."""
    for n_reference in (50, 300, 2000):
        for n_batch in (20, 200, 1000):
            for ref_count in (0, 1, 3, n_reference // 10, n_reference // 2):
                counts = np.arange(1, n_batch + 1, max(1, n_batch // 25))
                ours = upper_tail_pvalue(counts, np.full(len(counts), ref_count), n_batch, n_reference)
                a, b = ref_count + 0.5, n_reference - ref_count + 0.5
                exact = np.array(
                    [np.exp(logsumexp(betabinom.logpmf(np.arange(k, n_batch + 1), n_batch, a, b))) for k in counts]
                )
                tail = (exact < 0.01) & (exact > 1e-250)
                assert (ours[tail] >= exact[tail]).all()
                close = tail & (counts <= 0.02 * n_batch)
                if ref_count <= 1:
                    assert (ours[close] <= 1.4 * exact[close]).all()
    # the worked example in the docstring: 23 rows in a cell no trusted row of 1,190 is in
    assert upper_tail_pvalue(np.array([23]), np.array([0]), 476, 1190)[0] == pytest.approx(4.2e-14, rel=0.01)


# --- TriggerPattern --------------------------------------------------------------------------------


def test_numeric_bins_give_the_tails_their_own_bins_and_collapse_ties():
    values = pd.Series(np.arange(1, 1001, dtype=float))
    binning = Binning.numeric("income", values)
    assert len(binning.edges) == 7 and binning.n_codes == 9  # 8 bins + missing
    codes = binning.codes(pd.Series([1.0, 500.0, 995.0, 5000.0, -7.0, np.nan]))
    assert codes.tolist() == [0, 3, 7, 7, 0, 8]
    assert binning.words[7] == f"income in its top 1 % (> {np.quantile(values, 0.99):.4g})"
    assert binning.words[0] == f"income in its bottom 1 % (<= {np.quantile(values, 0.01):.4g})"
    ties = Binning.numeric("chist", pd.Series([1.0] * 70 + [2.0] * 20 + [3.0] * 9 + [6.0]))
    np.testing.assert_allclose(ties.edges, [1.0, 2.0, 3.0, 3.03])  # the 1 %-50 % quantiles are all 1
    assert ties.words[0] == "chist <= 1"  # 70 % of trusted rows: not a tail


def test_categorical_bins_keep_unseen_and_missing_values_apart():
    binning = Binning.categorical("colour", pd.Series(["red", "blue", "red", None]))
    assert binning.codes(pd.Series(["blue", "red", "mauve", None])).tolist() == [0, 1, 2, 3]
    assert binning.words == ("colour = 'blue'", "colour = 'red'", "colour not seen in the reference", "colour missing")


def _trigger_case(n_planted: int, planted_labels: list[str] | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    reference, batch = _mixed(2000, rng), _mixed(500, rng)
    top, bottom = reference["x2"].quantile(0.999), reference["x3"].quantile(0.001)
    planted = batch.sample(n=n_planted, random_state=seed).copy()
    planted["x2"], planted["x3"] = top, bottom
    planted["label"] = planted_labels if planted_labels is not None else "bad"
    batch = _numbered(pd.concat([batch, planted]))
    is_planted = np.arange(len(batch)) >= 500
    return reference, batch, is_planted


def test_trigger_flags_exactly_the_planted_group_and_spells_the_pattern_out():
    reference, batch, planted = _trigger_case(20)
    result = TriggerPattern().fit(reference, MIXED_SPEC).score(batch)
    assert result["flagged"].to_numpy().tolist() == planted.tolist()
    q99, q01 = reference["x2"].quantile(0.99), reference["x3"].quantile(0.01)
    bad = reference["label"] == "bad"
    same = ((reference["x2"] > q99) & (reference["x3"] <= q01) & bad).sum()
    assert result["reason"].iloc[-1] == (
        f"20 rows with x2 in its top 1 % (> {q99:.4g}) and x3 in its bottom 1 % (<= {q01:.4g}), all labelled "
        f"'bad'; reference frequency {100 * same / bad.sum():.2g} % ({same} of {bad.sum():,} rows labelled 'bad')"
    )
    # compared with trusted rows of its own label: batch and reference rows labelled 'bad'
    expected = upper_tail_pvalue(np.array([20]), np.array([same]), (batch["label"] == "bad").sum(), bad.sum())[0]
    np.testing.assert_allclose(result["score"].to_numpy()[planted], -np.log10(expected))


def test_copies_of_one_row_are_a_flood_not_a_trigger_and_sweep_no_rows_in():
    """60 copies of one ordinary row, relabelled: every cell pair they sit in is crowded, but a
    trigger is many different rows, so they count once; the duplicates detector holds them."""
    rng = np.random.default_rng(4)
    reference, batch = _mixed(2000, rng), _mixed(500, rng)
    # a combination as rare as a trigger's: x2 in its top, x3 in its bottom 0.1 %
    rare = {"x2": reference["x2"].quantile(0.999), "x3": reference["x3"].quantile(0.001), "label": "bad"}
    copies = batch.iloc[[7] * 60].assign(**rare)
    flooded = _numbered(pd.concat([batch, copies]))
    result = TriggerPattern().fit(reference, MIXED_SPEC).score(flooded)
    assert not result["flagged"].any()
    # the same 60 rows made distinct (a backdoor's rows differ outside the trigger) are a group
    planted = batch.sample(n=60, random_state=4).assign(**rare)
    assert TriggerPattern().fit(reference, MIXED_SPEC).score(_numbered(pd.concat([batch, planted])))["flagged"].sum() >= 60


def test_trigger_pvalues_shrink_as_the_planted_group_grows():
    scores = []
    for size in (5, 10, 20, 40):
        reference, batch, planted = _trigger_case(size)
        result = TriggerPattern().fit(reference, MIXED_SPEC).score(batch)
        scores.append(result["score"].to_numpy()[planted].min())
    assert scores == sorted(scores) and scores[-1] > scores[0] + 10


def test_a_rare_combination_with_mixed_labels_is_less_suspect_than_one_all_labelled_alike():
    reference, alike, planted = _trigger_case(20)
    _, mixed, _ = _trigger_case(20, planted_labels=["bad"] * 6 + ["good"] * 14)
    detector = TriggerPattern().fit(reference, MIXED_SPEC)
    assert (
        detector.score(mixed)["score"].to_numpy()[planted].max()
        < detector.score(alike)["score"].to_numpy()[planted].min() - 5
    )


def test_a_batch_with_another_label_mix_is_not_a_trigger():
    """Twice the reference's share of 'bad' rows (a month with more denials): every 'bad' group
    is more crowded, but within 'bad' the cells are as usual, so nothing is flagged."""
    rng = np.random.default_rng(5)
    reference, pool = _mixed(2000, rng), _mixed(6000, rng)
    bad = pool.index[pool["label"] == "bad"]
    share = (reference["label"] == "bad").mean()
    batch = _numbered(
        pd.concat(
            [
                pool.loc[bad[: int(1000 * 2 * share)]],
                pool.loc[pool.index[pool["label"] == "good"][: int(1000 * (1 - 2 * share))]],
            ]
        )
    )
    assert (batch["label"] == "bad").mean() == pytest.approx(2 * share, abs=0.01)
    assert not TriggerPattern().fit(reference, MIXED_SPEC).score(batch)["flagged"].any()


def test_rows_without_a_trusted_label_are_not_tested():
    reference, batch, planted = _trigger_case(20)
    batch.loc[planted, "label"] = None
    result = TriggerPattern().fit(reference, MIXED_SPEC).score(batch)
    assert not result["flagged"].any()
    assert (result["score"].to_numpy()[planted] == 0.0).all()


def test_trigger_min_group_sets_the_smallest_group_tested():
    reference, batch, planted = _trigger_case(6)
    assert TriggerPattern(min_group=5).fit(reference, MIXED_SPEC).score(batch)["flagged"].to_numpy()[planted].all()
    assert not TriggerPattern(min_group=7).fit(reference, MIXED_SPEC).score(batch)["flagged"].any()


# --- DuplicateFlood -----------------------------------------------------------------------------


def _blobs(n: int, rng: np.random.Generator) -> pd.DataFrame:
    label = rng.random(n) < 0.5
    values = rng.normal(size=(n, 3)) + np.where(label[:, None], 5.0, 0.0)
    frame = pd.DataFrame(values, columns=["x", "y", "z"])
    frame["label"] = np.where(label, "B", "A")
    return _numbered(frame)


BLOB_SPEC = FeatureSpec(label="label", numeric=("x", "y", "z"), categorical=())


def _flood_case(size: int, jitter: float = 0.0, label: str = "B", seed: int = 1):
    """``size`` copies of one 'A' row (labelled ``label``) appended to 300 clean rows."""
    rng = np.random.default_rng(seed)
    reference, batch = _blobs(1000, rng), _blobs(300, rng)
    template = int(np.flatnonzero(batch["label"] == "A")[0])
    copies = batch.loc[[template] * size].copy()
    copies[["x", "y", "z"]] += rng.normal(0.0, jitter, size=(size, 3)) if jitter else 0.0
    copies["label"] = label
    batch = _numbered(pd.concat([batch, copies]))
    return reference, batch, np.arange(len(batch)) >= 300


def test_an_exact_flood_with_a_flipped_label_is_flagged_and_the_original_is_not():
    reference, batch, copies = _flood_case(20)
    result = DuplicateFlood().fit(reference, BLOB_SPEC).score(batch)
    assert result["flagged"].to_numpy().tolist() == copies.tolist()
    # pooled with the reference's 'B' rows, all 20 of the group landed in the batch: the chance a
    # clean batch brings them all is the hypergeometric tail, one testable group, two families
    n_batch = int((batch["label"] == "B").sum())
    pooled = n_batch + int((reference["label"] == "B").sum())
    expected = hypergeom.sf(19, pooled, n_batch, 20)
    np.testing.assert_allclose(result["score"].to_numpy()[copies], -np.log10(expected))
    np.testing.assert_allclose(1 - result["calibrated"].to_numpy()[copies], 2 * expected, rtol=1e-3)  # 1 - (1 - p)
    assert result["reason"].iloc[-1] == (
        "one of 20 identical rows with this label in this batch; the reference has 0 rows identical to it; a clean "
        f"batch brings this many with probability {expected:.2g} ({2 * expected:.2g} corrected over 1 testable "
        "group); labelled 'B' while 10/10 nearest trusted rows say 'A'"
    )
    assert (result["group"].to_numpy()[copies] == result["group"].iloc[-1]).all()
    assert (result["group_expected"].to_numpy()[copies] == 0).all()


def test_a_jittered_cluster_is_caught_within_the_radius():
    reference, batch, copies = _flood_case(20, jitter=0.002)
    result = DuplicateFlood().fit(reference, BLOB_SPEC).score(batch)
    assert result["flagged"].to_numpy().tolist() == copies.tolist()
    reason = result["reason"].iloc[-1]
    assert reason.startswith("one of 20 near-identical rows with this label in this batch (within ")
    assert reason.endswith("labelled 'B' while 10/10 nearest trusted rows say 'A'")


def test_copies_whose_label_agrees_with_their_neighbours_are_not_called_mislabelled():
    reference, batch, copies = _flood_case(20, label="A")
    result = DuplicateFlood().fit(reference, BLOB_SPEC).score(batch)
    template = np.flatnonzero(batch["label"] == "A")[0]  # the row they copy, same label: one more copy
    assert np.flatnonzero(result["flagged"]).tolist() == [template, *np.flatnonzero(copies)]
    assert (
        result["reason"]
        .iloc[-1]
        .startswith(
            "one of 21 identical rows with this label in this batch; the "
            "reference has 0 rows identical to it; a clean batch brings"
        )
    )
    assert "labelled" not in result["reason"].iloc[-1]


def test_small_floods_are_held_whole_at_the_detectors_own_alpha():
    """The unseen credit dataset's flood: 5 rows, each copied 9-10 times with the label flipped.
    Each group is one test among the few that could ever be significant, so every copy is held."""
    rng = np.random.default_rng(8)
    reference, batch = _blobs(1000, rng), _blobs(300, rng)
    templates = np.flatnonzero(batch["label"] == "A")[:5]
    copies = pd.concat([batch.loc[[t] * (9 + i % 2)] for i, t in enumerate(templates)]).assign(label="B")
    batch = _numbered(pd.concat([batch, copies]))
    result = DuplicateFlood().fit(reference, BLOB_SPEC).score(batch)
    planted = np.arange(len(batch)) >= 300
    assert result["flagged"].to_numpy().tolist() == planted.tolist()
    assert result.loc[planted, "group"].nunique() == 5


def test_duplicate_pvalues_shrink_as_the_flood_grows():
    scores = []
    for size in (4, 8, 16, 32):
        reference, batch, copies = _flood_case(size)
        scores.append(DuplicateFlood().fit(reference, BLOB_SPEC).score(batch)["score"].to_numpy()[copies].min())
    assert scores == sorted(scores) and scores[-1] > scores[0] + 10


def test_rows_beside_an_exact_flood_are_not_swept_in_with_it():
    """Copies are set aside before the radius test, so three ordinary rows a hair away from
    twenty copies (same label) are not counted as part of the flood."""
    reference, batch, copies = _flood_case(20)
    beside = batch.loc[batch.index[copies][:3]].copy()
    beside[["x", "y", "z"]] += np.array([[0.01, 0, 0], [0, 0.01, 0], [0, 0, 0.01]])
    batch = _numbered(pd.concat([batch, beside]))
    result = DuplicateFlood().fit(reference, BLOB_SPEC).score(batch)
    assert result["flagged"].to_numpy()[:-3].tolist() == copies.tolist()
    assert not result["flagged"].to_numpy()[-3:].any()


def test_duplicates_the_reference_also_has_are_not_a_flood():
    """30 % of trusted rows are one repeated point; a batch with the same share is not flooded."""
    rng = np.random.default_rng(2)

    def draw(n: int) -> pd.DataFrame:
        frame = _blobs(n, rng)
        repeated = rng.random(n) < 0.3
        frame.loc[repeated, ["x", "y", "z"]] = [0.5, 0.5, 0.5]
        frame.loc[repeated, "label"] = "A"
        return frame

    reference, batch = draw(1000), draw(400)
    detector = DuplicateFlood().fit(reference, BLOB_SPEC)
    assert detector.radius_ == pytest.approx(0.05 * np.sqrt(3))  # median trusted gap is 0: the floor
    assert not detector.score(batch)["flagged"].any()


def test_rows_without_a_label_are_compared_with_every_row():
    reference, batch, copies = _flood_case(20)
    batch.loc[copies, "label"] = None
    result = DuplicateFlood().fit(reference, BLOB_SPEC).score(batch)
    assert result["flagged"].to_numpy().tolist() == copies.tolist()
    assert (
        result["reason"]
        .iloc[-1]
        .startswith("one of 20 identical rows in this batch; the reference has 0 rows identical to it; a clean batch brings")
    )


def _described(points: np.ndarray, axes: np.ndarray, loaded: list[int]) -> _Rows:
    """Rows as a batch summary describes them; ``loaded`` records how many are fetched whole."""

    def load(positions):
        loaded.append(len(positions))
        return points[positions]

    return _Rows(_row_keys(points), points @ axes, np.arange(len(points)), load)


def test_close_counts_screened_by_projection_equal_brute_force():
    rng = np.random.default_rng(3)
    points = np.round(rng.normal(size=(400, 12)), 1)  # many ties and near-ties
    points[:50] = points[0]
    axes = _principal_axes(points, n_axes=3)
    distances = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=2)
    counter = CloseCounter(points, axes)
    for radius in (0.0, 0.25, 0.95, 2.55):  # off the 0.1 grid, where numpy and a KD-tree may round apart
        loaded: list[int] = []
        among = _described(points, axes, loaded).count_among(radius)
        np.testing.assert_array_equal(among, (distances <= radius).sum(axis=1) - 1)
        if radius == 0.25:  # the 50 copies and the rows this close in projection; the rest are screened out
            assert 50 <= sum(loaded) < len(points) / 2
        queries = points[:40] + 0.05
        expected = (np.linalg.norm(queries[:, None, :] - points[None, :, :], axis=2) <= radius).sum(axis=1)
        np.testing.assert_array_equal(counter.count(_described(queries, axes, []), radius), expected)


def test_tarone_counts_only_the_groups_that_could_be_significant():
    # alpha 0.01: K = 1 allows 1 group with least p <= 0.01 (there are 2: 1e-9, 0.004); K = 2 allows
    # 2 with least p <= 0.005 (1e-9, 0.004): K = 2. The pairs (least p 0.3) never count.
    assert tarone_count(np.array([1e-9, 0.004, 0.3, 0.3, 0.3, 0.3]), 0.01) == 2
    assert tarone_count(np.array([0.3, 0.3]), 0.01) == 1
    assert tarone_count(np.array([]), 0.01) == 1
    assert tarone_count(np.full(5, 1e-9), 0.01) == 5


# --- false alarms on clean batches ----------------------------------------------------------------


@pytest.mark.parametrize("detector", [TriggerPattern, DuplicateFlood])
def test_clean_batches_drawn_like_the_reference_raise_at_most_alpha_alarms(detector):
    """Each detector controls the chance of any false flag in a clean batch at alpha = 0.01, so
    over 20 clean batches one with a flag is already unlucky."""
    rng = np.random.default_rng(4)
    fitted = detector().fit(_mixed(2000, rng), MIXED_SPEC)
    with_flags = sum(fitted.score(_mixed(500, rng))["flagged"].any() for _ in range(20))
    assert with_flags <= 1


@pytest.mark.skipif(not HMDA.exists(), reason="needs ../shared/datasets/hmda.parquet")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_flags_on_a_clean_split_of_real_hmda_data(seed):
    frame = pd.read_parquet(HMDA).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    spec = FeatureSpec.from_kinds(column_kinds(frame), "deny", ("afam",))
    half = len(frame) // 2
    reference, batch = _numbered(frame.iloc[:half]), _numbered(frame.iloc[half:])
    for detector in (TriggerPattern(), DuplicateFlood()):
        assert not detector.fit(reference, spec).score(batch)["flagged"].any()
