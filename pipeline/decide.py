"""Turn findings, detector scores and the batch verdict into one decision per row: suspicion,
quarantined, reasons.

Three ways a row is held besides a hard failure (a rule it breaks, a batch that fails its schema):

- the per-row policy: the row-scoped detectors' p-values fused (Bonferroni) at the policy's
  threshold, which keeps a clean batch's false quarantines at the steward's target;
- its group: a group detector (copies, triggers) holds a group at that detector's own alpha, as
  one finding with one test, and no per-row weight may silence a group overwhelming on its own;
- the evidence: when the batch verdict calls a kind of poison significant, the most suspect rows
  by that kind's detector are held, as many as the verdict estimates (``policy.evidence_hold``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.findings import SOFT_REASONS, BatchFinding, ReasonCode, findings_frame
from pipeline.io import ROW_NUMBER
from pipeline.policy import QuarantinePolicy, fired, fuse
from pipeline.verdict import KIND_WORDS, Verdict

# (detector name, row numbers it holds) -> its reason for each
Explain = Callable[[str, np.ndarray], list[str]]


@dataclass(frozen=True)
class Decisions:
    """``table``: one row per batch row (row_number, suspicion, quarantined, reasons, detector
    columns); ``findings``: the long table of everything that fired."""

    table: pd.DataFrame
    findings: pd.DataFrame
    # the fused p-value at or below which the per-row policy held a row
    threshold: float = 0.0

    @property
    def quarantined_rows(self) -> np.ndarray:
        return self.table.loc[self.table["quarantined"], ROW_NUMBER].to_numpy()

    def counts_by_check(self) -> dict[str, int]:
        """Distinct rows held per check (a row can be held by several)."""
        return {str(k): int(v) for k, v in self.findings.groupby("check")[ROW_NUMBER].nunique().items()}


def detector_findings(name: str, scores: pd.DataFrame, fired: np.ndarray, explain: Explain | None = None) -> pd.DataFrame:
    rows = scores[fired]
    reasons = rows["reason"].to_list() if explain is None else explain(name, rows[ROW_NUMBER].to_numpy())
    return findings_frame(
        [
            {
                "row_number": row.row_number,
                "check": f"detector:{name}",
                "reason_code": ReasonCode.DETECTOR,
                "observed": f"{1.0 - row.calibrated:.3g}",
                "message": reason,
            }
            for row, reason in zip(rows.itertuples(index=False), reasons)
        ]
    )


def decide(
    row_numbers: pd.Series,
    validation_findings: pd.DataFrame,
    batch_findings: list[BatchFinding],
    detector_scores: dict[str, pd.DataFrame],
    policy: QuarantinePolicy,
    content: np.ndarray | None = None,
    explain: Explain | None = None,
    verdict: Verdict | None = None,
    spent: float = 0.0,
) -> Decisions:
    """Hard validation failures and batch-level failures always quarantine with suspicion 1.

    Otherwise: the row-scoped detectors' p-values are fused and held at the policy's threshold
    (BH over them; ``content``, see ``content_keys``, makes exact copies one hypothesis); each
    group detector holds the rows it flags; and when ``verdict`` calls a kind significant, the
    top-ranked rows of that kind's detector, up to the estimate. Suspicion is 1 − the smallest
    of the fused and the groups' corrected p-values. Reasons list hard failures first, then the
    rest, smallest p-value first; a detector's are its scores' ``reason``, or what
    ``explain(detector, row_numbers)`` says of the rows it held (see ``detectors.explain_rows``).
    ``spent``: the share of clean rows the row rules hold anyway, taken from the policy's target.
    """
    rows = pd.DataFrame({ROW_NUMBER: row_numbers.to_numpy()})
    pvalues, aligned = {}, {}
    for name, scores in detector_scores.items():
        aligned[name] = scores.set_index(ROW_NUMBER).reindex(rows[ROW_NUMBER])
        rows[name] = aligned[name]["calibrated"].to_numpy()
        rows[f"{name}_raw"] = aligned[name]["score"].to_numpy()
        pvalues[name] = 1.0 - aligned[name]["calibrated"].to_numpy()
    row_scoped = {name: p for name, p in pvalues.items() if _scope(name) == "row"}
    factor = float(max(1, len(row_scoped)))
    row_fused = fuse(row_scoped, len(rows))
    threshold = policy.threshold(row_fused, content, spent)
    held_by_policy = row_fused <= threshold
    parts = [validation_findings]
    for name, scores in detector_scores.items():
        if name in row_scoped:
            held = fired(pvalues[name], factor, threshold) & held_by_policy
        else:
            held = aligned[name]["flagged"].fillna(False).to_numpy(dtype=bool)
        by_row = pd.Series(held, index=rows[ROW_NUMBER])
        parts.append(
            detector_findings(name, scores, by_row.reindex(scores[ROW_NUMBER], fill_value=False).to_numpy(bool), explain)
        )
    if verdict is not None and policy.evidence_hold != "off":
        # rows a rule holds, or that the detector already holds on its own, keep their own reasons
        settled = set(pd.concat([p[ROW_NUMBER] for p in parts]))
        parts += [
            _evidence_findings(verdict, kind, rows[ROW_NUMBER].to_numpy(), pvalues, settled, policy, explain)
            for kind, evidence in verdict.by_kind.items()
            if evidence.ranked and evidence.detector in row_scoped and verdict.significant(kind)
        ]
    if batch_findings:
        parts.append(
            findings_frame(
                [
                    {"row_number": r, "check": f.check, "reason_code": f.reason_code, "observed": None, "message": f.message}
                    for f in batch_findings
                    for r in rows[ROW_NUMBER]
                ]
            )
        )
    findings = (
        pd.concat([p for p in parts if len(p)], ignore_index=True)
        if any(len(p) for p in parts)
        else validation_findings.iloc[0:0]
    )

    hard = ~findings["reason_code"].isin(SOFT_REASONS)
    is_hard = rows[ROW_NUMBER].isin(set(findings.loc[hard, ROW_NUMBER])).to_numpy()
    groups = [np.nan_to_num(p, nan=1.0) for name, p in pvalues.items() if name not in row_scoped]
    fused = np.minimum.reduce([row_fused, *groups]) if groups else row_fused
    rows["suspicion"] = np.where(is_hard, 1.0, 1.0 - fused)
    rows["quarantined"] = rows[ROW_NUMBER].isin(set(findings[ROW_NUMBER])).to_numpy()
    rows["reasons"] = _reasons_per_row(rows[ROW_NUMBER], findings)
    ordered = [ROW_NUMBER, "suspicion", "quarantined", "reasons"] + [
        c for c in rows.columns if c not in (ROW_NUMBER, "suspicion", "quarantined", "reasons")
    ]
    return Decisions(rows[ordered], findings.reset_index(drop=True), threshold=threshold)


def _evidence_findings(
    verdict: Verdict,
    kind: str,
    row_numbers: np.ndarray,
    pvalues: dict[str, np.ndarray],
    settled: set[int],
    policy: QuarantinePolicy,
    explain: Explain | None,
) -> pd.DataFrame:
    """The kind's ``estimate`` (or its lower bound) most suspect rows, each with the batch's
    estimate and the row's rank as reason (and the detector's own reason, where the detector did
    not hold the row on its own already). Rows a rule or another check holds keep their reasons."""
    evidence = verdict.by_kind[kind]
    name = evidence.detector
    assert name is not None  # the caller passes kinds ranked by a row-scoped detector only
    ranked = evidence.chosen(evidence.to_hold(policy.evidence_hold, policy.false_discovery_rate))
    ranks = {position: rank + 1 for rank, position in enumerate(ranked)}
    ranked = np.array([position for position in ranked if row_numbers[position] not in settled], dtype="int64")
    if not len(ranked):
        return findings_frame([])
    own = explain(name, row_numbers[ranked]) if explain is not None else [""] * len(ranked)
    pvalue = np.nan_to_num(pvalues[name], nan=1.0)
    words = KIND_WORDS.get(kind, kind)
    low, high = evidence.interval
    return findings_frame(
        [
            {
                "row_number": row_numbers[position],
                "check": f"verdict:{kind}",
                "reason_code": ReasonCode.BATCH_EVIDENCE,
                "observed": f"{pvalue[position]:.3g}",
                "message": f"the batch is estimated to hold {evidence.estimate} {words} ({low}-{high}); this row ranks "
                f"{ranks[position]} of {len(evidence.rows)} by {name} (p = {pvalue[position]:.2g})"
                + (f": {reason}" if reason else ""),
            }
            for position, reason in zip(ranked, own)
        ]
    )


def content_keys(batch: pd.DataFrame) -> np.ndarray:
    """One 64-bit hash per row of everything but its position: equal for exact copies."""
    return pd.util.hash_pandas_object(batch.drop(columns=[ROW_NUMBER], errors="ignore"), index=False).to_numpy()


def _scope(name: str) -> str:
    """A registered detector's ``pvalue_scope`` (see detectors/base.py), poisonguard's own or an
    installed package's; names outside the registry are row-scoped."""
    from pipeline.detectors import find_detector_class

    return getattr(find_detector_class(name), "pvalue_scope", "row")


def _reasons_per_row(row_numbers: pd.Series, findings: pd.DataFrame) -> list[list[str]]:
    # Rows without a reason share one empty list: a list each was 56 MB per 10^6 rows. Nothing
    # appends to a decision's reasons.
    none: list[str] = []
    if findings.empty:
        return [none] * len(row_numbers)
    soft = findings["reason_code"].isin(SOFT_REASONS)
    ranked = findings.assign(
        _hard=(~soft).astype(int),
        _pvalue=pd.to_numeric(findings["observed"].where(soft), errors="coerce").fillna(1.0),
    ).sort_values(["_hard", "_pvalue"], ascending=[False, True], kind="stable")
    grouped = ranked.groupby(ROW_NUMBER, sort=False)["message"].agg(lambda m: list(dict.fromkeys(m)))
    # reindex, not a lookup per row: a million Series.get calls took most of a minute
    aligned = grouped.reindex(row_numbers.to_numpy())
    return [reasons if isinstance(reasons, list) else none for reasons in aligned]
