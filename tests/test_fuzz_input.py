"""Hostile input: generated files end in one clear refusal or in every row accounted for.

Property-based (hypothesis, derandomized so that CI sees the same cases every run). Ingestion
(``read_table``) is fuzzed fast with hundreds of files: random bytes, Parquet cut short or with
flipped bytes, CSV with BOMs, mixed encodings, quotes and embedded newlines, huge fields and row
counts, unicode, duplicate and empty headers, mixed-type and all-empty columns, extreme floats.
Each file ends in an ``InputError`` whose message is one printable line naming the file, or in a
table whose ``row_number`` is 0..n-1 with exactly the rows written. The scan's validation,
detectors, decision and outputs are fuzzed with fewer batches derived from the HMDA sample: each
ends in a refusal or in every input row written to exactly one of accepted/quarantined, every
quarantined row with a reason.

The resource limits (``pipeline/limits.py``) and the bugs these properties found have tests of
their own below. ``benchmarks/fuzz_ingest.py`` runs the same strategies for many more cases.

This module does not import tests/conftest.py, so that the benchmark can import its strategies.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import re
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import scan
from pipeline.config import Settings
from pipeline.errors import InputError, PoisonguardError
from pipeline.io import RESERVED_COLUMNS, ROW_NUMBER, probe_table, read_table
from pipeline.limits import InputLimits
from pipeline.scan_run import evaluate
from pipeline.store import write_outputs

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"
SUITE = REPO / "expectations" / "hmda.json"
CLEAN_BATCH = SAMPLES / "batch_01_clean.csv"

# Tight enough that generated files cross every limit often, loose enough that most files fit.
TIGHT_LIMITS = InputLimits(max_file_bytes=4 << 20, max_columns=40, max_field_chars=3000, max_rows=30_000)
DEFAULT_LIMITS = InputLimits()
SECONDS_PER_CASE = 20.0  # far above any case's time on 2 busy cores: only a runaway fails it

FUZZ_SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)

# What a refusal says, from the messages of pipeline/io.py: the benchmark counts outcomes by these.
REFUSAL_CLASSES = (
    ("could not be read as CSV", "unparsable CSV"),
    ("could not be read as Parquet", "unparsable Parquet"),
    ("is binary", "binary, not text"),
    ("UTF-16 or UTF-32", "UTF-16/32 text"),
    ("not UTF-8", "not UTF-8"),
    ("duplicated column names", "duplicated column names"),
    ("empty column name", "empty column name"),
    ("invisible or control character", "hidden character in a column name"),
    ("reserves for its outputs", "reserved column name"),
    ("-separated", "wrong delimiter"),
    ("header but no rows", "no rows"),
    ("nested values", "nested values"),
    ("pandas cannot hold", "types pandas cannot hold"),
    ("is empty", "empty file"),
)


def refusal_class(message: str) -> str:
    limit = re.search(r"set (POISONGUARD_[A-Z_]+) higher", message)
    if limit:
        return f"refused: over a limit ({limit.group(1)})"
    for phrase, name in REFUSAL_CLASSES:
        if phrase in message:
            return f"refused: {name}"
    return f"refused: other ({message[:60]})"


# --- what a generated file is, and the one check every file goes through -------------------------


@dataclass(frozen=True)
class GeneratedFile:
    """A file to read, with what reading it must give when the generator knows."""

    name: str
    data: bytes
    limits: InputLimits
    columns: tuple[str, ...] | None = None  # set when the file must be read: its columns
    rows: int | None = None  # and its row count

    def __repr__(self) -> str:  # hypothesis prints failing examples; a 2 MB repr helps no one
        return (
            f"GeneratedFile(name={self.name!r}, {len(self.data):,} bytes, data[:300]={self.data[:300]!r}, "
            f"limits={self.limits}, columns={self.columns}, rows={self.rows})"
        )


def assert_one_clear_line(message: str, path: Path) -> None:
    assert message and "\n" not in message and "\r" not in message, message
    assert message.isprintable(), message
    assert message.startswith(("The batch file", "The batch path")), message
    if str(path).isprintable():
        assert str(path) in message, message


def check_read(document: GeneratedFile, folder: Path) -> str:
    """Read one generated file; return its outcome class. Any other exception fails the case."""
    path = folder / document.name
    path.write_bytes(document.data)
    started = time.perf_counter()
    try:
        outcome = _read_outcome(document, path)
    finally:
        path.unlink(missing_ok=True)
    assert time.perf_counter() - started < SECONDS_PER_CASE, "a runaway read"
    return outcome


def _read_outcome(document: GeneratedFile, path: Path) -> str:
    try:
        table = read_table(path, "batch", limits=document.limits)
    except InputError as error:
        assert_one_clear_line(str(error), path)
        assert document.rows is None, f"a well-formed file was refused: {error}"
        return refusal_class(str(error))
    frame = table.frame
    assert frame[ROW_NUMBER].tolist() == list(range(len(frame)))
    assert frame.index.equals(pd.RangeIndex(len(frame)))
    assert len(frame) >= 1 and all(isinstance(c, str) for c in frame.columns)
    if document.rows is not None:
        assert len(frame) == document.rows
        assert tuple(table.columns) == document.columns
    return "read"


# --- strategies: pieces ----------------------------------------------------------------------------

EXTREME_NUMBERS = [
    "1e308",
    "-1e308",
    "1.7976931348623157e308",
    "1e309",
    "-1e309",
    "5e-324",
    "1e-400",
    "-0",
    "-0.0",
    "nan",
    "NaN",
    "-nan",
    "inf",
    "-inf",
    "Infinity",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "0x1F",
    "1_000",
    "1,5",
    " 1 ",
    "+1",
    ".5",
    "5.",
    "1e",
    "--1",
    "١٢٣",
]
TRICKY_TEXT = [
    "",
    " ",
    '"',
    '""',
    ",",
    "\n",
    "\r\n",
    "\r",
    "a\nb",
    '"quoted", with comma',
    "NULL",
    "NA",
    "N/A",
    "None",
    "true",
    "False",
    "2020-01-01",
    "2020-13-45",
    "12:00:00",
    "\ufeff",
    "\u202e",
    "\x00",
    "\t",
    "<script>alert(1)</script>",
    "=cmd|' /C calc'!A0",
    "Ünïcödé",
    "名前",
    "😀",
    "\\",
    "'",
]
TRICKY_NAMES = [
    "deny",
    "pirat",
    "",
    " ",
    "  x  ",
    "a;b",
    "a\tb",
    "a|b",
    "é",
    "名前",
    "\ufeffdeny",
    "a\nb",
    "a,b",
    '"q"',
    "__index_level_0__",
    "\u202eevil",
    "zero\u200bwidth",
    "1",
    "None",
    *RESERVED_COLUMNS,
]
FILE_STEMS = st.one_of(
    st.sampled_from(
        ["batch", "b a t c h", "..", "...batch", "-batch", "batch\nnext line", "bätch", "名前", "\u202etxt.exe", "x" * 200]
    ),
    st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=30),
).filter(lambda stem: stem not in (".", "..") and len(stem.encode()) <= 200)


def mostly(common: st.SearchStrategy, rare: st.SearchStrategy, one_in: int) -> st.SearchStrategy:
    """``rare`` about once in ``one_in`` draws. Hostile values in every cell and name would make
    nearly every file a refusal, and leave the path of a file read whole untested."""
    return st.integers(0, one_in - 1).flatmap(lambda i: rare if i == 0 else common)


numbers_as_text = st.one_of(st.integers(-(2**70), 2**70).map(str), st.floats().map(repr), st.sampled_from(EXTREME_NUMBERS))
short_text = mostly(
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12),
    st.one_of(st.sampled_from(TRICKY_TEXT), st.text(max_size=12)),
    one_in=3,
)
# Rare by construction (one branch of many) because they are slow to write: fields that cross
# the tight limit, and fields over pyarrow's 1 MiB block, which need the one-block re-read.
huge_text = st.builds(
    lambda char, n: char * n,
    st.sampled_from(["x", "é", '"', "\n", ","]),
    st.sampled_from([2999, 3000, 3001, 70_000, 1_100_000]),
)
CELL_KINDS = {
    "numeric": numbers_as_text,
    "text": short_text,
    "mixed": st.one_of(numbers_as_text, short_text, st.sampled_from(["true", "2020-01-01"])),
    "empty": st.sampled_from(["", "NA", "nan", "NULL"]),  # an all-missing column
    "boolean": st.sampled_from(["true", "false", "True", "FALSE", ""]),
    "huge": mostly(short_text, huge_text, one_in=8),
}
column_names = mostly(
    st.text(st.characters(whitelist_categories=("Lu", "Ll", "Lo", "Nd")), min_size=1, max_size=10),
    st.one_of(
        st.sampled_from(TRICKY_NAMES),
        st.text(max_size=10),
        st.builds(lambda n: "n" * n, st.sampled_from([2999, 3000, 3001])),
    ),
    one_in=6,
)


def draw_names(draw, least: int, most: int) -> list[str]:
    """Column names, now and then with one repeated (hypothesis's small, simple names would
    otherwise repeat in most tables)."""
    names = draw(st.lists(column_names, min_size=least, max_size=most, unique=True))
    if draw(st.integers(0, 7)) == 0:
        names[-1] = draw(st.sampled_from(names[:-1] or names))
    return names


def csv_line(cells: list[str], quote_all: bool) -> str:
    """One CSV record as RFC 4180 has it. Python's csv module leaves a lone '\r' unquoted when the
    line ends in '\n', which every other reader takes for a line break."""

    def field(cell: str) -> str:
        if quote_all or any(ch in cell for ch in ',"\r\n') or (cell == "" and len(cells) == 1):
            return '"' + cell.replace('"', '""') + '"'
        return cell

    return ",".join(field(cell) for cell in cells)


def _file_name(draw, suffixes: list[str]) -> str:
    return draw(FILE_STEMS) + draw(st.sampled_from(suffixes))


def _names_are_valid(names: list[str], limits: InputLimits, csv_file: bool) -> bool:
    hidden = ("Cc", "Cf", "Zl", "Zp", "Cs")
    return (
        len(names) <= limits.max_columns
        and len(set(names)) == len(names)
        and all(name.strip() for name in names)
        and not RESERVED_COLUMNS.intersection(names)
        and not any(re.fullmatch(r"__index_level_\d+__", name) for name in names)
        and all(len(name) <= limits.max_field_chars for name in names)
        and not any(unicodedata.category(ch) in hidden for name in names for ch in name)
        and not (csv_file and len(names) == 1 and any(d in names[0] for d in ";\t|"))
    )


# --- strategies: whole files -----------------------------------------------------------------------


@st.composite
def random_files(draw) -> GeneratedFile:
    """Bytes that are not a table, some dressed as one (a Parquet magic number, a CSV header)."""
    body = draw(st.binary(max_size=3000))
    dressing = draw(st.sampled_from(["none", "parquet-magic", "csv-header", "utf8-text"]))
    if dressing == "parquet-magic":
        body = b"PAR1" + body + draw(st.binary(min_size=4, max_size=4)) + b"PAR1"
    elif dressing == "csv-header":
        body = b"deny,pirat\n" + body
    elif dressing == "utf8-text":
        body = draw(st.text(max_size=500)).encode("utf-8")
    limits = draw(st.sampled_from([TIGHT_LIMITS, DEFAULT_LIMITS]))
    return GeneratedFile(_file_name(draw, [".csv", ".parquet", ".pq", ".CSV"]), body, limits)


@st.composite
def csv_files(draw) -> GeneratedFile:
    """A table written as CSV, then encoded (or mis-encoded)."""
    limits = draw(st.sampled_from([TIGHT_LIMITS, TIGHT_LIMITS, DEFAULT_LIMITS]))
    names = draw_names(draw, 1, 6)
    if draw(st.integers(0, 9)) == 0:  # wide: past the tight column limit
        names += [f"extra_{i}" for i in range(draw(st.sampled_from([35, 39, 60])))]
    kinds = [draw(st.sampled_from(sorted(CELL_KINDS))) for _ in names]
    n_rows = draw(st.integers(0, 12))
    rows = [[draw(CELL_KINDS[kind]) for kind in kinds] for _ in range(n_rows)]
    terminator = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    quote_all = draw(st.booleans())
    body = "".join(csv_line(row, quote_all) + terminator for row in rows)
    repeat = draw(st.sampled_from([1] * 8 + [2_000, 31_000]))  # row counts past a block and a limit
    if len(body) > 200:
        repeat = 1  # keeps files under ~6 MB: the file-size limit has tests of its own
    text = csv_line(names, quote_all) + terminator + body * repeat
    encoding = draw(st.sampled_from(["utf-8"] * 6 + ["utf-8-sig"] * 2 + ["utf-16", "cp1252", "mixed"]))
    if encoding == "mixed":  # the header and every other row in UTF-8, the rest in cp1252
        lines = text.split(terminator)
        data = terminator.encode().join(
            line.encode("utf-8" if i % 2 == 0 else "cp1252", errors="replace") for i, line in enumerate(lines)
        )
    else:
        data = text.encode(encoding, errors="replace")
    seen_names = list(names)
    if encoding in ("utf-8", "mixed") and seen_names[0].startswith("\ufeff"):
        seen_names[0] = seen_names[0][1:]  # read as the file's byte-order mark, which pyarrow skips
    try:
        decoded = data.decode("utf-8-sig")
        # cp1252 turns what it cannot encode into '?': the names read back are not the names written
        is_utf8 = encoding not in ("utf-16", "cp1252", "mixed") or text.isascii()
    except UnicodeDecodeError:
        decoded, is_utf8 = "", False
    total_rows = n_rows * repeat
    well_formed = (
        is_utf8
        and "\x00" not in decoded
        and total_rows >= 1
        and total_rows <= limits.max_rows
        and len(data) <= limits.max_file_bytes
        and _names_are_valid(seen_names, limits, csv_file=True)
        and all(len(cell) <= limits.max_field_chars for row in rows for cell in row)
    )
    return GeneratedFile(
        _file_name(draw, [".csv", ".CSV"]),
        data,
        limits,
        tuple(seen_names) if well_formed else None,
        total_rows if well_formed else None,
    )


def _arrow_column(draw, n_rows: int) -> tuple[pa.Array, bool]:
    """A column of one Arrow type, nulls included; True when ingestion must accept it."""
    kind = draw(
        st.sampled_from(
            [
                "int",
                "float",
                "string",
                "bool",
                "null",
                "timestamp",
                "date",
                "decimal",
                "dictionary",
                "binary",
                "uint64",
                "float16",
                "large_string",
                "list",
                "struct",
            ]
        )
    )

    def values(strategy):
        return draw(st.lists(st.one_of(st.none(), strategy), min_size=n_rows, max_size=n_rows))

    if kind == "int":
        return pa.array(values(st.integers(-(2**63), 2**63 - 1)), pa.int64()), True
    if kind == "float":
        return pa.array(values(st.floats(width=64)), pa.float64()), True
    if kind in ("string", "large_string", "dictionary"):
        array = pa.array(
            values(mostly(short_text, huge_text, one_in=8)), pa.large_string() if kind == "large_string" else pa.string()
        )
        return (array.dictionary_encode() if kind == "dictionary" else array), True
    if kind == "bool":
        return pa.array(values(st.booleans()), pa.bool_()), True
    if kind == "null":
        return pa.nulls(n_rows), True
    if kind == "timestamp":
        return pa.array(values(st.datetimes(min_value=dt.datetime(1, 1, 1))), pa.timestamp("us")), True
    if kind == "date":
        return pa.array(values(st.dates()), pa.date32()), True
    if kind == "decimal":
        places = st.decimals(min_value=-(10**9), max_value=10**9, places=3, allow_nan=False, allow_infinity=False)
        return pa.array(values(places), pa.decimal128(13, 3)), True
    if kind == "binary":
        return pa.array(values(st.binary(max_size=20)), pa.binary()), True
    if kind == "uint64":
        return pa.array(values(st.integers(0, 2**64 - 1)), pa.uint64()), True
    if kind == "float16":
        floats = draw(st.lists(st.floats(width=16), min_size=n_rows, max_size=n_rows))
        return pa.array(np.array(floats, dtype=np.float16)), True
    if kind == "list":
        return pa.array(values(st.lists(st.integers(-5, 5), max_size=3)), pa.list_(pa.int64())), False
    return pa.array(values(st.fixed_dictionaries({"x": st.integers(-5, 5)})), pa.struct([("x", pa.int64())])), False


def _longest_cell(array: pa.Array) -> int:
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return max((len(v) for v in array.to_pylist() if v is not None), default=0)
    if pa.types.is_binary(array.type):
        return max((len(v) for v in array.to_pylist() if v is not None), default=0)
    return 0


@st.composite
def parquet_files(draw) -> GeneratedFile:
    """A Parquet file of mixed Arrow types, intact, cut short, or with bytes flipped."""
    limits = draw(st.sampled_from([TIGHT_LIMITS, DEFAULT_LIMITS]))
    n_rows = draw(st.integers(0, 15))
    n_columns = draw(st.integers(1, 5))
    columns = [_arrow_column(draw, n_rows) for _ in range(n_columns)]
    names = draw_names(draw, n_columns, n_columns)
    arrays = [array for array, _ in columns]
    if draw(st.integers(0, 9)) == 0:
        extra = draw(st.sampled_from([36, 45]))
        arrays += [pa.array(np.zeros(n_rows))] * extra
        names += [f"extra_{i}" for i in range(extra)]
    table = pa.Table.from_arrays(arrays, names=names)
    metadata = draw(
        st.sampled_from(
            [
                None,
                b"{not json",
                json.dumps(
                    {"index_columns": ["nowhere"], "columns": [], "column_indexes": [{"name": None, "pandas_type": "int64"}]}
                ).encode(),
            ]
        )
    )
    if metadata is not None:  # a pandas metadata block the file's writer chose
        table = table.replace_schema_metadata({b"pandas": metadata})
    row_group_size = draw(st.sampled_from([None, 1, 7]))
    if n_rows and draw(st.integers(0, 9)) == 0 and max(map(_longest_cell, arrays)) <= 20:
        table = pa.concat_tables([table] * draw(st.sampled_from([200, 2_100])))  # up to 31,500 rows
        row_group_size = None  # thousands of one-row groups make a 100 MB footer: slow, not hostile
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression=draw(st.sampled_from(["snappy", "zstd", "none", "gzip"])),
        row_group_size=row_group_size,
        use_dictionary=draw(st.booleans()),
    )
    data = sink.getvalue().to_pybytes()
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "flip":
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=4)):
            data = data[:position] + bytes([data[position] ^ draw(st.integers(1, 255))]) + data[position + 1 :]
    well_formed = (
        damage == "none"
        and table.num_rows >= 1
        and table.num_rows <= limits.max_rows
        and len(data) <= limits.max_file_bytes
        and all(ok for _, ok in columns)
        and _names_are_valid(names, limits, csv_file=False)
        and all(_longest_cell(array) <= limits.max_field_chars for array in arrays)
    )
    return GeneratedFile(
        _file_name(draw, [".parquet", ".pq"]),
        data,
        limits,
        tuple(names) if well_formed else None,
        table.num_rows if well_formed else None,
    )


# --- ingestion properties --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory(prefix="poisonguard-fuzz-") as name:
        yield Path(name)


@settings(max_examples=100, **FUZZ_SETTINGS)
@given(document=random_files())
def test_random_bytes_are_refused_or_read_whole(folder, document):
    check_read(document, folder)


@settings(max_examples=120, **FUZZ_SETTINGS)
@given(document=csv_files())
def test_csv_is_read_whole_or_refused_in_one_line(folder, document):
    check_read(document, folder)


@settings(max_examples=100, **FUZZ_SETTINGS)
@given(document=parquet_files())
def test_parquet_is_read_whole_or_refused_in_one_line(folder, document):
    check_read(document, folder)


# --- the scan: validation, detectors, decision, outputs --------------------------------------------

HMDA_COLUMNS = [
    "deny",
    "pirat",
    "hirat",
    "lvrat",
    "chist",
    "mhist",
    "phist",
    "unemp",
    "selfemp",
    "insurance",
    "condomin",
    "afam",
    "single",
    "hschool",
]
# Half the batches keep their columns, so that row-level findings and detectors get their turn:
# most column edits hold the whole batch.
COLUMN_EDITS = ["none"] * 10 + [
    "drop",
    "extra",
    "rename",
    "all-empty",
    "reorder",
    "text-column",
    "mixed-column",
    "duplicate-name",
    "unicode-name",
    "extreme-floats",
]


def clean_text() -> pd.DataFrame:
    return pd.read_csv(CLEAN_BATCH, dtype=str, keep_default_na=False)


@st.composite
def scan_batches(draw) -> GeneratedFile:
    """The clean HMDA batch, resampled (duplicates included), with hostile cells and columns."""
    clean = clean_text()
    rows = draw(st.lists(st.integers(0, len(clean) - 1), min_size=1, max_size=60, unique=True))
    if draw(st.integers(0, 3)) == 0:  # a flood: some rows copied many times
        rows += draw(st.lists(st.sampled_from(rows), min_size=1, max_size=3)) * draw(st.sampled_from([5, 30]))
    frame = clean.iloc[rows].reset_index(drop=True)
    hostile = mostly(
        st.one_of(st.sampled_from(EXTREME_NUMBERS + TRICKY_TEXT), st.text(max_size=8)),
        st.sampled_from(["x" * 3001, "1" * 400]),
        one_in=12,
    )  # 3,001: over the tight field limit
    for row, column, value in draw(
        st.lists(st.tuples(st.integers(0, len(frame) - 1), st.sampled_from(HMDA_COLUMNS), hostile), max_size=10)
    ):
        frame.loc[row, column] = value
    edit = draw(st.sampled_from(COLUMN_EDITS))
    column = draw(st.sampled_from(HMDA_COLUMNS))
    if edit == "drop":
        frame = frame.drop(columns=[column])
    elif edit == "extra":
        frame.insert(draw(st.integers(0, len(frame.columns))), "promo", [str(i % 5) for i in range(len(frame))])
    elif edit == "rename":
        frame = frame.rename(columns={column: column.upper()})
    elif edit == "all-empty":
        frame[column] = ""
    elif edit == "reorder":
        frame = frame[list(reversed(frame.columns))]
    elif edit == "text-column":
        frame[column] = "high"
    elif edit == "mixed-column":
        frame[column] = [draw(st.sampled_from(["1", "2.5", "x", "", "true", "inf"])) for _ in range(len(frame))]
    elif edit == "duplicate-name":
        frame = frame.rename(columns={"hschool": column if column != "hschool" else "deny"})
    elif edit == "unicode-name":
        frame = frame.rename(columns={column: f"{column}\u00e9\u540d"})
    elif edit == "extreme-floats":
        frame[column] = [
            draw(st.sampled_from(["1e308", "-1e308", "5e-324", "1e309", "0", "-0.0"])) for _ in range(len(frame))
        ]
    form = draw(st.sampled_from(["csv", "csv", "csv-bom-crlf", "parquet"]))
    if form == "parquet":
        typed = frame.copy()
        for name in typed.columns.unique():
            if isinstance(typed[name], pd.Series):
                parsed = pd.to_numeric(typed[name], errors="coerce")
                if parsed.notna().all():
                    typed[name] = parsed
        sink = io.BytesIO()
        try:
            typed.to_parquet(sink, index=False)
        except ValueError:  # pandas refuses duplicate names; write the text through Arrow
            pq.write_table(
                pa.Table.from_arrays([pa.array(frame.iloc[:, i]) for i in range(frame.shape[1])], names=list(frame.columns)),
                sink,
            )
        data, suffix = sink.getvalue(), ".parquet"
    else:
        text = frame.to_csv(index=False, lineterminator="\r\n" if form == "csv-bom-crlf" else "\n")
        data, suffix = text.encode("utf-8-sig" if form == "csv-bom-crlf" else "utf-8"), ".csv"
    return GeneratedFile(draw(FILE_STEMS) + suffix, data, TIGHT_LIMITS, rows=len(frame))


@dataclass
class FittedScan:
    """Trusted data and detectors fitted once, to score every generated batch against."""

    request: scan.ScanRequest
    settings: Settings
    trusted: scan.TrustedData
    detectors: dict
    checks: object
    holdout_suspicion: np.ndarray


# Every default detector, with its cheapest model: the properties are about what happens to rows
# on their way through, not detection power, and the default models take a minute to fit.
LIGHT_DETECTORS = {
    "outliers": {"method": "hbos", "n_folds": 2},
    "label_consistency": {"model": "logistic", "n_folds": 2},
    "trigger": {},
    "duplicates": {},
}


def fit_small_scan(folder: Path) -> FittedScan:
    """The scan's trusted side on a 240-row slice of the HMDA reference, with LIGHT_DETECTORS."""
    reference, holdout = folder / "reference.parquet", folder / "holdout.parquet"
    pd.read_parquet(SAMPLES / "reference.parquet").sample(240, random_state=0).to_parquet(reference, index=False)
    pd.read_parquet(SAMPLES / "holdout.parquet").sample(80, random_state=0).to_parquet(holdout, index=False)
    request = scan.ScanRequest(
        batch=CLEAN_BATCH,
        reference=reference,
        label="deny",
        out=folder / "out",
        suite=SUITE,
        holdout=holdout,
        dataset="fuzz",
    )
    settings_ = dataclasses.replace(Settings.from_environment(folder / "workspace", environ={}), detectors=LIGHT_DETECTORS)
    trusted = scan.load_trusted(request, settings_)
    detectors = scan.fit_detectors(trusted, settings_)
    return FittedScan(
        request,
        settings_,
        trusted,
        detectors,
        scan.fit_checks(trusted),
        scan.trusted_suspicion(detectors, trusted, settings_),
    )


