"""Landing areas: where batch files are dropped, and how each is scanned exactly once.

A landing area is a local folder, or any location pyarrow or fsspec can open (``s3://bucket/in``,
``gs://…``, ``hdfs://…``, ``memory://…``). Producers drop finished files there: write under a
hidden or temporary name, then rename. A file still being written under its final name is left
alone until it is ``settle_seconds`` old. Only ``.csv``, ``.parquet`` and ``.pq`` files whose
names do not start with ``.`` or ``_`` are picked up. poisonguard keeps its bookkeeping beside
them::

    <landing>/batch.csv                                  new: not claimed yet
    <landing>/.poisonguard/inflight/<claim>/batch.csv    claimed by a pass, being scanned
    <landing>/.poisonguard/processed/<claim>/batch.csv   done; batch.csv.result.json beside it
    <landing>/.poisonguard/failed/<claim>/batch.csv      failed for good; batch.csv.error.txt beside it

Exactly once rests on two atomic renames. First, a pass claims a file by moving it into a claim
folder of its own. When two passes race for a file, one move succeeds and the other finds the
file gone. Second, the scan is idempotent by content hash. Its workspace commit is an atomic
rename keyed by the batch's sha256, so bytes that land twice, or that are scanned again after a
crash, are recorded once. The claim saves work; the workspace guarantees the once. On object
stores a move is a copy plus a delete, so two passes may both scan a file, but it is still
recorded once.

A claim folder's name says who holds the claim, for example
``20261126T020000Z.1.4242.9f8e7d6c.worker-1``: when it was claimed, which attempt, the process
id, a random token, and the host. A pass resumes a claim whose holder is gone. That is a claim
released after a transient failure (process 0), a claim whose process on this host is dead, or
a claim older than ``claim_timeout_seconds``, because this host cannot ask a process on another
host whether it is alive. Resuming is also a move, so two passes never resume the same claim.
After ``max_attempts`` scans the file goes to failed/ with its last error.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import shutil
import socket
import tomllib
import traceback
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.fs as pafs

from pipeline.errors import PoisonguardError
from pipeline.input_paths import check_batch_path
from pipeline.io import SUPPORTED_SUFFIXES, sha256_file
from pipeline.redaction import redact

STATE_FOLDER = ".poisonguard"
INFLIGHT, PROCESSED, FAILED = "inflight", "processed", "failed"
RESULT_SUFFIX = ".result.json"
ERROR_SUFFIX = ".error.txt"


class ConfigError(PoisonguardError):
    """A problem in the config file. The message names the file and the field, for example
    ``poisonguard.toml: datasets.hmda.label: missing``."""

    @classmethod
    def at(cls, file: str, setting: str | None, problem: str) -> ConfigError:
        return cls(f"{file}: {setting}: {problem}" if setting else f"{file}: {problem}")


class LandingIncomplete(PoisonguardError):
    """Some claimed files could not be scanned, for example because MLflow or the ledger stayed
    unreachable through every retry. They stay claimed and the next pass resumes them."""

    exit_code = 1
    report: PassReport

    @classmethod
    def of(cls, report: PassReport) -> LandingIncomplete:
        left = report.left_for_next_pass
        error = cls(
            f"{len(left)} file(s) in {report.landing} could not be scanned and are left for the next "
            "pass: " + "; ".join(f"{landed.name}: {landed.error}" for landed in left)
        )
        error.report = report
        return error


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PassRules:
    """How a landing pass treats files and claims."""

    settle_seconds: float = 10.0  # a file modified more recently may still be being written
    claim_timeout_seconds: float = 3600.0  # longer than the longest scan: an older claim was abandoned
    max_attempts: int = 3  # scans of one file, across passes, before it goes to failed/
    allow_symlinks: bool = False  # a link in the landing area is scanned only if it points inside it


@dataclass(frozen=True)
class DatasetConfig:
    """One ``[datasets.NAME]`` table of the config file, with paths resolved against its folder."""

    name: str
    config_file: str  # the config file as the user named it, for messages
    reference: Path
    label: str
    landing: str  # an absolute folder path or a URL
    out: Path  # each scanned batch's results go to <out>/<file stem>-<batch id>/
    suite: Path | None = None
    holdout: Path | None = None
    source: str = "unknown"
    cron: str | None = None
    interval_seconds: float | None = None
    timezone: str | None = None
    workspace: Path | None = None  # None: $POISONGUARD_WORKSPACE or ./.poisonguard
    retries: int = 3  # of a scan that failed for a reason other than its input, within a pass
    retry_delay_seconds: float = 10.0  # before the first retry; doubled for each further one
    rules: PassRules = field(default_factory=PassRules)
    # column roles set in the config (keys id, time, text, ignore): (column, role) pairs, as --id etc.
    roles: tuple[tuple[str, str], ...] = ()

    def setting(self, key: str) -> str:
        return f"datasets.{self.name}.{key}"

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError.at(self.config_file, self.setting(key), problem)

    @property
    def scheduled(self) -> bool:
        return self.cron is not None or self.interval_seconds is not None


@dataclass(frozen=True)
class LandingConfig:
    """A parsed config file (``poisonguard.toml``): the datasets to watch."""

    file: str
    workspace: Path | None
    datasets: dict[str, DatasetConfig]

    def dataset(self, name: str) -> DatasetConfig:
        if name not in self.datasets:
            raise ConfigError.at(
                self.file, f"datasets.{name}", f"no such dataset (configured: {', '.join(sorted(self.datasets))})"
            )
        return self.datasets[name]


_TOP_LEVEL = ("workspace", "datasets")
_REQUIRED = ("reference", "label", "landing", "out")
_ROLE_KEYS = ("id", "time", "text", "ignore")  # lists of column names (pipeline.roles)
_OPTIONAL = (
    "suite",
    "holdout",
    "source",
    "cron",
    "interval_seconds",
    "timezone",
    "settle_seconds",
    "claim_timeout_seconds",
    "max_attempts",
    "retries",
    "retry_delay_seconds",
    "allow_symlinks",
    *_ROLE_KEYS,
)


def load_config(path: str | Path) -> LandingConfig:
    """Read and check a config file; raises ``ConfigError`` naming the file and the field.

    Relative paths in the file are relative to the file's folder. A value with ``://`` in it is
    a URL, except ``file://``, which is a local path.
    """
    shown = str(path)
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError.at(
            shown, None, "no such file (pass --config; examples/poisonguard.toml shows the format)"
        ) from None
    except IsADirectoryError:
        raise ConfigError.at(shown, None, "is a folder, not a config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError.at(shown, None, f"cannot be read as UTF-8 text: {exc}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError.at(shown, None, f"not valid TOML: {exc}") from None
    fields = _Fields(shown, path.resolve().parent)
    fields.reject_unknown(document, "", _TOP_LEVEL)
    workspace = fields.local_path(document, "workspace", required=False)
    datasets = document.get("datasets")
    if datasets is None:
        raise ConfigError.at(shown, "datasets", "missing; add one [datasets.NAME] table per dataset")
    if not isinstance(datasets, dict) or not datasets:
        raise ConfigError.at(shown, "datasets", "must hold one [datasets.NAME] table per dataset")
    parsed = {name: _dataset(fields, name, table, workspace) for name, table in datasets.items()}
    return LandingConfig(shown, workspace, parsed)


def _dataset(fields: _Fields, name: str, table: Any, workspace: Path | None) -> DatasetConfig:
    # pipeline.config loads the detector registry (seconds); a bare landing pass needs none of it
    from pipeline.config import safe_name

    where = f"datasets.{name}"
    try:
        safe_name(name, "dataset name")
    except PoisonguardError as exc:
        raise ConfigError.at(fields.file, where, str(exc)) from None
    if not isinstance(table, dict):
        raise ConfigError.at(fields.file, where, f"must be a table ([{where}]); got {table!r}")
    fields.reject_unknown(table, where, _REQUIRED + _OPTIONAL)
    cron = fields.text(table, where, "cron", required=False)
    interval = fields.number(table, where, "interval_seconds", None, minimum=1)
    if cron is not None and interval is not None:
        raise ConfigError.at(fields.file, f"{where}.cron", "set cron or interval_seconds, not both")
    timezone = fields.text(table, where, "timezone", required=False)
    if timezone is not None:
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError.at(
                fields.file, f"{where}.timezone", f"unknown time zone {timezone!r} (an IANA name such as 'Europe/Berlin')"
            ) from None
    defaults = PassRules()
    rules = PassRules(
        settle_seconds=fields.number(table, where, "settle_seconds", defaults.settle_seconds, minimum=0),
        claim_timeout_seconds=fields.number(
            table, where, "claim_timeout_seconds", defaults.claim_timeout_seconds, minimum=1
        ),
        max_attempts=int(fields.number(table, where, "max_attempts", defaults.max_attempts, minimum=1, integer=True)),
        allow_symlinks=_allow_symlinks(fields, table, where),
    )
    return DatasetConfig(
        name=name,
        config_file=fields.file,
        reference=fields.existing_file(table, where, "reference", required=True),
        label=fields.text(table, where, "label", required=True),
        landing=fields.location(table, where, "landing"),
        out=fields.local_path(table, "out", where=where, required=True),
        suite=fields.existing_file(table, where, "suite", required=False),
        holdout=fields.existing_file(table, where, "holdout", required=False),
        source=fields.text(table, where, "source", required=False) or "unknown",
        cron=cron,
        interval_seconds=interval,
        timezone=timezone,
        workspace=workspace,
        retries=int(fields.number(table, where, "retries", 3, minimum=0, integer=True)),
        retry_delay_seconds=fields.number(table, where, "retry_delay_seconds", 10.0, minimum=0),
        rules=rules,
        roles=_roles(fields, table, where),
    )


def _roles(fields: _Fields, table: Mapping[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    from pipeline.roles import explicit_roles

    named = {}
    for key in _ROLE_KEYS:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
            raise ConfigError.at(fields.file, f"{where}.{key}", f"must be a list of column names; got {value!r}")
        named[key] = value
    try:
        return tuple((c, r.value) for c, r in explicit_roles(**named).items())
    except PoisonguardError as exc:
        raise ConfigError.at(fields.file, where, str(exc)) from None


def _allow_symlinks(fields: _Fields, table: Mapping[str, Any], where: str) -> bool:
    from pipeline.input_paths import symlinks_allowed

    value = table.get("allow_symlinks", symlinks_allowed(os.environ))
    if not isinstance(value, bool):
        raise fields._error(where, "allow_symlinks", f"must be true or false; got {value!r}")
    return value


class _Fields:
    """Typed reads from a parsed TOML table; every error names the file and the field."""

    def __init__(self, file: str, base: Path) -> None:
        self.file = file
        self.base = base

    def _error(self, where: str, key: str, problem: str) -> ConfigError:
        return ConfigError.at(self.file, f"{where}.{key}" if where else key, problem)

    def reject_unknown(self, table: Mapping[str, Any], where: str, known: tuple[str, ...]) -> None:
        for key in table:
            if key not in known:
                raise self._error(where, key, f"unknown setting (known: {', '.join(known)})")

    def text(self, table: Mapping[str, Any], where: str, key: str, *, required: bool) -> Any:
        value = table.get(key)
        if value is None:
            if required:
                raise self._error(where, key, "missing")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self._error(where, key, f"must be a non-empty string; got {value!r}")
        return value

    def number(
        self, table: Mapping[str, Any], where: str, key: str, default: float | None, *, minimum: float, integer: bool = False
    ) -> Any:
        value = table.get(key)
        if value is None:
            return default
        kind = "an integer" if integer else "a number"
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (integer and not isinstance(value, int))
            or value < minimum
        ):
            raise self._error(where, key, f"must be {kind} >= {minimum:g}; got {value!r}")
        return value

    def _resolve(self, value: str) -> Path:
        return (self.base / Path(value).expanduser()).resolve()

    def local_path(self, table: Mapping[str, Any], key: str, *, where: str = "", required: bool) -> Any:
        value = self.text(table, where, key, required=required)
        if value is None:
            return None
        if "://" in value:
            raise self._error(where, key, f"must be a local path; got {value!r}")
        return self._resolve(value)

    def existing_file(self, table: Mapping[str, Any], where: str, key: str, *, required: bool) -> Any:
        path = self.local_path(table, key, where=where, required=required)
        if path is not None and not path.is_file():
            raise self._error(where, key, f"{path} does not exist" if not path.exists() else f"{path} is not a file")
        return path

    def location(self, table: Mapping[str, Any], where: str, key: str) -> str:
        value = self.text(table, where, key, required=True)
        if value.startswith("file://"):
            return str(self._resolve(value[len("file://") :]))
        return value if "://" in value else str(self._resolve(value))


def prepare_landing(dataset: DatasetConfig) -> Landing:
    """Check what a pass needs before it claims anything: the landing folder, the reference with
    its label, the holdout and the suite. A problem here is the configuration's, not a batch's,
    so it must stop the pass rather than send every landed file to failed/."""
    from pipeline.config import Settings
    from pipeline.io import probe_table
    from pipeline.paths import check_output_folder
    from pipeline.validation import load_suite

    try:
        # results go to subfolders of out: only the workspace must stay clear of it
        check_output_folder(
            dataset.out, workspace=Settings.from_environment(dataset.workspace).workspace, option="the folder"
        )
    except PoisonguardError as exc:
        raise dataset.error("out", str(exc)) from None
    try:
        columns = probe_table(dataset.reference, "reference")
    except PoisonguardError as exc:
        raise dataset.error("reference", str(exc)) from None
    if dataset.label not in columns:
        raise dataset.error(
            "label",
            f"'{dataset.label}' is not a column of the reference {dataset.reference} "
            f"(its columns: {', '.join(map(str, columns[:12]))})",
        )
    if dataset.holdout is not None:
        try:
            probe_table(dataset.holdout, "holdout")
        except PoisonguardError as exc:
            raise dataset.error("holdout", str(exc)) from None
    if dataset.suite is not None:
        try:
            suite = load_suite(dataset.suite)
        except PoisonguardError as exc:
            raise dataset.error("suite", str(exc)) from None
        if suite.label and suite.label != dataset.label:
            raise dataset.error("label", f"is '{dataset.label}' but the suite {dataset.suite} is for label '{suite.label}'")
    try:
        landing = Landing(dataset.landing)
        found = landing.exists()
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise dataset.error("landing", f"cannot open {dataset.landing}: {exc}") from None
    if not found:
        raise dataset.error("landing", f"{dataset.landing} is not a folder (create it: producers drop batch files there)")
    return landing


# --- claims -------------------------------------------------------------------------------------

_CLAIM_ID = re.compile(r"^(\d{8}T\d{6}Z)\.(\d+)\.(\d+)\.([0-9a-f]{8})\.([a-z0-9-]*)$")
_STAMP = "%Y%m%dT%H%M%SZ"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def this_host() -> str:
    return re.sub(r"[^a-z0-9-]", "-", socket.gethostname().lower())[:63].strip("-") or "host"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


@dataclass(frozen=True)
class ClaimId:
    """Who holds a claim, as the name of its folder: ``<UTC time>.<attempt>.<pid>.<token>.<host>``."""

    claimed_at: dt.datetime
    attempt: int  # 1 for the first scan of a file; each resume adds one
    pid: int  # 0: released after a transient failure, free for the next pass
    token: str
    host: str

    @classmethod
    def new(cls, attempt: int, now: dt.datetime, *, released: bool = False) -> ClaimId:
        return cls(
            now.astimezone(dt.UTC).replace(microsecond=0),
            attempt,
            0 if released else os.getpid(),
            secrets.token_hex(4),
            this_host(),
        )

    @classmethod
    def parse(cls, text: str) -> ClaimId | None:
        match = _CLAIM_ID.match(text)
        if match is None:
            return None
        stamp, attempt, pid, token, host = match.groups()
        claimed_at = dt.datetime.strptime(stamp, _STAMP).replace(tzinfo=dt.UTC)
        return cls(claimed_at, int(attempt), int(pid), token, host)

    def __str__(self) -> str:
        return f"{self.claimed_at.strftime(_STAMP)}.{self.attempt}.{self.pid}.{self.token}.{self.host}"

    def holder_gone(self, now: dt.datetime, timeout_seconds: float) -> bool:
        if self.pid == 0:
            return True
        if (now - self.claimed_at).total_seconds() > timeout_seconds:
            return True  # also covers a dead holder whose pid was reused
        return self.host == this_host() and not _process_alive(self.pid)


@dataclass(frozen=True)
class Claim:
    id: ClaimId
    name: str  # the batch file's name as it landed


def is_batch_name(name: str) -> bool:
    return not name.startswith((".", "_")) and PurePosixPath(name).suffix.lower() in SUPPORTED_SUFFIXES


def open_location(location: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it: pyarrow's own for local paths and the URLs it
    knows (s3, gs, hdfs, abfs), fsspec's for the other protocols (memory, sftp, …)."""
    if "://" not in location:
        return pafs.LocalFileSystem(), str(Path(location).resolve())
    try:
        return pafs.FileSystem.from_uri(location)
    except (ValueError, OSError):  # ArrowInvalid: "Unrecognized filesystem type in URI"
        import fsspec

        filesystem, path = fsspec.core.url_to_fs(location)
        return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem)), path


