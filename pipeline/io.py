"""Reading batches and reference data, fingerprints, and atomic writes.

Every table read here gets a ``row_number`` column: the 0-based position of the row in the
file (header excluded). It is the row's identity from ingestion to quarantine and review.

A file is read into memory once, within ``InputLimits``; its sha256, the text checks and the
parse all work on those bytes, so a batch's identity is the hash of exactly what was scanned
even if the file changes on disk while it is read. A batch too large for that is spooled instead
(``read_table``'s ``spool_dir``): copied while hashed, parsed from the copy a block at a time into
an Arrow IPC file, and memory-mapped, so its pages belong to the page cache, not the process.
"""

from __future__ import annotations

import codecs
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.limits import InputLimits, environment_variable
from pipeline.memory import release_freed_memory

ROW_NUMBER = "row_number"
# The batch a training-snapshot row came from (the gate adds it); namespaced, so a dataset's own
# ``batch_id`` column is kept as it is.
BATCH_ID_COLUMN = "poisonguard_batch_id"
# Columns poisonguard adds to its outputs; an input that already has one would be ambiguous.
RESERVED_COLUMNS = frozenset({ROW_NUMBER, BATCH_ID_COLUMN, "suspicion", "reasons", "quarantined"})
SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq")
_SNIFF_DELIMITERS = (";", "\t", "|")
_TEXT_PROBE_BYTES = 64 * 1024
# pyarrow's block size is an int32; one block as large as the file parses a row of any length.
_LARGEST_CSV_BLOCK = (1 << 31) - 1
_FIRST_NON_NEWLINE = re.compile(rb"[^\r\n]")
# One token of a CSV header in pyarrow's default dialect: a quoted field ('""' is a quote inside
# it), a run of plain characters, or a separator. Matching whole fields keeps the count in C.
_CSV_HEADER_TOKEN = re.compile(rb'"[^"]*(?:""[^"]*)*"|[^",\r\n]+|[,\r\n"]')
# How every CSV is parsed: quoted fields may span lines, and an empty or "NA"-like cell of a
# text column is missing, as in a numeric one.
_CSV_PARSE = pacsv.ParseOptions(newlines_in_values=True)


def _csv_convert(column_types: dict[str, pa.DataType] | None = None) -> pacsv.ConvertOptions:
    return pacsv.ConvertOptions(strings_can_be_null=True, column_types=column_types or {})


def _csv_text(names: list[str]) -> pacsv.ConvertOptions:
    """Every column as the text written in the file: an unquoted empty cell is missing, a quoted
    one ("") the empty string, and "NaN", "null" or "NA" stay the strings they are."""
    return pacsv.ConvertOptions(
        column_types={name: pa.string() for name in names},
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )


# pandas' to_parquet stores an unnamed row index as a column of this name. Dropping it would drop
# what may be data (the row labels of a filtered frame are ids of a kind); keeping it would let a
# name pandas gives meaning to through. Refused, with how to write the file instead.
_PANDAS_INDEX_COLUMN = re.compile(r"^__index_level_\d+__$")
# Characters that are invisible or reorder text (a newline, a NUL, a zero-width space, a
# right-to-left override): a column name holding one shows as another name in reports and
# messages, or breaks a one-line error in two.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# A damaged footer can fail in the reader (Arrow errors, I/O errors) or in decoding the column
# names it holds (not UTF-8).
_PARQUET_ERRORS = (pa.ArrowException, OSError, UnicodeDecodeError)
_TEXT_TYPES = (pa.types.is_string, pa.types.is_large_string)
_BYTES_TYPES = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_fixed_size_binary)


