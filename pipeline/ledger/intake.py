"""Turn a scan's outputs (summary.json, scores.parquet, quarantined.parquet) into what the
ledger records: one batch (with the sha256 of each file of its workspace folder) and one
decision per row. Pure: no database here.

The outputs are cross-checked before anything is written: every row of the batch must have
exactly one score row, and the rows marked quarantined must be exactly those in
quarantined.parquet. A ledger that disagreed with the workspace would be worse than none.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.io import sha256_file
from pipeline.ledger.chain import utc
from pipeline.ledger.errors import LedgerError
from pipeline.ledger.records import RowStatus

ROW_NUMBER = "row_number"
_DECISION_COLUMNS = (ROW_NUMBER, "suspicion", "quarantined")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ScanIntake:
    """A batch's fields (all but its id) and its row decisions, checked, ordered by row number
    and handed out a slice at a time: a row decision as a dict is about 1 kB, so 10^6 of them at
    once would be most of a large scan's memory."""

    batch: dict[str, Any]
    scores: pd.DataFrame  # row_number, suspicion, quarantined, then one column per detector score
    reasons: Mapping[int, list[str]]  # of the quarantined rows

    @property
    def dataset(self) -> str:
        return str(self.batch["dataset"])

    @property
    def sha256(self) -> str:
        return str(self.batch["sha256"])

    def decision_slices(self, size: int) -> Iterator[list[dict[str, Any]]]:
        """Row decisions in row order, ``size`` at a time: row_number, initial_status, suspicion,
        reasons, scores."""
        score_columns = [c for c in self.scores.columns if c not in _DECISION_COLUMNS]
        for start in range(0, len(self.scores), size):
            part = self.scores.iloc[start : start + size]
            values = part[score_columns].to_numpy(dtype=float, na_value=math.nan)
            numbers = part[ROW_NUMBER].to_numpy(dtype="int64")
            held = part["quarantined"].to_numpy(dtype=bool)
            yield [
                {
                    ROW_NUMBER: int(number),
                    "initial_status": (RowStatus.PENDING if pending else RowStatus.ACCEPTED).value,
                    "suspicion": float(suspicion),
                    "reasons": self.reasons.get(int(number), []) if pending else [],
                    "scores": {c: _finite(v) for c, v in zip(score_columns, row_values)},
                }
                for number, pending, suspicion, row_values in zip(
                    numbers, held, part["suspicion"].to_numpy(dtype=float), values
                )
            ]


