"""Fitted detectors, cached by what they were fitted on, signed so that only poisonguard's own
fits are ever loaded.

A schedule scans batch after batch against the same trusted data; refitting per batch is most
of a small scan's cost (label consistency's gradient-boosted model alone is 7 s on 1,400 rows
and minutes on 200,000). The fit depends only on the trusted rows, the suite, the detector
settings and the library versions, so those are hashed into the cache key.

Fitted scikit-learn and PyOD models only serialise as pickles, and unpickling runs code. So an
entry is written with an HMAC-SHA256 of its bytes under a secret key, and nothing is unpickled
unless the tag verifies. The key never lives in the workspace: whoever can write the workspace
(the insider the gate is built for) could otherwise sign a planted pickle with it, or replace it
with one of their own. It comes from ``POISONGUARD_CACHE_KEY`` (hex, at least 32 bytes), else
from ``$XDG_CONFIG_HOME/poisonguard/fit-cache.key`` (``~/.config/…``; ``POISONGUARD_CACHE_KEY_FILE``
names another file), created on first use, readable by its owner only. A key file that resolves
inside the workspace is never used: no key, no cache (every scan refits). A ``keys/fit-cache.key``
left in the workspace by an older poisonguard is ignored.

``POISONGUARD_FIT_CACHE`` says where entries live: ``on`` (the default) for the user's cache
folder, ``$XDG_CACHE_HOME/poisonguard/fits`` (``~/.cache/…``), shared by all of that user's
workspaces: the key is the trusted data's content and the detector settings, not the workspace,
so a second dataset scanned against the same reference never refits. ``off``: no cache. Or a
folder that several users' workspaces share (one schedule per dataset, all fitting on the same
reference); that needs ``POISONGUARD_CACHE_KEY``: with per-user key files each user would
reject, refit and overwrite the others' entries. An entry that cannot be written (a read-only
home) is skipped: the scan goes on with its fit.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import secrets
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import joblib

from pipeline.errors import PoisonguardError
from pipeline.io import atomic_path
from pipeline.memo import ProcessMemo, content_key

KEY_VARIABLE = "POISONGUARD_CACHE_KEY"
KEY_FILE_VARIABLE = "POISONGUARD_CACHE_KEY_FILE"
SWITCH_VARIABLE = "POISONGUARD_FIT_CACHE"
_KEY_BYTES = 32
# Entries this process has verified (or fitted and written), by the identity of the file they
# were read from and its tag: a file replaced or rewritten since is read and verified again.
_VERIFIED = ProcessMemo(size=4)


class FitCache:
    """``cache.get_or_fit(key_parts, fit)``: the fitted object for ``key_parts`` if a verified
    entry exists, else ``fit()``, stored for next time. ``hits`` and ``misses`` count lookups."""

    def __init__(self, folder: Path, signing_key: bytes) -> None:
        self.folder = folder
        self._signing_key = signing_key
        self.hits = self.misses = 0

    @classmethod
    def for_workspace(cls, workspace: Path, environ: Mapping[str, str] | None = None) -> FitCache | None:
        env = os.environ if environ is None else environ
        setting = env.get(SWITCH_VARIABLE, "on").strip()
        if setting.lower() in ("off", "0", "false", "no"):
            return None
        if setting.lower() in ("on", "1", "true", "yes", ""):
            key = _signing_key(workspace, env)
            return None if key is None else cls(user_cache_folder(env) / "fits", key)
        if not env.get(KEY_VARIABLE):
            raise PoisonguardError(
                f"{SWITCH_VARIABLE}={setting} names a shared cache folder; set {KEY_VARIABLE} "
                "as well, so that every workspace using it signs with the same key."
            )
        key = _signing_key(workspace, env)
        return None if key is None else cls(Path(setting).expanduser(), key)

    @staticmethod
    def key(parts: Mapping[str, Any]) -> str:
        return content_key(parts)

    def get_or_fit(self, parts: Mapping[str, Any], fit: Callable[[], Any]) -> Any:
        key = self.key(parts)
        loaded = self._load(key)
        if loaded is not None:
            self.hits += 1
            return loaded
        self.misses += 1
        fitted = fit()
        try:
            self._store(key, fitted)
        except OSError:
            pass  # no room or no right to write here: the next scan fits again, nothing is lost
        return fitted

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}.joblib", self.folder / f"{key}.hmac"

    def _tag(self, payload: bytes) -> str:
        return hmac.new(self._signing_key, payload, hashlib.sha256).hexdigest()

    def _load(self, key: str) -> Any | None:
        """The entry, or None when it is missing, unsigned or its tag does not verify: a bad entry
        is refitted (and overwritten), never loaded."""
        payload_path, tag_path = self._paths(key)
        try:
            tag, identity = tag_path.read_text().strip(), _identity(payload_path)
            verified = _VERIFIED.get((identity, tag, self._signing_key))
            if verified is not None:
                return verified
            payload = payload_path.read_bytes()
        except OSError:
            return None
        if not hmac.compare_digest(self._tag(payload), tag):
            return None
        loaded = joblib.load(io.BytesIO(payload))  # verified: written by this process's key holder
        if _identity(payload_path) == identity:  # the bytes verified are the file's still
            _VERIFIED.put((identity, tag, self._signing_key), loaded)
        return loaded

    def _store(self, key: str, fitted: Any) -> None:
        buffer = io.BytesIO()
        joblib.dump(fitted, buffer)
        payload = buffer.getvalue()
        self.folder.mkdir(parents=True, exist_ok=True)
        payload_path, tag_path = self._paths(key)
        tag = self._tag(payload)
        # payload first: a tag never names bytes that are not there yet
        for path, content in ((payload_path, payload), (tag_path, tag.encode())):
            with atomic_path(path) as temporary:
                temporary.write_bytes(content)
        _VERIFIED.put((_identity(payload_path), tag, self._signing_key), fitted)


def _identity(path: Path) -> tuple[str, int, int, int, int]:
    """What changes when a file is replaced or rewritten: its path, device, inode, size, mtime."""
    stat = path.stat()
    return str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def user_cache_folder(env: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/poisonguard``, else ``~/.cache/poisonguard``."""
    cache_home = env.get("XDG_CACHE_HOME", "").strip()
    base = Path(cache_home) if cache_home else Path(env.get("HOME") or Path.home()) / ".cache"
    return base.expanduser() / "poisonguard"


