"""Reading model arrays from .npz / .npy files with every size known before reading.

`np.load(path)[key]` decompresses a member whole before anyone sees its shape: a 300-byte
.npz whose (unused) key declares a 3 GB array costs 3 GB and half a minute. Here a reader
names the keys it needs with what they may be (`ArraySpec`: dimensions, dtype kinds,
finite); for each member the .npy header inside the zip is read first (a few hundred
bytes), its shape, dtype and byte count are checked against the spec and the caps, and
only then are exactly that many bytes read. Keys not asked for are never touched, pickled
objects are never loaded, and every refusal is one `MfnetError` line naming file and key.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from mfnet_core.errors import MfnetError
from mfnet_core.inputs.files import open_regular

__all__ = [
    "ArraySpec",
    "MAX_ARRAY_BYTES",
    "MAX_TOTAL_BYTES",
    "check_array",
    "read_npy_header",
    "read_npz",
]

# One array: FLAME 2023's shapedirs (5023 x 3 x 400 float64) is 48 MB, the shipped ICT
# model's largest 16 MB; 512 MiB is ten times anything real. All arrays of one file: 1 GiB.
MAX_ARRAY_BYTES = 512 * 2**20
MAX_TOTAL_BYTES = 2**30
MAX_MEMBERS = 10_000  # numpy writes one member per key
_HEADER_MAX = 10_000  # numpy's own default limit on a .npy header


@dataclass(frozen=True)
class ArraySpec:
    """What one array may be. `shape`: None for any, else one entry per dimension (None
    for any length); `kinds`: numpy dtype kinds allowed (b bool, i/u int, f float, U/S
    text); `finite`: refuse NaN/inf; `required`: a missing key is an error, else skipped;
    `min_size`: the least number of elements."""

    shape: tuple[int | None, ...] | None = None
    kinds: str = "biuf"
    finite: bool = False
    required: bool = True
    min_size: int = 0


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ",".join("N" if s is None else str(s) for s in shape) + ")"


def _check_declared(
    source: str, key: str, shape: tuple[int, ...], dtype: np.dtype, spec: ArraySpec, cap: int
) -> int:
    """Checks a declared shape/dtype (before reading data); returns its byte count."""
    if dtype.hasobject:
        raise MfnetError(
            f"{source}: key {key!r} holds pickled Python objects; refusing it (save plain "
            "numeric arrays)"
        )
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in spec.kinds:
        raise MfnetError(
            f"{source}: key {key!r} has dtype {dtype.str}, not a plain array of kind(s) {spec.kinds!r}"
        )
    if any(not isinstance(s, int) or s < 0 for s in shape):
        raise MfnetError(f"{source}: key {key!r} declares an invalid shape {shape}")
    if spec.shape is not None:
        ok = len(shape) == len(spec.shape) and all(
            want is None or want == got for want, got in zip(spec.shape, shape, strict=False)
        )
        if not ok:
            raise MfnetError(
                f"{source}: key {key!r} has shape {tuple(shape)}, expected {_shape_text(spec.shape)}"
            )
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes > cap:
        raise MfnetError(
            f"{source}: key {key!r} declares {tuple(shape)} {dtype.name} = {nbytes / 2**20:.0f} MiB, "
            f"more than the {cap / 2**20:.0f} MiB allowed; refusing to read it"
        )
    if count < spec.min_size:
        raise MfnetError(f"{source}: key {key!r} is empty (shape {tuple(shape)})")
    return nbytes


def check_array(
    a: Any, key: str, source: str, spec: ArraySpec, *, cap: int = MAX_ARRAY_BYTES
) -> np.ndarray:
    """The same checks for an array that is already in memory (from a pickle): dtype
    kind, shape, size, finite values. Returns it as an ndarray."""
    if not isinstance(a, np.ndarray):
        if hasattr(a, "toarray"):  # scipy sparse: its dense size is checked first
            shp = tuple(int(s) for s in a.shape)
            _check_declared(source, key, shp, np.dtype(a.dtype), spec, cap)
            a = a.toarray()
        else:
            try:
                a = np.asarray(a)
            except Exception as e:  # noqa: BLE001 - ragged lists, odd objects
                raise MfnetError(
                    f"{source}: key {key!r} is not an array ({type(e).__name__})"
                ) from None
    _check_declared(source, key, tuple(int(s) for s in a.shape), a.dtype, spec, cap)
    _check_values(a, key, source, spec)
    return a


def _check_values(a: np.ndarray, key: str, source: str, spec: ArraySpec) -> None:
    if spec.finite and a.dtype.kind in "fc" and not np.isfinite(a).all():
        bad = int(np.count_nonzero(~np.isfinite(a)))
        raise MfnetError(f"{source}: key {key!r} holds {bad} NaN/inf value(s)")


def read_npy_header(f: IO[bytes], source: str, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Reads the magic and header of a .npy stream: (shape, fortran_order, dtype)."""
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(f, max_header_size=_HEADER_MAX)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(f, max_header_size=_HEADER_MAX)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except MfnetError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError, SyntaxError, EOFError...
        raise MfnetError(f"{source}: key {key!r} is not a valid .npy array ({_short(e)})") from None
    return tuple(shape), bool(fortran), np.dtype(dtype)


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _read_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, source: str, key: str, spec: ArraySpec, cap: int
) -> np.ndarray:
    if info.flag_bits & 0x1:
        raise MfnetError(f"{source}: key {key!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise MfnetError(f"{source}: key {key!r} uses a compression numpy does not write")
    with zf.open(info) as f:
        shape, fortran, dtype = read_npy_header(f, source, key)
        nbytes = _check_declared(source, key, shape, dtype, spec, cap)
        header_len = f.tell()
        if info.file_size != header_len + nbytes:
            raise MfnetError(
                f"{source}: key {key!r} is damaged (its header declares {nbytes} bytes of data, "
                f"the zip entry holds {info.file_size - header_len})"
            )
        buf = bytearray(nbytes)
        view = memoryview(buf)
        got = 0
        while got < nbytes:
            chunk = f.read(min(nbytes - got, 1 << 24))
            if not chunk:
                break
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
        if got != nbytes or f.read(1):
            raise MfnetError(f"{source}: key {key!r} is truncated or damaged")
    if nbytes == 0:
        a = np.empty(shape, dtype=dtype)
    else:
        a = np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    _check_values(a, key, source, spec)
    return a


def read_npz(
    path: str | Path,
    specs: Mapping[str, ArraySpec],
    *,
    what: str = "model file",
    max_array_bytes: int = MAX_ARRAY_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    source: str | None = None,
) -> dict[str, np.ndarray]:
    """The arrays named in `specs` from an .npz (never any other key; never pickles).

    Each member's .npy header is checked against its spec and the byte caps before its
    data is read (or decompressed). Raises MfnetError, one line naming file and key.
    """
    p = Path(path)
    src = source or str(p)
    out: dict[str, np.ndarray] = {}
    with open_regular(p, what=what) as fh:
        try:
            zf = zipfile.ZipFile(fh)
        except Exception as e:  # noqa: BLE001 - BadZipFile, OSError, ValueError...
            raise MfnetError(f"{src} is not a readable .npz ({_short(e)})") from None
        with zf:
            try:
                infos = zf.infolist()
                if len(infos) > MAX_MEMBERS:
                    raise MfnetError(f"{src}: {len(infos)} entries; not an .npz numpy wrote")
                by_name = {i.filename: i for i in infos}
                total = 0
                for key, spec in specs.items():
                    info = by_name.get(f"{key}.npy") or by_name.get(key)
                    if info is None:
                        if spec.required:
                            raise MfnetError(f"{src}: missing key {key!r}")
                        continue
                    cap = min(max_array_bytes, max_total_bytes - total)
                    a = _read_member(zf, info, src, key, spec, cap)
                    total += a.nbytes
                    out[key] = a
            except MfnetError:
                raise
            except Exception as e:  # noqa: BLE001 - bad CRC, zlib errors, odd headers
                raise MfnetError(f"{src} is not a readable .npz ({_short(e)})") from None
    return out
