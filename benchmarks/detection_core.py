"""Detection core: what a scan decides about poisoned batches, beside the tools a user would
otherwise reach for, on the same batches; and the batch verdict's own figures.

    make bench        # or: .venv/bin/python benchmarks/detection_core.py [--seeds 20] [--jobs 2]

Datasets: the six in ../shared/datasets (HMDA, spam7, credit cards, Swiss labour, Bangladesh
wells, health insurance) and data_samples/. For every seed each is shuffled and split into a
trusted reference (45 %), a trusted holdout (15 %), a clean test split (15 %) and an incoming
batch (25 %), which each attack poisons with known ground truth (or, for "covariate_shift",
keeps clean but cuts to the rows above the median of one feature).

"poisonguard" is what a scan does, through ``pipeline.scan``'s own steps on files: a suite
inferred from the reference (the protected column kept out of the features), validation, the
default detectors, the batch checks, the verdict and the decisions. Peers see what a user would
give them: the reference and the batch together, at their own default thresholds.

Writes benchmarks/detection_core.json.gz (every case) and its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULT_JSON = REPO / "benchmarks" / "detection_core.json.gz"
SHARED = REPO.parent / "shared" / "datasets"
# (file, label, columns never used as features)
DATASETS = {
    "hmda": ("hmda.parquet", "deny", ("afam",)),
    "spam7": ("spam7.parquet", "yesno", ()),
    "creditcard": ("creditcard.parquet", "card", ()),
    "swisslabor": ("swisslabor.parquet", "participation", ()),
    "wells": ("wells.parquet", "switch", ()),
    "healthinsurance": ("healthinsurance.parquet", "health", ()),
    "data_samples": (None, "deny", ("afam",)),
}
FRACTIONS = (0.45, 0.15, 0.15, 0.25)  # reference, holdout, test, batch
ATTACKS = [
    "clean",
    "covariate_shift",
    "random_flip_5",
    "random_flip_10",
    "random_flip_30",
    "targeted_flip",
    "boundary_flip",
    "concentrated",
    "duplicate_flood",
    "backdoor",
    "outliers",
]
LABEL_ATTACKS = {
    "random_flip_5",
    "random_flip_10",
    "random_flip_30",
    "targeted_flip",
    "boundary_flip",
    "concentrated",
    "duplicate_flood",
}
ART_SUBSAMPLE = 60  # ART refits O(N^2) times: 60 suspect rows take 20-30 s here
ART_SEEDS = 3
HOLD_VARIANTS = ("estimate", "likely", "f1", "fdr", "lower", "off")  # policy.evidence_hold, measured side by side


# --- datasets, splits, attacks -------------------------------------------------------------------


def load(name: str) -> tuple[pd.DataFrame, str, tuple[str, ...]]:
    file, label, exclude = DATASETS[name]
    if file is None:
        frame = pd.concat(
            [
                pd.read_parquet(REPO / "data_samples" / f)
                for f in ("reference.parquet", "holdout.parquet", "batch_05_clean.parquet")
            ],
            ignore_index=True,
        )
    else:
        frame = pd.read_parquet(SHARED / file)
    return frame, label, exclude


@dataclass
class Split:
    reference: pd.DataFrame
    holdout: pd.DataFrame
    test: pd.DataFrame
    batch: pd.DataFrame
    spec: object  # pipeline.detectors.FeatureSpec


def split(name: str, seed: int) -> Split:
    from pipeline.detectors import FeatureSpec
    from pipeline.io import ROW_NUMBER
    from pipeline.validation import column_kinds

    frame, label, exclude = load(name)
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    cuts = np.cumsum([int(len(frame) * f) for f in FRACTIONS[:-1]])
    parts = [frame.iloc[a:b] for a, b in zip([0, *cuts], [*cuts, len(frame)])]
    parts = [p.reset_index(drop=True).assign(**{ROW_NUMBER: np.arange(len(p))}) for p in parts]
    return Split(*parts, spec=FeatureSpec.from_kinds(column_kinds(frame), label, exclude))


def _flip(labels: pd.Series, rows: np.ndarray, classes: np.ndarray, rng) -> pd.Series:
    out = labels.copy()
    for r in rows:
        out.iloc[r] = rng.choice(classes[classes != out.iloc[r]])
    return out


def _encoded(s: Split) -> tuple[np.ndarray, np.ndarray]:
    from pipeline.detectors.features import feature_frame, make_encoder

    encoder = make_encoder(s.spec).fit(feature_frame(s.reference, s.spec))
    return encoder.transform(feature_frame(s.reference, s.spec)), encoder.transform(feature_frame(s.batch, s.spec))


def attack(name: str, s: Split, rng) -> tuple[pd.DataFrame, np.ndarray]:
    """The attacked batch and a boolean mask of its poisoned rows."""
    from sklearn.linear_model import LogisticRegression

    batch, label = s.batch.copy(), s.spec.label
    classes = np.unique(s.reference[label].astype(str))
    n = len(batch)
    poison = np.zeros(n, dtype=bool)
    if name == "clean":
        return batch, poison
    if name == "covariate_shift":  # clean rows, true labels: only those above one feature's median
        column = s.spec.numeric[int(rng.integers(len(s.spec.numeric)))]
        values = pd.to_numeric(batch[column], errors="coerce")
        keep = (values > values.median()).to_numpy()
        if keep.mean() < 0.3:  # a tied median: take it too
            keep = (values >= values.median()).to_numpy()
        return _renumbered(batch[keep]), np.zeros(int(keep.sum()), dtype=bool)
    if name.startswith("random_flip"):
        rows = rng.choice(n, size=int(n * int(name.rsplit("_", 1)[1]) / 100), replace=False)
        batch[label] = _flip(batch[label].astype(str), rows, classes, rng)
        poison[rows] = True
        return batch, poison
    ref_x, batch_x = _encoded(s)
    if name == "targeted_flip":  # a neighbourhood of one class relabelled: a group being favoured
        source = classes[np.argmax([np.mean(batch[label].astype(str) == c) for c in classes])]
        candidates = np.flatnonzero(batch[label].astype(str).to_numpy() == source)
        centre = batch_x[rng.choice(candidates)]
        order = candidates[np.argsort(np.linalg.norm(batch_x[candidates] - centre, axis=1))]
        rows = order[: max(5, int(0.08 * n))]
        batch[label] = _flip(batch[label].astype(str), rows, classes, rng)
        poison[rows] = True
        return batch, poison
    if name == "boundary_flip":  # flips a clean model is least sure about: the hardest to see
        model = LogisticRegression(max_iter=2000).fit(ref_x, s.reference[label].astype(str))
        margin = np.abs(model.predict_proba(batch_x).max(axis=1) - 0.5)
        rows = np.argsort(margin)[: int(0.1 * n)]
        batch[label] = _flip(batch[label].astype(str), rows, classes, rng)
        poison[rows] = True
        return batch, poison
    if name in ("concentrated", "duplicate_flood"):
        # Koh et al. 2018: a few tight clusters of near-identical flipped rows; a flood: exact copies
        n_clusters, size = (3, max(5, int(0.03 * n))) if name == "concentrated" else (1, max(10, int(0.08 * n)))
        copies = []
        for seed_row in rng.choice(n, size=n_clusters, replace=False):
            block = batch.iloc[[seed_row] * size].copy()
            if name == "concentrated":
                for col in s.spec.numeric:
                    spread = float(pd.to_numeric(s.reference[col]).std() or 1.0)
                    block[col] = block[col].astype(float) + rng.normal(0, 0.01 * spread, size=size)
            block[label] = _flip(block[label].astype(str), np.arange(size), classes, rng).iloc[0]
            copies.append(block)
        return _appended(batch, copies, poison)
    if name == "backdoor":  # rare combination of two features + the attacker's label
        a, b = s.spec.numeric[:2]
        target = classes[np.argmin([np.mean(s.reference[label].astype(str) == c) for c in classes])]
        block = batch.sample(n=max(5, int(0.05 * n)), random_state=int(rng.integers(1 << 30))).copy()
        block[a] = float(s.reference[a].quantile(0.995))
        block[b] = float(s.reference[b].quantile(0.005))
        block[label] = target
        return _appended(batch, [block], poison)
    if name == "outliers":
        rows = rng.choice(n, size=max(3, int(0.03 * n)), replace=False)
        for col in s.spec.numeric:
            lo, hi = s.reference[col].min(), s.reference[col].max()
            batch[col] = batch[col].astype(float)
            batch.loc[rows, col] = hi + rng.uniform(1.0, 3.0, size=len(rows)) * (hi - lo + 1e-9)
        poison[rows] = True
        return batch, poison
    raise ValueError(name)


def _renumbered(frame: pd.DataFrame) -> pd.DataFrame:
    from pipeline.io import ROW_NUMBER

    return frame.reset_index(drop=True).assign(**{ROW_NUMBER: np.arange(len(frame))})


def _appended(batch: pd.DataFrame, blocks: list[pd.DataFrame], poison: np.ndarray):
    extra = pd.concat(blocks, ignore_index=True)
    return _renumbered(pd.concat([batch, extra], ignore_index=True)), np.concatenate([poison, np.ones(len(extra), bool)])


# --- poisonguard: the scan's own steps ------------------------------------------------------------


class Poisonguard:
    """The product: ``pipeline.scan``'s steps on files, from an inferred suite to the decisions."""

    name = "poisonguard"

    def __init__(self, s: Split, folder: Path) -> None:
        from pipeline import scan
        from pipeline.config import Settings
        from pipeline.io import ROW_NUMBER
        from pipeline.validation import infer_suite, save_suite

        self.folder = folder
        for part in ("reference", "holdout"):
            getattr(s, part).drop(columns=[ROW_NUMBER]).to_parquet(folder / f"{part}.parquet", index=False)
        suite = infer_suite(
            s.reference.drop(columns=[ROW_NUMBER]),
            s.spec.label,
            "benchmark",
            protected=tuple(c for c in s.reference.columns if c not in (*s.spec.features, s.spec.label, ROW_NUMBER)),
        )
        save_suite(suite, folder / "suite.json")
        self.settings = Settings.from_environment(
            folder / "workspace", {"POISONGUARD_FIT_CACHE": "off", "POISONGUARD_USER": "benchmark"}
        )
        self.request = scan.ScanRequest(
            batch=folder / "batch.parquet",
            reference=folder / "reference.parquet",
            label=s.spec.label,
            out=folder / "out",
            suite=folder / "suite.json",
            holdout=folder / "holdout.parquet",
            dataset="benchmark",
        )
        started = time.perf_counter()
        self.trusted = scan.load_trusted(self.request, self.settings)
        self.detectors = scan.fit_detectors(self.trusted, self.settings)
        self.checks = scan.fit_checks(self.trusted)
        self.fit_seconds = time.perf_counter() - started
        holdout = scan.trusted_suspicion(self.detectors, self.trusted, self.settings)
        target = self.settings.policy.false_quarantine_target
        self.holdout_held_share = float(np.mean(holdout >= 1.0 - target - 1e-12)) if len(holdout) else None

    def __call__(self, s: Split, batch: pd.DataFrame) -> dict:
        from pipeline import scan
        from pipeline.io import ROW_NUMBER
        from pipeline.scan_run import evaluate

        batch.drop(columns=[ROW_NUMBER]).to_parquet(self.request.batch, index=False)
        loaded = scan.ingest(self.request, self.settings)
        judged = evaluate(loaded, self.trusted, self.settings, detectors=self.detectors, checks=self.checks)
        conformed, outcome, scores, verdict = judged.conformed, judged.outcome, judged.scores, judged.verdict
        table = judged.decisions.table.set_index(ROW_NUMBER).loc[np.arange(len(batch))]
        # the same scan under the other ways of holding a significant kind's rows
        variants = {}
        for hold in HOLD_VARIANTS:
            settings = replace(self.settings, policy=replace(self.settings.policy, evidence_hold=hold))
            other = scan.decide_batch(conformed, outcome, self.detectors, scores, settings, verdict, self.trusted)
            variants[hold] = other.table.set_index(ROW_NUMBER).loc[np.arange(len(batch)), "quarantined"].to_numpy(bool)
        return {
            "flagged": table["quarantined"].to_numpy(bool),
            "score": table["suspicion"].to_numpy(float),
            "variants": variants,
            "verdict": verdict,
            "conformed": conformed,
            "outcome": outcome,
            "label_pvalue": 1.0
            - scores["label_consistency"].set_index(ROW_NUMBER)["calibrated"].reindex(np.arange(len(batch))).to_numpy()
            if "label_consistency" in scores
            else None,
        }


