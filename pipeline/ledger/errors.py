"""Errors of the ledger. Each is a ``PoisonguardError``: the CLI prints its one line and exits 2."""

from __future__ import annotations

from pipeline.errors import PoisonguardError


class LedgerError(PoisonguardError):
    """The ledger database cannot be opened or used, or a scan cannot be recorded as given."""


class NotInLedger(LedgerError):
    """A batch or row id that the ledger does not know."""


class ReviewRefused(LedgerError):
    """A release or reject that was refused as a whole: nothing was recorded."""
