"""Detection-core benchmark: poisonguard's detectors side by side with the tools a user would
otherwise reach for, on the same poisoned batches.

    make bench        # or: .venv/bin/python benchmarks/detection_core.py [--quick]

Datasets: HMDA and spam7 (../shared/datasets), scikit-learn's breast cancer, data_samples/.
Each is split into a trusted reference (50 %), a trusted holdout (15 %), a clean test split
(15 %) and an incoming batch (20 %), which each attack poisons with known ground truth.
Peers see what a user would give them: the reference and the batch together.
Writes benchmarks/detection_core.json and the table in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
import tracemalloc
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline

from pipeline.decide import content_keys, decide
from pipeline.detectors import DEFAULT_DETECTORS, FeatureSpec, build_detectors, fit_all, score_all
from pipeline.findings import empty_findings
from pipeline.policy import QuarantinePolicy
from pipeline.detectors.features import feature_frame, make_encoder
from pipeline.detectors.duplicates import DuplicateFlood
from pipeline.detectors.influence import RoniInfluence
from pipeline.detectors.labels import LabelConsistency
from pipeline.detectors.triggers import TriggerPattern
from pipeline.io import ROW_NUMBER
from pipeline.validation import column_kinds

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
RESULT_JSON = REPO / "benchmarks" / "detection_core.json"
SHARED = REPO.parent / "shared" / "datasets"


# --- datasets ------------------------------------------------------------------------------------

@dataclass
class Dataset:
    name: str
    frame: pd.DataFrame
    label: str
    exclude: tuple[str, ...] = ()


def load_datasets() -> list[Dataset]:
    cancer = load_breast_cancer(as_frame=True).frame
    cancer.columns = [re.sub(r"\W+", "_", c) for c in cancer.columns]
    cancer["target"] = cancer["target"].map({0: "malignant", 1: "benign"})
    samples = pd.concat([pd.read_parquet(REPO / "data_samples" / f) for f in
                         ("reference.parquet", "holdout.parquet", "batch_05_clean.parquet")], ignore_index=True)
    found = [Dataset("breast_cancer", cancer, "target"), Dataset("data_samples", samples, "deny", ("afam",))]
    if (SHARED / "hmda.parquet").exists():
        found.append(Dataset("hmda", pd.read_parquet(SHARED / "hmda.parquet"), "deny", ("afam",)))
        found.append(Dataset("spam7", pd.read_parquet(SHARED / "spam7.parquet"), "yesno"))
    return found


@dataclass
class Split:
    reference: pd.DataFrame
    holdout: pd.DataFrame
    test: pd.DataFrame
    batch: pd.DataFrame
    spec: FeatureSpec


def split(dataset: Dataset, seed: int) -> Split:
    frame = dataset.frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    n = len(frame)
    cuts = [int(n * 0.5), int(n * 0.65), int(n * 0.8)]
    parts = [frame.iloc[a:b] for a, b in zip([0, *cuts], [*cuts, n])]
    parts = [p.reset_index(drop=True).assign(**{ROW_NUMBER: np.arange(len(p))}) for p in parts]
    spec = FeatureSpec.from_kinds(column_kinds(frame), dataset.label, dataset.exclude)
    return Split(*parts, spec=spec)


# --- attacks -------------------------------------------------------------------------------------

def _flip(labels: pd.Series, rows: np.ndarray, classes: np.ndarray, rng) -> pd.Series:
    out = labels.copy()
    for r in rows:
        others = classes[classes != out.iloc[r]]
        out.iloc[r] = rng.choice(others)
    return out


def _encoded(s: Split) -> tuple[np.ndarray, np.ndarray]:
    encoder = make_encoder(s.spec).fit(feature_frame(s.reference, s.spec))
    return encoder.transform(feature_frame(s.reference, s.spec)), encoder.transform(feature_frame(s.batch, s.spec))


def attack(name: str, s: Split, rng) -> tuple[pd.DataFrame, np.ndarray]:
    """Return the poisoned batch and a boolean mask of poisoned rows."""
    batch, label = s.batch.copy(), s.spec.label
    classes = np.unique(s.reference[label].astype(str))
    n = len(batch)
    poison = np.zeros(n, dtype=bool)
    if name == "clean":
        return batch, poison
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
        # Koh et al. 2018: a few tight clusters of near-identical flipped rows
        n_clusters, size = (3, max(5, int(0.03 * n))) if name == "concentrated" else (1, max(10, int(0.08 * n)))
        seeds = rng.choice(n, size=n_clusters, replace=False)
        copies = []
        for seed_row in seeds:
            block = batch.iloc[[seed_row] * size].copy()
            if name == "concentrated":
                for col in s.spec.numeric:
                    spread = float(s.reference[col].std() or 1.0)
                    block[col] = block[col].astype(float) + rng.normal(0, 0.01 * spread, size=size)
            block[label] = _flip(block[label].astype(str), np.arange(size), classes, rng).iloc[0]
            copies.append(block)
        return _append(batch, copies, poison)
    if name == "backdoor":  # rare combination of two features + the attacker's label
        a, b = s.spec.numeric[:2]
        target = classes[np.argmin([np.mean(s.reference[label].astype(str) == c) for c in classes])]
        size = max(5, int(0.05 * n))
        block = batch.sample(n=size, random_state=int(rng.integers(1 << 30))).copy()
        block[a] = float(s.reference[a].quantile(0.995))
        block[b] = float(s.reference[b].quantile(0.005))
        block[label] = target
        return _append(batch, [block], poison)
    if name == "outliers":
        rows = rng.choice(n, size=max(3, int(0.03 * n)), replace=False)
        for col in s.spec.numeric:
            lo, hi = s.reference[col].min(), s.reference[col].max()
            batch[col] = batch[col].astype(float)
            batch.loc[rows, col] = hi + rng.uniform(1.0, 3.0, size=len(rows)) * (hi - lo + 1e-9)
        poison[rows] = True
        return batch, poison
    raise ValueError(name)


def _append(batch: pd.DataFrame, blocks: list[pd.DataFrame], poison: np.ndarray):
    extra = pd.concat(blocks, ignore_index=True)
    out = pd.concat([batch, extra], ignore_index=True)
    out[ROW_NUMBER] = np.arange(len(out))
    return out, np.concatenate([poison, np.ones(len(extra), dtype=bool)])


ATTACKS = ["clean", "random_flip_10", "random_flip_30", "targeted_flip", "boundary_flip",
           "concentrated", "duplicate_flood", "backdoor", "outliers"]
LABEL_ATTACKS = {"random_flip_10", "random_flip_10_subsample60", "random_flip_30", "targeted_flip", "boundary_flip", "concentrated",
                 "duplicate_flood"}


# --- methods -------------------------------------------------------------------------------------

class Poisonguard:
    """What a scan does: the registry's default detectors, fitted once per reference, fused and
    thresholded by the default quarantine policy (pipeline.decide)."""

    name = "poisonguard"

    def __init__(self, s: Split, detectors: dict | None = None, name: str | None = None) -> None:
        self.name = name or self.name
        self.detectors = fit_all(build_detectors(detectors or DEFAULT_DETECTORS), s.reference, s.spec, s.holdout)

    def __call__(self, s: Split, batch: pd.DataFrame):
        decisions = decide(batch[ROW_NUMBER], empty_findings(), [], score_all(self.detectors, batch), QuarantinePolicy(),
                           content_keys(batch))
        table = decisions.table.set_index(ROW_NUMBER).loc[batch[ROW_NUMBER]]
        return table["quarantined"].to_numpy(bool), table["suspicion"].to_numpy(float)


class SingleDetector:
    """One poisonguard detector alone, ranked by its raw score."""

    def __init__(self, name: str, detector, s: Split) -> None:
        self.name = name
        self.detector = detector.fit(s.reference, s.spec, s.holdout)

    def __call__(self, s: Split, batch: pd.DataFrame):
        r = self.detector.score(batch)
        return r["flagged"].to_numpy(), r["score"].to_numpy()


def _combined(s: Split, batch: pd.DataFrame):
    both = pd.concat([s.reference, batch], ignore_index=True)
    encoder = make_encoder(s.spec).fit(feature_frame(both, s.spec))
    return encoder.transform(feature_frame(both, s.spec)), both[s.spec.label].astype(str).to_numpy(), len(s.reference)


def cleanlab_peer(model: Callable[[], object], name: str):
    def run(s: Split, batch: pd.DataFrame):
        from cleanlab.filter import find_label_issues

        X, y, n_ref = _combined(s, batch)
        classes, codes = np.unique(y, return_inverse=True)
        probs = cross_val_predict(model(), X, codes, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                                  method="predict_proba")
        issues = find_label_issues(codes, probs)
        return issues[n_ref:], (1.0 - probs[np.arange(len(codes)), codes])[n_ref:]
    run.name = name
    return run


def knn_sanitisation(s: Split, batch: pd.DataFrame, k: int = 10, eta: float = 0.5):
    """Paudice et al. 2018: relabel/flag a row when fewer than eta of its k neighbours agree."""
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
    inverted, so the corrected variant hands it −accuracy. Quiz and calibration sets are drawn
    from the suspect data, as ART does."""
    def run(s: Split, batch: pd.DataFrame):
        from art.defences.detector.poison import RONIDefense
        from art.estimators.classification import SklearnClassifier

        encoder = make_encoder(s.spec).fit(feature_frame(s.reference, s.spec))
        classes = np.unique(s.reference[s.spec.label].astype(str))
        onehot = lambda frame: np.eye(len(classes))[np.searchsorted(classes, frame[s.spec.label].astype(str))]
        model = SklearnClassifier(LogisticRegression(max_iter=2000))
        model.fit(encoder.transform(feature_frame(s.reference, s.spec)), onehot(s.reference))
        accuracy = lambda y, p: float((np.argmax(y, 1) == np.argmax(p, 1)).mean())
        defence = RONIDefense(model, encoder.transform(feature_frame(batch, s.spec)), onehot(batch),
                              encoder.transform(feature_frame(s.holdout, s.spec)), onehot(s.holdout),
                              perf_func=(lambda y, p: -accuracy(y, p)) if corrected else accuracy)
        _, is_clean = defence.detect_poison()
        flagged = np.asarray(is_clean) == 0
        return flagged, flagged.astype(float)
    run.name = "art_roni_sign_corrected" if corrected else "art_roni_as_shipped"
    return run