# --- peers ---------------------------------------------------------------------------------------


def _combined(s: Split, batch: pd.DataFrame):
    from pipeline.detectors.features import feature_frame, make_encoder

    both = pd.concat([s.reference, batch], ignore_index=True)
    encoder = make_encoder(s.spec).fit(feature_frame(both, s.spec))
    return encoder.transform(feature_frame(both, s.spec)), both[s.spec.label].astype(str).to_numpy(), len(s.reference)


def cleanlab_peer(make: Callable[[], object], name: str):
    def run(s: Split, batch: pd.DataFrame):
        from cleanlab.filter import find_label_issues
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        X, y, n_ref = _combined(s, batch)
        _classes, codes = np.unique(y, return_inverse=True)
        probs = cross_val_predict(
            make(), X, codes, cv=StratifiedKFold(5, shuffle=True, random_state=0), method="predict_proba"
        )
        issues = find_label_issues(codes, probs)
        return issues[n_ref:], (1.0 - probs[np.arange(len(codes)), codes])[n_ref:]

    run.name = name
    return run


def knn_sanitisation(s: Split, batch: pd.DataFrame, k: int = 10, eta: float = 0.5):
    """Paudice et al. 2018: flag a row when fewer than eta of its k neighbours agree with its label."""
    from sklearn.neighbors import NearestNeighbors

    X, y, n_ref = _combined(s, batch)
    _, index = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X[n_ref:])
    agree = (y[index[:, 1:]] == y[n_ref:, None]).mean(axis=1)
    return agree < eta, 1.0 - agree


