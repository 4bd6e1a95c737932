"""The track's output folder: which files, the checks before any work, atomic writes.
No torch (the CLI checks the output before loading it)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mfnet_core.errors import MfnetError

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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Writes `data` to a temporary file beside `path`, then renames it into place: a reader
    sees the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