class Landing:
    """A landing location and poisonguard's bookkeeping inside it (see the module docstring)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.fs, self.root = open_location(location)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def exists(self) -> bool:
        return bool(self.fs.get_file_info(self.root).type == pafs.FileType.Directory)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def folder(self, state: str, claim: Claim) -> str:
        return self.path(STATE_FOLDER, state, str(claim.id))

    def file(self, state: str, claim: Claim) -> str:
        return f"{self.folder(state, claim)}/{claim.name}"

    def uri(self, path: str) -> str:
        """A path inside the landing as the user would write it."""
        if self.is_local:
            return path
        scheme = self.location.split("://", 1)[0]
        return f"{scheme}://{path.lstrip('/')}"

    def new_files(self, now: dt.datetime, settle_seconds: float) -> list[str]:
        """Names of unclaimed batch files that have settled, oldest first."""
        ready = []
        for info in self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False)):
            if info.type != pafs.FileType.File or not is_batch_name(info.base_name):
                continue
            modified = _aware(info.mtime)
            if modified is None or (now - modified).total_seconds() >= settle_seconds:
                ready.append((modified or dt.datetime.min.replace(tzinfo=dt.UTC), info.base_name))
        return [name for _, name in sorted(ready)]

    def claims(self) -> list[Claim]:
        """The claims in inflight/, oldest first, whoever holds them."""
        base = self.path(STATE_FOLDER, INFLIGHT)
        found = []
        for info in self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
            if info.type != pafs.FileType.File or not is_batch_name(info.base_name):
                continue
            parts = info.path[len(base) :].strip("/").split("/")
            claim_id = ClaimId.parse(parts[0]) if len(parts) == 2 else None
            if claim_id is not None:
                found.append(Claim(claim_id, parts[1]))
        return sorted(found, key=lambda claim: (claim.id.claimed_at, claim.name))

    def claim(self, name: str, now: dt.datetime) -> Claim | None:
        """Claim a new file; None when another pass claimed it first."""
        claim = Claim(ClaimId.new(1, now), name)
        return claim if self._move(self.path(name), claim, INFLIGHT) else None

    def resume(self, claim: Claim, now: dt.datetime) -> Claim | None:
        """Take over a claim whose holder is gone, as the next attempt; None when another pass
        took it over first."""
        resumed = Claim(ClaimId.new(claim.id.attempt + 1, now), claim.name)
        if not self._move(self.file(INFLIGHT, claim), resumed, INFLIGHT):
            return None
        self._carry_error(claim, resumed)
        self._remove_folder(self.folder(INFLIGHT, claim))
        return resumed

    def release(self, claim: Claim, error: str, now: dt.datetime) -> str | None:
        """Give a claim back for the next pass, with the error that stopped this one; returns the
        file's new path."""
        released = Claim(ClaimId.new(claim.id.attempt, now, released=True), claim.name)
        self._write_text(self.file(INFLIGHT, released) + ERROR_SUFFIX, error)
        if not self._move(self.file(INFLIGHT, claim), released, INFLIGHT):
            return None
        self._remove_folder(self.folder(INFLIGHT, claim))
        return self.file(INFLIGHT, released)

    def finish(self, claim: Claim, result: Mapping[str, Any]) -> str | None:
        """Move a scanned file to processed/ with its result beside it; returns its new path, or
        None when the claim was taken over by another pass meanwhile (it finishes the file)."""
        self._write_text(self.file(PROCESSED, claim) + RESULT_SUFFIX, json.dumps(result, indent=2, default=str) + "\n")
        return self._settle(claim, PROCESSED)

    def fail(self, claim: Claim, error: str) -> str | None:
        """Move a file that failed for good to failed/ with its error beside it."""
        # the error first: a file in failed/ always has its reason
        self._write_text(self.file(FAILED, claim) + ERROR_SUFFIX, error)
        return self._settle(claim, FAILED)

    def last_error(self, claim: Claim) -> str | None:
        try:
            with self.fs.open_input_stream(self.file(INFLIGHT, claim) + ERROR_SUFFIX) as stream:
                return bytes(stream.read()).decode("utf-8", errors="replace")
        except FileNotFoundError:
            return None

    def local_copy(self, claim: Claim, work_dir: Path) -> Path:
        """A local path to scan: the claimed file itself in a local landing, else a copy in
        ``work_dir`` (the scan reads local files)."""
        if self.is_local:
            return Path(self.file(INFLIGHT, claim))
        target = work_dir / claim.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open_input_stream(self.file(INFLIGHT, claim)) as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        return target

    def _settle(self, claim: Claim, state: str) -> str | None:
        if not self._move(self.file(INFLIGHT, claim), claim, state):
            return None
        self._remove_folder(self.folder(INFLIGHT, claim))
        return self.file(state, claim)

    def _move(self, source: str, claim: Claim, state: str) -> bool:
        """Move a batch file into ``state``'s folder for ``claim``; False when it is gone."""
        folder = self.folder(state, claim)
        self.fs.create_dir(folder, recursive=True)
        try:
            self.fs.move(source, f"{folder}/{claim.name}")
        except FileNotFoundError:
            self._remove_folder(folder)
            return False
        return True

    def _carry_error(self, old: Claim, new: Claim) -> None:
        try:
            self.fs.move(self.file(INFLIGHT, old) + ERROR_SUFFIX, self.file(INFLIGHT, new) + ERROR_SUFFIX)
        except FileNotFoundError:
            pass

    def _remove_folder(self, folder: str) -> None:
        """Remove a claim folder's leftovers (sidecars), never a batch file: files are not lost."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(folder, recursive=True))
        except FileNotFoundError:
            return
        if any(info.type == pafs.FileType.File and is_batch_name(info.base_name) for info in infos):
            return
        try:
            self.fs.delete_dir(folder)
        except FileNotFoundError:
            pass

    def _write_text(self, path: str, text: str) -> None:
        parent, name = path.rsplit("/", 1)
        self.fs.create_dir(parent, recursive=True)
        temporary = f"{parent}/.{name}.{secrets.token_hex(4)}.tmp"
        with self.fs.open_output_stream(temporary) as stream:
            stream.write(redact(text).encode("utf-8"))  # errors and results: no password in them
        self.fs.move(temporary, path)  # readers see the whole text or none


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=dt.UTC)


# --- a pass -------------------------------------------------------------------------------------


class Outcome(str, Enum):
    SCANNED = "scanned"
    ALREADY_RECORDED = "already recorded"  # the same bytes were scanned for this dataset before
    FAILED = "failed"  # moved to failed/ with its error
    RETRY = "left for the next pass"  # a transient failure outlasted the retries


@dataclass(frozen=True)
class LandedFile:
    """What a pass did with one file."""

    name: str
    outcome: Outcome
    attempt: int
    location: str | None  # where the file is now; None if another pass took it over meanwhile
    sha256: str | None = None
    out: str | None = None  # the scan's output folder
    rows: int | None = None
    accepted: int | None = None
    quarantined: int | None = None
    checks: dict[str, int] = field(default_factory=dict)  # rows held per check
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    # The scan delivered a decision recorded earlier: by this claim's attempt that failed after
    # its commit, or by a concurrent claim of the same bytes. Either way nothing was ingested twice.
    redelivered: bool = False
    recorded_as: str | None = None  # ALREADY_RECORDED: the batch's workspace folder
    error: str | None = None

    @property
    def batch_id(self) -> str | None:
        return self.sha256[:12] if self.sha256 else None

    @property
    def report(self) -> str | None:
        return str(Path(self.out) / "report.html") if self.out else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "outcome": self.outcome.value,
            "attempt": self.attempt,
            "location": self.location,
            "sha256": self.sha256,
            "out": self.out,
            "rows": self.rows,
            "accepted": self.accepted,
            "quarantined": self.quarantined,
            "checks": dict(self.checks),
            "mlflow_run_id": self.mlflow_run_id,
            "tracking_uri": self.tracking_uri,
            "redelivered": self.redelivered,
            "recorded_as": self.recorded_as,
            "error": self.error,
        }


@dataclass(frozen=True)
class PassReport:
    landing: str
    files: tuple[LandedFile, ...]

    def count(self, outcome: Outcome) -> int:
        return sum(landed.outcome is outcome for landed in self.files)

    @property
    def left_for_next_pass(self) -> list[LandedFile]:
        return [landed for landed in self.files if landed.outcome is Outcome.RETRY]

    def as_dict(self) -> dict[str, Any]:
        return {"landing": self.landing, "files": [landed.as_dict() for landed in self.files]}


ScanFile = Callable[[Path, Path], Mapping[str, Any]]  # (batch file, output folder) -> the scan's summary
FindRecorded = Callable[[str], "Path | None"]  # sha256 -> the batch's workspace folder, if scanned


def batch_out_name(name: str, sha256: str) -> str:
    """``<file stem>-<batch id>``: two different files landed under one name never share a folder."""
    return f"{PurePosixPath(name).stem}-{sha256[:12]}"


def run_pass(
    landing: Landing,
    rules: PassRules,
    *,
    scan: ScanFile,
    recorded: FindRecorded,
    out: Path,
    work_dir: Path,
    clock: Callable[[], dt.datetime] = utc_now,
) -> PassReport:
    """One pass over a landing area. It resumes abandoned claims first, then claims and scans each
    new file, one at a time, so that a concurrent pass takes the next file rather than waiting.

    ``scan`` raises ``PoisonguardError`` for a bad batch, which fails the file for good. Any other
    exception is taken as transient: the claim is released for the next pass, until
    ``max_attempts``. ``recorded`` finds bytes already scanned for the dataset: a first claim of
    such bytes (a duplicate dropped again) is not scanned again.
    """
    if not landing.exists():
        raise PoisonguardError(f"The landing location {landing.location} is not a folder (any more).")
    handled = []
    for claim in landing.claims():
        if not claim.id.holder_gone(clock(), rules.claim_timeout_seconds):
            continue
        if claim.id.attempt >= rules.max_attempts:
            last = landing.last_error(claim) or "the process scanning it died (killed, or out of memory)"
            handled.append(_fail(landing, claim, f"gave up after {claim.id.attempt} attempt(s); last error: {last}"))
            continue
        resumed = landing.resume(claim, clock())
        if resumed is not None:
            handled.append(_process(landing, resumed, rules, scan, recorded, out, work_dir, clock))
    for name in landing.new_files(clock(), rules.settle_seconds):
        claimed = landing.claim(name, clock())
        if claimed is not None:
            handled.append(_process(landing, claimed, rules, scan, recorded, out, work_dir, clock))
    return PassReport(landing.location, tuple(handled))


def _process(
    landing: Landing,
    claim: Claim,
    rules: PassRules,
    scan: ScanFile,
    recorded: FindRecorded,
    out: Path,
    work_dir: Path,
    clock: Callable[[], dt.datetime],
) -> LandedFile:
    copy_dir = work_dir / str(claim.id)
    sha256 = None
    try:
        batch = landing.local_copy(claim, copy_dir)
        if landing.is_local:  # a link planted in the landing area must not pull in another file
            check_batch_path(batch, allow_symlinks=rules.allow_symlinks, roots=[Path(landing.root)])
        sha256 = sha256_file(batch)
        landed = _scan_unless_recorded(claim, batch, sha256, scan, recorded, out)
    except PoisonguardError as exc:
        return _fail(landing, claim, str(exc), sha256)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if claim.id.attempt >= rules.max_attempts:
            return _fail(
                landing,
                claim,
                f"gave up after {claim.id.attempt} attempt(s); last error: {error}\n\n"
                + "".join(traceback.format_exception(exc)),
                sha256,
            )
        location = landing.release(claim, error, clock())
        return LandedFile(
            claim.name, Outcome.RETRY, claim.id.attempt, location and landing.uri(location), sha256, error=error
        )
    finally:
        shutil.rmtree(copy_dir, ignore_errors=True)
    location = landing.finish(claim, landed.as_dict() | {"finished_at": clock().isoformat(timespec="seconds")})
    return _located(landed, landing, location)


def _scan_unless_recorded(
    claim: Claim, batch: Path, sha256: str, scan: ScanFile, recorded: FindRecorded, out: Path
) -> LandedFile:
    # A resumed claim is scanned even when recorded: the scan then redelivers the decision and
    # repairs what its crashed attempt left undone (the ledger entry, the output folder).
    earlier = recorded(sha256) if claim.id.attempt == 1 else None
    if earlier is not None:
        return LandedFile(claim.name, Outcome.ALREADY_RECORDED, claim.id.attempt, None, sha256, recorded_as=str(earlier))
    batch_out = out / batch_out_name(claim.name, sha256)
    summary = scan(batch, batch_out)
    counts, mlflow = summary.get("counts", {}), summary.get("mlflow", {})
    return LandedFile(
        claim.name,
        Outcome.SCANNED,
        claim.id.attempt,
        None,
        sha256,
        out=str(batch_out),
        rows=counts.get("rows"),
        accepted=counts.get("accepted"),
        quarantined=counts.get("quarantined"),
        checks=dict(summary.get("checks", {})),
        mlflow_run_id=mlflow.get("run_id"),
        tracking_uri=mlflow.get("tracking_uri"),
        redelivered=bool(summary.get("duplicate")),
    )


def _fail(landing: Landing, claim: Claim, error: str, sha256: str | None = None) -> LandedFile:
    text = (
        f"{claim.name} failed for good at {utc_now().isoformat(timespec='seconds')} (attempt {claim.id.attempt}):\n{error}\n"
    )
    location = landing.fail(claim, text)
    return _located(
        LandedFile(claim.name, Outcome.FAILED, claim.id.attempt, None, sha256, error=error.split("\n\n")[0]),
        landing,
        location,
    )


def _located(landed: LandedFile, landing: Landing, location: str | None) -> LandedFile:
    return replace(landed, location=location and landing.uri(location))


# --- what a pass shows in Prefect ---------------------------------------------------------------


def artifact_key(dataset: str, what: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", f"landing-{dataset}-{what}".lower()).strip("-")


def checks_table(report: PassReport) -> list[dict[str, Any]]:
    """One row per file: outcome, counts, and the rows each check held, for the checks that held
    rows in any file of the pass (a suite has dozens that hold none)."""
    checks = sorted({check for landed in report.files for check, held in landed.checks.items() if held})
    return [
        {
            "file": landed.name,
            "batch": landed.batch_id,
            "outcome": landed.outcome.value,
            "rows": landed.rows,
            "accepted": landed.accepted,
            "quarantined": landed.quarantined,
            **{check: landed.checks.get(check, 0) for check in checks},
        }
        for landed in report.files
    ]


def mlflow_run_link(tracking_uri: str | None, run_id: str | None) -> str | None:
    """The run's page when MLflow is a server; a SQLite store has no page until ``mlflow ui``."""
    if not run_id or not tracking_uri or not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/runs/{run_id}"


