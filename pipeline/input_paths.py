"""Inputs are what they claim: a batch path names a regular file, not a symbolic link to some
other file (``/etc/passwd``, another dataset's accepted rows) whose content would then end up
in the outputs and in MLflow, and a file found in a landing area stays inside it.

``POISONGUARD_ALLOW_SYMLINKS=1`` (or ``allow_symlinks = true`` in a landing dataset's table)
allows a link whose target is a regular file, for deployments where links are how batches
arrive; a landing area's link must still point inside the landing area.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.errors import InputError

ALLOW_VARIABLE = "POISONGUARD_ALLOW_SYMLINKS"


def symlinks_allowed(environ: Mapping[str, str]) -> bool:
    return environ.get(ALLOW_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def check_batch_path(path: Path, *, allow_symlinks: bool = False, roots: Iterable[Path] = ()) -> None:
    """Raise ``InputError`` unless ``path`` is a regular file (or an allowed link to one) that
    resolves inside one of ``roots`` (when any are given). A missing file is left to the reader,
    which says so in its own words."""
    path = Path(path)
    try:
        is_link = stat.S_ISLNK(os.lstat(path).st_mode)
    except (OSError, ValueError):  # missing, a name too long, a NUL: the reader says so in its own words
        return
    if is_link:
        target = os.readlink(path)
        if not allow_symlinks:
            raise InputError(
                f"The batch {path} is a symbolic link (to {target}); poisonguard scans regular files "
                f"only. Copy the file into place, or set {ALLOW_VARIABLE}=1 if links are how your "
                "batches arrive."
            )
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):  # a dangling link, a loop: left to the reader too
        return
    if not stat.S_ISREG(mode):
        raise InputError(f"The batch {path} is not a regular file (a device, pipe or folder); scan a file.")
    bounds = [Path(root).resolve() for root in roots]
    if bounds and not any(path.resolve().is_relative_to(root) for root in bounds):
        raise InputError(
            f"The batch {path} resolves to {path.resolve()}, outside the landing area "
            f"{', '.join(map(str, bounds))}; it is not scanned."
        )
