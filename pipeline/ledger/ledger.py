"""The quarantine ledger: what each scan decided about each row, and what stewards did since.

    ledger = Ledger.open(ledger_url(settings.workspace, os.environ))
    batch_id = ledger.record_scan_folder(workspace.batch_dir(dataset, sha256))
    ledger.list_rows(dataset="hmda", status="pending")
    ledger.release(["3f2a9c1b0d4e:12"], by="alice", reason="income confirmed with the lender")
    assert ledger.verify() == []

Every write is an insert, covered by a hash-chained entry (``chain.py``), made in one
transaction under the ledger's write lock (``database.py``): it is recorded whole or not at all.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from sqlalchemy import ColumnElement, Select, Table, case, func, insert, select
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from pipeline.ledger.chain import (
    GENESIS_HASH,
    DecisionsDigest,
    EntryKind,
    batch_payload,
    digest,
    entry_hash,
    review_payload,
    utc,
)
from pipeline.ledger.database import (
    create_ledger_engine,
    display_url,
    first_line,
    migrate,
    parse_url,
    write_session,
)
from pipeline.ledger.errors import LedgerError, NotInLedger, ReviewRefused
from pipeline.ledger.models import Batch, LedgerEntry, ReviewActionRow, RowDecision
from pipeline.ledger.records import (
    BatchRecord,
    ChainHead,
    ReviewAction,
    ReviewRecord,
    RowRecord,
    RowStatus,
    parse_row_id,
    row_id,
)
from pipeline.ledger.verify import find_problems

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.ledger.intake import ScanIntake

T = TypeVar("T")
_INSERT_SLICE = 50_000
_ID_LENGTHS = range(12, 65, 4)  # a batch id is the shortest prefix of its sha256 not yet taken
_ROW_ID_SHAPE = re.compile(r"^[^:\s]+:[0-9]+$")
_IN_CHUNK = 500  # ids per IN (...) clause: well under SQLite's and PostgreSQL's parameter limits

# The current status of a row, derived: its review action if it has one, else the scan's decision.
CURRENT_STATUS: ColumnElement[str] = case(
    (ReviewActionRow.action == ReviewAction.RELEASE.value, RowStatus.RELEASED.value),
    (ReviewActionRow.action == ReviewAction.REJECT.value, RowStatus.REJECTED.value),
    else_=RowDecision.initial_status,
)


class _Entry(NamedTuple):
    """A ledger entry to be chained: the digest of what it covers, and its readable copy (the
    payload itself for batches and reviews, a summary for a batch's decisions)."""

    kind: EntryKind
    subject: str
    payload_digest: str
    recorded: dict[str, Any]

    @classmethod
    def whole(cls, kind: EntryKind, subject: str, payload: dict[str, Any]) -> _Entry:
        """An entry whose readable copy is its payload."""
        return cls(kind, subject, digest(payload), payload)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Ledger:
    """A handle on one ledger database. Open it with ``Ledger.open(url)``; safe to share
    between threads (each call uses its own session), except for in-memory SQLite."""

    def __init__(
        self,
        engine: Engine,
        url: URL,
        clock: Callable[[], dt.datetime] = _utc_now,
        on_write: Callable[[ChainHead], None] | None = None,
    ) -> None:
        self._engine = engine
        self._url = url
        self._clock = clock
        self._on_write = on_write

    @classmethod
    def open(
        cls,
        url: str | URL,
        *,
        clock: Callable[[], dt.datetime] = _utc_now,
        on_write: Callable[[ChainHead], None] | None = None,
    ) -> Ledger:
        """Connect and bring the schema up to date (created on first use). ``url``: a SQLAlchemy
        URL, e.g. ``sqlite:///ws/ledger.sqlite`` or ``postgresql+psycopg://user@host/db``; see
        ``ledger_url``. ``clock`` stamps review actions (tests pin it). ``on_write`` is called
        with the new head after each write commits (``pipeline.anchor`` keeps it outside)."""
        parsed = parse_url(url)
        engine = create_ledger_engine(parsed)
        try:
            migrate(engine, parsed)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, parsed, clock, on_write)

    @property
    def url(self) -> str:
        """The database URL with any password masked: safe to print."""
        return display_url(self._url)

    def __repr__(self) -> str:
        return f"Ledger({self.url!r})"

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- recording scans -------------------------------------------------------------------

    def record_scan(
        self,
        summary: Mapping[str, Any],
        scores: pd.DataFrame,
        quarantined: pd.DataFrame,
        files: Mapping[str, str] | None = None,
    ) -> str:
        """Record a scan's decisions (``ScanOutputs.summary``, ``.scores``, ``.quarantined``, or the
        same read back from the workspace) and return the batch id. ``files``: the sha256 of each
        file of the batch's workspace folder, covered by the hash chain for the gate to check.
        Recording a batch that is already recorded for its dataset changes nothing and returns
        the id it has."""
        from pipeline.ledger.intake import intake  # pandas and Arrow: only a scan's recording needs them

        scan = intake(summary, scores, quarantined, files)
        return self._write(lambda session: self._record(session, scan))

    def record_scan_folder(self, folder: Path, files: Mapping[str, str] | None = None) -> str:
        """``record_scan`` from a committed batch folder of the workspace; ``files`` default to
        the sha256 of the folder's files as they are now."""
        from pipeline.ledger.intake import folder_files, read_scan_folder

        return self.record_scan(*read_scan_folder(folder), files=folder_files(folder) if files is None else files)

    def _record(self, session: Session, scan: ScanIntake) -> str:
        existing = session.scalar(select(Batch.id).where(Batch.dataset == scan.dataset, Batch.sha256 == scan.sha256))
        if existing is not None:
            return existing
        batch = Batch(id=self._free_batch_id(session, scan), **scan.batch)
        session.add(batch)
        session.flush()
        decisions = DecisionsDigest(batch.id)
        # A slice at a time through Core's executemany (the ORM's bulk insert took 47 s for 10^6
        # rows); the digest is taken from the same slices, so no step holds every row at once.
        for rows in scan.decision_slices(_INSERT_SLICE):
            for row in rows:
                row.update(id=row_id(batch.id, row["row_number"]), batch_id=batch.id, dataset=batch.dataset)
            session.execute(insert(cast(Table, RowDecision.__table__)), rows)  # a declarative class's table
            decisions.add(rows)
        self._append(
            session,
            [
                _Entry.whole(EntryKind.BATCH, batch.id, batch_payload(batch)),
                _Entry(EntryKind.DECISIONS, batch.id, decisions.hexdigest(), decisions.summary()),
            ],
        )
        return batch.id

    @staticmethod
    def _free_batch_id(session: Session, scan: ScanIntake) -> str:
        """The 12-hex prefix of the sha256 almost always; longer only when that prefix is taken
        (by other bytes, or by the same bytes scanned for another dataset)."""
        candidates = [scan.sha256[:n] for n in _ID_LENGTHS] + [f"{scan.sha256[:12]}-{scan.dataset}"]
        taken = set(session.scalars(select(Batch.id).where(Batch.id.in_(candidates))))
        # The last candidate is free whenever all others are taken: (dataset, sha256) is unique.
        return next(c for c in candidates if c not in taken)

    # --- reading ---------------------------------------------------------------------------

    def get_batch(self, batch_id: str) -> BatchRecord:
        batches = self._read(lambda session: self._batches(session, select(Batch).where(Batch.id == batch_id.strip())))
        if not batches:
            raise NotInLedger(
                f"There is no batch {batch_id!r} in the ledger (batch ids are the first 12 or more "
                "hex digits of the batch's sha256, e.g. 3f2a9c1b0d4e)."
            )
        return batches[0]

    def list_batches(self, dataset: str | None = None) -> list[BatchRecord]:
        """Batches in the order they were scanned."""
        query = select(Batch).order_by(Batch.scanned_at, Batch.id)
        if dataset is not None:
            query = query.where(Batch.dataset == dataset)
        return self._read(lambda session: self._batches(session, query))

    def get_row(self, row: str) -> RowRecord:
        parse_row_id(row)
        rows = self._read(lambda session: self._rows(session, self._rows_query().where(RowDecision.id == row.strip())))
        if not rows:
            raise NotInLedger(
                f"There is no row {row!r} in the ledger (is the batch id right? list the dataset's rows to find it)."
            )
        return rows[0]

    def list_rows(
        self, dataset: str | None = None, status: RowStatus | str | None = None, batch_id: str | None = None
    ) -> list[RowRecord]:
        """Rows in scan order, then row order; ``status`` filters on the current status."""
        query = self._rows_query()
        if dataset is not None:
            query = query.where(RowDecision.dataset == dataset)
        if batch_id is not None:
            query = query.where(RowDecision.batch_id == batch_id)
        if status is not None:
            query = query.where(CURRENT_STATUS == _status(status).value)
        return self._read(lambda session: self._rows(session, query))

    def pending_count(self, dataset: str | None = None) -> int:
        """Quarantined rows no steward has reviewed yet."""
        query = (
            select(func.count())
            .select_from(RowDecision)
            .outerjoin(ReviewActionRow, ReviewActionRow.row_id == RowDecision.id)
            .where(RowDecision.initial_status == RowStatus.PENDING.value, ReviewActionRow.id.is_(None))
        )
        if dataset is not None:
            query = query.where(RowDecision.dataset == dataset)
        return self._read(lambda session: int(session.scalar(query) or 0))

    def released_rows(self, dataset: str) -> list[str]:
        """Ids of the rows stewards released, to be added to the dataset's accepted data. For
        each row's batch sha256 and row number use ``list_rows(dataset, status="released")``."""
        query = (
            select(RowDecision.id)
            .join(ReviewActionRow, ReviewActionRow.row_id == RowDecision.id)
            .join(Batch, Batch.id == RowDecision.batch_id)
            .where(RowDecision.dataset == dataset, ReviewActionRow.action == ReviewAction.RELEASE.value)
            .order_by(Batch.scanned_at, Batch.id, RowDecision.row_number)
        )
        return self._read(lambda session: list(session.scalars(query)))

    def row_numbers(self, dataset: str) -> dict[str, dict[RowStatus, list[int]]]:
        """Per batch id, its row numbers by current status, in row order: what the gate checks
        the workspace's files against, without a record per row."""
        query = (
            select(RowDecision.batch_id, RowDecision.row_number, CURRENT_STATUS)
            .outerjoin(ReviewActionRow, ReviewActionRow.row_id == RowDecision.id)
            .where(RowDecision.dataset == dataset)
            .order_by(RowDecision.batch_id, RowDecision.row_number)
        )

        def read(session: Session) -> dict[str, dict[RowStatus, list[int]]]:
            numbers: dict[str, dict[RowStatus, list[int]]] = {}
            for batch_id, number, status in session.execute(query):
                numbers.setdefault(batch_id, {s: [] for s in RowStatus})[RowStatus(status)].append(int(number))
            return numbers

        return self._read(read)

    @staticmethod
    def _rows_query() -> Select[RowDecision, str, ReviewActionRow]:
        return (
            select(RowDecision, Batch.sha256, ReviewActionRow)
            .join(Batch, Batch.id == RowDecision.batch_id)
            .outerjoin(ReviewActionRow, ReviewActionRow.row_id == RowDecision.id)
            .order_by(Batch.scanned_at, Batch.id, RowDecision.row_number)
        )

    @staticmethod
    def _rows(session: Session, query: Select[RowDecision, str, ReviewActionRow]) -> list[RowRecord]:
        return [_row_record(decision, sha256, action) for decision, sha256, action in session.execute(query)]

    @staticmethod
    def _batches(session: Session, query: Select[Batch]) -> list[BatchRecord]:
        batches = list(session.scalars(query))
        if not batches:
            return []
        tally = (
            select(RowDecision.batch_id, CURRENT_STATUS, func.count())
            .outerjoin(ReviewActionRow, ReviewActionRow.row_id == RowDecision.id)
            .where(RowDecision.batch_id.in_([b.id for b in batches]))
            .group_by(RowDecision.batch_id, CURRENT_STATUS)
        )
        counts: dict[str, dict[str, int]] = {}
        for batch_id, status, count in session.execute(tally):
            counts.setdefault(batch_id, {})[status] = int(count)
        return [_batch_record(b, counts.get(b.id, {})) for b in batches]

    # --- reviewing -------------------------------------------------------------------------

    def release(self, row_ids: Iterable[str], by: str, reason: str) -> list[ReviewRecord]:
        """Let pending rows through to training. All or nothing: if any row cannot be released
        (unknown, accepted by the scan, already reviewed) nothing is recorded."""
        return self._review(ReviewAction.RELEASE, row_ids, by, reason)

    def reject(self, row_ids: Iterable[str], by: str, reason: str) -> list[ReviewRecord]:
        """Confirm that pending rows stay out of training. All or nothing, like ``release``."""
        return self._review(ReviewAction.REJECT, row_ids, by, reason)

    def _review(self, action: ReviewAction, row_ids: Iterable[str], by: str, reason: str) -> list[ReviewRecord]:
        ids = _requested(action, row_ids)
        by, reason = _required(action, "by", by, "who you are"), _required(action, "reason", reason, "why")
        at = utc(self._clock())

        def record(session: Session) -> list[ReviewRecord]:
            _check_reviewable(session, action, ids)
            reviews = [ReviewActionRow(row_id=target, action=action.value, by=by, reason=reason, at=at) for target in ids]
            session.add_all(reviews)
            session.flush()
            self._append(session, [_Entry.whole(EntryKind.REVIEW, r.row_id, review_payload(r)) for r in reviews])
            return [_review_record(r) for r in reviews]

        try:
            return self._write(record)
        except IntegrityError:
            # The write lock makes this unreachable for writers that take it; for one that did
            # not, the unique row_id held, and the fresh state says who got there first.
            self._read(lambda session: _check_reviewable(session, action, ids))
            raise ReviewRefused(
                f"Cannot {action.value} {ids[0]}: the ledger changed while recording; nothing was changed, try again."
            ) from None

    # --- the hash chain --------------------------------------------------------------------

    def head(self) -> ChainHead | None:
        """The newest entry of the chain, to keep outside the database (see ``verify``)."""
        query = select(LedgerEntry.sequence, LedgerEntry.entry_hash).order_by(LedgerEntry.sequence.desc()).limit(1)
        last = self._read(lambda session: session.execute(query).first())
        return ChainHead(last.sequence, last.entry_hash) if last else None

    def verify(self, expected_head: ChainHead | None = None) -> list[str]:
        """Recompute the chain from the tables; an empty list means intact. ``expected_head``, a
        head saved earlier, also catches the newest entries removed with what they cover."""
        try:
            return self._read(lambda session: find_problems(session, expected_head), consistent=True)
        except (ValueError, TypeError) as exc:
            # a JSON or timestamp column edited into something that no longer parses
            return [f"the ledger's tables hold a value that cannot be read back ({exc}); they were edited by hand"]

    @staticmethod
    def _append(session: Session, entries: Sequence[_Entry]) -> None:
        """Chain ``entries`` after the current head (the write lock keeps the head still)."""
        last = session.execute(
            select(LedgerEntry.sequence, LedgerEntry.entry_hash).order_by(LedgerEntry.sequence.desc()).limit(1)
        ).first()
        sequence, prev_hash = (last.sequence, last.entry_hash) if last else (0, GENESIS_HASH)
        for entry in entries:
            sequence += 1
            new_hash = entry_hash(prev_hash, sequence, entry.kind.value, entry.subject, entry.payload_digest)
            session.add(
                LedgerEntry(
                    sequence=sequence,
                    kind=entry.kind.value,
                    subject=entry.subject,
                    payload_digest=entry.payload_digest,
                    recorded=entry.recorded,
                    prev_hash=prev_hash,
                    entry_hash=new_hash,
                )
            )
            prev_hash = new_hash
        session.flush()

    # --- sessions --------------------------------------------------------------------------

    def _write(self, work: Callable[[Session], T]) -> T:
        with self._database_errors(), write_session(self._engine) as session:
            result = work(session)
            last = session.execute(
                select(LedgerEntry.sequence, LedgerEntry.entry_hash).order_by(LedgerEntry.sequence.desc()).limit(1)
            ).first()
        if self._on_write is not None and last is not None:
            self._on_write(ChainHead(last.sequence, last.entry_hash))  # this write's head, committed
        return result

    def _read(self, work: Callable[[Session], T], consistent: bool = False) -> T:
        engine = self._engine
        if consistent and engine.dialect.name == "postgresql":
            # one snapshot for all of verify's queries; SQLite's read transaction already is one
            engine = engine.execution_options(isolation_level="REPEATABLE READ")
        with self._database_errors(), Session(engine) as session, session.begin():
            return work(session)

    @contextlib.contextmanager
    def _database_errors(self) -> Iterator[None]:
        try:
            yield
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise LedgerError(f"The ledger database {self.url} failed: {first_line(exc, self._url)}") from None


