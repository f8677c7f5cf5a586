"""Source history: a source whose share of quarantined rows jumps is worth a look.

A partner feed that has sent clean data for months and suddenly has a third of a batch held is
either broken or compromised. The history (earlier scans of the dataset from the same
``--source``) comes from MLflow; this module only does the arithmetic. The current batch's held
count is tested against the source's pooled earlier rate under a beta-binomial predictive
(earlier batches are few, so their rate is uncertain), one-sided: only a rise alarms.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from scipy import stats

from pipeline.alarms.base import Alarm, CheckResult

CHECK = "source_history"


@dataclass(frozen=True)
class SourceRecord:
    """One earlier scan of the source: rows scanned and rows quarantined."""

    rows: int
    quarantined: int


def source_history(
    source: str, earlier: list[SourceRecord], rows: int, quarantined: int, alpha: float = 0.01
) -> CheckResult:
    """Compare this batch with the source's earlier batches. Without history there is nothing to
    compare with: the result says so and never alarms."""
    earlier_rows = sum(r.rows for r in earlier)
    earlier_held = sum(r.quarantined for r in earlier)
    pvalue = 1.0
    if earlier_rows and rows:
        pvalue = float(stats.betabinom(rows, earlier_held + 0.5, earlier_rows - earlier_held + 0.5).sf(quarantined - 1))
    record = {
        "source": source,
        "earlier_batches": len(earlier),
        "earlier_rows": earlier_rows,
        "earlier_rate": earlier_held / earlier_rows if earlier_rows else None,
        "rows": rows,
        "quarantined": quarantined,
        "rate": quarantined / rows if rows else 0.0,
        "pvalue": pvalue,
    }
    alarm = None
    if pvalue <= alpha:
        alarm = Alarm(
            CHECK,
            f"source {source!r}: {quarantined}/{rows} rows quarantined ({record['rate']:.1%}) against "
            f"{earlier_held}/{earlier_rows} ({record['earlier_rate']:.1%}) over its {len(earlier)} "
            f"earlier batch(es) (p={pvalue:.1g})",
            pvalue,
            [record],
        )
    return CheckResult(CHECK, pd.DataFrame([record]), alarm)
