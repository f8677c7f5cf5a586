"""The signed fit cache: hits return what was fitted, anything unsigned or tampered with is never
unpickled, and a scan's decisions are the same from a cached fit as from a fresh one."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pandas as pd
import pytest

from pipeline.errors import PoisonguardError
from pipeline.fit_cache import FitCache, user_cache_folder
from tests.conftest import SAMPLES, SUITE

PARTS = {"reference": "abc", "detectors": {"outliers": {}}}


class _Fits:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict:
        self.calls += 1
        return {"model": list(range(5)), "call": self.calls}


class _Planted:
    """Unpickling this writes a file: the proof that a planted entry was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "planted code ran"))


def _home(tmp_path: Path) -> dict[str, str]:
    """A home folder beside the workspace, not inside it: where the key file is made."""
    return {"HOME": str(tmp_path.parent / f"{tmp_path.name}-home")}


def _cache(tmp_path: Path, **env: str) -> FitCache:
    cache = FitCache.for_workspace(tmp_path, {**_home(tmp_path), **env})
    assert cache is not None
    return cache


def test_a_second_lookup_returns_the_first_fit_without_fitting_again(tmp_path):
    fits = _Fits()
    first = _cache(tmp_path).get_or_fit(PARTS, fits)
    again = _cache(tmp_path)  # a new process: same workspace, same key file
    assert again.get_or_fit(PARTS, fits) == first == {"model": [0, 1, 2, 3, 4], "call": 1}
    assert fits.calls == 1 and again.hits == 1 and again.misses == 0
    assert again.get_or_fit({**PARTS, "reference": "abd"}, fits)["call"] == 2  # other data: refit


def test_an_entry_with_a_forged_tag_is_refitted_and_never_unpickled(tmp_path):
    cache, fits = _cache(tmp_path), _Fits()
    cache.get_or_fit(PARTS, fits)
    payload, tag = cache._paths(cache.key(PARTS))
    marker = tmp_path / "pwned"
    payload.write_bytes(pickle.dumps(_Planted(marker)))  # an attacker who can write the folder
    tag.write_text("0" * 64)  # but does not hold the key

    assert cache.get_or_fit(PARTS, fits)["call"] == 2
    assert not marker.exists()
    assert cache.misses == 2
    assert _cache(tmp_path).get_or_fit(PARTS, fits)["call"] == 2  # the refit replaced the entry


def test_an_entry_signed_with_another_key_is_not_loaded(tmp_path):
    other = FitCache(tmp_path / "cache" / "fits", b"k" * 32)
    other.get_or_fit(PARTS, _Fits())
    fits = _Fits()
    assert _cache(tmp_path).get_or_fit(PARTS, fits)["call"] == 1 and fits.calls == 1


def test_the_generated_key_is_outside_the_workspace_and_readable_by_its_owner_only(tmp_path):
    _cache(tmp_path)
    key_file = Path(_home(tmp_path)["HOME"]) / ".config" / "poisonguard" / "fit-cache.key"
    assert not (tmp_path / "keys").exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert len(bytes.fromhex(key_file.read_text())) == 32


def test_a_key_from_the_environment_is_used_and_checked(tmp_path):
    key = os.urandom(32).hex()
    _cache(tmp_path, POISONGUARD_CACHE_KEY=key).get_or_fit(PARTS, _Fits())
    assert not (tmp_path / "keys").exists()
    assert FitCache(tmp_path / "cache" / "fits", bytes.fromhex(key)).get_or_fit(PARTS, _Fits())["call"] == 1
    with pytest.raises(PoisonguardError, match="must be hex"):
        FitCache.for_workspace(tmp_path, {"POISONGUARD_CACHE_KEY": "not hex"})
    with pytest.raises(PoisonguardError, match="at least 32 bytes"):
        FitCache.for_workspace(tmp_path, {"POISONGUARD_CACHE_KEY": "ab" * 8})


def test_the_cache_can_be_turned_off(tmp_path):
    assert FitCache.for_workspace(tmp_path, {"POISONGUARD_FIT_CACHE": "off"}) is None


