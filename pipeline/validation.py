"""Great Expectations suites: load, infer from trusted data, run, and turn results into findings.

Suites are GX 1.x JSON (``{"name", "expectations": [{"type", "kwargs", "meta"}], "meta"}``),
reviewable in a pull request. poisonguard's own settings live under ``meta.poisonguard``
(label column, protected columns that must not be model features).

Two levels of failure:
- batch level (missing/unexpected column, wrong type, a rate expectation with ``mostly``):
  the whole batch is held with that reason;
- row level (range, domain, nulls, cross-column integrity): exactly the failing rows are held.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.errors import SuiteError
from pipeline.findings import BatchFinding, ReasonCode, empty_findings, findings_frame
from pipeline.io import ROW_NUMBER, LoadedTable
from pipeline.memory import release_freed_memory
from pipeline.roles import CARRIED, Role, parse_roles

NUMERIC_TYPES = [
    "int",
    "float",
    "float16",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float32",
    "float64",
    "Int64",
    "Float64",
]
# Categorical columns are handed to GX as object columns of Python str (see ``conform``), which
# GX checks element by element; pandas 3's StringDtype fails every type_list (ECOSYSTEM.md §1.5).
CATEGORICAL_TYPES = ["str"]
# Above this many distinct values a text column is an identifier, not a domain worth listing.
MAX_DOMAIN_SIZE = 50
BATCH_LEVEL_TYPES = frozenset(
    {
        "expect_table_columns_to_match_set",
        "expect_table_columns_to_match_ordered_list",
        "expect_table_column_count_to_equal",
        "expect_table_row_count_to_be_between",
        "expect_column_to_exist",
        "expect_column_values_to_be_in_type_list",
        "expect_column_values_to_be_of_type",
    }
)


class ColumnKind(str, Enum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


@dataclass(frozen=True)
class Suite:
    """A loaded expectation suite with what poisonguard needs to know about it."""

    name: str
    document: dict[str, Any]
    sha256: str
    source: str  # file path, or "inferred from <reference>"

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.document.get("meta", {}).get("poisonguard", {}))

    @property
    def label(self) -> str | None:
        return self.settings.get("label")

    @property
    def protected_columns(self) -> tuple[str, ...]:
        return tuple(self.settings.get("protected", ()))

    @property
    def roles(self) -> dict[str, Role]:
        """``meta.poisonguard.roles`` (``pipeline.roles``); empty for a suite written before roles."""
        return parse_roles(self.settings.get("roles", {}), f"The suite {self.source}")

    @property
    def segment_columns(self) -> tuple[str, ...]:
        """Columns whose label rates are compared with the reference (disparate impact); the
        protected columns unless the suite names others under ``segments``."""
        return tuple(self.settings.get("segments", self.protected_columns))

    @property
    def expected_columns(self) -> list[str] | None:
        for exp in self.document["expectations"]:
            if exp["type"] in ("expect_table_columns_to_match_set", "expect_table_columns_to_match_ordered_list"):
                return list(exp["kwargs"].get("column_set") or exp["kwargs"].get("column_list"))
        return None


@dataclass(frozen=True)
class ValidationOutcome:
    row_findings: pd.DataFrame
    batch_findings: list[BatchFinding] = field(default_factory=list)
    checks: dict[str, int] = field(default_factory=dict)  # check name -> rows it held
    # batch-level alarms validation raised instead of holding rows (alarms.CheckResult), such as
    # unseen category levels under the "alarm" policy
    alarms: tuple[Any, ...] = ()


def suite_from_document(document: dict[str, Any], source: str) -> Suite:
    _check_document(document, source)
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return Suite(
        name=str(document["name"]),
        document=document,
        sha256=hashlib.sha256(canonical.encode()).hexdigest(),
        source=source,
    )


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    try:
        if not path.is_file():
            raise SuiteError(f"The suite file {path} does not exist.")
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:  # a name longer than the file system allows, no permission to read
        raise SuiteError(f"The suite file {path} cannot be read: {exc.strerror or exc}.") from None
    except UnicodeDecodeError:
        raise SuiteError(f"The suite file {path} is not UTF-8 text.") from None
    except json.JSONDecodeError as exc:
        raise SuiteError(
            f"The suite file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
        ) from None
    return suite_from_document(document, str(path))


def _check_document(document: Any, source: str) -> None:
    if not isinstance(document, dict):
        raise SuiteError(f"The suite {source} must be a JSON object with 'name' and 'expectations'.")
    if not isinstance(document.get("name"), str) or not document["name"]:
        raise SuiteError(f"The suite {source} has no 'name' (a non-empty string).")
    expectations = document.get("expectations")
    if not isinstance(expectations, list):
        raise SuiteError(f"The suite {source} has no 'expectations' list.")
    _check_poisonguard_meta(document, source)
    for i, exp in enumerate(expectations):
        if not isinstance(exp, dict) or not isinstance(exp.get("type"), str):
            raise SuiteError(f"The suite {source}: expectations[{i}] must be an object with a 'type'.")
        if not isinstance(exp.get("kwargs", {}), dict):
            raise SuiteError(f"The suite {source}: expectations[{i}].kwargs must be an object.")
    _to_gx_suite(document, source)  # GX's own check of types and kwargs
    for i, exp in enumerate(expectations):
        _check_bounds(exp, f"The suite {source}: expectations[{i}] ({exp['type']})")


def _check_bounds(expectation: dict[str, Any], where: str) -> None:
    """GX accepts min_value > max_value, and then fails every row: a typo would hold a whole
    feed. Its bounds may be numbers or dates, so they are compared only when both are numbers."""
    kwargs = expectation.get("kwargs", {})
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if numbers and low > high:
        raise SuiteError(
            f"{where}: kwargs.min_value ({low}) is greater than kwargs.max_value ({high}); "
            "no value can pass. Swap them or fix the typo."
        )


def _check_poisonguard_meta(document: dict[str, Any], source: str) -> None:
    """meta.poisonguard holds the label and the column lists; a string where a list belongs would
    be read letter by letter ("afam" → a, f, a, m) and the protected column used as a feature."""
    meta = document.get("meta", {})
    if not isinstance(meta, dict):
        raise SuiteError(f"The suite {source}: meta must be an object.")
    settings = meta.get("poisonguard", {})
    if not isinstance(settings, dict):
        raise SuiteError(f"The suite {source}: meta.poisonguard must be an object.")
    if "label" in settings and not isinstance(settings["label"], str):
        raise SuiteError(f"The suite {source}: meta.poisonguard.label must be a column name (a string).")
    for key in ("protected", "segments"):
        value = settings.get(key, [])
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise SuiteError(f"The suite {source}: meta.poisonguard.{key} must be a list of column names.")
    parse_roles(settings.get("roles", {}), f"The suite {source}")


def _first_problem(document: dict[str, Any], exc: Exception) -> str:
    """'expectations[3].kwargs.column: Field required' where GX's (pydantic's) error says which
    field; its first line alone names only the expectation class."""
    import great_expectations as gx
    from pydantic import ValidationError

    for index, expectation in enumerate(document["expectations"]):
        try:
            gx.ExpectationSuite(
                name="check",
                expectations=[
                    {
                        "type": expectation["type"],
                        "kwargs": expectation.get("kwargs", {}),
                        "meta": expectation.get("meta") or {},
                    }
                ],
            )
        except (ValidationError, TypeError, ValueError, KeyError) as error:
            errors = getattr(error, "errors", None)
            if callable(errors):  # pydantic v1 (GX's) or v2
                problem = errors()[0]
                field = ".".join(str(part) for part in problem.get("loc", ()))
                where = f"expectations[{index}] ({expectation['type']})" + (f".kwargs.{field}" if field else "")
                return f"{where}: {problem.get('msg', 'invalid')}"
            return f"expectations[{index}] ({expectation['type']}): {str(error).strip().splitlines()[0]}"
    first = str(exc).strip().splitlines()
    return first[0] if first else type(exc).__name__


def _to_gx_suite(document: dict[str, Any], source: str):
    import great_expectations as gx
    from pydantic import ValidationError

    gx_logger = logging.getLogger("great_expectations.core.expectation_suite")
    was_disabled, gx_logger.disabled = gx_logger.disabled, True  # it logs a traceback per unknown type
    try:
        suite = gx.ExpectationSuite(
            name=document["name"],
            expectations=[
                {"type": e["type"], "kwargs": e.get("kwargs", {}), "meta": e.get("meta") or {}}
                for e in document["expectations"]
            ],
        )
    except (ValidationError, TypeError, ValueError, KeyError) as exc:
        raise SuiteError(f"The suite {source} has an invalid expectation: {_first_problem(document, exc)}") from None
    finally:
        gx_logger.disabled = was_disabled
    # GX drops expectations of unknown type with a logged traceback instead of raising.
    if len(suite.expectations) != len(document["expectations"]):
        known = {e.expectation_type for e in suite.expectations}
        unknown = sorted({e["type"] for e in document["expectations"]} - known)
        raise SuiteError(f"The suite {source} uses unknown expectation type(s): {', '.join(unknown)}.")
    return suite


# --- inference -----------------------------------------------------------------------------


def column_kinds(frame: pd.DataFrame) -> dict[str, ColumnKind]:
    """Numeric dtypes are numeric; everything else (text, bool) is categorical."""
    return {
        col: ColumnKind.NUMERIC
        if pd.api.types.is_numeric_dtype(frame[col]) and not pd.api.types.is_bool_dtype(frame[col])
        else ColumnKind.CATEGORICAL
        for col in frame.columns
        if col != ROW_NUMBER
    }


def infer_suite(
    reference: pd.DataFrame,
    label: str,
    name: str,
    *,
    range_margin: float = 0.1,
    protected: tuple[str, ...] = (),
    source: str = "reference",
    roles: dict[str, Role] | None = None,
    kinds: dict[str, ColumnKind] | None = None,
) -> Suite:
    """Infer a suite from trusted data.

    ``kinds`` overrides the column kinds read from dtypes (a code column of integers written
    with leading zeros is categorical). ``roles`` (``pipeline.roles``) are written into the suite;
    a column whose role carries it through (id, time, text, ignored) is only expected to exist: no
    type, null, range or domain rule.
    Ranges get ``range_margin`` × (max − min) of slack on each side (never crossing zero for a
    non-negative column), so fresh clean rows rarely fall just outside the reference's extremes.
    """
    if label not in reference.columns:
        raise SuiteError(f"The label column '{label}' is not in the reference data ({source}).")
    kinds = {**column_kinds(reference), **(kinds or {})}
    columns = list(kinds)
    roles = dict(roles or {})
    protected = tuple(dict.fromkeys([*protected, *(c for c, r in roles.items() if r is Role.PROTECTED)]))
    expectations: list[dict[str, Any]] = [
        _exp("expect_table_columns_to_match_set", column_set=columns, exact_match=True),
    ]
    for col, kind in kinds.items():
        if roles.get(col) in CARRIED:
            continue
        values = reference[col]
        type_list = NUMERIC_TYPES if kind is ColumnKind.NUMERIC else CATEGORICAL_TYPES
        expectations.append(_exp("expect_column_values_to_be_in_type_list", column=col, type_list=type_list))
        null_rate = float(values.isna().mean())
        if null_rate == 0.0:
            expectations.append(_exp("expect_column_values_to_not_be_null", column=col))
        else:
            # Nulls are legitimate here; only a much higher rate than the reference's is an alarm.
            mostly = max(0.0, round(1.0 - 2.0 * null_rate - 0.01, 4))
            expectations.append(_exp("expect_column_values_to_not_be_null", column=col, mostly=mostly))
        present = values.dropna()
        if kind is ColumnKind.NUMERIC and len(present):
            finite = present[np.isfinite(present.astype("float64"))]
            lo, hi = float(finite.min()), float(finite.max())
            slack = range_margin * (hi - lo) if hi > lo else max(abs(hi) * range_margin, range_margin)
            low = lo - slack
            if lo >= 0:
                low = max(0.0, low)
            # Full precision: rounded to 6 significant digits, ids 9876543210..9876543999
            # collapsed to one value and every row fell outside it.
            expectations.append(
                _exp("expect_column_values_to_be_between", column=col, min_value=float(low), max_value=float(hi + slack))
            )
        elif kind is ColumnKind.CATEGORICAL or col == label:
            domain = sorted({str(v) for v in present})
            if col == label or len(domain) <= MAX_DOMAIN_SIZE:
                expectations.append(_exp("expect_column_values_to_be_in_set", column=col, value_set=domain))
    document: dict[str, Any] = {
        "name": name,
        "expectations": expectations,
        "meta": {
            "poisonguard": {
                "label": label,
                "protected": list(protected),
                "inferred_from": source,
                "range_margin": range_margin,
            }
        },
    }
    if roles:
        document["meta"]["poisonguard"]["roles"] = {c: roles[c].value for c in columns if c in roles}
    return suite_from_document(document, f"inferred from {source}")


def with_roles(suite: Suite, roles: dict[str, Role]) -> Suite:
    """``suite`` with ``roles`` in force: the carried columns (id, time, text, ignored) lose any
    rule about their values (a range over ids holds every new id) and join the expected columns;
    the roles are recorded in ``meta.poisonguard.roles``. Unchanged when nothing is carried and
    the suite names no roles."""
    if not roles or (roles == suite.roles and not any(_names_carried(e, roles) for e in suite.document["expectations"])):
        return suite
    carried = [c for c, r in roles.items() if r in CARRIED]
    expectations = []
    for expectation in suite.document["expectations"]:
        if _names_carried(expectation, roles):
            continue
        kwargs = dict(expectation.get("kwargs", {}))
        for key in ("column_set", "column_list"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = [*kwargs[key], *(c for c in carried if c not in kwargs[key])]
        expectations.append({**expectation, "kwargs": kwargs})
    meta = dict(suite.document.get("meta", {}))
    settings = dict(meta.get("poisonguard", {}))
    settings["roles"] = {**settings.get("roles", {}), **{c: r.value for c, r in roles.items()}}
    settings["protected"] = list(
        dict.fromkeys([*settings.get("protected", []), *(c for c, r in roles.items() if r is Role.PROTECTED)])
    )
    meta["poisonguard"] = settings
    return suite_from_document({**suite.document, "expectations": expectations, "meta": meta}, suite.source)


def _names_carried(expectation: dict[str, Any], roles: dict[str, Role]) -> bool:
    if expectation["type"].startswith("expect_table_"):
        return False
    return any(roles.get(c) in CARRIED for c in _named_columns(expectation))


def _exp(type_: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": type_, "kwargs": kwargs, "meta": {}}


# --- conforming a batch to the reference's column kinds --------------------------------------


def conform(
    frame: pd.DataFrame, kinds: dict[str, ColumnKind], *, judge_columns: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Coerce batch columns to the reference's kinds, recording every cell that did not fit.

    A numeric column whose text does not parse keeps the rest of its values; the cells that
    failed become NaN and a ``not_a_number`` finding. When most of a column fails, it is left
    as text so that the suite's type expectation reports the wrong type for the whole batch
    (``judge_columns=False`` leaves that judgement out, for a slice of a batch already judged
    whole). Infinite values become NaN with a ``non_finite`` finding: no detector can score them.
    """
    # Copy-on-write (pandas 3): a shallow copy shares the columns that need no change with
    # ``frame`` and still leaves ``frame`` as it was; a deep copy of a 10^6-row batch is ~0.5 GB.
    out = frame.copy(deep=False)
    records: list[dict[str, Any]] = []
    for col, kind in kinds.items():
        if col not in out.columns:
            continue
        raw = out[col]
        if kind is ColumnKind.NUMERIC:
            coerced, col_records = _coerce_numeric(raw, frame[ROW_NUMBER], col, judge_columns)
            records.extend(col_records)
            if coerced is not raw:
                out[col] = coerced
        else:
            out[col] = _as_text(raw)
    return out, findings_frame(records) if records else empty_findings()