@dataclass(frozen=True)
class LoadedTable:
    """A table read from disk with its provenance fingerprints.

    ``table`` holds the file's columns as Arrow arrays, in memory or memory-mapped from a spool
    file. ``frame`` is all of it in pandas, with ``row_number``; ``rows``, ``take`` and ``select``
    convert only the part asked for, to the dtypes the whole frame has (a slice of an integer
    column without its nulls would otherwise come out int64, not float64), so a large batch is
    never held whole in pandas.
    """

    path: Path
    table: pa.Table  # the file's columns, without row_number
    sha256: str  # of the file bytes: the batch's identity
    schema_fingerprint: str  # sha256 of the ordered (column, arrow type) list
    dtypes: dict[str, Any]  # each column's dtype in the whole frame
    # A CSV's columns as outputs carry them (``_exact_csv``): typed where the type writes every
    # cell back as it was written, else the cells' text, so that "00501" stays "00501" and a
    # 20-digit id is not rounded to a float. None for Parquet, whose own values are exact.
    exact_cells: pa.Table | None = None

    @property
    def exact(self) -> pa.Table:
        """Every cell as it arrived: a CSV's text (or a type that writes it back unchanged), a
        Parquet file's own values and types."""
        return self.table if self.exact_cells is None else self.exact_cells

    @property
    def n_rows(self) -> int:
        return self.table.num_rows

    @property
    def columns(self) -> list[str]:
        return list(self.table.schema.names)

    @cached_property
    def frame(self) -> pd.DataFrame:
        """Original columns + row_number; index = row_number."""
        return self.rows(0, self.n_rows)

    def rows(self, start: int, stop: int) -> pd.DataFrame:
        """Rows ``start`` to ``stop`` (positions, end excluded), like ``frame.iloc[start:stop]``."""
        stop = min(stop, self.n_rows)
        return self._frame(self.table.slice(start, max(stop - start, 0)), pd.RangeIndex(start, max(stop, start)))

    def take(self, positions: np.ndarray) -> pd.DataFrame:
        """The rows at ``positions``, in that order, like ``frame.iloc[positions]``."""
        positions = np.asarray(positions, dtype=np.int64)
        return self._frame(self.table.take(positions), pd.Index(positions))

    def select(self, columns: Iterable[str]) -> pd.DataFrame:
        """Every row of ``columns`` (and row_number), like ``frame[[*columns, ROW_NUMBER]]``."""
        return self._frame(self.table.select(list(columns)), pd.RangeIndex(self.n_rows))

    def chunks(self, rows: int) -> Iterator[pd.DataFrame]:
        """``rows(start, start + rows)`` for consecutive starts; one (possibly empty) frame at least."""
        for start in range(0, max(self.n_rows, 1), rows):
            yield self.rows(start, start + rows)

    def _frame(self, part: pa.Table, index: pd.Index) -> pd.DataFrame:
        frame = part.to_pandas()
        for name in frame.columns:
            if frame[name].dtype != self.dtypes[name]:
                frame[name] = frame[name].astype(self.dtypes[name])
        frame.insert(len(frame.columns), ROW_NUMBER, np.asarray(index, dtype=np.int64))
        frame.index = index
        return frame


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def schema_fingerprint(schema: pa.Schema) -> str:
    fields = [[field.name, str(field.type)] for field in schema]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def read_table(
    path: str | Path, role: str = "batch", *, limits: InputLimits | None = None, spool_dir: Path | None = None
) -> LoadedTable:
    """Read a CSV or Parquet file, or raise InputError with one line saying why not.

    ``role`` names the file in messages ("batch", "reference", "holdout"). ``limits`` bound what
    is read (default: ``InputLimits.from_environment()``). With ``spool_dir`` the file is spooled
    there (see the module's docstring) and the table memory-mapped; the checks and the result are
    the same.

    >>> read_table("data_samples/batch_01_clean.csv").n_rows
    140
    """
    limits = InputLimits.from_environment() if limits is None else limits
    path = _check_path(path, role, limits)
    data, text = b"", None
    if spool_dir is None:
        data = _read_bytes(path, role, limits)
        sha256 = hashlib.sha256(data).hexdigest()
        table = _parse_csv_bytes(data, path, role, limits) if _is_csv(path) else _read_parquet(data, path, role, limits)
    else:
        table, sha256, text = _read_spooled(path, role, limits, spool_dir)
    _check_header(table.schema.names, table.num_rows > 0, path, role, limits)
    _check_cells(table, path, role, limits)
    kept, dtypes = _for_pandas(table, path, role)
    if _is_csv(path) and text is None:
        text = _read_csv(data, path, role, _csv_text(table.schema.names))
    del data
    exact = _exact_csv(kept, text) if text is not None else None
    loaded = LoadedTable(path, kept, sha256, schema_fingerprint(table.schema), dtypes, exact)
    del table
    # Arrow's allocator keeps the pages that decoding used and freed, for Arrow to reuse; little
    # after reading allocates through it, so they would stay resident (0.24 GB after a 10^6-row batch).
    release_freed_memory(loaded.n_rows)
    return loaded


def _parse_csv_bytes(data: bytes, path: Path, role: str, limits: InputLimits) -> pa.Table:
    _check_csv_start(data, len(data), path, role, limits)
    return _read_csv(data, path, role)


def _check_csv_start(head: bytes, size: int, path: Path, role: str, limits: InputLimits) -> None:
    """Text, not binary, and a header within the column limit, from the first bytes of a file of ``size``."""
    _check_text(head[:_TEXT_PROBE_BYTES], path, role, whole_file=size <= _TEXT_PROBE_BYTES)
    _check_csv_width(head, path, role, limits)


