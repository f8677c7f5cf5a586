"""The workspace: where each scanned batch's outputs live, committed all at once or not at all.

Layout::

    <workspace>/datasets/<dataset>/batches/<batch sha256>/
        accepted.parquet  quarantined.parquet  scores.parquet  findings.parquet
        summary.json      report.html          row_digests.parquet
    <workspace>/staging/<dataset>/<batch sha256>.<random>/   a scan's outputs being written
    <workspace>/locks/<dataset>/<batch sha256>.lock   held while the batch is being scanned
    <workspace>/spool/spool-<random>/   a large batch being read (see ``io.read_table``)

A scan writes its files into a staging folder and renames the folder into place. The rename
is atomic, so a batch folder is either complete or absent, and a second scan of the same bytes
finds it and ingests nothing twice. While a batch is scanned its lock is held (``batch_lock``):
a second scan of the same bytes waits for the first, then finds its folder. A staging folder
whose batch lock is free was left by a killed scan; the next scan of the dataset removes it.

Nothing rewrites a committed folder. The sha256 of each of its files (``file_hashes``, taken
from the staging folder just before the rename) goes into the ledger, where the hash chain
covers it, and onto the scan's MLflow run; the pre-retrain gate checks the folder against them.
``row_digests.parquet`` stays in the workspace (it is not delivered to ``--out``): a digest per
row of accepted.parquet and quarantined.parquet, so that when a file's sha256 no longer matches,
the gate can say which rows were edited.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import safe_name
from pipeline.faults import checkpoint
from pipeline.io import PARQUET_SLICE_ROWS, ROW_NUMBER, atomic_path, write_parquet_atomic, write_text_atomic
from pipeline.ledger.intake import folder_files
from pipeline.redaction import redact_data

SHA256_NAME = re.compile(r"[0-9a-f]{64}")  # a batch folder's (and lock's) name

OUTPUT_FILES = (
    "accepted.parquet",
    "quarantined.parquet",
    "scores.parquet",
    "findings.parquet",
    "summary.json",
    "report.html",
)
ROW_DIGESTS = "row_digests.parquet"  # workspace only
DIGESTED_FILES = ("accepted.parquet", "quarantined.parquet")  # the rows that can reach training


class BatchRows(Protocol):
    """The scanned batch, read again to write it out (``validation.ConformedBatch``)."""

    @property
    def n_rows(self) -> int: ...
    def rows(self, start: int, stop: int) -> pd.DataFrame: ...
    def chunks(self, rows: int) -> Iterator[pd.DataFrame]: ...
    def take(self, positions: np.ndarray) -> pd.DataFrame: ...
    def arrow_schema(self, part: pd.DataFrame) -> pa.Schema: ...
    def exact(self) -> pa.Table: ...


@dataclass(frozen=True)
class ScanOutputs:
    """What a scan writes. The batch's rows are not held here: ``rows`` reads them again,
    ``chunk_rows`` at a time, as accepted.parquet and quarantined.parquet are written."""

    rows: BatchRows
    held: pd.DataFrame  # row_number (= position), suspicion and reasons of each quarantined row, in batch order
    scores: pd.DataFrame
    findings: pd.DataFrame
    summary: dict[str, Any]
    report_html: str
    chunk_rows: int = PARQUET_SLICE_ROWS


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def spool_dir(self) -> Path:
        """Where large batches are spooled while scanned (``io.read_table``). A spool's files
        are unlinked as soon as they are mapped; one a killed scan left is removed by the next
        scan that spools."""
        return self.root / "spool"

    def batch_dir(self, dataset: str, sha256: str) -> Path:
        return self.root / "datasets" / safe_name(dataset, "dataset name") / "batches" / sha256

    def recorded(self, dataset: str, sha256: str) -> Path | None:
        """The committed folder of a batch already scanned for this dataset, if any."""
        folder = self.batch_dir(dataset, sha256)
        return folder if (folder / "summary.json").is_file() else None

    @contextlib.contextmanager
    def batch_lock(self, dataset: str, sha256: str) -> Iterator[None]:
        """Hold the batch's lock: one scan of the same bytes at a time per workspace.

        An advisory ``flock`` (POSIX), which the kernel drops when its process dies, however it
        dies: a killed scan never leaves it held. So a scan holding it knows that a run its batch
        left RUNNING belongs to a scan that is gone, not to one still at work."""
        path = self._lock_path(dataset, sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def staging_dir(self, dataset: str, sha256: str) -> Path:
        """A new staging folder for the batch whose lock the caller holds. Folders that killed
        scans of the dataset left behind go first: any of this batch (its lock is ours, so its
        writer is gone) and any of another batch whose lock no one holds."""
        parent = self.root / "staging" / safe_name(dataset, "dataset name")
        for folder in sorted(parent.iterdir()) if parent.is_dir() else ():
            owner = folder.name.partition(".")[0]
            if owner == sha256 or (SHA256_NAME.fullmatch(owner) and not self._lock_held(dataset, owner)):
                shutil.rmtree(folder, ignore_errors=True)
        folder = parent / f"{sha256}.{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        checkpoint("store.staging_created")
        return folder

    def _lock_path(self, dataset: str, sha256: str) -> Path:
        return self.root / "locks" / safe_name(dataset, "dataset name") / f"{sha256}.lock"

    def _lock_held(self, dataset: str, sha256: str) -> bool:
        """Whether a scan holds the batch's lock now (a free lock is taken and released at once)."""
        path = self._lock_path(dataset, sha256)
        if not path.exists():
            return False
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    def commit(self, staging: Path, dataset: str, sha256: str) -> bool:
        """Move a complete staging folder into place. False when another scan got there first."""
        target = self.batch_dir(dataset, sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging, target)
        except OSError:
            if self.recorded(dataset, sha256):
                shutil.rmtree(staging, ignore_errors=True)
                return False
            raise
        checkpoint("store.renamed")
        _fsync_dir(target.parent)
        return True


