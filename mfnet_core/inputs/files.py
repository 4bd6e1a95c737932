"""Opening input files without surprises: regular files only, sizes known before reading.

A path given by a user (or found in a folder) may be a FIFO, a device, a folder or a
symlink to one of them. `open()` on a FIFO blocks until a writer appears, so a photo or
model path naming one would hang the run forever; a device like /dev/zero never ends.
Every loader of user files goes through `regular_file` (os.stat + S_ISREG before opening)
and `open_regular` (opened non-blocking and checked again with fstat, in case the path
changed in between), with a size cap checked before a byte is read.

Files mfnet writes for itself (a track, a cache entry, the generated test head) are written
whole or not at all: `atomic_write_bytes`.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

from mfnet_core.errors import MfnetError

__all__ = [
    "regular_file",
    "open_regular",
    "read_regular",
    "describe_mode",
    "file_sha256",
    "atomic_write_bytes",
    "atomic_write_text",
]


def describe_mode(mode: int) -> str:
    """'a folder', 'a FIFO (named pipe)', ... for a non-regular st_mode."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def regular_file(
    path: str | Path,
    *,
    what: str = "file",
    max_bytes: int | None = None,
    error: type[MfnetError] = MfnetError,
) -> int:
    """The size of `path` when it is a regular file (symlinks followed) no larger than
    `max_bytes`; else `error` with one line naming the path. Never opens the file."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise error(f"{what} not found: {p}") from None
    except OSError as e:
        raise error(f"cannot read {what} {p}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{p}: is {describe_mode(st.st_mode)}, not a {what}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(
            f"{p}: {st.st_size / 2**20:.0f} MiB is larger than the {max_bytes / 2**20:.0f} MiB "
            f"allowed for a {what}; refusing to read it"
        )
    return int(st.st_size)


def open_regular(
    path: str | Path,
    *,
    what: str = "file",
    max_bytes: int | None = None,
    error: type[MfnetError] = MfnetError,
) -> BinaryIO:
    """Opens a regular file for binary reading (checked with stat before and fstat after
    opening; opened with O_NONBLOCK so that a path swapped for a FIFO cannot block)."""
    p = Path(path)
    regular_file(p, what=what, max_bytes=max_bytes, error=error)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except OSError as e:
        raise error(f"cannot read {what} {p}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{p}: is {describe_mode(st.st_mode)}, not a {what}")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{p}: grew past the {max_bytes / 2**20:.0f} MiB allowed for a {what}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(
    path: str | Path,
    *,
    what: str = "file",
    max_bytes: int,
    error: type[MfnetError] = MfnetError,
) -> bytes:
    """The whole content of a regular file of at most `max_bytes` bytes."""
    with open_regular(path, what=what, max_bytes=max_bytes, error=error) as f:
        try:
            # read(n) allocates n bytes up front: ask for the size fstat gave, plus one
            # byte to notice a file that grew since
            size = os.fstat(f.fileno()).st_size
            data = f.read(size + 1)
            while len(data) <= max_bytes and (more := f.read(1 << 20)):
                data += more
        except OSError as e:
            raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise error(f"{path}: grew past the {max_bytes / 2**20:.0f} MiB allowed for a {what}")
    return data


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (model files are checked and reported by it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
