"""Train only on what the pre-retrain gate releases, and let MLflow link the model back to
every batch, scan and review behind it.

    make demo                                                # scans data_samples/ into .poisonguard-demo
    .venv/bin/python examples/train_with_gate.py --max-pending 200

``make demo`` leaves its quarantined rows for stewards, so the gate (which by default refuses
while any row awaits review) is told how many may wait; pending and rejected rows are never in
the snapshot either way. Steps:

1. ``pipeline.gate`` verifies every accepted batch and review against the ledger and writes the
   snapshot, or raises ``GateRefused`` (exit 3): then there is nothing to train on.
2. A scikit-learn model is trained on the snapshot: never on the provenance columns, nor on the
   protected attribute ``afam``.
3. The snapshot is logged as the run's training input (digest: our sha256, not MLflow's pandas
   digest) and the model is registered. Walking back: model version → run → input digest →
   gate run (``tags.snapshot_sha256``) → manifest.json → batch sha256s → scan runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workspace", type=Path, default=Path(".poisonguard-demo"))
    parser.add_argument("--dataset", default="hmda")
    parser.add_argument("--label", default="deny")
    parser.add_argument(
        "--exclude",
        action="append",
        default=None,
        help="Columns never used as features (repeatable; default: afam, the protected attribute).",
    )
    parser.add_argument("--out", type=Path, default=Path("gate-output"), help="Where the gate writes the snapshot.")
    parser.add_argument("--max-pending", type=int, default=0, help="Rows allowed to await review (gate default 0).")
    parser.add_argument(
        "--holdout",
        type=Path,
        default=REPO / "data_samples" / "holdout.parquet",
        help="Trusted rows to score the model on (skipped if missing).",
    )
    parser.add_argument("--model-name", default=None, help="Registered model name (default: <dataset>-<label>-classifier).")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: <dataset>-training).")
    return parser.parse_args(argv)


def build_model(frame: Any, features: list[str]) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c for c in features if frame[c].dtype.kind in "fiub"]
    categorical = [c for c in features if c not in numeric]
    encode = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            (
                "categorical",
                make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
                categorical,
            ),
        ]
    )
    return make_pipeline(encode, LogisticRegression(max_iter=1000))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import mlflow
    import pandas as pd
    import sklearn
    from mlflow.models import infer_signature

    import pipeline
    from pipeline.config import Settings
    from pipeline.gating import PROVENANCE_COLUMNS

    settings = Settings.from_environment(args.workspace)
    result = pipeline.gate(args.dataset, out=args.out, max_pending=args.max_pending, settings=settings)
    snapshot = pd.read_parquet(result.path)
    excluded = {args.label, *PROVENANCE_COLUMNS, *(args.exclude if args.exclude is not None else ["afam"])}
    features = [c for c in snapshot.columns if c not in excluded]
    x, y = snapshot[features], snapshot[args.label]

    mlflow.set_tracking_uri(settings.tracking_uri)
    experiment = args.experiment or f"{args.dataset}-training"
    if mlflow.get_experiment_by_name(experiment) is None:
        location = (settings.artifact_root / experiment).as_uri() if settings.artifact_root else None
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    model_name = args.model_name or f"{args.dataset}-{args.label}-classifier"
    with mlflow.start_run(run_name=f"train-{args.dataset}") as run:
        # The lineage link: this input's digest (and its sha256 tag) is the gate's snapshot hash.
        mlflow.log_input(result.dataset, context="training", tags=result.input_tags)
        mlflow.set_tags({"snapshot_sha256": result.sha256, "gate_run_id": result.run_id, "dataset": args.dataset})
        mlflow.log_params({"features": ",".join(features), "label": args.label, "rows": len(snapshot)})
        model = build_model(snapshot, features).fit(x, y)
        if args.holdout.exists():
            holdout = pd.read_parquet(args.holdout)
            mlflow.log_metric("holdout_accuracy", float(model.score(holdout[features], holdout[args.label])))
        # integer features declared as doubles: a missing value at inference time would be a float
        example = x.head(20).astype({c: "float64" for c in features if x[c].dtype.kind in "iu"})
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=model_name,
            signature=infer_signature(example, model.predict(example)),
            # skops (no pickle) is MLflow's default; the encoders' dtype parameter is its one extra type
            skops_trusted_types=["numpy.dtype"],
            # stated rather than inferred: inference loads the model in a subprocess (seconds)
            pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"pandas=={pd.__version__}"],
        )
    version = info.registered_model_version
    print(f"Trained on {len(snapshot)} rows of snapshot {result.sha256[:16]}… (gate run {result.run_id}).")
    print(f"Registered model {model_name} version {version} from run {run.info.run_id} at {settings.tracking_uri}")
    return {
        "model_name": model_name,
        "version": version,
        "run_id": run.info.run_id,
        "snapshot_sha256": result.sha256,
        "gate_run_id": result.run_id,
    }


if __name__ == "__main__":
    from pipeline.errors import PoisonguardError

    try:
        main()
    except PoisonguardError as error:  # GateRefused: exit 3, nothing to train on
        print(f"train_with_gate: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