def write_outputs(outputs: ScanOutputs, folder: Path) -> None:
    """Write every output file atomically into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_split(outputs, folder / "accepted.parquet", folder / "quarantined.parquet")
    checkpoint("store.staging_half_written")
    write_parquet_atomic(outputs.scores, folder / "scores.parquet")
    write_parquet_atomic(outputs.findings, folder / "findings.parquet")
    write_parquet_atomic(
        pd.concat([digest_file(folder / name) for name in DIGESTED_FILES], ignore_index=True), folder / ROW_DIGESTS
    )
    write_text_atomic(outputs.report_html, folder / "report.html")
    checkpoint("store.staging_before_summary")
    # summary.json last: its presence marks a complete folder
    write_text_atomic(json.dumps(redact_data(outputs.summary), indent=2, default=str) + "\n", folder / "summary.json")


def _write_split(outputs: ScanOutputs, accepted: Path, quarantined: Path) -> None:
    """The batch's rows less the held ones, in a pass over the batch; the held rows (about 1 %)
    fetched by position, with their suspicion and reasons. Both carry every cell as it arrived
    (``rows.exact()``: a CSV's text, a Parquet file's values and types), not the typed frame the
    detectors read: "00501" stays "00501", a 20-digit id is not rounded, "NaN" stays a string."""
    held = outputs.held
    positions = held[ROW_NUMBER].to_numpy(dtype=np.int64)
    exact = outputs.rows.exact()
    n_rows = exact.num_rows
    is_held = np.zeros(n_rows, dtype=bool)
    is_held[positions] = True
    schema = exact.schema.append(pa.field(ROW_NUMBER, pa.int64()))

    def accepted_parts() -> Iterator[pa.Table]:
        for start in range(0, max(n_rows, 1), outputs.chunk_rows):
            keep = ~is_held[start : start + outputs.chunk_rows]
            part = exact.slice(start, len(keep)).filter(pa.array(keep))
            numbers = np.arange(start, start + len(keep), dtype=np.int64)[keep]
            yield part.append_column(schema.field(ROW_NUMBER), pa.array(numbers, pa.int64()))

    _write_arrow_parts(accepted_parts(), accepted, schema)
    extra = held.drop(columns=[ROW_NUMBER])
    held_schema = schema
    for field in pa.Schema.from_pandas(extra, preserve_index=False):
        held_schema = held_schema.append(field)

    def held_parts() -> Iterator[pa.Table]:
        for start in range(0, len(positions), outputs.chunk_rows):
            chosen = positions[start : start + outputs.chunk_rows]
            part = exact.take(pa.array(chosen)).append_column(schema.field(ROW_NUMBER), pa.array(chosen, pa.int64()))
            columns = pa.Table.from_pandas(
                extra.iloc[start : start + outputs.chunk_rows].reset_index(drop=True),
                schema=pa.schema(list(held_schema)[len(schema) :]),
                preserve_index=False,
            )
            for name, column in zip(columns.schema.names, columns.columns):
                part = part.append_column(held_schema.field(name), column)
            yield part

    _write_arrow_parts(held_parts(), quarantined, held_schema)


def _write_arrow_parts(parts: Iterator[pa.Table], target: Path, schema: pa.Schema) -> None:
    with atomic_path(target) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for part in parts:
            writer.write_table(part.cast(schema) if part.schema != schema else part)


def file_hashes(folder: Path) -> dict[str, str]:
    """The sha256 of every file in a batch folder, by name. Taken from the staging folder at
    commit, recorded in the ledger and on the scan's MLflow run, and checked by the gate."""
    return folder_files(folder)


