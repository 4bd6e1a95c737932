"""Loading FLAME's pickles without trusting them.

FLAME ships as Python 2 pickles (with chumpy arrays and scipy sparse matrices) and DECA's
landmark embedding as an `.npy` holding a pickled dict (sometimes of torch tensors). A plain
`pickle.load` on a downloaded file can run any code, so this module unpickles through an
allow-list: numpy arrays and dtypes, a few harmless builtins, and *placeholders* for chumpy
and scipy sparse classes that only record their state. After loading, placeholders are
replaced by numpy arrays / scipy matrices built here. chumpy is never imported.

Bounded as well as safe: a pickle is a program, and a few hundred bytes of it can describe
an object graph whose *tree* is astronomically large (`l = [l, l]` sixty times) or a dict
key whose hash takes forever (the same with tuples). So the file size is capped, the number
of pickle operations is capped, dict/set keys are checked before they are hashed, every
array a callable would allocate is size-checked before the allocation, and the conversion
afterwards visits each shared object once (a memo) while adding up the size the structure
would have when expanded, refusing it past a cap. Refusals are one `MfnetError` line naming
the file.
"""

from __future__ import annotations

import io
import math
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from mfnet_core.errors import MfnetError, UnsafePickleError
from mfnet_core.inputs.files import read_regular

__all__ = ["load_restricted_pickle", "load_npy_object", "MAX_PICKLE_BYTES"]

# The real FLAME pickles are 50-150 MB (FLAME 2023 with 400 shape components); 1 GiB is
# far above any of them and still bounded.
MAX_PICKLE_BYTES = 2**30
# Pickle operations per file: FLAME's pickles need a few thousand (arrays are single ops).
MAX_PICKLE_OPS = 5_000_000
# Size of the loaded structure as a tree (shared objects counted at every place they are
# referenced, as anything walking it would see it): Python objects and array elements.
MAX_TREE_NODES = 5_000_000
MAX_TREE_BYTES = 2**30
# One array anything in the pickle asks to allocate.
MAX_ARRAY_BYTES = 512 * 2**20
MAX_DEPTH = 50  # FLAME's structure is 3 levels deep
MAX_KEY_NODES = 10_000  # a tuple used as a dict key / set element, counted as a tree


class _TooBig(MfnetError):
    """Raised (and reworded with the file name) when a cap is exceeded."""


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


def _check_alloc(shape: Any, dtype: Any, what: str) -> None:
    """Refuses an allocation of more than MAX_ARRAY_BYTES before it happens."""
    try:
        dims = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        itemsize = np.dtype(dtype).itemsize if dtype is not None else 1
    except Exception as e:  # noqa: BLE001 - malformed arguments: numpy would refuse them too
        raise MfnetError(f"{what}: malformed array arguments ({type(e).__name__})") from None
    if any(d < 0 for d in dims):
        raise MfnetError(f"{what}: negative array dimension {dims}")
    nbytes = math.prod(dims) * max(itemsize, 1)
    if nbytes > MAX_ARRAY_BYTES:
        raise _TooBig(f"an array of {nbytes / 2**20:.0f} MiB ({what})")


def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
    """numpy's `_reconstruct` (how every pickled ndarray starts), size-checked first."""
    if not (isinstance(subtype, type) and issubclass(subtype, np.ndarray)):
        raise UnsafePickleError("refusing numpy _reconstruct of a non-array type")
    _check_alloc(shape, dtype, "numpy _reconstruct")
    return _numpy_attr("numpy.core.multiarray", "_reconstruct")(subtype, shape, dtype)


def _np_scalar(dtype: Any, *args: Any) -> Any:
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError("refusing a numpy scalar without a dtype")
    _check_alloc((), dtype, "numpy scalar")
    return _numpy_attr("numpy.core.multiarray", "scalar")(dtype, *args)


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> Any:
    _check_alloc(shape, dtype, "numpy _frombuffer")
    return _numpy_attr("numpy.core.numeric", "_frombuffer")(buf, dtype, shape, order)


