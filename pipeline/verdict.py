"""Is this batch poisoned, and how much? A test of the batch as a whole, and an estimate per kind.

One flipped label is weak evidence; a hundred are overwhelming even when no single one is. A
row-by-row test against a few hundred noisy trusted rows cannot hold a single flip within a 1 %
error budget, but the batch as a whole can be tested, and the number of poisoned rows estimated.

Kinds of evidence, each with a test of "this batch is clean" and an estimate of its rows:

- ``label_flips``, ``outliers`` (row-scoped detectors with conformal p-values). A clean batch's
  p-values are uniform; poison piles them up near 0. With m trusted calibration rows, the count
  of batch p-values <= t is exactly BetaBinomial(n, j, m + 1 - j), j = floor(t (m + 1)), when the
  batch is exchangeable with the calibration rows: they share one calibration set, so a plain
  binomial is wrong (it alarms on large clean batches). The test counts p-values at thresholds
  ``THRESHOLDS`` against that exact distribution, summed over the detector's calibration cells,
  and takes the smallest tail, Bonferroni over the thresholds. The estimate fits the share of
  poisoned rows by maximum likelihood on binned p-values, poison shaped like the detector's
  simulated poison (p-values of trusted rows made into poison: flipped labels,
  ``PoisonModel.simulated``), beyond every trusted row, or below 0.01, in fitted proportions;
  its interval is the profile quasi-likelihood one, widened by the calibration set's share of
  the variance (about 1 + n / m).
- ``copies`` and ``triggers`` (group detectors): their corrected group p-values, and per held
  group its batch rows less those the trusted rate explains.
- ``invalid_values``: rows failing the suite's row rules against the share of the trusted holdout
  that fails them (a clean batch has its natural data-entry errors too).
- ``schema``: a batch-level failure holds the whole batch.

Kinds overlap; each names its rows, and the batch's estimate counts the union once.

The verdict is Bonferroni over the kinds tested: poisoned when min_k p_k * K <= ``alpha``, so a
clean batch is called poisoned with probability at most ``alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import signal, stats

from pipeline.detectors.base import PoisonModel

# The kind of poison each detector's ``detects`` names, as the verdict reports it.
KINDS = {"label_flip": "label_flips", "outlier": "outliers", "duplicate_flood": "copies", "backdoor": "triggers"}
KIND_WORDS = {
    "label_flips": "flipped labels",
    "outliers": "outliers",
    "copies": "copied or clustered rows",
    "triggers": "backdoor-trigger rows",
    "invalid_values": "impossible values",
    "schema": "schema failures",
}


@dataclass(frozen=True, eq=False)
class KindEvidence:
    """One kind of poison: its test, and how many batch rows it is estimated to hold.

    ``rows`` names them (batch positions). A *ranked* kind (a row-scoped detector's) lists its
    eligible rows most suspect first, and its first ``estimate`` are the estimated poisoned
    rows; the others list the rows they hold (a group, the rows breaking a rule), of which
    ``len(rows) - estimate`` are what a clean batch would bring anyway.
    """

    kind: str
    p_value: float
    estimate: int
    interval: tuple[int, int]
    evidence: str
    detector: str | None = None  # whose ranking holds the estimated rows
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="int64"))
    ranked: bool = False
    chance: np.ndarray | None = None  # a ranked kind's rows' probability of being this poison

    def to_hold(self, how: str, false_discovery_rate: float) -> int:
        """How many of a ranked kind's rows to hold: its ``estimate``, its interval's ``lower``
        end, (``likely``) the rows up to the estimate that are more likely poison than clean,
        (``f1``) the most likely rows that maximise the expected F1 of the hold, or (``fdr``) the
        most likely rows up to the estimate while the expected share of clean rows among them
        stays within ``false_discovery_rate``."""
        if how == "lower":
            return self.interval[0]
        if how == "likely" and self.chance is not None:
            return int((self.chance[: self.estimate] >= 0.5).sum())
        if how == "f1" and self.chance is not None and len(self.chance):
            # the k most likely rows that maximise the expected F1, 2 sum_(i<=k) c_i / (k + sum c)
            gained = np.cumsum(self.chance)
            expected_f1 = 2.0 * gained / (np.arange(1, len(gained) + 1) + gained[-1])
            return int(np.argmax(expected_f1) + 1) if gained[-1] > 0 else 0
        if how == "fdr" and self.chance is not None:
            clean_share = np.cumsum(1.0 - self.chance[: self.estimate]) / np.arange(
                1, min(self.estimate, len(self.chance)) + 1
            )
            within = clean_share <= false_discovery_rate
            return int(np.flatnonzero(within).max() + 1) if within.any() else 0
        return self.estimate

    def chosen(self, count: int) -> np.ndarray:
        """The rows behind ``count`` of this kind's estimate: the ``count`` most suspect of a ranked
        kind, every row of a held set."""
        return self.rows[:count] if self.ranked else self.rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "p_value": self.p_value,
            "estimated_rows": self.estimate,
            "interval": list(self.interval),
            "evidence": self.evidence,
            "detector": self.detector,
        }


@dataclass(frozen=True, eq=False)
class Verdict:
    """The batch as a whole: poisoned or not, how sure, how many rows and of which kinds.

    Kinds overlap (a flood of flipped copies is copies and flips, an impossible record may be an
    outlier too), so the batch's estimate is the size of the union of the rows each significant
    kind's estimate names, less what the held sets' clean rates explain (``_union``)."""

    poisoned: bool
    p_value: float
    alpha: float
    rows: int
    by_kind: dict[str, KindEvidence] = field(default_factory=dict)
    drift_note: str | None = None

    @property
    def kinds_tested(self) -> int:
        return max(1, len(self.by_kind))

    def significant(self, kind: str) -> bool:
        """The kind's own evidence carries the verdict (its p-value, Bonferroni over the kinds)."""
        found = self.by_kind.get(kind)
        return found is not None and self.poisoned and found.p_value * self.kinds_tested <= self.alpha

    def _union(self, end: int) -> int:
        """Rows named by every kind's low end (0), estimate (1) or high end (2) of its interval.

        Held sets (groups, rule breaks) first, less what their clean rates explain; then each
        ranked kind's count, less the poison of its kind that it expects among the rows already
        named (a flipped copy in a flood is a copy and a flip: counted once), from its most
        suspect rows not yet named. A kind whose evidence does not carry the verdict counts at the
        high end only: an excess the data cannot show, nor rule out."""
        named = np.zeros(self.rows, dtype=bool)
        explained = 0
        for name, kind in sorted(self.by_kind.items(), key=lambda item: item[1].ranked):  # held sets first
            if end < 2 and not self.significant(name):
                continue
            count = (kind.interval[0], kind.estimate, kind.interval[1])[end]
            rows = kind.rows[kind.rows < self.rows]
            if not kind.ranked:
                named[rows] = True
                explained += len(rows) - count
                continue
            already = named[rows]
            expected_there = float(kind.chance[: len(rows)][already].sum()) if kind.chance is not None else 0.0
            fresh = rows[~already]
            named[fresh[: max(0, int(round(count - min(count, expected_there))))]] = True
        return int(min(self.rows, max(0, int(named.sum()) - explained)))

    @property
    def estimated_poisoned_rows(self) -> int:
        return self._union(1)

    @property
    def interval(self) -> tuple[int, int]:
        return self._union(0), max(self._union(2), self._union(1))

    @property
    def evidence(self) -> list[str]:
        return [
            k.evidence
            for k in sorted(self.by_kind.values(), key=lambda k: k.p_value)
            if k.p_value * self.kinds_tested <= self.alpha
        ]

    def headline(self) -> str:
        low, high = self.interval
        if not self.poisoned:
            # "clean" means "nothing in excess", not "nothing there": where a detector is weak (labels
            # barely predictable) a tenth of the rows could be flipped without the batch showing it
            hidden = sorted(
                ((k.interval[1], KIND_WORDS.get(name, name)) for name, k in self.by_kind.items() if k.ranked),
                reverse=True,
            )
            limit = ", ".join(f"{count} {words}" for count, words in hidden if count > 0)
            return (
                f"Verdict: clean (p = {self.p_value:.2g}; no kind of poisoning is in excess of what a clean "
                f"batch shows at alpha = {self.alpha:g})."
                + (
                    f" Up to {high} of {self.rows} rows could still be poisoned without this batch showing it "
                    f"(at most {limit})."
                    if high and limit
                    else ""
                )
            )
        kinds = ", ".join(
            f"{k.estimate} {KIND_WORDS.get(name, name)}" for name, k in self.by_kind.items() if self.significant(name)
        )
        return (
            f"Verdict: POISONED (p = {self.p_value:.2g}): an estimated {self.estimated_poisoned_rows} of "
            f"{self.rows} rows ({low}-{high}) are poisoned: {kinds}."
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "poisoned": self.poisoned,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "estimated_poisoned_rows": self.estimated_poisoned_rows,
            "interval": list(self.interval),
            "by_kind": {name: k.as_dict() for name, k in self.by_kind.items()},
            "evidence": self.evidence,
            "drift_note": self.drift_note,
            "headline": self.headline(),
        }


def kind_of(detector: Any) -> str | None:
    """The verdict's kind for a detector (None: it is not one of the verdict's kinds)."""
    return KINDS.get(getattr(detector, "detects", ""))


# --- the excess of small p-values ------------------------------------------------------------

# Bins of p-values the test and the estimate work on: fine near 0, where poison lives. Each cell
# also gets a first bin of its own, [0, 1 / (m + 1)]: a row beyond every one of its m trusted
# rows lands there, and a clean row with probability 1 / (m + 1) only.
EDGES = np.array([0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
_SHAPE_PRIOR_ROWS = 100.0  # the pooled poison shape is worth this many simulated rows in each cell


def cell_edges(calibration_rows: int) -> np.ndarray:
    """``EDGES`` with the cell's "beyond every trusted row" bin in front (empty when 1 / (m + 1)
    is not below the first edge)."""
    beyond = min(1.0 / (calibration_rows + 1.0), EDGES[1])
    return np.concatenate([[0.0, beyond], EDGES[1:]])


@dataclass(frozen=True)
class CellCounts:
    """A detector's batch p-values binned per calibration cell (``cell_edges``): what the test
    and the estimate need, with each cell's bins, how a clean row falls in them, and the poison's
    binned shape there."""

    counts: np.ndarray  # (cells, bins)
    edges: np.ndarray  # (cells, bins + 1)
    # (cells, bins): the gaps between the cell's trusted rows that fall in each bin (a clean row
    # falls in each gap with equal chance)
    gaps: np.ndarray
    poison: np.ndarray  # (cells, bins): the share of a poisoned row's p-value in each bin

    @property
    def rows(self) -> int:
        return int(self.counts.sum())

    @property
    def clean(self) -> np.ndarray:
        """A clean row's expected chance of each bin."""
        return self.gaps / self.gaps.sum(axis=1, keepdims=True)

    @classmethod
    def of(cls, pvalues: np.ndarray, cells: np.ndarray, model: PoisonModel) -> CellCounts:
        pvalues, cells = np.asarray(pvalues, dtype="float64"), np.asarray(cells, dtype="int64")
        known = np.isin(cells, list(model.calibration_rows))
        tested = known & (cells >= 0) & ~np.isnan(pvalues)
        present = np.unique(cells[tested])
        # (a batch whose rows this kind leaves all untested has no cell: empty arrays of the right width)
        width = len(cell_edges(1))
        edges = np.array([cell_edges(model.calibration_rows[int(c)]) for c in present]).reshape(len(present), width)
        counts = np.array(
            [_binned(pvalues[tested & (cells == c)], e) for c, e in zip(present, edges)], dtype="int64"
        ).reshape(len(present), len(EDGES))
        gaps = np.array([_gap_weights(model, int(c), e) for c, e in zip(present, edges)]).reshape(counts.shape)
        poison = np.array([_poison_shape(model, int(c), e) for c, e in zip(present, edges)]).reshape(counts.shape)
        return cls(counts, edges, gaps, poison)


def _gap_weights(model: PoisonModel, cell: int, edges: np.ndarray) -> np.ndarray:
    """The Dirichlet weights of a clean row's chance of each bin: with m calibration rows, how
    many of the m + 1 gaps between them (into which an exchangeable row falls with equal chance)
    lie in the bin."""
    rows = model.calibration_rows[cell]
    return np.diff(np.round(edges * (rows + 1.0)))


def _binned(pvalues: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin, each bin (lo, hi] (the first [0, hi]): a p-value of exactly 1 / (m + 1) is
    a row as suspect as the most suspect trusted row, in the first bin."""
    return np.bincount(
        np.clip(np.searchsorted(edges, np.clip(pvalues, 0.0, 1.0), side="left") - 1, 0, len(edges) - 2),
        minlength=len(edges) - 1,
    )


def obvious_shape(edges: np.ndarray) -> np.ndarray:
    """Poison more suspect than 99 % of trusted rows: its p-values uniform below the first edge
    of ``EDGES`` (the bins there, "beyond every trusted row" included, share it by width)."""
    below = np.clip(np.minimum(edges[1:], EDGES[1]) - edges[:-1], 0.0, None)
    return below / below.sum()


def _poison_shape(model: PoisonModel, cell: int, edges: np.ndarray) -> np.ndarray:
    """Where a poisoned row's p-value falls, bin by bin: as the detector's simulated poison of
    that cell falls, its few hundred rows shrunk toward the pooled shape (a cell's own histogram
    is ragged in the narrow bins near 0), or, for poison beyond every trusted row (no
    simulation), all of it in the first bin."""
    if model.simulated is None or not len(model.simulated):
        return obvious_shape(edges)
    pooled = _binned(model.simulated, edges) / len(model.simulated)
    if model.simulated_cells is None:
        return pooled
    own = _binned(model.simulated[model.simulated_cells == cell], edges)
    return (own + _SHAPE_PRIOR_ROWS * pooled) / (own.sum() + _SHAPE_PRIOR_ROWS)


THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class ThresholdCount:
    """At one threshold (None: "beyond every trusted row of the cell", p <= 1 / (m + 1)): the
    batch's count of p-values at or below it, a clean batch's expected count, and that count's
    exact null distribution, the sum over cells of BetaBinomial(n_c, j_c, m_c + 1 - j_c),
    j_c = floor(t (m_c + 1)) (a cell's rows share its m_c calibration rows)."""

    threshold: float | None
    observed: int
    expected: float
    null: np.ndarray  # pmf over 0..n


def threshold_counts(
    pvalues: np.ndarray, cells: np.ndarray, calibration_rows: dict[int, int], thresholds: tuple[float, ...] = THRESHOLDS
) -> tuple[int, list[ThresholdCount]]:
    """The tested rows' number and their ``ThresholdCount`` at each of ``thresholds`` and beyond
    every trusted row (where far outliers land: 9 of them in 332 rows are plain there and lost
    among 3 clean rows at 0.01). Rows in cell -1, or in a cell without calibration rows, are not
    tested."""
    pvalues, cells = np.asarray(pvalues, dtype="float64"), np.asarray(cells, dtype="int64")
    tested = (cells >= 0) & ~np.isnan(pvalues) & np.isin(cells, list(calibration_rows))
    groups = [(pvalues[tested & (cells == c)], calibration_rows[int(c)]) for c in np.unique(cells[tested])]
    counts = []
    for t in (*thresholds, None):
        null, observed, expected = np.ones(1), 0, 0.0
        for values, rows in groups:
            cut = 1.0 / (rows + 1.0) if t is None else t
            j = max(1, int(np.floor(cut * (rows + 1) + 1e-9)))
            null = _convolve(null, stats.betabinom.pmf(np.arange(len(values) + 1), len(values), j, rows + 1 - j))
            observed += int((values <= cut + 1e-12).sum())
            expected += len(values) * j / (rows + 1.0)  # a clean row's chance of p <= cut: j / (m + 1)
        counts.append(ThresholdCount(t, observed, expected, null))
    return int(tested.sum()), counts


def excess_pvalue(
    pvalues: np.ndarray, cells: np.ndarray, calibration_rows: dict[int, int], thresholds: tuple[float, ...] = THRESHOLDS
) -> float:
    """P-value of "these conformal p-values come from rows exchangeable with their calibration
    rows": at each threshold, the count of p <= t against its exact null (``threshold_counts``);
    the smallest tail, Bonferroni over ``thresholds`` and the "beyond" threshold.

    The counts at fixed thresholds, not a statistic weighted by the detector's simulated poison:
    weights fitted to that simulation either follow its ragged histogram (and clean batches
    scored high) or smooth it away (on HMDA, 10 % random flips were found in 1 of 8 batches
    where the thresholds find all 8)."""
    n, counts = threshold_counts(pvalues, cells, calibration_rows, thresholds)
    if not n:
        return 1.0
    tails = [float(np.clip(c.null[c.observed :].sum(), 0.0, 1.0)) for c in counts]
    return min(1.0, min(tails) * len(tails))


def visible_excess(
    pvalues: np.ndarray, cells: np.ndarray, calibration_rows: dict[int, int], thresholds: tuple[float, ...] = THRESHOLDS
) -> tuple[float, float]:
    """How many poisoned rows the counts of small p-values show, whatever the poison's shape, and
    a 95 % lower bound on it. The estimate: max over the thresholds t (and "beyond every trusted
    row") of (X_t - E[X_t]) / (1 - t), the rows that explain the excess if every poisoned row lies
    at or below t and the rest are clean; an underestimate where poison hides above every
    threshold, never a multiple of what is seen. The bound: max over t of X_t less the clean
    count's upper 0.05 / (2T) quantile (its exact beta-binomial null; simultaneous over the T
    thresholds)."""
    n, counts = threshold_counts(pvalues, cells, calibration_rows, thresholds)
    if not n:
        return 0.0, 0.0
    estimate = max(0.0, *((c.observed - c.expected) / max(1.0 - c.expected / n, 1e-9) for c in counts))
    level = 1.0 - 0.05 / (2 * len(counts))
    lower = max(0.0, *(c.observed - float(np.searchsorted(np.cumsum(c.null) / c.null.sum(), level)) for c in counts))
    return estimate, min(lower, estimate)


def _convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The distribution of a sum of two independent counts (FFT: a 10^6-row cell is one array)."""
    if len(a) == 1:
        return b * a[0]
    return np.clip(signal.fftconvolve(a, b), 0.0, None)


@dataclass(frozen=True)
class Mixture:
    """Batch p-values as (1 - share) clean (uniform) + share poison; poison is like the simulated
    poison, beyond every trusted row, or below 0.01, in proportions fitted with the share."""

    share: float
    low: float
    high: float
    shapes: np.ndarray | None = None  # (cells, bins): the fitted poison's shape in each cell


_SHARE_GRID = np.linspace(0.0, 1.0, 1001)
_MIX_GRID = np.linspace(0.0, 1.0, 11)
_INTERVAL = 0.95


def fit_mixture(counts: CellCounts) -> Mixture:
    """Maximum-likelihood share of poisoned rows, on the binned p-values of every cell (the same
    share everywhere; the poison's shape the cell's own), with a profile quasi-likelihood
    interval: the calibration set is shared by every row of a cell, which inflates the variance
    of its counts by about 1 + n / m."""
    n = counts.rows
    if n == 0:
        return Mixture(0.0, 0.0, 0.0)
    uniform = counts.clean  # (cells, bins)
    beyond = np.zeros(uniform.shape)
    beyond[:, 0] = 1.0
    below = np.array([obvious_shape(edges) for edges in counts.edges])
    # the poison's shape in each cell: the simulated poison's, "beyond every trusted row" and
    # "below 0.01", in every proportion on a grid (weights of the first two; the third takes the rest)
    weights = [(a, b) for a in _MIX_GRID for b in _MIX_GRID if a + b <= 1.0 + 1e-9]
    by_mix = np.empty((len(_SHARE_GRID), len(weights)))
    share = _SHARE_GRID[:, None, None]
    for index, (simulated, extreme) in enumerate(weights):
        shape = simulated * counts.poison + extreme * beyond + (1.0 - simulated - extreme) * below
        cells = (1.0 - share) * uniform[None] + share * shape[None]
        by_mix[:, index] = (counts.counts * np.log(np.maximum(cells, 1e-300))).sum(axis=(1, 2))
    loglik = by_mix.max(axis=1)
    best = int(np.argmax(loglik))
    simulated, extreme = weights[int(np.argmax(by_mix[best]))]
    fitted = simulated * counts.poison + extreme * beyond + (1.0 - simulated - extreme) * below
    rows_per_set = float(np.average(counts.gaps.sum(axis=1), weights=counts.counts.sum(axis=1)))
    inflation = 1.0 + n / (rows_per_set + 2.0)
    inside = 2.0 * (loglik[best] - loglik) <= stats.chi2.ppf(_INTERVAL, 1) * inflation
    return Mixture(float(_SHARE_GRID[best]), float(_SHARE_GRID[inside].min()), float(_SHARE_GRID[inside].max()), fitted)


def posterior(
    pvalues: np.ndarray, cells: np.ndarray, counts: CellCounts, present: np.ndarray, mixture: Mixture
) -> np.ndarray:
    """Each row's probability of being poison under the fitted mixture: share x poison density
    over the mixture's density, at the row's bin of its cell (0 where nothing is estimated)."""
    out = np.zeros(len(pvalues))
    if mixture.shapes is None or mixture.share == 0.0:
        return out
    clean = counts.clean
    for index, cell in enumerate(present):
        mine = np.flatnonzero(cells == cell)
        bins = np.clip(
            np.searchsorted(counts.edges[index], np.clip(pvalues[mine], 0.0, 1.0), side="left") - 1, 0, clean.shape[1] - 1
        )
        poison = mixture.share * mixture.shapes[index, bins]
        out[mine] = poison / np.maximum(poison + (1.0 - mixture.share) * clean[index, bins], 1e-300)
    return out


# --- one kind at a time ----------------------------------------------------------------------


def row_evidence(name: str, pvalues: np.ndarray, cells: np.ndarray, model: PoisonModel) -> KindEvidence:
    """A row-scoped detector's kind: the excess test and the mixture estimate of its p-values,
    and its rows ranked most suspect first (rows in cell -1, which the detector does not test or
    the verdict leaves to another kind, are left out)."""
    pvalues, cells = np.asarray(pvalues, dtype="float64"), np.asarray(cells, dtype="int64")
    counts = CellCounts.of(pvalues, cells, model)
    n = counts.rows
    thresholds = THRESHOLDS if model.thresholds is None else model.thresholds
    p_value = excess_pvalue(pvalues, cells, model.calibration_rows, thresholds)
    mixture = fit_mixture(counts)
    # The mixture assumes the poison's shape (the detector's simulated poison); where that shape
    # is close to a clean row's (a weak detector), a real excess of small p-values is explained by
    # a share many times the truth (wells: 351-421 rows estimated for 60 targeted flips). No more
    # rows are estimated than the counts show without any shape (``visible_excess``).
    visible, visible_low = visible_excess(pvalues, cells, model.calibration_rows, thresholds)
    if n and mixture.share * n > visible:
        mixture = replace(mixture, share=visible / n, low=min(mixture.low, visible_low / n))
    estimate = int(round(mixture.share * n))
    interval = (int(np.floor(mixture.low * n)), int(np.ceil(mixture.high * n)))
    eligible = np.flatnonzero((cells >= 0) & ~np.isnan(pvalues) & np.isin(cells, list(model.calibration_rows)))
    chance = posterior(pvalues, cells, counts, np.unique(cells[eligible]), mixture)
    # most likely poison first (a p-value says more in a cell where poison is plain than in one
    # where it hides among clean rows), then the smaller p-value
    order = np.lexsort((pvalues[eligible], -chance[eligible]))
    ranking, chance = eligible[order], chance[eligible][order]
    if thresholds:
        threshold, small = _plainest_excess(pvalues[eligible], n, thresholds)
        seen = f"{small} of {n} rows have p <= {threshold:g} from {name}, where a clean batch has about {threshold * n:.1f}"
    else:
        # a clean row lands beyond every one of its cell's m trusted rows with chance 1 / (m + 1)
        beyond = (counts.counts[:, 0] * (counts.edges[:, 1] > 0)).sum()
        expected = float((counts.counts.sum(axis=1) * counts.edges[:, 1]).sum())
        seen = (
            f"{int(beyond)} of {n} rows are more suspect to {name} than every trusted row, where a clean batch "
            f"has about {expected:.1f}"
        )
    evidence = (
        f"{seen} (excess test p = {p_value:.2g}); estimated {estimate} "
        f"{KIND_WORDS.get(model.kind, model.kind)} ({interval[0]}-{interval[1]})"
    )
    return KindEvidence(model.kind, p_value, estimate, interval, evidence, name, ranking, ranked=True, chance=chance)


def _plainest_excess(pvalues: np.ndarray, n: int, thresholds: tuple[float, ...]) -> tuple[float, int]:
    """The threshold of ``thresholds`` whose count of p-values at or below it stands furthest
    above a clean batch's (in binomial standard deviations), and that count: what the evidence
    line shows a person (the test itself weighs every threshold)."""
    counts = np.array([(pvalues <= t).sum() for t in thresholds])
    t = np.array(thresholds)
    z = (counts - t * n) / np.sqrt(np.maximum(n * t * (1 - t), 1e-12))
    best = int(np.argmax(z)) if n else 0
    return thresholds[best], int(counts[best])


def group_evidence(kind: str, name: str, scores: pd.DataFrame) -> KindEvidence:
    """A group detector's kind: its smallest corrected group p-value; per held group, its batch
    rows less those the trusted rate explains (at most: all of them; at least: less the rate's
    97.5 % Poisson quantile)."""
    corrected = 1.0 - scores["calibrated"].to_numpy(dtype="float64")
    p_value = float(np.clip(corrected.min(), 0.0, 1.0)) if len(corrected) else 1.0
    held = scores[scores["flagged"].to_numpy(dtype=bool) & (scores["group"].to_numpy() >= 0)]
    per_group = held.groupby("group").agg(rows=("group", "size"), expected=("group_expected", "first"))
    rows = per_group["rows"].to_numpy(dtype="float64")
    expected = per_group["expected"].to_numpy(dtype="float64")
    estimate = int(np.maximum(rows - expected, 0.0).sum())
    low = int(np.maximum(rows - stats.poisson.ppf(0.975, expected), 0.0).sum())
    high = int(rows.sum())
    evidence = (
        f"{len(per_group)} group(s) of {KIND_WORDS[kind]} that a clean batch would not bring "
        f"(smallest corrected p = {p_value:.2g}): {high} rows held"
        if len(per_group)
        else f"no group of {KIND_WORDS[kind]} beyond what a clean batch brings (smallest corrected p = {p_value:.2g})"
    )
    return KindEvidence(kind, p_value, estimate, (low, high), evidence, name, held["row_number"].to_numpy(dtype="int64"))


def invalid_evidence(failing: np.ndarray, rows: int, holdout_failing: int, holdout_rows: int) -> KindEvidence:
    """Rows breaking the suite's row rules (``failing``: their positions), against the trusted
    holdout's share: the predictive tail P(X >= failing) with X beta-binomial, the holdout's
    count under a Jeffreys prior giving the rate (a clean batch has its natural data-entry errors
    too, and a rule inferred from the reference fails no reference row, so the holdout judges)."""
    count = len(failing)
    if rows == 0:
        return KindEvidence("invalid_values", 1.0, 0, (0, 0), "no rows")
    a, b = holdout_failing + 0.5, holdout_rows - holdout_failing + 0.5
    p_value = float(stats.betabinom.sf(count - 1, rows, a, b)) if count else 1.0
    estimate = max(0, int(round(count - rows * a / (a + b))))
    low = max(0, int(count - stats.betabinom.ppf(0.975, rows, a, b)))
    evidence = (
        f"{count} of {rows} rows break the suite's row rules, where the trusted holdout breaks them in "
        f"{holdout_failing} of {holdout_rows} rows (p = {p_value:.2g})"
    )
    return KindEvidence(
        "invalid_values", min(1.0, p_value), estimate, (low, count), evidence, rows=np.asarray(failing, dtype="int64")
    )


def schema_evidence(rows: int, messages: list[str]) -> KindEvidence:
    return KindEvidence(
        "schema",
        0.0,
        rows,
        (rows, rows),
        "the batch fails the suite's schema: " + "; ".join(messages),
        rows=np.arange(rows, dtype="int64"),
    )


def combine(kinds: list[KindEvidence], rows: int, alpha: float, drift_columns: list[str] | None = None) -> Verdict:
    """Bonferroni over the kinds: poisoned when the smallest p-value times the kinds tested is at
    most ``alpha``."""
    by_kind = {k.kind: k for k in kinds}
    p_value = min(1.0, min((k.p_value for k in kinds), default=1.0) * max(1, len(kinds)))
    poisoned = p_value <= alpha
    note = None
    flips = by_kind.get("label_flips")
    if drift_columns and flips is not None and flips.p_value * max(1, len(kinds)) <= alpha:
        note = (
            f"The batch's features moved away from the reference ({', '.join(drift_columns)}): rows unlike the "
            "trusted data can look label-inconsistent without being flipped, so drift, not poisoning, may "
            "explain part of the excess of inconsistent labels."
        )
    return Verdict(poisoned, p_value, alpha, rows, by_kind, note)
