"""Provenance in MLflow: one run per scanned batch, findable by the batch's SHA-256.

Fingerprints are our own SHA-256 of the file bytes: MLflow's pandas dataset digest covers only
the first 10,000 rows (ECOSYSTEM.md §3), so a poisoned row after row 10k would not change it.
The batch is logged as a ``MetaDataset`` input carrying that digest; ``from_pandas`` would also
infer a schema cell by cell (1.9 s per 100k×30).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.alarms import SourceRecord
from pipeline.faults import checkpoint

EXPERIMENT_PREFIX = "poisonguard-"
_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")


def _mlflow():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow
    return mlflow


def redact(uri: str) -> str:
    """Drop credentials from a URI before it is logged or written anywhere (``pipeline.redaction``)."""
    from pipeline.redaction import redact as redact_text

    return redact_text(uri)


def _redacted(values: dict[str, Any]) -> dict[str, str]:
    """Params and tags as MLflow stores them, with every secret shown as *** (one redaction for
    all of them: ``pipeline.redaction``)."""
    from pipeline.redaction import known_secrets
    from pipeline.redaction import redact as redact_text

    secrets = known_secrets()
    return {k: redact_text(str(v), secrets) for k, v in values.items()}


def experiment_name(dataset: str) -> str:
    return f"{EXPERIMENT_PREFIX}{dataset}"


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    with _sqlite_database(tracking_uri) as database:
        if database is not None and not database.exists():
            _create_sqlite_database(database)
        return MlflowClient(tracking_uri=tracking_uri)


@contextlib.contextmanager
def _sqlite_database(tracking_uri: str) -> Iterator[Path | None]:
    """The SQLite file a tracking URI names (None for any other store), locked against other
    processes while MLflow first opens it. MLflow creates a new database's tables in Alembic
    migrations when a client is made, and two processes doing that at once break it ("Online
    migration expected to match one row ... in 'alembic_version'"): two scans started together
    on a new workspace did. A ``flock`` beside the database, dropped by the kernel if its holder
    dies; MLflow makes its store once per process, so later clients pay one uncontended lock."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(tracking_uri)
    except ArgumentError:  # http://, databricks, a file store: not a database of ours to create
        yield None
        return
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        yield None
        return
    database = Path(url.database).expanduser()
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(f"{database.name}.first-use.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield database
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _create_sqlite_database(database: Path) -> None:
    """Create MLflow's tables in a new file, then move it into place. Killed while MLflow
    created them in place, a scan left a database that every later client refused ("table
    guardrails already exists"), and the workspace scanned nothing until it was deleted by hand."""
    from mlflow.tracking import MlflowClient

    creating = database.with_name(f".{database.name}.{uuid.uuid4().hex}.creating")
    try:
        MlflowClient(tracking_uri=f"sqlite:///{creating}")  # a client's store creates the tables
        checkpoint("mlflow.database_created")
        os.link(creating, database)  # unlike a rename, never replaces a database made meanwhile
    except FileExistsError:  # made by another program, which does not take our lock
        pass
    finally:
        creating.unlink(missing_ok=True)


def ensure_experiment(tracking_uri: str, dataset: str, artifact_root: Path | None) -> str:
    client = _client(tracking_uri)
    name = experiment_name(dataset)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (artifact_root / dataset).as_uri() if artifact_root is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # a concurrent scan created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def start_scan_run(tracking_uri: str, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
    run = _client(tracking_uri).create_run(experiment_id, run_name=run_name, tags=_redacted(tags))
    return run.info.run_id


def log_batch_input(
    tracking_uri: str,
    run_id: str,
    path: Path,
    name: str,
    sha256: str,
    frame: pd.DataFrame,
    context: str,
    tags: dict[str, str] | None = None,
) -> None:
    _mlflow()  # imports mlflow with its import-time warnings silenced
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():  # two registered local sources make MLflow warn on every call
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(path.resolve()))
    # MLflow's Dataset marks profile abstract but is no ABC: MetaDataset, which MLflow itself
    # instantiates, leaves it out. The same below.
    dataset = MetaDataset(
        source=source,
        name=name,  # type: ignore[abstract]
        digest=sha256[:32],
        schema=_schema(frame),
    )
    input_tags = [InputTag(key="mlflow.data.context", value=context), InputTag(key="sha256", value=sha256)] + [
        InputTag(key=k, value=str(v)) for k, v in (tags or {}).items()
    ]
    _client(tracking_uri).log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), input_tags)])


