"""poisonguard: catch poisoned training data before it reaches a model.

The library layer: pure functions and small classes over pandas and Arrow. Orchestration
(Prefect) lives in ``flows/``; only ``provenance`` talks to MLflow and only ``cli`` to the
terminal.

``pipeline.gate(dataset, out=...)`` is the pre-retrain gate for training code: it verifies the
dataset's accepted data against the ledger and returns the training snapshot (see
``pipeline/gating.py``).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "gate"]


def __getattr__(name: str):
    """``pipeline.gate``, the function (its steps are in ``pipeline.gating``), imported on first
    use: the command line's light commands (``--help``, ``review``) must not pay for the gate's
    imports."""
    if name == "gate":
        from pipeline.gating import gate

        globals()["gate"] = gate
        return gate
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
