"""The pre-retrain gate: nothing reaches training unless the workspace, byte for byte, and the
ledger still say what they said when each batch was accepted and each row reviewed.

``gate("hmda", out="snapshot/")`` (also ``pipeline.gate``) runs the steps below in order; the
Prefect flow ``poisonguard-gate`` (``flows/gate.py``) runs the same steps as tasks.

1. ``expected_head``: the ledger head that the newest gate which verified this ledger logged to
   MLflow. Kept outside the database, it shows entries cut off the end of the chain.
2. ``read_ledger``: verify the hash chain (against that head); the dataset's batches, their row
   numbers by status, the rows awaiting review.
3. ``check_workspace``: each file of each batch folder against the sha256 the ledger recorded at
   commit, no file or batch folder the ledger does not know, and the rows of accepted.parquet
   and quarantined.parquet against the ledger's decisions and reviews. Each file is read once:
   the snapshot is built from the very bytes that were hashed.
4. ``decide``: refuse on any problem, or while more rows await review than allowed.
5. ``refuse`` (an alarm in MLflow, ``refused.json``, nothing released: exit 3 in the CLI), or
   ``build_snapshot`` then ``release``: accepted + released rows as deterministic Parquet with a
   manifest, logged to MLflow as a dataset input whose digest is our sha256.

Lineage, all through MLflow: a model's run → its input's ``sha256`` tag (digest: the first 32
digits) = the snapshot's sha256 → the gate run (``tags.snapshot_sha256``; ``manifest.json``)
→ the batches' sha256s → their scan runs (``tags.batch_sha256``) → reviews (``review.row.*``
tags there, and the ledger).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import GateRefused, PoisonguardError
from pipeline.io import BATCH_ID_COLUMN, ROW_NUMBER, as_common_types, atomic_path, sha256_file, write_text_atomic
from pipeline.ledger import BatchRecord, ChainHead, Ledger, RowStatus
from pipeline.redaction import redact_data

# pipeline/__init__.py imports this module to re-export ``gate``: the heavy modules (config pulls
# in the detectors, provenance MLflow) are imported where they are used, so ``import pipeline``
# stays cheap.
if TYPE_CHECKING:
    from pipeline.config import Settings

SNAPSHOT_FILE = "snapshot.parquet"
MANIFEST_FILE = "manifest.json"
REFUSAL_FILE = "refused.json"
PROVENANCE_COLUMNS = (BATCH_ID_COLUMN, ROW_NUMBER)
QUARANTINE_COLUMNS = ("suspicion", "reasons")  # quarantined.parquet's own; not training data
_ROWS_NAMED = 10  # per problem; the full list is in refused.json
_PROBLEMS_SHOWN = 20  # in the one error the CLI prints


@dataclass(frozen=True)
class GateRequest:
    dataset: str
    out: Path
    max_pending: int = 0
    keep_provenance: bool = True  # keep poisonguard_batch_id and row_number in the snapshot
    # refuse a batch its scan called poisoned until a steward has acted on one of its rows
    review_poisoned: bool = True
    expect_head: str | None = None  # SEQUENCE:HASH the retraining job pinned; refuse on any other head

    def __post_init__(self) -> None:
        from pipeline.anchor import parse_head
        from pipeline.config import safe_name

        safe_name(self.dataset, "dataset name")
        if self.expect_head is not None:
            parse_head(self.expect_head)
        object.__setattr__(self, "out", Path(self.out))
        if isinstance(self.max_pending, bool) or not isinstance(self.max_pending, int) or self.max_pending < 0:
            raise PoisonguardError(f"The 'max_pending' parameter of the gate must be an int >= 0. Got {self.max_pending!r}.")


class ProblemKind(str, Enum):
    LEDGER_EDITED = "ledger_edited"  # the hash chain does not verify
    LEDGER_HEAD = "ledger_head_mismatch"  # not the head anchored outside the workspace, or pinned
    FILE_CHANGED = "file_changed"
    FILE_MISSING = "file_missing"
    FILE_UNRECORDED = "file_unrecorded"
    FOLDER_MISSING = "batch_folder_missing"
    FOLDER_UNRECORDED = "batch_folder_unrecorded"
    NO_FILE_HASHES = "no_file_hashes"  # recorded before the ledger kept them: cannot be vouched for
    ROWS_DISAGREE = "rows_disagree_with_ledger"


@dataclass(frozen=True)
class Problem:
    """One reason the gate refuses: what, where (relative to the workspace), which rows."""

    kind: ProblemKind
    message: str
    path: str | None = None
    batch_id: str | None = None
    rows: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "message": self.message,
            "path": self.path,
            "batch_id": self.batch_id,
            "rows": [f"{self.batch_id}:{n}" for n in self.rows],
        }


@dataclass(frozen=True, eq=False)
class LedgerState:
    """What the ledger says about one dataset, read after verifying its chain."""

    dataset: str
    ledger_url: str  # password masked: how gate runs in MLflow name this ledger
    batches: tuple[BatchRecord, ...]  # in scan order
    rows: Mapping[str, Mapping[RowStatus, list[int]]]  # batch id → status → row numbers
    pending: int
    head: ChainHead | None
    expected_head: ChainHead | None  # from the last gate that verified the ledger
    problems: tuple[Problem, ...]  # of the chain

    @property
    def verified(self) -> bool:
        return not self.problems


@dataclass(frozen=True, eq=False)
class VerifiedBatch:
    """A batch whose files all match their recorded sha256 and whose rows match the ledger."""

    record: BatchRecord
    accepted: pd.DataFrame
    released: pd.DataFrame  # from quarantined.parquet, without suspicion and reasons
    verdict: str | None = None  # the scan's headline when it called the batch poisoned

    @property
    def unreviewed_poisoned(self) -> bool:
        """Called poisoned by its scan and no steward has yet acted on any of its held rows: its
        accepted rows may hold poison the hold missed, so a person looks before --max-pending
        can let its rows through."""
        record = self.record
        return self.verdict is not None and record.pending > 0 and record.released + record.rejected == 0


@dataclass(frozen=True, eq=False)
class WorkspaceCheck:
    batches: tuple[VerifiedBatch, ...]
    problems: tuple[Problem, ...]
    files_checked: int


@dataclass(frozen=True)
class Refusal:
    problems: tuple[Problem, ...]
    pending: int
    max_pending: int
    poisoned: tuple[VerifiedBatch, ...] = ()  # called poisoned and not yet reviewed

    @property
    def tampered(self) -> bool:
        return bool(self.problems)

    def as_dict(self, dataset: str) -> dict[str, Any]:
        return {
            "dataset": dataset,
            "released": False,
            "tampered": self.tampered,
            "pending": self.pending,
            "max_pending": self.max_pending,
            "problems": [p.as_dict() for p in self.problems],
            "unreviewed_poisoned_batches": [
                {"batch_id": b.record.id, "file": b.record.file, "pending": b.record.pending, "verdict": b.verdict}
                for b in self.poisoned
            ],
        }

    def message(self, dataset: str, run_id: str | None, listing: Path | None) -> str:
        lines = []
        if self.problems:
            lines.append(
                f"The gate refused dataset '{dataset}': {len(self.problems)} problem(s) with what was "
                "recorded at acceptance; nothing was released."
            )
            lines += [f"  - {p.message}" for p in self.problems[:_PROBLEMS_SHOWN]]
            if len(self.problems) > _PROBLEMS_SHOWN:
                lines.append(f"  … and {len(self.problems) - _PROBLEMS_SHOWN} more")
        if self.pending > self.max_pending:
            text = (
                f"{self.pending} row(s) of dataset '{dataset}' await review (allowed: {self.max_pending}). Review "
                f"them (poisonguard review list --dataset {dataset}) or raise --max-pending."
            )
            lines.append(
                f"  - {text}"
                if self.problems or lines
                else f"The gate refused dataset '{dataset}'; nothing was released: {text}"
            )
        for batch in self.poisoned:
            text = (
                f"batch {batch.record.id} ({batch.record.file}) was called poisoned by its scan and no "
                f"steward has reviewed any of its {batch.record.pending} held row(s); --max-pending does not "
                f"cover a poisoned batch nobody has looked at. Review it (poisonguard review show {batch.record.id}). "
                f"{batch.verdict}"
            )
            lines.append(f"  - {text}" if lines else f"The gate refused dataset '{dataset}'; nothing was released: {text}")
        where = []
        if run_id:
            where.append(f"{'alarm' if self.tampered else 'refusal'} recorded in MLflow run {run_id}")
        if listing is not None and self.problems:
            where.append(f"the full list is in {listing}")
        if where:
            lines.append("(" + "; ".join(where) + ")")
        return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class Snapshot:
    frame: pd.DataFrame
    parquet: bytes
    sha256: str
    manifest: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, eq=False)
class GateResult:
    """What a training job needs: the snapshot, its sha256, and the MLflow dataset to log as
    its input (``mlflow.log_input(result.dataset, context="training", tags=result.input_tags)``)."""

    path: Path
    sha256: str
    rows: int
    manifest_path: Path
    manifest: dict[str, Any]
    run_id: str  # the gate's MLflow run
    dataset: Any  # mlflow.data.meta_dataset.MetaDataset, digest = sha256[:32]

    @property
    def input_tags(self) -> dict[str, str]:
        return {"sha256": self.sha256, "gate_run_id": self.run_id}


# --- the steps -------------------------------------------------------------------------------


def ledger_identity(settings: Settings) -> str:
    """How gate runs name the ledger in MLflow: its URL with any password masked."""
    from pipeline.ledger.database import display_url, parse_url

    return display_url(parse_url(settings.database_url.get_secret_value()))


def expected_head(settings: Settings) -> ChainHead | None:
    """The newest head anchored outside the workspace when an anchor is configured, else the
    head the last gate that verified this ledger logged to MLflow."""
    from pipeline import provenance

    if settings.anchor is not None:
        return settings.anchor.newest()[0]
    found = provenance.last_gate_head(settings.tracking_uri, ledger_identity(settings))
    return ChainHead(*found) if found else None


def read_ledger(settings: Settings, dataset: str, expected: ChainHead | None, pinned: str | None = None) -> LedgerState:
    """``pinned``: the ``--expect-head`` the chain's head must equal."""
    from pipeline.anchor import expected_head_problems

    with Ledger.open(settings.database_url.get_secret_value()) as ledger:
        head = ledger.head()
        chain = ledger.verify(expected_head=expected)
        batches = ledger.list_batches(dataset)
        rows = ledger.row_numbers(dataset)
        pending = ledger.pending_count(dataset)
        if ledger.head() != head:
            raise PoisonguardError(
                "The ledger changed while the gate read it (a scan or review was recorded); "
                "nothing was released. Run the gate again."
            )
        url = ledger.url
    problems = tuple(Problem(ProblemKind.LEDGER_EDITED, f"ledger: {p}") for p in chain)
    heads = [
        *(settings.anchor.check(head) if settings.anchor is not None else []),
        *(expected_head_problems(pinned, head) if pinned else []),
    ]
    problems += tuple(Problem(ProblemKind.LEDGER_HEAD, f"ledger: {p}") for p in heads)
    return LedgerState(dataset, url, tuple(batches), rows, pending, head, expected, problems)


