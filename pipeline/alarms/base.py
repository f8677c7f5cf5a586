"""Batch-level checks: questions about the batch as a whole that no single row answers.

A row detector asks "is this row suspect?"; a batch check asks "did this batch move?" (feature
drift, a label rate shifted in one segment, a source whose rejection rate jumped). Its answer
is an ``Alarm`` shown to the steward and logged to MLflow; it does not hold rows, because every
row of a drifted batch may be perfectly genuine.

Contract, as for detectors: ``fit(reference, spec, segments)`` returns ``self`` and learns only
from trusted rows; ``check(batch)`` returns a ``CheckResult`` and never writes to ``self``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import pandas as pd
from sklearn.exceptions import NotFittedError

from pipeline.detectors.base import FeatureSpec


@dataclass(frozen=True)
class Alarm:
    """A batch-level finding that fired: one line for the steward, the numbers for the report."""

    check: str
    message: str
    pvalue: float
    details: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "message": self.message, "pvalue": self.pvalue, "details": self.details}


@dataclass(frozen=True)
class CheckResult:
    """``table``: every tested item (feature, segment) with its statistics, fired or not."""

    check: str
    table: pd.DataFrame
    alarm: Alarm | None


class BatchCheck(ABC):
    name: ClassVar[str]

    def fit(self, reference: pd.DataFrame, spec: FeatureSpec, segments: tuple[str, ...] = ()) -> Self:
        self._fit(reference, spec, segments)
        self.spec_ = spec
        return self

    def check(self, batch: pd.DataFrame) -> CheckResult:
        if not hasattr(self, "spec_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet: call fit(reference, spec) first.")
        return self._check(batch)

    @abstractmethod
    def _fit(self, reference: pd.DataFrame, spec: FeatureSpec, segments: tuple[str, ...]) -> None: ...

    @abstractmethod
    def _check(self, batch: pd.DataFrame) -> CheckResult: ...
