"""One conformance suite over every registered detector (the contract in pipeline/detectors/base.py).

Each detector's own tests cover only its maths; this file covers the contract, so adding a
detector to the registry puts it under every check here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from pipeline.detectors import DETECTORS, SCORE_COLUMNS, FeatureSpec
from pipeline.detectors.base import CELL_COLUMN, GROUP_COLUMNS, InvalidParameter, concat_summaries
from pipeline.io import ROW_NUMBER


@pytest.fixture(scope="module")
def planted():
    """HMDA-shaped synthetic data: two overlapping classes over six numeric and two categorical
    features, a trusted reference and holdout, and a batch with the poisons of every kind a
    registered detector claims to see: 12 far-off rows ("outlier"), 12 flipped labels deep
    inside the other class ("label_flip"), and appended after them 12 rows with x0 in its top
    0.5 % and x1 in its bottom 0.5 %, all labelled 'yes' ("backdoor"), and 15 jittered copies of
    one row with its label flipped ("duplicate_flood")."""
    rng = np.random.default_rng(7)

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
    truth = {"outlier": np.isin(rows, outliers), "label_flip": np.isin(rows, flips),
             "backdoor": (rows >= n) & (rows < n + 12), "duplicate_flood": rows >= n + 12}
    return reference, holdout, batch, spec, truth


@pytest.fixture(scope="module")
def fitted(planted):
    """Each detector fitted once on the planted reference, with its scores of the planted batch:
    the checks below that only read a fitted detector share it (a fit of the outliers detector
    is seconds), so they also check that scoring it again and again changes nothing."""
    reference, holdout, batch, spec, _ = planted
    done = {}

    def fit(name: str):
        if name not in done:
            detector = DETECTORS[name]()
            returned = detector.fit(reference, spec, holdout)
            done[name] = (detector, returned, detector.score(batch))
        return done[name]

    return fit


def _ids(name: str, check: str) -> str:
    return f"{name}:{check}"


CHECKS = ["score_before_fit_raises", "fit_returns_self", "one_result_per_row", "calibrated_in_unit_interval",
          "score_does_not_mutate", "refit_is_deterministic", "rejects_bad_parameter", "beats_chance_on_planted",
          "scores_ignore_chunking"]


@pytest.mark.parametrize("name,check", [(n, c) for n in DETECTORS for c in CHECKS],
                         ids=[_ids(n, c) for n in DETECTORS for c in CHECKS])
def test_detector_contract(name, check, planted, fitted):
    reference, holdout, batch, spec, truth = planted
    cls = DETECTORS[name]
    detector = cls()
    if check == "score_before_fit_raises":
        with pytest.raises(NotFittedError):
            detector.score(batch)
        return
    if check == "rejects_bad_parameter":
        key = next(iter(cls._parameter_constraints))
        setattr(detector, key, object())
        with pytest.raises(InvalidParameter, match=f"The '{key}' parameter of {cls.__name__} must be"):
            detector.fit(reference, spec, holdout)
        return
    detector, returned, result = fitted(name)
    if check == "fit_returns_self":
        assert returned is detector
        return
    if check == "one_result_per_row":
        # a group detector also says each row's group and how many of its rows the trusted rate
        # explains; a row-scoped one, the calibration cell behind each p-value (-1: not tested)
        extra = GROUP_COLUMNS if cls.pvalue_scope == "batch" else [CELL_COLUMN]
        assert list(result.columns) == SCORE_COLUMNS + extra
        assert list(result[ROW_NUMBER]) == list(batch[ROW_NUMBER])
    elif check == "calibrated_in_unit_interval":
        assert result["calibrated"].between(0.0, 1.0).all()
        assert result["flagged"].dtype == bool
        assert (result.loc[result["flagged"], "reason"].str.len() > 0).all()
    elif check == "score_does_not_mutate":
        params = detector.get_params()
        state = {k: v for k, v in vars(detector).items() if k.endswith("_")}
        again = detector.score(batch)
        pd.testing.assert_frame_equal(result, again)
        assert detector.get_params() == params
        assert {k for k in vars(detector) if k.endswith("_")} == set(state)
    elif check == "refit_is_deterministic":
        other = cls().fit(reference, spec, holdout).score(batch)
        pd.testing.assert_frame_equal(result, other)
    elif check == "scores_ignore_chunking":
        # score_in_chunks relies on this: a row-scoped detector's score of a row is its own, and a
        # batch-scoped one's summaries of chunks make the whole batch's
        chunks = [batch.iloc[start:start + 37] for start in range(0, len(batch), 37)]
        if cls.chunkable:
            pieces = pd.concat([detector.score(chunk) for chunk in chunks], ignore_index=True)
        else:
            fetched = []

            def fetch(positions):
                fetched.append(len(positions))
                return batch.iloc[positions]

            pieces = detector.score_summary(concat_summaries([detector.summarise(chunk) for chunk in chunks]), fetch)
            assert sum(fetched) < len(batch) / 2, "a summary must not need the batch fetched back"
        pd.testing.assert_frame_equal(result, pieces)
    elif check == "beats_chance_on_planted":
        target = truth[cls.detects]
        clean = ~np.logical_or.reduce(list(truth.values()))
        scores, flagged = result["score"].to_numpy(), result["flagged"].to_numpy()
        assert roc_auc_score(target[target | clean], scores[target | clean]) > 0.9
        assert flagged[target].mean() >= 0.75
        assert flagged[clean].mean() <= 0.05
