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


# --- label consistency ---------------------------------------------------------------------------


def _blobs(n_a: int, n_b: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = np.vstack([rng.normal(0.0, 1.0, size=(n_a, 2)), rng.normal(5.0, 1.0, size=(n_b, 2))])
    return _frame(values, ["A"] * n_a + ["B"] * n_b)


def test_label_consistency_flags_a_row_labelled_against_its_neighbourhood():
    from pipeline.detectors.labels import LabelConsistency

    reference = _blobs(400, 400, seed=5)
    batch = _frame(np.array([[0.1, -0.2], [5.1, 4.9], [0.0, 0.3]]), ["B", "B", "A"])
    spec = FeatureSpec(label="label", numeric=("x", "y"), categorical=())
    result = LabelConsistency(n_neighbors=10).fit(reference, spec).score(batch)
    assert result["flagged"].tolist() == [True, False, False]
    assert "label 'B' but 10/10 nearest trusted neighbours and the model" in result["reason"].iloc[0]
    assert "say 'A'" in result["reason"].iloc[0]


def test_per_class_calibration_keeps_minority_rows_from_being_flagged_wholesale():
    """95/5 classes that overlap: kNN sanitisation flags most minority rows; per-class calibration
    compares a minority row with trusted minority rows instead. Marginal calibration holds its
    overall rate too, but spends it on the minority class."""
    from pipeline.detectors.labels import LabelConsistency

    rng = np.random.default_rng(6)

    def draw(n: int) -> pd.DataFrame:
        minority = rng.random(n) < 0.05
        values = rng.normal(size=(n, 2)) + np.where(minority[:, None], 1.0, 0.0)
        return _frame(values, np.where(minority, "B", "A").tolist())

    reference, batch = draw(2000), draw(2000)
    spec = FeatureSpec(label="label", numeric=("x", "y"), categorical=())
    result = LabelConsistency(calibration="per_class").fit(reference, spec).score(batch)
    minority = (batch["label"] == "B").to_numpy()
    assert result["flagged"].to_numpy()[minority].mean() <= 0.05
    assert result["flagged"].mean() <= 0.03
    marginal = LabelConsistency(calibration="marginal").fit(reference, spec).score(batch)
    assert marginal["flagged"].mean() <= 0.02
    assert marginal["flagged"].to_numpy()[minority].mean() > 0.1


def test_marginal_calibration_sees_flips_into_a_noisy_minority_class():
    """The case per-class calibration misses: trusted minority rows are noisy (a fifth of them sit
    deep in the majority's region), so a flip into the minority looks ordinary among them."""
    from pipeline.detectors.labels import LabelConsistency

    rng = np.random.default_rng(11)

    def draw(n: int) -> pd.DataFrame:
        minority = rng.random(n) < 0.1
        centre = np.where(minority & (rng.random(n) < 0.8), 3.0, 0.0)
        return _frame(rng.normal(size=(n, 2)) + centre[:, None], np.where(minority, "B", "A").tolist())

    reference = draw(3000)
    flips = _frame(rng.normal(size=(20, 2)), ["B"] * 20)  # majority-region rows relabelled B
    spec = FeatureSpec(label="label", numeric=("x", "y"), categorical=())
    per_class = LabelConsistency(calibration="per_class").fit(reference, spec).score(flips)
    marginal = LabelConsistency(calibration="marginal").fit(reference, spec).score(flips)
    # trusted rows this inconsistent: a fifth of the B rows, but only 2 % of all rows
    assert np.median(1 - per_class["calibrated"]) > 0.05
    assert np.median(1 - marginal["calibrated"]) < 0.02


# --- RONI ----------------------------------------------------------------------------------------


def test_logistic_influence_predicts_the_holdout_change_of_exact_retraining():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    from pipeline.detectors.influence import LogisticInfluence

    rng = np.random.default_rng(8)
    X = rng.normal(size=(400, 3))
    y = (X @ np.array([1.0, -1.0, 0.5]) + rng.normal(scale=1.0, size=400) > 0).astype(int)
    X_h, y_h, X_new, y_new = X[300:], y[300:], X[:20], 1 - y[:20]  # flipped candidates
    X, y = X[20:300], y[20:300]
    C, weight = 0.5, 0.5
    influence = LogisticInfluence.fit(X, y, X_h, y_h, n_classes=2, C=C, damping=0.0)
    predicted = influence.harm(X_new, y_new) * weight / len(X)
    base = log_loss(y_h, LogisticRegression(C=C, max_iter=2000).fit(X, y).predict_proba(X_h))
    exact = []
    for x_i, y_i in zip(X_new, y_new):
        sample_weight = np.append(np.ones(len(X)), weight)
        model = LogisticRegression(C=C, max_iter=2000).fit(
            np.vstack([X, x_i]), np.append(y, y_i), sample_weight=sample_weight
        )
        exact.append(log_loss(y_h, model.predict_proba(X_h)) - base)
    assert np.corrcoef(predicted, exact)[0, 1] > 0.9


def _linear_case(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = X @ np.array([1.5, -1.0, 0.5, 0.0]) + rng.normal(scale=0.5, size=n) > 0
    return pd.DataFrame(X, columns=["a", "b", "c", "d"]).assign(label=np.where(y, "yes", "no"))


def test_roni_ranks_flipped_rows_above_clean_ones_and_holds_little_of_a_clean_batch():
    """Influence is taken in the model trained on trusted rows plus the batch: the 25 % flipped
    rows drag it off, the holdout gradient points along that damage, and they line up with it."""
    from sklearn.metrics import roc_auc_score

    from pipeline.detectors.influence import RoniInfluence

    spec = FeatureSpec(label="label", numeric=("a", "b", "c", "d"), categorical=())
    reference = _linear_case(1500, seed=21)
    detector = RoniInfluence().fit(reference, spec)
    batch = _linear_case(800, seed=22).assign(**{ROW_NUMBER: range(800)})
    clean = detector.score(batch)
    flipped = np.zeros(800, dtype=bool)
    flipped[np.random.default_rng(23).choice(800, size=200, replace=False)] = True
    poisoned = batch.copy()
    poisoned.loc[flipped, "label"] = np.where(poisoned.loc[flipped, "label"] == "yes", "no", "yes")
    scores = detector.score(poisoned)

    assert roc_auc_score(flipped, scores["score"]) > 0.9
    assert scores.loc[scores["flagged"], "reason"].str.contains("trained on the reference plus this batch").all()
    assert scores["flagged"][flipped].mean() > 0.5
    # a clean batch is exchangeable with the trusted rows in the same fit: about alpha is flagged
    assert clean["flagged"].mean() <= 0.03


def test_group_impact_measures_that_removing_flipped_rows_helps():
    from pipeline.roni import group_impact

    rng = np.random.default_rng(9)
    trusted, holdout, batch = _blobs(150, 150, 10), _blobs(200, 200, 11), _blobs(100, 100, 12)
    poisoned = rng.choice(len(batch), size=60, replace=False)
    batch.loc[poisoned, "label"] = np.where(batch.loc[poisoned, "label"] == "A", "B", "A")
    spec = FeatureSpec(label="label", numeric=("x", "y"), categorical=())
    group = np.isin(np.arange(len(batch)), poisoned)
    impact = group_impact(trusted, holdout, batch, group, spec, "flipped rows")
    assert impact.harmful and impact.log_loss_without < impact.log_loss_with
    clean = group_impact(trusted, holdout, batch, ~group & (np.arange(len(batch)) < 60), spec, "clean rows")
    assert clean.log_loss_without >= impact.log_loss_without


def test_roni_model_must_be_a_scikit_learn_classifier():
    from pipeline.errors import PoisonguardError
    from pipeline.roni import classifier

    assert type(classifier("sklearn.ensemble.RandomForestClassifier", n_estimators=10)).__name__ == "RandomForestClassifier"
    for bad in ("os.system", "sklearn.linear_model.LinearRegression", "sklearn.nope.Thing"):
        with pytest.raises(PoisonguardError):
            classifier(bad)
