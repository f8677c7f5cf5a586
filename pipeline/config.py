"""Configuration, read once at the edge (CLI or flow entry) and passed down as one object."""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from pipeline.errors import PoisonguardError
from pipeline.params import DETECTOR_NAME
from pipeline.policy import QuarantinePolicy

UNSEEN_LEVEL_POLICIES = ("hold", "alarm")
ORCHESTRATORS = ("auto", "plain", "prefect")

if TYPE_CHECKING:
    from pipeline.anchor import Anchor

DEFAULT_WORKSPACE = Path(".poisonguard")
# Detectors a scan runs, by registry name (pipeline.detectors) with their parameters. RONI's
# per-row influence is registered but not on by default: on HMDA's noisy labels its single-row
# AUROC is ~0.5 (0.94 on breast cancer); groups get exact RONI in every scan instead.
DEFAULT_DETECTORS: dict[str, dict[str, Any]] = {"outliers": {}, "label_consistency": {}, "trigger": {}, "duplicates": {}}
DATABASE_URL_VARIABLE = "POISONGUARD_DATABASE_URL"
LEDGER_FILE_NAME = "ledger.sqlite"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class RoleRules:
    """How id and time columns are judged. ``max_age_days``: a time older than this before the
    batch's arrival is out of the window (None: no lower bound); ``future_tolerance_hours``:
    clock skew allowed past the arrival."""

    max_age_days: float | None = 3650.0
    future_tolerance_hours: float = 24.0

    def as_dict(self) -> dict[str, Any]:
        return {"max_age_days": self.max_age_days, "future_tolerance_hours": self.future_tolerance_hours}


