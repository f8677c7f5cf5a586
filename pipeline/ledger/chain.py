"""The hash chain: what each ledger entry's digest covers, computed the same way when an entry
is written and when ``verify`` recomputes it from the tables.

An entry's content is ``{sequence, kind, subject, payload_digest}`` and
``entry_hash = sha256(prev_hash + canonical_json(content))``, with ``prev_hash`` of the first
entry sixty-four zeros. ``payload_digest`` is the sha256 of the canonical JSON of the payload:

- ``batch``: the batch's fields (id, sha256, dataset, file, source, submitter, MLflow run id,
  scan time, counts) and, since revision 0002, ``files``: the sha256 of each file of its
  workspace folder at commit. A batch recorded earlier has none, and its payload leaves the key
  out, so its entry verifies as it always did;
- ``decisions``: every row decision of the batch, in row order (row id, dataset, row number,
  initial status, suspicion, reasons, scores), so one digest covers them all;
- ``review``: the action, the row, who, why and when.

Canonical JSON: sorted keys, no whitespace, UTF-8, no NaN; times as UTC ISO 8601 with
microseconds. The same bytes come out whether a value went through SQLite or PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

from pipeline.ledger.models import Batch, ReviewActionRow


class EntryKind(str, Enum):
    BATCH = "batch"
    DECISIONS = "decisions"
    REVIEW = "review"


GENESIS_HASH = "0" * 64


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def digest(payload: Any) -> str:
    return sha256_hex(canonical_json(payload))


def entry_hash(prev_hash: str, sequence: int, kind: str, subject: str, payload_digest: str) -> str:
    content = {"sequence": sequence, "kind": kind, "subject": subject, "payload_digest": payload_digest}
    return sha256_hex(prev_hash + canonical_json(content))


def utc(moment: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; everything the ledger stores is UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def timestamp(moment: dt.datetime) -> str:
    return utc(moment).isoformat(timespec="microseconds")


def batch_payload(batch: Batch) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": batch.id,
        "sha256": batch.sha256,
        "dataset": batch.dataset,
        "file": batch.file,
        "source": batch.source,
        "submitter": batch.submitter,
        "mlflow_run_id": batch.mlflow_run_id,
        "scanned_at": timestamp(batch.scanned_at),
        "rows": batch.rows,
        "accepted": batch.accepted,
        "quarantined": batch.quarantined,
    }
    if batch.files is not None:  # absent from entries written before revision 0002
        payload["files"] = batch.files
    return payload


class DecisionsDigest:
    """The ``decisions`` payload's digest and readable copy, taken from a batch's row decisions
    as they stream past in row order, a slice at a time.

    The payload is ``{"batch_id": …, "rows": [[id, dataset, row number, initial status,
    suspicion, reasons, scores], …]}`` in row order; its canonical JSON is hashed piece by piece,
    which gives the digest of the whole without building it (for 10^6 rows it is ~300 MB of
    text). ``summary()`` is the entry's readable copy: enough to name a row whose status was
    changed or that was removed, at a size that stays small for large batches.
    """

    def __init__(self, batch_id: str) -> None:
        self.batch_id = batch_id
        self.rows = 0
        self.pending: list[int] = []
        self._last_row_number = -1
        self._sha256 = hashlib.sha256(f'{{"batch_id":{canonical_json(batch_id)},"rows":['.encode())

    def add(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """The next row decisions (mappings of the ``row_decisions`` columns), in row order."""
        if not rows:
            return
        numbers = [row["row_number"] for row in rows]
        if numbers[0] < self._last_row_number or any(a > b for a, b in itertools.pairwise(numbers)):
            raise ValueError("row decisions must be added in row order")
        fields = [
            [
                row["id"],
                row["dataset"],
                row["row_number"],
                row["initial_status"],
                row["suspicion"],
                row["reasons"],
                row["scores"],
            ]
            for row in rows
        ]
        text = canonical_json(fields)[1:-1]  # the elements of a list, so that slices concatenate
        self._sha256.update((b"," if self.rows else b"") + text.encode("utf-8"))
        self.rows += len(rows)
        self.pending += [row["row_number"] for row in rows if row["initial_status"] == "pending"]
        self._last_row_number = numbers[-1]

    def hexdigest(self) -> str:
        closed = self._sha256.copy()
        closed.update(b"]}")
        return closed.hexdigest()

    def summary(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "rows": self.rows, "pending": list(self.pending)}


def review_payload(action: ReviewActionRow) -> dict[str, Any]:
    return {
        "row_id": action.row_id,
        "action": action.action,
        "by": action.by,
        "reason": action.reason,
        "at": timestamp(action.at),
    }
