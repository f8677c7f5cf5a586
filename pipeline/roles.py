"""Column roles: what each column of a training table is for.

A real table holds more than features and a label: an application id, a received timestamp, a
free-text comment. Used as features they hold every batch (each new id is out of range, each
timestamp an unseen category, each comment a trigger). Every column has one role:

- ``label``: what the model learns; ``feature``: what it learns from;
- ``protected``: never a model feature, compared across segments (disparate impact);
- ``id``: one per row; checked for nulls and repeats (in the batch and against accepted data);
- ``time``: when the row happened; checked to parse, not to lie in the future, and to fall
  within a window of the batch's arrival;
- ``text``: free text, carried through unchecked; ``ignored``: carried through unchecked.

Only label, feature and protected columns are validated by the suite's range, type and domain
rules, scored by detectors, or watched for drift. The others are carried to the outputs exactly
as they arrived. ``infer_roles`` proposes roles from trusted data; ``profile`` writes them into
the suite (``meta.poisonguard.roles``), where a person reviews them.

>>> frame = pd.DataFrame({"app_id": range(100), "x": [i % 7 for i in range(100)], "y": ["a", "b"] * 50})
>>> infer_roles(frame, "y")["app_id"]
<Role.ID: 'id'>
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import RoleRules  # re-exported: the rules roles are judged by
from pipeline.errors import InputError, SuiteError


class Role(str, Enum):
    LABEL = "label"
    FEATURE = "feature"
    PROTECTED = "protected"
    ID = "id"
    TIME = "time"
    TEXT = "text"
    IGNORED = "ignored"


# Roles whose columns are carried through untouched: never features, never range-checked or drift-watched.
CARRIED = frozenset({Role.ID, Role.TIME, Role.TEXT, Role.IGNORED})
# The roles a person sets with --id / --time / --text / --ignore (and the config's keys of the same names).
EXPLICIT_OPTIONS = {"id": Role.ID, "time": Role.TIME, "text": Role.TEXT, "ignore": Role.IGNORED}

# Fewer trusted rows than this say too little to call a column an id or free text.
MIN_ROWS_TO_INFER = 20
# Above this many distinct values a string column is no category (validation.MAX_DOMAIN_SIZE).
MAX_LEVELS = 50
# A string column whose values average this many characters, or mostly hold a space, is free text.
TEXT_MEAN_CHARS = 30
# Digits a float64 holds exactly: a longer run of digits is an identifier, not a quantity.
EXACT_FLOAT_DIGITS = 15
_ID_NAME = re.compile(r"(^|[_\W])(id|uuid|guid|key)$|^id[_\W]|(?<=[a-z])Id$", re.IGNORECASE)
_ID_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_DATE_LIKE = re.compile(r"^\s*(\d{4}-\d{1,2}-\d{1,2}|\d{4}/\d{1,2}/\d{1,2}|\d{1,2}/\d{1,2}/\d{4})([ T]\d{1,2}:\d{2}.*)?\s*$")


def infer_roles(
    frame: pd.DataFrame,
    label: str,
    protected: Iterable[str] = (),
    explicit: Mapping[str, Role] | None = None,
    exact: pd.DataFrame | None = None,
) -> dict[str, Role]:
    """Each column's role, inferred from trusted ``frame`` (without ``row_number``); ``explicit``
    roles win. ``exact``: the same rows as they arrived (``LoadedTable.exact``), where a CSV's
    20-digit ids are still text, not floats that collapsed them into repeats. Rules, in order:
    unique per row and (monotonic integers, or id-like strings, or an id-like name) → id; dates
    or timestamps (typed, or text that parses) → time; long or spaced free strings → text; other
    strings with too many distinct values to be a category → ignored; the rest → feature."""
    explicit = dict(explicit or {})
    roles: dict[str, Role] = {}
    protected = set(protected)
    for column in frame.columns:
        if column == "row_number":
            continue
        if column in explicit:
            roles[column] = explicit[column]
        elif column == label:
            roles[column] = Role.LABEL
        elif column in protected:
            roles[column] = Role.PROTECTED
        else:
            as_written = exact[column] if exact is not None and column in exact.columns else None
            roles[column] = _inferred(str(column), frame[column], as_written)
    return roles


def _inferred(name: str, values: pd.Series, as_written: pd.Series | None = None) -> Role:
    if pd.api.types.is_datetime64_any_dtype(values) or _holds(values, (dt.date, dt.datetime, pd.Timestamp)):
        return Role.TIME
    present = values.dropna()
    if len(present) < MIN_ROWS_TO_INFER:
        return Role.FEATURE
    if not pd.api.types.is_numeric_dtype(values) and _looks_like_times(present.astype(str)):
        return Role.TIME  # before ids: unique timestamps are no identifiers
    if _is_identifier(name, values, present):
        return Role.ID
    written_as_text = as_written is not None and not pd.api.types.is_numeric_dtype(as_written)
    if (
        written_as_text
        and as_written is not None
        and pd.api.types.is_numeric_dtype(values)
        and _is_identifier(name, as_written, as_written.dropna())
    ):
        return Role.ID
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return Role.FEATURE
    text = present.astype(str)
    levels = text.nunique()
    if levels > MAX_LEVELS and (text.str.len().mean() >= TEXT_MEAN_CHARS or text.str.contains(r"\s").mean() >= 0.5):
        return Role.TEXT
    if levels > MAX_LEVELS and levels > 0.2 * len(text):
        return Role.IGNORED
    return Role.FEATURE


def _holds(values: pd.Series, types: tuple[type, ...]) -> bool:
    if values.dtype != object:
        return False
    present = values.dropna()
    return len(present) > 0 and all(isinstance(v, types) for v in present.head(100))


def _is_identifier(name: str, values: pd.Series, present: pd.Series) -> bool:
    if len(present) != len(values) or present.nunique() != len(present):
        return False  # an id is never missing and never repeats
    if pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_integer_dtype(values):
        return bool(present.is_monotonic_increasing or present.is_monotonic_decreasing or _ID_NAME.search(name))
    if pd.api.types.is_float_dtype(values):
        whole = bool(np.all(np.mod(present.to_numpy(dtype="float64"), 1) == 0))
        return whole and bool(present.is_monotonic_increasing or _ID_NAME.search(name))
    text = present.astype(str)
    if _ID_NAME.search(name) and text.map(lambda v: bool(_ID_TOKEN.match(v))).all():
        return True
    if text.map(lambda v: bool(_UUID.match(v))).all():
        return True
    digits = text.str.fullmatch(r"\d+")
    if digits.all():  # numbers kept as text: an id when too long for a float, or in order
        as_int = text.map(int)
        return bool(text.str.len().min() > EXACT_FLOAT_DIGITS or as_int.is_monotonic_increasing)
    # codes such as "APP-000123": a letter and a digit, no spaces, short
    return bool(
        text.map(lambda v: bool(_ID_TOKEN.match(v)) and any(c.isdigit() for c in v) and any(c.isalpha() for c in v)).all()
    )


def _looks_like_times(text: pd.Series) -> bool:
    return bool(text.map(lambda v: bool(_DATE_LIKE.match(v))).mean() >= 0.95 and parse_times(text).notna().mean() >= 0.95)


def parse_times(values: pd.Series) -> pd.Series:
    """``values`` as UTC timestamps (NaT where a value does not parse); naive times are read as UTC."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        text = values.astype(object).where(values.notna(), None).map(lambda v: v if v is None else str(v))
        # ISO 8601 parses in C (0.7 s per 10^6 values); other layouts one value at a time (5 s)
        parsed = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True)
        retry = parsed.isna() & text.notna()
        if retry.any():
            parsed = parsed.astype("datetime64[ns, UTC]")
            parsed[retry] = pd.to_datetime(text[retry], errors="coerce", format="mixed", utc=True)
    if getattr(parsed.dt, "tz", None) is None:
        parsed = parsed.dt.tz_localize("UTC")
    return parsed.dt.tz_convert("UTC")


