"""Prefect flows: orchestration only. Every step they run is a ``pipeline`` function."""