@dataclass(frozen=True)
class Settings:
    """Where state lives and how scans behave."""

    workspace: Path
    # MLflow's tracking URI. A SecretStr for the reason database_url is one (below): a database
    # store's URI may hold a password. Read it as ``tracking_uri``; print ``redact(...)`` of it.
    tracking: SecretStr
    submitter: str
    detectors: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEFAULT_DETECTORS))
    holdout_fraction: float = 0.2  # split off the reference when no --holdout is given
    roni_model: str = "sklearn.linear_model.LogisticRegression"  # exact group RONI; any sklearn classifier
    random_state: int = 0
    max_fit_rows: int = 50_000  # detectors fit on a stratified sample of at most this many trusted rows
    max_impact_rows: int = 100_000  # exact group RONI fits on a sample of at most this many rows
    chunk_rows: int = 100_000  # the batch is read (scored, keyed, written) this many rows at a time
    # A batch file larger than this is spooled to a memory-mapped Arrow file in the workspace
    # instead of read into memory (io.read_table).
    spool_bytes: int = 64 << 20
    # Score chunks on Dask: a scheduler address ('tcp://host:8786'), or 'local' for a LocalCluster
    # started for the scan. None: Prefect's default thread pool.
    dask: str | None = None
    policy: QuarantinePolicy = field(default_factory=QuarantinePolicy)
    # id and time columns (pipeline.roles): the window a time must fall in around the batch's arrival
    role_rules: RoleRules = field(default_factory=RoleRules)
    # a category level the trusted data never had: "hold" its rows, or accept them and "alarm"
    unseen_levels: str = "hold"
    show_progress: bool = False  # one line per scan stage on stderr (the CLI's --progress)
    # How the CLI runs a scan or the gate: "plain" (steps called in the process) or "prefect" (a
    # flow run with a task per step). POISONGUARD_ORCHESTRATOR=auto, the default, picks Prefect
    # when a server is configured (PREFECT_API_URL) or chunks go to Dask, plain otherwise: a
    # one-off scan does not wait for a temporary Prefect server to start and stop.
    orchestrator: str = "plain"
    # The ledger: SQLite in the workspace, or $POISONGUARD_DATABASE_URL. A SecretStr because
    # Settings is a flow parameter and Prefect stores parameters (locally, or on its server):
    # pydantic writes a SecretStr there as '**********'.
    database_url: SecretStr = field(default_factory=lambda: SecretStr(""))
    # Where every ledger write appends its new head, outside the workspace (POISONGUARD_LEDGER_ANCHOR),
    # and the key that signs it (POISONGUARD_ANCHOR_KEY): see pipeline/anchor.py, docs/security.md.
    anchor_path: Path | None = None
    anchor_key: SecretStr = field(default_factory=lambda: SecretStr(""))

    @classmethod
    def from_environment(cls, workspace: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        root = Path(workspace or env.get("POISONGUARD_WORKSPACE") or DEFAULT_WORKSPACE).expanduser().resolve()
        tracking = _tracking_uri(env, root, export=environ is None)
        try:
            policy = QuarantinePolicy(
                false_quarantine_target=_number(env, "POISONGUARD_FALSE_QUARANTINE_TARGET", 0.01),
                false_discovery_rate=_number(env, "POISONGUARD_FALSE_DISCOVERY_RATE", 0.1),
                verdict_alpha=_number(env, "POISONGUARD_VERDICT_ALPHA", 0.01),
                evidence_hold=env.get("POISONGUARD_EVIDENCE_HOLD", "likely").strip() or "likely",
            )
        except PoisonguardError as error:
            raise PoisonguardError(
                f"{error} Set it with POISONGUARD_FALSE_QUARANTINE_TARGET / "
                "POISONGUARD_FALSE_DISCOVERY_RATE / POISONGUARD_VERDICT_ALPHA / "
                "POISONGUARD_EVIDENCE_HOLD."
            ) from None
        max_fit_rows = _row_count(env, "POISONGUARD_MAX_FIT_ROWS", 50_000)
        max_impact_rows = _row_count(env, "POISONGUARD_MAX_IMPACT_ROWS", 100_000)
        chunk_rows = _row_count(env, "POISONGUARD_CHUNK_ROWS", 100_000, minimum=10)
        spool_mib = _number(env, "POISONGUARD_SPOOL_MIB", 64)
        if spool_mib < 0:
            raise PoisonguardError(
                f"POISONGUARD_SPOOL_MIB must be a size in MiB, 0 or more; got {env.get('POISONGUARD_SPOOL_MIB')!r}."
            )
        unseen = (env.get("POISONGUARD_UNSEEN_LEVELS") or "hold").strip().lower()
        if unseen not in UNSEEN_LEVEL_POLICIES:
            raise PoisonguardError(
                f"POISONGUARD_UNSEEN_LEVELS must be 'hold' or 'alarm'; got {env.get('POISONGUARD_UNSEEN_LEVELS')!r}."
            )
        orchestrator = _orchestrator(env)
        detectors = _detectors(env)
        max_age = _number(env, "POISONGUARD_TIME_WINDOW_DAYS", 3650)
        tolerance = _number(env, "POISONGUARD_FUTURE_TOLERANCE_HOURS", 24)
        if max_age < 0 or tolerance < 0:
            raise PoisonguardError(
                "POISONGUARD_TIME_WINDOW_DAYS and POISONGUARD_FUTURE_TOLERANCE_HOURS must be 0 or "
                "more (a window of 0 days: no lower bound)."
            )
        return cls(
            workspace=root,
            tracking=SecretStr(tracking),
            unseen_levels=unseen,
            orchestrator=orchestrator,
            detectors=detectors,
            role_rules=RoleRules(max_age_days=max_age or None, future_tolerance_hours=tolerance),
            max_fit_rows=max_fit_rows,
            max_impact_rows=max_impact_rows,
            chunk_rows=chunk_rows,
            spool_bytes=int(spool_mib * (1 << 20)),
            dask=env.get("POISONGUARD_DASK") or None,
            submitter=env.get("POISONGUARD_USER") or _login_name(),
            policy=policy,
            database_url=SecretStr(ledger_url(root, env)),
            **_anchor_settings(root, env),
        )

    @property
    def anchor(self) -> Anchor | None:
        from pipeline.anchor import Anchor

        if self.anchor_path is None:
            return None
        key = self.anchor_key.get_secret_value()
        return Anchor(self.anchor_path, bytes.fromhex(key) if key else None)

    @property
    def tracking_uri(self) -> str:
        return self.tracking.get_secret_value()

    @property
    def artifact_root(self) -> Path | None:
        """Where new MLflow experiments keep their artifacts, when it is ours to say.

        A tracking server (http/https) and a file store decide for themselves. A database used
        directly would otherwise send artifacts to ./mlruns under whatever folder the scan was
        started from: beside a SQLite file they go next to it, for any other database into the
        workspace.
        """
        scheme, _, rest = self.tracking_uri.partition("://")
        if not rest or scheme in ("http", "https", "file", "databricks"):
            return None
        if scheme == "sqlite":  # sqlite:///relative.db, sqlite:////absolute.db
            return Path(rest[1:]).resolve().parent / "mlartifacts"
        return self.workspace / "mlartifacts"


def ledger_url(workspace: str | Path, environ: Mapping[str, str]) -> str:
    """The ledger's database URL: ``$POISONGUARD_DATABASE_URL`` if set, else a SQLite file in
    the workspace."""
    configured = environ.get(DATABASE_URL_VARIABLE, "").strip()
    if configured:
        return configured
    return f"sqlite:///{Path(workspace).expanduser().resolve() / LEDGER_FILE_NAME}"


def _anchor_settings(root: Path, env: Mapping[str, str]) -> dict[str, Any]:
    from pipeline.anchor import anchor_from

    anchor = anchor_from(root, env)
    if anchor is None:
        return {}
    return {"anchor_path": anchor.path, "anchor_key": SecretStr(anchor.key.hex() if anchor.key else "")}


def _tracking_uri(env: Mapping[str, str], root: Path, export: bool) -> str:
    """MLflow's tracking URI. An http(s) URI's user info is moved to MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD (which MLflow reads for basic auth): given in the URI, MLflow
    repeats it in its own error messages and whatever records the URI keeps the password."""
    from pipeline.redaction import strip_userinfo

    uri = (env.get("MLFLOW_TRACKING_URI") or "").strip() or f"sqlite:///{root / 'mlflow.db'}"
    bare, username, password = strip_userinfo(uri)
    if bare != uri:
        if not export:  # a given mapping, not the process's environment: nowhere to move them to
            raise PoisonguardError(
                "MLFLOW_TRACKING_URI holds user info; set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD instead and leave it out of the URI."
            )
        if username:
            os.environ.setdefault("MLFLOW_TRACKING_USERNAME", username)
        if password:
            os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", password)
        os.environ["MLFLOW_TRACKING_URI"] = bare  # libraries that read it themselves get it bare too
    return bare


def _detectors(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """POISONGUARD_DETECTORS: the detectors a scan runs, as comma-separated registry names (a
    detector of another package by its entry point's name), each with its default parameters;
    unset, ``DEFAULT_DETECTORS``. Whether a name is known is checked when the scan builds them
    (the registry imports scikit-learn, which the light commands must not)."""
    raw = (env.get("POISONGUARD_DETECTORS") or "").strip()
    if not raw:
        return dict(DEFAULT_DETECTORS)
    names = [name.strip() for name in raw.split(",") if name.strip()]
    bad = [name for name in names if not DETECTOR_NAME.fullmatch(name)]
    if bad or not names:
        raise PoisonguardError(
            f"POISONGUARD_DETECTORS must be comma-separated detector names such as "
            f"'outliers,label_consistency,trigger,duplicates'; got {raw!r}."
        )
    return {name: dict(DEFAULT_DETECTORS.get(name, {})) for name in dict.fromkeys(names)}


def _orchestrator(env: Mapping[str, str]) -> str:
    chosen = (env.get("POISONGUARD_ORCHESTRATOR") or "auto").strip().lower()
    if chosen not in ORCHESTRATORS:
        raise PoisonguardError(
            f"POISONGUARD_ORCHESTRATOR must be one of {', '.join(ORCHESTRATORS)}; "
            f"got {env.get('POISONGUARD_ORCHESTRATOR')!r}."
        )
    if chosen == "auto":
        return "prefect" if (env.get("PREFECT_API_URL") or env.get("POISONGUARD_DASK")) else "plain"
    return chosen


def _number(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise PoisonguardError(f"The environment variable {key} must be a number such as {default}; got {raw!r}.") from None


def _row_count(env: Mapping[str, str], key: str, default: int, minimum: int = 100) -> int:
    value = _number(env, key, default)
    if value < minimum or value != int(value):
        raise PoisonguardError(f"{key} must be a whole number of rows, at least {minimum}; got {env.get(key)!r}.")
    return int(value)


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def safe_name(value: str, what: str) -> str:
    """Names that become folder names must not escape the workspace."""
    # fullmatch: with match, '$' also matches before a final newline, so "name\n" passed.
    if not _SAFE_NAME.fullmatch(value) or value in (".", ".."):
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
