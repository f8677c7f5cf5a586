"""How much of an input file poisonguard agrees to read.

Batches come from people and feeds poisonguard does not trust, so a file's size, width, row
count and longest cell are bounded before (or, for what only parsing reveals, right after) it
is read, and a file over a limit is refused with one line naming the limit and the environment
variable that raises it. The defaults are far above any batch a person reviews.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from pipeline.errors import PoisonguardError

GIB = 1 << 30


@dataclass(frozen=True)
class InputLimits:
    """Upper bounds on one input file.

    >>> InputLimits.from_environment({"POISONGUARD_MAX_COLUMNS": "50"}).max_columns
    50
    """

    max_file_bytes: int = 2 * GIB
    max_columns: int = 1000
    max_field_chars: int = 100_000  # characters in one cell or one column name
    # A Parquet file can compress millions of rows into kilobytes, so its row count is bounded
    # on its own, read from the footer before anything is decoded.
    max_rows: int = 10_000_000

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PoisonguardError(f"The input limit {field.name} must be an int >= 1. Got {value!r}.")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> InputLimits:
        env = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            variable = environment_variable(field.name)
            raw = env.get(variable, "").strip()
            if not raw:
                continue
            try:
                values[field.name] = int(raw)
            except ValueError:
                raise PoisonguardError(
                    f"The environment variable {variable} must be a whole number such as {field.default}; got {raw!r}."
                ) from None
            if values[field.name] < 1:
                raise PoisonguardError(f"The environment variable {variable} must be at least 1; got {raw!r}.")
        return cls(**values)


def environment_variable(limit: str) -> str:
    """``"max_columns"`` → ``"POISONGUARD_MAX_COLUMNS"``: the variable that sets a limit."""
    return f"POISONGUARD_{limit.upper()}"


__all__ = ["InputLimits", "environment_variable"]
