"""The stewards' report: one self-contained HTML page per scan, readable offline."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader

from pipeline.io import ROW_NUMBER

TOP_ROWS = 50

_env = Environment(loader=PackageLoader("pipeline", "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True)


def suspicion_histogram_svg(
    suspicion: np.ndarray, quarantined: np.ndarray, threshold: float | None = None, trusted: np.ndarray | None = None
) -> str:
    """Inline SVG of the batch's suspicion (accepted vs quarantined rows) against the trusted
    holdout's, scaled to the batch's size, with the policy's threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 2.4), dpi=96)
    bins = np.linspace(0.0, 1.0, 41).tolist()  # a list: matplotlib's stubs take Sequence[float]
    ax.hist(
        [suspicion[~quarantined], suspicion[quarantined]],
        bins=bins,
        stacked=True,
        color=["#4c78a8", "#e45756"],
        label=["accepted", "quarantined"],
    )
    if trusted is not None and len(trusted):
        weights = np.full(len(trusted), len(suspicion) / len(trusted))
        ax.hist(
            trusted,
            bins=bins,
            weights=weights,
            histtype="step",
            color="#222",
            linewidth=1.2,
            label="trusted holdout (scaled)",
        )
    if threshold is not None:
        ax.axvline(1.0 - threshold, color="#222", linestyle="--", linewidth=1, label="policy threshold")
    ax.set_xlabel("suspicion (1 − fused p-value against trusted rows)")
    ax.set_ylabel("rows")
    ax.set_yscale("symlog")
    ax.legend(loc="upper left", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def render_report(
    summary: dict[str, Any],
    decisions: pd.DataFrame,
    fetch: Callable[[np.ndarray], pd.DataFrame],
    trusted_suspicion: np.ndarray | None = None,
) -> str:
    """The scan's HTML report; ``fetch`` returns batch rows by position (= row number), for the
    values of the most suspicious rows it lists."""
    quarantined = (
        decisions[decisions["quarantined"]].sort_values(["suspicion", ROW_NUMBER], ascending=[False, True]).head(TOP_ROWS)
    )
    values = fetch(quarantined[ROW_NUMBER].to_numpy()).set_index(ROW_NUMBER)
    top = [
        {
            "row_number": int(row.row_number),
            "suspicion": float(row.suspicion),
            "reasons": list(row.reasons),
            "values": ", ".join(f"{col}={_fmt(values.at[row.row_number, col])}" for col in values.columns),
        }
        for row in quarantined.itertuples(index=False)
    ]
    svg = suspicion_histogram_svg(
        decisions["suspicion"].to_numpy(dtype=float),
        decisions["quarantined"].to_numpy(dtype=bool),
        summary.get("policy", {}).get("threshold"),
        trusted_suspicion,
    )
    return _env.get_template("report.html.j2").render(summary=summary, top=top, top_limit=TOP_ROWS, histogram_svg=svg)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
