"""Where a command may write, checked before it does any work.

An output folder receives files with fixed names (``accepted.parquet``, ``snapshot.parquet``…),
so it must never be the folder that holds one of the command's inputs (a reference named
``accepted.parquet`` would be replaced), never a folder inside the workspace (it would overwrite
another batch's committed files, and the gate would then call that tampering), and never a file.

    check_output_folder(Path("out"), workspace=Path(".poisonguard"), inputs=[Path("batch.csv")])
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import PoisonguardError
from pipeline.terminal import terminal_safe


def check_workspace(workspace: Path) -> Path:
    """The workspace, refused when it is a file or cannot be created or written."""
    _check_writable_folder(workspace, "--workspace")
    return workspace


def check_output_folder(
    out: Path, *, workspace: Path | None, inputs: Iterable[Path | None] = (), option: str = "--out"
) -> Path:
    """``out`` as a folder the command may fill: not a file, writable, not the folder of an input,
    not inside (or equal to) the workspace. ``option`` names it in messages."""
    _check_writable_folder(out, option)
    resolved = _resolved(out)
    if workspace is not None:
        home = _resolved(workspace)
        if resolved == home or home in resolved.parents:
            raise PoisonguardError(
                f"{option} {_shown(out)} is inside the workspace {_shown(workspace)}: the workspace holds the "
                "committed files the gate verifies. Choose a folder outside it."
            )
    for path in inputs:
        if path is None:
            continue
        if _resolved(path).parent == resolved:
            raise PoisonguardError(
                f"{option} {_shown(out)} is the folder of the input {_shown(path)}: its results would replace files "
                "next to the inputs. Choose another folder."
            )
    return out


def check_output_file(out: Path, *, inputs: Iterable[Path | None] = ()) -> Path:
    """``out`` as one file the command writes: not a folder, not one of its inputs, in a folder
    that can be created and written."""
    if out.is_dir():
        raise PoisonguardError(f"--out {_shown(out)} is a folder; give the path of the file to write.")
    for path in inputs:
        if path is not None and _resolved(path) == _resolved(out):
            raise PoisonguardError(f"--out {_shown(out)} is the input {_shown(path)}: it would be overwritten.")
    _check_writable_folder(out.parent if str(out.parent) else Path("."), "--out's folder")
    return out


def _check_writable_folder(folder: Path, option: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise PoisonguardError(f"{option} {_shown(folder)} is a file, not a folder.")
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise PoisonguardError(f"{option} {_shown(folder)} cannot be created: {_shown(existing)} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PoisonguardError(f"{option} {_shown(folder)} cannot be written: no write permission on {_shown(existing)}.")


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _shown(path: Path) -> str:
    return terminal_safe(str(path))