def check_scan(document: GeneratedFile, fitted: FittedScan, folder: Path, *, group_roni: bool = False) -> str:
    """Ingest, validate, score, decide and write one batch as the scan flow does (without Prefect
    and MLflow); return its outcome class. Any exception but a PoisonguardError fails the case.
    ``group_roni`` adds the exact group RONI step, which retrains a model per group (seconds)."""
    path = folder / document.name
    path.write_bytes(document.data)
    started = time.perf_counter()
    try:
        outcome = _scan_outcome(document, fitted, path, folder / "outputs", group_roni)
    except PoisonguardError as error:
        assert_one_clear_line(str(error), path)
        outcome = refusal_class(str(error))
    finally:
        path.unlink(missing_ok=True)
    assert time.perf_counter() - started < 3 * SECONDS_PER_CASE, "a runaway scan"
    return outcome


def _scan_outcome(document: GeneratedFile, fitted: FittedScan, path: Path, out: Path, group_roni: bool) -> str:
    batch = read_table(path, "batch", limits=document.limits)
    request = dataclasses.replace(fitted.request, batch=path, out=out)
    trusted, settings_ = fitted.trusted, fitted.settings
    judged = evaluate(batch, trusted, settings_, detectors=fitted.detectors, checks=fitted.checks)
    conformed, outcome, decisions = judged.conformed, judged.outcome, judged.decisions
    impacts = scan.confirm_impact(trusted, conformed, outcome, decisions, settings_) if group_roni else []
    outputs = scan.build_outputs(
        request,
        settings_,
        batch,
        trusted,
        conformed,
        outcome,
        decisions,
        impacts,
        judged.checks,
        fitted.holdout_suspicion,
        "fuzz-run",
        scan.now(),
        judged.verdict,
    )
    write_outputs(outputs, out)
    assert_every_row_accounted_for(out, document.rows)
    return "scanned: whole batch held" if outcome.batch_findings else "scanned"


