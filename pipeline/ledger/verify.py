"""Walk the hash chain and recompute every entry from the rows actually in the tables.

A hand edit in the database shows up in one of three ways: an entry whose hash no longer
matches its content or does not link to the entry before it (the chain itself was edited); an
entry whose payload digest no longer matches the rows it covers (a batch, row decision or
review action was edited or deleted); or a row that no entry covers (one was added, or its
entry deleted). Each problem is reported as one sentence that names the entry and, where the
entry kept a readable copy, what changed.

What the chain alone cannot show: the newest entries deleted together with the rows they
cover. Compare with a ``ChainHead`` kept elsewhere for that.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.ledger.chain import (
    GENESIS_HASH,
    DecisionsDigest,
    EntryKind,
    batch_payload,
    digest,
    entry_hash,
    review_payload,
)
from pipeline.ledger.models import Batch, LedgerEntry, ReviewActionRow, RowDecision
from pipeline.ledger.records import ChainHead

_MAX_ROWS_NAMED = 5  # per entry; a mass edit is summarised, not listed row by row
_PLAIN = re.compile(r"^[\w.:@+-]+$")
_FREE_TEXT = {"reason", "file"}


_READ_SLICE = 50_000


def read_decisions(session: Session, batch_id: str) -> tuple[DecisionsDigest, np.ndarray]:
    """A batch's row decisions as they are now, read in row order a slice at a time: their
    digest and summary, and every row number (to tell an accepted row from a deleted one)."""
    columns = (
        RowDecision.id,
        RowDecision.dataset,
        RowDecision.row_number,
        RowDecision.initial_status,
        RowDecision.suspicion,
        RowDecision.reasons,
        RowDecision.scores,
    )
    query = (
        select(*columns)
        .where(RowDecision.batch_id == batch_id)
        .order_by(RowDecision.row_number)
        .execution_options(yield_per=_READ_SLICE)
    )
    decisions, numbers = DecisionsDigest(batch_id), []
    for part in session.execute(query).mappings().partitions():
        rows = [dict(row) for row in part]
        decisions.add(rows)
        numbers.append(np.fromiter((row["row_number"] for row in rows), dtype=np.int64, count=len(rows)))
    return decisions, np.concatenate(numbers) if numbers else np.array([], dtype=np.int64)


def find_problems(session: Session, expected_head: ChainHead | None = None) -> list[str]:
    entries = session.scalars(select(LedgerEntry).order_by(LedgerEntry.sequence)).all()
    batches = {b.id: b for b in session.scalars(select(Batch))}
    actions = {a.row_id: a for a in session.scalars(select(ReviewActionRow))}
    covered: dict[str, set[str]] = {kind.value: set() for kind in EntryKind}
    problems: list[str] = []
    prev_hash, expected_sequence = GENESIS_HASH, 1
    for entry in entries:
        where = f"entry {entry.sequence} ({_describe(entry)})"
        if entry.sequence != expected_sequence:
            problems.append(_gap(expected_sequence, entry.sequence))
        elif entry.prev_hash != prev_hash:
            problems.append(
                f"{where}: does not link to the entry before it (its previous hash differs); "
                "an earlier entry was replaced or edited"
            )
        if entry.entry_hash != entry_hash(entry.prev_hash, entry.sequence, entry.kind, entry.subject, entry.payload_digest):
            problems.append(f"{where}: its hash does not match its content; the entry itself was edited")
        covered.setdefault(entry.kind, set()).add(entry.subject)
        if entry.kind == EntryKind.BATCH.value:
            batch = batches.get(entry.subject)
            problems += _check_copy(
                where, entry, batch_payload(batch) if batch else None, "the batch is missing from the batches table"
            )
        elif entry.kind == EntryKind.REVIEW.value:
            action = actions.get(entry.subject)
            problems += _check_copy(
                where,
                entry,
                review_payload(action) if action else None,
                "the review action is missing from the review_actions table",
            )
        elif entry.kind == EntryKind.DECISIONS.value:
            problems += _check_decisions(where, entry, *read_decisions(session, entry.subject))
        else:
            problems.append(f"{where}: unknown kind of entry {entry.kind!r}")
        prev_hash, expected_sequence = entry.entry_hash, entry.sequence + 1
    problems += _uncovered(session, batches, actions, covered)
    if expected_head is not None:
        problems += _check_head(entries, expected_head)
    return problems


def _describe(entry: LedgerEntry) -> str:
    if entry.kind == EntryKind.DECISIONS.value:
        return f"decisions of batch {entry.subject}"
    return f"{entry.kind} of {entry.subject}" if entry.kind == EntryKind.REVIEW.value else f"{entry.kind} {entry.subject}"


def _gap(expected: int, found: int) -> str:
    if found > expected:
        missing = f"entry {expected} is" if found == expected + 1 else f"entries {expected} to {found - 1} are"
        return f"{missing} missing: the chain jumps from entry {expected - 1} to entry {found}"
    return f"entry {found} appears out of order after entry {expected - 1}"


def _check_copy(where: str, entry: LedgerEntry, current: dict[str, Any] | None, missing: str) -> list[str]:
    """Batch and review entries keep the whole payload as their readable copy."""
    problems = []
    recorded = _readable_copy(entry)
    if digest(entry.recorded) != entry.payload_digest:
        problems.append(f"{where}: its recorded copy was edited (it no longer matches the entry's digest)")
    if current is None:
        return [*problems, f"{where}: {missing} (deleted)"]
    if digest(current) != entry.payload_digest:
        fields = [*current, *(f for f in recorded if f not in current)]
        changes = [change for field in fields for change in _changes(where, field, recorded.get(field), current.get(field))]
        problems += changes or [f"{where}: the {entry.kind} no longer matches what was recorded"]
    return problems


def _changes(where: str, field: str, before: Any, after: Any) -> list[str]:
    if before == after:
        return []
    if field == "files":
        # name the file whose recorded hash was rewritten, not two long dictionaries
        before, after = (v if isinstance(v, dict) else {} for v in (before, after))
        named = [
            f"{where}: recorded sha256 of {name} changed from {_short(before.get(name))} to {_short(after.get(name))}"
            for name in sorted(before.keys() | after.keys())
            if before.get(name) != after.get(name)
        ]
        return named or [f"{where}: its recorded file hashes changed"]
    return [f"{where}: recorded {field} changed from {_show(field, before)} to {_show(field, after)}"]


def _short(value: Any) -> str:
    return f"{value[:12]}…" if isinstance(value, str) else "nothing"


def _check_decisions(where: str, entry: LedgerEntry, decisions: DecisionsDigest, row_numbers: np.ndarray) -> list[str]:
    """A batch's decisions share one digest; the readable copy (row count and pending rows)
    names the rows whose status changed. Other edits are reported without naming the row."""
    current = decisions.summary()
    if decisions.hexdigest() == entry.payload_digest:
        if current != entry.recorded:
            return [f"{where}: its recorded summary was edited (the decisions themselves are intact)"]
        return []
    recorded = _readable_copy(entry)
    problems = []
    if recorded.get("rows") != current["rows"]:
        problems.append(
            f"{where}: the batch had {recorded.get('rows')} row decisions when recorded, "
            f"now {current['rows']} (rows were deleted or added)"
        )
    pending = recorded.get("pending")
    was_pending = {n for n in pending if isinstance(n, int)} if isinstance(pending, list) else set()
    now_pending = set(current["pending"])
    changed = []
    for number in sorted(was_pending | now_pending):
        before = "pending" if number in was_pending else "accepted"
        after = "pending" if number in now_pending else "accepted" if _holds(row_numbers, number) else "deleted"
        if before != after:
            changed.append(f"row {entry.subject}:{number} was recorded as {before}, now {after}")
    if changed:
        more = f" (and {len(changed) - _MAX_ROWS_NAMED} more)" if len(changed) > _MAX_ROWS_NAMED else ""
        problems.append(f"{where}: " + "; ".join(changed[:_MAX_ROWS_NAMED]) + more)
    return problems or [
        f"{where}: the suspicion, reasons, scores or dataset of a row decision changed since it was recorded"
    ]


def _holds(ordered: np.ndarray, number: int) -> bool:
    position = int(np.searchsorted(ordered, number))
    return position < len(ordered) and int(ordered[position]) == number


def _readable_copy(entry: LedgerEntry) -> dict[str, Any]:
    # An edited copy may not even be an object any more; verify reports, it never crashes.
    return entry.recorded if isinstance(entry.recorded, dict) else {}


def _uncovered(
    session: Session, batches: Mapping[str, Batch], actions: Mapping[str, ReviewActionRow], covered: Mapping[str, set[str]]
) -> list[str]:
    problems = [
        f"batch {batch_id} has no ledger entry: it was added outside the ledger, or its entry was deleted"
        for batch_id in sorted(set(batches) - covered[EntryKind.BATCH.value])
    ]
    with_rows = set(session.scalars(select(RowDecision.batch_id).distinct()))
    problems += [
        f"the row decisions of batch {batch_id} have no ledger entry: they were added outside the "
        "ledger, or their entry was deleted"
        for batch_id in sorted(with_rows - covered[EntryKind.DECISIONS.value])
    ]
    problems += [
        f"review of {row_id} ({actions[row_id].action} by {actions[row_id].by}) has no ledger entry: "
        "it was added outside the ledger, or its entry was deleted"
        for row_id in sorted(set(actions) - covered[EntryKind.REVIEW.value])
    ]
    return problems


def _check_head(entries: Iterable[LedgerEntry], head: ChainHead) -> list[str]:
    by_sequence = {e.sequence: e for e in entries}
    last = max(by_sequence, default=0)
    entry = by_sequence.get(head.sequence)
    if entry is None:
        return [
            f"the chain ends at entry {last}, but entry {head.sequence} was recorded as its head earlier: "
            "entries were cut off the end"
        ]
    if entry.entry_hash != head.entry_hash:
        return [f"entry {head.sequence} is not the entry recorded as the head earlier (its hash differs)"]
    return []


def _show(field: str, value: Any) -> str:
    """Names and codes bare (``from reject to release``), free text quoted."""
    plain = isinstance(value, str) and field not in _FREE_TEXT and _PLAIN.match(value)
    return str(value) if plain or isinstance(value, int) else repr(value)
