"""The detector contract: fit on trusted reference data, score a batch, never learn from the batch.

``Detector(**params).fit(reference, spec)`` returns ``self``; ``score(batch)`` returns one row per
batch row with the columns in ``SCORE_COLUMNS``:

- ``score``: the detector's raw score, higher = more suspect;
- ``calibrated``: 1 − conformal p-value against trusted rows the detector did not fit on, in
  [0, 1]: 0.99 means the row looks more suspect than 99 % of trusted rows;
- ``flagged``: the detector would quarantine the row on its own (p-value ≤ its ``alpha``);
- ``reason``: one short sentence a steward can read, for every row whose p-value is at most
  ``REASON_PVALUE``: the quarantine policy fuses detectors and may hold a row that no single
  detector flags on its own, and every held row needs its reasons.

Scoring never writes to ``self``; learned state ends in ``_``.

A detector is one of two kinds. A ``RowDetector`` scores any run of rows on its own (a row's
score depends on that row alone). A ``GroupDetector`` compares batch rows with each other, yet
must not need the batch in memory: it scores from a ``Summary``, a few bytes of state per row
that ``summarise`` takes from any run of rows, and that concatenates across chunks;
``score_summary`` may fetch back the few rows it must see whole.

Parameters are the keyword-only arguments of ``__init__``, stored unchanged as attributes of the
same name (scikit-learn's convention): ``get_params``, ``set_params`` and ``clone`` read the
signature, ``_parameter_constraints`` declares their limits (``check_detector`` checks the two
agree). How to write one: docs/detectors.md.
"""

from __future__ import annotations

import copy
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError

from pipeline.errors import PoisonguardError
from pipeline.io import ROW_NUMBER
from pipeline.params import REASON_PVALUE, Interval, InvalidParameter  # noqa: F401  (the detectors' vocabulary)

SCORE_COLUMNS = ["row_number", "score", "calibrated", "flagged", "reason"]
# A row-scoped detector's scores also say against which trusted rows (its calibration cell: the
# rows of one class, or of one confidence band) each p-value was computed; -1: row not tested.
CELL_COLUMN = "cell"
# A batch-scoped detector's scores also say which of its groups each row is in (-1: none) and how
# many batch rows of that group the trusted rate explains: the verdict counts held groups' excess.
GROUP_COLUMNS = ["group", "group_expected"]
# A batch-scoped detector's state of each row: arrays whose first axis is the batch's rows, one
# of them the rows' ROW_NUMBER. Summaries of consecutive chunks concatenate (``concat_summaries``).
Summary = dict[str, np.ndarray]
# Positions in the summarised batch -> those rows of the batch, in that order.
RowFetch = Callable[[np.ndarray], pd.DataFrame]
# ``summarise`` works through this many rows at a time, so its temporaries (an encoding of every
# row) stay a slice's worth however long the chunk.
SUMMARY_SLICE_ROWS = 65_536


@dataclass(frozen=True)
class FeatureSpec:
    """Which columns are model features, and of which kind. The label is never a feature."""

    label: str
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def features(self) -> tuple[str, ...]:
        return self.numeric + self.categorical

    @classmethod
    def from_kinds(cls, kinds: dict[str, Any], label: str, exclude: tuple[str, ...] = ()) -> FeatureSpec:
        skip = {label, ROW_NUMBER, *exclude}
        numeric = tuple(c for c, k in kinds.items() if c not in skip and str(getattr(k, "value", k)) == "numeric")
        categorical = tuple(c for c, k in kinds.items() if c not in skip and str(getattr(k, "value", k)) != "numeric")
        return cls(label=label, numeric=numeric, categorical=categorical)


@dataclass(frozen=True)
class PoisonModel:
    """What the batch verdict (``pipeline.verdict``) needs of a row-scoped detector: how its
    p-values of clean rows come about, and what its kind of poison looks like.

    Each batch row's p-value was computed against one calibration cell of trusted rows (the
    ``cell`` column of the detector's scores; -1: a row it does not test), of
    ``calibration_rows[cell]`` rows. ``simulated``: p-values the detector gives trusted rows
    made into poison (labels flipped), with their cells, or None when its poison lies beyond the
    trusted rows (outliers). ``thresholds``: the p-values at which the verdict counts an excess
    (and always "beyond every calibration row"; () for that alone); None for the verdict's default ladder. A
    detector whose poison is extreme by definition counts only there: an outlier sits beyond
    (or at the edge of) the trusted rows, while a clean batch drawn from part of the population
    (covariate shift) crowds the moderate p-values, not the extreme ones.
    """

    kind: str
    calibration_rows: dict[int, int]
    simulated: np.ndarray | None = None
    simulated_cells: np.ndarray | None = None
    thresholds: tuple[float, ...] | None = None