def check_workspace(settings: Settings, state: LedgerState) -> WorkspaceCheck:
    """Every check on every batch, then one verdict (a problem never hides the next one)."""
    from pipeline.store import Workspace

    workspace = Workspace(settings.workspace)
    problems = _unrecorded_folders(workspace.root, state)
    verified, files_checked = [], 0
    for batch in state.batches:
        checked, batch_problems, n_files = _check_batch(workspace, state, batch)
        problems += batch_problems
        files_checked += n_files
        if checked is not None:
            verified.append(checked)
    return WorkspaceCheck(tuple(verified), tuple(problems), files_checked)


def decide(request: GateRequest, state: LedgerState, check: WorkspaceCheck) -> Refusal | None:
    problems = (*state.problems, *check.problems)
    poisoned = tuple(b for b in check.batches if b.unreviewed_poisoned) if request.review_poisoned else ()
    if problems or poisoned or state.pending > request.max_pending:
        return Refusal(problems, state.pending, request.max_pending, poisoned)
    if not state.batches:
        raise PoisonguardError(
            f"The ledger has no batches for dataset '{request.dataset}': nothing to release. Scan "
            f"one with 'poisonguard scan … --dataset {request.dataset}' (is --workspace the one "
            "the scans used?)."
        )
    return None


def refuse(settings: Settings, request: GateRequest, state: LedgerState, refusal: Refusal) -> NoReturn:
    """Release nothing: remove an earlier snapshot from --out, list the problems there, record
    the refusal (an alarm when something was tampered with) in MLflow, raise ``GateRefused``."""
    listing: Path | None = request.out / REFUSAL_FILE
    notes = []
    try:
        _remove_outputs(request.out, (SNAPSHOT_FILE, MANIFEST_FILE))
        write_text_atomic(
            json.dumps(redact_data(refusal.as_dict(request.dataset)), indent=2) + "\n", request.out / REFUSAL_FILE
        )
    except OSError as exc:
        listing = None
        notes.append(f"(could not write to {request.out}: {exc})")
    run_id = None
    try:
        run_id = _log_refusal(settings, request, state, refusal, listing)
    except Exception as exc:  # the refusal stands whatever MLflow does
        notes.append(
            f"(the {'alarm' if refusal.tampered else 'refusal'} could not be recorded in MLflow: "
            f"{type(exc).__name__}: {exc})"
        )
    raise GateRefused("\n".join([refusal.message(request.dataset, run_id, listing), *notes]))