knn_sanitisation.name = "knn_sanitisation"


def pyod_peer(make, name: str):
    def run(s: Split, batch: pd.DataFrame):
        X, _, n_ref = _combined(s, batch)
        model = make().fit(X)
        return model.labels_[n_ref:].astype(bool), model.decision_scores_[n_ref:]

    run.name = name
    return run


def art_roni(corrected: bool):
    """ART's RONIDefense. Its default perf_func crashes on probability outputs, so accuracy of the
    arg-max is passed in ("as shipped" otherwise); ART compares performance with the sign
    inverted, so the corrected variant hands it -accuracy. Quiz and calibration sets are drawn
    from the suspect data, as ART does."""

    def run(s: Split, batch: pd.DataFrame):
        from art.defences.detector.poison import RONIDefense
        from art.estimators.classification import SklearnClassifier
        from sklearn.linear_model import LogisticRegression

        from pipeline.detectors.features import feature_frame, make_encoder

        encoder = make_encoder(s.spec).fit(feature_frame(s.reference, s.spec))
        classes = np.unique(s.reference[s.spec.label].astype(str))
        onehot = lambda frame: np.eye(len(classes))[np.searchsorted(classes, frame[s.spec.label].astype(str))]  # noqa: E731
        model = SklearnClassifier(LogisticRegression(max_iter=2000))
        model.fit(encoder.transform(feature_frame(s.reference, s.spec)), onehot(s.reference))
        accuracy = lambda y, p: float((np.argmax(y, 1) == np.argmax(p, 1)).mean())  # noqa: E731
        defence = RONIDefense(
            model,
            encoder.transform(feature_frame(batch, s.spec)),
            onehot(batch),
            encoder.transform(feature_frame(s.holdout, s.spec)),
            onehot(s.holdout),
            perf_func=(lambda y, p: -accuracy(y, p)) if corrected else accuracy,
        )
        _, is_clean = defence.detect_poison()
        flagged = np.asarray(is_clean) == 0
        return flagged, flagged.astype(float)

    run.name = "art_roni_sign_corrected" if corrected else "art_roni_as_shipped"
    return run


