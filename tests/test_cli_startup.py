"""The command line's light commands start without the scan's heavy imports (issue 20): a
steward's `review list` or `--help` must not pay for Great Expectations, scikit-learn, MLflow or
Prefect. Measured in a fresh interpreter, by what it imported; the times are in
benchmarks/scan_wall_time.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = {"great_expectations", "sklearn", "pyod", "scipy", "mlflow", "prefect", "alembic"}


def imported_after(code: str, cwd: Path) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=cwd, check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_cli_module_imports_nothing_heavy(tmp_path):
    assert not imported_after("import pipeline.cli", tmp_path) & (HEAVY | {"pandas", "pyarrow", "sqlalchemy"})


def test_review_list_on_an_empty_workspace_imports_nothing_heavy_and_creates_no_ledger(tmp_path):
    run = (
        "import sys\nfrom pipeline.cli import app\n"
        f"app(['review', 'list', '--workspace', {str(tmp_path / 'ws')!r}], standalone_mode=False)"
    )
    assert not imported_after(run, tmp_path) & (HEAVY | {"pandas"})
    assert not (tmp_path / "ws" / "ledger.sqlite").exists()


def test_the_review_page_starts_without_the_scans_imports(tmp_path):
    assert not imported_after("import pipeline.ui", tmp_path) & HEAVY
