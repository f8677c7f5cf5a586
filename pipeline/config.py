"""Configuration, read once at the edge (CLI or flow entry) and passed down as one object."""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.detectors import DEFAULT_DETECTORS
from pipeline.errors import PoisonguardError

DEFAULT_WORKSPACE = Path(".poisonguard")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Settings:
    """Where state lives and how scans behave."""

    workspace: Path
    tracking_uri: str  # MLflow
    submitter: str
    detectors: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEFAULT_DETECTORS))
    holdout_fraction: float = 0.2  # split off the reference when no --holdout is given
    roni_model: str = "sklearn.linear_model.LogisticRegression"  # exact group RONI; any sklearn classifier
    random_state: int = 0

    @classmethod
    def from_environment(cls, workspace: str | Path | None = None,
                         environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        root = Path(workspace or env.get("POISONGUARD_WORKSPACE") or DEFAULT_WORKSPACE).expanduser().resolve()
        tracking = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
        return cls(workspace=root, tracking_uri=tracking,
                   submitter=env.get("POISONGUARD_USER") or _login_name())

    @property
    def uses_local_mlflow(self) -> bool:
        return self.tracking_uri == f"sqlite:///{self.workspace / 'mlflow.db'}"


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def safe_name(value: str, what: str) -> str:
    """Names that become folder names must not escape the workspace."""
    if not _SAFE_NAME.match(value) or value in (".", ".."):
        raise PoisonguardError(
            f"The {what} {value!r} may only contain letters, digits, '.', '_' and '-' "
            "(at most 128, starting with a letter or digit)."
        )
    return value


def prefect_environment(workspace: Path) -> dict[str, str]:
    """Environment for Prefect's ephemeral mode: quiet, self-contained in the workspace, and
    patient with the temporary server's cold start (13 s measured, default timeout 20 s)."""
    return {
        "PREFECT_HOME": str(workspace / "prefect"),
        "PREFECT_LOGGING_LEVEL": "ERROR",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }
