"""poisonguard: catch poisoned training data before it reaches a model.

The library layer: pure functions and small classes over pandas and Arrow. Orchestration
(Prefect) lives in ``flows/``; only ``provenance`` talks to MLflow and only ``cli`` to the
terminal.

``pipeline.gate(dataset, out=...)`` is the pre-retrain gate for training code: it verifies the
dataset's accepted data against the ledger and returns the training snapshot (see
``pipeline/gate.py``).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "gate"]


def __getattr__(name: str):
    """``pipeline.gate`` the function, imported on first use: the command line's light commands
    (``--help``, ``review``) must not pay for the gate's imports. Importing the submodule binds
    the attribute to the module; it is rebound to the function here, for good: the submodule
    stays reachable as ``sys.modules["pipeline.gate"]`` and by ``from pipeline.gate import ...``."""
    if name == "gate":
        import sys

        function = sys.modules["pipeline.gate"].gate if "pipeline.gate" in sys.modules else None
        if function is None:
            from pipeline.gate import gate as function
        globals()["gate"] = function
        return function
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