def assert_every_row_accounted_for(out: Path, n_rows: int) -> None:
    """Read back what the scan wrote: each input row in exactly one of accepted/quarantined."""
    accepted = pd.read_parquet(out / "accepted.parquet")
    quarantined = pd.read_parquet(out / "quarantined.parquet")
    scores = pd.read_parquet(out / "scores.parquet")
    summary = json.loads((out / "summary.json").read_text())
    both = sorted(accepted[ROW_NUMBER].tolist() + quarantined[ROW_NUMBER].tolist())
    assert both == list(range(n_rows)), "a row was lost or duplicated"
    assert sorted(scores[ROW_NUMBER].tolist()) == list(range(n_rows))
    assert set(scores.loc[scores["quarantined"], ROW_NUMBER]) == set(quarantined[ROW_NUMBER])
    assert all(len(reasons) >= 1 for reasons in quarantined["reasons"]), "a row was held without a reason"
    assert summary["counts"] == {"rows": n_rows, "accepted": len(accepted), "quarantined": len(quarantined)}


@pytest.fixture(scope="module")
def fitted(folder):
    return fit_small_scan(folder)


@settings(max_examples=8, **FUZZ_SETTINGS)
@given(document=scan_batches())
def test_scan_holds_or_accepts_every_row_exactly_once(fitted, folder, document):
    check_scan(document, fitted, folder)


