"""Steward review: what the CLI's ``review`` commands and the review page both call.

The ledger holds decisions and actions; the workspace holds the rows themselves; MLflow holds the
batch's run. A review action is written to the ledger first (the record of truth, one
transaction), then mirrored to the batch's MLflow run so provenance tells the whole story.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Settings
from pipeline.errors import PoisonguardError
from pipeline.io import BATCH_ID_COLUMN, ROW_NUMBER, read_table
from pipeline.ledger import Ledger, ReviewAction, ReviewRecord, RowRecord, RowStatus
from pipeline.store import Workspace

NEIGHBOURS = 5


def open_ledger(settings: Settings) -> Ledger:
    from pipeline.anchor import open_ledger as open_anchored

    return open_anchored(settings)


@dataclass(frozen=True)
class RowDetail:
    """A row as a steward reviews it: the ledger's record, the row's values, and the trusted
    rows nearest to it (same encoding the detectors use), label included."""

    record: RowRecord
    values: dict[str, Any]
    neighbours: pd.DataFrame  # NEIGHBOURS trusted rows, nearest first, with a "distance" column
    label: str | None


def batch_folder(settings: Settings, record: RowRecord, ledger: Ledger) -> Path:
    batch = ledger.get_batch(record.batch_id)
    folder = Workspace(settings.workspace).batch_dir(batch.dataset, record.batch_sha256)
    if not folder.is_dir():
        raise PoisonguardError(
            f"The workspace has no folder for batch {batch.id} ({folder}); is --workspace the "
            "one the batch was scanned into?"
        )
    return folder


def batch_summary(settings: Settings, batch: Any) -> dict[str, Any]:
    """A recorded batch's ``summary.json`` (its verdict, its columns' roles …); empty if the
    folder or the file is missing or unreadable (the page or listing shows the rest)."""
    path = Workspace(settings.workspace).batch_dir(batch.dataset, batch.sha256) / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def row_detail(settings: Settings, ledger: Ledger, row_id: str) -> RowDetail:
    record = ledger.get_row(row_id)
    folder = batch_folder(settings, record, ledger)
    summary = json.loads((folder / "summary.json").read_text())
    part = "accepted" if record.initial_status == RowStatus.ACCEPTED else "quarantined"
    rows = pd.read_parquet(folder / f"{part}.parquet")
    row = rows[rows[ROW_NUMBER] == record.row_number]
    values = {k: _plain(v) for k, v in row.iloc[0].items() if k not in ("suspicion", "reasons")} if len(row) else {}
    return RowDetail(record, values, trusted_neighbours(summary, row), summary.get("label"))


def trusted_neighbours(summary: dict[str, Any], row: pd.DataFrame, k: int = NEIGHBOURS) -> pd.DataFrame:
    """The k reference rows nearest to ``row`` in the detectors' feature space. The reference is
    re-read from its recorded path and must still have its recorded SHA-256."""
    if row.empty:
        return pd.DataFrame()
    path = Path(summary["reference"]["path"])
    if not path.exists():
        raise PoisonguardError(f"The reference {path} this batch was scanned against is gone; neighbours need it.")
    # Only a row's page needs the detectors' encoding and GX's conform: imported here, so the
    # review page and `review list` start without them.
    from pipeline.detectors import FeatureSpec
    from pipeline.detectors.features import feature_frame, make_encoder
    from pipeline.validation import ColumnKind, conform

    reference = read_table(path, role="reference")
    if reference.sha256 != summary["reference"]["sha256"]:
        raise PoisonguardError(
            f"The reference {path} changed since the scan (sha256 {reference.sha256[:12]}… "
            f"≠ {summary['reference']['sha256'][:12]}…); its neighbours would not be the ones "
            "the detectors saw."
        )
    spec = FeatureSpec(summary["label"], tuple(summary["features"]["numeric"]), tuple(summary["features"]["categorical"]))
    # The row is read from the scan's outputs, which hold its cells as they arrived (a CSV's text
    # where its numbers would not write back exactly): typed again as the reference is, before encoding.
    kinds = {**dict.fromkeys(spec.numeric, ColumnKind.NUMERIC), **dict.fromkeys(spec.categorical, ColumnKind.CATEGORICAL)}
    row = row.copy()
    for column in spec.features:
        if column in row.columns and _is_number(reference.frame[column]) and not _is_number(row[column]):
            row[column] = pd.to_numeric(row[column], errors="coerce")
    reference_frame, _ = conform(reference.frame, kinds)
    encoder = make_encoder(spec).fit(feature_frame(reference_frame, spec))
    trusted = encoder.transform(feature_frame(reference_frame, spec))
    point = encoder.transform(feature_frame(conform(row, kinds)[0], spec))
    distance = np.linalg.norm(trusted - point, axis=1)
    nearest = np.argsort(distance, kind="stable")[:k]
    columns = [*spec.features, spec.label]
    return reference.frame.iloc[nearest][columns].assign(distance=distance[nearest]).reset_index(drop=True)


def _is_number(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def act(
    settings: Settings, ledger: Ledger, action: ReviewAction | str, row_ids: Iterable[str], by: str, reason: str
) -> list[ReviewRecord]:
    """Release or reject rows (all or none), then mirror the actions to each batch's MLflow run.
    The ledger is the record of truth: if only the mirror fails, ``MirrorFailed`` says so."""
    action = ReviewAction(action)
    ids = list(row_ids)
    records = (ledger.release if action == ReviewAction.RELEASE else ledger.reject)(ids, by, reason)
    try:
        _mirror_to_mlflow(settings, ledger, records)
    except Exception as error:  # MLflow unreachable, a run deleted: the review itself stands
        raise MirrorFailed(
            f"{action.past_tense.capitalize()} {len(records)} row(s) in the ledger, but mirroring the "
            f"action to the batch's MLflow run failed ({type(error).__name__}: {error}). The ledger "
            "is the record of truth."
        ) from error
    return records


class MirrorFailed(PoisonguardError):
    """The review is recorded in the ledger; only its copy in MLflow is missing."""

    exit_code = 1


def _mirror_to_mlflow(settings: Settings, ledger: Ledger, records: list[ReviewRecord]) -> None:
    from pipeline import provenance

    by_batch: dict[str, list[ReviewRecord]] = {}
    for record in records:
        by_batch.setdefault(record.row_id.split(":")[0], []).append(record)
    for batch_id, actions in by_batch.items():
        batch = ledger.get_batch(batch_id)
        if not batch.mlflow_run_id:
            continue
        tags = {
            f"review.row.{r.row_id.split(':')[1]}": f"{r.action.past_tense} by {r.by} at "
            f"{r.at.isoformat(timespec='seconds')}: {r.reason}"[:5000]
            for r in actions
        }
        metrics = {
            "review.pending": float(batch.pending),
            "review.released": float(batch.released),
            "review.rejected": float(batch.rejected),
        }
        provenance.log_review(settings.tracking_uri, batch.mlflow_run_id, tags, metrics)


def accepted_data(settings: Settings, ledger: Ledger, dataset: str) -> pd.DataFrame:
    """Every row of the dataset cleared for training: what the scans accepted plus what stewards
    released, in batch then row order, with ``poisonguard_batch_id`` and ``row_number`` kept."""
    parts = []
    workspace = Workspace(settings.workspace)
    statuses = ledger.row_numbers(dataset)
    for batch in ledger.list_batches(dataset):
        folder = workspace.batch_dir(dataset, batch.sha256)
        accepted = pd.read_parquet(folder / "accepted.parquet")
        released = statuses.get(batch.id, {}).get(RowStatus.RELEASED)
        if released:
            quarantined = pd.read_parquet(folder / "quarantined.parquet")
            back = quarantined[quarantined[ROW_NUMBER].isin(released)]
            accepted = pd.concat([accepted, back.drop(columns=["suspicion", "reasons"])], ignore_index=True)
        parts.append(accepted.sort_values(ROW_NUMBER).assign(**{BATCH_ID_COLUMN: batch.id}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value
