"""How well can *any* detector rank random label flips? An oracle ceiling for precision at k.

For random 10 % flips of the benchmark's batch, rank batch rows by the out-of-fold probability
of their observed label under a gradient-boosted model trained on every clean row of the
dataset (reference, holdout, test and the batch's own true labels, never the row itself): more
than any detector is given. Report precision at k (k = flips) and AUROC, over 20 draws.

    .venv/bin/python benchmarks/flip_ceiling.py      # results: benchmarks/RESULTS.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection_core import _flip, load_datasets, split  # the benchmark's own splits and flips
from pipeline.detectors.features import feature_frame, make_encoder


def main() -> None:
    for dataset in load_datasets():
        s = split(dataset, seed=0)
        label = s.spec.label
        clean = pd.concat([s.reference, s.holdout, s.test, s.batch], ignore_index=True)
        in_batch = np.r_[np.zeros(len(clean) - len(s.batch), bool), np.ones(len(s.batch), bool)]
        X = make_encoder(s.spec).fit_transform(feature_frame(clean, s.spec))
        y = clean[label].astype(str).to_numpy()
        proba = cross_val_predict(
            HistGradientBoostingClassifier(max_iter=200, random_state=0),
            X,
            y,
            cv=StratifiedKFold(5, shuffle=True, random_state=0),
            method="predict_proba",
        )
        classes = np.unique(y)
        batch_proba = proba[in_batch]
        true = y[in_batch]
        p_at_k, aurocs = [], []
        for draw in range(20):
            rng = np.random.default_rng(draw)
            n = len(true)
            rows = rng.choice(n, size=int(n * 0.10), replace=False)
            observed = _flip(pd.Series(true), rows, classes, rng).to_numpy()
            flipped = np.zeros(n, bool)
            flipped[rows] = True
            suspicion = 1.0 - batch_proba[np.arange(n), np.searchsorted(classes, observed)]
            top = np.argsort(-suspicion, kind="stable")[: len(rows)]
            p_at_k.append(flipped[top].mean())
            aurocs.append(roc_auc_score(flipped, suspicion))
        print(
            f"{dataset.name:14s} batch {len(true):5d}  flips {len(rows):4d}  oracle p@k {np.mean(p_at_k):.2f} "
            f"(min {np.min(p_at_k):.2f}, max {np.max(p_at_k):.2f})  AUROC {np.mean(aurocs):.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