def summary_markdown(dataset: str, report: PassReport) -> str:
    counts = ", ".join(f"{report.count(outcome)} {outcome.value}" for outcome in Outcome if report.count(outcome))
    lines = [
        f"## Landing pass for dataset `{dataset}`",
        "",
        f"`{report.landing}`: {counts or 'no new files'}.",
        "",
        "| file | outcome | rows | quarantined | report | MLflow run |",
        "|---|---|---|---|---|---|",
    ]
    local_stores = set()
    for landed in report.files:
        report_cell = f"[report.html]({Path(landed.report).as_uri()})" if landed.report else ""
        link = mlflow_run_link(landed.tracking_uri, landed.mlflow_run_id)
        if link:
            run_cell = f"[{landed.mlflow_run_id}]({link})"
        elif landed.mlflow_run_id:
            run_cell = f"`{landed.mlflow_run_id}`"
            if landed.tracking_uri:
                local_stores.add(landed.tracking_uri)
        else:
            run_cell = ""
        outcome = landed.outcome.value
        if landed.error:
            outcome += f": {_cell(landed.error)}"
        elif landed.recorded_as:
            outcome += f" (batch {landed.batch_id})"
        lines.append(
            f"| {_cell(landed.name)} | {outcome} | {_blank(landed.rows)} | {_blank(landed.quarantined)} "
            f"| {report_cell} | {run_cell} |"
        )
    for store in sorted(local_stores):
        lines += [
            "",
            f"Open the runs with `mlflow ui --backend-store-uri {store}`, then `http://127.0.0.1:5000/#/runs/<run id>`.",
        ]
    moved = [landed for landed in report.files if landed.outcome in (Outcome.FAILED, Outcome.RETRY) and landed.location]
    if moved:
        lines += ["", "Files not scanned are kept here:", ""] + [f"- `{landed.location}`" for landed in moved]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:300]


def _blank(value: Any) -> str:
    return "" if value is None else str(value)
