"""Loading FLAME's pickles without trusting them.

FLAME ships as Python 2 pickles (with chumpy arrays and scipy sparse matrices) and DECA's
landmark embedding as an `.npy` holding a pickled dict (sometimes of torch tensors). A plain
`pickle.load` on a downloaded file can run any code, so this module unpickles through an
allow-list: numpy arrays and dtypes, a few harmless builtins, and *placeholders* for chumpy
and scipy sparse classes that only record their state. After loading, placeholders are
replaced by numpy arrays / scipy matrices built here. chumpy is never imported.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from mfnet_core.errors import MfnetError, UnsafePickleError

__all__ = ["load_restricted_pickle", "load_npy_object"]


# -- allowed callables ---------------------------------------------------------------------


def _numpy_attr(module: str, name: str) -> Any:
    """numpy.core.X moved to numpy._core.X in numpy 2; resolve either without warnings."""
    import importlib

    tail = module.split(".", 2)[2] if module.count(".") >= 2 else ""
    for base in ("numpy._core", "numpy.core"):
        try:
            mod = importlib.import_module(f"{base}.{tail}" if tail else base)
        except ImportError:
            continue
        if hasattr(mod, name):
            return getattr(mod, name)
    raise AttributeError(f"{module}.{name}")


_NUMPY_FUNCS = {
    ("multiarray", "_reconstruct"),
    ("multiarray", "scalar"),
    ("numeric", "_frombuffer"),
}


def _codecs_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Python 3 pickles bytes at protocol < 3 as `_codecs.encode(str, 'latin1')`; only
    the plain text codecs are allowed (no zlib bombs or exotic codecs)."""
    if encoding.lower().replace("_", "-") not in {
        "latin1",
        "latin-1",
        "iso-8859-1",
        "utf-8",
        "utf8",
        "ascii",
    }:
        raise UnsafePickleError(f"refusing codec {encoding!r} in _codecs.encode")
    return text.encode(encoding, errors)


def _torch_load_from_bytes(data: bytes) -> Any:
    """torch storages pickled with plain pickle; torch's own weights-only unpickler reads them."""
    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


def _torch_rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> np.ndarray:
    """A pickled torch tensor becomes a numpy array (everything downstream wants numpy)."""
    import torch
    from torch._utils import _rebuild_tensor

    t = _rebuild_tensor(storage, offset, tuple(size), tuple(stride))
    if not isinstance(t, torch.Tensor):
        raise UnsafePickleError("torch tensor rebuild returned something else")
    return t.detach().cpu().numpy().copy()


_BUILTINS = {
    "object": object,
    "set": set,
    "frozenset": frozenset,
    "slice": slice,
    "complex": complex,
}


# -- placeholders ----------------------------------------------------------------------------


class _Placeholder:
    """Stands in for a chumpy / scipy object: records the state pickle hands to it."""

    _qualname = "?"
    _args: tuple = ()
    _state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._state: Any = None

    def __new__(cls, *args: Any, **kwargs: Any) -> _Placeholder:
        obj = super().__new__(cls)
        obj._args = args
        obj._state = None
        return obj

    def __setstate__(self, state: Any) -> None:
        self._state = state


class _ChumpyPlaceholder(_Placeholder):
    pass


class _SparsePlaceholder(_Placeholder):
    fmt = "csc"


_placeholder_cache: dict[tuple[str, str], type] = {}


def _placeholder(base: type, module: str, name: str, **attrs: Any) -> type:
    key = (module, name)
    if key not in _placeholder_cache:
        _placeholder_cache[key] = type(
            f"_Placeholder_{name}", (base,), {"_qualname": f"{module}.{name}", **attrs}
        )
    return _placeholder_cache[key]


def _is_sparse(module: str, name: str) -> str | None:
    """'csc'/'csr' for scipy's sparse matrix / array classes (old and new module paths)."""
    if not module.startswith("scipy.sparse"):
        return None
    for fmt in ("csc", "csr"):
        if name in (f"{fmt}_matrix", f"{fmt}_array"):
            return fmt
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (fix_imports is not applied when find_class is overridden).
        mod = {"copy_reg": "copyreg", "__builtin__": "builtins"}.get(module, module)
        if mod == "copyreg" and name == "_reconstructor":
            import copyreg

            return copyreg._reconstructor
        if mod == "builtins" and name in _BUILTINS:
            return _BUILTINS[name]
        if mod in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "ndarray",
            "dtype",
        ):
            return getattr(np, name)
        if mod.startswith(("numpy.core.", "numpy._core.")):
            sub = mod.rsplit(".", 1)[1]
            if (sub, name) in _NUMPY_FUNCS:
                return _numpy_attr(mod, name)
        if mod == "_codecs" and name == "encode":
            return _codecs_encode
        if mod == "collections" and name == "OrderedDict":
            return OrderedDict
        if mod == "chumpy" or mod.startswith("chumpy."):
            return _placeholder(_ChumpyPlaceholder, mod, name)
        fmt = _is_sparse(mod, name)
        if fmt:
            return _placeholder(_SparsePlaceholder, mod, name, fmt=fmt)
        if mod == "torch._utils" and name == "_rebuild_tensor_v2":
            return _torch_rebuild_tensor
        if mod == "torch.storage" and name == "_load_from_bytes":
            return _torch_load_from_bytes
        raise UnsafePickleError(
            f"refusing to load '{module}.{name}' from {self.source}: not in the allow-list"
        )