def _schema(frame: pd.DataFrame):
    from mlflow.types import ColSpec, Schema, TensorSpec

    specs: list[ColSpec | TensorSpec] = []
    for col in frame.columns:
        dtype = frame[col].dtype
        if pd.api.types.is_bool_dtype(dtype):
            kind = "boolean"
        elif pd.api.types.is_integer_dtype(dtype):
            kind = "long"
        elif pd.api.types.is_float_dtype(dtype):
            kind = "double"
        else:
            kind = "string"
        specs.append(ColSpec(kind, str(col)))
    return Schema(specs)


def log_results(
    tracking_uri: str,
    run_id: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: list[Path],
) -> None:
    from mlflow.entities import Metric, Param, RunTag

    client = _client(tracking_uri)
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(metric_key(k), float(v), now, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)[:6000]) for k, v in _redacted(params).items()],
        tags=[RunTag(k, str(v)) for k, v in _redacted(tags).items()],
    )
    for path in artifacts:
        client.log_artifact(run_id, str(path))


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(tracking_uri).set_terminated(run_id, status=status)


def metric_key(name: str) -> str:
    return _METRIC_NAME.sub("_", name)[:250]


def find_scan_runs(tracking_uri: str, sha256: str, dataset: str | None = None, status: str | None = None) -> list[Any]:
    """Runs whose ``batch_sha256`` tag is ``sha256`` (optionally for one dataset/status)."""
    client = _client(tracking_uri)
    experiments = client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'")
    if not experiments:
        return []
    query = f"tags.batch_sha256 = '{sha256}'"
    if dataset:
        query += f" and tags.dataset = '{dataset}'"
    if status:
        query += f" and attributes.status = '{status}'"
    return client.search_runs([e.experiment_id for e in experiments], filter_string=query)


def close_abandoned_runs(tracking_uri: str, sha256: str, dataset: str) -> int:
    """Mark runs a killed scan left RUNNING for this batch as FAILED; returns how many."""
    runs = find_scan_runs(tracking_uri, sha256, dataset, status="RUNNING")
    client = _client(tracking_uri)
    for run in runs:
        client.set_tag(run.info.run_id, "abandoned", "true")
        client.set_terminated(run.info.run_id, status="FAILED")
    return len(runs)


def finish_committed_run(tracking_uri: str, run_id: str) -> bool:
    """Mark FINISHED the run of a scan that committed its outputs to the workspace but was killed
    before it finished the run itself: everything it logs is logged before the commit, so the run
    is complete. Called when the committed batch is delivered again; True if the run needed it."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        status = client.get_run(run_id).info.status
    except MlflowException:  # scanned against another tracking server: no run of it here to finish
        return False
    if status != "RUNNING":
        return False
    client.set_tag(run_id, "finished_on_redelivery", "true")
    client.set_terminated(run_id, status="FINISHED")
    return True


def source_history(
    tracking_uri: str, dataset: str, source: str, exclude_run_id: str, limit: int = 500
) -> list[SourceRecord]:
    """Rows scanned and quarantined in the source's earlier finished scans of the dataset,
    newest first. Filtered on the source in Python: it is free text and MLflow's filter
    language has no escape for quotes."""
    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name(dataset))
    if experiment is None:
        return []
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        max_results=limit,
        order_by=["attributes.start_time DESC"],
    )
    return [
        SourceRecord(rows=int(run.data.metrics["rows_rows"]), quarantined=int(run.data.metrics["rows_quarantined"]))
        for run in runs
        if run.info.run_id != exclude_run_id
        and run.data.tags.get("source") == source
        and "rows_rows" in run.data.metrics
        and "rows_quarantined" in run.data.metrics
    ]


def log_review(tracking_uri: str, run_id: str, tags: dict[str, str], metrics: dict[str, float]) -> None:
    """Mirror steward actions to the batch's run (it is finished; MLflow allows adding to it)."""
    client = _client(tracking_uri)
    for key, value in _redacted(tags).items():
        client.set_tag(run_id, key, value)
    now_ms = int(time.time() * 1000)
    for key, amount in metrics.items():
        client.log_metric(run_id, metric_key(key), amount, timestamp=now_ms)


# --- the pre-retrain gate ------------------------------------------------------------------

