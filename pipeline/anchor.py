"""The ledger's head, kept where the workspace writer cannot rewrite it.

The hash chain shows an edit only to someone who knows what the chain said before: whoever can
write the ledger database can rewrite entries and recompute every hash after them, and
``verify`` then says "intact". An anchor is that outside knowledge:

- ``POISONGUARD_LEDGER_ANCHOR``: a file outside the workspace (a folder only the scanning
  service account can write, an append-only mount) to which every ledger write appends the
  new head, one JSON line ``{"sequence", "entry_hash", "ledger", "at", "mac"}``;
- ``POISONGUARD_ANCHOR_KEY`` (hex, at least 32 bytes, from the environment or a secret store):
  each line carries an HMAC-SHA256 of the head under it, so a line the key holder did not write
  is refused. With a key and no anchor file, the signed heads go to
  ``<workspace>/ledger-anchor.jsonl``: the workspace writer cannot forge a head there, but can
  roll the file (and the ledger) back to an older signed state.

The gate refuses unless the chain holds the newest anchored head and nothing after it. Without
an anchor, ``poisonguard gate --expect-head SEQUENCE:HASH`` pins the head a retraining job saw
printed by the previous gate or ``verify``. See docs/security.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PoisonguardError
from pipeline.ledger import ChainHead, Ledger
from pipeline.ledger.database import display_url, parse_url

ANCHOR_VARIABLE = "POISONGUARD_LEDGER_ANCHOR"
KEY_VARIABLE = "POISONGUARD_ANCHOR_KEY"
WORKSPACE_ANCHOR = "ledger-anchor.jsonl"
_KEY_BYTES = 32


@dataclass(frozen=True)
class Anchor:
    """Where heads are appended (``path``) and the key that signs them (None: unsigned)."""

    path: Path
    key: bytes | None = None

    def record(self, head: ChainHead, ledger: str) -> None:
        """Append ``head``: one line, written with O_APPEND and synced before returning."""
        line = {
            "sequence": head.sequence,
            "entry_hash": head.entry_hash,
            "ledger": ledger,
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        if self.key is not None:
            line["mac"] = self._mac(head)
        data = (json.dumps(line, sort_keys=True) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(descriptor, data)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        except OSError as exc:
            raise PoisonguardError(
                f"Recorded in the ledger, but the new head {head.sequence}:{head.entry_hash} "
                f"could not be appended to the ledger anchor {self.path} ({exc.strerror}). "
                "The gate refuses until it is: fix the anchor's location and run "
                "'poisonguard verify --record-anchor'."
            ) from None

    def newest(self) -> tuple[ChainHead | None, list[str]]:
        """The anchored head with the highest sequence, and a problem for every line that is not
        a head this anchor wrote (unreadable, or not signed with its key)."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None, []
        except (OSError, UnicodeDecodeError) as exc:
            return None, [f"the ledger anchor {self.path} cannot be read ({exc})"]
        newest: ChainHead | None = None
        problems = []
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            head = self._parse(text)
            if head is None:
                problems.append(
                    f"line {number} of the ledger anchor {self.path} is not a head "
                    + ("signed with POISONGUARD_ANCHOR_KEY" if self.key else "poisonguard wrote")
                )
            elif newest is None or head.sequence > newest.sequence:
                newest = head
        return newest, problems

    def check(self, chain_head: ChainHead | None) -> list[str]:
        """Problems with the chain as it is now, against the newest anchored head. That the
        chain still holds the anchored entry is ``Ledger.verify(expected_head=...)``'s part."""
        anchored, problems = self.newest()
        if anchored is None:
            if chain_head is not None:
                problems.append(
                    f"the ledger anchor {self.path} holds no head, but the ledger has "
                    f"{chain_head.sequence} entries: they were written without the anchor "
                    "(a steward who has checked them runs 'poisonguard verify --record-anchor')"
                )
            return problems
        if chain_head is not None and chain_head.sequence > anchored.sequence:
            problems.append(
                f"entries {anchored.sequence + 1} to {chain_head.sequence} of the ledger were not "
                f"anchored (the anchor's newest head is entry {anchored.sequence}): they were written "
                "outside poisonguard, or a write was interrupted before anchoring"
            )
        return problems

    def _mac(self, head: ChainHead) -> str:
        assert self.key is not None
        return hmac.new(self.key, f"{head.sequence}:{head.entry_hash}".encode(), hashlib.sha256).hexdigest()

    def _parse(self, text: str) -> ChainHead | None:
        try:
            line = json.loads(text)
            head = ChainHead(int(line["sequence"]), str(line["entry_hash"]))
        except (ValueError, KeyError, TypeError):
            return None
        if self.key is not None and not hmac.compare_digest(str(line.get("mac", "")), self._mac(head)):
            return None
        return head