def _status(value: RowStatus | str) -> RowStatus:
    try:
        return RowStatus(value)
    except ValueError:
        raise LedgerError(f"Unknown row status {value!r}; use one of: {', '.join(s.value for s in RowStatus)}.") from None


def _requested(action: ReviewAction, row_ids: Iterable[str]) -> list[str]:
    if isinstance(row_ids, str):
        row_ids = [row_ids]
    ids = list(dict.fromkeys(str(r).strip() for r in row_ids))
    if not ids:
        raise ReviewRefused(f"Cannot {action.value}: no row ids were given. Nothing was changed.")
    return ids


def _required(action: ReviewAction, name: str, value: str, meaning: str) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise ReviewRefused(f"Cannot {action.value} rows without saying {meaning}: {name!r} is empty. Nothing was changed.")
    return text


def _check_reviewable(session: Session, action: ReviewAction, ids: Sequence[str]) -> None:
    """Refuse the whole request, naming the first row that cannot be reviewed."""
    found: dict[str, tuple[str, ReviewActionRow | None]] = {}
    for chunk in (ids[i : i + _IN_CHUNK] for i in range(0, len(ids), _IN_CHUNK)):
        query = (
            select(RowDecision.id, RowDecision.initial_status, ReviewActionRow)
            .outerjoin(ReviewActionRow, ReviewActionRow.row_id == RowDecision.id)
            .where(RowDecision.id.in_(chunk))
        )
        found.update({rid: (status, review) for rid, status, review in session.execute(query)})
    refusals = [_refusal(action, rid, found.get(rid)) for rid in ids]
    refused = [r for r in refusals if r]
    if refused:
        others = (
            f" ({len(refused) - 1} more of the {len(ids)} rows cannot be {action.past_tense} either.)"
            if len(refused) > 1
            else ""
        )
        raise ReviewRefused(f"{refused[0]}{others} Nothing was changed.")


