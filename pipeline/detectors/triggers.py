"""Backdoor triggers: a group of batch rows sharing a rare combination of two feature values, all
carrying one label, more often than the trusted reference explains.

A backdoor plants rows such as "years_on_job > age" or "lvrat in its top 0.5 % with chist in its
bottom 0.5 %", all labelled as the attacker wants; a model trained on them learns the shortcut.
No single value is odd and no label is wrong for its neighbourhood, so outlier and label checks
miss them; what gives them away is that the combination *with that label* is crowded.

Every feature is cut into bins fitted on the reference (numeric tails get their own bins), and
for every feature pair the batch count of each (cell pair, label) group of at least
``min_group`` rows is compared with the reference count. Testing (cells, label) rather than
cells alone is what makes label concentration count: a rare cell whose labels follow the
reference's mix adds its rows to several groups, each less crowded than one all-same-label group.

Exact copies of a row count once, in the batch and in the reference: a trigger is many
*different* rows sharing a rare combination, while many copies of one row are a flood, which
the duplicates detector judges against the reference's own duplicate rate. Counted apart, the 73
copies of a spam7 flood crowded an ordinary cell pair and swept 14 clean rows into its group.

Each group is judged given each of its two cells and its label: among the batch rows with cell
a and label y, are there more with cell b than the trusted rows with cell a and label y
explain? And the same from cell b. The group's p-value is the larger of the two. A batch drawn
from one part of the population (only the rows above one feature's median: covariate shift, no
poison) crowds every cell of that part, but not one cell *given* the other; a trigger, a
combination no trusted row of that label has, is crowded either way. (Judged against the whole
reference instead, a clean batch of above-median rows held 69 of 252 HMDA rows and 326 of 887 in
the health-insurance data.) A side whose cell few trusted rows of the label fall in is judged
against all trusted rows of the label instead (``conditional_pvalue``).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy.stats import nbinom

from pipeline.detectors.base import FeatureSpec, GroupDetector, Interval, RowFetch, Summary, class_codes
from pipeline.detectors.registry import register_detector
from pipeline.errors import PoisonguardError

# Quantile edges that give each tail two bins of its own (1 % and 4 %): a trigger lives in the
# extremes, and coarser bins would drown it among ordinary rows. Tied edges collapse into one.
TAIL_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# An identifier-like column would make a pair's table huge; its rare values share one "other"
# cell (the same cut as validation's MAX_DOMAIN_SIZE).
MAX_LEVELS = 50
# Rounds of keeping and narrowing groups (see TriggerPattern._claims).
_ROUNDS = 3
# Scores are -log10(p); nbinom.sf underflows to 0 below this.
_SMALLEST_P = 1e-300


def upper_tail_pvalue(
    batch_count: np.ndarray, reference_count: np.ndarray, n_batch: int | np.ndarray, n_reference: int | np.ndarray
) -> np.ndarray:
    """P(X >= batch_count) when X is how many of ``n_batch`` rows land in a cell that
    ``reference_count`` of ``n_reference`` trusted rows landed in.

    The cell's rate is uncertain, so it is integrated out: with a Jeffreys prior the trusted
    count gives the rate a Gamma(reference_count + 1/2) posterior (in units of 1/n_reference),
    and a Poisson count under that rate is negative binomial: the Poisson limit of the
    beta-binomial predictive Beta(reference_count + 1/2, n_reference - reference_count + 1/2).

    ``scipy.stats.betabinom`` is not used because its tail sums the pmf term by term (8 s for
    20,000 groups of a 100,000-row batch) as 1 - cdf, which loses small tails: 23 rows in a cell
    none of 1,190 trusted rows is in, batch of 476, gives 1.4e-12 where the exact tail is
    2.8e-14 (this function: 4.2e-14), and 0 below ~1e-16. The negative binomial tail is a
    regularised incomplete beta, exact and vectorised. Where it matters (tail below 0.01) it is
    never smaller than the beta-binomial's, so it raises no alarm the beta-binomial would not;
    for a rare cell and a group of up to 2 % of the batch it is within a factor 1.4 of it.
    """
    counts = np.asarray(batch_count, dtype="float64")
    shape = np.asarray(reference_count, dtype="float64") + 0.5
    return np.asarray(nbinom.sf(counts - 1, shape, n_reference / (n_reference + n_batch)), dtype="float64")


@dataclass(frozen=True)
class Binning:
    """How one feature's values become cell codes, and each cell in words.

    Numeric: codes 0..len(edges) for the right-closed bins (-inf, e0], (e0, e1], ..., (e_last,
    inf), then one code for missing. Categorical: one code per trusted value, then "other"
    (unseen), then missing.
    """

    feature: str
    edges: np.ndarray | None
    levels: tuple[str, ...]
    words: tuple[str, ...]

    @property
    def n_codes(self) -> int:
        return len(self.words)

    def codes(self, values: pd.Series) -> np.ndarray:
        missing = values.isna().to_numpy().copy()
        if self.edges is not None:
            numbers = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
            missing |= ~np.isfinite(numbers)
            codes = np.searchsorted(self.edges, np.where(missing, 0.0, numbers), side="left")
        else:
            text = values.astype(object).where(~missing, "").astype(str)
            codes = pd.Index(self.levels).get_indexer(text).astype("int64")
            codes[codes < 0] = len(self.levels)
        return np.where(missing, self.n_codes - 1, codes).astype("int64")

    @classmethod
    def numeric(cls, feature: str, values: pd.Series) -> Binning:
        numbers = pd.to_numeric(values, errors="coerce").astype("float64")
        numbers = numbers[np.isfinite(numbers)].to_numpy()
        if len(numbers) == 0:  # never seen: every value is one cell
            present = f"{feature} present"
            return cls(feature, np.array([0.0]), (), (present, present, f"{feature} missing"))
        edges = np.unique(np.quantile(numbers, TAIL_QUANTILES))
        share = np.searchsorted(np.sort(numbers), edges, side="right") / len(numbers)  # share <= each edge
        words = [_numeric_words(feature, edges, share, code) for code in range(len(edges) + 1)]
        return cls(feature, edges, (), (*words, f"{feature} missing"))

    @classmethod
    def categorical(cls, feature: str, values: pd.Series) -> Binning:
        frequency = values[values.notna()].astype(str).value_counts()
        frequency = frequency.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
        levels = tuple(sorted(frequency.index[:MAX_LEVELS]))
        other = (
            f"{feature} outside its {MAX_LEVELS} most common trusted values"
            if len(frequency) > MAX_LEVELS
            else f"{feature} not seen in the reference"
        )
        words = tuple(f"{feature} = {level!r}" for level in levels)
        return cls(feature, None, levels, (*words, other, f"{feature} missing"))


def _numeric_words(feature: str, edges: np.ndarray, share: np.ndarray, code: int) -> str:
    """'lvrat in its top 1 % (> 1.9)': the tails by their trusted share, other bins by range."""
    if code == 0:
        bottom = share[0]
        return (
            f"{feature} in its bottom {_percent(bottom)} (<= {edges[0]:.4g})"
            if bottom <= 0.5
            else f"{feature} <= {edges[0]:.4g}"
        )
    if code == len(edges):
        top = 1.0 - share[-1]
        return f"{feature} in its top {_percent(top)} (> {edges[-1]:.4g})" if top <= 0.5 else f"{feature} > {edges[-1]:.4g}"
    low, high = edges[code - 1], edges[code]
    return (
        f"{feature} in ({low:.4g}, {high:.4g}] (between its {_percent(share[code - 1])} and "
        f"{_percent(share[code])} quantiles)"
    )


def _percent(share: float) -> str:
    value = 100.0 * share
    return f"{value:.0f} %" if value >= 10 or value == 0 else f"{value:.2g} %"


@dataclass(frozen=True)
class _Tests:
    """Every (pair, cells, label) group tested in one batch, one entry per group."""

    pair: np.ndarray  # index into the detector's pairs
    key: np.ndarray  # (cell_a * n_codes_b + cell_b) * n_classes + label
    count: np.ndarray  # batch rows in the group
    cell_count: np.ndarray  # batch rows in the cells, any label
    reference: np.ndarray  # trusted rows in the group
    label_batch: np.ndarray  # batch rows with the group's label
    label_reference: np.ndarray  # trusted rows with the group's label
    # per side (a, b): batch and trusted rows with that side's cell and the group's label
    given_batch: np.ndarray  # (groups, 2)
    given_reference: np.ndarray  # (groups, 2)
    pvalue: np.ndarray

    def expected(self, test: int) -> float:
        """Batch rows of the group that the trusted rate explains (the larger of the two sides')."""
        informed = self.given_reference[test] >= CONDITION_ROWS
        rates = np.where(
            informed,
            self.reference[test] / np.maximum(self.given_reference[test], 1),
            self.reference[test] / max(self.label_reference[test], 1),
        )
        batch = np.where(informed, self.given_batch[test], self.label_batch[test])
        return float(np.max(rates * batch))


# A side's cell needs this many trusted rows of the label before the other cell's rate within it
# is worth conditioning on (see ``conditional_pvalue``).
CONDITION_ROWS = 20


def conditional_pvalue(
    count: np.ndarray,
    reference: np.ndarray,
    given_batch: np.ndarray,
    given_reference: np.ndarray,
    label_batch: np.ndarray,
    label_reference: np.ndarray,
) -> np.ndarray:
    """The larger of the two sides' predictive tails: ``upper_tail_pvalue`` of ``count`` among the
    batch rows sharing the side's cell and label, against the trusted rows that do.

    A side whose cell holds fewer than ``CONDITION_ROWS`` trusted rows of the label says little
    about the other cell's rate within it (1 row: a rate anywhere from 0 to 1, and a 29-row
    backdoor went unseen). Such a side is judged as every group once was, against all trusted
    rows of the label. That is the side covariate shift cannot crowd far: a cell so sparse in the
    trusted data stays sparse in a clean batch drawn from part of the population."""
    sides = []
    for side in range(2):
        informed = given_reference[:, side] >= CONDITION_ROWS
        sides.append(
            np.where(
                informed,
                upper_tail_pvalue(count, reference, given_batch[:, side], given_reference[:, side]),
                upper_tail_pvalue(count, reference, label_batch, label_reference),
            )
        )
    return np.maximum(*sides)


@dataclass
class _Claims:
    """Scoring-time state: which significant group each row is flagged for."""

    significant: np.ndarray  # indices of the significant tests
    remaining: np.ndarray  # per significant test: its rows not yet kept by any group
    group: np.ndarray  # per row: the test that keeps it, -1 if none
    pvalue: np.ndarray  # per row: that test's p-value on the rows it keeps


@register_detector
class TriggerPattern(GroupDetector):
    """Higher score = the row belongs to a (feature pair, cells, label) group the reference cannot
    explain. ``score`` is -log10 of the p-value of the group that flags the row (re-tested on the
    rows it keeps), else of the most significant group it is in; ``calibrated`` is 1 - that
    p-value after Bonferroni correction over every group tested; ``flagged`` is that corrected
    p-value <= ``alpha``.

    Rows whose label is missing or not a trusted class are not tested (score 0): a backdoor
    needs the attacker's label to teach anything, and validation reports unknown labels.

    >>> TriggerPattern(min_group=5).fit(reference, spec).score(batch)  # doctest: +SKIP
    """

    name: ClassVar[str] = "trigger"
    detects: ClassVar[str] = "backdoor"
    _parameter_constraints: ClassVar[dict[str, Any]] = {
        "alpha": Interval(Real, 0.0, 0.5, closed="right"),
        "min_group": Interval(Integral, 2, None),
    }

    def __init__(self, *, alpha: float = 0.01, min_group: int = 5) -> None:
        self.alpha = alpha
        self.min_group = min_group

    def _fit(self, reference: pd.DataFrame, spec: FeatureSpec, holdout: pd.DataFrame | None) -> None:
        labelled = reference[reference[spec.label].notna()]
        if len(labelled) == 0:
            raise PoisonguardError("TriggerPattern needs reference rows with a label; every label is missing.")
        labelled = labelled.drop_duplicates(subset=[*spec.features, spec.label])
        self.classes_ = np.unique(labelled[spec.label].astype(str).to_numpy())
        self.binnings_ = [Binning.numeric(c, labelled[c]) for c in spec.numeric] + [
            Binning.categorical(c, labelled[c]) for c in spec.categorical
        ]
        self.pairs_ = list(combinations(range(len(self.binnings_)), 2))
        codes = self._codes(labelled)
        labels = class_codes(labelled, spec.label, self.classes_)
        self.class_counts_ = np.bincount(labels, minlength=len(self.classes_))
        # dense counts per pair: a cell-pair x label table is small (bins are few)
        self.reference_counts_ = [
            np.bincount(self._keys(codes, labels, pair), minlength=self._n_keys(pair)) for pair in self.pairs_
        ]
        self.cell_label_counts_ = self._cell_label_counts(codes, labels)

    def _cell_label_counts(self, codes: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
        """Per feature, rows per (cell, label): what a group is judged given."""
        n_classes = len(self.classes_)
        return [
            np.bincount(codes[:, f].astype("int64") * n_classes + labels, minlength=b.n_codes * n_classes).reshape(
                b.n_codes, n_classes
            )
            for f, b in enumerate(self.binnings_)
        ]

    def _codes(self, frame: pd.DataFrame) -> np.ndarray:
        return (
            np.column_stack([b.codes(frame[b.feature]) for b in self.binnings_])
            if self.binnings_
            else np.zeros((len(frame), 0), dtype="int64")
        )

    def _n_keys(self, pair: tuple[int, int]) -> int:
        a, b = pair
        return self.binnings_[a].n_codes * self.binnings_[b].n_codes * len(self.classes_)

    def _keys(
        self, codes: np.ndarray, labels: np.ndarray, pair: tuple[int, int], rows: np.ndarray | slice = slice(None)
    ) -> np.ndarray:
        """One integer per row for its (cell of a, cell of b, label) group. ``codes`` may be bytes
        (a summary's cells): widened here, two columns at a time, never the whole matrix (240 MB
        as int64 at 10^6 rows)."""
        a, b = pair
        return (codes[rows, a].astype("int64") * self.binnings_[b].n_codes + codes[rows, b]) * len(self.classes_) + labels[
            rows
        ]

    def _summarise(self, chunk: pd.DataFrame) -> Summary:
        """Each row's cell in every feature's binning, its label's class (-1: none), and a hash
        of its features and label, so that copies are counted once: ~40 bytes a row."""
        spec = self.spec_
        labels = class_codes(chunk, spec.label, self.classes_)
        content = (
            pd.util.hash_pandas_object(chunk[[*spec.features, spec.label]], index=False).to_numpy()
            if spec.label in chunk.columns
            else np.zeros(len(chunk), dtype=np.uint64)
        )
        # a feature has at most MAX_LEVELS + 2 cells, so a cell code fits a byte
        return {"cells": self._codes(chunk).astype(np.uint8), "label": labels.astype(np.int16), "content": content}

    def _score_summary(self, summary: Summary, fetch: RowFetch) -> pd.DataFrame:
        labels = summary["label"].astype("int64")
        n = len(labels)
        known = labels >= 0
        # one test row per distinct (features, label); copies share its outcome
        _, first, copy_of = np.unique(summary["content"][known], return_index=True, return_inverse=True)
        codes, labels = summary["cells"][known][first], labels[known][first]
        tests = self._tests(codes, labels)
        n_tests = max(1, len(tests.pvalue))
        threshold = self.alpha / n_tests  # Bonferroni over every group tested
        claims = self._claims(tests, codes, labels, threshold)
        background = self._background(tests, codes, labels, threshold)
        raw, group = np.ones(n), np.full(n, -1)
        raw[known] = np.where(claims.group >= 0, claims.pvalue, background)[copy_of.ravel()]
        group[known] = claims.group[copy_of.ravel()]
        adjusted = np.minimum(1.0, raw * n_tests)
        flagged = group >= 0
        reasons = np.full(n, "", dtype=object)
        expected = np.zeros(n)
        for test in np.unique(group[flagged]):
            reasons[group == test] = self._reason(tests, test)
            expected[group == test] = tests.expected(test)
        return pd.DataFrame(
            {
                "score": -np.log10(np.maximum(raw, _SMALLEST_P)),
                "calibrated": 1.0 - adjusted,
                "flagged": flagged,
                "reason": reasons,
                "group": group,
                "group_expected": expected,
            }
        )

    def _tests(self, codes: np.ndarray, labels: np.ndarray) -> _Tests:
        """One test per (pair, cells, label) group of at least ``min_group`` batch rows."""
        n_classes = len(self.classes_)
        batch_classes = np.bincount(labels, minlength=n_classes)
        batch_given = self._cell_label_counts(codes, labels)
        found: list[tuple[np.ndarray, ...]] = []
        for index, pair in enumerate(self.pairs_):
            a, b = pair
            counts = np.bincount(self._keys(codes, labels, pair), minlength=self._n_keys(pair))
            tested = np.flatnonzero(counts >= self.min_group)
            label = tested % n_classes
            cell_a, cell_b = np.divmod(tested // n_classes, self.binnings_[b].n_codes)
            cell_counts = counts.reshape(-1, n_classes).sum(axis=1)[tested // n_classes]
            reference = self.reference_counts_[index][tested]
            given_batch = np.column_stack([batch_given[a][cell_a, label], batch_given[b][cell_b, label]])
            given_reference = np.column_stack(
                [self.cell_label_counts_[a][cell_a, label], self.cell_label_counts_[b][cell_b, label]]
            )
            label_batch, label_reference = batch_classes[label], self.class_counts_[label]
            pvalue = conditional_pvalue(
                counts[tested], reference, given_batch, given_reference, label_batch, label_reference
            )
            found.append(
                (
                    np.full(len(tested), index),
                    tested,
                    counts[tested],
                    cell_counts,
                    reference,
                    label_batch,
                    label_reference,
                    given_batch,
                    given_reference,
                    pvalue,
                )
            )
        if not found:
            none, no_pairs = np.empty(0, "int64"), np.empty((0, 2), "int64")
            return _Tests(none, none, none, none, none, none, none, no_pairs, no_pairs, np.empty(0))
        return _Tests(*(np.concatenate(parts) for parts in zip(*found)))

    def _claims(self, tests: _Tests, codes: np.ndarray, labels: np.ndarray, threshold: float) -> _Claims:
        """Which significant group, if any, each row is flagged for.

        A planted group also crowds every looser group it falls in (lvrat top 1 % with any other
        feature), and those sweep in the ordinary rows that share them. So groups keep rows
        strongest first, each re-tested on the rows no stronger group kept (a group that is no
        longer significant keeps nothing), then each kept group is narrowed to a rarer group
        inside it where that drops only ordinary rows (see ``_narrow``). Rows a narrowed group
        lets go may belong to another plant the broad group had taken first, so they are
        offered again; a second round settled every case measured.
        """
        significant = np.flatnonzero(tests.pvalue <= threshold)
        claims = _Claims(
            significant=significant,
            remaining=tests.count[significant].copy(),
            group=np.full(len(labels), -1),
            pvalue=np.ones(len(labels)),
        )
        for _ in range(_ROUNDS):
            if not self._keep(tests, codes, labels, threshold, claims):
                break
            self._narrow(tests, codes, labels, threshold, claims)
        return claims

    def _in_groups(
        self, tests: _Tests, codes: np.ndarray, labels: np.ndarray, claims: _Claims, rows: np.ndarray
    ) -> np.ndarray:
        """How many of ``rows`` each significant group holds."""
        counts = np.zeros(len(claims.significant), dtype="int64")
        pairs = tests.pair[claims.significant]
        for index in np.unique(pairs):
            mine = np.flatnonzero(pairs == index)
            pair = self.pairs_[index]
            in_cells = np.bincount(self._keys(codes, labels, pair, rows), minlength=self._n_keys(pair))
            counts[mine] = in_cells[tests.key[claims.significant[mine]]]
        return counts

    def _keep(self, tests: _Tests, codes: np.ndarray, labels: np.ndarray, threshold: float, claims: _Claims) -> bool:
        """Strongest first, each significant group keeps its free rows if they alone are still
        significant. ``remaining`` counts each group's free rows, so a group is re-tested
        without looking at its rows. Returns whether any row was kept."""
        kept_any = False
        for position in np.argsort(tests.pvalue[claims.significant], kind="stable"):
            count = int(claims.remaining[position])
            test = int(claims.significant[position])
            if count < self.min_group:
                continue
            pvalue = self._pvalue(tests, test, count)
            if pvalue > threshold:
                continue
            keys = self._keys(codes, labels, self.pairs_[tests.pair[test]])
            rows = np.flatnonzero((keys == tests.key[test]) & (claims.group < 0))
            claims.group[rows], claims.pvalue[rows] = test, pvalue
            claims.remaining -= self._in_groups(tests, codes, labels, claims, rows)
            kept_any = True
        return kept_any

    def _narrow(self, tests: _Tests, codes: np.ndarray, labels: np.ndarray, threshold: float, claims: _Claims) -> None:
        """Narrow each kept group to the rarer significant group holding most of its rows, when
        the rows that drops are no more than the kept group's ordinary share.

        The strongest group of a large plant can be a broad cell: 8,000 copies of one row in a
        100,000-row batch are most significant as "x0 in its 54-86 % band and x1 in its 28-56 %
        band, labelled 'yes'", which also holds 1,903 ordinary rows; the copies' rarest cell pair
        holds them and almost nothing else. A planted group split across cells is not narrowed:
        the rows it would drop are far more than its trusted count explains.
        """
        for group in np.unique(claims.group[claims.group >= 0]):
            rows = np.flatnonzero(claims.group == group)
            while True:
                rarer = tests.reference[claims.significant] < tests.reference[group]
                if not rarer.any():
                    break
                held = np.where(rarer, self._in_groups(tests, codes, labels, claims, rows), -1)
                test = int(claims.significant[np.argmax(held)])
                keys = self._keys(codes, labels, self.pairs_[tests.pair[test]], rows)
                inside, dropped = rows[keys == tests.key[test]], rows[keys != tests.key[test]]
                pvalue = self._pvalue(tests, test, len(inside))
                if (
                    len(inside) < self.min_group
                    or pvalue > threshold
                    or self._pvalue(tests, group, len(dropped)) <= self.alpha
                ):
                    break
                claims.group[dropped] = -1
                claims.remaining += self._in_groups(tests, codes, labels, claims, dropped)
                claims.group[inside], claims.pvalue[inside] = test, pvalue
                group, rows = test, inside

    def _pvalue(self, tests: _Tests, test: int, count: int) -> float:
        """The p-value of ``count`` rows in the cells and label of ``test``."""
        one = slice(test, test + 1)
        return float(
            conditional_pvalue(
                np.array([count]),
                tests.reference[one],
                tests.given_batch[one],
                tests.given_reference[one],
                tests.label_batch[one],
                tests.label_reference[one],
            )[0]
        )

    def _background(self, tests: _Tests, codes: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
        """Each row's smallest p-value over the groups that are not significant: its score when
        no group flags it."""
        smallest = np.ones(len(labels))
        quiet = tests.pvalue > threshold
        for index, pair in enumerate(self.pairs_):
            mine = quiet & (tests.pair == index)
            if not mine.any():
                continue
            pvalue = np.ones(self._n_keys(pair))
            pvalue[tests.key[mine]] = tests.pvalue[mine]
            np.minimum(smallest, pvalue[self._keys(codes, labels, pair)], out=smallest)
        return smallest

    def _reason(self, tests: _Tests, test: int) -> str:
        a, b = self.pairs_[tests.pair[test]]
        n_classes = len(self.classes_)
        key = int(tests.key[test])
        label = str(self.classes_[key % n_classes])
        cell_a, cell_b = divmod(key // n_classes, self.binnings_[b].n_codes)
        words_a, words_b = self.binnings_[a].words[cell_a], self.binnings_[b].words[cell_b]
        count, cells = int(tests.count[test]), int(tests.cell_count[test])
        who = (
            f"{count:,} rows with {words_a} and {words_b}, all labelled {label!r}"
            if count == cells
            else f"{count:,} of {cells:,} rows with {words_a} and {words_b} labelled {label!r}"
        )
        reference, label_reference = int(tests.reference[test]), int(tests.label_reference[test])
        # each side is described as it was judged (see ``conditional_pvalue``)
        given = [(int(rows), words) for rows, words in zip(tests.given_reference[test], (words_a, words_b))]
        conditioned = [f"{reference:,} of {rows:,} with {words}" for rows, words in given if rows >= CONDITION_ROWS]
        parts = (
            [f"of the trusted rows labelled {label!r}, {' and '.join(conditioned)} have the other as well"]
            if conditioned
            else []
        )
        if len(conditioned) < 2:
            parts.append(
                f"reference frequency {100 * reference / max(label_reference, 1):.2g} % "
                f"({reference:,} of {label_reference:,} rows labelled {label!r})"
            )
        return f"{who}; " + "; ".join(parts)