def leading_zero_codes(typed: pd.DataFrame, exact: pd.DataFrame) -> list[str]:
    """Columns read as integers whose cells were written with leading zeros ("00501", "007"):
    codes (a zip, a product code), whose levels are categories, not quantities on a line."""
    codes = []
    for column in typed.columns:
        if column not in exact.columns or not pd.api.types.is_integer_dtype(typed[column].dropna()):
            continue
        written = exact[column]
        if pd.api.types.is_numeric_dtype(written):
            continue
        if written.dropna().astype(str).str.match(r"^[+-]?0\d").any():
            codes.append(column)
    return codes


# --- roles in a suite ------------------------------------------------------------------------------


def parse_roles(raw: Any, where: str) -> dict[str, Role]:
    """``meta.poisonguard.roles`` of a suite: ``{column: role}``."""
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise SuiteError(
            f"{where}: meta.poisonguard.roles must map column names to roles ({', '.join(r.value for r in Role)})."
        )
    roles = {}
    for column, value in raw.items():
        try:
            roles[column] = Role(value)
        except ValueError:
            raise SuiteError(
                f"{where}: meta.poisonguard.roles gives column {column!r} the role {value!r}; "
                f"a role is one of {', '.join(r.value for r in Role)}."
            ) from None
    return roles


