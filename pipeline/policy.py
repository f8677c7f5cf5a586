"""The quarantine policy: detector p-values → one p-value per row → which rows to hold.

Every row-scoped detector reports a conformal p-value per row (``1 − calibrated``): the share
of trusted rows at least as suspect. The policy

1. fuses them with a Bonferroni minimum, ``p = min(1, D · min_d p_d)`` over the D row-scoped
   detectors. It is valid whatever the dependence between detectors, so a clean row is held by
   *some* detector with probability at most the threshold. Group detectors (triggers, floods)
   are not fused: a group is one test, already corrected for the batch's many groups, and is
   held at its detector's own alpha (``decide``);
2. holds a row when its fused p-value is at most what is left of the steward's false-quarantine
   target once the suite's row rules have taken their share: the target is the share of a clean
   batch held in all, and the trusted holdout shows how many clean rows break a rule anyway (a
   clean batch has its natural data-entry errors). So on a clean batch the expected share of rows
   held is at most the target (before, rules and detectors each spent a full target: 1.1-1.6 %
   of clean rows were held on 5 of 7 datasets against 1 %);
3. also holds the rows Benjamini–Hochberg rejects at the configured false-discovery rate, exact
   copies of one row counting as one hypothesis. On a clean batch BH rejects nothing with
   probability ≥ 1 − q, so it adds almost no false quarantines there;
4. and when the batch verdict (``pipeline.verdict``) finds a kind of poison in excess, holds the
   kind's most suspect rows up to the verdict's estimate (``evidence_hold``): by default
   ("likely") those of them more likely poison than clean; or all of the "estimate", its
   interval's "lower" end, the rows that keep the false-discovery rate ("fdr"), or "off". One
   flipped label cannot clear a 1 % budget against a few hundred noisy trusted rows; a hundred
   of them in one batch are plain to see, and the estimate says how many of the most suspect
   rows to hold. ("likely" against "estimate", 7 datasets x 2 seeds: the same F1 within 0.03 on
   every attack, and on targeted flips 8.0 % of clean rows held instead of 10.3 %: on one
   dataset the estimate was 353 rows for 60 flips.)
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import ClassVar

import numpy as np

from pipeline.params import REASON_PVALUE, Interval, InvalidParameter

EVIDENCE_HOLDS = ("estimate", "likely", "f1", "fdr", "lower", "off")


@dataclass(frozen=True)
class QuarantinePolicy:
    false_quarantine_target: float = 0.01
    false_discovery_rate: float = 0.1  # 0 turns BH off
    verdict_alpha: float = 0.01  # a clean batch is called poisoned with at most this probability
    evidence_hold: str = "likely"  # how many rows a significant kind of poison holds (see above)

    _limits: ClassVar[dict[str, Interval]] = {
        "false_quarantine_target": Interval(Real, 0.0, REASON_PVALUE, closed="right"),
        "false_discovery_rate": Interval(Real, 0.0, REASON_PVALUE),
        "verdict_alpha": Interval(Real, 0.0, REASON_PVALUE, closed="right"),
    }

    def __post_init__(self) -> None:
        for key, limit in self._limits.items():
            value = getattr(self, key)
            if not limit.accepts(value):
                raise InvalidParameter(f"The {key} of the quarantine policy must be {limit.describe()}. Got {value!r}.")
        if self.evidence_hold not in EVIDENCE_HOLDS:
            raise InvalidParameter(
                f"The evidence_hold of the quarantine policy must be one of "
                f"{', '.join(EVIDENCE_HOLDS)}. Got {self.evidence_hold!r}."
            )

    def row_target(self, spent: float = 0.0) -> float:
        """What is left of the false-quarantine target for the detectors once ``spent``, the share
        of clean rows the row rules hold anyway, is taken from it."""
        return max(0.0, self.false_quarantine_target - max(0.0, spent))

    def threshold(self, fused: np.ndarray, content: np.ndarray | None = None, spent: float = 0.0) -> float:
        """The p-value at or below which a row is held: ``row_target(spent)``, or BH's threshold
        where that is higher. ``content`` (one key per row, equal for rows with equal contents)
        makes BH count each distinct row once."""
        import pandas as pd  # here: the settings (and the light commands) import this module

        fused = np.asarray(fused, dtype="float64")
        if content is not None and len(fused):
            fused = pd.Series(fused).groupby(np.asarray(content), sort=False).min().to_numpy()
        return max(self.row_target(spent), benjamini_hochberg_threshold(fused, self.false_discovery_rate))

    def as_dict(self) -> dict[str, float | str]:
        return {
            "false_quarantine_target": self.false_quarantine_target,
            "false_discovery_rate": self.false_discovery_rate,
            "verdict_alpha": self.verdict_alpha,
            "evidence_hold": self.evidence_hold,
        }


def fuse(pvalues: dict[str, np.ndarray], n_rows: int, factors: dict[str, float] | None = None) -> np.ndarray:
    """Bonferroni minimum, ``min(1, min_d factor_d · p_d)``; 1.0 for every row when no detector
    ran. ``factors`` default to the number of detectors."""
    if not pvalues:
        return np.ones(n_rows)
    factors = factors or {name: float(len(pvalues)) for name in pvalues}
    scaled = [factors[name] * np.nan_to_num(np.asarray(p, dtype="float64"), nan=1.0) for name, p in pvalues.items()]
    return np.minimum(1.0, np.vstack(scaled).min(axis=0))


def fired(pvalue: np.ndarray, factor: float, threshold: float) -> np.ndarray:
    """A detector fired on a held row when its own p-value alone clears the fused threshold."""
    return np.minimum(1.0, factor * np.nan_to_num(pvalue, nan=1.0)) <= threshold


def benjamini_hochberg_threshold(pvalues: np.ndarray, q: float) -> float:
    """The largest p_(k) with p_(k) ≤ q·k/m, or 0 when nothing is rejected (or q = 0)."""
    p = np.sort(np.asarray(pvalues, dtype="float64"))
    if q <= 0 or not len(p):
        return 0.0
    passes = p <= q * np.arange(1, len(p) + 1) / len(p)
    return float(p[np.flatnonzero(passes).max()]) if passes.any() else 0.0
