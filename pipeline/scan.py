"""The steps of a scan as plain functions. ``pipeline/scan_run.py`` runs them in order.

ingest → (already recorded? re-deliver) → load reference, holdout, suite → start MLflow run →
validate → detect → decide → write outputs, log to MLflow, commit to the workspace.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib.metadata
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.model_selection import train_test_split

from pipeline import __version__
from pipeline.alarms import Alarm, CheckResult, SourceRecord, fit_batch_checks, run_batch_checks, source_history
from pipeline.config import Settings, safe_name
from pipeline.decide import Decisions, content_keys, decide
from pipeline.detectors import (
    ChunkMap,
    FeatureSpec,
    build_detectors,
    detector_class,
    explain_rows,
    fit_all,
    read_each,
    score_all,
    score_in_chunks,
)
from pipeline.errors import InputError, PoisonguardError
from pipeline.findings import BatchFinding, ReasonCode, empty_findings, findings_frame
from pipeline.fit_cache import FitCache
from pipeline.io import ROW_NUMBER, LoadedTable, probe_table, read_table
from pipeline.memo import ProcessMemo, content_key
from pipeline.memory import release_freed_memory
from pipeline.provenance import redact
from pipeline.report import render_report
from pipeline.roles import CARRIED, Role, RoleRules, check_roles, id_shape, infer_roles, leading_zero_codes
from pipeline.roni import GroupImpact, classifier, group_impact
from pipeline.store import ScanOutputs, Workspace
from pipeline.validation import (
    VALIDATION_CELLS,
    ColumnKind,
    ConformedBatch,
    Suite,
    ValidationOutcome,
    column_kinds,
    conform,
    infer_suite,
    load_suite,
    validate,
    validate_table,
    with_roles,
)
from pipeline.verdict import (
    KindEvidence,
    Verdict,
    combine,
    group_evidence,
    invalid_evidence,
    kind_of,
    row_evidence,
    schema_evidence,
)


@dataclass(frozen=True)
class ScanRequest:
    """What the user asked for: the CLI's arguments, as paths and names."""

    batch: Path
    reference: Path
    label: str
    out: Path
    suite: Path | None = None
    holdout: Path | None = None
    source: str = "unknown"
    dataset: str | None = None
    # roles the user set (--id, --time, --text, --ignore): (column, role) pairs; see pipeline.roles
    roles: tuple[tuple[str, str], ...] = ()

    @property
    def dataset_name(self) -> str:
        return safe_name(self.dataset or Path(self.reference).stem, "dataset name")


@dataclass(frozen=True)
class TrustedData:
    """The reference split into what detectors fit on and the holdout they are judged on."""

    reference: LoadedTable
    train: pd.DataFrame
    holdout: pd.DataFrame
    holdout_origin: str  # a path, or "split from the reference"
    holdout_sha256: str | None
    suite: Suite
    kinds: dict[str, ColumnKind]
    spec: FeatureSpec
    # holdout rows that break the suite's row rules: a clean batch's natural share of invalid rows
    holdout_invalid: int = 0
    roles: dict[str, Role] = field(default_factory=dict)  # every reference column's role
    accepted_ids: dict[str, set[str]] = field(default_factory=dict)  # id column -> ids already accepted
    role_rules: RoleRules = field(default_factory=RoleRules)
    unseen_levels: str = "hold"  # a category level the trusted data never had: "hold" its rows, or "alarm"
    id_shapes: dict[str, str | None] = field(default_factory=dict)  # id column -> the form of every trusted id

    @property
    def carried(self) -> tuple[str, ...]:
        return tuple(c for c, r in self.roles.items() if r in CARRIED)

    @property
    def natural_invalid_share(self) -> float:
        """The share of clean rows that break the suite's row rules (the holdout's): what the
        rules spend of the false-quarantine target before the detectors get the rest."""
        return self.holdout_invalid / len(self.holdout) if len(self.holdout) else 0.0


def preflight(request: ScanRequest) -> None:
    """Checks that cost milliseconds, so that a bad file fails before any service starts."""
    request.dataset_name  # noqa: B018 - validates the name
    probe_table(request.batch, "batch")
    reference_columns = probe_table(request.reference, "reference")
    _require_label(reference_columns, request)
    unknown = [c for c, _ in request.roles if c not in reference_columns]
    if unknown:
        raise InputError(
            f"Column(s) {', '.join(map(repr, unknown))} given a role are not in the reference {request.reference}."
        )
    if request.holdout:
        probe_table(request.holdout, "holdout")
    if request.suite:
        load_suite(request.suite)