ART_SUBSAMPLE = 60  # ART refits O(N^2) times: 60 suspect rows take 20-30 s here


def peers() -> list:
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest

    return [cleanlab_peer(lambda: LogisticRegression(max_iter=2000), "cleanlab_logistic"),
            cleanlab_peer(lambda: HistGradientBoostingClassifier(max_iter=100, random_state=0), "cleanlab_gbm"),
            knn_sanitisation,
            pyod_peer(lambda: IForest(random_state=0), "iforest"),
            pyod_peer(lambda: ECOD(), "ecod")]


# --- metrics -------------------------------------------------------------------------------------

def accuracy_after(s: Split, train_batch: pd.DataFrame, make) -> float:
    train = pd.concat([s.reference, train_batch], ignore_index=True)
    model = make_pipeline(make_encoder(s.spec), make()).fit(feature_frame(train, s.spec), train[s.spec.label].astype(str))
    return float((model.predict(feature_frame(s.test, s.spec)) == s.test[s.spec.label].astype(str)).mean())


def recovery(s: Split, batch, poison, flagged, make) -> float | None:
    poisoned = accuracy_after(s, batch, make)
    clean = accuracy_after(s, batch[~poison], make)
    if clean - poisoned < 0.005:  # the attack barely hurt: recovery is not defined
        return None
    return (accuracy_after(s, batch[~flagged], make) - poisoned) / (clean - poisoned)