def read_scan_folder(folder: Path) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """summary, scores and quarantined rows of a committed batch folder in the workspace."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        scores = pd.read_parquet(folder / "scores.parquet")
        quarantined = pd.read_parquet(folder / "quarantined.parquet", columns=[ROW_NUMBER, "reasons"])
    except (OSError, ValueError) as exc:
        raise LedgerError(f"Cannot record the scan in {folder}: {exc}") from None
    return summary, scores, quarantined


def folder_files(folder: Path) -> dict[str, str]:
    """The sha256 of every file in a batch folder, by name: what the ledger records for the
    gate to check the workspace against. Sub-folders are not expected there and not hashed."""
    try:
        return {path.name: sha256_file(path) for path in sorted(Path(folder).iterdir()) if path.is_file()}
    except OSError as exc:
        raise LedgerError(f"Cannot hash the files of the scan in {folder}: {exc}") from None


def intake(
    summary: Mapping[str, Any], scores: pd.DataFrame, quarantined: pd.DataFrame, files: Mapping[str, str] | None = None
) -> ScanIntake:
    """``files``: the sha256 of each file of the batch's workspace folder (see ``folder_files``);
    None records the batch without them, as before revision 0002."""
    batch = _batch_fields(summary)
    label = f"batch {batch['file']} ({batch['sha256'][:12]}) of dataset {batch['dataset']}"

    def refuse(problem: str) -> LedgerError:
        return LedgerError(f"Cannot record {label} in the ledger: {problem}; nothing was recorded.")

    if files is not None:
        bad = [
            name
            for name, value in files.items()
            if not (isinstance(name, str) and _FILE_NAME.match(name) and isinstance(value, str) and _SHA256.match(value))
        ]
        if bad:
            raise refuse(f"the file hash for {bad[0]!r} is not a plain file name with 64 hex digits")
        batch["files"] = dict(sorted(files.items()))

    missing = [c for c in _DECISION_COLUMNS if c not in scores.columns]
    if missing:
        raise refuse(f"scores lack the column(s) {', '.join(missing)}")
    if ROW_NUMBER not in quarantined.columns or "reasons" not in quarantined.columns:
        raise refuse("quarantined rows lack the columns row_number and reasons")
    numbers = scores[ROW_NUMBER].astype("int64").to_numpy()
    ordered_numbers = np.sort(numbers)
    repeated = ordered_numbers[1:][ordered_numbers[1:] == ordered_numbers[:-1]]
    if len(repeated):
        raise refuse(f"row {int(repeated[0])} has more than one score row")
    if not np.array_equal(ordered_numbers, np.arange(batch["rows"])):
        raise refuse(f"scores cover {len(numbers)} rows but the summary counts {batch['rows']} (row numbers 0..n-1)")
    held = set(numbers[scores["quarantined"].astype(bool).to_numpy()].tolist())
    listed = set(quarantined[ROW_NUMBER].astype("int64").tolist())
    if held != listed:
        differing = sorted(held ^ listed)
        raise refuse(f"row {differing[0]} is quarantined in one output but not the other")
    if len(held) != batch["quarantined"] or batch["rows"] - len(held) != batch["accepted"]:
        raise refuse("the summary's accepted/quarantined counts disagree with the scores")
    score_columns = [c for c in scores.columns if c not in _DECISION_COLUMNS]
    try:
        for column in score_columns:  # a column at a time: a float copy of all of them is 80 MB per 10^6 rows
            scores[column].to_numpy(dtype=float, na_value=math.nan)
    except (TypeError, ValueError):
        raise refuse(f"the score columns {', '.join(map(str, score_columns))} must all be numeric") from None
    suspicion = pd.to_numeric(scores["suspicion"], errors="coerce").to_numpy(dtype=float, na_value=math.nan)
    if not np.isfinite(suspicion).all():
        raise refuse(f"row {int(numbers[~np.isfinite(suspicion)][0])} has no finite suspicion")

    reasons = {int(r): _strings(v) for r, v in zip(quarantined[ROW_NUMBER], quarantined["reasons"])}
    ordered = scores if np.all(numbers[1:] > numbers[:-1]) else scores.sort_values(ROW_NUMBER, kind="stable")
    return ScanIntake(batch, ordered, reasons)


def _batch_fields(summary: Mapping[str, Any]) -> dict[str, Any]:
    try:
        batch, counts = summary["batch"], summary["counts"]
        sha256, dataset = str(batch["sha256"]), str(summary["dataset"])
        fields = {
            "sha256": sha256,
            "dataset": dataset,
            "file": str(batch["file"]),
            "source": str(batch.get("source") or "unknown"),
            "submitter": str(batch.get("submitter") or "unknown"),
            "mlflow_run_id": (summary.get("mlflow") or {}).get("run_id") or None,
            "scanned_at": utc(dt.datetime.fromisoformat(str(summary["scanned_at"]))),
            "rows": int(counts["rows"]),
            "accepted": int(counts["accepted"]),
            "quarantined": int(counts["quarantined"]),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise LedgerError(
            f"Cannot record a scan whose summary lacks or mangles {exc}: pass the summary.json the scan wrote."
        ) from None
    if not _SHA256.match(sha256):
        raise LedgerError(f"Cannot record a scan whose batch sha256 is {sha256!r}: expected 64 hex digits.")
    if not dataset or len(dataset) > 128:
        raise LedgerError(f"Cannot record a scan for dataset {dataset!r}: expected a name of 1-128 characters.")
    return fields


def _strings(cell: Any) -> list[str]:
    """Parquet hands list cells back as numpy arrays; the ledger stores plain lists of str."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return []
    if isinstance(cell, str):
        return [cell]
    return [str(item) for item in cell]


def _finite(value: float) -> float | None:
    # JSON (and PostgreSQL) have no NaN or infinity; a detector that did not score a row is null.
    return float(value) if math.isfinite(value) else None
