"""Shared fixtures. Prefect and MLflow state live in one temporary folder per test session.

Prefect reads its settings from the environment when first imported, so the environment is set
here, at import time, before any test module imports prefect.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

SESSION_DIR = Path(tempfile.mkdtemp(prefix="poisonguard-tests-"))
os.environ.update(
    {
        "PREFECT_HOME": str(SESSION_DIR / "prefect"),
        "PREFECT_LOGGING_LEVEL": "ERROR",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        # One MLflow database for the session: creating one costs 4-6 s (ECOSYSTEM.md §3).
        "MLFLOW_TRACKING_URI": f"sqlite:///{SESSION_DIR / 'mlflow.db'}",
        "POISONGUARD_USER": "test-steward",
        # One fit cache for the session: most tests scan data_samples/ in a fresh workspace, and a
        # cold fit there is 6-7 s. test_fit_cache.py covers the per-workspace cache.
        "POISONGUARD_FIT_CACHE": str(SESSION_DIR / "fits"),
        "POISONGUARD_CACHE_KEY": secrets.token_hex(32),
    }
)
os.environ.pop("PREFECT_API_URL", None)
(SESSION_DIR / "prefect").mkdir(parents=True, exist_ok=True)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"
SUITE = REPO / "expectations" / "hmda.json"


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run ``poisonguard ARGS`` through the real entry point, in this process."""
    from pipeline.cli import main

    def run(*args: str | os.PathLike) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["poisonguard", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def scan_sample(run_cli, tmp_path):
    """Scan a file against the HMDA sample reference; returns (result, out_dir)."""

    def scan(batch: Path, *extra: str, dataset: str | None = None, suite: Path | None = SUITE):
        out = tmp_path / f"out-{Path(batch).stem}"
        args = [
            "scan",
            batch,
            "--reference",
            SAMPLES / "reference.parquet",
            "--label",
            "deny",
            "--holdout",
            SAMPLES / "holdout.parquet",
            "--workspace",
            tmp_path / "ws",
            "--out",
            out,
            "--dataset",
            dataset or f"t-{tmp_path.name[-20:]}".replace("_", "-"),
        ]
        if suite is not None:
            args += ["--suite", suite]
        return run_cli(*args, *extra), out

    return scan


def read_outputs(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    return (
        pd.read_parquet(out / "accepted.parquet"),
        pd.read_parquet(out / "quarantined.parquet"),
        pd.read_parquet(out / "scores.parquet"),
        json.loads((out / "summary.json").read_text()),
    )


def assert_conserved(out: Path, n_rows: int) -> None:
    """Every input row in exactly one of accepted/quarantined, none duplicated, numbers intact."""
    accepted, quarantined, scores, summary = read_outputs(out)
    both = list(accepted["row_number"]) + list(quarantined["row_number"])
    assert sorted(both) == list(range(n_rows))
    assert sorted(scores["row_number"]) == list(range(n_rows))
    assert set(scores.loc[scores["quarantined"], "row_number"]) == set(quarantined["row_number"])
    assert summary["counts"] == {"rows": n_rows, "accepted": len(accepted), "quarantined": len(quarantined)}


def docs_example() -> tuple[list[str], dict]:
    """docs/detectors.md's worked example: its Python code blocks, in order (the first is the
    detector's module), and its pyproject.toml."""
    import re
    import tomllib

    text = (REPO / "docs" / "detectors.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S), tomllib.loads(re.findall(r"```toml\n(.*?)```", text, re.S)[0])


@pytest.fixture
def install_package(tmp_path, monkeypatch):
    """``install(project, modules)``: a package as pip leaves it, on sys.path for this test: its
    modules (name -> source) and a .dist-info whose entry_points.txt holds ``project``'s
    (pyproject.toml's [project] table). pip cannot build it here without network or a wheel
    package, and this is the metadata importlib.metadata reads either way. The registry and
    sys.modules are restored afterwards."""
    from pipeline.detectors import DETECTORS

    registered, site = dict(DETECTORS), tmp_path / "site-packages"
    added: list[str] = []

    def install(project: dict, modules: dict[str, str]) -> None:
        site.mkdir(exist_ok=True)
        for module, source in modules.items():
            (site / f"{module}.py").write_text(source)
            added.append(module)
        info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
        lines = [
            line
            for group, entries in project.get("entry-points", {}).items()
            for line in [f"[{group}]", *(f"{k} = {v}" for k, v in entries.items()), ""]
        ]
        (info / "entry_points.txt").write_text("\n".join(lines))
        monkeypatch.syspath_prepend(str(site))

    yield install
    DETECTORS.clear()
    DETECTORS.update(registered)
    for module in added:
        sys.modules.pop(module, None)


def benchmark_module(name: str):
    """benchmarks/<name>.py as a module (a script, not a package), loaded once."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


def crash_harness():
    return benchmark_module("crash_injection")


# --- test tiers ------------------------------------------------------------------------------------
# Unit tests exercise library code in process: no scan through the CLI, no Prefect, MLflow server
# or database. Everything else is integration (a real scan, ledger, MLflow store, Prefect flow or
# browser). `make test-unit` runs the first tier alone; `make test` (and CI) runs both.
UNIT_MODULES = {
    "test_alarms",
    "test_cli_startup",
    "test_detector_conformance",
    "test_detector_maths",
    "test_group_detectors",
    "test_detector_registry",
    "test_policy",
    "test_validation",
    "test_verdict",
    "test_layers",
}


# The modules that take longest (a minute or more each on 2 cores: subprocess scans, servers,
# a Dask cluster), longest first. They are collected first, so that xdist's workers start on
# them and the short modules fill in after: the suite ends when its longest worker does.
LONGEST_MODULES = [
    "test_secrets",
    "test_dask_runner",
    "test_console",
    "test_crash_recovery",
    "test_landing",
    "test_concurrency",
    "test_exact_outputs",
    "test_fit_cache",
    "test_orchestration",
    "test_hostile_cli",
    "test_killed_scan_output",
    # and of the unit tier
    "test_detector_maths",
    "test_detector_conformance",
    "test_alarms",
]


def pytest_ignore_collect(collection_path, config):
    """``-m unit`` alone (make test-unit): the other modules are not even imported, so the fast
    tier does not pay for their imports (Prefect, MLflow, browsers) on every worker."""
    if (
        config.getoption("markexpr") == "unit"
        and collection_path.name.startswith("test_")
        and collection_path.suffix == ".py"
    ):
        return collection_path.stem not in UNIT_MODULES or None
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = Path(str(item.fspath)).stem
        item.add_marker(pytest.mark.unit if module in UNIT_MODULES else pytest.mark.integration)
    first = {name: rank for rank, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: first.get(Path(str(item.fspath)).stem, len(first)))  # stable: the rest keep their order