def backdoor_success(s: Split, train_batch: pd.DataFrame) -> float:
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


def evaluate(method, s: Split, attack_name: str, batch: pd.DataFrame, poison: np.ndarray) -> dict:
    tracemalloc.start()
    started = time.perf_counter()
    flagged, score = method(s, batch)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    flagged = np.asarray(flagged, dtype=bool)
    row = {"method": method.name, "attack": attack_name, "rows": len(batch), "poisoned": int(poison.sum()),
           "flagged": int(flagged.sum()), "false_quarantine": float(flagged[~poison].mean()),
           "seconds": round(seconds, 3), "peak_mib": round(peak, 1)}
    if poison.any():
        k = int(poison.sum())
        row.update(precision=float(precision_score(poison, flagged, zero_division=0)),
                   recall=float(recall_score(poison, flagged)), f1=float(f1_score(poison, flagged)),
                   auroc=float(roc_auc_score(poison, np.nan_to_num(score))),
                   precision_at_k=float(poison[np.argsort(-np.nan_to_num(score), kind="stable")[:k]].mean()))
        if attack_name in LABEL_ATTACKS:
            for model_name, make in (("logistic", lambda: LogisticRegression(max_iter=2000)),
                                     ("gbm", lambda: HistGradientBoostingClassifier(random_state=0))):
                row[f"recovery_{model_name}"] = recovery(s, batch, poison, flagged, make)
        if attack_name == "backdoor":
            row["backdoor_success_unfiltered"] = backdoor_success(s, batch)
            row["backdoor_success_filtered"] = backdoor_success(s, batch[~flagged])
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="two datasets, fewer attacks")
    parser.add_argument("--ours-only", action="store_true",
                        help="rerun poisonguard's methods only and keep the peers' rows from the last "
                             "detection_core.json: the attacks are drawn from the same seeds, so the peers' "
                             "cases are identical (their code did not change)")
    args = parser.parse_args()
    previous = json.loads(RESULT_JSON.read_text())["rows"] if args.ours_only else []
    rng = np.random.default_rng(2026)
    rows = []
    datasets = load_datasets()[:2] if args.quick else load_datasets()
    attacks = ATTACKS[:4] if args.quick else ATTACKS
    for dataset in datasets:
        s = split(dataset, seed=0)
        ours = [Poisonguard(s),
                Poisonguard(s, {"outliers": {}, "label_consistency": {}}, "poisonguard_row_detectors"),
                SingleDetector("poisonguard_labels", LabelConsistency(), s),
                SingleDetector("poisonguard_trigger", TriggerPattern(), s),
                SingleDetector("poisonguard_duplicates", DuplicateFlood(), s),
                SingleDetector("poisonguard_roni", RoniInfluence(), s)]
        for attack_name in attacks:
            batch, poison = attack(attack_name, s, rng)
            theirs = [] if args.ours_only else peers()
            cases = [(attack_name, batch, poison, ours + theirs)]
            if attack_name == "random_flip_10":
                sub = np.sort(np.random.default_rng(1).choice(len(batch), size=min(ART_SUBSAMPLE, len(batch)), replace=False))
                small = batch.iloc[sub].reset_index(drop=True).assign(**{ROW_NUMBER: np.arange(len(sub))})
                cases.append((f"{attack_name}_subsample{len(sub)}", small, poison[sub],
                              ours + (theirs and theirs + [art_roni(False), art_roni(True)])))
            for case_name, case_batch, case_poison, methods in cases:
                for method in methods:
                    row = evaluate(method, s, case_name, case_batch, case_poison) | {"dataset": dataset.name}
                    rows.append(row)
                    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    if args.ours_only:
        ran = {row["method"] for row in rows}
        rows += [row for row in previous if row["method"] not in ran and not row["method"].startswith("poisonguard")]
    record = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, 2 cores, Python {platform.python_version()}",
              "peers_rerun": not args.ours_only, "rows": rows}
    RESULT_JSON.write_text(json.dumps(record, indent=1, default=str) + "\n")
    write_results(record)


