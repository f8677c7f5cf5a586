"""RONI per-row scores at scale: a 100,000-row batch with 30 features (issue 3's bar: < 60 s).

The data is synthetic (scikit-learn's ``make_classification``: 30 informative/redundant
features, two classes) so the size can be chosen freely; 10 % of the batch's labels are
flipped at random so the timing is on a batch with something to find, and the AUROC of the
scores against those flips is printed beside it. The reference (trusted rows) is 20,000 rows,
a fifth of which the detector holds out (its default holdout_fraction) for the holdout
direction; calibration is out-of-fold on the rest.

    .venv/bin/python benchmarks/roni_scale.py [--rows 100000] [--reference 20000]

Writes ``benchmarks/roni_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import tracemalloc
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import make_classification
from sklearn.metrics import roc_auc_score

from pipeline.detectors.base import FeatureSpec
from pipeline.detectors.influence import RoniInfluence
from pipeline.io import ROW_NUMBER

OUT = Path(__file__).with_name("roni_scale.json")
N_FEATURES = 30


def synthetic(n_reference: int, n_batch: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    X, y = make_classification(
        n_samples=n_reference + n_batch,
        n_features=N_FEATURES,
        n_informative=12,
        n_redundant=8,
        flip_y=0.02,
        class_sep=1.0,
        random_state=seed,
    )
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(N_FEATURES)])
    frame["label"] = np.where(y == 1, "yes", "no")
    reference = frame.iloc[:n_reference].reset_index(drop=True)
    batch = frame.iloc[n_reference:].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    flipped = np.zeros(n_batch, dtype=bool)
    flipped[rng.choice(n_batch, size=n_batch // 10, replace=False)] = True
    batch.loc[flipped, "label"] = np.where(batch.loc[flipped, "label"] == "yes", "no", "yes")
    batch[ROW_NUMBER] = np.arange(n_batch)
    return reference, batch, flipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--reference", type=int, default=20_000)
    args = parser.parse_args()

    reference, batch, flipped = synthetic(args.reference, args.rows)
    spec = FeatureSpec(numeric=tuple(c for c in reference.columns if c != "label"), categorical=(), label="label")
    tracemalloc.start()
    started = time.perf_counter()
    detector = RoniInfluence().fit(reference, spec)
    fitted = time.perf_counter()
    scores = detector.score(batch)
    scored = time.perf_counter()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "batch_rows": args.rows,
        "reference_rows": args.reference,
        "features": N_FEATURES,
        "fit_seconds": round(fitted - started, 2),
        "score_seconds": round(scored - fitted, 2),
        "total_seconds": round(scored - started, 2),
        "seconds_per_1k_rows": round(1000 * (scored - fitted) / args.rows, 4),
        "peak_mib": round(peak, 1),
        "auroc_against_flips": round(float(roc_auc_score(flipped, scores["score"])), 3),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