_NUMPY_FUNCS = {
    ("multiarray", "_reconstruct"): _np_reconstruct,
    ("multiarray", "scalar"): _np_scalar,
    ("numeric", "_frombuffer"): _np_frombuffer,
}


def _codecs_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Python 3 pickles bytes at protocol < 3 as `_codecs.encode(str, 'latin1')`; only
    the plain text codecs are allowed (no zlib bombs or exotic codecs)."""
    if not isinstance(text, str) or not isinstance(encoding, str) or not isinstance(errors, str):
        raise UnsafePickleError("refusing _codecs.encode of a non-string")
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

    if not isinstance(data, bytes | bytearray):
        raise UnsafePickleError("refusing torch storage from a non-bytes value")
    return torch.load(io.BytesIO(data), weights_only=True)


def _torch_rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> np.ndarray:
    """A pickled torch tensor becomes a numpy array (everything downstream wants numpy)."""
    import torch
    from torch._utils import _rebuild_tensor

    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise UnsafePickleError("refusing a torch tensor without a storage")
    # a zero-stride view of one element can claim any size: .copy() would make it real
    _check_alloc(tuple(size), np.float64, "torch tensor")
    t = _rebuild_tensor(storage, offset, tuple(size), tuple(stride))
    if not isinstance(t, torch.Tensor):
        raise UnsafePickleError("torch tensor rebuild returned something else")
    return t.detach().cpu().numpy().copy()


def _key_check(key: Any) -> None:
    """A dict key or set element must be cheap to hash: tuple hashes are not cached, so
    a key of shared nested tuples (t = (t, t) sixty times) would hash for ever."""
    if type(key) is not tuple:
        return
    budget = MAX_KEY_NODES
    todo = [key]
    while todo:
        t = todo.pop()
        budget -= 1 + len(t)
        if budget < 0:
            raise _TooBig("a dict key or set element made of deeply shared tuples")
        todo.extend(x for x in t if type(x) is tuple)


def _safe_set(items: Any = ()) -> set:
    items = list(items)
    for k in items:
        _key_check(k)
    return set(items)


def _safe_frozenset(items: Any = ()) -> frozenset:
    items = list(items)
    for k in items:
        _key_check(k)
    return frozenset(items)


def _safe_ordered_dict(items: Any = ()) -> OrderedDict:
    pairs = list(items.items()) if isinstance(items, dict) else list(items)
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise MfnetError("OrderedDict items must be pairs")
        _key_check(pair[0])
    return OrderedDict(pairs)


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor for plain classes only (`object.__new__(cls)`), which is how
    protocols 0 and 1 pickle chumpy and scipy objects."""
    if base is not object or state is not None:
        raise UnsafePickleError("refusing copyreg._reconstructor with a non-object base")
    if not (isinstance(cls, type) and issubclass(cls, _Placeholder)):
        raise UnsafePickleError("refusing copyreg._reconstructor of a non-placeholder class")
    return object.__new__(cls)