def peers() -> list:
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    return [
        cleanlab_peer(lambda: LogisticRegression(max_iter=2000), "cleanlab_logistic"),
        cleanlab_peer(lambda: HistGradientBoostingClassifier(max_iter=100, random_state=0), "cleanlab_gbm"),
        knn_sanitisation,
        pyod_peer(lambda: IForest(random_state=0), "iforest"),
        pyod_peer(lambda: ECOD(), "ecod"),
    ]


# --- metrics -------------------------------------------------------------------------------------


def detection_metrics(flagged: np.ndarray, score: np.ndarray, poison: np.ndarray) -> dict:
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    row = {"flagged": int(flagged.sum()), "false_quarantine": float(flagged[~poison].mean()) if (~poison).any() else None}
    if poison.any():
        k = int(poison.sum())
        row.update(
            precision=float(precision_score(poison, flagged, zero_division=0)),
            recall=float(recall_score(poison, flagged)),
            f1=float(f1_score(poison, flagged)),
            auroc=float(roc_auc_score(poison, np.nan_to_num(score))) if (~poison).any() else None,
            precision_at_k=float(poison[np.argsort(-np.nan_to_num(score), kind="stable")[:k]].mean()),
        )
    return row


def accuracy_after(s: Split, train_batch: pd.DataFrame, make) -> float:
    from sklearn.pipeline import make_pipeline

    from pipeline.detectors.features import feature_frame, make_encoder

    train = pd.concat([s.reference, train_batch], ignore_index=True)
    model = make_pipeline(make_encoder(s.spec), make()).fit(feature_frame(train, s.spec), train[s.spec.label].astype(str))
    return float((model.predict(feature_frame(s.test, s.spec)) == s.test[s.spec.label].astype(str)).mean())