def key_file(env: Mapping[str, str]) -> Path:
    """Where the signing key is kept when the environment does not hold it: the user's config
    folder, outside any workspace."""
    configured = env.get(KEY_FILE_VARIABLE, "").strip()
    if configured:
        return Path(configured).expanduser()
    config_home = env.get("XDG_CONFIG_HOME", "").strip()
    base = Path(config_home) if config_home else Path(env.get("HOME") or Path.home()) / ".config"
    return base.expanduser() / "poisonguard" / "fit-cache.key"


def _signing_key(workspace: Path, env: Mapping[str, str]) -> bytes | None:
    """The key, or None when there is none the workspace writer cannot read or replace."""
    configured = env.get(KEY_VARIABLE)
    if configured:
        try:
            key = bytes.fromhex(configured.strip())
        except ValueError:
            raise PoisonguardError(
                f"{KEY_VARIABLE} must be hex (e.g. from `python -c 'import secrets; print(secrets.token_hex(32))'`)."
            ) from None
        if len(key) < _KEY_BYTES:
            raise PoisonguardError(
                f"{KEY_VARIABLE} must hold at least {_KEY_BYTES} bytes ({2 * _KEY_BYTES} hex digits); it holds {len(key)}."
            )
        return key
    path = key_file(env)
    if path.resolve().is_relative_to(workspace.expanduser().resolve()):
        return None  # a key the workspace writer can read signs nothing: refit every time
    try:
        if not path.exists():
            _create_key_file(path)
        text = path.read_bytes().decode("ascii").strip()
        key = bytes.fromhex(text)
    except OSError:
        return None  # no writable config folder (a locked-down service account): no cache
    except ValueError:  # not ASCII, not hex
        key = b""
    if len(key) < _KEY_BYTES:  # an empty or short key would let anyone forge a tag
        raise PoisonguardError(
            f"The fit-cache key {path} is not {_KEY_BYTES} bytes of hex; delete it to have a "
            f"new one made (or set {KEY_VARIABLE})."
        )
    return key


def _create_key_file(path: Path) -> None:
    """Write a new key beside ``path`` and link it into place: the key file is complete the
    moment it exists, so a kill or a concurrent first scan never leaves an empty one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor, temporary = tempfile.mkstemp(prefix=".fit-cache.key.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_bytes(_KEY_BYTES).hex())
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)
    except FileExistsError:  # another scan made it first; theirs stands
        pass
    finally:
        os.unlink(temporary)