# --- spooling a large batch --------------------------------------------------------------------

# Rows per record batch written to the spool, and the CSV block read at a time: large enough that
# per-batch overhead vanishes, small enough that a block's parse is a few tens of MB.
_SPOOL_BATCH_ROWS = 65_536
_SPOOL_CSV_BLOCK = 16 << 20
_COPY_BYTES = 1 << 20
# "In CSV column #3: Row #300002: CSV conversion error to int64: invalid value 'x'"
_CONVERSION_ERROR = re.compile(r"In CSV column #(\d+): .*CSV conversion error to ")


def _exact_csv(typed: pa.Table, text: pa.Table) -> pa.Table:
    """Each CSV column as parsed when its values, written as text, are exactly the file's cells
    (missing where the cell was empty), else as the file's text: integers with leading zeros,
    numbers too long for their type, "NaN" or "null" written as words, "" quoted apart from an
    empty cell, times written with a "T" keep what was written."""
    columns = []
    for typed_column, text_column in zip(typed.columns, text.columns):
        columns.append(typed_column if _writes_back(typed_column, text_column) else text_column)
    return pa.table(columns, names=typed.schema.names)


def _writes_back(typed: pa.ChunkedArray, text: pa.ChunkedArray) -> bool:
    if pa.types.is_string(typed.type) or pa.types.is_large_string(typed.type):
        written = typed
    elif pa.types.is_integer(typed.type) or pa.types.is_floating(typed.type) or pa.types.is_null(typed.type):
        try:
            written = pc.cast(typed, pa.string())
        except pa.ArrowException:
            return False
    else:  # booleans ("True" and "1" both parse), times (a "T" or a space): the text says which
        return False
    if _same_cells(written, text):
        return True
    if not pa.types.is_floating(typed.type):
        return False
    # pandas and Python write a whole float with ".0" ("1.0"), Arrow without ("1"); otherwise
    # both write the shortest text that reads back as the same float
    whole = pc.invert(pc.match_substring_regex(written, r"[.eEna]"))
    return _same_cells(pc.if_else(whole, pc.binary_join_element_wise(written, ".0", ""), written), text)


def _same_cells(written: pa.ChunkedArray, text: pa.ChunkedArray) -> bool:
    same = pc.fill_null(pc.equal(written, text), False)
    both_missing = pc.and_(pc.is_null(written), pc.is_null(text))
    return len(text) == 0 or bool(pc.all(pc.or_(same, both_missing)).as_py())


def _read_spooled(path: Path, role: str, limits: InputLimits, spool_dir: Path) -> tuple[pa.Table, str, pa.Table | None]:
    spool_dir.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_spools(spool_dir)
    with tempfile.TemporaryDirectory(prefix="spool-", dir=spool_dir) as folder, _held(Path(folder) / ".lock"):
        copy, spooled = Path(folder) / f"copy{path.suffix.lower()}", Path(folder) / "table.arrow"
        sha256, size = _copy_hashing(path, copy, role, limits)
        text = None
        if _is_csv(path):
            _check_csv_start(_read_head(copy, role, 1 << 20), size, path, role, limits)
            names = _spool_csv(copy, size, spooled, path, role)
            _spool_csv(copy, size, Path(folder) / "text.arrow", path, role, text_of=names)
        else:
            _spool_parquet(copy, spooled, path, role, limits)
        copy.unlink()
        # The folder goes when this block ends; the mapping keeps the file's pages until the table goes.
        table = pa.ipc.open_file(pa.memory_map(str(spooled))).read_all()
        if _is_csv(path):
            text = pa.ipc.open_file(pa.memory_map(str(Path(folder) / "text.arrow"))).read_all()
    return table, sha256, text


