"""pipeline/ is library code: only the modules whose job it is may import Prefect, MLflow or the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"
ALLOWED = {
    "prefect": {"cli_prefect.py", "cli_serve.py"},
    "flows": {"cli.py", "cli_gate.py", "cli_serve.py"},
    "mlflow": {"provenance.py"},
    "typer": {"cli.py", "cli_review.py", "cli_ui.py", "cli_gate.py", "cli_serve.py"},
    "click": {"cli.py"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_pipeline_modules_import_orchestration_only_where_allowed():
    offenders = []
    for path in sorted(PIPELINE.rglob("*.py")):
        for name in _imports(path):
            if name in ALLOWED and path.name not in ALLOWED[name]:
                offenders.append(f"{path.relative_to(PIPELINE)} imports {name}")
    assert not offenders, offenders


def test_flows_hold_no_detection_logic():
    for path in (PIPELINE.parent / "flows").glob("*.py"):
        imported = _imports(path)
        assert not {"sklearn", "pyod", "numpy", "great_expectations"} & imported, path