def recovery(s: Split, batch, poison, flagged) -> dict:
    """Share of the accuracy the poisoning cost that training on the accepted rows wins back,
    for a logistic and a gradient-boosted model (None where the attack cost under half a point)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    out = {}
    for model_name, make in (
        ("logistic", lambda: LogisticRegression(max_iter=2000)),
        ("gbm", lambda: HistGradientBoostingClassifier(random_state=0)),
    ):
        poisoned, clean = accuracy_after(s, batch, make), accuracy_after(s, batch[~poison], make)
        out[f"cost_{model_name}"] = clean - poisoned
        out[f"recovery_{model_name}"] = (
            None if clean - poisoned < 0.005 else (accuracy_after(s, batch[~flagged], make) - poisoned) / (clean - poisoned)
        )
    return out


def backdoor_success(s: Split, train_batch: pd.DataFrame) -> float:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import make_pipeline

    from pipeline.detectors.features import feature_frame, make_encoder

    a, b = s.spec.numeric[:2]
    label = s.spec.label
    classes = np.unique(s.reference[label].astype(str))
    target = classes[np.argmin([np.mean(s.reference[label].astype(str) == c) for c in classes])]
    victims = s.test[s.test[label].astype(str) != target].copy()
    victims[a] = float(s.reference[a].quantile(0.995))
    victims[b] = float(s.reference[b].quantile(0.005))
    train = pd.concat([s.reference, train_batch], ignore_index=True)
    model = make_pipeline(make_encoder(s.spec), HistGradientBoostingClassifier(random_state=0))
    model.fit(feature_frame(train, s.spec), train[label].astype(str))
    return float((model.predict(feature_frame(victims, s.spec)) == target).mean())


def oracle_precision_at_k(s: Split, batch: pd.DataFrame, poison: np.ndarray) -> float:
    """The flip ceiling (benchmarks/flip_ceiling.py) on this very batch: rank its rows by the
    out-of-fold probability of their observed label under a gradient-boosted model trained on
    every clean row of the dataset (the batch's true labels included, never the row itself)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from pipeline.detectors.features import feature_frame, make_encoder

    clean = pd.concat([s.reference, s.holdout, s.test, s.batch], ignore_index=True)
    X = make_encoder(s.spec).fit_transform(feature_frame(clean, s.spec))
    y = clean[s.spec.label].astype(str).to_numpy()
    proba = cross_val_predict(
        HistGradientBoostingClassifier(max_iter=200, random_state=0),
        X,
        y,
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
        method="predict_proba",
    )[-len(s.batch) :]
    classes = np.unique(y)
    observed = batch[s.spec.label].astype(str).to_numpy()
    suspicion = 1.0 - proba[np.arange(len(batch)), np.searchsorted(classes, observed)]
    k = int(poison.sum())
    return float(poison[np.argsort(-suspicion, kind="stable")[:k]].mean())


def roni_says_it_hurts(s: Split, result: dict, poison: np.ndarray) -> dict:
    """Exact group RONI (``pipeline.roni``) on the poisoned rows and on the rows held: does
    removing them improve the trusted holdout?"""
    from pipeline.roni import group_impact

    out = {}
    for name, rows in (("poisoned", poison), ("held", result["flagged"])):
        if rows.any():
            impact = group_impact(s.reference, s.holdout, result["conformed"], rows, s.spec, name)
            out[f"roni_{name}_harmful"] = bool(impact.harmful)
            out[f"roni_{name}_accuracy_gain"] = impact.accuracy_without - impact.accuracy_with
    return out


# --- one dataset and seed ------------------------------------------------------------------------


def run_case(task: tuple[str, int, bool, list[str]]) -> list[dict]:
    name, seed, ours_only, attacks = task
    warnings.filterwarnings("ignore")
    s = split(name, seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pg-bench-") as folder:
        product = Poisonguard(s, Path(folder))
        base = {
            "dataset": name,
            "seed": seed,
            "holdout_held_share": product.holdout_held_share,
            "fit_seconds": round(product.fit_seconds, 2),
        }
        for attack_name in attacks:
            rng = np.random.default_rng([seed, ATTACKS.index(attack_name)])
            batch, poison = attack(attack_name, s, rng)
            case = base | {"attack": attack_name, "rows": len(batch), "poisoned": int(poison.sum())}
            started = time.perf_counter()
            result = product(s, batch)
            verdict = result["verdict"]
            low, high = verdict.interval
            row = case | {
                "method": "poisonguard",
                "seconds": round(time.perf_counter() - started, 3),
                "verdict_poisoned": verdict.poisoned,
                "verdict_p": verdict.p_value,
                "estimate": verdict.estimated_poisoned_rows,
                "interval_low": low,
                "interval_high": high,
                "covered": bool(low <= poison.sum() <= high),
                "kinds": {k: [e.estimate, *e.interval, e.p_value] for k, e in verdict.by_kind.items()},
                "significant": [k for k in verdict.by_kind if verdict.significant(k)],
            }
            row |= detection_metrics(result["flagged"], result["score"], poison)
            for hold, flagged in result["variants"].items():
                rows.append(
                    case | {"method": f"poisonguard[hold={hold}]"} | detection_metrics(flagged, result["score"], poison)
                )
            if attack_name in LABEL_ATTACKS:
                row |= recovery(s, batch, poison, result["flagged"])
            if attack_name == "random_flip_10":
                row["oracle_precision_at_k"] = oracle_precision_at_k(s, batch, poison)
                row["label_precision_at_k"] = float(
                    poison[np.argsort(result["label_pvalue"], kind="stable")[: int(poison.sum())]].mean()
                )
            if attack_name == "boundary_flip":
                row |= roni_says_it_hurts(s, result, poison)
            if attack_name == "backdoor":
                row["backdoor_success_unfiltered"] = backdoor_success(s, batch)
                row["backdoor_success_filtered"] = backdoor_success(s, batch[~result["flagged"]])
            rows.append(row)
            if ours_only:
                continue
            methods = list(peers())
            subsample = None
            if attack_name == "random_flip_10" and seed < ART_SEEDS:
                subsample = np.sort(np.random.default_rng(seed).choice(len(batch), ART_SUBSAMPLE, replace=False))
            for method in methods:
                started = time.perf_counter()
                flagged, score = method(s, batch)
                rows.append(
                    case
                    | {"method": method.name, "seconds": round(time.perf_counter() - started, 3)}
                    | detection_metrics(np.asarray(flagged, bool), np.asarray(score, float), poison)
                )
            if subsample is not None:
                small = _renumbered(batch.iloc[subsample])
                for method in (art_roni(False), art_roni(True), *methods[:1]):
                    flagged, score = method(s, small)
                    rows.append(
                        case
                        | {
                            "attack": f"{attack_name}_subsample{ART_SUBSAMPLE}",
                            "method": method.name,
                            "rows": len(small),
                            "poisoned": int(poison[subsample].sum()),
                        }
                        | detection_metrics(np.asarray(flagged, bool), np.asarray(score, float), poison[subsample])
                    )
                ours = product(s, small)
                rows.append(
                    case
                    | {
                        "attack": f"{attack_name}_subsample{ART_SUBSAMPLE}",
                        "method": "poisonguard",
                        "rows": len(small),
                        "poisoned": int(poison[subsample].sum()),
                    }
                    | detection_metrics(ours["flagged"], ours["score"], poison[subsample])
                )
    print(f"{name} seed {seed}: {len(rows)} rows", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument(
        "--ours-only",
        action="store_true",
        help="rerun poisonguard only and keep the peers' rows of the last detection_core.json.gz: "
        "the cases (splits, attack seeds) are the same, and the peers' code did not change",
    )
    parser.add_argument("--output", type=Path, default=RESULT_JSON)
    args = parser.parse_args()
    from detection_tables import read_record, write_record  # beside this script

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the jobs share the cores; threads within each fight
    datasets = [d for d in args.datasets.split(",") if DATASETS[d][0] is None or (SHARED / DATASETS[d][0]).exists()]
    tasks = [(d, seed, args.ours_only, args.attacks.split(",")) for d in datasets for seed in range(args.seeds)]
    started = time.time()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = [row for part in pool.map(run_case, tasks) for row in part]
    if args.ours_only and args.output.exists():
        ran = {(r["dataset"], r["seed"], r["attack"]) for r in rows}
        rows += [
            r
            for r in read_record(args.output)["rows"]
            if not r["method"].startswith("poisonguard")
            and (r["dataset"], r["seed"], r["attack"].split("_subsample")[0]) in ran
        ]
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "seeds": args.seeds,
        "minutes": round((time.time() - started) / 60, 1),
        "peers_rerun": not args.ours_only,
        "rows": rows,
    }
    write_record(args.output, record, default=_plain)
    if args.output == RESULT_JSON:
        write_results(record)


def _plain(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# --- the results page ----------------------------------------------------------------------------

BEGIN, END = "<!-- detection-core:begin -->", "<!-- detection-core:end -->"


def write_results(record: dict) -> None:
    """Replace the detection-core section of RESULTS.md with tables built from ``record``."""
    from detection_tables import detection_section  # beside this script

    section = detection_section(record, BEGIN, END)
    path = REPO / "benchmarks" / "RESULTS.md"
    text = path.read_text()
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n## Detection core (`benchmarks/detection_core.py`)\n\n" + section + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