def build_snapshot(request: GateRequest, state: LedgerState, check: WorkspaceCheck) -> Snapshot:
    """Accepted + released rows, batches in scan order, rows in row order, as Parquet bytes
    that are the same for the same state (no timestamps, no pandas version in the metadata)."""
    parts, per_batch = [], []
    for batch in check.batches:
        rows = _concat([batch.accepted, batch.released]).sort_values(ROW_NUMBER, kind="stable")
        parts.append(rows.assign(**{BATCH_ID_COLUMN: batch.record.id}))
        per_batch.append(_batch_entry(batch, state, len(rows)))
    frame = _concat(as_common_types(parts)).reset_index(drop=True)
    if not request.keep_provenance:
        frame = frame.drop(columns=[c for c in PROVENANCE_COLUMNS if c in frame.columns])
    data = parquet_bytes(frame)
    sha256 = hashlib.sha256(data).hexdigest()
    statuses = [state.rows.get(b.record.id, {}) for b in check.batches]
    released = sum(len(s.get(RowStatus.RELEASED, [])) for s in statuses)
    rejected = sum(len(s.get(RowStatus.REJECTED, [])) for s in statuses)
    manifest = {
        "dataset": request.dataset,
        "snapshot": {
            "file": SNAPSHOT_FILE,
            "sha256": sha256,
            "rows": len(frame),
            "columns": [str(c) for c in frame.columns],
            "provenance_columns": [c for c in PROVENANCE_COLUMNS if c in frame.columns],
        },
        "batches": per_batch,
        "reviews": {"actions": released + rejected, "released": released, "rejected": rejected, "pending": state.pending},
        "ledger": {
            "url": state.ledger_url,
            "head_sequence": state.head.sequence if state.head else 0,
            "head_hash": state.head.entry_hash if state.head else None,
        },
        "gate": {
            "max_pending": request.max_pending,
            "keep_provenance": request.keep_provenance,
            "files_checked": check.files_checked,
        },
    }
    return Snapshot(frame, data, sha256, manifest)


