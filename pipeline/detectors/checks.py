"""The conformance suite every detector passes: ``check_detector(MyDetector)``.

It runs a detector through the contract in ``pipeline/detectors/base.py`` (as scikit-learn's
``check_estimator`` does an estimator) on a small synthetic data set with every kind of poison
planted (``planted_data``): parameters, fit, the shape and range of the scores, scoring that
never learns from the batch, chunked scoring, and that the detector ranks the poison it claims
to see (its ``detects``) above clean rows. Every check runs and every failure is reported, one
line each, in one ``DetectorCheckFailed``.

>>> check_detector(FeatureOutlier)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import joblib
import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from pipeline.detectors.base import (
    CELL_COLUMN,
    GROUP_COLUMNS,
    REASON_PVALUE,
    SCORE_COLUMNS,
    Detector,
    FeatureSpec,
    GroupDetector,
    InvalidParameter,
    RowDetector,
    clone,
    concat_summaries,
)
from pipeline.io import ROW_NUMBER

# The planted detection task's bar: a detector ranks its poison this far above clean rows, flags
# at least this share of it, and flags at most this share of clean rows (alpha is 0.01 by default).
MIN_AUROC = 0.9
MIN_RECALL = 0.75
MAX_FALSE_FLAGS = 0.05
# A batch-scoped detector scores from summaries: fetching back half the batch would be holding it.
MAX_FETCHED_SHARE = 0.5
CHUNK_ROWS = 37  # not a divisor of the batch: the last chunk is short


class DetectorCheckFailed(AssertionError):
    """A detector broke its contract; the message has a line per failed check."""


@dataclass(frozen=True)
class PlantedData:
    """Trusted ``reference`` and ``holdout`` rows, a ``batch`` with poison planted, its ``spec``,
    and ``truth[kind]``: which batch rows hold poison of that kind (a detector's ``detects``)."""

    reference: pd.DataFrame
    holdout: pd.DataFrame
    batch: pd.DataFrame
    spec: FeatureSpec
    truth: dict[str, np.ndarray]

    def copy(self) -> PlantedData:
        return PlantedData(
            self.reference.copy(),
            self.holdout.copy(),
            self.batch.copy(),
            self.spec,
            {kind: rows.copy() for kind, rows in self.truth.items()},
        )


def planted_data(seed: int = 7) -> PlantedData:
    """HMDA-shaped synthetic data: two overlapping classes over six numeric and two categorical
    features, a trusted reference (1,200 rows) and holdout (400), and a batch (240 rows) with the
    poisons of every kind the verdict knows: 12 far-off rows ("outlier"), 12 flipped labels deep
    inside the other class ("label_flip"), and appended after them 12 rows with x0 in its top
    0.5 % and x1 in its bottom 0.5 %, all labelled 'yes' ("backdoor"), and 15 jittered copies of
    one row with its label flipped ("duplicate_flood")."""
    rng = np.random.default_rng(seed)

    def draw(n: int) -> pd.DataFrame:
        label = rng.random(n) < 0.3
        centre = np.where(label[:, None], 1.5, -1.5)
        numeric = rng.normal(size=(n, 6)) + centre
        frame = pd.DataFrame(numeric, columns=[f"x{i}" for i in range(6)])
        frame["colour"] = rng.choice(["red", "green", "blue"], size=n)
        frame["flag"] = np.where(rng.random(n) < 0.5, "yes", "no")
        frame["label"] = np.where(label, "yes", "no")
        frame[ROW_NUMBER] = range(n)
        return frame

    reference, holdout, batch = draw(1200), draw(400), draw(240)
    order = rng.permutation(len(batch))
    outliers, flips = order[:12], order[12:24]
    batch.loc[outliers, ["x0", "x1", "x2"]] = rng.uniform(9.0, 12.0, size=(12, 3))
    confident = batch.index[order[12:24]]
    batch.loc[confident, "label"] = np.where(batch.loc[confident, "label"] == "yes", "no", "yes")
    backdoor = batch.loc[order[24:36]].copy()
    backdoor["x0"] = reference["x0"].quantile(0.995)
    backdoor["x1"] = reference["x1"].quantile(0.005)
    backdoor["label"] = "yes"
    flood = batch.loc[[order[36]] * 15].copy()
    flood[["x2", "x3", "x4", "x5"]] += rng.normal(0.0, 0.005, size=(15, 4))
    flood["label"] = "yes" if flood["label"].iloc[0] == "no" else "no"
    n = len(batch)
    batch = pd.concat([batch, backdoor, flood], ignore_index=True)
    batch[ROW_NUMBER] = range(len(batch))
    spec = FeatureSpec(label="label", numeric=tuple(f"x{i}" for i in range(6)), categorical=("colour", "flag"))
    rows = np.arange(len(batch))
    truth = {
        "outlier": np.isin(rows, outliers),
        "label_flip": np.isin(rows, flips),
        "backdoor": (rows >= n) & (rows < n + 12),
        "duplicate_flood": rows >= n + 12,
    }
    return PlantedData(reference, holdout, batch, spec, truth)


class Trial:
    """One detector under check: its class and parameters, the data, and one fit (with its
    scores of the batch) that the checks which only read a fitted detector share: a fit can take
    seconds, and sharing it also checks that scoring again and again changes nothing."""

    def __init__(self, detector: type[Detector] | Detector, data: PlantedData | None = None) -> None:
        self.cls = detector if isinstance(detector, type) else type(detector)
        self.params = {} if isinstance(detector, type) else detector.get_params()
        self.data = data if data is not None else planted_data()
        self._pristine = self.data.copy()

    def new(self) -> Detector:
        return self.cls(**copy.deepcopy(self.params))

    @functools.cached_property
    def fitted(self) -> tuple[Detector, Detector, pd.DataFrame]:
        """(the detector, what its ``fit`` returned, its scores of the batch)."""
        data = self.data
        detector = self.new()
        returned = detector.fit(data.reference, data.spec, data.holdout)
        return detector, returned, detector.score(data.batch)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise DetectorCheckFailed(message)


def check_kind_is_declared(trial: Trial) -> None:
    cls = trial.cls
    kinds = [kind for kind in (RowDetector, GroupDetector) if issubclass(cls, kind)]
    _require(len(kinds) == 1, f"{cls.__name__} must derive from exactly one of RowDetector and GroupDetector.")
    _require(
        isinstance(getattr(cls, "name", None), str) and isinstance(getattr(cls, "detects", None), str),
        f"{cls.__name__} must declare its registry name (name = 'my_detector') and the poisoning it sees "
        "(detects = 'outlier', 'label_flip', 'backdoor' or 'duplicate_flood').",
    )
    _require(
        cls.chunkable == (kinds[0] is RowDetector),
        f"{cls.__name__} sets chunkable={cls.chunkable}, which its kind ({kinds[0].__name__}) decides; remove it.",
    )
    allowed = ("row",) if kinds[0] is RowDetector else ("row", "batch")
    _require(cls.pvalue_scope in allowed, f"{cls.__name__}.pvalue_scope must be one of {allowed}; got {cls.pvalue_scope!r}.")


def check_params_are_keyword_only(trial: Trial) -> None:
    signature = inspect.signature(trial.cls.__init__)
    positional = [
        name for name, p in signature.parameters.items() if name != "self" and p.kind is not inspect.Parameter.KEYWORD_ONLY
    ]
    _require(
        not positional,
        f"{trial.cls.__name__}.__init__ must take its parameters as keyword-only arguments "
        f"with defaults (def __init__(self, *, ...)); these are not: {', '.join(positional)}.",
    )
    missing = [name for name, p in signature.parameters.items() if name != "self" and p.default is inspect.Parameter.empty]
    _require(
        not missing,
        f"{trial.cls.__name__}.__init__ must give every parameter a default; these have none: {', '.join(missing)}.",
    )


def check_params_match_constraints(trial: Trial) -> None:
    names, declared = set(trial.cls._get_param_names()), set(trial.cls._parameter_constraints)
    _require(
        names == declared,
        f"{trial.cls.__name__}._parameter_constraints must declare the limits of exactly "
        f"the parameters of __init__: undeclared {sorted(names - declared)}, not "
        f"parameters {sorted(declared - names)}.",
    )


def check_init_stores_params(trial: Trial) -> None:
    # clone and set_params rely on it: __init__ stores what it is given, unchanged, nothing else
    given = {name: object() for name in trial.cls._get_param_names()}
    detector = trial.cls(**given)
    changed = [name for name, value in given.items() if getattr(detector, name, None) is not value]
    _require(
        not changed,
        f"{trial.cls.__name__}.__init__ must store each parameter unchanged under its own name "
        f"(validate in fit); it does not for: {', '.join(changed)}.",
    )
    learned = [key for key in vars(detector) if key.endswith("_")]
    _require(
        not learned,
        f"{trial.cls.__name__}.__init__ sets {', '.join(learned)}: state ending in '_' is learned "
        "by fit, and its presence is what marks a detector fitted.",
    )


def check_params_round_trip(trial: Trial) -> None:
    detector = trial.new()
    params = detector.get_params()
    _require(set(params) == set(trial.cls._get_param_names()), "get_params must return every parameter of __init__.")
    copied = clone(detector)
    _require(
        type(copied) is trial.cls and copied is not detector and repr(copied.get_params()) == repr(params),
        "clone(detector) must give a new detector of the same class with the same parameters.",
    )
    _require(
        detector.set_params(**params) is detector and repr(detector.get_params()) == repr(params),
        "set_params(**get_params()) must return the detector unchanged.",
    )
    try:
        detector.set_params(no_such_parameter=1)
    except InvalidParameter as error:
        _require(all(name in str(error) for name in params), "set_params' error must list the valid parameters.")
    else:
        raise DetectorCheckFailed("set_params(no_such_parameter=1) must raise InvalidParameter.")
    fitted = clone(trial.fitted[0])
    _require(not any(key.endswith("_") for key in vars(fitted)), "clone of a fitted detector must be unfitted.")


def check_rejects_bad_parameter(trial: Trial) -> None:
    if not trial.cls._parameter_constraints:
        return
    key = next(iter(trial.cls._parameter_constraints))
    detector = trial.new().set_params(**{key: object()})
    data = trial.data
    try:
        detector.fit(data.reference, data.spec, data.holdout)
    except InvalidParameter as error:
        expected = f"The '{key}' parameter of {trial.cls.__name__} must be"
        _require(str(error).startswith(expected), f"a bad parameter's error must read {expected!r} ...; got {error}")
    else:
        raise DetectorCheckFailed(
            f"fit with {key}=object() must raise InvalidParameter (declare the limits of "
            "every parameter in _parameter_constraints)."
        )


def check_score_before_fit_raises(trial: Trial) -> None:
    try:
        trial.new().score(trial.data.batch)
    except NotFittedError:
        return
    raise DetectorCheckFailed("score before fit must raise NotFittedError (Detector.score does, unless overridden).")


def check_fit_returns_self(trial: Trial) -> None:
    detector, returned, _ = trial.fitted
    _require(returned is detector, "fit must return self.")


def check_one_result_per_row(trial: Trial) -> None:
    detector, _, result = trial.fitted
    # a group detector also says each row's group and how many of its rows the trusted rate
    # explains; a row-scoped one, the calibration cell behind each p-value (-1: not tested)
    extra = GROUP_COLUMNS if detector.pvalue_scope == "batch" else [CELL_COLUMN]
    _require(
        list(result.columns) == SCORE_COLUMNS + extra,
        f"score must return the columns {SCORE_COLUMNS + extra}; got {list(result.columns)}.",
    )
    _require(
        list(result[ROW_NUMBER]) == list(trial.data.batch[ROW_NUMBER]),
        "score must return one row per batch row, in the batch's order, with its row_number.",
    )


def check_calibrated_in_unit_interval(trial: Trial) -> None:
    _, _, result = trial.fitted
    _require(bool(result["calibrated"].between(0.0, 1.0).all()), "calibrated must be in [0, 1] (1 - a p-value).")
    _require(result["flagged"].dtype == bool, f"flagged must be bool; got {result['flagged'].dtype}.")


def check_reasons_for_low_pvalues(trial: Trial) -> None:
    # The policy fuses row p-values and may hold a row no detector flags on its own, so each
    # row p-value up to REASON_PVALUE needs a reason; a group detector's rows are held only when
    # it flags them.
    detector, _, result = trial.fitted
    needs = np.array(result["flagged"], dtype=bool)
    if detector.pvalue_scope == "row":
        needs |= (1.0 - result["calibrated"] <= REASON_PVALUE).to_numpy()
    missing = result.loc[needs & (result["reason"].astype(str).str.len() == 0).to_numpy(), ROW_NUMBER]
    what = "row" if detector.pvalue_scope == "batch" else f"row and every row with p-value <= {REASON_PVALUE}"
    _require(
        missing.empty,
        f"every flagged {what} needs a reason (score(batch) explains by default); "
        f"{len(missing)} have none, e.g. row {missing.iloc[0] if len(missing) else ''}.",
    )


def _snapshot(value: object, depth: int = 3) -> object:
    """What scoring must leave as it is: every array and frame's content, every container's
    items, and which object each attribute holds. A fitted model inside is compared by identity:
    its own bookkeeping may change when it is queried (a scikit-learn KD-tree counts its calls)."""
    if isinstance(value, (np.ndarray, pd.DataFrame, pd.Series, pd.Index)):
        return joblib.hash(value)
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        return repr(value)  # a NaN equals its repr, not itself
    if depth and isinstance(value, dict):
        return {key: _snapshot(item, depth - 1) for key, item in value.items()}
    if depth and isinstance(value, (list, tuple)):
        return [_snapshot(item, depth - 1) for item in value]
    return id(value)


def check_score_does_not_mutate(trial: Trial) -> None:
    detector, _, result = trial.fitted
    params, state = repr(detector.get_params()), _snapshot(vars(detector))
    again = detector.score(trial.data.batch)
    pd.testing.assert_frame_equal(result, again, obj="a second score of the same batch")
    _require(
        repr(detector.get_params()) == params and _snapshot(vars(detector)) == state,
        "score must not write to the detector (its parameters, its attributes, the arrays they hold): it "
        "never learns from the batch.",
    )


def check_inputs_left_unchanged(trial: Trial) -> None:
    trial.fitted  # noqa: B018  (the fit and score whose effect on the data is checked)
    for part in ("reference", "holdout", "batch"):
        pd.testing.assert_frame_equal(
            getattr(trial.data, part),
            getattr(trial._pristine, part),
            obj=f"the {part} after fit and score (they must not modify their input)",
        )


def check_refit_is_deterministic(trial: Trial) -> None:
    data = trial.data
    other = trial.new().fit(data.reference, data.spec, data.holdout).score(data.batch)
    pd.testing.assert_frame_equal(trial.fitted[2], other, obj="the scores of a second fit (seed every random choice)")


def check_scores_ignore_chunking(trial: Trial) -> None:
    # score_in_chunks relies on this: a row detector's score of a row is its own, and a group
    # detector's summaries of chunks make the whole batch's
    detector, _, result = trial.fitted
    batch = trial.data.batch
    chunks = [batch.iloc[start : start + CHUNK_ROWS] for start in range(0, len(batch), CHUNK_ROWS)]
    if detector.chunkable:
        pieces = pd.concat([detector.score(chunk) for chunk in chunks], ignore_index=True)
    else:
        fetched = []

        def fetch(positions: np.ndarray) -> pd.DataFrame:
            fetched.append(len(positions))
            return batch.iloc[positions]

        pieces = detector.score_summary(concat_summaries([detector.summarise(chunk) for chunk in chunks]), fetch)
        _require(sum(fetched) < len(batch) * MAX_FETCHED_SHARE, "a summary must not need the batch fetched back.")
    pd.testing.assert_frame_equal(result, pieces, obj=f"the scores of the batch in chunks of {CHUNK_ROWS} rows")


def check_beats_chance_on_planted(trial: Trial) -> None:
    detector, _, result = trial.fitted
    truth = trial.data.truth
    _require(
        detector.detects in truth,
        f"{trial.cls.__name__}.detects is {detector.detects!r}, which the planted data "
        f"has none of ({', '.join(truth)}); pass check_detector data= with truth for it.",
    )
    target = truth[detector.detects]
    clean = ~np.logical_or.reduce(list(truth.values()))
    scores, flagged = result["score"].to_numpy(), result["flagged"].to_numpy()
    auroc = roc_auc_score(target[target | clean], scores[target | clean])
    _require(
        auroc > MIN_AUROC,
        f"the planted {detector.detects} rows must score above clean rows: AUROC {auroc:.2f}, needs > {MIN_AUROC}.",
    )
    _require(
        flagged[target].mean() >= MIN_RECALL,
        f"flags {flagged[target].mean():.0%} of the planted {detector.detects} rows; needs >= {MIN_RECALL:.0%}.",
    )
    _require(
        flagged[clean].mean() <= MAX_FALSE_FLAGS,
        f"flags {flagged[clean].mean():.1%} of clean rows; needs <= {MAX_FALSE_FLAGS:.0%}.",
    )


# name -> check, in the order check_detector runs them: the class's declarations first, then
# those that fit.
CHECKS: dict[str, Callable[[Trial], None]] = {
    "kind_is_declared": check_kind_is_declared,
    "params_are_keyword_only": check_params_are_keyword_only,
    "params_match_constraints": check_params_match_constraints,
    "init_stores_params": check_init_stores_params,
    "score_before_fit_raises": check_score_before_fit_raises,
    "rejects_bad_parameter": check_rejects_bad_parameter,
    "fit_returns_self": check_fit_returns_self,
    "one_result_per_row": check_one_result_per_row,
    "calibrated_in_unit_interval": check_calibrated_in_unit_interval,
    "reasons_for_low_pvalues": check_reasons_for_low_pvalues,
    "score_does_not_mutate": check_score_does_not_mutate,
    "inputs_left_unchanged": check_inputs_left_unchanged,
    "params_round_trip": check_params_round_trip,
    "refit_is_deterministic": check_refit_is_deterministic,
    "scores_ignore_chunking": check_scores_ignore_chunking,
    "beats_chance_on_planted": check_beats_chance_on_planted,
}


def run_check(name: str, trial: Trial) -> None:
    """Run one check of ``CHECKS``; raises ``DetectorCheckFailed`` (or the error the detector raised)."""
    CHECKS[name](trial)


def check_detector(detector: type[Detector] | Detector, data: PlantedData | None = None) -> None:
    """Run every check on ``detector`` (a class: with its default parameters; an instance: with
    its parameters) over ``data`` (default ``planted_data()``); raise ``DetectorCheckFailed``
    naming every check that failed and why. A detector that sees a kind of poison other than
    the planted ones passes ``data`` whose ``truth`` has its kind."""
    trial = Trial(detector, data)
    failures = []
    for name, check in CHECKS.items():
        try:
            check(trial)
        except Exception as error:  # every check runs, and every failure is reported
            text = " ".join(str(error).split()) or type(error).__name__
            failures.append(f"{trial.cls.__name__}:{name}: {type(error).__name__}: {text}")
    if failures:
        raise DetectorCheckFailed(f"{len(failures)} of {len(CHECKS)} checks failed:\n" + "\n".join(failures))
