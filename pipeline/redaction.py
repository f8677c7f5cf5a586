"""One redaction for everything poisonguard writes or prints: messages, logs, the crash log,
MLflow params, tags and artifacts, manifests, summaries.

``redact(text)`` shows secrets as ``***``:

- the password of a URL's user info: ``postgresql+psycopg://alice:***@db/ledger``,
  ``http://admin:***@mlflow:5000``;
- the value of a secret-looking query or connection parameter: ``?password=***``,
  ``token=***``, ``api_key=***`` (also libpq's ``host=db password=***``);
- any value of a secret the process holds in its environment (``known_secrets``), wherever it
  appears: a driver's error message that quotes one in its own words is caught as well.

Redacting never fails: it is called while reporting other errors.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# Variables whose whole value is a secret.
SECRET_VARIABLES = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "POISONGUARD_UI_TOKEN",
    "POISONGUARD_CACHE_KEY",
    "POISONGUARD_ANCHOR_KEY",
    "PGPASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
)
# Variables holding URLs whose password is a secret.
URL_VARIABLES = ("POISONGUARD_DATABASE_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL")
_SECRET_KEYS = r"password|passwd|pwd|token|access_token|api_key|apikey|secret|client_secret|sig"
_PARAMETER = re.compile(rf"(?i)(?<![A-Za-z0-9_])({_SECRET_KEYS})(\s*=\s*)(['\"]?)([^\s&'\";,)]+)")
# scheme://user:password@ — the password ends at the last '@' before the host
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@'\"]*:)([^\s'\"/]*?)(@[^\s@'\"/]+)")
_SHORTEST = 6  # a "secret" shorter than this would mask ordinary words


def known_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """The secret values this process holds: whole-value variables and URL passwords."""
    env = os.environ if environ is None else environ
    found = [env.get(name, "").strip() for name in SECRET_VARIABLES]
    for name in URL_VARIABLES:
        password = url_password(env.get(name, ""))
        if password:
            found.append(password)
    return sorted({s for s in found if len(s) >= _SHORTEST}, key=len, reverse=True)


def url_password(url: str) -> str | None:
    try:
        parts = urlsplit(url.strip())
        password = parts.password
    except ValueError:
        return None
    if password:
        return password
    match = _PARAMETER.search(parts.query or "")
    return match.group(4) if match else None


def redact(text: Any, secrets: Iterable[str] | None = None) -> str:
    """``text`` (made a string) with every password, token and known secret shown as ``***``.

    >>> redact("Cannot open postgresql+psycopg://alice:s3cret@db/ledger?sslmode=require")
    'Cannot open postgresql+psycopg://alice:***@db/ledger?sslmode=require'
    """
    try:
        result = str(text)
        for secret in known_secrets() if secrets is None else secrets:
            if secret:
                result = result.replace(secret, MASK)
        result = _USERINFO.sub(lambda m: m.group(1) + (MASK if m.group(2) else "") + m.group(3), result)
        return _PARAMETER.sub(lambda m: m.group(1) + m.group(2) + m.group(3) + MASK, result)
    except Exception:  # any error: reporting must go on; say nothing rather than leak
        return "(message withheld: it could not be checked for secrets)"


def redact_data(value: Any, secrets: Iterable[str] | None = None) -> Any:
    """``redact`` applied to every string of a JSON-like value (dicts, lists, tuples)."""
    known = known_secrets() if secrets is None else list(secrets)
    if isinstance(value, str):
        return redact(value, known)
    if isinstance(value, Mapping):
        return {redact(k, known) if isinstance(k, str) else k: redact_data(v, known) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_data(v, known) for v in value)
    return value


def strip_userinfo(uri: str) -> tuple[str, str | None, str | None]:
    """An http(s) URI without its user info, and the user name and password it held. MLflow
    keeps the tracking URI it was given (in run metadata, error messages); credentials belong in
    ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` instead."""
    try:
        parts = urlsplit(uri)
        username, password, hostname, port = parts.username, parts.password, parts.hostname, parts.port
    except ValueError:
        return uri, None, None
    if parts.scheme not in ("http", "https") or (username is None and password is None):
        return uri, None, None
    host = (f"[{hostname}]" if hostname and ":" in hostname else hostname or "") + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)), username, password


class RedactingStream(io.TextIOBase):
    """A text stream that redacts what is written before passing it on (the CLI's stdout and
    stderr, so that a library's own log line cannot print a secret either)."""

    def __init__(self, inner: TextIO, secrets: Iterable[str]) -> None:
        self._inner = inner
        self._secrets = list(secrets)

    def write(self, text: str) -> int:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode(self.encoding, errors="replace")
        self._inner.write(redact(text, self._secrets))
        return len(text)

    def flush(self) -> None:
        self._inner.flush()

    def isatty(self) -> bool:
        return self._inner.isatty()

    def fileno(self) -> int:
        return self._inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._inner, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return getattr(self._inner, "errors", None) or "strict"

    def writable(self) -> bool:
        return True