def release(settings: Settings, request: GateRequest, state: LedgerState, snapshot: Snapshot) -> GateResult:
    """Write the snapshot and its manifest to --out, then record the gate run in MLflow. If
    MLflow cannot record it, the snapshot is taken back: nothing is released without provenance."""
    out = request.out
    path, manifest_path = out / SNAPSHOT_FILE, out / MANIFEST_FILE
    with atomic_path(path) as tmp:
        tmp.write_bytes(snapshot.parquet)
    if sha256_file(path) != snapshot.sha256:  # the bytes on disk are the bytes hashed
        path.unlink(missing_ok=True)
        raise PoisonguardError(f"The snapshot written to {path} does not read back as written; nothing was released.")
    write_text_atomic(json.dumps(redact_data(snapshot.manifest), indent=2, sort_keys=True) + "\n", manifest_path)
    _remove_outputs(out, (REFUSAL_FILE,))
    try:
        run_id, dataset = _log_release(settings, request, state, snapshot, path, manifest_path)
    except BaseException:
        _remove_outputs(out, (SNAPSHOT_FILE, MANIFEST_FILE))
        raise
    return GateResult(path, snapshot.sha256, len(snapshot.frame), manifest_path, snapshot.manifest, run_id, dataset)


def gate(
    dataset: str,
    *,
    out: str | Path,
    workspace: str | Path | None = None,
    max_pending: int = 0,
    keep_provenance: bool = True,
    review_poisoned: bool = True,
    settings: Settings | None = None,
    expect_head: str | None = None,
) -> GateResult:
    """Verify, then release the training snapshot of ``dataset`` into ``out``; raises
    ``GateRefused`` (nothing released) otherwise. ``settings`` default to the environment's
    for ``workspace``. Example::

        result = pipeline.gate("hmda", out="snapshot", workspace=".poisonguard-demo", max_pending=200)
        mlflow.log_input(result.dataset, context="training", tags=result.input_tags)
    """
    if settings is None:
        from pipeline.config import Settings

        settings = Settings.from_environment(workspace)
    return run(GateRequest(dataset, Path(out), max_pending, keep_provenance, review_poisoned, expect_head), settings)


