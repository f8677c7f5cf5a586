"""Errors that reach a user carry one line that says what is wrong and what to do."""

from __future__ import annotations


class PoisonguardError(Exception):
    """A problem the user can fix (bad input, bad usage). The CLI prints it and exits 2."""

    exit_code = 2


class InputError(PoisonguardError):
    """An input file is missing, unreadable or structurally invalid."""


class SuiteError(PoisonguardError):
    """An expectation suite file is missing, not JSON, or not a valid suite."""


class GateRefused(PoisonguardError):
    """The pre-retrain gate released nothing: the workspace or the ledger does not match what
    was recorded, or rows still await review. The CLI prints it and exits 3."""

    exit_code = 3
