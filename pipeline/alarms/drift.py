"""Batch drift: did the batch's features or its label distribution move away from the reference?

Per numeric feature a two-sample Kolmogorov–Smirnov test; per categorical feature and for the
label a chi-square test of homogeneity of reference and batch counts (two-sample, like KS: a
goodness-of-fit test against the reference's shares treats them as exact and, with a small
reference, alarmed on 20 of 200 clean batches). p-values are Bonferroni-
corrected over the columns tested. Significance alone is not enough: on 10⁵ rows a shift no
model would notice is significant, so a column also needs a population stability index (PSI)
of at least ``min_psi`` (0.1, the usual "moderate shift" line; ≥ 0.25 is a major shift).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.alarms.base import Alarm, BatchCheck, CheckResult
from pipeline.detectors.base import FeatureSpec

_MISSING = "<missing>"
_SMOOTH = 0.5  # pseudo-count per bin: an empty bin must not make PSI infinite


class BatchDrift(BatchCheck):
    name: ClassVar[str] = "drift"

    def __init__(self, *, alpha: float = 0.01, min_psi: float = 0.1, n_bins: int = 10) -> None:
        self.alpha = alpha
        self.min_psi = min_psi
        self.n_bins = n_bins

    def _fit(self, reference: pd.DataFrame, spec: FeatureSpec, segments: tuple[str, ...]) -> None:
        self.numeric_ = {}
        for col in spec.numeric:
            values = pd.to_numeric(reference[col], errors="coerce").dropna().to_numpy(dtype="float64")
            if len(values):
                edges = np.unique(np.quantile(values, np.linspace(0, 1, self.n_bins + 1)[1:-1]))
                self.numeric_[col] = (
                    np.sort(values),
                    edges,
                    _shares(np.searchsorted(edges, values, "right"), len(edges) + 1),
                )
        self.categorical_ = {
            col: _category_counts(reference[col]) for col in (*spec.categorical, spec.label) if col in reference.columns
        }

    def _check(self, batch: pd.DataFrame) -> CheckResult:
        records = []
        for col, (values, edges, ref_shares) in self.numeric_.items():
            if col not in batch.columns:
                continue
            got = pd.to_numeric(batch[col], errors="coerce").dropna().to_numpy(dtype="float64")
            if not len(got):
                continue
            shares = _shares(np.searchsorted(edges, got, "right"), len(edges) + 1)
            pvalue = float(stats.ks_2samp(values, got).pvalue)
            records.append(
                _record(
                    col,
                    "KS",
                    pvalue,
                    psi(ref_shares, shares, len(got)),
                    f"median {np.median(got):.4g} vs {np.median(values):.4g}",
                )
            )
        for col, ref_counts in self.categorical_.items():
            if col not in batch.columns:
                continue
            counts = _category_counts(batch[col], ref_counts.index)
            if counts.sum() == 0:
                continue
            both = np.vstack([ref_counts.to_numpy(), counts.to_numpy()])
            both = both[:, both.sum(axis=0) > 0]
            pvalue = 1.0 if both.shape[1] < 2 else float(stats.chi2_contingency(both, correction=False).pvalue)
            ref_shares = (ref_counts + _SMOOTH) / (ref_counts + _SMOOTH).sum()
            shares = counts / counts.sum()
            moved = (shares - ref_shares).abs().idxmax()
            records.append(
                _record(
                    col,
                    "chi-square",
                    pvalue,
                    psi(ref_shares.to_numpy(), shares.to_numpy(), counts.sum()),
                    f"share of {moved!r} {shares[moved]:.3f} vs {ref_shares[moved]:.3f}",
                    is_label=col == self.spec_.label,
                )
            )
        table = pd.DataFrame.from_records(records, columns=["column", "test", "pvalue", "psi", "change", "is_label"])
        table["pvalue_adjusted"] = np.minimum(1.0, table["pvalue"] * max(1, len(table)))
        table["moved"] = (table["pvalue_adjusted"] <= self.alpha) & (table["psi"] >= self.min_psi)
        table = table.sort_values(["moved", "psi"], ascending=False, kind="stable").reset_index(drop=True)
        moved = table[table["moved"]]
        alarm = None
        if len(moved):
            listed = "; ".join(
                f"{'label ' if r.is_label else ''}{r.column} (PSI {r.psi:.2f}, {r.test} "
                f"p={r.pvalue_adjusted:.1g}, {r.change})"
                for r in moved.head(5).itertuples()
            )
            more = f" and {len(moved) - 5} more" if len(moved) > 5 else ""
            alarm = Alarm(
                self.name,
                f"batch drift: {len(moved)} of {len(table)} columns moved against the reference: {listed}{more}",
                float(moved["pvalue_adjusted"].min()),
                moved.to_dict("records"),
            )
        return CheckResult(self.name, table, alarm)


def psi(reference_shares: np.ndarray, batch_shares: np.ndarray, n_batch: int) -> float:
    """Population stability index, Σ (b − r) · ln(b / r), with both sides smoothed."""
    r = np.asarray(reference_shares, dtype="float64")
    b = (np.asarray(batch_shares, dtype="float64") * n_batch + _SMOOTH) / (n_batch + _SMOOTH * len(r))
    r = np.clip(r, 1e-6, None)
    return float(np.sum((b - r) * np.log(b / r)))


def _shares(bins: np.ndarray, n_bins: int) -> np.ndarray:
    counts = np.bincount(bins, minlength=n_bins).astype("float64")
    return counts / max(counts.sum(), 1.0)


def _category_counts(column: pd.Series, domain: pd.Index | None = None) -> pd.Series:
    """Counts per value over ``domain`` (the reference's values plus "<other>", under which batch
    values the reference never had are counted; validation names them)."""
    values = column.astype(object).where(column.notna(), _MISSING).astype(str)
    if domain is None:
        counts = values.value_counts().astype("float64")
        counts["<other>"] = 0.0
        return counts
    values = values.where(values.isin(domain), "<other>")
    return values.value_counts().reindex(domain, fill_value=0).astype("float64")


def _record(column: str, test: str, pvalue: float, psi_value: float, change: str, is_label: bool = False) -> dict:
    return {"column": column, "test": test, "pvalue": pvalue, "psi": psi_value, "change": change, "is_label": is_label}