def explicit_roles(
    id: Iterable[str] = (), time: Iterable[str] = (), text: Iterable[str] = (), ignore: Iterable[str] = ()
) -> dict[str, Role]:
    """The roles a user named (``--id app_id --time received``); a column named twice is an error."""
    roles: dict[str, Role] = {}
    for option, columns in (("id", id), ("time", time), ("text", text), ("ignore", ignore)):
        for column in columns:
            role = EXPLICIT_OPTIONS[option]
            if column in roles and roles[column] is not role:
                raise InputError(f"Column {column!r} is given two roles: {roles[column].value} and {role.value}.")
            roles[column] = role
    return roles


def check_named_columns(roles: Mapping[str, Role], columns: Iterable[str], where: str) -> None:
    missing = [c for c in roles if c not in set(columns)]
    if missing:
        raise InputError(f"Column(s) {', '.join(map(repr, missing))} given a role are not in the {where}.")


def describe(roles: Mapping[str, Role]) -> list[str]:
    """One line per role with its columns: ``id: application_id``."""
    lines = []
    for role in Role:
        columns = [c for c, r in roles.items() if r is role]
        if columns:
            lines.append(f"{role.value}: {', '.join(columns)}")
    return lines


# --- checks of id and time columns -----------------------------------------------------------------

# RoleRules (how id and time columns are judged) is a setting: pipeline.config holds it.


def id_text(values: pd.Series) -> pd.Series:
    """Ids compared as their text (a Parquet integer 5 and a CSV "5" are the same id); None where missing."""

    def text(value: Any) -> str | None:
        if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
            return None
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return str(int(value))
        return str(value)

    if pd.api.types.is_string_dtype(values) or pd.api.types.is_integer_dtype(values):  # the common cases, in C
        return values.astype(str).astype(object).where(values.notna(), None)
    return pd.Series([text(v) for v in values.to_numpy(dtype=object)], index=values.index, dtype=object)


def id_shape(ids: pd.Series) -> str | None:
    """The one shape every trusted id has, as a regular expression (runs of digits, of letters,
    and the other characters as they are: "APP-000123" → ``[A-Za-z]+-[0-9]+``), or None when the
    ids have more than one shape (hex UUIDs, mixed formats): then no format is checked."""
    text = id_text(ids).dropna()
    if text.empty:
        return None
    shapes = text.str.replace(r"[0-9]+", "\x00", regex=True).str.replace(r"[A-Za-z]+", "\x01", regex=True).unique()
    if len(shapes) != 1:
        return None
    return "".join({"\x00": "[0-9]+", "\x01": "[A-Za-z]+"}.get(ch, re.escape(ch)) for ch in shapes[0])