def anchor_from(workspace: Path, environ: Mapping[str, str]) -> Anchor | None:
    """The anchor the environment configures for ``workspace``, or None."""
    raw_path = environ.get(ANCHOR_VARIABLE, "").strip()
    key = _key(environ)
    if not raw_path:
        return Anchor(workspace / WORKSPACE_ANCHOR, key) if key is not None else None
    path = Path(raw_path).expanduser().resolve()
    if path.is_relative_to(workspace.expanduser().resolve()) and key is None:
        raise PoisonguardError(
            f"{ANCHOR_VARIABLE}={raw_path} is inside the workspace, which its writer can "
            f"rewrite; put the anchor outside it, or set {KEY_VARIABLE} to sign its heads."
        )
    return Anchor(path, key)


def _key(environ: Mapping[str, str]) -> bytes | None:
    raw = environ.get(KEY_VARIABLE, "").strip()
    if not raw:
        return None
    try:
        key = bytes.fromhex(raw)
    except ValueError:
        raise PoisonguardError(
            f"{KEY_VARIABLE} must be hex (e.g. from `python -c 'import secrets; print(secrets.token_hex(32))'`)."
        ) from None
    if len(key) < _KEY_BYTES:
        raise PoisonguardError(f"{KEY_VARIABLE} must hold at least {_KEY_BYTES} bytes ({2 * _KEY_BYTES} hex digits).")
    return key


def parse_head(text: str) -> tuple[int | None, str]:
    """``--expect-head``: ``SEQUENCE:HASH`` as printed, or a hash (at least 16 hex digits)."""
    sequence_text, _, hash_text = text.strip().rpartition(":")
    hash_text = hash_text.lower()
    try:
        sequence = int(sequence_text) if sequence_text else None
        int(hash_text, 16)
    except ValueError:
        sequence = -1
    if sequence == -1 or not 16 <= len(hash_text) <= 64:
        raise PoisonguardError(
            f"--expect-head must be SEQUENCE:HASH as 'poisonguard gate' and 'verify' print it "
            f"(or at least 16 hex digits of the hash); got {text!r}."
        )
    return sequence, hash_text


def expected_head_problems(expected: str, chain_head: ChainHead | None) -> list[str]:
    """The chain's head against the one a retraining job pinned."""
    sequence, prefix = parse_head(expected)
    if chain_head is None:
        return [f"the ledger is empty, but its head was pinned as {expected}"]
    if not chain_head.entry_hash.startswith(prefix) or (sequence is not None and sequence != chain_head.sequence):
        return [
            f"the ledger's head is {chain_head.sequence}:{chain_head.entry_hash}, not {expected} as pinned with "
            "--expect-head: its history was rewritten, or entries were added or removed since"
        ]
    return []


def describe(head: ChainHead | None) -> str:
    """A head as printed for pinning."""
    return f"{head.sequence}:{head.entry_hash}" if head else "0:-"


def open_ledger(settings: Any) -> Ledger:
    """The ledger the settings name; with an anchor configured, every write appends its new head."""
    url = settings.database_url.get_secret_value()
    anchor = settings.anchor
    if anchor is None:
        return Ledger.open(url)
    ledger_name = display_url(parse_url(url))
    return Ledger.open(url, on_write=lambda head: anchor.record(head, ledger_name))