def _coerce_numeric(
    raw: pd.Series, row_numbers: pd.Series, col: str, judge_column: bool = True
) -> tuple[pd.Series, list[dict]]:
    records: list[dict] = []
    if pd.api.types.is_bool_dtype(raw) or not (
        pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_object_dtype(raw) or pd.api.types.is_string_dtype(raw)
    ):
        return raw, records  # dates, durations, nested values: a wrong type for GX to report
    if pd.api.types.is_numeric_dtype(raw):
        numeric = raw
    else:
        numeric = pd.to_numeric(raw.astype(object).map(_strip), errors="coerce")
        failed = numeric.isna() & raw.notna() & (raw.astype(object).map(_strip) != "")
        if judge_column and failed.sum() > 0.5 * max(int(raw.notna().sum()), 1):
            return raw, records  # mostly text: a wrong type, reported at batch level by GX
        for idx in failed[failed].index:
            records.append(
                _record(
                    row_numbers[idx],
                    f"type:{col}",
                    ReasonCode.NOT_A_NUMBER,
                    raw[idx],
                    f"{col}={_show(raw[idx])} is not a number",
                    col,
                )
            )
    as_float = numeric.astype("float64")
    infinite = np.isinf(as_float.to_numpy())
    if infinite.any():
        for idx in numeric.index[infinite]:
            records.append(
                _record(
                    row_numbers[idx],
                    f"type:{col}",
                    ReasonCode.NON_FINITE,
                    numeric[idx],
                    f"{col}={numeric[idx]} is not a finite number",
                    col,
                )
            )
        numeric = as_float.where(~infinite, np.nan)
    return numeric, records


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _as_text(raw: pd.Series) -> pd.Series:
    def text(value: Any) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            return None
        if isinstance(value, (bool, np.bool_)):
            return "true" if value else "false"
        return str(value)

    if isinstance(raw.dtype, pd.StringDtype):
        # already text: one Python str per distinct value, shared by its cells (a str per cell is
        # ~60 bytes, 360 MB for six columns of 10^6 rows)
        codes, distinct = pd.factorize(raw)
        values = np.empty(len(raw), dtype=object)  # None where missing (code -1)
        known = codes >= 0
        values[known] = np.asarray(distinct, dtype=object)[codes[known]]
        return pd.Series(values, index=raw.index, dtype=object)
    return pd.Series([text(v) for v in raw.to_numpy(dtype=object)], index=raw.index, dtype=object)