def test_a_huge_finite_number_is_quarantined_not_a_crash(fitted, folder):
    """Was a ValueError traceback from every PyOD model: hirat=1e308 scaled past float64 to inf.
    Found by benchmarks/fuzz_ingest.py (13 of 300 scan cases)."""
    clean = clean_text()
    clean.loc[0, "hirat"] = "1e308"
    document = GeneratedFile("huge_number.csv", clean.to_csv(index=False).encode(), TIGHT_LIMITS, rows=len(clean))
    assert check_scan(document, fitted, folder) == "scanned"
    quarantined = pd.read_parquet(folder / "outputs" / "quarantined.parquet")
    reasons = quarantined.set_index(ROW_NUMBER)["reasons"][0]
    assert any("hirat=1e+308 is outside the trusted range" in reason for reason in reasons), reasons


# --- resource limits -------------------------------------------------------------------------------


def write_csv(path: Path, columns: int = 3, rows: int = 4, cell: str = "1") -> Path:
    header = ",".join(f"c{i}" for i in range(columns))
    path.write_text(header + "\n" + "".join(",".join([cell] * columns) + "\n" for _ in range(rows)))
    return path


def assert_limit_error(error: pytest.ExceptionInfo, path: Path, *needles: str) -> None:
    message = str(error.value)
    assert_one_clear_line(message, path)
    for needle in needles:
        assert needle in message, (needle, message)