def run(request: GateRequest, settings: Settings, step: Callable[[Callable], Callable] = lambda f: f) -> GateResult:
    """The gate's steps in order; ``step`` wraps each one (the Prefect flow makes them tasks)."""
    from pipeline.paths import check_output_folder

    check_output_folder(request.out, workspace=settings.workspace)
    step(settle_scans)(settings, request.dataset)
    state = step(read_ledger)(settings, request.dataset, step(expected_head)(settings), request.expect_head)
    check = step(check_workspace)(settings, state)
    refusal = step(decide)(request, state, check)
    if refusal is not None:
        step(refuse)(settings, request, state, refusal)
    return step(release)(settings, request, state, step(build_snapshot)(request, state, check))


def settle_scans(settings: Settings, dataset: str) -> None:
    """Wait for scans that have committed a batch folder but not yet recorded it in the ledger.

    A scan holds its batch's lock from start to ledger record; a folder in place whose lock is
    held belongs to a scan milliseconds from done. Read before that, the folder would look added
    by hand and the gate would raise a false tampering alarm.
    """
    from pipeline.config import safe_name
    from pipeline.store import SHA256_NAME, Workspace

    workspace = Workspace(settings.workspace)
    batches = workspace.root / "datasets" / safe_name(dataset, "dataset name") / "batches"
    for folder in sorted(batches.iterdir()) if batches.is_dir() else ():
        if folder.is_dir() and SHA256_NAME.fullmatch(folder.name):
            with workspace.batch_lock(dataset, folder.name):
                pass


