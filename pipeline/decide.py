"""Turn findings and detector scores into one decision per row: suspicion, quarantined, reasons."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from pipeline.findings import BatchFinding, ReasonCode, findings_frame
from pipeline.io import ROW_NUMBER
from pipeline.policy import QuarantinePolicy, bonferroni_factors, fired, fuse


# (detector name, row numbers it holds) -> its reason for each
Explain = Callable[[str, np.ndarray], list[str]]


@dataclass(frozen=True)
class Decisions:
    """``table``: one row per batch row (row_number, suspicion, quarantined, reasons, detector
    columns); ``findings``: the long table of everything that fired."""

    table: pd.DataFrame
    findings: pd.DataFrame
    # the fused p-value at or below which the policy held a row (row-scoped detectors; group
    # detectors hold at the policy's false-quarantine target)
    threshold: float = 0.0

    @property
    def quarantined_rows(self) -> np.ndarray:
        return self.table.loc[self.table["quarantined"], ROW_NUMBER].to_numpy()

    def counts_by_check(self) -> dict[str, int]:
        """Distinct rows held per check (a row can be held by several)."""
        return {str(k): int(v) for k, v in self.findings.groupby("check")[ROW_NUMBER].nunique().items()}


def detector_findings(name: str, scores: pd.DataFrame, fired: np.ndarray,
                      explain: Explain | None = None) -> pd.DataFrame:
    rows = scores[fired]
    reasons = rows["reason"].to_list() if explain is None else explain(name, rows[ROW_NUMBER].to_numpy())
    return findings_frame([
        {"row_number": row.row_number, "check": f"detector:{name}", "reason_code": ReasonCode.DETECTOR,
         "observed": f"{1.0 - row.calibrated:.3g}", "message": reason}
        for row, reason in zip(rows.itertuples(index=False), reasons)
    ])


def decide(
    row_numbers: pd.Series,
    validation_findings: pd.DataFrame,
    batch_findings: list[BatchFinding],
    detector_scores: dict[str, pd.DataFrame],
    policy: QuarantinePolicy,
    content: np.ndarray | None = None,
    explain: Explain | None = None,
) -> Decisions:
    """Hard validation failures and batch-level failures always quarantine with suspicion 1.

    Otherwise the policy fuses the detectors' p-values and holds rows at its threshold (BH over
    the row-scoped detectors only; group detectors hold at the false-quarantine target);
    suspicion is 1 − the fused p-value. ``content`` (see ``content_keys``) makes BH count exact
    copies of a row as one hypothesis. Reasons list hard failures first, then the detectors
    that fired, smallest p-value first; a detector's are its scores' ``reason``, or what
    ``explain(detector, row_numbers)`` says of the rows it held (see ``detectors.explain_rows``).
    """
    rows = pd.DataFrame({ROW_NUMBER: row_numbers.to_numpy()})
    pvalues = {}
    for name, scores in detector_scores.items():
        aligned = scores.set_index(ROW_NUMBER)[["calibrated", "score"]].reindex(rows[ROW_NUMBER])
        rows[name] = aligned["calibrated"].to_numpy()
        rows[f"{name}_raw"] = aligned["score"].to_numpy()
        pvalues[name] = 1.0 - aligned["calibrated"].to_numpy()
    factors = bonferroni_factors({name: _detector_class_attribute(name, "pvalue_weight", 1.0) for name in pvalues})
    fused = fuse(pvalues, len(rows), factors)
    row_scoped = {name: p for name, p in pvalues.items() if _detector_class_attribute(name, "pvalue_scope", "row") == "row"}
    row_fused = fuse(row_scoped, len(rows), factors)
    threshold = policy.threshold(row_fused, content)
    held_by_policy = (fused <= policy.false_quarantine_target) | (row_fused <= threshold)
    parts = [validation_findings]
    for name, scores in detector_scores.items():
        own_threshold = threshold if name in row_scoped else policy.false_quarantine_target
        fired_here = fired(pvalues[name], factors[name], own_threshold) & held_by_policy
        by_row = pd.Series(fired_here, index=rows[ROW_NUMBER])
        parts.append(detector_findings(name, scores, by_row.reindex(scores[ROW_NUMBER], fill_value=False).to_numpy(bool),
                                       explain))
    if batch_findings:
        parts.append(findings_frame([
            {"row_number": r, "check": f.check, "reason_code": f.reason_code, "observed": None,
             "message": f.message}
            for f in batch_findings for r in rows[ROW_NUMBER]
        ]))
    findings = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) \
        else validation_findings.iloc[0:0]

    hard = findings["reason_code"] != ReasonCode.DETECTOR.value
    is_hard = rows[ROW_NUMBER].isin(set(findings.loc[hard, ROW_NUMBER])).to_numpy()
    rows["suspicion"] = np.where(is_hard, 1.0, 1.0 - fused)
    rows["quarantined"] = rows[ROW_NUMBER].isin(set(findings[ROW_NUMBER])).to_numpy()
    rows["reasons"] = _reasons_per_row(rows[ROW_NUMBER], findings)
    ordered = [ROW_NUMBER, "suspicion", "quarantined", "reasons"] + \
        [c for c in rows.columns if c not in (ROW_NUMBER, "suspicion", "quarantined", "reasons")]
    return Decisions(rows[ordered], findings.reset_index(drop=True), threshold=threshold)


def content_keys(batch: pd.DataFrame) -> np.ndarray:
    """One 64-bit hash per row of everything but its position: equal for exact copies."""
    return pd.util.hash_pandas_object(batch.drop(columns=[ROW_NUMBER], errors="ignore"), index=False).to_numpy()


def _detector_class_attribute(name: str, attribute: str, default):
    """A registered detector's ``pvalue_scope`` or ``pvalue_weight`` (see detectors/base.py);
    names outside the registry are row-scoped with weight 1."""
    from pipeline.detectors import DETECTORS

    return getattr(DETECTORS.get(name), attribute, default)


def _reasons_per_row(row_numbers: pd.Series, findings: pd.DataFrame) -> list[list[str]]:
    # Rows without a reason share one empty list: a list each was 56 MB per 10^6 rows. Nothing
    # appends to a decision's reasons.
    none: list[str] = []
    if findings.empty:
        return [none] * len(row_numbers)
    is_detector = findings["reason_code"] == ReasonCode.DETECTOR.value
    ranked = findings.assign(
        _hard=(~is_detector).astype(int),
        _pvalue=pd.to_numeric(findings["observed"].where(is_detector), errors="coerce").fillna(1.0),
    ).sort_values(["_hard", "_pvalue"], ascending=[False, True], kind="stable")
    grouped = ranked.groupby(ROW_NUMBER, sort=False)["message"].agg(lambda m: list(dict.fromkeys(m)))
    # reindex, not a lookup per row: a million Series.get calls took most of a minute
    aligned = grouped.reindex(row_numbers.to_numpy())
    return [reasons if isinstance(reasons, list) else none for reasons in aligned]