def _refusal(action: ReviewAction, rid: str, found: tuple[str, ReviewActionRow | None] | None) -> str | None:
    # Echoed as typed only when printable: a NUL or an escape sequence would reach the terminal.
    verb = f"Cannot {action.value} {rid if rid.isprintable() else repr(rid)}:"
    if found is None and not _ROW_ID_SHAPE.match(rid):
        return (
            f"Cannot {action.value} {rid!r}: it is not a row id (row ids look like 3f2a9c1b0d4e:12, the batch "
            "id, a colon and the row number in the batch file)."
        )
    if found is None:
        return (
            f"{verb} there is no such row in the ledger (row ids look like 3f2a9c1b0d4e:12, the batch id and "
            "the row number; list the dataset's pending rows to find it)."
        )
    status, review = found
    if review is not None:
        when = utc(review.at).strftime("%Y-%m-%d %H:%M UTC")
        return (
            f"{verb} it was already {ReviewAction(review.action).past_tense} by {review.by} at {when} "
            f"({review.reason!r}); a review is final."
        )
    if status != RowStatus.PENDING.value:
        return f"{verb} the scan accepted it, so it is not in quarantine; only pending rows can be reviewed."
    return None


def _review_record(review: ReviewActionRow) -> ReviewRecord:
    return ReviewRecord(
        id=review.id,
        row_id=review.row_id,
        action=ReviewAction(review.action),
        by=review.by,
        reason=review.reason,
        at=utc(review.at),
    )