def _require_label(reference_columns: list[str], request: ScanRequest) -> None:
    if request.label not in reference_columns:
        raise InputError(
            f"The label column '{request.label}' is not in the reference {request.reference} "
            f"(its columns: {', '.join(map(str, reference_columns[:12]))})."
        )


def ingest(request: ScanRequest, settings: Settings | None = None) -> LoadedTable:
    """The batch, read into memory, or spooled into the workspace when it is larger than
    ``settings.spool_bytes``."""
    large = settings is not None and _file_size(request.batch) > settings.spool_bytes
    spool_dir = Workspace(settings.workspace).spool_dir if settings is not None and large else None
    return read_table(request.batch, role="batch", spool_dir=spool_dir)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except (OSError, ValueError):
        return 0  # read_table says what is wrong with it


def load_trusted(request: ScanRequest, settings: Settings) -> TrustedData:
    reference = read_table(request.reference, role="reference")
    _require_label(reference.columns, request)
    explicit = {column: Role(role) for column, role in request.roles}
    unknown = [c for c in explicit if c not in reference.columns]
    if unknown:
        raise InputError(
            f"Column(s) {', '.join(map(repr, unknown))} given a role are not in the reference {request.reference}."
        )
    typed, exact = reference.frame.drop(columns=[ROW_NUMBER]), reference.exact.to_pandas()
    codes = leading_zero_codes(typed, exact)
    kinds = {**column_kinds(typed), **dict.fromkeys(codes, ColumnKind.CATEGORICAL)}
    if request.suite:
        suite = load_suite(request.suite)
        roles = resolve_roles(suite.roles, reference.columns, request.label, suite.protected_columns, explicit)
        kinds = _kinds_of(suite, kinds, codes)
    else:
        roles = infer_roles(typed, request.label, explicit=explicit, exact=exact)
        suite = infer_suite(
            typed, request.label, name=request.dataset_name, source=str(request.reference), roles=roles, kinds=kinds
        )
    if suite.label and suite.label != request.label:
        raise PoisonguardError(f"--label is '{request.label}' but the suite {suite.source} is for label '{suite.label}'.")
    suite = with_roles(suite, roles) if any(r in CARRIED for r in roles.values()) else suite
    kinds = {c: k for c, k in kinds.items() if roles.get(c) not in CARRIED}
    spec = FeatureSpec.from_kinds(kinds, request.label, exclude=suite.protected_columns)
    if not spec.features:
        raise InputError(f"The reference {request.reference} has no feature columns besides the label.")
    reference_frame, _ = conform(reference.frame, kinds)
    if request.holdout:
        holdout_table = read_table(request.holdout, role="holdout")
        missing = sorted(set(reference.columns) - set(holdout_table.columns))
        if missing:
            raise InputError(f"The holdout {request.holdout} lacks reference column(s): {', '.join(missing)}.")
        holdout, _ = conform(holdout_table.frame, kinds)
        train, origin, holdout_sha = reference_frame, str(request.holdout), holdout_table.sha256
    else:
        train, holdout = split_holdout(reference_frame, request.label, settings.holdout_fraction, settings.random_state)
        origin, holdout_sha = "split from the reference", None
    ids = [c for c, r in roles.items() if r is Role.ID]
    # the holdout's own rule breaks: what a clean batch breaks (the verdict's invalid-values test)
    holdout_invalid = _TRUSTED_WORK.get_or_compute(
        (
            "holdout invalid rows",
            content_key(
                [
                    reference.sha256,
                    holdout_sha or (settings.holdout_fraction, settings.random_state),
                    suite.document,
                    sorted((c, k.value) for c, k in kinds.items()),
                ]
            ),
        ),
        lambda: invalid_rows(holdout, suite),
    )
    return TrustedData(
        reference,
        train,
        holdout,
        origin,
        holdout_sha,
        suite,
        kinds,
        spec,
        holdout_invalid,
        roles,
        _known_ids(reference, ids, Workspace(settings.workspace), request.dataset_name) if ids else {},
        settings.role_rules,
        settings.unseen_levels,
        {c: id_shape(exact[c]) for c in ids},
    )


def _kinds_of(suite: Suite, kinds: dict[str, ColumnKind], codes: list[str]) -> dict[str, ColumnKind]:
    """Under a suite, a code column read as integers is categorical only where the suite expects
    text there (a suite written before codes were told apart expects numbers)."""
    expects_text = {
        e["kwargs"].get("column")
        for e in suite.document["expectations"]
        if e["type"] == "expect_column_values_to_be_in_type_list" and e["kwargs"].get("type_list") == ["str"]
    }
    return {c: ColumnKind.NUMERIC if c in codes and c not in expects_text else k for c, k in kinds.items()}


