"""Segment label-rate shift: did the label rate inside one segment move (disparate impact)?

A poisoner who wants a lending model to deny one group need not touch the features: relabelling
that group's rows shifts its denial rate while the batch as a whole looks ordinary. For each
configured segment column (HMDA: ``afam``, a protected attribute kept out of the model) and
each of its values, the batch's label rate is compared with the reference's under a
beta-binomial predictive, so a small reference segment does not raise false alarms; p-values
are two-sided and Bonferroni-corrected over the (segment value, label) pairs tested.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.alarms.base import Alarm, BatchCheck, CheckResult
from pipeline.detectors.base import FeatureSpec


class SegmentShift(BatchCheck):
    name: ClassVar[str] = "segment_shift"

    def __init__(self, *, alpha: float = 0.01, min_rows: int = 10) -> None:
        self.alpha = alpha
        self.min_rows = min_rows

    def _fit(self, reference: pd.DataFrame, spec: FeatureSpec, segments: tuple[str, ...]) -> None:
        labels = reference[spec.label].astype(str)
        classes = labels.value_counts()
        # two classes: one rate says it all, so test the rarer (e.g. 'deny' = 'yes')
        self.tested_labels_ = [classes.index[-1]] if len(classes) == 2 else list(classes.index)
        self.counts_ = {col: pd.crosstab(reference[col].astype(str), labels) for col in segments if col in reference.columns}

    def _check(self, batch: pd.DataFrame) -> CheckResult:
        label = self.spec_.label
        records = []
        if label in batch.columns:
            labels = batch[label].astype(str)
            for col, ref in self.counts_.items():
                if col not in batch.columns:
                    continue
                segment = batch[col].astype(str)
                for value in ref.index:
                    in_segment = (segment == value).to_numpy()
                    n = int(in_segment.sum())
                    if n < self.min_rows:
                        continue
                    for tested in self.tested_labels_:
                        ref_hits = int(ref.loc[value].get(tested, 0))
                        ref_n = int(ref.loc[value].sum())
                        hits = int((labels[in_segment] == tested).sum())
                        records.append(
                            {
                                "segment": col,
                                "value": value,
                                "label": tested,
                                "rows": n,
                                "hits": hits,
                                "rate": hits / n,
                                "reference_rate": ref_hits / ref_n,
                                "reference_rows": ref_n,
                                "pvalue": _two_sided(hits, n, ref_hits + 0.5, ref_n - ref_hits + 0.5),
                            }
                        )
        table = pd.DataFrame.from_records(
            records,
            columns=["segment", "value", "label", "rows", "hits", "rate", "reference_rate", "reference_rows", "pvalue"],
        )
        table["pvalue_adjusted"] = np.minimum(1.0, table["pvalue"] * max(1, len(table)))
        table["shifted"] = table["pvalue_adjusted"] <= self.alpha
        alarm = None
        shifted = table[table["shifted"]].sort_values("pvalue_adjusted")
        if len(shifted):
            parts = [
                f"{r.segment}={r.value!r}: {label}={r.label!r} rate {r.rate:.2f} in the batch ({r.hits}/{r.rows}) "
                f"vs {r.reference_rate:.2f} in the reference (p={r.pvalue_adjusted:.1g})"
                for r in shifted.itertuples()
            ]
            alarm = Alarm(
                self.name,
                "segment label-rate shift: " + "; ".join(parts),
                float(shifted["pvalue_adjusted"].min()),
                shifted.to_dict("records"),
            )
        return CheckResult(self.name, table, alarm)


def _two_sided(hits: int, n: int, a: float, b: float) -> float:
    distribution = stats.betabinom(n, a, b)
    tail = min(distribution.cdf(hits), distribution.sf(hits - 1))
    return float(min(1.0, 2.0 * tail))