def test_file_size_limit_is_checked_before_reading(tmp_path):
    path = tmp_path / "huge.csv"
    with open(path, "wb") as handle:  # sparse: 3 GiB on paper, nothing on disk
        handle.write(b"a,b\n1,2\n")
        handle.truncate(3 << 30)
    started = time.perf_counter()
    with pytest.raises(InputError) as error:
        read_table(path, limits=DEFAULT_LIMITS)
    assert time.perf_counter() - started < 1.0  # refused from its size, not after reading 3 GiB
    assert_limit_error(error, path, "3,221,225,472 bytes", "limit of 2,147,483,648 bytes", "POISONGUARD_MAX_FILE_BYTES")
    with pytest.raises(InputError, match="POISONGUARD_MAX_FILE_BYTES"):
        probe_table(path, limits=DEFAULT_LIMITS)


def test_file_size_limit_from_the_environment(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "batch.csv", rows=200)
    monkeypatch.setenv("POISONGUARD_MAX_FILE_BYTES", "500")
    with pytest.raises(InputError) as error:
        read_table(path)
    assert_limit_error(error, path, f"has {path.stat().st_size:,} bytes", "limit of 500 bytes")
    monkeypatch.setenv("POISONGUARD_MAX_FILE_BYTES", str(path.stat().st_size))
    assert read_table(path).n_rows == 200