def check_roles(
    batch: pd.DataFrame,
    roles: Mapping[str, Role],
    *,
    arrival: dt.datetime,
    rules: RoleRules = RoleRules(),
    accepted_ids: Mapping[str, set[str]] | None = None,
    id_shapes: Mapping[str, str | None] | None = None,
) -> list[dict[str, Any]]:
    """Row findings (records for ``findings.findings_frame``) for the id and time columns of
    ``batch`` (original cells, with ``row_number``): a missing id, an id of another shape than
    every trusted one (``id_shapes``), an id repeated within the batch (every row after its
    first) or already in accepted data, a time that does not parse, lies in the future, or falls
    outside the window before ``arrival``."""
    from pipeline.findings import ReasonCode

    records: list[dict[str, Any]] = []
    rows = batch["row_number"].to_numpy()

    def add(position: int | np.integer, column: str, code: ReasonCode, observed: Any, message: str, check: str) -> None:
        records.append(
            {
                "row_number": int(rows[position]),
                "check": check,
                "column": column,
                "reason_code": code,
                "observed": observed,
                "message": message,
            }
        )

    for column, role in roles.items():
        if column not in batch.columns:
            continue
        if role is Role.ID:
            ids = id_text(batch[column])
            earlier = (accepted_ids or {}).get(column, set())
            missing = ids.isna().to_numpy()
            repeated = (ids.duplicated(keep="first") & ids.notna()).to_numpy()
            known = ids.isin(earlier).to_numpy() & ~missing & ~repeated if earlier else np.zeros(len(ids), bool)
            shape = (id_shapes or {}).get(column)
            misshapen = (
                ~ids.fillna("").str.fullmatch(shape).to_numpy(dtype=bool) & ~missing & ~repeated & ~known
                if shape
                else np.zeros(len(ids), bool)
            )
            values = ids.to_numpy(dtype=object)
            for position in np.flatnonzero(misshapen):
                add(
                    position,
                    column,
                    ReasonCode.BAD_ID_FORMAT,
                    values[position],
                    f"{column}={_short(values[position])} does not have the form of the trusted ids ({shape})",
                    f"id:{column}",
                )
            for position in np.flatnonzero(missing):
                add(position, column, ReasonCode.MISSING_ID, None, f"{column} is missing (an id column)", f"id:{column}")
            for position in np.flatnonzero(repeated):
                add(
                    position,
                    column,
                    ReasonCode.DUPLICATE_ID,
                    values[position],
                    f"{column}={_short(values[position])} repeats an id earlier in this batch",
                    f"id:{column}",
                )
            for position in np.flatnonzero(known):
                add(
                    position,
                    column,
                    ReasonCode.DUPLICATE_ID,
                    values[position],
                    f"{column}={_short(values[position])} is the id of a row already accepted",
                    f"id:{column}",
                )
        elif role is Role.TIME:
            parsed = parse_times(batch[column])
            raw = batch[column].to_numpy(dtype=object)
            present = batch[column].notna().to_numpy()
            future = pd.Timestamp(arrival) + pd.Timedelta(hours=rules.future_tolerance_hours)
            unparsed = present & parsed.isna().to_numpy()
            later = (parsed > future).fillna(False).to_numpy(dtype=bool)
            older = (
                (parsed < pd.Timestamp(arrival) - pd.Timedelta(days=rules.max_age_days)).fillna(False).to_numpy(dtype=bool)
                if rules.max_age_days is not None
                else np.zeros(len(raw), bool)
            )
            for position in np.flatnonzero(unparsed):
                add(
                    position,
                    column,
                    ReasonCode.BAD_TIME,
                    raw[position],
                    f"{column}={_short(raw[position])} is not a date or time",
                    f"time:{column}",
                )
            for position in np.flatnonzero(later):
                add(
                    position,
                    column,
                    ReasonCode.FUTURE_TIME,
                    raw[position],
                    f"{column}={_short(raw[position])} is in the future (the batch arrived {arrival:%Y-%m-%d %H:%M} UTC)",
                    f"time:{column}",
                )
            for position in np.flatnonzero(older):
                add(
                    position,
                    column,
                    ReasonCode.OUTSIDE_WINDOW,
                    raw[position],
                    f"{column}={_short(raw[position])} is more than {rules.max_age_days:g} days before the batch arrived",
                    f"time:{column}",
                )
    records.sort(key=lambda r: r["row_number"])
    return records


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."