_BUILTINS = {
    "object": object,
    "set": _safe_set,
    "frozenset": _safe_frozenset,
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


# What REDUCE / INST / OBJ may call, and NEWOBJ may instantiate.
_CALLABLE = {
    id(f)
    for f in (
        *_BUILTINS.values(),
        *_NUMPY_FUNCS.values(),
        _codecs_encode,
        _torch_load_from_bytes,
        _torch_rebuild_tensor,
        _safe_ordered_dict,
        _reconstructor,
        np.dtype,
    )
}


def _callable_ok(func: Any) -> bool:
    return id(func) in _CALLABLE or (isinstance(func, type) and issubclass(func, _Placeholder))


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Python's own pure-Python unpickler with the allow-list, an operation budget, and
    checks wherever it would hash a key or call something (the C unpickler offers no hook
    for these; FLAME's pickles are a few thousand operations, so speed is no concern)."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source
        self._ops_left = MAX_PICKLE_OPS

    def find_class(self, module: str, name: str) -> Any:
        self._tick()
        # Python 2 names (fix_imports is not applied when find_class is overridden).
        mod = {"copy_reg": "copyreg", "__builtin__": "builtins"}.get(module, module)
        if mod == "copyreg" and name == "_reconstructor":
            return _reconstructor
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
                return _NUMPY_FUNCS[(sub, name)]
        if mod == "_codecs" and name == "encode":
            return _codecs_encode
        if mod == "collections" and name == "OrderedDict":
            return _safe_ordered_dict
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

    def _tick(self, n: int = 1) -> None:
        self._ops_left -= n
        if self._ops_left < 0:
            raise _TooBig(f"more than {MAX_PICKLE_OPS:,} pickle operations")

    def _refuse_call(self, func: Any) -> None:
        name = getattr(func, "__name__", type(func).__name__)
        raise UnsafePickleError(
            f"refusing to call {name!r} from {self.source}: not an allowed constructor"
        )

    # every operation counts (the dispatch table is wrapped below)

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        if not _callable_ok(func):
            self._refuse_call(func)
        if not isinstance(args, tuple):
            raise MfnetError("REDUCE arguments are not a tuple")
        stack[-1] = func(*args)

    def _instantiate(self, klass: Any, args: list) -> None:
        if not _callable_ok(klass):
            self._refuse_call(klass)
        self.append(klass(*args))

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not (isinstance(cls, type) and (cls is object or issubclass(cls, _Placeholder))):
            self._refuse_call(cls)
        self.append(cls.__new__(cls, *args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if not (isinstance(cls, type) and (cls is object or issubclass(cls, _Placeholder))):
            self._refuse_call(cls)
        self.append(cls.__new__(cls, *args, **kwargs))

    def load_build(self) -> None:
        inst = self.stack[-2]
        if not isinstance(inst, _Placeholder | np.ndarray | np.dtype):
            raise UnsafePickleError(
                f"refusing to set the state of a {type(inst).__name__} from {self.source}"
            )
        state = self.stack.pop()
        if isinstance(inst, np.ndarray) and isinstance(state, tuple) and len(state) in (4, 5):
            # (version,) shape, dtype, fortran, data: numpy allocates the shape before it
            # compares it with the data (object arrays), so the shape is checked here
            _check_alloc(state[-4], state[-3], "numpy array state")
        inst.__setstate__(state)

    def load_setitem(self) -> None:
        _key_check(self.stack[-2])
        super().load_setitem()

    def load_setitems(self) -> None:
        items = self.stack
        for k in items[::2]:
            _key_check(k)
        self._tick(len(items) // 2)
        super().load_setitems()

    def load_dict(self) -> None:
        for k in self.stack[::2]:
            _key_check(k)
        self._tick(len(self.stack) // 2)
        super().load_dict()

    def load_additems(self) -> None:
        for k in self.stack:
            _key_check(k)
        self._tick(len(self.stack))
        super().load_additems()

    def load_frozenset(self) -> None:
        for k in self.stack:
            _key_check(k)
        super().load_frozenset()


def _counted(handler: Any) -> Any:
    def run(self: _RestrictedUnpickler) -> None:
        self._ops_left -= 1
        if self._ops_left < 0:
            raise _TooBig(f"more than {MAX_PICKLE_OPS:,} pickle operations")
        handler(self)

    return run


_OVERRIDES = {
    pickle.REDUCE: _RestrictedUnpickler.load_reduce,
    pickle.INST: None,  # keeps the base handler, which calls the overridden _instantiate
    pickle.OBJ: None,
    pickle.NEWOBJ: _RestrictedUnpickler.load_newobj,
    pickle.NEWOBJ_EX: _RestrictedUnpickler.load_newobj_ex,
    pickle.BUILD: _RestrictedUnpickler.load_build,
    pickle.SETITEM: _RestrictedUnpickler.load_setitem,
    pickle.SETITEMS: _RestrictedUnpickler.load_setitems,
    pickle.DICT: _RestrictedUnpickler.load_dict,
    pickle.ADDITEMS: _RestrictedUnpickler.load_additems,
    pickle.FROZENSET: _RestrictedUnpickler.load_frozenset,
}
for _op, _handler in _OVERRIDES.items():
    if _handler is not None:
        _RestrictedUnpickler.dispatch[_op[0]] = _handler
_RestrictedUnpickler.dispatch = {k: _counted(v) for k, v in _RestrictedUnpickler.dispatch.items()}


# -- conversion of placeholders --------------------------------------------------------------


class _Converter:
    """Replaces placeholders inside dicts / lists / tuples / object arrays by real objects.

    Each object is converted once (a memo by identity, so shared references stay shared
    and cost nothing twice), while its *expanded* size (nodes and array bytes, counting a
    shared object at every reference: what numpy or json would make of it) is added up
    and refused past MAX_TREE_NODES / MAX_TREE_BYTES.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        # id -> (original, converted, nodes, nbytes); the original keeps its id alive
        self.memo: dict[int, tuple[Any, Any, int, int]] = {}

    def _check(self, nodes: int, nbytes: int) -> None:
        if nodes > MAX_TREE_NODES:
            raise _TooBig(f"a structure of more than {MAX_TREE_NODES:,} objects when expanded")
        if nbytes > MAX_TREE_BYTES:
            raise _TooBig(
                f"arrays of more than {MAX_TREE_BYTES / 2**20:.0f} MiB when shared references "
                "are expanded"
            )

    def convert(self, obj: Any, depth: int = 0) -> tuple[Any, int, int]:
        if depth > MAX_DEPTH:
            raise _TooBig(f"objects nested more than {MAX_DEPTH} levels deep")
        hit = self.memo.get(id(obj))
        if hit is not None:
            return hit[1], hit[2], hit[3]
        out, nodes, nbytes = self._convert(obj, depth)
        self._check(nodes, nbytes)
        if isinstance(obj, dict | list | tuple | np.ndarray | _Placeholder):
            self.memo[id(obj)] = (obj, out, nodes, nbytes)
        return out, nodes, nbytes

    def _children(self, items: Any, depth: int) -> tuple[list[Any], int, int]:
        out: list[Any] = []
        nodes, nbytes = 1, 0
        for v in items:
            c, n, b = self.convert(v, depth + 1)
            nodes += n
            nbytes += b
            self._check(nodes, nbytes)
            out.append(c)
        return out, nodes, nbytes

    def _convert(self, obj: Any, depth: int) -> tuple[Any, int, int]:
        src = self.source
        if isinstance(obj, _ChumpyPlaceholder):
            state = obj._state
            if not isinstance(state, dict) or "x" not in state:
                raise MfnetError(
                    f"{src}: chumpy object {obj._qualname} has no array value ('x'); "
                    "only plain chumpy arrays are supported"
                )
            x, n, b = self.convert(state["x"], depth + 1)
            try:
                arr = np.asarray(x)
            except Exception as e:  # noqa: BLE001 - ragged lists
                raise MfnetError(
                    f"{src}: chumpy object {obj._qualname} is not an array ({type(e).__name__})"
                ) from None
            return arr, n + 1, max(b, arr.nbytes)
        if isinstance(obj, _SparsePlaceholder):
            m = _sparse_from_state(obj, src)
            return m, 4, int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes)
        if isinstance(obj, dict):
            vals, n, b = self._children(obj.values(), depth)
            return dict(zip(obj.keys(), vals, strict=True)), n, b
        if isinstance(obj, list):
            return self._children(obj, depth)
        if isinstance(obj, tuple):
            vals, n, b = self._children(obj, depth)
            return tuple(vals), n, b
        if isinstance(obj, np.ndarray):
            if obj.dtype != object:
                return obj, 1, int(obj.nbytes)
            vals, n, b = self._children(obj.ravel(), depth)
            out = np.empty(obj.shape, dtype=object)
            for i, v in enumerate(vals):
                out.flat[i] = v
            return out, n, b
        if isinstance(obj, str | bytes | bytearray):
            return obj, 1, len(obj)
        return obj, 1, 0


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
    except Exception as e:  # noqa: BLE001 - ragged lists and the like
        raise MfnetError(
            f"{source}: sparse matrix {obj._qualname} is malformed ({type(e).__name__})"
        ) from None
    if shape is None:
        raise MfnetError(f"{source}: sparse matrix {obj._qualname} has no shape")
    if (
        data.dtype.kind not in "biuf"
        or indices.dtype.kind not in "iu"
        or indptr.dtype.kind not in "iu"
    ):
        raise MfnetError(f"{source}: sparse matrix {obj._qualname} holds non-numeric arrays")
    cls = sp.csc_matrix if obj.fmt == "csc" else sp.csr_matrix
    try:
        dims = tuple(int(s) for s in shape)
        # the dense form is what the loaders make of it: bound it before anyone does
        _check_alloc(dims, np.float64, f"sparse matrix {obj._qualname} as dense")
        m = cls((data, indices, indptr), shape=dims)
        m.check_format(full_check=True)  # out-of-range indices would corrupt memory later
    except MfnetError:
        raise
    except Exception as e:  # noqa: BLE001 - scipy raises ValueError / TypeError / IndexError
        raise MfnetError(
            f"{source}: sparse matrix {obj._qualname} is malformed ({type(e).__name__}: {e})"
        ) from None
    return m


# -- public API ------------------------------------------------------------------------------


def load_restricted_pickle(path_or_bytes: str | Path | bytes, *, source: str | None = None) -> Any:
    """Unpickles a (possibly Python 2) pickle through the allow-list.

    `source` names the file in error messages (defaults to the path). Raises
    UnsafePickleError for anything outside the allow-list, MfnetError for unreadable,
    oversized or absurdly shaped data.
    """
    if isinstance(path_or_bytes, bytes | bytearray):
        data = bytes(path_or_bytes)
        src = source or "<bytes>"
        if len(data) > MAX_PICKLE_BYTES:
            raise MfnetError(f"{src}: larger than {MAX_PICKLE_BYTES / 2**20:.0f} MiB")
    else:
        p = Path(path_or_bytes)
        src = source or str(p)
        data = read_regular(p, what="pickle file", max_bytes=MAX_PICKLE_BYTES)
    return _unpickle(data, src)


def _unpickle(data: bytes | memoryview, source: str) -> Any:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
        return _Converter(source).convert(obj)[0]
    except _TooBig as e:
        raise MfnetError(f"{source}: refusing this pickle: it describes {e}") from None
    except UnsafePickleError as e:
        if source in str(e):
            raise
        raise UnsafePickleError(f"{source}: {e}") from None
    except MfnetError as e:
        if source in str(e):
            raise
        raise MfnetError(f"{source}: {e}") from None
    except RecursionError:
        raise MfnetError(f"{source} is not a readable pickle (nested too deeply)") from None
    except Exception as e:  # truncated / corrupt files raise many different things
        text = " ".join(str(e).split())[:160]
        raise MfnetError(
            f"{source} is not a readable pickle ({type(e).__name__}: {text})"
        ) from None


def load_npy_object(path: str | Path) -> Any:
    """Reads an .npy file; one holding pickled objects (e.g. DECA's landmark_embedding.npy,
    a 0-d object array around a dict) is unpickled through the allow-list, never through
    `np.load(allow_pickle=True)`. A 0-d object array is returned as its item."""
    from mfnet_core.inputs.npz import ArraySpec, _check_declared, read_npy_header

    p = Path(path)
    raw = read_regular(p, what=".npy file", max_bytes=MAX_PICKLE_BYTES)
    f = io.BytesIO(raw)
    shape, fortran, dtype = read_npy_header(f, str(p), "array")
    if not dtype.hasobject:
        spec = ArraySpec(kinds="biufUS")
        try:
            nbytes = _check_declared(str(p), "array", shape, dtype, spec, MAX_ARRAY_BYTES)
        except MfnetError as e:
            raise MfnetError(str(e).replace("key 'array' ", "")) from None
        if len(raw) - f.tell() < nbytes:
            raise MfnetError(f"{p} is truncated ({len(raw) - f.tell()} of {nbytes} data bytes)")
        count = math.prod(shape)
        arr = np.frombuffer(raw, dtype=dtype, count=count, offset=f.tell())
        return arr.reshape(shape, order="F" if fortran else "C").copy()
    obj = _unpickle(memoryview(raw)[f.tell() :], str(p))
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        return obj.item()
    return obj