def in_format(csv: Path, suffix: str) -> Path:
    """The CSV itself, or the same table written beside it as Parquet."""
    if suffix == ".csv":
        return csv
    pd.read_csv(csv).to_parquet(csv.with_suffix(suffix), index=False)
    return csv.with_suffix(suffix)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_column_limit(tmp_path, monkeypatch, suffix):
    path = in_format(write_csv(tmp_path / "wide.csv", columns=1001), suffix)
    with pytest.raises(InputError) as error:
        read_table(path)
    assert_limit_error(error, path, "has 1,001 columns, over the limit of 1,000 columns", "POISONGUARD_MAX_COLUMNS")
    with pytest.raises(InputError, match="POISONGUARD_MAX_COLUMNS"):
        probe_table(path)
    monkeypatch.setenv("POISONGUARD_MAX_COLUMNS", "1001")
    assert len(read_table(path).columns) == 1001


def test_a_header_of_commas_is_refused_before_parsing(tmp_path):
    """200,000 columns in 1.7 MB: parsed, they take 1.7 GB and 9 s; counted, a millisecond.
    (Before the limit, a 0.8 MB file of 100,000 columns kept read_table busy for four minutes.)"""
    path = tmp_path / "commas.csv"
    path.write_bytes(b",".join(b"c%d" % i for i in range(200_000)) + b"\n" + b"," * 199_999 + b"\n")
    started = time.perf_counter()
    for read in (read_table, probe_table):
        with pytest.raises(InputError) as error:
            read(path)
        assert_limit_error(
            error, path, "has more than 10,000 columns, over the limit of 1,000 columns", "POISONGUARD_MAX_COLUMNS"
        )
    assert time.perf_counter() - started < 2.0


