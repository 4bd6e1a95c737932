"""The track's output folder: which files, the checks before any work, atomic writes.
No torch (the CLI checks the output before loading it)."""

from __future__ import annotations

import os
from pathlib import Path

from mfnet_core.errors import MfnetError
from mfnet_core.inputs.files import atomic_write_bytes, atomic_write_text

__all__ = ["OUTPUT_FILES", "atomic_write_bytes", "atomic_write_text", "check_output_folder"]

OUTPUT_FILES = ("track.csv", "track.npz", "track.json")


def check_output_folder(out: Path | str, overwrite: bool) -> None:
    """The output folder can take a track: not a file, not a symbolic link, somewhere
    writable, and (without `overwrite`) not holding a track already. Other files in it are
    left alone (a track may go into a result folder)."""
    out = Path(out)
    if out.is_symlink():
        raise MfnetError(f"{out}: is a symbolic link; give a real folder")
    if out.exists() and not out.is_dir():
        raise MfnetError(f"{out}: exists and is not a folder")
    if out.is_dir() and not overwrite:
        taken = [f for f in OUTPUT_FILES if (out / f).exists()]
        if taken:
            raise MfnetError(
                f"{out} already holds a track ({', '.join(taken)}); --overwrite replaces it"
            )
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise MfnetError(f"{out}: cannot write there (permission denied)")
