"""The maths of each detector and of calibration, on small planted cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.detectors.base import FeatureSpec, conformal_pvalues
from pipeline.detectors.outliers import FeatureOutlier
from pipeline.io import ROW_NUMBER


def test_conformal_pvalue_counts_trusted_scores_at_least_as_extreme():
    calibration = np.array([1.0, 2.0, 3.0, 4.0])
    p = conformal_pvalues(calibration, np.array([0.0, 2.0, 4.0, 5.0]))
    np.testing.assert_allclose(p, [5 / 5, 4 / 5, 2 / 5, 1 / 5])


def test_conformal_pvalues_are_uniform_on_exchangeable_scores():
    rng = np.random.default_rng(0)
    p = conformal_pvalues(rng.normal(size=2000), rng.normal(size=20000))
    assert abs((p <= 0.01).mean() - 0.01) < 0.004
    assert abs((p <= 0.10).mean() - 0.10) < 0.01


def _frame(values: np.ndarray, labels: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(values, columns=["x", "y"])
    frame["label"] = labels
    frame[ROW_NUMBER] = range(len(frame))
    return frame


def test_outliers_are_judged_against_their_own_class():
    """A row typical of class B but labelled A is unusual for A: per-class models see it."""
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, size=(400, 2))
    b = rng.normal(8.0, 1.0, size=(400, 2))
    reference = _frame(np.vstack([a, b]), ["A"] * 400 + ["B"] * 400)
    batch = _frame(np.array([[8.0, 8.0], [0.0, 0.0]]), ["A", "A"])
    spec = FeatureSpec(label="label", numeric=("x", "y"), categorical=())
    per_class = FeatureOutlier(per_class=True).fit(reference, spec).score(batch)
    pooled = FeatureOutlier(per_class=False).fit(reference, spec).score(batch)
    assert per_class["flagged"].tolist() == [True, False]
    assert not pooled["flagged"].iloc[0]
    assert "labelled 'A'" in per_class["reason"].iloc[0]


def test_outlier_reason_names_the_most_unusual_feature():
    rng = np.random.default_rng(2)
    reference = _frame(rng.normal(size=(500, 2)), ["A"] * 500)
    batch = _frame(np.array([[0.0, 25.0]]), ["A"])
    spec = FeatureSpec(label="label", numeric=("x", "y"), categorical=())
    result = FeatureOutlier().fit(reference, spec).score(batch)
    assert result["flagged"].iloc[0]
    assert "most unusual: y=25" in result["reason"].iloc[0]


def test_unknown_label_falls_back_to_the_model_over_all_classes():
    rng = np.random.default_rng(3)
    reference = _frame(rng.normal(size=(300, 2)), ["A"] * 300)
    batch = _frame(np.array([[0.1, 0.0], [30.0, 30.0]]), ["never-seen", None])
    spec = FeatureSpec(label="label", numeric=("x", "y"), categorical=())
    result = FeatureOutlier().fit(reference, spec).score(batch)
    assert result["flagged"].tolist() == [False, True]
    assert "all trusted rows" in result["reason"].iloc[1]


@pytest.mark.parametrize("method", ["iforest", "hbos", "ecod"])
def test_every_pyod_method_flags_a_far_outlier(method):
    rng = np.random.default_rng(4)
    reference = _frame(rng.normal(size=(500, 2)), ["A"] * 500)
    batch = _frame(np.array([[0.0, 0.0], [12.0, -12.0]]), ["A", "A"])
    spec = FeatureSpec(label="label", numeric=("x", "y"), categorical=())
    result = FeatureOutlier(method=method).fit(reference, spec).score(batch)
    assert result["flagged"].tolist() == [False, True]
