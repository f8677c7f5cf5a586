"""Declared limits of parameters (detectors', the quarantine policy's), in the spirit of
scikit-learn's parameter validation. No numpy, pandas or scikit-learn here: the settings read
at the command line's edge use it, and the light commands (``--help``, ``review``) must not pay
for the scan's imports."""

from __future__ import annotations

import re
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from pipeline.errors import PoisonguardError

# The policy's threshold on a fused p-value never exceeds this (its parameters are capped there).
REASON_PVALUE = 0.5
# A detector's name: it becomes MLflow parameter and score column names (``detector.<name>.alpha``).
DETECTOR_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class InvalidParameter(PoisonguardError):
    """A detector parameter is outside its declared limits."""


@dataclass(frozen=True)
class Interval:
    """A declared limit for a numeric parameter, in the spirit of sklearn's param validation."""

    kind: type[Any]
    low: float | None = None
    high: float | None = None
    closed: str = "both"  # which ends are allowed: "both", "left", "right", "neither"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.kind):
            return False
        left_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        right_ok = self.high is None or (value <= self.high if self.closed in ("both", "right") else value < self.high)
        return bool(left_ok and right_ok)

    def describe(self) -> str:
        kind = "an int" if self.kind is Integral else "a float" if self.kind is Real else self.kind.__name__
        lo = "" if self.low is None else f"{self.low} {'<=' if self.closed in ('both', 'left') else '<'} "
        hi = "" if self.high is None else f" {'<=' if self.closed in ('both', 'right') else '<'} {self.high}"
        return f"{kind} in {lo}x{hi}" if lo or hi else kind
