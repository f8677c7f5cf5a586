"""Exact RONI for groups of rows: retrain with and without the group, measure a trusted holdout.

Per-row influence (``detectors/influence.py``) is an estimate; for the rows a scan quarantines,
and for the batch as a whole, the effect is large enough to measure directly. Two fits per group.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.pipeline import make_pipeline

from pipeline.detectors.base import FeatureSpec
from pipeline.detectors.features import feature_frame, make_encoder
from pipeline.errors import PoisonguardError

DEFAULT_MODEL = "sklearn.linear_model.LogisticRegression"


@dataclass(frozen=True)
class GroupImpact:
    """Holdout metrics of a model trained on trusted rows + the batch, with and without a group."""

    group: str
    rows: int
    accuracy_with: float
    accuracy_without: float
    log_loss_with: float
    log_loss_without: float

    @property
    def harmful(self) -> bool:
        """Removing the group improves the holdout (lower log-loss, accuracy not worse)."""
        return self.log_loss_without < self.log_loss_with and self.accuracy_without >= self.accuracy_with

    def describe(self) -> str:
        return (f"without the {self.rows} {self.group}, holdout accuracy {self.accuracy_with:.3f} → "
                f"{self.accuracy_without:.3f}, log-loss {self.log_loss_with:.4f} → {self.log_loss_without:.4f}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "harmful": self.harmful}


def classifier(path: str = DEFAULT_MODEL, **params: Any) -> ClassifierMixin:
    """Any scikit-learn classifier by dotted path, e.g. 'sklearn.ensemble.RandomForestClassifier'."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name.startswith("sklearn."):
        raise PoisonguardError(f"The RONI model must be a scikit-learn classifier ('sklearn.…'); got {path!r}.")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise PoisonguardError(f"No scikit-learn class {path!r}.") from None
    model = cls(**params)
    if not isinstance(model, ClassifierMixin):
        raise PoisonguardError(f"{path!r} is not a classifier.")
    if isinstance(model, LogisticRegression) and "max_iter" not in params:
        model.set_params(max_iter=2000)
    return model


def group_impact(trusted: pd.DataFrame, holdout: pd.DataFrame, batch: pd.DataFrame, group: np.ndarray,
                 spec: FeatureSpec, name: str, model: ClassifierMixin | None = None) -> GroupImpact:
    """Train on trusted + batch, and on trusted + (batch − group); score both on the holdout.

    ``group`` is a boolean mask over ``batch`` rows. Rows without a label are left out.
    """
    model = model if model is not None else classifier()
    labelled = batch[spec.label].notna().to_numpy()
    batch, group = batch[labelled], np.asarray(group, dtype=bool)[labelled]
    holdout = holdout[holdout[spec.label].notna()]
    with_group = pd.concat([trusted, batch], ignore_index=True)
    without_group = pd.concat([trusted, batch[~group]], ignore_index=True)
    scores = [_fit_and_score(model, frame, holdout, spec) for frame in (with_group, without_group)]
    (acc_with, loss_with), (acc_without, loss_without) = scores
    return GroupImpact(name, int(group.sum()), acc_with, acc_without, loss_with, loss_without)


def _fit_and_score(model: ClassifierMixin, train: pd.DataFrame, holdout: pd.DataFrame,
                   spec: FeatureSpec) -> tuple[float, float]:
    pipeline = make_pipeline(make_encoder(spec), clone(model))
    pipeline.fit(feature_frame(train, spec), train[spec.label].astype(str))
    proba = pipeline.predict_proba(feature_frame(holdout, spec))
    truth = holdout[spec.label].astype(str)
    predicted = pipeline.classes_[np.argmax(proba, axis=1)]
    return float(accuracy_score(truth, predicted)), float(log_loss(truth, proba, labels=pipeline.classes_))