def resolve_roles(
    named: dict[str, Role], columns: list[str], label: str, protected: tuple[str, ...], explicit: dict[str, Role]
) -> dict[str, Role]:
    """Every column's role under a suite: the suite's ``roles`` (a suite written before roles:
    label, protected, features), then what the user set explicitly."""
    roles = {c: named.get(c, Role.PROTECTED if c in protected else Role.FEATURE) for c in columns}
    roles[label] = Role.LABEL
    roles.update(explicit)
    return roles


def _known_ids(reference: LoadedTable, columns: list[str], workspace: Workspace, dataset: str) -> dict[str, set[str]]:
    """Ids a batch row may not reuse: the trusted reference's and those of rows already accepted."""
    from pipeline.roles import id_text

    known = accepted_ids(workspace, dataset, columns)
    cells = reference.exact.select(columns).to_pandas()
    for column in columns:
        known[column].update(v for v in id_text(cells[column]) if v is not None)
    return known


def accepted_ids(workspace: Workspace, dataset: str, columns: list[str]) -> dict[str, set[str]]:
    """The ids (as text) of the rows already accepted into ``dataset``: its committed batches'
    accepted.parquet. A repeated id is an integrity finding, whichever batch brought it first."""
    from pipeline.roles import id_text

    found: dict[str, set[str]] = {c: set() for c in columns}
    batches = workspace.root / "datasets" / dataset / "batches"
    for folder in sorted(batches.iterdir()) if batches.is_dir() else ():
        path = folder / "accepted.parquet"
        if not (folder / "summary.json").is_file() or not path.is_file():
            continue
        import pyarrow.parquet as pq

        present = [c for c in columns if c in pq.ParquetFile(path).schema_arrow.names]
        if not present:
            continue
        table = pq.read_table(path, columns=present).to_pandas()
        for column in present:
            found[column].update(v for v in id_text(table[column]) if v is not None)
    return found


# What depends on the trusted data alone, kept while a process scans batch after batch against
# it (pipeline/memo.py); keyed by content, never by path.
_TRUSTED_WORK = ProcessMemo(size=8)


def invalid_rows(frame: pd.DataFrame, suite: Suite) -> int:
    """Rows of trusted ``frame`` that break the suite's row rules (a failure of the whole frame,
    such as a schema difference, counts none: the batch check of the same rule judges batches)."""
    if frame.empty:
        return 0
    findings = validate(frame.set_index(frame[ROW_NUMBER].to_numpy()), suite).row_findings
    return int(findings[ROW_NUMBER].nunique())