def test_quoted_commas_in_the_header_are_not_columns(tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_text('"a, with, many, commas",b\n1,2\n')
    assert read_table(path, limits=InputLimits(max_columns=2)).columns == ["a, with, many, commas", "b"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_field_length_limit_names_the_cell(tmp_path, monkeypatch, suffix):
    frame = pd.DataFrame({"id": ["1", "2", "3"], "notes": ["short", "x" * 100_001, "short"]})
    path = tmp_path / f"notes{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    with pytest.raises(InputError) as error:
        read_table(path)
    assert_limit_error(
        error,
        path,
        "a cell of 100,001 characters (column 'notes', row 1)",
        "limit of 100,000 characters",
        "POISONGUARD_MAX_FIELD_CHARS",
    )
    monkeypatch.setenv("POISONGUARD_MAX_FIELD_CHARS", "100001")
    assert read_table(path).n_rows == 3


def test_field_length_counts_characters_not_bytes(tmp_path):
    path = tmp_path / "accents.csv"
    path.write_text("a\n" + "é" * 10 + "\n", encoding="utf-8")  # 20 bytes, 10 characters
    assert read_table(path, limits=InputLimits(max_field_chars=10)).n_rows == 1


def test_column_name_length_limit(tmp_path):
    path = tmp_path / "long_name.csv"
    path.write_text("a," + "n" * 501 + "\n1,2\n")
    with pytest.raises(InputError) as error:
        read_table(path, limits=InputLimits(max_field_chars=500))
    assert_limit_error(error, path, "a column name of 501 characters (position 1)", "POISONGUARD_MAX_FIELD_CHARS")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_row_limit(tmp_path, monkeypatch, suffix):
    path = in_format(write_csv(tmp_path / "rows.csv", rows=1000), suffix)
    monkeypatch.setenv("POISONGUARD_MAX_ROWS", "999")
    with pytest.raises(InputError) as error:
        read_table(path)
    assert_limit_error(error, path, "has 1,000 rows", "limit of 999 rows", "POISONGUARD_MAX_ROWS")


def test_a_parquet_file_of_many_rows_is_refused_from_its_footer(tmp_path):
    """Five million equal rows compress to a few kilobytes; the footer says how many there are."""
    path = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"a": pa.repeat(pa.scalar(1.0), 5_000_000)}), path, compression="zstd")
    assert path.stat().st_size < 1 << 20
    started = time.perf_counter()
    with pytest.raises(InputError, match="has 5,000,000 rows, over the limit of 1,000 rows"):
        read_table(path, limits=InputLimits(max_rows=1000))
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    "raw, needle",
    [("lots", "must be a whole number"), ("0", "at least 1"), ("-5", "at least 1"), ("1.5", "must be a whole number")],
)
def test_limit_variables_must_be_whole_positive_numbers(raw, needle):
    with pytest.raises(PoisonguardError, match=needle) as error:
        InputLimits.from_environment({"POISONGUARD_MAX_COLUMNS": raw})
    assert "POISONGUARD_MAX_COLUMNS" in str(error.value)


def test_limits_defaults_and_environment():
    assert InputLimits.from_environment({}) == InputLimits(2 << 30, 1000, 100_000, 10_000_000)
    limits = InputLimits.from_environment(
        {
            "POISONGUARD_MAX_FILE_BYTES": "1024",
            "POISONGUARD_MAX_COLUMNS": "5",
            "POISONGUARD_MAX_FIELD_CHARS": " 7 ",
            "POISONGUARD_MAX_ROWS": "",
        }
    )
    assert (limits.max_file_bytes, limits.max_columns, limits.max_field_chars, limits.max_rows) == (1024, 5, 7, 10_000_000)
    with pytest.raises(PoisonguardError, match="max_rows"):
        InputLimits(max_rows=0)


def test_scan_refuses_a_batch_over_a_limit_in_one_line(run_cli, tmp_path, monkeypatch):
    """Through the CLI: the limit is enforced at preflight, before Prefect or MLflow start."""
    monkeypatch.setenv("POISONGUARD_MAX_COLUMNS", "10")
    result = run_cli(
        "scan",
        CLEAN_BATCH,
        "--reference",
        SAMPLES / "reference.parquet",
        "--label",
        "deny",
        "--workspace",
        tmp_path / "ws",
        "--out",
        tmp_path / "out",
    )
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("poisonguard: error: The batch file"), result.stderr
    assert "14 columns, over the limit of 10 columns; set POISONGUARD_MAX_COLUMNS higher" in lines[0]
    assert not (tmp_path / "out").exists()


# --- regressions: what the properties above found ----------------------------------------------


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize(
    "metadata",
    [b"{not json", json.dumps({"index_columns": ["nowhere"], "columns": [], "column_indexes": []}).encode()],
    ids=["not-json", "index-column-that-does-not-exist"],
)
def test_pandas_metadata_of_the_file_is_ignored(tmp_path, metadata):
    """Were a KeyError traceback (pandas trusted the block to name real index columns) and a
    refusal of a readable table ("columns pandas cannot hold: Expecting property name ...")."""
    path = tmp_path / "meta.parquet"
    path.write_bytes(_parquet_bytes(pa.table({"a": [1, 2]}).replace_schema_metadata({b"pandas": metadata})))
    assert read_table(path).frame["a"].tolist() == [1, 2]