# -- conversion of placeholders --------------------------------------------------------------


def _convert(obj: Any, source: str, _depth: int = 0) -> Any:
    """Replaces placeholders inside dicts / lists / tuples (recursively) by real objects."""
    if _depth > 50:
        return obj
    if isinstance(obj, _ChumpyPlaceholder):
        state = obj._state
        if not isinstance(state, dict) or "x" not in state:
            raise MfnetError(
                f"{source}: chumpy object {obj._qualname} has no array value ('x'); "
                "only plain chumpy arrays are supported"
            )
        return np.asarray(_convert(state["x"], source, _depth + 1))
    if isinstance(obj, _SparsePlaceholder):
        return _sparse_from_state(obj, source)
    if isinstance(obj, dict):
        return {k: _convert(v, source, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_convert(v, source, _depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_convert(v, source, _depth + 1) for v in obj)
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        flat = [_convert(v, source, _depth + 1) for v in obj.ravel()]
        out = np.empty(obj.shape, dtype=object)
        for i, v in enumerate(flat):
            out.flat[i] = v
        return out
    return obj


def _sparse_from_state(obj: _SparsePlaceholder, source: str) -> Any:
    import scipy.sparse as sp

    state = obj._state
    if not isinstance(state, dict):
        raise MfnetError(f"{source}: sparse matrix {obj._qualname} has no readable state")
    shape = state.get("_shape", state.get("shape"))
    try:
        data = np.asarray(state["data"])
        indices = np.asarray(state["indices"])
        indptr = np.asarray(state["indptr"])
    except KeyError as e:
        raise MfnetError(f"{source}: sparse matrix {obj._qualname} lacks {e.args[0]!r}") from None
    if shape is None:
        raise MfnetError(f"{source}: sparse matrix {obj._qualname} has no shape")
    cls = sp.csc_matrix if obj.fmt == "csc" else sp.csr_matrix
    return cls((data, indices, indptr), shape=tuple(int(s) for s in shape))


# -- public API ------------------------------------------------------------------------------


def load_restricted_pickle(path_or_bytes: str | Path | bytes, *, source: str | None = None) -> Any:
    """Unpickles a (possibly Python 2) pickle through the allow-list.

    `source` names the file in error messages (defaults to the path). Raises
    UnsafePickleError for anything outside the allow-list, MfnetError for unreadable data.
    """
    if isinstance(path_or_bytes, bytes | bytearray):
        data = bytes(path_or_bytes)
        src = source or "<bytes>"
    else:
        p = Path(path_or_bytes)
        src = source or str(p)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise MfnetError(f"cannot read {src}: {e.strerror or e}") from None
    return _unpickle(data, src)


def _unpickle(data: bytes, source: str) -> Any:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except MfnetError:
        raise
    except Exception as e:  # truncated / corrupt files raise many different things
        raise MfnetError(f"{source} is not a readable pickle ({type(e).__name__}: {e})") from None
    return _convert(obj, source)


def load_npy_object(path: str | Path) -> Any:
    """Reads an .npy file; one holding pickled objects (e.g. DECA's landmark_embedding.npy,
    a 0-d object array around a dict) is unpickled through the allow-list, never through
    `np.load(allow_pickle=True)`. A 0-d object array is returned as its item."""
    from numpy.lib import format as npformat

    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise MfnetError(f"cannot read {p}: {e.strerror or e}") from None
    f = io.BytesIO(raw)
    try:
        version = npformat.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = npformat.read_array_header_2_0(f)
    except Exception as e:
        raise MfnetError(f"{p} is not a valid .npy file ({e})") from None
    if not dtype.hasobject:
        count = int(np.prod(shape)) if shape else 1
        arr = np.frombuffer(raw, dtype=dtype, count=count, offset=f.tell())
        return arr.reshape(shape, order="F" if fortran else "C").copy()
    obj = _unpickle(raw[f.tell() :], str(p))
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        return obj.item()
    return obj
