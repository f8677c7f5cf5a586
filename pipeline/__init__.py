"""poisonguard: catch poisoned training data before it reaches a model.

The library layer: pure functions and small classes over pandas and Arrow. Orchestration
(Prefect) lives in ``flows/``; only ``provenance`` talks to MLflow and only ``cli`` to the
terminal.

``pipeline.gate(dataset, out=...)`` is the pre-retrain gate for training code: it verifies the
dataset's accepted data against the ledger and returns the training snapshot (see
``pipeline/gate.py``).
"""

__version__ = "0.1.0"

# After __version__, which modules imported here read. This binds ``pipeline.gate`` to the
# function for good: the submodule stays reachable as ``sys.modules["pipeline.gate"]`` and by
# ``from pipeline.gate import ...``.
from pipeline.gate import gate  # noqa: E402

__all__ = ["__version__", "gate"]