def _record(
    row_number: Any, check: str, code: ReasonCode, observed: Any, message: str, column: str | None = None
) -> dict[str, Any]:
    return {
        "row_number": int(row_number),
        "check": check,
        "column": column,
        "reason_code": code,
        "observed": observed,
        "message": message,
    }


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- a batch conformed a slice at a time ------------------------------------------------------


@dataclass(frozen=True)
class ConformedBatch:
    """The batch in the reference's column kinds, conformed only where a step reads it: a slice
    of rows, some rows by position, or one column (``batch[name]``, as batch checks read it).

    ``kinds`` leaves out the numeric columns the whole batch kept as text, and ``dtypes`` are the
    whole conformed frame's, so any slice conforms exactly as it did inside the whole batch;
    ``arrow_types`` are the types its columns take in Arrow (a slice whose text column happens to
    be empty would say "null"), for writing slices as one file.
    """

    source: LoadedTable
    kinds: dict[str, ColumnKind]
    dtypes: dict[str, Any]
    arrow_types: dict[str, pa.DataType]
    carried: tuple[str, ...] = ()  # id, time, text and ignored columns (pipeline.roles): never features

    def exact(self) -> pa.Table:
        """The batch's columns with every cell as it arrived (``LoadedTable.exact``), for outputs."""
        return self.source.exact

    @property
    def n_rows(self) -> int:
        return self.source.n_rows

    @property
    def columns(self) -> list[str]:
        return [*self.source.columns, ROW_NUMBER]

    @property
    def row_numbers(self) -> pd.Series:
        return pd.Series(np.arange(self.n_rows, dtype=np.int64), name=ROW_NUMBER)

    @property
    def frame(self) -> pd.DataFrame:
        """Every row, conformed: for small batches and tests."""
        return self.rows(0, self.n_rows)

    def rows(self, start: int, stop: int) -> pd.DataFrame:
        return self._conformed(self.source.rows(start, stop))

    def take(self, positions: np.ndarray) -> pd.DataFrame:
        return self._conformed(self.source.take(positions))

    def chunks(self, rows: int) -> Iterator[pd.DataFrame]:
        for part in self.source.chunks(rows):
            yield self._conformed(part)

    def arrow_schema(self, part: pd.DataFrame) -> pa.Schema:
        """The Arrow schema of a slice of this batch (with any columns added to it), with the
        whole batch's type for each batch column."""
        schema = pa.Schema.from_pandas(part, preserve_index=False)
        for i, name in enumerate(schema.names):
            if name in self.arrow_types:
                schema = schema.set(i, schema.field(i).with_type(self.arrow_types[name]))
        return schema

    def __getitem__(self, column: str) -> pd.Series:
        return self._conformed(self.source.select([] if column == ROW_NUMBER else [column]))[column]

    def _conformed(self, part: pd.DataFrame) -> pd.DataFrame:
        out, _ = conform(part, {c: k for c, k in self.kinds.items() if c in part.columns}, judge_columns=False)
        for column in out.columns:
            if column in self.dtypes and out[column].dtype != self.dtypes[column]:
                out[column] = out[column].astype(self.dtypes[column])
        return out