class Detector(ABC):
    """Base class of both kinds (``RowDetector``, ``GroupDetector``): parameters and their
    validation, the fit/score contract. Derive from one of the kinds, not from this."""

    name: ClassVar[str]
    # the poisoning this detector is built to see; the conformance suite plants it
    detects: ClassVar[str]
    # "row": one conformal p-value per row; "batch": p-values of groups of rows, already
    # corrected for the batch's many groups (the policy's BH step must not count a group twice)
    pvalue_scope: ClassVar[str] = "row"
    # a row's score depends on that row alone, so a batch may be scored in chunks (and the
    # conformance suite checks that it may); False for detectors that compare batch rows
    chunkable: ClassVar[bool] = True
    # parameter -> Interval, or a tuple of allowed values
    _parameter_constraints: ClassVar[dict[str, Any]] = {}

    @classmethod
    def _get_param_names(cls) -> list[str]:
        """The parameters: ``__init__``'s arguments, in their order (as scikit-learn reads them)."""
        if cls.__init__ is object.__init__:
            return []
        arguments = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
        for argument in arguments:
            if argument.kind in (argument.VAR_POSITIONAL, argument.VAR_KEYWORD):
                # *args/**kwargs hide the parameters from get_params, so clone would lose them
                raise InvalidParameter(
                    f"{cls.__name__}.__init__ takes {argument}; a detector must name each of its "
                    "parameters as a keyword-only argument (see docs/detectors.md)."
                )
        return [argument.name for argument in arguments]

    def get_params(self) -> dict[str, Any]:
        """``{parameter: value}``: what ``__init__`` was given (or ``set_params`` set)."""
        return {key: getattr(self, key) for key in self._get_param_names()}

    @classmethod
    def _check_param_names(cls, params: dict[str, Any]) -> None:
        valid = cls._get_param_names()
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise InvalidParameter(
                f"{cls.__name__} has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are: {', '.join(valid) or 'none'}."
            )

    def set_params(self, **params: Any) -> Self:
        """Set parameters by name; returns ``self``. Their values are validated by ``fit``."""
        self._check_param_names(params)
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        changed = []
        for key, argument in inspect.signature(type(self).__init__).parameters.items():
            # by repr: a parameter may be a value whose == is not a bool (an array)
            if key != "self" and hasattr(self, key) and repr(getattr(self, key)) != repr(argument.default):
                changed.append(f"{key}={getattr(self, key)!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def _validate_params(self) -> None:
        for key, constraint in self._parameter_constraints.items():
            value = getattr(self, key)
            ok = constraint.accepts(value) if isinstance(constraint, Interval) else value in constraint
            if not ok:
                expected = (
                    constraint.describe()
                    if isinstance(constraint, Interval)
                    else "one of " + ", ".join(map(repr, constraint))
                )
                raise InvalidParameter(f"The {key!r} parameter of {type(self).__name__} must be {expected}. Got {value!r}.")

    def fit(self, reference: pd.DataFrame, spec: FeatureSpec, holdout: pd.DataFrame | None = None) -> Self:
        """Learn from trusted rows; returns ``self``. ``holdout`` is a trusted validation set that
        detectors judging a row by its effect on a model (RONI) measure against; the others ignore it."""
        self._validate_params()
        if len(reference) == 0:
            raise PoisonguardError(f"{type(self).__name__} cannot fit on an empty reference.")
        self._fit(reference, spec, holdout)
        self.spec_ = spec
        return self

    def score(self, batch: pd.DataFrame, explain: bool = True) -> pd.DataFrame:
        """Score every batch row; returns a frame with ``SCORE_COLUMNS``, one row per batch row.

        A reason is given for each row with p ≤ ``REASON_PVALUE``: half the rows of any batch.
        ``explain=False`` (row-scoped detectors) leaves every reason "" for a scan to ask for the
        few rows it holds (``score`` of those rows alone gives the same reasons), since the
        strings for half of 10^6 rows are most of what scoring them keeps.
        """
        self._check_fitted()
        if not self.chunkable:
            return self.score_summary(self.summarise(batch), lambda positions: batch.iloc[positions])
        result = self._score(batch, explain)
        result.insert(0, ROW_NUMBER, batch[ROW_NUMBER].to_numpy())
        if CELL_COLUMN not in result:
            result[CELL_COLUMN] = 0
        return result[[*SCORE_COLUMNS, CELL_COLUMN]].reset_index(drop=True)

    def poison_model(self) -> PoisonModel | None:
        """A row-scoped detector's ``PoisonModel`` for the batch verdict; None: not a kind of
        its own (the verdict leaves the detector out)."""
        return None

    def summarise(self, chunk: pd.DataFrame) -> Summary:
        """A batch-scoped detector's state of each row of ``chunk``: what ``score_summary`` scores
        the batch from once every chunk has been summarised."""
        self._check_fitted()
        parts = [
            {
                ROW_NUMBER: chunk[ROW_NUMBER].to_numpy()[start : start + SUMMARY_SLICE_ROWS],
                **self._summarise(chunk.iloc[start : start + SUMMARY_SLICE_ROWS]),
            }
            for start in range(0, len(chunk), SUMMARY_SLICE_ROWS)
        ]
        return concat_summaries(parts) if parts else {ROW_NUMBER: chunk[ROW_NUMBER].to_numpy()}

    def score_summary(self, summary: Summary, fetch: RowFetch) -> pd.DataFrame:
        """``score`` of the summarised batch; ``fetch`` returns the batch rows at given positions,
        for the few rows a detector must see whole (near-copies, to measure their distances)."""
        self._check_fitted()
        rows = summary[ROW_NUMBER]
        if len(rows) == 0:
            result = pd.DataFrame(
                {
                    "score": np.zeros(0),
                    "calibrated": np.zeros(0),
                    "flagged": np.zeros(0, bool),
                    "reason": np.zeros(0, object),
                    "group": np.zeros(0, "int64"),
                    "group_expected": np.zeros(0),
                }
            )
        else:
            result = self._score_summary(summary, fetch)
        result.insert(0, ROW_NUMBER, rows)
        if self.pvalue_scope == "row":
            if CELL_COLUMN not in result:
                result[CELL_COLUMN] = 0
            return result[[*SCORE_COLUMNS, CELL_COLUMN]].reset_index(drop=True)
        return result[SCORE_COLUMNS + GROUP_COLUMNS].reset_index(drop=True)

    def _check_fitted(self) -> None:
        if not hasattr(self, "spec_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet: call fit(reference, spec) first.")

    @abstractmethod
    def _fit(self, reference: pd.DataFrame, spec: FeatureSpec, holdout: pd.DataFrame | None) -> None:
        """Learn from the trusted rows (``holdout``: see ``fit``); store what is learned in
        attributes ending in ``_``."""

    # Which of these a detector implements is its kind's to say (RowDetector, GroupDetector);
    # they are declared here too so that code holding any Detector type-checks.
    def _score(self, batch: pd.DataFrame, explain: bool) -> pd.DataFrame:
        """Row-scoped detectors: ``score``, ``calibrated``, ``flagged``, ``reason`` in batch order
        (reasons "" throughout unless ``explain``)."""
        raise NotImplementedError(f"{type(self).__name__} is row-scoped and must implement _score.")

    def _summarise(self, chunk: pd.DataFrame) -> Summary:
        """Batch-scoped detectors: the state of each row of ``chunk`` (ROW_NUMBER is added)."""
        raise NotImplementedError(f"{type(self).__name__} is batch-scoped and must implement _summarise.")

    def _score_summary(self, summary: Summary, fetch: RowFetch) -> pd.DataFrame:
        """Batch-scoped detectors: what ``_score`` returns, for the summarised (non-empty) batch."""
        raise NotImplementedError(f"{type(self).__name__} is batch-scoped and must implement _score_summary.")


class RowDetector(Detector):
    """A detector whose score of a row depends on that row alone, so a batch may be scored in any
    chunks: implement ``_fit`` and ``_score``. Each row gets its own conformal p-value, which
    the quarantine policy fuses with the other row detectors' (``pvalue_scope = "row"``)."""

    pvalue_scope: ClassVar[str] = "row"
    chunkable: ClassVar[bool] = True

    @abstractmethod
    def _score(self, batch: pd.DataFrame, explain: bool) -> pd.DataFrame:
        """``score``, ``calibrated``, ``flagged``, ``reason`` (and optionally ``cell``) for each
        row of ``batch``, in its order; reasons "" throughout unless ``explain``."""


class GroupDetector(Detector):
    """A detector that compares batch rows with each other (copies, shared triggers): implement
    ``_fit``, ``_summarise`` (a few numbers per row, from any chunk) and ``_score_summary`` (the
    whole batch's scores from the concatenated summaries). Its p-values are of groups of rows,
    already corrected for the batch's many groups (``pvalue_scope = "batch"``); a detector that
    needs the whole batch yet gives each row its own p-value (RONI) says ``"row"``."""

    pvalue_scope: ClassVar[str] = "batch"
    chunkable: ClassVar[bool] = False

    @abstractmethod
    def _summarise(self, chunk: pd.DataFrame) -> Summary:
        """The state of each row of ``chunk`` as arrays over its rows (ROW_NUMBER is added)."""

    @abstractmethod
    def _score_summary(self, summary: Summary, fetch: RowFetch) -> pd.DataFrame:
        """What ``RowDetector._score`` returns, plus ``group`` and ``group_expected`` when
        ``pvalue_scope`` is "batch", for the summarised (non-empty) batch; ``fetch(positions)``
        returns those batch rows, for the few that must be seen whole."""


D = TypeVar("D", bound=Detector)


def clone(detector: D) -> D:
    """An unfitted detector of the same class with the same parameters (copies of them)."""
    return type(detector)(**copy.deepcopy(detector.get_params()))


def class_codes(frame: pd.DataFrame, label: str, classes) -> np.ndarray:
    """Each row's label as an index into ``classes``; -1 where it is none of them. A missing
    label reads as "", and a frame without the label column is -1 throughout."""
    if label not in frame.columns:
        return np.full(len(frame), -1, dtype="int64")
    labels = frame[label]
    text = labels.astype(object).where(labels.notna(), "").astype(str)
    return pd.Index(classes).get_indexer(text).astype("int64")


def concat_summaries(parts: list[Summary]) -> Summary:
    """The summary of consecutive chunks, from theirs (an empty chunk's holds its ROW_NUMBER only)."""
    filled = [part for part in parts if len(part[ROW_NUMBER])] or parts[:1]
    return {key: np.concatenate([part[key] for part in filled]) for key in filled[0]}


def conformal_pvalues(calibration_scores: np.ndarray, scores: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """p = (#{trusted > s} + u·(#{trusted = s} + 1)) / (n + 1): the share of trusted rows at least
    this suspect, ties broken by ``tiebreak`` u in (0, 1] (``row_tiebreaks``).

    Valid when the calibration scores come from trusted rows the model did not fit on. Without a
    tiebreak (u = 1) a tie counts against the row: conservative, and on discrete data (many rows
    with the same score) far from uniform, which a test of the batch as a whole cannot use. With
    a uniform u the p-values of exchangeable rows are exactly uniform, ties or not.
    """
    calibration = np.sort(np.asarray(calibration_scores, dtype="float64"))
    scores = np.asarray(scores, dtype="float64")
    n = len(calibration)
    above = n - np.searchsorted(calibration, scores, side="right")
    if tiebreak is None:
        return (1.0 + n - np.searchsorted(calibration, scores, side="left")) / (n + 1.0)
    tied = n - above - np.searchsorted(calibration, scores, side="left")
    return (above + np.asarray(tiebreak, dtype="float64") * (tied + 1.0)) / (n + 1.0)


def fold_of_rows(frame: pd.DataFrame, columns: list[str], folds: int, seed: int = 0) -> np.ndarray:
    """A fold for each row, drawn from its values in ``columns`` (equal rows, equal folds)."""
    return np.minimum((row_tiebreaks(frame, columns, seed) * folds).astype("int64"), folds - 1)


def row_tiebreaks(frame: pd.DataFrame, columns: list[str], seed: int = 0) -> np.ndarray:
    """A number in (0, 1] per row that looks uniform and depends only on the row's values in
    ``columns`` (and the seed): equal rows get equal tiebreaks, so copies share a decision, and
    a row gets the same one in any chunk of any batch."""
    present = [c for c in columns if c in frame.columns]
    if not len(frame):
        return np.zeros(0)
    hashed = (
        pd.util.hash_pandas_object(frame[present], index=False, hash_key=f"poisonguard{seed:05d}"[:16])
        if present
        else pd.Series(np.zeros(len(frame), dtype=np.uint64))
    )
    bits = hashed.to_numpy(dtype=np.uint64) >> np.uint64(11)  # 53 bits: exact in a float64
    return (bits.astype("float64") + 1.0) / float(1 << 53)