# --- Parquet that hashes the same every time ---------------------------------------------------


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Parquet written by pyarrow without the pandas metadata (it names the pandas version) and
    with no timestamps: the same frame gives the same bytes."""
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    return sink.getvalue().to_pybytes()


def read_parquet_bytes(data: bytes) -> pd.DataFrame:
    # the same reader the store digests rows with, so digests of the same bytes agree
    return pd.read_parquet(io.BytesIO(data))


# --- checking one batch ------------------------------------------------------------------------


def _check_batch(workspace: Any, state: LedgerState, batch: BatchRecord) -> tuple[VerifiedBatch | None, list[Problem], int]:
    from pipeline.store import DIGESTED_FILES, ROW_DIGESTS

    folder = workspace.batch_dir(state.dataset, batch.sha256)
    where = f"batch {batch.id} ({batch.file})"

    def rel(name: str = "") -> str:
        return _relative(folder / name if name else folder, workspace.root)

    def problem(kind: ProblemKind, text: str, name: str = "", rows: tuple[int, ...] = ()) -> Problem:
        return Problem(kind, f"{where}: {text}", rel(name), batch.id, rows)

    if not folder.is_dir():
        return None, [problem(ProblemKind.FOLDER_MISSING, f"its folder {rel()} is missing from the workspace")], 0
    if batch.files is None:
        return (
            None,
            [
                problem(
                    ProblemKind.NO_FILE_HASHES,
                    "it was recorded before the ledger kept file hashes, so "
                    "its files cannot be verified; scan its batch file into a new workspace",
                )
            ],
            0,
        )
    present = {p.name: p for p in folder.iterdir()}
    problems = [
        problem(
            ProblemKind.FILE_UNRECORDED,
            f"{rel(name)} is not a file the ledger recorded for this batch (added by hand?)",
            name,
        )
        for name in sorted(present.keys() - batch.files.keys())
    ]
    intact: dict[str, bytes] = {}
    changed: dict[str, tuple[bytes, str, str]] = {}
    for name, recorded in sorted(batch.files.items()):
        path = present.get(name)
        if path is None or not path.is_file():
            problems.append(
                problem(
                    ProblemKind.FILE_MISSING,
                    f"{rel(name)} is missing (recorded at acceptance with sha256 {recorded[:12]}…)",
                    name,
                )
            )
            continue
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual == recorded:
            intact[name] = data
        else:
            changed[name] = (data, actual, recorded)
    digests = read_parquet_bytes(intact[ROW_DIGESTS]) if ROW_DIGESTS in intact else None
    for name, (data, actual, recorded) in changed.items():
        detail, rows = _edited_rows(batch.id, name, data, digests) if name in DIGESTED_FILES else ("", ())
        problems.append(
            problem(
                ProblemKind.FILE_CHANGED,
                f"{rel(name)} was changed since acceptance (sha256 {actual[:12]}…, recorded {recorded[:12]}…){detail}",
                name,
                rows,
            )
        )
    if problems or not all(name in intact for name in DIGESTED_FILES):
        return None, problems, len(batch.files)
    accepted = read_parquet_bytes(intact["accepted.parquet"])
    quarantined = read_parquet_bytes(intact["quarantined.parquet"])
    statuses = state.rows.get(batch.id, {})
    held = {n for s in (RowStatus.PENDING, RowStatus.RELEASED, RowStatus.REJECTED) for n in statuses.get(s, [])}
    problems += _rows_against_ledger(
        problem, batch.id, "accepted.parquet", accepted, set(statuses.get(RowStatus.ACCEPTED, []))
    )
    problems += _rows_against_ledger(problem, batch.id, "quarantined.parquet", quarantined, held)
    if problems:
        return None, problems, len(batch.files)
    released = quarantined[quarantined[ROW_NUMBER].isin(statuses.get(RowStatus.RELEASED, []))]
    released = released.drop(columns=[c for c in QUARANTINE_COLUMNS if c in released.columns])
    verdict = json.loads(intact["summary.json"]).get("verdict") if "summary.json" in intact else None
    headline = verdict.get("headline") if verdict and verdict.get("poisoned") else None
    return VerifiedBatch(batch, accepted, released, headline), [], len(batch.files)


def _edited_rows(batch_id: str, name: str, data: bytes, digests: pd.DataFrame | None) -> tuple[str, tuple[int, ...]]:
    """Which rows of a changed file differ from the digests taken at commit."""
    from pipeline.store import ROW_DIGESTS, row_digests

    if digests is None:
        return f"; which rows changed cannot be said ({ROW_DIGESTS} is not intact either)", ()
    try:
        frame = read_parquet_bytes(data)
    except Exception:  # any way a rewritten file can fail to parse
        return "; it no longer reads as Parquet", ()
    if ROW_NUMBER not in frame.columns:
        return f"; its {ROW_NUMBER} column is gone", ()
    recorded_rows = digests[digests["file"] == name]
    recorded = dict(zip(recorded_rows[ROW_NUMBER].astype("int64"), recorded_rows["digest"].astype("uint64")))
    seen: set[int] = set()
    edited, added, duplicated = [], [], []
    for number, digest in zip(
        pd.to_numeric(frame[ROW_NUMBER], errors="coerce").fillna(-1).astype("int64"), row_digests(frame)
    ):
        number = int(number)
        if number in seen:
            duplicated.append(number)
        elif number not in recorded:
            added.append(number)
        elif recorded[number] != digest:
            edited.append(number)
        seen.add(number)
    removed = sorted(recorded.keys() - seen)
    parts = [
        f"{what} {_row_list(batch_id, rows)}"
        for what, rows in (
            ("values changed in row(s)", edited),
            ("row(s) added", added),
            ("row(s) removed", removed),
            ("row(s) duplicated", duplicated),
        )
        if rows
    ]
    if not parts:
        return "; no row's values changed: its columns or encoding were rewritten", ()
    return "; " + "; ".join(parts), tuple(sorted({*edited, *added, *removed, *duplicated}))


def _rows_against_ledger(problem: Any, batch_id: str, name: str, frame: pd.DataFrame, expected: set[int]) -> list[Problem]:
    """The file's rows must be exactly the ledger's: a row moved between accepted and
    quarantined, or a decision or review the files do not bear out, shows here."""
    if ROW_NUMBER not in frame.columns:
        return [problem(ProblemKind.ROWS_DISAGREE, f"{name} has no {ROW_NUMBER} column", name)]
    counts = Counter(int(n) for n in frame[ROW_NUMBER])
    found = set(counts)
    found_twice = sorted(n for n, count in counts.items() if count > 1)
    out = []
    for text, rows in (
        (f"{name} holds row(s) the ledger does not place there:", sorted(found - expected)),
        (f"{name} lacks row(s) the ledger places there:", sorted(expected - found)),
        (f"{name} holds row(s) more than once:", found_twice),
    ):
        if rows:
            out.append(problem(ProblemKind.ROWS_DISAGREE, f"{text} {_row_list(batch_id, rows)}", name, tuple(rows)))
    return out


def _unrecorded_folders(root: Path, state: LedgerState) -> list[Problem]:
    """Anything under datasets/<dataset>/ that no ledger batch accounts for."""
    dataset_dir = root / "datasets" / state.dataset
    if not dataset_dir.is_dir():
        return []
    known = {b.sha256 for b in state.batches}
    problems = [
        Problem(
            ProblemKind.FILE_UNRECORDED,
            f"{_relative(p, root)} is not part of the workspace's layout (added by hand?)",
            _relative(p, root),
        )
        for p in sorted(dataset_dir.iterdir())
        if p.name != "batches"
    ]
    batches_dir = dataset_dir / "batches"
    if batches_dir.is_dir():
        for path in sorted(batches_dir.iterdir()):
            if path.name in known:
                continue
            if path.is_dir():
                problems.append(
                    Problem(
                        ProblemKind.FOLDER_UNRECORDED,
                        f"{_relative(path, root)} is a batch folder the "
                        "ledger does not know: added by hand, or left by a scan that crashed before "
                        "recording it (delete it and scan that batch again)",
                        _relative(path, root),
                    )
                )
            else:
                problems.append(
                    Problem(
                        ProblemKind.FILE_UNRECORDED,
                        f"{_relative(path, root)} is a file the ledger does not know (added by hand?)",
                        _relative(path, root),
                    )
                )
    return problems


# --- MLflow --------------------------------------------------------------------------------------


def _run_tags(request: GateRequest, state: LedgerState) -> dict[str, str]:
    from pipeline import __version__

    tags = {
        "dataset": request.dataset,
        "ledger_url": state.ledger_url,
        "poisonguard_version": __version__,
        "ledger_verified": "true" if state.verified else "false",
    }
    if state.verified and state.head is not None:  # a head worth expecting next time
        tags |= {"ledger_head_sequence": str(state.head.sequence), "ledger_head_hash": state.head.entry_hash}
    if state.expected_head is not None:
        tags |= {
            "expected_head_sequence": str(state.expected_head.sequence),
            "expected_head_hash": state.expected_head.entry_hash,
        }
    return tags


def _experiment(settings: Settings, dataset: str) -> str:
    from pipeline import provenance

    return provenance.ensure_experiment(settings.tracking_uri, dataset, settings.artifact_root)


def _log_refusal(
    settings: Settings, request: GateRequest, state: LedgerState, refusal: Refusal, listing: Path | None
) -> str:
    from pipeline import provenance

    uri = settings.tracking_uri
    tags = _run_tags(request, state) | {
        "gate_status": "refused",
        "refusal": "tampered" if refusal.tampered else "unreviewed_poisoned_batch" if refusal.poisoned else "pending",
    }
    if refusal.tampered:
        tags |= {"alarm": "tampered", "alarm_message": refusal.problems[0].message[:5000]}
    run_id = provenance.start_gate_run(uri, _experiment(settings, request.dataset), f"gate-{request.dataset}", tags)
    try:
        provenance.log_results(
            uri,
            run_id,
            params={"max_pending": request.max_pending, "keep_provenance": request.keep_provenance},
            metrics={"problems": len(refusal.problems), "pending": refusal.pending, "batches": len(state.batches)},
            tags={},
            artifacts=[listing] if listing is not None else [],
        )
    finally:
        provenance.finish_run(uri, run_id, "FAILED")
    return run_id


def _log_release(
    settings: Settings, request: GateRequest, state: LedgerState, snapshot: Snapshot, path: Path, manifest_path: Path
) -> tuple[str, Any]:
    from pipeline import provenance
    from pipeline.store import Workspace

    uri = settings.tracking_uri
    rows = snapshot.manifest["snapshot"]["rows"]
    tags = _run_tags(request, state) | {
        "gate_status": "passed",
        "snapshot_sha256": snapshot.sha256,
        "snapshot_rows": str(rows),
        "snapshot_path": str(path.resolve()),
        "batches": str(len(snapshot.manifest["batches"])),
    }
    run_id = provenance.start_gate_run(uri, _experiment(settings, request.dataset), f"gate-{request.dataset}", tags)
    try:
        dataset = provenance.meta_dataset(path, f"{request.dataset}-snapshot", snapshot.sha256, snapshot.frame)
        workspace = Workspace(settings.workspace)
        batch_inputs = [
            (
                provenance.meta_dataset(
                    workspace.batch_dir(request.dataset, b["sha256"]) / "accepted.parquet", b["file"], b["sha256"]
                ),
                "snapshot-batch",
                {"sha256": b["sha256"], "batch_id": b["id"]},
            )
            for b in snapshot.manifest["batches"]
        ]
        provenance.log_dataset_inputs(
            uri, run_id, [(dataset, "snapshot", {"sha256": snapshot.sha256, "rows": str(rows)}), *batch_inputs]
        )
        provenance.log_tags(uri, run_id, {f"batch_sha256.{b['id']}": b["sha256"] for b in snapshot.manifest["batches"]})
        reviews = snapshot.manifest["reviews"]
        provenance.log_results(
            uri,
            run_id,
            params={"max_pending": request.max_pending, "keep_provenance": request.keep_provenance},
            metrics={
                "rows": rows,
                "batches": len(snapshot.manifest["batches"]),
                "released": reviews["released"],
                "rejected": reviews["rejected"],
                "pending": reviews["pending"],
                "problems": 0,
            },
            tags={},
            artifacts=[manifest_path],
        )
    except BaseException:
        provenance.finish_run(uri, run_id, "FAILED")
        raise
    provenance.finish_run(uri, run_id)
    return run_id, dataset


# --- small helpers -------------------------------------------------------------------------------


def _batch_entry(batch: VerifiedBatch, state: LedgerState, in_snapshot: int) -> dict[str, Any]:
    b = batch.record
    statuses = state.rows.get(b.id, {})
    return {
        "id": b.id,
        "sha256": b.sha256,
        "file": b.file,
        "source": b.source,
        "submitter": b.submitter,
        "scanned_at": b.scanned_at.isoformat(),
        "mlflow_run_id": b.mlflow_run_id,
        "rows": b.rows,
        "accepted": b.accepted,
        "quarantined": b.quarantined,
        "released": len(statuses.get(RowStatus.RELEASED, [])),
        "rejected": len(statuses.get(RowStatus.REJECTED, [])),
        "pending": len(statuses.get(RowStatus.PENDING, [])),
        "in_snapshot": in_snapshot,
        "files": dict(sorted((b.files or {}).items())),
    }


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Row-wise, skipping empty frames (pandas' dtype rules for them are changing) unless
    every frame is empty, then the first one's columns."""
    rows = [f for f in frames if len(f)]
    if rows:
        return pd.concat(rows, ignore_index=True, sort=False)
    return frames[0].iloc[0:0].reset_index(drop=True) if frames else pd.DataFrame()


def _row_list(batch_id: str, rows: list[int]) -> str:
    """Row ids as the ledger and ``poisonguard review`` spell them: ``3f2a9c1b0d4e:17``."""
    shown = ", ".join(f"{batch_id}:{n}" for n in rows[:_ROWS_NAMED])
    return shown + (f" (and {len(rows) - _ROWS_NAMED} more)" if len(rows) > _ROWS_NAMED else "")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _remove_outputs(out: Path, names: tuple[str, ...]) -> None:
    for name in names:
        (out / name).unlink(missing_ok=True)


__all__ = [
    "GateRequest",
    "GateResult",
    "LedgerState",
    "Problem",
    "ProblemKind",
    "Refusal",
    "Snapshot",
    "VerifiedBatch",
    "WorkspaceCheck",
    "build_snapshot",
    "check_workspace",
    "decide",
    "expected_head",
    "gate",
    "parquet_bytes",
    "read_ledger",
    "refuse",
    "release",
]
