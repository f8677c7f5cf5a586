"""Is this batch poisoned, and how much? A test of the batch as a whole, and an estimate per kind.

One flipped label is weak evidence; a hundred are overwhelming even when no single one is. A
row-by-row test against a few hundred noisy trusted rows cannot hold a single flip within a 1 %
error budget, but the batch as a whole can be tested, and the number of poisoned rows estimated.

Kinds of evidence, each with a test of "this batch is clean" and an estimate of its rows:

- ``label_flips``, ``outliers`` (row-scoped detectors with conformal p-values). A clean batch's
  p-values are uniform; poison piles them up near 0. With m trusted calibration rows, the count
  of batch p-values <= t is exactly BetaBinomial(n, j, m + 1 - j), j = floor(t (m + 1)), when the
  batch is exchangeable with the calibration rows: they share one calibration set, so a plain
  binomial is wrong (it alarms on large clean batches). The test weighs the counts of p-values in
  bins by how much more often the poison falls there than a clean row does (the locally most
  powerful test against it), and draws the statistic's null distribution from that exact
  structure, per calibration cell. The poison's shape comes from the detector: p-values of
  trusted rows made into poison (flipped labels, ``PoisonModel.simulated``), or all near 0 for
  rows beyond every trusted row. The estimate fits the share of poisoned rows by maximum
  likelihood on the binned p-values, poison being shaped like the simulated one or "obvious"
  (near 0), in fitted proportions; its interval is the profile quasi-likelihood one, widened by
  the calibration set's share of the variance (about 1 + n / m).
- ``copies`` and ``triggers`` (group detectors): their corrected group p-values, and per held
  group its batch rows less those the trusted rate explains.
- ``invalid_values``: rows failing the suite's row rules against the share of the trusted holdout
  that fails them (a clean batch has its natural data-entry errors too).
- ``schema``: a batch-level failure holds the whole batch.

The verdict is Bonferroni over the kinds tested: poisoned when min_k p_k * K <= ``alpha``, so a
clean batch is called poisoned with probability at most ``alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.detectors.base import PoisonModel


# The kind of poison each detector's ``detects`` names, as the verdict reports it.
KINDS = {"label_flip": "label_flips", "outlier": "outliers", "duplicate_flood": "copies", "backdoor": "triggers"}
KIND_WORDS = {"label_flips": "flipped labels", "outliers": "outliers", "copies": "copied or clustered rows",
              "triggers": "backdoor-trigger rows", "invalid_values": "impossible values", "schema": "schema failures"}


@dataclass(frozen=True)
class KindEvidence:
    """One kind of poison: its test, and how many batch rows it is estimated to hold."""

    kind: str
    p_value: float
    estimate: int
    interval: tuple[int, int]
    evidence: str
    detector: str | None = None  # whose ranking holds the estimated rows

    def as_dict(self) -> dict[str, Any]:
        return {"p_value": self.p_value, "estimated_rows": self.estimate, "interval": list(self.interval),
                "evidence": self.evidence, "detector": self.detector}


@dataclass(frozen=True)
class Verdict:
    """The batch as a whole: poisoned or not, how sure, how many rows and of which kinds."""

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

    @property
    def estimated_poisoned_rows(self) -> int:
        return min(self.rows, sum(k.estimate for k in self.by_kind.values()))

    @property
    def interval(self) -> tuple[int, int]:
        low = sum(k.interval[0] for k in self.by_kind.values())
        high = sum(k.interval[1] for k in self.by_kind.values())
        return min(self.rows, low), min(self.rows, high)

    @property
    def evidence(self) -> list[str]:
        return [k.evidence for k in sorted(self.by_kind.values(), key=lambda k: k.p_value)
                if k.p_value * self.kinds_tested <= self.alpha]

    def headline(self) -> str:
        low, high = self.interval
        if not self.poisoned:
            return (f"Verdict: clean (p = {self.p_value:.2g}; no kind of poisoning is in excess of what a clean "
                    f"batch shows at alpha = {self.alpha:g}).")
        kinds = ", ".join(f"{k.estimate} {KIND_WORDS.get(name, name)}" for name, k in self.by_kind.items()
                          if self.significant(name))
        return (f"Verdict: POISONED (p = {self.p_value:.2g}): an estimated {self.estimated_poisoned_rows} of "
                f"{self.rows} rows ({low}-{high}) are poisoned: {kinds}.")

    def as_dict(self) -> dict[str, Any]:
        return {"poisoned": self.poisoned, "p_value": self.p_value, "alpha": self.alpha,
                "estimated_poisoned_rows": self.estimated_poisoned_rows, "interval": list(self.interval),
                "by_kind": {name: k.as_dict() for name, k in self.by_kind.items()},
                "evidence": self.evidence, "drift_note": self.drift_note, "headline": self.headline()}


def kind_of(detector: Any) -> str | None:
    """The verdict's kind for a detector (None: it is not one of the verdict's kinds)."""
    return KINDS.get(getattr(detector, "detects", ""))


# --- the excess of small p-values ------------------------------------------------------------

# Bins of p-values the test and the estimate work on: fine near 0, where poison lives.
EDGES = np.array([0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
_DRAWS = 20_000  # Monte Carlo draws of the null: p-values down to 5e-5, well below alpha / kinds
_SEED = 20261203


@dataclass(frozen=True)
class CellCounts:
    """A detector's batch p-values binned by ``EDGES``, per calibration cell: what the test and
    the estimate need, with each cell's calibration size and the poison's binned shape there."""

    counts: np.ndarray  # (cells, bins)
    calibration_rows: np.ndarray  # (cells,)
    poison: np.ndarray  # (cells, bins): the share of a poisoned row's p-value in each bin

    @property
    def rows(self) -> int:
        return int(self.counts.sum())

    @classmethod
    def of(cls, pvalues: np.ndarray, cells: np.ndarray, model: PoisonModel) -> "CellCounts":
        pvalues, cells = np.asarray(pvalues, dtype="float64"), np.asarray(cells, dtype="int64")
        tested = (cells >= 0) & ~np.isnan(pvalues)
        present = np.unique(cells[tested])
        counts = np.array([np.histogram(np.clip(pvalues[tested & (cells == c)], 0, 1), EDGES)[0] for c in present],
                          dtype="int64").reshape(len(present), len(EDGES) - 1)
        sizes = np.array([model.calibration_rows.get(int(c), 0) for c in present], dtype="int64")
        return cls(counts, sizes, np.array([_poison_shape(model, int(c)) for c in present]).reshape(counts.shape))


def _poison_shape(model: PoisonModel, cell: int) -> np.ndarray:
    """Where a poisoned row's p-value falls, bin by bin: as the detector's simulated poison of
    that cell falls (all of it, when the cell has none), or, for poison beyond every trusted row
    (no simulation), in the first bin."""
    obvious = np.zeros(len(EDGES) - 1)
    obvious[0] = 1.0
    if model.simulated is None:
        return obvious
    simulated = model.simulated if model.simulated_cells is None else model.simulated[model.simulated_cells == cell]
    if not len(simulated):
        simulated = model.simulated
    return np.histogram(np.clip(simulated, 0.0, 1.0), EDGES)[0] / len(simulated)


def excess_pvalue(counts: CellCounts) -> float:
    """P-value of "these conformal p-values come from rows exchangeable with their calibration
    rows", by the locally most powerful statistic against the poison's shape: each bin's count
    weighted by how much more often poison falls there than a clean row, ``poison / width - 1``.

    Its null distribution is drawn, not approximated: with m calibration rows, the chance a clean
    row's p-value falls in each bin is a Dirichlet spacing of the calibration quantiles, shared by
    the cell's rows, and the counts multinomial given it (the exact structure behind
    BetaBinomial(n, j, m + 1 - j) for one threshold)."""
    if counts.rows == 0:
        return 1.0
    widths = np.diff(EDGES)
    weights = counts.poison / widths - 1.0
    observed = float((counts.counts * weights).sum())
    rng = np.random.default_rng(_SEED)
    drawn = np.zeros(_DRAWS)
    for row_counts, rows, weight in zip(counts.counts, counts.calibration_rows, weights):
        n = int(row_counts.sum())
        if not n:
            continue
        cuts = np.maximum(np.floor(EDGES[1:-1] * (rows + 1)).astype("int64"), 1)
        spacings = np.diff(np.concatenate([[0], np.maximum.accumulate(cuts), [rows + 1]])).astype("float64")
        chances = rng.dirichlet(np.maximum(spacings, 1e-6), size=_DRAWS)
        drawn += rng.multinomial(n, chances) @ weight
    return float((1 + np.sum(drawn >= observed - 1e-9)) / (_DRAWS + 1))


@dataclass(frozen=True)
class Mixture:
    """Batch p-values as (1 - share) clean (uniform) + share poison; poison is ``obvious`` (in
    the first bin) or like the simulated poison, in proportions fitted with the share."""

    share: float
    low: float
    high: float


_SHARE_GRID = np.linspace(0.0, 1.0, 1001)
_OBVIOUS_GRID = np.linspace(0.0, 1.0, 21)
_INTERVAL = 0.95


def fit_mixture(counts: CellCounts) -> Mixture:
    """Maximum-likelihood share of poisoned rows, on the binned p-values of every cell (the same
    share everywhere; the poison's shape the cell's own), with a profile quasi-likelihood
    interval: the calibration set is shared by every row of a cell, which inflates the variance
    of its counts by about 1 + n / m."""
    n = counts.rows
    if n == 0:
        return Mixture(0.0, 0.0, 0.0)
    uniform = np.diff(EDGES)
    obvious = np.zeros(len(uniform))
    obvious[0] = 1.0
    # poison's shape per cell: a mix of the simulated shape and the obvious one
    shapes = _OBVIOUS_GRID[:, None, None] * counts.poison[None] + (1.0 - _OBVIOUS_GRID[:, None, None]) * obvious
    share = _SHARE_GRID[:, None, None, None]
    cells = (1.0 - share) * uniform + share * shapes[None]  # (shares, mixes, cells, bins)
    loglik = (counts.counts * np.log(np.maximum(cells, 1e-300))).sum(axis=(2, 3)).max(axis=1)
    best = int(np.argmax(loglik))
    rows_per_set = float(np.average(counts.calibration_rows, weights=counts.counts.sum(axis=1)))
    inflation = 1.0 + n / (rows_per_set + 2.0)
    inside = 2.0 * (loglik[best] - loglik) <= stats.chi2.ppf(_INTERVAL, 1) * inflation
    return Mixture(float(_SHARE_GRID[best]), float(_SHARE_GRID[inside].min()), float(_SHARE_GRID[inside].max()))


# --- one kind at a time ----------------------------------------------------------------------

def row_evidence(name: str, pvalues: np.ndarray, cells: np.ndarray, model: PoisonModel) -> KindEvidence:
    """A row-scoped detector's kind: the excess test and the mixture estimate of its p-values
    (rows in cell -1, which the detector does not test, left out)."""
    counts = CellCounts.of(pvalues, cells, model)
    n = counts.rows
    p_value = excess_pvalue(counts)
    mixture = fit_mixture(counts)
    estimate = int(round(mixture.share * n))
    interval = (int(np.floor(mixture.low * n)), int(np.ceil(mixture.high * n)))
    small = int(counts.counts[:, 0].sum())
    evidence = (f"{small} of {n} rows have a {name} p-value <= {EDGES[1]:g} where a clean batch has about "
                f"{EDGES[1] * n:.1f} (excess test p = {p_value:.2g}); estimated {estimate} "
                f"{KIND_WORDS.get(model.kind, model.kind)} ({interval[0]}-{interval[1]})")
    return KindEvidence(model.kind, p_value, estimate, interval, evidence, name)


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
    evidence = (f"{len(per_group)} group(s) of {KIND_WORDS[kind]} that a clean batch would not bring "
                f"(smallest corrected p = {p_value:.2g}): {high} rows held" if len(per_group) else
                f"no group of {KIND_WORDS[kind]} beyond what a clean batch brings (smallest corrected p = {p_value:.2g})")
    return KindEvidence(kind, p_value, estimate, (low, high), evidence, name)


def invalid_evidence(failing: int, rows: int, holdout_failing: int, holdout_rows: int) -> KindEvidence:
    """Rows failing the suite's row rules, against the trusted holdout's share: the exact test of
    two shares (hypergeometric, pooling batch and holdout rows); the excess over that share."""
    if rows == 0:
        return KindEvidence("invalid_values", 1.0, 0, (0, 0), "no rows")
    pooled = rows + holdout_rows
    p_value = float(stats.hypergeom.sf(failing - 1, pooled, failing + holdout_failing, rows)) if failing else 1.0
    share = (holdout_failing + 0.5) / (holdout_rows + 1.0)
    estimate = max(0, int(round(failing - share * rows)))
    low = max(0, int(failing - stats.binom.ppf(0.975, rows, share)))
    evidence = (f"{failing} of {rows} rows break the suite's row rules, where the trusted holdout breaks them in "
                f"{holdout_failing} of {holdout_rows} rows (p = {p_value:.2g})")
    return KindEvidence("invalid_values", min(1.0, p_value), estimate, (low, failing), evidence)


def schema_evidence(rows: int, messages: list[str]) -> KindEvidence:
    return KindEvidence("schema", 0.0, rows, (rows, rows), "the batch fails the suite's schema: " + "; ".join(messages))


def combine(kinds: list[KindEvidence], rows: int, alpha: float, drift_columns: list[str] | None = None) -> Verdict:
    """Bonferroni over the kinds: poisoned when the smallest p-value times the kinds tested is at
    most ``alpha``."""
    by_kind = {k.kind: k for k in kinds}
    p_value = min(1.0, min((k.p_value for k in kinds), default=1.0) * max(1, len(kinds)))
    poisoned = p_value <= alpha
    note = None
    flips = by_kind.get("label_flips")
    if drift_columns and flips is not None and flips.p_value * max(1, len(kinds)) <= alpha:
        note = (f"The batch's features moved away from the reference ({', '.join(drift_columns)}): rows unlike the "
                "trusted data can look label-inconsistent without being flipped, so drift, not poisoning, may "
                "explain part of the excess of inconsistent labels.")
    return Verdict(poisoned, p_value, alpha, rows, by_kind, note)
