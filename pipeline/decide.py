"""Turn findings and detector scores into one decision per row: suspicion, quarantined, reasons."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.findings import BatchFinding, ReasonCode, findings_frame
from pipeline.io import ROW_NUMBER


@dataclass(frozen=True)
class Decisions:
    """``table``: one row per batch row (row_number, suspicion, quarantined, reasons, detector
    columns); ``findings``: the long table of everything that fired."""

    table: pd.DataFrame
    findings: pd.DataFrame

    @property
    def quarantined_rows(self) -> np.ndarray:
        return self.table.loc[self.table["quarantined"], ROW_NUMBER].to_numpy()

    def counts_by_check(self) -> dict[str, int]:
        """Distinct rows held per check (a row can be held by several)."""
        return {str(k): int(v) for k, v in self.findings.groupby("check")[ROW_NUMBER].nunique().items()}


def detector_findings(name: str, scores: pd.DataFrame) -> pd.DataFrame:
    flagged = scores[scores["flagged"]]
    return findings_frame([
        {"row_number": row.row_number, "check": f"detector:{name}", "reason_code": ReasonCode.DETECTOR,
         "observed": f"{row.calibrated:.4f}", "message": row.reason}
        for row in flagged.itertuples(index=False)
    ])


def decide(
    row_numbers: pd.Series,
    validation_findings: pd.DataFrame,
    batch_findings: list[BatchFinding],
    detector_scores: dict[str, pd.DataFrame],
) -> Decisions:
    """Hard validation failures and batch-level failures always quarantine with suspicion 1.

    Otherwise suspicion is the strongest calibrated detector score and a row is held when any
    detector flags it. Reasons list hard failures first, then detectors, most suspect first.
    """
    rows = pd.DataFrame({ROW_NUMBER: row_numbers.to_numpy()})
    parts = [validation_findings] + [detector_findings(n, s) for n, s in detector_scores.items()]
    if batch_findings:
        parts.append(findings_frame([
            {"row_number": r, "check": f.check, "reason_code": f.reason_code, "observed": None,
             "message": f.message}
            for f in batch_findings for r in rows[ROW_NUMBER]
        ]))
    findings = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) \
        else validation_findings.iloc[0:0]

    suspicion = np.zeros(len(rows))
    for name, scores in detector_scores.items():
        aligned = rows.merge(scores[[ROW_NUMBER, "calibrated", "score"]], on=ROW_NUMBER, how="left")
        rows[name] = aligned["calibrated"].to_numpy()
        rows[f"{name}_raw"] = aligned["score"].to_numpy()
        suspicion = np.fmax(suspicion, np.nan_to_num(aligned["calibrated"].to_numpy()))
    hard = findings["reason_code"] != ReasonCode.DETECTOR.value
    hard_rows = set(findings.loc[hard, ROW_NUMBER])
    is_hard = rows[ROW_NUMBER].isin(hard_rows).to_numpy()
    suspicion[is_hard] = 1.0
    rows["suspicion"] = suspicion
    rows["quarantined"] = rows[ROW_NUMBER].isin(set(findings[ROW_NUMBER])).to_numpy()
    rows["reasons"] = _reasons_per_row(rows[ROW_NUMBER], findings)
    ordered = [ROW_NUMBER, "suspicion", "quarantined", "reasons"] + \
        [c for c in rows.columns if c not in (ROW_NUMBER, "suspicion", "quarantined", "reasons")]
    return Decisions(rows[ordered], findings.reset_index(drop=True))


def _reasons_per_row(row_numbers: pd.Series, findings: pd.DataFrame) -> list[list[str]]:
    if findings.empty:
        return [[] for _ in range(len(row_numbers))]
    ranked = findings.assign(
        _hard=(findings["reason_code"] != ReasonCode.DETECTOR.value).astype(int),
        _strength=pd.to_numeric(findings["observed"].where(findings["reason_code"] == ReasonCode.DETECTOR.value),
                                errors="coerce").fillna(0.0),
    ).sort_values(["_hard", "_strength"], ascending=[False, False], kind="stable")
    grouped = ranked.groupby(ROW_NUMBER, sort=False)["message"].agg(lambda m: list(dict.fromkeys(m)))
    return [list(grouped.get(r, [])) for r in row_numbers]