@contextmanager
def _held(lock: Path) -> Iterator[None]:
    """An exclusive lock on ``lock`` for as long as its spool is being written."""
    with open(lock, "wb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _remove_abandoned_spools(spool_dir: Path) -> None:
    """Remove the spools of killed scans: a spool whose lock nobody holds (a live scan holds its
    own until the spool is mapped and removed). One less than a minute old may be a live scan's
    that has not taken its lock yet."""
    for folder in spool_dir.glob("spool-*"):
        try:
            if time.time() - folder.stat().st_mtime < 60:
                continue
            with open(folder / ".lock", "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # held by a live scan, or already gone
            continue


def _copy_hashing(path: Path, copy: Path, role: str, limits: InputLimits) -> tuple[str, int]:
    """Copy ``path`` to ``copy`` and return the sha256 and size of the bytes copied: what is
    parsed is exactly what was hashed, whatever happens to ``path`` meanwhile."""
    digest, size = hashlib.sha256(), 0
    blocks = _file_blocks(path, role, limits, _COPY_BYTES)  # raises InputError about ``path``
    try:
        with open(copy, "wb") as target:
            for block in blocks:
                digest.update(block)
                target.write(block)
                size += len(block)
    except OSError as exc:  # the spool's disk, not the batch: full, read-only
        raise InputError(
            f"The {role} file {_shown(path)} could not be spooled into {_shown(copy.parent.parent)}: {_first_line(exc)}"
        ) from None
    return digest.hexdigest(), size


def _spool_csv(copy: Path, size: int, spooled: Path, path: Path, role: str, text_of: list[str] | None = None) -> list[str]:
    """Parse the CSV a block at a time into ``spooled``; returns its column names. The streaming
    reader fixes each column's type from the first block; when a later block does not convert
    (text in a column of numbers) the column is widened (null → int64 → float64 → string) and the
    parse starts over, which is the type a whole read settles on. With ``text_of`` (the column
    names) every cell is spooled as its text instead (``_csv_text``)."""
    column_types: dict[str, pa.DataType] = {}
    block = _SPOOL_CSV_BLOCK
    while True:
        reader = None
        try:
            convert = _csv_text(text_of) if text_of is not None else _csv_convert(column_types)
            reader = pacsv.open_csv(
                copy, read_options=pacsv.ReadOptions(block_size=block), parse_options=_CSV_PARSE, convert_options=convert
            )
            names = _checked_names(reader.schema, path, role)
            _write_spool(reader, reader.schema, spooled)
            return names
        except pa.ArrowInvalid as exc:
            if _straddles(exc) and block < min(size + 1, _LARGEST_CSV_BLOCK):
                block = min(size + 1, _LARGEST_CSV_BLOCK)  # see _read_csv
                continue
            widened = _widened(exc, reader, column_types)
            if widened is None:
                raise _unparsable_csv(path, role, exc) from None
            column_types = widened
        except (pa.ArrowException, UnicodeDecodeError) as exc:
            raise _unparsable_csv(path, role, exc) from None


_WIDER = {pa.null(): pa.int64(), pa.int64(): pa.float64()}


def _widened(
    exc: pa.ArrowInvalid, reader: pacsv.CSVStreamingReader | None, column_types: dict[str, pa.DataType]
) -> dict[str, pa.DataType] | None:
    match = _CONVERSION_ERROR.search(str(exc))
    if match is None or reader is None:
        return None
    field = reader.schema.field(int(match.group(1)))
    if pa.types.is_string(field.type):
        return None
    return {**column_types, field.name: _WIDER.get(field.type, pa.string())}


def _spool_parquet(copy: Path, spooled: Path, path: Path, role: str, limits: InputLimits) -> None:
    try:
        # Read a column chunk at a time, 1 MiB of it buffered, on one thread: pre-buffering a row
        # group and decoding its columns in parallel took 1 GB for a 4×10^6-row file of 10^6-row
        # groups, this 0.25 GB, for 0.3 s more.
        parquet = pq.ParquetFile(copy, pre_buffer=False, buffer_size=1 << 20)
        width, rows, schema = len(parquet.schema_arrow), parquet.metadata.num_rows, parquet.schema_arrow
    except _PARQUET_ERRORS as exc:
        raise _unparsable_parquet(path, role, exc) from None
    _check_width(width, path, role, limits)
    _check_row_count(rows, path, role, limits)
    try:
        _write_spool(parquet.iter_batches(batch_size=_SPOOL_BATCH_ROWS, use_threads=False), schema, spooled)
    except _PARQUET_ERRORS as exc:
        raise _unparsable_parquet(path, role, exc) from None


def _write_spool(batches: Iterable[pa.RecordBatch], schema: pa.Schema, spooled: Path) -> None:
    with pa.ipc.new_file(str(spooled), schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def check_file(path: str | Path, role: str = "batch", *, limits: InputLimits | None = None) -> Path:
    """Cheap checks before any parsing: exists, a file, a supported suffix, not empty, within
    the size limit, and for CSV, text rather than binary. Raises InputError with one line saying
    what to do."""
    limits = InputLimits.from_environment() if limits is None else limits
    path = _check_path(path, role, limits)
    if _is_csv(path):
        _check_text(_read_head(path, role, _TEXT_PROBE_BYTES), path, role)
    return path


def probe_table(path: str | Path, role: str = "batch", *, limits: InputLimits | None = None) -> list[str]:
    """Read only the header (and the first CSV block, or the Parquet footer) and run the same
    header checks as ``read_table``; returns the column names. Costs milliseconds, so bad files
    fail before any service starts; a parse error deeper in a CSV is still found by the full read."""
    limits = InputLimits.from_environment() if limits is None else limits
    path = check_file(path, role, limits=limits)
    if _is_csv(path):
        _check_csv_width(_read_head(path, role, 1 << 20), path, role, limits)
        try:
            reader = pacsv.open_csv(path, parse_options=_CSV_PARSE, convert_options=_csv_convert())
            names = reader.schema.names
            has_rows = any(batch.num_rows for batch in _first_batches(reader))
        except (pa.ArrowException, UnicodeDecodeError) as exc:
            if "straddl" in str(exc) or "cannot infer number of columns" in str(exc):
                return _probe_by_reading(path, role, limits)
            raise InputError(f"The {role} file {_shown(path)} could not be read as CSV: {_first_line(exc)}") from None
    else:
        try:
            parquet = pq.ParquetFile(path)
            names, has_rows = parquet.schema_arrow.names, parquet.metadata.num_rows > 0
        except _PARQUET_ERRORS as exc:
            raise _unparsable_parquet(path, role, exc) from None
        _check_row_count(parquet.metadata.num_rows, path, role, limits)
    _check_header(names, has_rows, path, role, limits)
    return names


def _probe_by_reading(path: Path, role: str, limits: InputLimits) -> list[str]:
    # The header or first row is longer than the streaming reader's 1 MiB block: only a full
    # read (one block as large as the file) can parse it.
    return read_table(path, role, limits=limits).columns


def _first_batches(reader: pacsv.CSVStreamingReader, limit: int = 2) -> Iterator[pa.RecordBatch]:
    # A block can hold a header and no rows; two blocks are enough to tell "no rows" apart.
    for _ in range(limit):
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def _check_path(path: str | Path, role: str, limits: InputLimits) -> Path:
    path = Path(path)
    try:
        exists, is_file = path.exists(), path.is_file()
        size = path.stat().st_size if is_file else 0
    except (OSError, ValueError) as exc:  # a NUL byte, a name longer than the system allows
        raise InputError(f"The {role} path {_shown(path)} cannot be opened: {_first_line(exc)}") from None
    if not exists:
        raise InputError(f"The {role} file {_shown(path)} does not exist.")
    if not is_file:
        raise InputError(f"The {role} path {_shown(path)} is not a file.")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise InputError(f"The {role} file {_shown(path)} has suffix {path.suffix!r}; poisonguard reads .csv and .parquet.")
    if size == 0:
        raise InputError(f"The {role} file {_shown(path)} is empty (0 bytes).")
    if size > limits.max_file_bytes:
        raise _over_limit(path, role, f"has {size:,} bytes", "max_file_bytes", "bytes", limits)
    return path


def _over_limit(path: Path, role: str, found: str, limit: str, unit: str, limits: InputLimits) -> InputError:
    return InputError(
        f"The {role} file {_shown(path)} {found}, over the limit of {getattr(limits, limit):,} {unit}; "
        f"set {environment_variable(limit)} higher to read it."
    )


def _read_head(path: Path, role: str, size: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError as exc:
        raise InputError(f"The {role} file {_shown(path)} cannot be read: {_first_line(exc)}") from None


def _read_bytes(path: Path, role: str, limits: InputLimits) -> bytes:
    return b"".join(_file_blocks(path, role, limits))


def _file_blocks(path: Path, role: str, limits: InputLimits, block_size: int | None = None) -> Iterator[bytes]:
    """The file's bytes, ``block_size`` at a time (default: all at once), within the size limit;
    InputError if it is empty or its size changes while it is read."""
    read = 0
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limits.max_file_bytes:
                raise _over_limit(path, role, f"has {size:,} bytes", "max_file_bytes", "bytes", limits)
            while read <= size:  # one byte more than stat said shows a file still growing
                block = handle.read(min(block_size or size + 1, size + 1 - read))
                if not block:
                    break
                read += len(block)
                yield block
    except OSError as exc:
        raise InputError(f"The {role} file {_shown(path)} cannot be read: {_first_line(exc)}") from None
    if read != size:
        raise InputError(
            f"The {role} file {_shown(path)} changed while it was read ({size:,} bytes, then "
            f"{read:,}); scan it once it is completely written."
        )
    if not read:
        raise InputError(f"The {role} file {_shown(path)} is empty (0 bytes).")


def _check_text(head: bytes, path: Path, role: str, *, whole_file: bool = False) -> None:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_BE)):
        raise InputError(f"The {role} file {_shown(path)} is UTF-16 or UTF-32 text: re-save it as UTF-8 CSV.")
    if b"\x00" in head:
        raise InputError(f"The {role} file {_shown(path)} is binary, not CSV text: export it as CSV or Parquet.")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if whole_file or exc.start < len(head) - 4:  # not merely a multi-byte character cut by the read
            raise InputError(
                f"The {role} file {_shown(path)} is not UTF-8 text (byte {exc.start}): re-save it as UTF-8 CSV."
            ) from None


def _check_csv_width(data: bytes, path: Path, role: str, limits: InputLimits) -> None:
    """Count the header's fields before parsing: pyarrow spends about 9 kB of memory per column
    of a row, so a 1 MB header of commas would take a gigabyte to refuse after the parse."""
    # Counting on well past the limit gives the user the real width, yet stays bounded.
    count_up_to = max(10 * limits.max_columns, 10_000)
    width = _csv_header_width(data, stop_after=count_up_to)
    if width > limits.max_columns:
        found = f"has more than {count_up_to:,} columns" if width > count_up_to else f"has {width:,} columns"
        raise _over_limit(path, role, found, "max_columns", "columns", limits)


def _csv_header_width(data: bytes, stop_after: int) -> int:
    """Fields in the first non-empty line of ``data`` (quoted fields may span lines), counting
    no further than ``stop_after + 1``. A header cut off by the end of ``data`` counts what
    ``data`` holds."""
    fields = 1
    first = _FIRST_NON_NEWLINE.search(data)  # pyarrow skips blank lines before the header
    for token in _CSV_HEADER_TOKEN.finditer(data, first.start() if first else len(data)):
        lead = data[token.start()]
        if lead == ord(","):
            fields += 1
            if fields > stop_after:
                break
        elif lead in (ord("\r"), ord("\n")):
            break
    return fields


def _read_csv(data: bytes, path: Path, role: str, convert: pacsv.ConvertOptions | None = None) -> pa.Table:
    try:
        try:
            table = _parse_csv(data, convert=convert)
        except pa.ArrowInvalid as exc:
            if not _straddles(exc):
                raise
            # A row (or the header) longer than the reader's 1 MiB block cannot be split across
            # blocks; one block as large as the file parses it, and the limits then judge it.
            table = _parse_csv(data, block_size=min(len(data) + 1, _LARGEST_CSV_BLOCK), convert=convert)
    except (pa.ArrowException, UnicodeDecodeError) as exc:
        raise _unparsable_csv(path, role, exc) from None
    _checked_names(table.schema, path, role)
    return table


def _straddles(exc: BaseException) -> bool:
    return "straddl" in str(exc) or "cannot infer number of columns" in str(exc)


def _unparsable_csv(path: Path, role: str, exc: BaseException) -> InputError:
    return InputError(f"The {role} file {_shown(path)} could not be read as CSV: {_first_line(exc)}")


def _checked_names(schema: pa.Schema, path: Path, role: str) -> list[str]:
    try:
        return schema.names  # pyarrow decodes column names only when asked
    except UnicodeDecodeError as exc:
        raise InputError(
            f"The {role} file {_shown(path)} is not UTF-8 text (in its header, byte {exc.start} of "
            "a column name): re-save it as UTF-8 CSV."
        ) from None


def _parse_csv(data: bytes, block_size: int | None = None, convert: pacsv.ConvertOptions | None = None) -> pa.Table:
    read_options = pacsv.ReadOptions(use_threads=True)
    if block_size is not None:
        read_options.block_size = block_size
    return pacsv.read_csv(
        pa.BufferReader(data),
        read_options=read_options,
        parse_options=_CSV_PARSE,
        convert_options=convert or _csv_convert(),
    )


def _read_parquet(data: bytes, path: Path, role: str, limits: InputLimits) -> pa.Table:
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        width, rows = len(parquet.schema_arrow), parquet.metadata.num_rows
    except _PARQUET_ERRORS as exc:
        raise _unparsable_parquet(path, role, exc) from None
    # Both from the footer, before a single value is decoded: a small file can hold many rows.
    _check_width(width, path, role, limits)
    _check_row_count(rows, path, role, limits)
    try:
        table = parquet.read()
        table.schema.names  # noqa: B018 - pyarrow decodes column names only when asked
    except _PARQUET_ERRORS as exc:
        raise _unparsable_parquet(path, role, exc) from None
    return table


def _unparsable_parquet(path: Path, role: str, exc: BaseException) -> InputError:
    return InputError(f"The {role} file {_shown(path)} could not be read as Parquet: {_first_line(exc)}")


def _check_width(width: int, path: Path, role: str, limits: InputLimits) -> None:
    if width > limits.max_columns:
        raise _over_limit(path, role, f"has {width:,} columns", "max_columns", "columns", limits)


def _check_row_count(rows: int, path: Path, role: str, limits: InputLimits) -> None:
    if rows > limits.max_rows:
        raise _over_limit(path, role, f"has {rows:,} rows", "max_rows", "rows", limits)


def _check_header(names: list[str], has_rows: bool, path: Path, role: str, limits: InputLimits) -> None:
    _check_width(len(names), path, role, limits)
    if _is_csv(path):
        _check_delimiter(names, path, role)
    _check_columns(names, path, role, limits)
    if not has_rows:
        raise InputError(f"The {role} file {_shown(path)} has a header but no rows: nothing to scan.")


def _check_delimiter(names: list[str], path: Path, role: str) -> None:
    # A ';'- or tab-separated file parses as one wide column; say so instead of "missing columns".
    if len(names) != 1:
        return
    header = names[0]
    for delimiter in _SNIFF_DELIMITERS:
        if delimiter in header:
            raise InputError(
                f"The {role} file {_shown(path)} looks {delimiter!r}-separated (header {header[:60]!r}); "
                "poisonguard reads comma-separated CSV: convert it or save it as Parquet."
            )


def _check_columns(names: list[str], path: Path, role: str, limits: InputLimits) -> None:
    shown = _shown(path)
    for position, name in enumerate(names):
        if len(name) > limits.max_field_chars:
            raise _over_limit(
                path,
                role,
                f"has a column name of {len(name):,} characters (position {position})",
                "max_field_chars",
                "characters",
                limits,
            )
    duplicated = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicated:
        raise InputError(f"The {role} file {shown} has duplicated column names: {', '.join(map(repr, duplicated))}.")
    empty = [i for i, name in enumerate(names) if not str(name).strip()]
    if empty:
        raise InputError(f"The {role} file {shown} has an empty column name at position {empty[0]}.")
    hidden = [i for i, name in enumerate(names) if any(unicodedata.category(ch) in _HIDDEN_CATEGORIES for ch in name)]
    if hidden:
        raise InputError(
            f"The {role} file {shown} has a column name with an invisible or control character at "
            f"position {hidden[0]} ({names[hidden[0]]!r}): rename it."
        )
    internal = [name for name in names if _PANDAS_INDEX_COLUMN.match(name)]
    if internal:
        raise InputError(
            f"The {role} file {shown} has column {internal[0]!r}, the name pandas gives an unnamed row index: "
            "write the file with to_parquet(..., index=False), or give the column a name of its own."
        )
    reserved = sorted(RESERVED_COLUMNS.intersection(names))
    if reserved:
        raise InputError(
            f"The {role} file {shown} has column(s) {', '.join(map(repr, reserved))}, "
            "which poisonguard reserves for its outputs: rename them."
        )


def _check_cells(table: pa.Table, path: Path, role: str, limits: InputLimits) -> None:
    """Row count, cell types and cell lengths, known only once the file is parsed (a Parquet
    file's rows were also counted from its footer). Undecodable text in a CSV is pyarrow's
    binary type."""
    _check_row_count(table.num_rows, path, role, limits)
    for name, column in zip(table.schema.names, table.columns):
        values = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        if pa.types.is_nested(values):
            # Lists, structs and maps have no place in a training row and break hashing, domains
            # and detectors downstream; a flat file is the contract.
            raise InputError(
                f"The {role} file {_shown(path)} has nested values ({values}) in column {name!r}; "
                "poisonguard reads flat tables with one value per cell."
            )
        if _is_csv(path) and any(is_type(values) for is_type in _BYTES_TYPES):
            raise InputError(
                f"The {role} file {_shown(path)} is not UTF-8 text (in column {name!r}): re-save it as UTF-8 CSV."
            )
        lengths = _cell_lengths(column)
        if lengths is None:
            continue
        longest = pc.max(lengths).as_py()
        if longest is not None and longest > limits.max_field_chars:
            row = pc.index(pc.greater(lengths, limits.max_field_chars), True).as_py()
            where = f"column {name!r}, row {row}" if row >= 0 else f"column {name!r}"
            raise _over_limit(
                path, role, f"has a cell of {longest:,} characters ({where})", "max_field_chars", "characters", limits
            )


def _cell_lengths(column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """Characters per cell of a text column (bytes for a binary one); None for other types."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if any(is_type(column.type) for is_type in _TEXT_TYPES):
        return pc.utf8_length(column)
    if any(is_type(column.type) for is_type in _BYTES_TYPES):
        return pc.binary_length(column)
    return None


def _for_pandas(table: pa.Table, path: Path, role: str) -> tuple[pa.Table, dict[str, Any]]:
    """The table as ``LoadedTable`` keeps it (what pandas will see, checked to convert) and the
    dtype of each of its columns in pandas."""
    # The pandas metadata a Parquet writer stores is the file's to choose: it could turn columns
    # into an index that is then dropped, give columns non-string names, or fail to parse
    # (pyarrow parses it even with ignore_metadata). The Arrow schema alone says what the columns are.
    table = table.replace_schema_metadata(None)
    if any(pa.types.is_dictionary(field.type) for field in table.schema):
        table = table.unify_dictionaries()  # one set of categories in every slice
    try:
        dtypes = _pandas_dtypes(table)
        for column in table.columns:
            if not _converts_plainly(column.type):  # dates out of pandas' range, decimals, ...
                column.to_pandas()
    except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"The {role} file {_shown(path)} has columns pandas cannot hold: {_first_line(exc)}") from None
    return table, dtypes


def _converts_plainly(arrow_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return any(
        is_type(arrow_type)
        for is_type in (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_null, *_TEXT_TYPES)
    )


def _pandas_dtypes(table: pa.Table) -> dict[str, Any]:
    """The dtype each column has in the whole table's pandas frame. It depends only on the Arrow
    type and on whether the column has nulls, so a first value and a first null tell it."""
    probe = {}
    for name, column in zip(table.schema.names, table.columns):
        first_valid = pc.index(pc.is_valid(column), True).as_py()
        first_null = pc.index(pc.is_null(column), True).as_py()
        # two rows in every column: its first value and its first null, or either twice
        picked = [
            column.slice(i, 1)
            for i in (first_valid if first_valid >= 0 else first_null, first_null if first_null >= 0 else first_valid)
        ]
        probe[name] = pa.chunked_array([c for part in picked for c in part.chunks], type=column.type)
    return dict(pa.table(probe, schema=table.schema).to_pandas().dtypes)


def _shown(text: str | Path) -> str:
    """A file name or column name as one printable line: names may hold newlines or terminal escapes."""
    text = str(text)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


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


# Rows converted to Arrow at a time when writing: whole, a 10^6-row frame's Arrow copy sat beside
# it (0.25 GB for a scan's accepted rows).
PARQUET_SLICE_ROWS = 262_144


def write_parquet_atomic(frame: pd.DataFrame, target: Path) -> None:
    """``frame.to_parquet(target, index=False)``, atomically, a slice of rows at a time (one row
    group each). The schema is taken from the whole frame, so every slice is written alike."""
    slices = (frame.iloc[start : start + PARQUET_SLICE_ROWS] for start in range(0, len(frame), PARQUET_SLICE_ROWS))
    write_parquet_parts(slices, target, pa.Schema.from_pandas(frame, preserve_index=False))


def write_parquet_parts(parts: Iterable[pd.DataFrame], target: Path, schema: pa.Schema) -> None:
    """Frames written one after another as one Parquet file with ``schema``, atomically; a frame
    is converted to Arrow only when its turn comes."""
    rows = 0
    with atomic_path(target) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for part in parts:
            writer.write_table(pa.Table.from_pandas(part, schema=schema, preserve_index=False))
            rows += len(part)
    release_freed_memory(rows)  # see read_table


def write_text_atomic(text: str, target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def as_common_types(frames: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """Frames of one dataset's batches, made to stack: a column that is text in one batch (a
    CSV's cells kept as written, see ``LoadedTable.exact``) and numbers in another becomes text
    in all, each number written as Arrow writes it, so that no value is lost or coerced."""
    present = [f for f in frames if len(f)]
    mixed = {
        column
        for column in set().union(*(f.columns for f in present))
        if len({_is_text(f[column]) for f in present if column in f.columns}) > 1
    }
    if not mixed:
        return frames
    out = []
    for frame in frames:
        frame = frame.copy(deep=False)
        for column in mixed & set(frame.columns):
            if not _is_text(frame[column]):
                written = pc.cast(pa.array(frame[column], from_pandas=True), pa.string())
                frame[column] = pd.Series(written.to_pylist(), index=frame.index, dtype=object)
        out.append(frame)
    return out


def _is_text(column: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(column) or pd.api.types.is_object_dtype(column)