def _row_record(decision: RowDecision, sha256: str, review: ReviewActionRow | None) -> RowRecord:
    initial = RowStatus(decision.initial_status)
    return RowRecord(
        id=decision.id,
        batch_id=decision.batch_id,
        batch_sha256=sha256,
        dataset=decision.dataset,
        row_number=decision.row_number,
        status=ReviewAction(review.action).outcome if review else initial,
        initial_status=initial,
        suspicion=decision.suspicion,
        reasons=tuple(decision.reasons),
        scores=dict(decision.scores),
        review=_review_record(review) if review else None,
    )


def _batch_record(batch: Batch, counts: Mapping[str, int]) -> BatchRecord:
    return BatchRecord(
        id=batch.id,
        sha256=batch.sha256,
        dataset=batch.dataset,
        file=batch.file,
        source=batch.source,
        submitter=batch.submitter,
        mlflow_run_id=batch.mlflow_run_id,
        scanned_at=utc(batch.scanned_at),
        rows=batch.rows,
        accepted=batch.accepted,
        quarantined=batch.quarantined,
        pending=counts.get(RowStatus.PENDING.value, 0),
        released=counts.get(RowStatus.RELEASED.value, 0),
        rejected=counts.get(RowStatus.REJECTED.value, 0),
        files=dict(batch.files) if batch.files is not None else None,
    )