# Cells (rows × columns) validated at once: a batch larger than this is validated a group of
# whole columns at a time (about 32 MB of float64 each, before GX's own copies).
VALIDATION_CELLS = 4_000_000


def validate_table(
    batch: LoadedTable, kinds: dict[str, ColumnKind], suite: Suite, max_cells: int = VALIDATION_CELLS
) -> tuple[ConformedBatch, ValidationOutcome]:
    """Conform the batch to ``kinds`` and run ``suite`` on it, holding at most ``max_cells``
    cells of it at a time.

    A larger batch is taken a group of columns at a time, every row of each, so each column is
    judged whole (``conform``'s mostly-text rule, ``mostly``, uniqueness). An expectation runs
    with the group of the first column it names, plus the other columns it names. Expectations
    about the table's shape see its first row (columns are the same in every row), and row-count
    expectations a frame of as many rows and no columns.
    """
    columns = batch.columns
    per_group = max(1, max_cells // max(batch.n_rows, 1))
    groups = [columns[i : i + per_group] for i in range(0, len(columns), per_group)] or [[]]
    expectations = suite.document["expectations"]
    shape = [e for e in expectations if len(groups) > 1 and _about_shape(e, columns)]
    owner = {column: i for i, group in enumerate(groups) for column in group}
    assigned: list[list[dict[str, Any]]] = [[] for _ in groups]
    for expectation in expectations:
        if not any(expectation is e for e in shape):
            assigned[owner[_named_columns(expectation)[0]] if len(groups) > 1 else 0].append(expectation)

    type_parts, outcomes, dtypes = [], [], {}
    arrow_types: dict[str, pa.DataType] = {}
    kept: set[str] = set()
    for own, group_expectations in zip(groups, assigned):
        needed = list(dict.fromkeys([*own, *(c for e in group_expectations for c in _named_columns(e))]))
        frame = batch.select([c for c in needed if c in columns])
        conformed, type_findings = conform(frame, {c: kinds[c] for c in needed if c in kinds})
        type_parts.append(type_findings[type_findings["column"].isin(own)])
        dtypes.update({c: conformed[c].dtype for c in own})
        arrow_types.update(zip(own, pa.Schema.from_pandas(conformed[own], preserve_index=False).types))
        kept.update(c for c in own if kinds.get(c) is ColumnKind.NUMERIC and not _is_number(conformed[c]))
        if group_expectations:
            outcomes.append(validate(conformed, _part_of(suite, group_expectations), batch_rows=batch.n_rows))
        del frame, conformed
    arrow_types[ROW_NUMBER] = pa.int64()
    result = ConformedBatch(batch, {c: k for c, k in kinds.items() if c not in kept}, dtypes, arrow_types)
    counted = [e for e in shape if e["type"].startswith("expect_table_row_count")]
    if counted:
        outcomes.append(validate(pd.DataFrame({ROW_NUMBER: np.arange(batch.n_rows)}), _part_of(suite, counted)))
    if len(counted) < len(shape):
        outcomes.append(
            validate(result.rows(0, 1), _part_of(suite, [e for e in shape if e not in counted]), batch_rows=batch.n_rows)
        )
    release_freed_memory(batch.n_rows)
    type_order = {f"type:{column}": i for i, column in enumerate(kinds)}
    check_order = {
        f"validation:{_check_name(e['type'], e.get('kwargs', {}), e.get('meta') or {})}": i
        for i, e in reversed(list(enumerate(expectations)))
    }
    return result, _merged(outcomes, type_parts, type_order, check_order)


def _named_columns(expectation: dict[str, Any]) -> list[str]:
    kwargs = expectation.get("kwargs", {})
    named = [kwargs.get(k) for k in ("column", "column_A", "column_B")] + list(kwargs.get("column_list") or [])
    return [str(c) for c in named if c is not None]


def _about_shape(expectation: dict[str, Any], columns: list[str]) -> bool:
    named = _named_columns(expectation)
    return (
        expectation["type"].startswith("expect_table_")
        or expectation["type"] == "expect_column_to_exist"
        or not named
        or any(c not in columns for c in named)
    )


def _is_number(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _part_of(suite: Suite, expectations: list[dict[str, Any]]) -> Suite:
    return suite_from_document({**suite.document, "expectations": expectations}, suite.source)


def _merged(
    outcomes: list[ValidationOutcome],
    type_parts: list[pd.DataFrame],
    type_order: dict[str, int],
    check_order: dict[str, int],
) -> ValidationOutcome:
    """One outcome from the groups', its findings in the order one pass over the whole batch
    gives them (type findings column by column, then each expectation's in the suite's order,
    rows ascending within each), so that the reasons a row is given never depend on the groups."""
    type_findings = _ordered([t for t in type_parts if len(t)], type_order)
    row_findings = _ordered([o.row_findings for o in outcomes if len(o.row_findings)], check_order)
    row_findings = _without_echoes(row_findings, type_findings)
    parts = [f for f in (type_findings, row_findings) if len(f)]
    findings = pd.concat(parts, ignore_index=True) if parts else row_findings
    checks: dict[str, int] = {}
    for outcome in outcomes:
        checks.update(outcome.checks)
    for check, count in type_findings.groupby("check")[ROW_NUMBER].nunique().items():
        checks[str(check)] = int(count)
    batch_findings = _root_causes_first([f for o in outcomes for f in o.batch_findings])
    return ValidationOutcome(findings, batch_findings, checks)


def _ordered(parts: list[pd.DataFrame], order: dict[str, int]) -> pd.DataFrame:
    if not parts:
        return empty_findings()
    findings = pd.concat(parts, ignore_index=True)
    rank = findings["check"].map(order).fillna(len(order)).to_numpy()
    keys = np.lexsort((findings[ROW_NUMBER].to_numpy(), rank))  # stable: the last key sorts first
    return findings.iloc[keys].reset_index(drop=True)


def _without_echoes(row_findings: pd.DataFrame, type_findings: pd.DataFrame) -> pd.DataFrame:
    """A cell that was text or inf became NaN in ``conform``; the suite's not-null rule then says
    "is missing" about the same cell. The type finding already names the problem."""
    if type_findings.empty or row_findings.empty:
        return row_findings
    typed = set(zip(type_findings[ROW_NUMBER], type_findings["column"]))
    echo = (row_findings["reason_code"] == ReasonCode.MISSING_VALUE.value) & pd.Series(
        [cell in typed for cell in zip(row_findings[ROW_NUMBER], row_findings["column"])],
        index=row_findings.index,
        dtype=bool,
    )
    return row_findings[~echo]


# --- running a suite -----------------------------------------------------------------------


@lru_cache(maxsize=1)
def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # Its ephemeral docs site announces a temporary directory at INFO on every context.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")  # explicit: never pick up a gx/ folder in cwd
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


_asset_counter = itertools.count()


def validate(frame: pd.DataFrame, suite: Suite, batch_rows: int | None = None) -> ValidationOutcome:
    """Run every expectation of ``suite`` on ``frame`` (index = row_number) and collect findings.
    A batch-level failure holds ``batch_rows`` rows (default: the frame's)."""
    gx_suite = _to_gx_suite(suite.document, suite.source)
    data = frame.drop(columns=[ROW_NUMBER])
    context = _context()
    asset_id = next(_asset_counter)
    source = context.data_sources.add_pandas(f"poisonguard-{asset_id}")
    try:
        batch = (
            source.add_dataframe_asset("batch")
            .add_batch_definition_whole_dataframe("whole")
            .get_batch(batch_parameters={"dataframe": data})
        )
        result = batch.validate(gx_suite, result_format={"result_format": "COMPLETE"})
    finally:
        context.data_sources.delete(f"poisonguard-{asset_id}")
    records: list[dict[str, Any]] = []
    batch_findings: list[BatchFinding] = []
    checks: dict[str, int] = {}
    for res in result.results:
        config = res.expectation_config
        kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
        check = f"validation:{_check_name(config.type, kwargs, config.meta or {})}"
        error = _raised(res.exception_info)
        if error:
            batch_findings.append(
                BatchFinding(check, ReasonCode.BATCH_EXPECTATION, f"{check} could not be evaluated: {error}")
            )
            continue
        if _is_row_level(config.type, kwargs, config.meta or {}):
            indices = res.result.get("unexpected_index_list") or []
            for idx in indices:
                records.append(_row_finding(frame, int(idx), config.type, kwargs, config.meta or {}, check))
            checks[check] = len(indices)
        elif not res.success:
            batch_findings.append(_batch_finding(config.type, kwargs, res.result, check))
            checks[check] = len(frame) if batch_rows is None else batch_rows
    findings = findings_frame(records) if records else empty_findings()
    return ValidationOutcome(findings, _root_causes_first(batch_findings), checks)


_CAUSE_ORDER = {ReasonCode.MISSING_COLUMN: 0, ReasonCode.UNEXPECTED_COLUMN: 1, ReasonCode.WRONG_TYPE: 2}


def _root_causes_first(findings: list[BatchFinding]) -> list[BatchFinding]:
    """A missing or mistyped column makes every other expectation on it fail to evaluate; those
    follow-on errors say nothing the schema finding does not, so they are dropped."""
    causes = [f for f in findings if f.reason_code in _CAUSE_ORDER]
    if not causes:
        return findings
    text = " ".join(f.message for f in causes)
    kept = [f for f in findings if f in causes or not _about_known_column(f, text)]
    return sorted(kept, key=lambda f: _CAUSE_ORDER.get(f.reason_code, 9))


def _about_known_column(finding: BatchFinding, causes_text: str) -> bool:
    if "could not be evaluated" not in finding.message:
        return False
    column = finding.check.rsplit(":", 1)[-1]
    return any(f"'{part}'" in causes_text for part in column.split("/"))


def _raised(exception_info: Any) -> str | None:
    if not exception_info:
        return None
    infos = [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    for info in infos:
        if isinstance(info, dict) and info.get("raised_exception"):
            message = str(info.get("exception_message") or "error")
            return message.removeprefix("Error: ")
        if isinstance(info, str):
            return info.removeprefix("Error: ")
    return None


def _is_row_level(type_: str, kwargs: dict, meta: dict) -> bool:
    level = meta.get("level")
    if level in ("row", "batch"):
        return level == "row"
    if type_ in BATCH_LEVEL_TYPES or type_.startswith("expect_table_"):
        return False
    # A rate expectation ("mostly") judges the batch, not the row.
    return kwargs.get("mostly", 1.0) in (None, 1, 1.0)


def _check_name(type_: str, kwargs: dict, meta: dict) -> str:
    if meta.get("rule_id"):
        return str(meta["rule_id"])
    short = type_.removeprefix("expect_")
    target = kwargs.get("column") or "/".join(str(kwargs[k]) for k in ("column_A", "column_B") if k in kwargs)
    return f"{short}:{target}" if target else short


def _row_finding(frame: pd.DataFrame, idx: int, type_: str, kwargs: dict, meta: dict, check: str) -> dict:
    def cell(name: Hashable) -> Any:  # by cell: a row of an all-number frame would make an int a float
        return frame.at[idx, name]

    col = kwargs.get("column")
    column = col or "/".join(str(kwargs[k]) for k in ("column_A", "column_B") if k in kwargs) or None
    observed = cell(col) if col in frame.columns else None
    if type_ == "expect_column_values_to_be_between":
        code = ReasonCode.OUT_OF_RANGE
        message = (
            f"{col}={_show(observed)} is outside the trusted range [{kwargs.get('min_value')}, {kwargs.get('max_value')}]"
        )
    elif type_ == "expect_column_values_to_be_in_set":
        code = ReasonCode.NOT_IN_DOMAIN
        known = kwargs.get("value_set") or []
        listed = ", ".join(map(str, known[:6])) + (", ..." if len(known) > 6 else "")
        message = f"{col}={_show(observed)} is not a trusted value ({listed})"
    elif type_ == "expect_column_values_to_not_be_null":
        code = ReasonCode.MISSING_VALUE
        message = f"{col} is missing"
    elif "column_A" in kwargs:
        code = ReasonCode.INTEGRITY
        a, b = kwargs["column_A"], kwargs["column_B"]
        observed = f"{a}={cell(a)}, {b}={cell(b)}"
        message = f"{a}={_show(cell(a))} vs {b}={_show(cell(b))} breaks {type_.removeprefix('expect_')}"
    else:
        code = ReasonCode.EXPECTATION
        message = f"{col}={_show(observed)} fails {type_.removeprefix('expect_')}" if col else f"fails {check}"
    if meta.get("description"):
        message = f"{meta['description']}: {message}"
    return _record(frame.loc[idx, ROW_NUMBER], check, code, observed, message, column)


def _batch_finding(type_: str, kwargs: dict, result: dict, check: str) -> BatchFinding:
    details = result.get("details") or {}
    mismatched = details.get("mismatched") or {}
    if mismatched:
        parts, code = [], ReasonCode.BATCH_EXPECTATION
        if mismatched.get("missing"):
            parts.append("missing column(s) " + ", ".join(map(repr, mismatched["missing"])))
            code = ReasonCode.MISSING_COLUMN
        if mismatched.get("unexpected"):
            parts.append("unexpected column(s) " + ", ".join(map(repr, mismatched["unexpected"])))
            code = ReasonCode.UNEXPECTED_COLUMN if code is ReasonCode.BATCH_EXPECTATION else code
        return BatchFinding(check, code, "batch schema differs from the suite: " + "; ".join(parts))
    if type_ in ("expect_column_values_to_be_in_type_list", "expect_column_values_to_be_of_type"):
        observed = result.get("observed_value") or "values of another type"
        return BatchFinding(
            check,
            ReasonCode.WRONG_TYPE,
            f"column {kwargs.get('column')!r} holds {observed}, the suite expects "
            f"{kwargs.get('type_list') or kwargs.get('type_')}",
        )
    observed = result.get("observed_value", result.get("unexpected_percent"))
    return BatchFinding(
        check, ReasonCode.BATCH_EXPECTATION, f"batch fails {type_.removeprefix('expect_')} {kwargs} (observed {observed})"
    )


def save_suite(suite: Suite, path: Path) -> None:
    from pipeline.io import write_text_atomic

    write_text_atomic(json.dumps(suite.document, indent=2, default=_json_default) + "\n", path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
