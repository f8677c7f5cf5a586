"""poisonguard: catch poisoned training data before it reaches a model.

The library layer: pure functions and small classes over pandas and Arrow. Orchestration
(Prefect) lives in ``flows/``; only ``provenance`` talks to MLflow and only ``cli`` to the
terminal.
"""

__version__ = "0.1.0"