def split_holdout(frame: pd.DataFrame, label: str, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified split so the holdout keeps the reference's label balance."""
    labels = frame[label].astype(str)
    stratify = labels if labels.value_counts().min() >= 2 else None
    train, holdout = train_test_split(frame, test_size=fraction, random_state=seed, stratify=stratify)
    return train.sort_index(), holdout.sort_index()


def validate_batch(
    batch: LoadedTable, trusted: TrustedData, max_cells: int = VALIDATION_CELLS
) -> tuple[ConformedBatch, ValidationOutcome]:
    """The suite's rules, then the checks of id and time columns (``pipeline.roles``) and the
    policy for category levels the trusted data never had."""
    conformed, outcome = validate_table(batch, trusted.kinds, trusted.suite, max_cells)
    conformed = replace(conformed, carried=trusted.carried)
    if outcome.batch_findings:
        return conformed, outcome
    outcome = _unseen_levels(outcome, trusted)
    judged = {c: r for c, r in trusted.roles.items() if r in (Role.ID, Role.TIME) and c in batch.columns}
    if not judged:
        return conformed, outcome
    cells = batch.exact.select(list(judged)).to_pandas()
    cells[ROW_NUMBER] = np.arange(batch.n_rows, dtype=np.int64)
    records = check_roles(
        cells,
        judged,
        arrival=now(),
        rules=trusted.role_rules,
        accepted_ids=trusted.accepted_ids,
        id_shapes=trusted.id_shapes,
    )
    if not records:
        return conformed, outcome
    found = findings_frame(records)
    checks = {**outcome.checks, **found.groupby("check")[ROW_NUMBER].nunique().astype(int).to_dict()}
    parts = [f for f in (outcome.row_findings, found) if len(f)]
    return conformed, replace(outcome, row_findings=pd.concat(parts, ignore_index=True), checks=checks)


def _unseen_levels(outcome: ValidationOutcome, trusted: TrustedData) -> ValidationOutcome:
    """Under the "alarm" policy a feature's level the trusted data never had is an alarm, not a
    reason to hold its rows (the label's levels are always held: an unknown class is no label)."""
    findings = outcome.row_findings
    if trusted.unseen_levels != "alarm" or findings.empty:
        return outcome
    unseen = (findings["reason_code"] == ReasonCode.NOT_IN_DOMAIN.value) & (findings["column"] != trusted.spec.label)
    if not unseen.any():
        return outcome
    table = findings[unseen].groupby("column").agg(rows=(ROW_NUMBER, "nunique"), levels=("observed", "unique")).reset_index()
    table["levels"] = table["levels"].map(lambda v: sorted(map(str, v))[:20])
    described = "; ".join(
        f"{r.column}: {r.rows} row(s) with {', '.join(map(repr, r.levels[:5]))}" for r in table.itertuples()
    )
    alarm = Alarm(
        "unseen_levels",
        f"category levels never seen in the trusted data (rows accepted): {described}",
        0.0,
        _jsonable(table),
    )
    checks = {k: v for k, v in outcome.checks.items() if k not in set(findings.loc[unseen, "check"])}
    return replace(
        outcome,
        row_findings=findings[~unseen].reset_index(drop=True),
        checks=checks,
        alarms=(*outcome.alarms, CheckResult("unseen_levels", table, alarm)),
    )


def fit_detectors(trusted: TrustedData, settings: Settings):
    """Detectors fitted on (at most ``settings.max_fit_rows`` of) the trusted rows, from the
    workspace's signed fit cache when the same trusted data was fitted before."""

    def fit():
        rows = fit_sample(trusted.train, trusted.spec.label, settings.max_fit_rows, settings.random_state)
        return fit_all(build_detectors(settings.detectors), rows, trusted.spec, trusted.holdout)

    cache = FitCache.for_workspace(settings.workspace)
    return fit() if cache is None else cache.get_or_fit(fit_key(trusted, settings), fit)


def fit_sample(train: pd.DataFrame, label: str, max_rows: int, seed: int) -> pd.DataFrame:
    """All trusted rows up to ``max_rows``, else a stratified sample of that many. Conformal
    p-values need a few thousand calibration rows, not 200,000, and the fit's cost grows with
    every row (label consistency: ~2 min on 200,000 rows)."""
    if len(train) <= max_rows:
        return train
    sample, _ = split_holdout(train, label, 1.0 - max_rows / len(train), seed)
    return sample


def fit_key(trusted: TrustedData, settings: Settings) -> dict[str, Any]:
    """Everything a fit depends on: trusted data, features, detector settings, versions. The
    suite reaches the fit only through the features it protects (``spec``); its own digest would
    also change with the path an inferred suite names as its source, refitting for nothing."""
    import joblib
    import pyod
    import sklearn

    return {
        "reference": trusted.reference.sha256,
        "holdout": trusted.holdout_sha256 or trusted.holdout_origin,
        "holdout_fraction": settings.holdout_fraction,
        "random_state": settings.random_state,
        "spec": [trusted.spec.label, trusted.spec.numeric, trusted.spec.categorical],
        "detectors": settings.detectors,
        "max_fit_rows": settings.max_fit_rows,
        "versions": [__version__, sklearn.__version__, pyod.__version__, np.__version__, pd.__version__, joblib.__version__],
        "code": detector_code_digest(),
        "installed_detectors": installed_detector_digest(settings.detectors),
    }


@functools.lru_cache(maxsize=1)
def detector_code_digest() -> str:
    """sha256 of the detectors' source: a change to how they fit (an encoder's clipping) must not
    be served a fit made by the old code under the same version number."""
    digest = hashlib.sha256()
    for path in sorted((Path(__file__).parent / "detectors").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def installed_detector_digest(names: Iterable[str]) -> dict[str, str]:
    """For each detector of another package among ``names``: its package's version and sha256
    of the source of its class's module, which ``detector_code_digest`` does not cover (a package
    under development changes code without a new version)."""
    digests = {}
    for name in names:
        cls = detector_class(name)
        if cls.__module__.startswith("pipeline.detectors."):
            continue
        file = getattr(sys.modules[cls.__module__], "__file__", None)
        source = Path(file).read_bytes() if file else b""
        package = cls.__module__.partition(".")[0]
        try:
            version = importlib.metadata.version(importlib.metadata.packages_distributions().get(package, [package])[0])
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        digests[name] = f"{version}:{hashlib.sha256(source).hexdigest()}"
    return digests


def fit_checks(trusted: TrustedData):
    segments = tuple(c for c in trusted.suite.segment_columns if c in trusted.train.columns)
    return fit_batch_checks(trusted.train, trusted.spec, segments)


def check_batch(checks, conformed: ConformedBatch, batch_findings: list[BatchFinding]) -> list[CheckResult]:
    """Batch-level alarms (drift, segment label rates), reading the batch a column at a time;
    skipped, like detectors, for a batch whose schema failed."""
    return [] if batch_findings else run_batch_checks(checks, conformed)


def trusted_suspicion(detectors, trusted: TrustedData, settings: Settings) -> np.ndarray:
    """The fused suspicion of the trusted holdout rows: what a clean batch looks like to the same
    detectors, drawn beside the batch in the report."""
    if not detectors or trusted.holdout.empty:
        return np.array([])

    def suspicion() -> np.ndarray:
        scores = score_all(detectors, trusted.holdout)
        decisions = decide(trusted.holdout[ROW_NUMBER], empty_findings(), [], scores, settings.policy)
        return decisions.table["suspicion"].to_numpy()

    key = ("holdout suspicion", content_key([fit_key(trusted, settings), settings.policy.as_dict()]))
    return _TRUSTED_WORK.get_or_compute(key, suspicion).copy()


def check_source(request: ScanRequest, earlier: list[SourceRecord], decisions: Decisions) -> CheckResult:
    held = int(decisions.table["quarantined"].sum())
    return source_history(request.source, earlier, len(decisions.table), held)


def confirm_impact(
    trusted: TrustedData, conformed: ConformedBatch, outcome: ValidationOutcome, decisions: Decisions, settings: Settings
) -> list[GroupImpact]:
    """Exact RONI on groups: the batch as a whole, every row the detectors hold, and the rows
    each detector holds (a duplicate flood, a trigger group, a cluster of flips), since
    poisoning is rarely one row and a group's harm is large enough to measure.

    Rows that failed validation are left out of every fit: they never reach training anyway.
    """
    if outcome.batch_findings or trusted.spec.label not in conformed.columns:
        return []
    findings = decisions.findings
    is_detector = findings["reason_code"] == ReasonCode.DETECTOR.value
    row_numbers = conformed.row_numbers
    valid = ~row_numbers.isin(set(findings.loc[~is_detector, ROW_NUMBER])).to_numpy()
    if not valid.any():
        return []
    model = classifier(settings.roni_model)
    groups = {"rows of the batch": valid}
    by_detector = findings[is_detector].groupby("check")[ROW_NUMBER].agg(set)
    if len(by_detector):
        groups["rows the detectors quarantined"] = row_numbers.isin(set().union(*by_detector)).to_numpy()
    if len(by_detector) > 1:
        groups.update({f"rows held by {check}": row_numbers.isin(rows).to_numpy() for check, rows in by_detector.items()})
    return [
        group_impact(
            trusted.train,
            trusted.holdout,
            conformed,
            rows,
            trusted.spec,
            name,
            model,
            settings.max_impact_rows,
            settings.random_state,
            among=valid,
        )
        for name, rows in groups.items()
    ]


def score_batch(
    detectors,
    conformed: ConformedBatch,
    batch_findings: list[BatchFinding],
    chunk_rows: int = 100_000,
    map_chunks: ChunkMap = read_each,
) -> dict[str, pd.DataFrame]:
    """Every detector's scores; the batch is read ``chunk_rows`` rows at a time, through
    ``map_chunks`` (see ``detectors.score_in_chunks``)."""
    # A batch that fails its schema is held whole; scoring columns it may not have means nothing.
    if batch_findings:
        return {}
    scores = score_in_chunks(detectors, conformed.chunks(chunk_rows), conformed.take, map_chunks)
    release_freed_memory(conformed.n_rows)
    return scores


def assess(
    conformed: ConformedBatch,
    outcome: ValidationOutcome,
    detectors,
    scores: dict[str, pd.DataFrame],
    trusted: TrustedData,
    checks: list[CheckResult],
    settings: Settings,
) -> Verdict:
    """The batch verdict (``pipeline.verdict``): every kind of evidence the scan has, tested
    against what a clean batch shows."""
    n = conformed.n_rows
    if outcome.batch_findings:
        return combine([schema_evidence(n, [f.message for f in outcome.batch_findings])], n, settings.policy.verdict_alpha)
    kinds: list[KindEvidence] = []
    aligned = {name: scores[name].set_index(ROW_NUMBER).reindex(np.arange(n)) for name in detectors}
    failing = np.unique(outcome.row_findings[ROW_NUMBER].to_numpy(dtype="int64"))
    # An impossible record or an outlier is label-inconsistent too: such rows are the evidence of
    # their own kinds, not of flipped labels (kinds may still overlap: the verdict counts each row once).
    beyond = np.isin(np.arange(n), failing) | np.logical_or.reduce(
        [
            aligned[name]["flagged"].fillna(False).to_numpy(dtype=bool)
            for name, d in detectors.items()
            if kind_of(d) == "outliers"
        ]
        or [np.zeros(n, dtype=bool)]
    )
    for name, detector in detectors.items():
        rows = aligned[name]
        if detector.pvalue_scope == "row":
            model = detector.poison_model()
            if model is not None:
                cells = rows["cell"].fillna(-1).to_numpy(dtype="int64")
                if model.kind == "label_flips":
                    cells = np.where(beyond, -1, cells)
                kinds.append(row_evidence(name, 1.0 - rows["calibrated"].to_numpy(dtype="float64"), cells, model))
        elif (group_kind := kind_of(detector)) is not None:
            kinds.append(group_evidence(group_kind, name, scores[name]))
    kinds.append(invalid_evidence(failing, n, trusted.holdout_invalid, len(trusted.holdout)))
    return combine(kinds, n, settings.policy.verdict_alpha, drifted_columns(checks))


def drifted_columns(checks: list[CheckResult]) -> list[str]:
    """Feature columns the drift check says moved (the label's own shift is not drift of x)."""
    for check in checks:
        if check.check == "drift" and check.alarm is not None and "moved" in check.table:
            return [str(c) for c in check.table.loc[check.table["moved"].astype(bool), "column"]]
    return []


def decide_batch(
    conformed: ConformedBatch,
    outcome: ValidationOutcome,
    detectors,
    scores: dict[str, pd.DataFrame],
    settings: Settings,
    verdict: Verdict | None = None,
    trusted: TrustedData | None = None,
) -> Decisions:
    """``decide`` over the batch: content keys a chunk at a time, and the reasons of the rows the
    detectors hold asked of them (``score_batch`` leaves row-scoped detectors' reasons out).
    Given the ``trusted`` data, the row rules' natural share of clean rows is taken from the
    detectors' part of the false-quarantine target."""
    # Exact copies are copies of what a model learns from: an id or a timestamp makes none unique.
    keys = np.concatenate(
        [content_keys(chunk.drop(columns=list(conformed.carried))) for chunk in conformed.chunks(settings.chunk_rows)]
    )
    decisions = decide(
        conformed.row_numbers,
        outcome.row_findings,
        outcome.batch_findings,
        scores,
        settings.policy,
        keys,
        explain_rows(detectors, scores, conformed.take),
        verdict,
        trusted.natural_invalid_share if trusted is not None else 0.0,
    )
    check_conservation(conformed.n_rows, decisions)
    release_freed_memory(conformed.n_rows)
    return decisions


def check_conservation(n_rows: int, decisions: Decisions) -> None:
    """Every input row in exactly one decision, none invented: the invariant everything rests on."""
    got = np.sort(decisions.table[ROW_NUMBER].to_numpy())
    if len(got) != n_rows or not np.array_equal(got, np.arange(n_rows)):
        raise RuntimeError("internal error: decisions do not cover every batch row exactly once")


def build_outputs(
    request: ScanRequest,
    settings: Settings,
    batch: LoadedTable,
    trusted: TrustedData,
    conformed: ConformedBatch,
    outcome: ValidationOutcome,
    decisions: Decisions,
    impacts: list[GroupImpact],
    checks: list[CheckResult],
    holdout_suspicion: np.ndarray,
    run_id: str,
    started: dt.datetime,
    verdict: Verdict | None = None,
) -> ScanOutputs:
    checks = [*checks, *outcome.alarms]
    table = decisions.table
    held = table.loc[table["quarantined"], [ROW_NUMBER, "suspicion", "reasons"]].sort_values(ROW_NUMBER)
    held = held.reset_index(drop=True)
    counts_by_check = {**dict.fromkeys(outcome.checks, 0), **decisions.counts_by_check()}
    calibration = holdout_calibration(holdout_suspicion, settings.policy.false_quarantine_target)
    alarmed: list[CheckResult | HoldoutCalibration] = [*checks, *([calibration] if calibration else [])]
    summary = {
        "poisonguard_version": __version__,
        "verdict": verdict.as_dict() if verdict is not None else None,
        "dataset": request.dataset_name,
        "scanned_at": started.isoformat(timespec="seconds"),
        "batch": {
            "file": request.batch.name,
            "path": str(request.batch.resolve()),
            "sha256": batch.sha256,
            "schema_fingerprint": batch.schema_fingerprint,
            "rows": batch.n_rows,
            "source": request.source,
            "submitter": settings.submitter,
        },
        "reference": {
            "file": request.reference.name,
            "path": str(request.reference.resolve()),
            "sha256": trusted.reference.sha256,
            "rows": trusted.reference.n_rows,
        },
        "holdout": {"origin": trusted.holdout_origin, "sha256": trusted.holdout_sha256, "rows": len(trusted.holdout)},
        "suite": {"name": trusted.suite.name, "sha256": trusted.suite.sha256, "source": trusted.suite.source},
        "label": request.label,
        "features": {"numeric": list(trusted.spec.numeric), "categorical": list(trusted.spec.categorical)},
        "roles": {column: role.value for column, role in trusted.roles.items()},
        "detectors": dict(settings.detectors),
        "counts": {"rows": batch.n_rows, "accepted": batch.n_rows - len(held), "quarantined": len(held)},
        "checks": counts_by_check,
        "batch_findings": [
            {"check": f.check, "reason_code": f.reason_code.value, "message": f.message} for f in outcome.batch_findings
        ],
        "detectors_skipped": bool(outcome.batch_findings),
        "policy": settings.policy.as_dict()
        | {
            "threshold": decisions.threshold,
            # the target less the share of clean rows the row rules hold anyway (the holdout's)
            "row_rule_share": trusted.natural_invalid_share,
            "detector_target": settings.policy.row_target(trusted.natural_invalid_share),
            # the share of clean trusted rows the same threshold would hold: the realised rate
            "holdout_held_share": float(np.mean(holdout_suspicion >= 1.0 - decisions.threshold - 1e-12))
            if len(holdout_suspicion)
            else None,
            "holdout_held_share_at_target": calibration.share if calibration else None,
        },
        "alarms": [c.alarm.as_dict() for c in alarmed if c.alarm is not None],
        "batch_checks": {c.check: _jsonable(c.table) for c in checks},
        "roni": [impact.as_dict() | {"summary": impact.describe()} for impact in impacts],
        "mlflow": {"run_id": run_id, "tracking_uri": redact(settings.tracking_uri)},
        "duplicate": False,
    }
    report = render_report(summary, table, conformed.take, holdout_suspicion)
    return ScanOutputs(
        rows=conformed,
        held=held,
        scores=table.drop(columns=["reasons"]),
        findings=decisions.findings,
        summary=summary,
        report_html=report,
        chunk_rows=settings.chunk_rows,
    )


def holdout_calibration(holdout_suspicion: np.ndarray, target: float) -> HoldoutCalibration | None:
    """Does the per-row policy keep its promise on clean data? The share of the trusted holdout
    it would hold at the false-quarantine target, and an alarm when that share is beyond the
    binomial noise of the target (P < 0.001): then the detectors' calibration does not hold on
    this data, and clean rows are held at more than the steward's rate."""
    if not len(holdout_suspicion):
        return None
    held = int((holdout_suspicion >= 1.0 - target - 1e-12).sum())
    rows = len(holdout_suspicion)
    pvalue = float(stats.binom.sf(held - 1, rows, target)) if held else 1.0
    alarm = (
        Alarm(
            "calibration",
            f"the per-row policy holds {held} of {rows} clean trusted holdout rows "
            f"({100 * held / rows:.1f} %) against a {100 * target:g} % target (binomial p = {pvalue:.2g}): the "
            "detectors' calibration does not hold on this data, so clean rows are held at more than the target",
            pvalue,
        )
        if pvalue < 0.001
        else None
    )
    return HoldoutCalibration(held / rows, alarm)


@dataclass(frozen=True)
class HoldoutCalibration:
    share: float
    alarm: Alarm | None
    check: str = "calibration"


def run_tags(request: ScanRequest, settings: Settings, batch: LoadedTable, trusted: TrustedData) -> dict[str, str]:
    return {
        "batch_sha256": batch.sha256,
        "batch_file": request.batch.name,
        "dataset": request.dataset_name,
        "source": request.source,
        "submitter": settings.submitter,
        "schema_fingerprint": batch.schema_fingerprint,
        "suite_name": trusted.suite.name,
        "suite_sha256": trusted.suite.sha256,
        "reference_sha256": trusted.reference.sha256,
        "holdout_sha256": trusted.holdout_sha256 or "split-from-reference",
        "poisonguard_version": __version__,
        "stage": "ingest",
    }


def result_tags(summary: dict[str, Any]) -> dict[str, str]:
    """Tags a scan's run gets once it is decided: how it was orchestrated (``orchestration.runner``
    plain or prefect, and Prefect's flow run id), and the verdict, searchable in MLflow
    (``tags.verdict = 'poisoned'``)."""
    tags = {f"orchestration.{key}": str(value) for key, value in summary.get("orchestration", {}).items()}
    verdict = summary.get("verdict")
    if not verdict:
        return tags
    return {
        **tags,
        "verdict": "poisoned" if verdict["poisoned"] else "clean",
        "verdict_estimated_poisoned_rows": str(verdict["estimated_poisoned_rows"]),
        "verdict_interval": "{}-{}".format(*verdict["interval"]),
        "verdict_headline": verdict["headline"][:5000],
    }


def run_params(request: ScanRequest, settings: Settings) -> dict[str, Any]:
    params: dict[str, Any] = {
        "label": request.label,
        "holdout_fraction": settings.holdout_fraction,
        "random_state": settings.random_state,
    }
    for name, detector in build_detectors(settings.detectors).items():
        for key, value in detector.get_params().items():
            params[f"detector.{name}.{key}"] = value
    return params


def run_metrics(summary: dict[str, Any]) -> dict[str, float]:
    metrics = {f"rows_{k}": float(v) for k, v in summary["counts"].items()}
    metrics.update({f"quarantined.{check}": float(n) for check, n in summary["checks"].items()})
    metrics["batch_level_failures"] = float(len(summary["batch_findings"]))
    verdict = summary.get("verdict")
    if verdict:
        metrics["verdict.poisoned"] = float(verdict["poisoned"])
        metrics["verdict.p_value"] = float(verdict["p_value"])
        metrics["verdict.estimated_poisoned_rows"] = float(verdict["estimated_poisoned_rows"])
        metrics["verdict.interval_low"], metrics["verdict.interval_high"] = map(float, verdict["interval"])
        for kind, found in verdict["by_kind"].items():
            metrics[f"verdict.{kind}.p_value"] = float(found["p_value"])
            metrics[f"verdict.{kind}.estimated_rows"] = float(found["estimated_rows"])
    metrics["alarms"] = float(len(summary.get("alarms", [])))
    for alarm in summary.get("alarms", []):
        metrics[f"alarm.{alarm['check']}"] = 1.0
    metrics["policy.threshold"] = float(summary.get("policy", {}).get("threshold", 0.0))
    for share in ("holdout_held_share", "holdout_held_share_at_target"):
        if summary.get("policy", {}).get(share) is not None:
            metrics[f"policy.{share}"] = float(summary["policy"][share])
    rows = summary["counts"]["rows"]
    metrics["source.quarantine_rate"] = summary["counts"]["quarantined"] / rows if rows else 0.0
    for impact in summary.get("roni", []):
        key = {"rows of the batch": "batch", "rows the detectors quarantined": "quarantined"}.get(
            impact["group"], impact["group"].removeprefix("rows held by detector:")
        )
        metrics[f"roni.{key}.accuracy_gain_without"] = impact["accuracy_without"] - impact["accuracy_with"]
        metrics[f"roni.{key}.log_loss_gain_without"] = impact["log_loss_with"] - impact["log_loss_without"]
    return metrics


def _jsonable(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Records with numpy scalars made plain, so summary.json stays standard JSON."""
    return [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in record.items()} for record in table.to_dict("records")
    ]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


__all__ = [
    "ScanRequest",
    "TrustedData",
    "preflight",
    "confirm_impact",
    "ingest",
    "load_trusted",
    "validate_batch",
    "fit_detectors",
    "fit_checks",
    "check_batch",
    "check_source",
    "trusted_suspicion",
    "score_batch",
    "decide_batch",
    "build_outputs",
    "run_tags",
    "result_tags",
    "run_params",
    "run_metrics",
    "now",
    "assess",
]