GATE_STAGE = "gate"
FILE_TAG_PREFIX = "file_sha256."  # on a scan's run: file_sha256.accepted.parquet = <sha256>
_TAGS_PER_CALL = 100  # MLflow's log_batch accepts at most 100 tags per request
_INPUTS_PER_CALL = 100


def file_tags(files: dict[str, str]) -> dict[str, str]:
    """The sha256 of each committed workspace file of a batch, as tags of its scan run: a copy
    of what the ledger records, outside the workspace and the ledger's database."""
    return {f"{FILE_TAG_PREFIX}{name}": sha256 for name, sha256 in sorted(files.items())}


def start_gate_run(tracking_uri: str, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
    return start_scan_run(tracking_uri, experiment_id, run_name, {**tags, "stage": GATE_STAGE})


def log_tags(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Any number of tags, in as many requests as MLflow's per-request limit needs."""
    from mlflow.entities import RunTag

    client = _client(tracking_uri)
    items = [RunTag(k, str(v)) for k, v in _redacted(tags).items()]
    for start in range(0, len(items), _TAGS_PER_CALL):
        client.log_batch(run_id, tags=items[start : start + _TAGS_PER_CALL])


def meta_dataset(path: Path, name: str, sha256: str, frame: pd.DataFrame | None = None) -> Any:
    """An MLflow dataset whose digest is our SHA-256 (its first 32 hex digits: MLflow's digest
    column holds 36 characters), never MLflow's own pandas digest (the first 10,000 rows only)."""
    _mlflow()
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(Path(path).resolve()))
    return MetaDataset(
        source=source,
        name=name,
        digest=sha256[:32],  # type: ignore[abstract]
        schema=_schema(frame) if frame is not None else None,
    )


def log_dataset_inputs(tracking_uri: str, run_id: str, inputs: list[tuple[Any, str, dict[str, str]]]) -> None:
    """``inputs``: (dataset from ``meta_dataset``, context, tags) each; the full SHA-256 belongs
    in the tags (``sha256``), the digest holds only its first 32 digits."""
    from mlflow.entities import DatasetInput, InputTag

    entities = [
        DatasetInput(
            dataset._to_mlflow_entity(),
            [InputTag(key="mlflow.data.context", value=context)] + [InputTag(key=k, value=str(v)) for k, v in tags.items()],
        )
        for dataset, context, tags in inputs
    ]
    client = _client(tracking_uri)
    for start in range(0, len(entities), _INPUTS_PER_CALL):
        client.log_inputs(run_id, datasets=entities[start : start + _INPUTS_PER_CALL])


def last_gate_head(tracking_uri: str, ledger_url: str) -> tuple[int, str] | None:
    """The newest ledger head (sequence, entry hash) a gate run logged for this ledger after
    verifying it: the chain is append-only, so that entry must still be there, unchanged."""
    client = _client(tracking_uri)
    experiments = client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'")
    if not experiments:
        return None
    query = f"tags.stage = '{GATE_STAGE}' and tags.ledger_verified = 'true'"
    if "'" not in ledger_url:  # the filter language cannot escape a quote; filter in Python then
        query += f" and tags.ledger_url = '{ledger_url}'"
    best: tuple[int, str] | None = None
    token = None
    while True:
        page = client.search_runs(
            [e.experiment_id for e in experiments], filter_string=query, max_results=1000, page_token=token
        )
        for run in page:
            tags = run.data.tags
            if tags.get("ledger_url") != ledger_url or not tags.get("ledger_head_sequence", "").isdigit():
                continue
            head = (int(tags["ledger_head_sequence"]), tags.get("ledger_head_hash", ""))
            if best is None or head[0] > best[0]:
                best = head
        token = page.token
        if not token:
            return best


def find_gate_runs(tracking_uri: str, snapshot_sha256: str) -> list[Any]:
    """The gate runs that released the snapshot with this SHA-256 (the same state gives the same
    snapshot, so there may be several)."""
    client = _client(tracking_uri)
    experiments = client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'")
    if not experiments:
        return []
    return list(
        client.search_runs(
            [e.experiment_id for e in experiments],
            filter_string=f"tags.stage = '{GATE_STAGE}' and tags.snapshot_sha256 = '{snapshot_sha256}'",
            order_by=["attributes.start_time DESC"],
        )
    )
