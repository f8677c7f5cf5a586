"""The steward review page: a small server-rendered web app over the quarantine ledger.

``poisonguard ui`` serves it; ``create_app(settings, token)`` builds it (tests, other servers).
Same workflow as ``poisonguard review``: batches and their counts, a batch's quarantined rows,
a row beside its nearest trusted rows, release or reject with who and why.
"""

from pipeline.ui.app import create_app
from pipeline.ui.security import check_token

__all__ = ["create_app", "check_token"]
