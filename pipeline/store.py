"""The workspace: where each scanned batch's outputs live, committed all at once or not at all.

Layout::

    <workspace>/datasets/<dataset>/batches/<batch sha256>/
        accepted.parquet  quarantined.parquet  scores.parquet  findings.parquet
        summary.json      report.html
    <workspace>/staging/   half-written scans; never read, safe to delete

A scan writes its files into a staging folder and renames the folder into place. The rename
is atomic, so a batch folder is either complete or absent, and a second scan of the same bytes
finds it and ingests nothing twice.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import safe_name
from pipeline.io import write_parquet_atomic, write_text_atomic

OUTPUT_FILES = ("accepted.parquet", "quarantined.parquet", "scores.parquet", "findings.parquet",
                "summary.json", "report.html")


@dataclass(frozen=True)
class ScanOutputs:
    accepted: pd.DataFrame
    quarantined: pd.DataFrame
    scores: pd.DataFrame
    findings: pd.DataFrame
    summary: dict[str, Any]
    report_html: str


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def batch_dir(self, dataset: str, sha256: str) -> Path:
        return self.root / "datasets" / safe_name(dataset, "dataset name") / "batches" / sha256

    def recorded(self, dataset: str, sha256: str) -> Path | None:
        """The committed folder of a batch already scanned for this dataset, if any."""
        folder = self.batch_dir(dataset, sha256)
        return folder if (folder / "summary.json").is_file() else None

    def staging_dir(self) -> Path:
        folder = self.root / "staging" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    def commit(self, staging: Path, dataset: str, sha256: str) -> bool:
        """Move a complete staging folder into place. False when another scan got there first."""
        target = self.batch_dir(dataset, sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging, target)
        except OSError:
            if self.recorded(dataset, sha256):
                shutil.rmtree(staging, ignore_errors=True)
                return False
            raise
        _fsync_dir(target.parent)
        return True


def write_outputs(outputs: ScanOutputs, folder: Path) -> None:
    """Write every output file atomically into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(outputs.accepted, folder / "accepted.parquet")
    write_parquet_atomic(outputs.quarantined, folder / "quarantined.parquet")
    write_parquet_atomic(outputs.scores, folder / "scores.parquet")
    write_parquet_atomic(outputs.findings, folder / "findings.parquet")
    write_text_atomic(outputs.report_html, folder / "report.html")
    # summary.json last: its presence marks a complete folder
    write_text_atomic(json.dumps(outputs.summary, indent=2, default=str) + "\n", folder / "summary.json")


def copy_outputs(source: Path, destination: Path, updates: dict[str, Any] | None = None) -> dict[str, Any]:
    """Deliver a recorded scan to ``destination``, with ``updates`` merged into its summary."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        if name == "summary.json":
            continue
        tmp = destination / f".{name}.{uuid.uuid4().hex}.tmp"
        shutil.copyfile(source / name, tmp)
        os.replace(tmp, destination / name)
    summary = {**json.loads((source / "summary.json").read_text()), **(updates or {})}
    write_text_atomic(json.dumps(summary, indent=2, default=str) + "\n", destination / "summary.json")
    return summary


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
