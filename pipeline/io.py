"""Reading batches and reference data, fingerprints, and atomic writes.

Every table read here gets a ``row_number`` column: the 0-based position of the row in the
file (header excluded). It is the row's identity from ingestion to quarantine and review.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.errors import InputError

ROW_NUMBER = "row_number"
# Columns poisonguard adds to its outputs; an input that already has one would be ambiguous.
RESERVED_COLUMNS = frozenset({ROW_NUMBER, "suspicion", "reasons", "quarantined"})
SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq")
_SNIFF_DELIMITERS = (";", "\t", "|")


@dataclass(frozen=True)
class LoadedTable:
    """A table read from disk with its provenance fingerprints."""

    path: Path
    frame: pd.DataFrame  # original columns + row_number, index = row_number
    sha256: str  # of the file bytes: the batch's identity
    schema_fingerprint: str  # sha256 of the ordered (column, arrow type) list

    @property
    def n_rows(self) -> int:
        return len(self.frame)

    @property
    def columns(self) -> list[str]:
        return [c for c in self.frame.columns if c != ROW_NUMBER]


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def schema_fingerprint(schema: pa.Schema) -> str:
    fields = [[field.name, str(field.type)] for field in schema]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def read_table(path: str | Path, role: str = "batch") -> LoadedTable:
    """Read a CSV or Parquet file, or raise InputError with one line saying why not.

    ``role`` names the file in messages ("batch", "reference", "holdout").
    """
    path = check_file(path, role)
    sha256 = sha256_file(path)
    table = _read_csv(path, role) if path.suffix.lower() == ".csv" else _read_parquet(path, role)
    _check_header(table.schema.names, table.num_rows > 0, path, role)
    frame = _to_pandas(table, path, role)
    frame.insert(len(frame.columns), ROW_NUMBER, range(len(frame)))
    frame.index = pd.RangeIndex(len(frame))
    return LoadedTable(path, frame, sha256, schema_fingerprint(table.schema))


def check_file(path: str | Path, role: str = "batch") -> Path:
    """Cheap checks before any parsing: exists, a file, a supported suffix, not empty, and for
    CSV, text rather than binary. Raises InputError with one line saying what to do."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"The {role} file {path} does not exist.")
    if not path.is_file():
        raise InputError(f"The {role} path {path} is not a file.")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise InputError(
            f"The {role} file {path} has suffix '{path.suffix}'; poisonguard reads .csv and .parquet."
        )
    if path.stat().st_size == 0:
        raise InputError(f"The {role} file {path} is empty (0 bytes).")
    if path.suffix.lower() == ".csv":
        _check_text(path, role)
    return path


def _read_csv(path: Path, role: str) -> pa.Table:
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=True),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise InputError(f"The {role} file {path} could not be read as CSV: {_first_line(exc)}") from None
    return table


def probe_table(path: str | Path, role: str = "batch") -> list[str]:
    """Read only the header (and the first CSV block, or the Parquet footer) and run the same
    header checks as ``read_table``; returns the column names. Costs milliseconds, so bad files
    fail before any service starts; a parse error deeper in a CSV is still found by the full read."""
    path = check_file(path, role)
    if path.suffix.lower() == ".csv":
        try:
            reader = pacsv.open_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                                    convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
            names = reader.schema.names
            has_rows = any(batch.num_rows for batch in _first_batches(reader))
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise InputError(f"The {role} file {path} could not be read as CSV: {_first_line(exc)}") from None
    else:
        try:
            parquet = pq.ParquetFile(path)
            names, has_rows = parquet.schema_arrow.names, parquet.metadata.num_rows > 0
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"The {role} file {path} could not be read as Parquet: {_first_line(exc)}") from None
    _check_header(names, has_rows, path, role)
    return names


def _first_batches(reader: pacsv.CSVStreamingReader, limit: int = 2) -> Iterator[pa.RecordBatch]:
    # A block can hold a header and no rows; two blocks are enough to tell "no rows" apart.
    for _ in range(limit):
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return


def _check_header(names: list[str], has_rows: bool, path: Path, role: str) -> None:
    if path.suffix.lower() == ".csv":
        _check_delimiter(names, path, role)
    _check_columns(names, path, role)
    if not has_rows:
        raise InputError(f"The {role} file {path} has a header but no rows: nothing to scan.")


def _check_text(path: Path, role: str) -> None:
    with open(path, "rb") as handle:
        head = handle.read(64 * 1024)
    if b"\x00" in head:
        raise InputError(f"The {role} file {path} is binary, not CSV text: export it as CSV or Parquet.")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not merely a multi-byte character cut by the read
            raise InputError(
                f"The {role} file {path} is not UTF-8 text (byte {exc.start}): re-save it as UTF-8 CSV."
            ) from None


def _read_parquet(path: Path, role: str) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"The {role} file {path} could not be read as Parquet: {_first_line(exc)}") from None


def _check_delimiter(names: list[str], path: Path, role: str) -> None:
    # A ';'- or tab-separated file parses as one wide column; say so instead of "missing columns".
    if len(names) != 1:
        return
    header = names[0]
    for delimiter in _SNIFF_DELIMITERS:
        if delimiter in header:
            raise InputError(
                f"The {role} file {path} looks {delimiter!r}-separated (header {header[:60]!r}); "
                "poisonguard reads comma-separated CSV: convert it or save it as Parquet."
            )


def _check_columns(names: list[str], path: Path, role: str) -> None:
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise InputError(f"The {role} file {path} has duplicated column names: {', '.join(map(repr, duplicated))}.")
    empty = [i for i, name in enumerate(names) if not str(name).strip()]
    if empty:
        raise InputError(f"The {role} file {path} has an empty column name at position {empty[0]}.")
    reserved = sorted(RESERVED_COLUMNS.intersection(names))
    if reserved:
        raise InputError(
            f"The {role} file {path} has column(s) {', '.join(map(repr, reserved))}, "
            "which poisonguard reserves for its outputs: rename them."
        )


def _to_pandas(table: pa.Table, path: Path, role: str) -> pd.DataFrame:
    try:
        return table.to_pandas()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise InputError(f"The {role} file {path} has columns pandas cannot hold: {_first_line(exc)}") from None


def _first_line(exc: BaseException, limit: int = 240) -> str:
    """The first line of an error, printable and short: it may quote bytes of a hostile file."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    line = "".join(ch if ch.isprintable() else "?" for ch in line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` only on success.

    Rename within one directory is atomic on POSIX, so readers see the old file or the new
    one, never half of one.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be read by stewards
        _fsync(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet_atomic(frame: pd.DataFrame, target: Path) -> None:
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)


def write_text_atomic(text: str, target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