def test_workspaces_share_a_cache_folder_signed_with_one_key(tmp_path):
    shared = {"POISONGUARD_FIT_CACHE": str(tmp_path / "shared"), "POISONGUARD_CACHE_KEY": os.urandom(32).hex()}
    first, second = (FitCache.for_workspace(tmp_path / ws, shared) for ws in ("ws1", "ws2"))
    fits = _Fits()
    first.get_or_fit(PARTS, fits)
    assert second.get_or_fit(PARTS, fits)["call"] == 1 and second.hits == 1
    assert not (tmp_path / "ws1").exists() and not (tmp_path / "ws2").exists()
    with pytest.raises(PoisonguardError, match="set POISONGUARD_CACHE_KEY as well"):
        FitCache.for_workspace(tmp_path / "ws3", {"POISONGUARD_FIT_CACHE": str(tmp_path / "shared")})


def test_decisions_from_a_cached_fit_equal_those_from_a_fresh_fit(tmp_path, monkeypatch):
    from pipeline import scan
    from pipeline.scan_run import evaluate

    monkeypatch.setenv("POISONGUARD_FIT_CACHE", "on")  # the user's cache, not the test session's
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    from pipeline.config import Settings

    request = scan.ScanRequest(
        batch=SAMPLES / "batch_02_label_flips.csv",
        reference=SAMPLES / "reference.parquet",
        label="deny",
        out=tmp_path / "out",
        suite=SUITE,
        holdout=SAMPLES / "holdout.parquet",
    )
    settings = Settings.from_environment(tmp_path / "ws")
    trusted = scan.load_trusted(request, settings)
    batch = scan.ingest(request)

    def decisions():
        return evaluate(batch, trusted, settings, detectors=scan.fit_detectors(trusted, settings)).decisions.table

    fresh = decisions()
    assert len(list((tmp_path / "cache-home" / "poisonguard" / "fits").glob("*.joblib"))) == 1
    pd.testing.assert_frame_equal(decisions(), fresh)
    assert fresh["quarantined"].any()
    assert not (tmp_path / "ws" / "cache").exists()  # the cache is the user's, not the workspace's

    # Another workspace (another dataset's schedule) against the same reference never refits.
    def no_refit(*args, **kwargs):
        raise AssertionError("the detectors were fitted again")

    monkeypatch.setattr(scan, "fit_all", no_refit)
    other = Settings.from_environment(tmp_path / "another-ws")
    assert (
        scan.fit_detectors(scan.load_trusted(request, other), other).keys() == scan.fit_detectors(trusted, settings).keys()
    )


def test_a_large_reference_is_fitted_on_a_stratified_sample(tmp_path):
    from pipeline.scan import fit_sample

    train = pd.DataFrame({"x": range(1000), "label": ["a"] * 900 + ["b"] * 100})
    sample = fit_sample(train, "label", 200, seed=0)
    assert len(sample) == 200
    assert sample["label"].value_counts().to_dict() == {"a": 180, "b": 20}
    assert fit_sample(train, "label", 1000, seed=0) is train


def test_an_empty_or_short_key_file_is_refused_not_used(tmp_path):
    """An empty key would make every tag forgeable (HMAC under b'')."""
    key_file = tmp_path / "elsewhere" / "fit-cache.key"
    key_file.parent.mkdir()
    for content in (b"", b"abcd", b"\xff\xfe" * 40):
        key_file.write_bytes(content)
        with pytest.raises(PoisonguardError, match="delete it"):
            FitCache.for_workspace(tmp_path / "ws", {"POISONGUARD_CACHE_KEY_FILE": str(key_file)})


# --- the workspace writer's three attacks (issue 22): none of them runs the planted code ------


def _plant(workspace: Path, marker: Path, signing_key: bytes | None) -> None:
    """Write a pickle that runs code when loaded into the entry the scan will look up, signed
    with ``signing_key`` (None: unsigned). The attacker is given the cache folder itself: what
    stops them is the signature, not where the entries live."""
    attacker = FitCache(user_cache_folder(_home(workspace)) / "fits", signing_key or b"")
    payload, tag = attacker._paths(attacker.key(PARTS))
    payload.parent.mkdir(parents=True, exist_ok=True)
    payload.write_bytes(pickle.dumps(_Planted(marker)))
    if signing_key is not None:
        tag.write_text(attacker._tag(payload.read_bytes()))


def _old_workspace_key(workspace: Path) -> bytes:
    """The key file an older poisonguard kept in the workspace (readable by its writer)."""
    key_file = workspace / "keys" / "fit-cache.key"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        key_file.write_text(os.urandom(32).hex())
    return bytes.fromhex(key_file.read_text())


