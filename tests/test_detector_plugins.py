"""A detector of another package in a real scan: named in the scan's detector settings, found by
its entry point, fitted, cached (pickled, signed) and loaded back from the fit cache. The package
is docs/detectors.md's worked example, declared as its pyproject.toml there says."""

from __future__ import annotations

import pandas as pd

from pipeline import fit_cache, scan
from pipeline.config import DEFAULT_DETECTORS, Settings
from pipeline.memo import ProcessMemo
from pipeline.scan import ScanRequest
from pipeline.scan_run import PlainRunner, run
from tests.conftest import SAMPLES, SUITE, docs_example

BLOCKS, PYPROJECT = docs_example()
PROJECT = PYPROJECT["project"]
NAME, TARGET = next(iter(PROJECT["entry-points"]["poisonguard.detectors"].items()))


def test_a_scan_runs_an_installed_packages_detector_and_caches_its_fit(install_package, tmp_path, monkeypatch):
    install_package(PROJECT, {TARGET.partition(":")[0]: BLOCKS[0]})
    # named in the operator's settings, as a scheduled job would: no code
    monkeypatch.setenv("POISONGUARD_DETECTORS", ",".join([*DEFAULT_DETECTORS, NAME]))
    settings = Settings.from_environment(tmp_path / "ws")
    assert settings.detectors == {**DEFAULT_DETECTORS, NAME: {}}

    def scan_batch(name: str) -> tuple[dict, pd.DataFrame]:
        out = tmp_path / f"out-{name}"
        request = ScanRequest(
            batch=SAMPLES / name,
            reference=SAMPLES / "reference.parquet",
            label="deny",
            out=out,
            suite=SUITE,
            holdout=SAMPLES / "holdout.parquet",
            dataset="plugin-detector",
        )
        with PlainRunner() as runner:
            summary = run(request, settings, runner)
        return summary, pd.read_parquet(out / "scores.parquet")

    summary, scores = scan_batch("batch_03_impossible_and_outliers.csv")
    assert scores[NAME].between(0.0, 1.0).all() and f"{NAME}_raw" in scores
    assert summary["counts"]["rows"] == len(scores)

    # A second scan gets the fitted detectors from the cache, unpickled from the signed entry (not
    # this process's memo of it): fitting again would fail.
    monkeypatch.setattr(fit_cache, "_VERIFIED", ProcessMemo(size=4))
    monkeypatch.setattr(scan, "fit_all", lambda *args: (_ for _ in ()).throw(AssertionError("fitted again")))
    _, again = scan_batch("batch_01_clean.csv")
    assert again[NAME].between(0.0, 1.0).all()