def row_digests(frame: pd.DataFrame, as_text: set[str] | None = None) -> np.ndarray:
    """A 64-bit digest of each row's values, in the frame's order. It only localises an edit:
    that a file changed is the sha256's to say; which rows changed, these digests'. Numbers and
    text are digested as they are; other object cells (the ``reasons`` lists) as their text: the
    columns ``as_text`` names (default: ``text_columns(frame)``). (Turning every cell into text
    took 43 s for a 10^6-row batch.)"""
    if frame.empty:
        return np.zeros(0, dtype="uint64")
    hashable = frame.copy(deep=False)
    for column in text_columns(frame) if as_text is None else as_text:
        hashable[column] = hashable[column].astype(str)
    return pd.util.hash_pandas_object(hashable, index=False).to_numpy(dtype="uint64")


def text_columns(frame: pd.DataFrame) -> set[str]:
    """The object columns holding anything besides text and None: digested as their text."""
    return {
        column
        for column in frame.columns[frame.dtypes.eq(object)]
        if not frame[column].map(lambda v: v is None or isinstance(v, str)).all()
    }


def digest_file(path: Path, slice_rows: int = 65_536) -> pd.DataFrame:
    """``digest_table`` of a Parquet file as read back (so the gate's digests of the same bytes
    are the same numbers), a slice of rows at a time: whole, a 10^6-row accepted.parquet and the
    digests' temporaries took 0.45 GiB. Which columns are digested as text is decided over the
    whole file first, as reading it whole would."""
    parquet = pq.ParquetFile(path)

    def slices() -> Iterator[pd.DataFrame]:
        for batch in parquet.iter_batches(batch_size=slice_rows):
            yield pa.Table.from_batches([batch]).to_pandas()

    as_text = set().union(*map(text_columns, slices()))
    parts = [digest_table(path.name, frame, as_text) for frame in slices()]
    return pd.concat(parts, ignore_index=True) if parts else digest_table(path.name, pd.read_parquet(path))


def digest_table(file: str, frame: pd.DataFrame, as_text: set[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {"file": file, ROW_NUMBER: frame[ROW_NUMBER].astype("int64").to_numpy(), "digest": row_digests(frame, as_text)}
    )


def copy_outputs(source: Path, destination: Path, updates: dict[str, Any] | None = None) -> dict[str, Any]:
    """Deliver a recorded scan to ``destination``, with ``updates`` merged into its summary."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        if name == "summary.json":
            continue
        tmp = destination / f".{name}.{uuid.uuid4().hex}.tmp"
        shutil.copyfile(source / name, tmp)
        os.replace(tmp, destination / name)
    checkpoint("store.delivery_before_summary")
    summary = {**json.loads((source / "summary.json").read_text()), **(updates or {})}
    write_text_atomic(json.dumps(summary, indent=2, default=str) + "\n", destination / "summary.json")
    return summary


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