def test_a_pickle_signed_with_the_old_workspace_key_never_runs(tmp_path):
    workspace, marker = tmp_path / "ws", tmp_path / "pwned"
    _plant(workspace, marker, _old_workspace_key(workspace))
    fits = _Fits()
    assert _cache(workspace).get_or_fit(PARTS, fits)["call"] == 1 and fits.calls == 1
    assert not marker.exists()


def test_a_replaced_key_file_in_the_workspace_is_never_used(tmp_path):
    workspace, marker = tmp_path / "ws", tmp_path / "pwned"
    _cache(workspace).get_or_fit(PARTS, _Fits())  # a genuine entry under the real key
    attacker_key = os.urandom(32)
    (workspace / "keys").mkdir(parents=True)
    (workspace / "keys" / "fit-cache.key").write_text(attacker_key.hex())  # the attacker's own key
    _plant(workspace, marker, attacker_key)
    fits = _Fits()
    assert _cache(workspace).get_or_fit(PARTS, fits)["call"] == 1 and fits.calls == 1
    assert not marker.exists()


def test_an_unsigned_pickle_never_runs(tmp_path):
    workspace, marker = tmp_path / "ws", tmp_path / "pwned"
    _plant(workspace, marker, None)
    assert _cache(workspace).get_or_fit(PARTS, _Fits())["call"] == 1
    assert not marker.exists()


def test_a_key_file_inside_the_workspace_means_no_cache(tmp_path):
    """Pointing the key file into the workspace (by HOME or POISONGUARD_CACHE_KEY_FILE) turns the
    cache off: a key the workspace writer can read would sign their pickles."""
    workspace = tmp_path / "ws"
    assert FitCache.for_workspace(workspace, {"HOME": str(workspace)}) is None
    assert (
        FitCache.for_workspace(
            workspace, {"HOME": str(tmp_path / "home"), "POISONGUARD_CACHE_KEY_FILE": str(workspace / "k")}
        )
        is None
    )


def test_a_scan_through_the_cli_does_not_run_a_pickle_planted_in_its_workspace(tmp_path, scan_sample, monkeypatch):
    """End to end: the workspace holds a planted entry under the very key the scan will look up,
    signed with a key file the attacker put in the workspace; the scan refits and the code never runs."""
    from pipeline import scan
    from pipeline.config import Settings

    monkeypatch.setenv("POISONGUARD_FIT_CACHE", "on")
    monkeypatch.delenv("POISONGUARD_CACHE_KEY")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    workspace, marker = tmp_path / "ws", tmp_path / "pwned"
    request = scan.ScanRequest(
        batch=SAMPLES / "batch_02_label_flips.csv",
        reference=SAMPLES / "reference.parquet",
        label="deny",
        out=tmp_path / "o",
        suite=SUITE,
        holdout=SAMPLES / "holdout.parquet",
    )
    parts = scan.fit_key(
        scan.load_trusted(request, Settings.from_environment(workspace)), Settings.from_environment(workspace)
    )
    attacker = FitCache(tmp_path / "home" / ".cache" / "poisonguard" / "fits", _old_workspace_key(workspace))
    payload, tag = attacker._paths(attacker.key(parts))
    payload.parent.mkdir(parents=True, exist_ok=True)
    payload.write_bytes(pickle.dumps(_Planted(marker)))
    tag.write_text(attacker._tag(payload.read_bytes()))

    result, _ = scan_sample(SAMPLES / "batch_02_label_flips.csv")
    assert result.exit_code == 0, result.stderr
    assert not marker.exists()


def test_an_entry_verified_in_this_process_is_not_read_again_until_its_file_changes(tmp_path, monkeypatch):
    """A served deployment scans batch after batch against one reference: the entry it verified
    is kept (pipeline/memo.py) by the identity of its file; a file rewritten since, even with
    its old tag, is read and verified again."""
    import pipeline.fit_cache as fit_cache

    fits = _Fits()
    cache = _cache(tmp_path)
    first = cache.get_or_fit(PARTS, fits)
    loads = []
    monkeypatch.setattr(fit_cache.joblib, "load", lambda *a, **k: loads.append(1) or pytest.fail("read again"))
    assert _cache(tmp_path).get_or_fit(PARTS, fits) is first and loads == [] and fits.calls == 1

    payload, _ = cache._paths(cache.key(PARTS))
    payload.write_bytes(payload.read_bytes() + b"tampered")  # the old tag no longer matches
    again = _cache(tmp_path).get_or_fit(PARTS, fits)
    assert again["call"] == 2 and fits.calls == 2  # refitted, never loaded