def test_an_index_stored_by_pandas_stays_a_column(tmp_path):
    """Was silently dropped: a named index in a Parquet file is data the scan never saw."""
    path = tmp_path / "indexed.parquet"
    pd.DataFrame({"a": [1, 2]}, index=pd.Index([7, 9], name="loan_id")).to_parquet(path)
    assert read_table(path).columns == ["a", "loan_id"]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_pandas_internal_column_name_is_refused_not_dropped(tmp_path, suffix):
    """Was silently dropped from a Parquet file (its values, row labels or data, never scanned)."""
    path = tmp_path / f"unnamed{suffix}"
    frame = pd.DataFrame({"a": [1, 2]}, index=[7, 9])
    if suffix == ".csv":
        frame.rename_axis("__index_level_0__").to_csv(path)
    else:
        frame.to_parquet(path)  # pandas stores the unnamed index as a column '__index_level_0__'
    with pytest.raises(
        InputError,
        match="has column '__index_level_0__', the name pandas gives an unnamed row index: write the file with to_parquet",
    ):
        read_table(path)


def test_column_names_are_strings_whatever_the_metadata_says(tmp_path):
    """Were ints: pandas restored the writer's integer column labels."""
    path = tmp_path / "int_names.parquet"
    pd.DataFrame({0: [1.0], 1: ["x"]}).to_parquet(path)
    assert read_table(path).columns == ["0", "1"]


@pytest.mark.parametrize(
    "array",
    [
        pa.array([[1.0], [2.0]]),
        pa.array([{"x": 1}, {"x": 2}]),
        pa.array([[("k", 1)], [("k", 2)]], pa.map_(pa.string(), pa.int64())),
    ],
    ids=["list", "struct", "map"],
)
def test_nested_columns_are_refused(tmp_path, array):
    """Were a TypeError traceback (unhashable type) from validation of a numeric column."""
    path = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"pirat": array, "deny": ["no", "yes"]}), path)
    with pytest.raises(InputError, match=r"nested values .* in column 'pirat'; poisonguard reads flat tables"):
        read_table(path)


def test_duplicated_names_in_parquet_are_named(tmp_path):
    """Was 'could not be read as Parquet: Multiple matches for FieldRef.Name(a)'."""
    path = tmp_path / "dup.parquet"
    path.write_bytes(_parquet_bytes(pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])))
    with pytest.raises(InputError, match="duplicated column names: 'a'"):
        read_table(path)


def test_invalid_utf8_after_the_first_64_kib_is_refused(tmp_path):
    """Was read as a binary column, its cells scanned as the text "b'caf\\xe9'"."""
    path = tmp_path / "late_latin1.csv"
    path.write_bytes(b"id,name\n" + b"1,plain\n" * 10_000 + b"2,caf\xe9\n")
    with pytest.raises(InputError, match="is not UTF-8 text \\(in column 'name'\\)"):
        read_table(path)


def test_a_row_longer_than_pyarrow_block_is_read(tmp_path):
    """Was 'straddling object straddles two block boundaries (try to increase block size?)'."""
    path = tmp_path / "long_row.csv"
    path.write_text("id,notes\n1,short\n2," + "x" * 3_000_000 + "\n")
    table = read_table(path, limits=InputLimits(max_field_chars=3_000_000))
    assert table.n_rows == 2 and len(table.frame["notes"][1]) == 3_000_000


def test_a_header_longer_than_pyarrow_block_is_read(tmp_path):
    """Was 'Empty CSV file or block: cannot infer number of columns' from the header alone."""
    path = tmp_path / "long_header.csv"
    path.write_text("n" * 1_100_000 + ",b\n1,2\n")
    assert probe_table(path, limits=InputLimits(max_field_chars=2_000_000))[1] == "b"


@pytest.mark.parametrize(
    "name",
    ["a\nb", "\u202eyned", "zero\u200bwidth", "nul\x00"],
    ids=["newline", "right-to-left-override", "zero-width-space", "nul"],
)
def test_column_names_with_hidden_characters_are_refused(tmp_path, name):
    path = tmp_path / "hidden.parquet"
    pq.write_table(pa.table({name: [1], "b": [2]}), path)
    with pytest.raises(InputError, match="invisible or control character at position 0") as error:
        read_table(path)
    assert_one_clear_line(str(error.value), path)


def test_utf16_is_named(tmp_path):
    path = tmp_path / "utf16.csv"
    path.write_bytes("deny,pirat\nno,0.2\n".encode("utf-16"))
    with pytest.raises(InputError, match="is UTF-16 or UTF-32 text: re-save it as UTF-8 CSV"):
        read_table(path)


@pytest.mark.parametrize(
    "name, needle",
    [("bad\x00name.csv", "does not exist"), ("x" * 300 + ".csv", "cannot be opened")],
    ids=["nul-byte", "name-too-long"],
)
def test_unopenable_paths_are_refused_in_one_line(tmp_path, name, needle):
    """The long name was an OSError traceback (File name too long)."""
    for read in (read_table, probe_table):
        with pytest.raises(InputError, match=needle) as error:
            read(tmp_path / name)
        assert_one_clear_line(str(error.value), tmp_path / name)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_refused_in_one_line(tmp_path):
    """Was a PermissionError traceback from hashing the file."""
    path = write_csv(tmp_path / "locked.csv")
    path.chmod(0)
    with pytest.raises(InputError, match="cannot be read"):
        read_table(path)


def test_file_names_with_newlines_stay_one_line(tmp_path):
    path = tmp_path / "batch\nwith a newline.csv"
    path.write_bytes(b"\x00\x01binary")
    with pytest.raises(InputError) as error:
        read_table(path)
    assert_one_clear_line(str(error.value), path)
    assert "batch\\nwith a newline.csv" in str(error.value)


def test_identity_is_the_hash_of_the_bytes_parsed(tmp_path):
    path = write_csv(tmp_path / "batch.csv")
    assert read_table(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