BEGIN, END = "<!-- detection-core:begin -->", "<!-- detection-core:end -->"


def write_results(record: dict) -> None:
    """Replace the detection-core section of RESULTS.md with tables built from ``record``."""
    table = pd.DataFrame(record["rows"])
    f1 = table[table["poisoned"] > 0].pivot_table(index=["dataset", "attack"], columns="method", values="f1")
    clean = table[table["attack"] == "clean"].pivot_table(index="dataset", columns="method", values="false_quarantine")
    labels = table[table["attack"].isin(LABEL_ATTACKS)]
    summary = labels.groupby("method").agg(
        f1=("f1", "mean"), auroc=("auroc", "mean"), precision_at_k=("precision_at_k", "mean"),
        recovery_logistic=("recovery_logistic", "mean"), recovery_gbm=("recovery_gbm", "mean"),
        seconds_per_1k_rows=("seconds", lambda x: 1000 * x.sum() / labels.loc[x.index, "rows"].sum()))
    summary["false_quarantine_clean"] = clean.mean()
    backdoor = table[table["attack"] == "backdoor"].pivot_table(
        index="method", columns="dataset", values=["backdoor_success_filtered", "recall"])
    backdoor.loc["(no filtering)"] = table[table["attack"] == "backdoor"].groupby("dataset")[
        "backdoor_success_unfiltered"].first().reindex(backdoor["backdoor_success_filtered"].columns).tolist() + \
        [np.nan] * len(backdoor["recall"].columns)
    floods = table[table["attack"] == "duplicate_flood"].pivot_table(
        index="method", columns="dataset", values=["recall", "false_quarantine"])
    short = {"backdoor_success_filtered": "attack success", "recall": "recall", "false_quarantine": "false quarantine"}
    for frame in (backdoor, floods):
        frame.columns = [f"{short[metric]}: {dataset}" for metric, dataset in frame.columns]
    section = "\n\n".join([
        BEGIN,
        f"Machine: {record['machine']}, 24 GiB. Date: {record['date']}. Regenerate: `make bench`. "
        "`seconds_per_1k_rows` is the time of the method's call on the batch: poisonguard's detectors are "
        "fitted once per reference beforehand; peers fit on reference + batch inside the call. Recovery is "
        "noisy where the attack costs under a point of accuracy (cases under 0.5 points are left out)."
        + ("" if record.get("peers_rerun", True) else " This run used `--ours-only`: poisonguard's rows are new; "
           "the peers' rows are carried over from the previous full run, whose cases (datasets, splits, attack "
           "seeds) are identical."),
        "### Mean over the label-flip attacks (random 10 %/30 %, targeted, boundary, concentrated, "
        "duplicate flood) and all datasets; false quarantine on the clean batch",
        summary.round(3).to_markdown(),
        "### F1 per dataset and attack",
        f1.round(2).to_markdown(),
        "### False-quarantine rate on the clean batch",
        clean.round(3).to_markdown(),
        "### Backdoor: attack success on the clean test split (gradient-boosted model) after filtering, "
        "and recall of the trigger rows, per dataset",
        backdoor.round(3).to_markdown(),
        "### Duplicate flood: recall of the copies and false quarantine of the other rows, per dataset",
        floods.round(3).to_markdown(),
        END])
    path = REPO / "benchmarks" / "RESULTS.md"
    text = path.read_text()
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## Detection core (`benchmarks/detection_core.py`)\n\n" + section + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
