"""Every model loader is bounded (issue 14): tiny files cannot make a loader grow without
limit or hang, each array is checked (declared shape and size before reading, finite
values, faces in range) and every refusal is one MfnetError line naming the file.

Reproductions from the issue: a 342-byte pickle of nested shared lists given as `--flame`;
an .npz with an unused key declaring gigabytes; NaN/inf or empty faces in a model; a
checkpoint without `model_config` or with wrong types; a malicious checkpoint's refusal
quoting torch's advice. Cases that would hang or eat memory with the old code run in a
subprocess with a time and memory limit, so that they fail instead of taking the machine.
"""

from __future__ import annotations

import io
import os
import pickle
import resource
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mfnet_core.errors import MfnetError
from mfnet_core.head.flame import load_flame_assets
from mfnet_core.inputs.model_files import find_flame_model
from mfnet_core.inputs.npz import ArraySpec, read_npz
from mfnet_core.inputs.safe_pickle import load_npy_object, load_restricted_pickle
from mfnet_core.network.checkpoints import load_backbone_weights, load_checkpoint
from mfnet_core.network.mfnet import CHECKPOINT_FORMAT, MFNet, MFNetConfig

REPO = Path(__file__).resolve().parents[1]

# -- a tiny FLAME-format model with its side files (also used by test_loader_fuzz) ----------

N_V, N_F = 40, 60


def tiny_model(seed: int = 0) -> dict[str, object]:
    """A FLAME-format model dict: 40 vertices, 60 faces, 5 joints (not a head)."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(N_V, 3)) * 0.05
    faces = np.stack(
        [np.arange(N_F) % N_V, (np.arange(N_F) + 1) % N_V, (np.arange(N_F) + 7) % N_V], 1
    )
    weights = rng.uniform(size=(N_V, 5))
    weights /= weights.sum(1, keepdims=True)
    jreg = rng.uniform(size=(5, N_V))
    jreg /= jreg.sum(1, keepdims=True)
    return {
        "v_template": v,
        "f": faces.astype(np.uint32),
        "shapedirs": rng.normal(size=(N_V, 3, 8)) * 1e-3,
        "exprdirs": rng.normal(size=(N_V, 3, 4)) * 1e-3,
        "posedirs": rng.normal(size=(N_V, 3, 36)) * 1e-3,
        "J_regressor": jreg,
        "kintree_table": np.array([[2**32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "weights": weights,
        "mfnet_test_head": True,
    }


def tiny_side_files() -> dict[str, bytes]:
    """landmark_embedding.npy (DECA format), texture.npz (vt, ft), masks.pkl."""
    rng = np.random.default_rng(1)
    bary = np.full((3,), 1 / 3)
    emb = {
        "static_lmk_faces_idx": np.arange(51) % N_F,
        "static_lmk_bary_coords": np.tile(bary, (51, 1)),
        "dynamic_lmk_faces_idx": rng.integers(0, N_F, (79, 17)),
        "dynamic_lmk_bary_coords": np.tile(bary, (79, 17, 1)),
    }
    buf = io.BytesIO()
    np.save(buf, np.array(emb, dtype=object), allow_pickle=True)
    tex = io.BytesIO()
    np.savez(tex, vt=rng.uniform(size=(N_V, 2)), ft=np.arange(N_F * 3).reshape(N_F, 3) % N_V)
    masks = pickle.dumps({"face": np.arange(0, N_V, 2)}, protocol=2)
    return {
        "landmark_embedding.npy": buf.getvalue(),
        "texture.npz": tex.getvalue(),
        "masks.pkl": masks,
    }


def model_bytes(model: dict[str, object], fmt: str, *, sparse: bool = False) -> bytes:
    if fmt == "npz":
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in model.items()})
        return buf.getvalue()
    m = dict(model)
    if sparse:
        m["J_regressor"] = sp.csc_matrix(m["J_regressor"])
    return pickle.dumps(m, protocol=2 if fmt == "pkl2" else 4)


def write_tiny(folder: Path, fmt: str = "pkl", model: dict | None = None) -> Path:
    """The tiny model as `generic_model.<pkl|npz>` with its side files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in tiny_side_files().items():
        (folder / name).write_bytes(data)
    path = folder / ("generic_model.npz" if fmt == "npz" else "generic_model.pkl")
    path.write_bytes(model_bytes(model or tiny_model(), fmt, sparse=fmt != "npz"))
    return path


def _one_line(e: BaseException, *names: str) -> str:
    msg = str(e)
    assert "\n" not in msg, msg
    for n in names:
        assert n in msg, (n, msg)
    return msg


def _bounded_subprocess(code: str, timeout: float = 60, mem_gb: float = 3.0) -> str:
    """Runs `code` in a fresh interpreter with a time and address-space limit; returns its
    stdout. A loader that hangs or grows without limit fails the test instead of the host."""

    def limit() -> None:
        cap = int(mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    try:
        r = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            preexec_fn=limit,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the loader ran past {timeout} s")
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_tiny_model_loads_in_every_format(tmp_path):
    for fmt in ("pkl", "pkl2", "npz"):
        a = load_flame_assets(write_tiny(tmp_path / fmt, fmt))
        assert a.kind == "test-head" and a.v_template.shape == (N_V, 3)
        assert a.shapedirs.shape == (N_V, 3, 8) and a.exprdirs.shape == (N_V, 3, 4)
        assert a.face_region.sum() == N_V // 2


# -- 1. pickles: memo and caps ---------------------------------------------------------------


def _shared_lists(levels: int, width: int = 2) -> bytes:
    x: list = []
    for _ in range(levels):
        x = [x] * width
    return pickle.dumps(x, protocol=4)


def test_nested_shared_list_pickle_is_refused_quickly(tmp_path):
    """The issue's 342-byte pickle as --flame: one line naming the file, at once (the old
    converter copied 2**60 references)."""
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(_shared_lists(60))
    assert len(path.read_bytes()) < 400
    out = _bounded_subprocess(
        f"""
        import time
        from mfnet_core.errors import MfnetError
        from mfnet_core.inputs.safe_pickle import load_restricted_pickle
        t = time.perf_counter()
        try:
            load_restricted_pickle({str(path)!r})
        except MfnetError as e:
            print(f"{{time.perf_counter() - t:.3f}}", e)
        """,
        timeout=60,
    )
    seconds, msg = out.strip().split(" ", 1)
    assert float(seconds) < 1.0
    _one_line(MfnetError(msg), str(path), "refusing")


@pytest.mark.parametrize("levels,width", [(40, 2), (20, 10), (8, 200)])
def test_shared_references_below_the_depth_cap_are_refused_by_size(levels, width):
    """Shallower graphs of shared lists: converted once each (a memo), but their expanded
    size (what numpy.asarray would build) is over the cap."""
    t = time.perf_counter()
    with pytest.raises(MfnetError) as err:
        load_restricted_pickle(_shared_lists(levels, width), source="shared.pkl")
    assert time.perf_counter() - t < 2.0
    _one_line(err.value, "shared.pkl", "objects")


def test_shared_arrays_expanding_past_the_byte_cap_are_refused():
    a = np.zeros(2**20)  # 8 MiB, referenced 200 times: 1.6 GiB if anything expanded it
    with pytest.raises(MfnetError) as err:
        load_restricted_pickle(pickle.dumps([a] * 200, protocol=4), source="many.pkl")
    _one_line(err.value, "many.pkl", "MiB")


def test_shared_objects_are_converted_once():
    """A list referenced twice stays one object after conversion (the memo); the old
    converter copied it at every reference."""
    shared = [np.arange(3.0), [1, 2]]
    out = load_restricted_pickle(pickle.dumps({"a": shared, "b": shared, "c": (shared,)}))
    assert out["a"] is out["b"] is out["c"][0]


def _tuple_key_pickle(levels: int = 60) -> bytes:
    """{t: 1} with t = (t, t) `levels` times, written without building it (hashing t in
    this process would never end)."""
    t: tuple = ()
    for _ in range(levels):
        t = (t, t)
    body = pickle.dumps(t, protocol=2)[2:-1]
    return b"\x80\x02}" + body + b"K\x01s."


def test_dict_key_of_shared_tuples_is_refused_before_hashing(tmp_path):
    """Tuple hashes are not cached: the old loader hashed 2**60 tuples for this key."""
    path = tmp_path / "keys.pkl"
    path.write_bytes(_tuple_key_pickle())
    out = _bounded_subprocess(
        f"""
        from mfnet_core.errors import MfnetError
        from mfnet_core.inputs.safe_pickle import load_restricted_pickle
        try:
            load_restricted_pickle({str(path)!r})
        except MfnetError as e:
            print(e)
        """,
        timeout=30,
    )
    _one_line(MfnetError(out.strip()), str(path), "key")


def test_allocations_asked_by_a_pickle_are_size_checked():
    """numpy's _reconstruct allocates the shape it is given: 10**12 bytes here."""
    data = (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01"
        b"J\x40\x42\x0f\x00J\x40\x42\x0f\x00\x86q\x02C\x01bq\x03\x87q\x04Rq\x05."
    )
    with pytest.raises(MfnetError) as err:
        load_restricted_pickle(data, source="alloc.pkl")
    _one_line(err.value, "alloc.pkl", "MiB")
    # an object array's state whose shape says 10**9 items for a list of three: numpy
    # allocates the shape before it compares it with the list
    a = np.empty(3, dtype=object)
    a[:] = [1, 2, 3]
    data = pickle.dumps(a, protocol=2)
    i = data.index(b"K\x03\x85")  # BININT1 3, TUPLE1: the shape (3,)
    data = data[:i] + b"J" + (10**9).to_bytes(4, "little") + data[i + 2 :]
    with pytest.raises(MfnetError) as err:
        load_restricted_pickle(data, source="state.pkl")
    _one_line(err.value, "state.pkl", "MiB")


def test_a_real_sized_flame_pickle_still_loads():
    """FLAME 2023's arrays (~55 MB) are well inside the caps."""
    rng = np.random.default_rng(0)
    obj = {"shapedirs": rng.normal(size=(5023, 3, 400)), "posedirs": np.zeros((5023, 3, 36))}
    out = load_restricted_pickle(pickle.dumps(obj, protocol=2))
    assert out["shapedirs"].shape == (5023, 3, 400)


def test_pickle_that_is_a_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "generic_model.pkl"
    os.mkfifo(fifo)
    _no_hang(lambda: load_restricted_pickle(fifo), str(fifo), "FIFO")
    _no_hang(lambda: load_flame_assets(fifo), str(fifo), "FIFO")
    _no_hang(lambda: find_flame_model(fifo), "--flame", str(fifo), "FIFO")


def _no_hang(call, *names: str, seconds: float = 10.0) -> None:
    """`call` must raise an MfnetError naming `names` within `seconds` (in a thread; a
    reader left blocked on a FIFO is released by opening its write end)."""
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            result.append(None)
        except BaseException as e:  # noqa: BLE001
            result.append(e)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(seconds)
    if th.is_alive():
        for n in names:
            if os.path.exists(n):
                try:
                    os.close(os.open(n, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    pass
        pytest.fail(f"still blocked after {seconds} s")
    assert result and isinstance(result[0], MfnetError), result
    _one_line(result[0], *names)


# -- 2. npz readers --------------------------------------------------------------------------


def _npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    from numpy.lib import format as npformat

    buf = io.BytesIO()
    npformat.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _add_member(npz: bytes, name: str, data: bytes) -> bytes:
    buf = io.BytesIO(npz)
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr(name, data)
    return buf.getvalue()


BOMB_BYTES = 600 * 2**20  # above the 512 MiB cap of one array


def _npz_with_bomb(path: Path, bomb_key: str) -> None:
    """The tiny model as an .npz plus a member `bomb_key` of 600 MiB of zeros, deflated to
    ~3 MB (replacing the model's own member of that name): what a model file with a huge
    albedo space, or a crafted key, looks like."""
    model = {k: np.asarray(v) for k, v in tiny_model().items() if k != bomb_key}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for k, v in model.items():
            b = io.BytesIO()
            np.save(b, v)
            zf.writestr(f"{k}.npy", b.getvalue())
        with zf.open(f"{bomb_key}.npy", "w", force_zip64=True) as f:
            f.write(_npy_header((BOMB_BYTES // 24, 3, 1)))
            chunk = bytes(2**20)
            for _ in range(BOMB_BYTES // 2**20):
                f.write(chunk)


def _traced(call):
    """(result or exception, seconds, peak traced bytes); numpy's buffers are traced."""
    tracemalloc.start()
    t = time.perf_counter()
    try:
        try:
            out: object = call()
        except Exception as e:  # noqa: BLE001
            out = e
        return out, time.perf_counter() - t, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_unused_huge_key_is_never_decompressed(tmp_path):
    """The issue: an .npz model with an unused key of gigabytes was decompressed whole."""
    write_tiny(tmp_path, "npz")
    path = tmp_path / "generic_model.npz"
    _npz_with_bomb(path, "albedo")
    assert path.stat().st_size < 8 * 2**20
    a, seconds, peak = _traced(lambda: load_flame_assets(path))
    assert not isinstance(a, Exception), a
    assert a.v_template.shape == (N_V, 3)
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB"
    assert seconds < 5.0


def test_used_key_bomb_is_refused_before_decompressing(tmp_path):
    write_tiny(tmp_path, "npz")
    path = tmp_path / "generic_model.npz"
    _npz_with_bomb(path, "posedirs")
    err, seconds, peak = _traced(lambda: load_flame_assets(path))
    assert isinstance(err, MfnetError), err
    _one_line(err, str(path), "'posedirs'", "MiB")
    assert peak < 64 * 2**20 and seconds < 2.0


def test_key_declaring_3_gb_is_refused_instantly(tmp_path):
    """Only the header is read: (5023, 3, 25000) float64 = 3 GB is refused from it."""
    path = write_tiny(tmp_path, "npz")
    keep = io.BytesIO()
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(keep, "w") as zout:
        for info in zin.infolist():
            if info.filename != "shapedirs.npy":
                zout.writestr(info, zin.read(info))
        zout.writestr("shapedirs.npy", _npy_header((5023, 3, 25000)) + bytes(64))
    path.write_bytes(keep.getvalue())
    t = time.perf_counter()
    with pytest.raises(MfnetError) as err:
        load_flame_assets(path)
    assert time.perf_counter() - t < 1.0
    _one_line(err.value, str(path), "'shapedirs'", "2874 MiB", "refusing")


def test_read_npz_reads_only_the_keys_asked(tmp_path):
    path = tmp_path / "x.npz"
    data = io.BytesIO()
    np.savez(data, a=np.arange(3.0))
    # an unused member that is not even a valid .npy
    path.write_bytes(_add_member(data.getvalue(), "junk.npy", b"\x00" * 100))
    out = read_npz(path, {"a": ArraySpec((3,)), "b": ArraySpec(required=False)})
    assert set(out) == {"a"} and out["a"].tolist() == [0, 1, 2]
    with pytest.raises(MfnetError, match=r"x\.npz: missing key 'c'"):
        read_npz(path, {"c": ArraySpec()})


def test_npz_never_unpickles(tmp_path):
    target = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(target), "w"))

    arr = np.empty(1, dtype=object)
    arr[0] = Payload()
    model = tiny_model()
    model["v_template"] = arr
    path = tmp_path / "generic_model.npz"
    write_tiny(tmp_path, "npz")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in model.items()})
    path.write_bytes(buf.getvalue())
    with pytest.raises(MfnetError) as err:
        load_flame_assets(path)
    _one_line(err.value, str(path), "'v_template'", "pickled")
    assert not target.exists()


BAD_VALUES = [
    ("v_template", lambda m: _poke(m["v_template"], np.nan), "NaN/inf"),
    ("shapedirs", lambda m: _poke(m["shapedirs"], np.inf), "NaN/inf"),
    ("exprdirs", lambda m: _poke(m["exprdirs"], -np.inf), "NaN/inf"),
    ("posedirs", lambda m: _poke(m["posedirs"], np.nan), "NaN/inf"),
    ("J_regressor", lambda m: _poke(m["J_regressor"], np.nan), "NaN/inf"),
    ("weights", lambda m: _poke(m["weights"], np.nan), "NaN/inf"),
    ("v_template", lambda m: _poke(m["v_template"], 1e300), "float32"),
    ("f", lambda m: np.zeros((0, 3), np.uint32), "empty"),
    ("f", lambda m: m["f"] + N_V, "'f'"),
    ("f", lambda m: m["f"].astype(np.float64), "dtype"),
    ("v_template", lambda m: np.array([["a", "b", "c"]] * N_V), "dtype"),
    ("v_template", lambda m: m["v_template"].astype(np.complex128), "dtype"),
    ("kintree_table", lambda m: np.zeros((2, 0), np.int64), "empty"),
    ("kintree_table", lambda m: np.array([[0, 3, 0, 0, 0], [0, 1, 2, 3, 4]]), "parents"),
    ("weights", lambda m: m["weights"][:, :3], "'weights'"),
    ("exprdirs", lambda m: m["exprdirs"][:5], "'exprdirs'"),
    ("shapedirs", lambda m: m["shapedirs"][..., 0], "'shapedirs'"),
]


def _poke(a: np.ndarray, value: float) -> np.ndarray:
    a = a.copy()
    a.flat[a.size // 2] = value
    return a


@pytest.mark.parametrize("fmt", ["npz", "pkl"])
@pytest.mark.parametrize(
    "key,change,words", BAD_VALUES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(BAD_VALUES)]
)
def test_bad_model_arrays_are_one_line_errors(tmp_path, fmt, key, change, words):
    """NaN/inf in the template, bases, posedirs or weights (the issue: NaN posedirs gave
    exit 0 and a result the add-on refused), empty or out-of-range faces, wrong dtypes."""
    model = tiny_model()
    model[key] = change(model)
    path = write_tiny(tmp_path, fmt, model)
    with pytest.raises(MfnetError) as err:
        load_flame_assets(path)
    msg = _one_line(err.value, str(path), words)
    if words != "parents":
        assert f"'{key}'" in msg


def test_bad_side_files_are_one_line_errors(tmp_path):
    path = write_tiny(tmp_path, "pkl")
    tex = tmp_path / "texture.npz"
    good = tex.read_bytes()
    buf = io.BytesIO()
    np.savez(buf, vt=np.full((N_V, 2), np.nan), ft=np.zeros((N_F, 3), np.int64))
    tex.write_bytes(buf.getvalue())
    with pytest.raises(MfnetError) as err:
        load_flame_assets(path)
    _one_line(err.value, str(tex), "'vt'", "NaN")
    tex.write_bytes(good)
    lmk = tmp_path / "landmark_embedding.npy"
    emb = load_npy_object(lmk)
    emb["static_lmk_bary_coords"] = np.ones(50)  # not a multiple of 3
    np.save(lmk, np.array(emb, dtype=object), allow_pickle=True)
    with pytest.raises(MfnetError) as err:
        load_flame_assets(path)
    _one_line(err.value, str(lmk), "static_lmk_bary_coords")
    emb["static_lmk_bary_coords"] = "text"
    np.save(lmk, np.array(emb, dtype=object), allow_pickle=True)
    with pytest.raises(MfnetError) as err:
        load_flame_assets(path)
    _one_line(err.value, str(lmk), "static_lmk_bary_coords")


def test_npy_with_a_huge_declared_shape_is_refused(tmp_path):
    p = tmp_path / "big.npy"
    p.write_bytes(_npy_header((10**6, 10**6)) + bytes(16))
    with pytest.raises(MfnetError) as err:
        load_npy_object(p)
    _one_line(err.value, str(p), "MiB")
    p.write_bytes(_npy_header((100,)) + bytes(16))
    with pytest.raises(MfnetError) as err:
        load_npy_object(p)
    _one_line(err.value, str(p), "truncated")


# -- 3. torch checkpoints --------------------------------------------------------------------

TINY = MFNetConfig(backbone="resnet10", width=4, fuse_hidden=8, view_hidden=8, n_shape=4, n_expr=3)


def tiny_checkpoint(**changes: object) -> dict[str, object]:
    torch.manual_seed(0)
    ck: dict[str, object] = {
        "format": CHECKPOINT_FORMAT,
        "model_config": TINY.to_dict(),
        "model": MFNet(TINY).state_dict(),
        "step": 3,
    }
    ck.update(changes)
    return ck


def _save(tmp_path: Path, obj: object, name: str = "ck.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_tiny_checkpoint_loads(tmp_path):
    model, meta = load_checkpoint(_save(tmp_path, tiny_checkpoint()))
    assert meta["step"] == 3 and not model.training


def test_malicious_checkpoint_refusal_is_one_line_without_torch_advice(tmp_path):
    target = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch '{target}'",))

    path = _save(tmp_path, tiny_checkpoint(step=Payload()))
    for load in (load_checkpoint, lambda p: load_backbone_weights(MFNet(TINY), p)):
        with pytest.raises(MfnetError) as err:
            load(path)
        msg = _one_line(err.value, str(path), "system")
        assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg
    assert not target.exists()


@pytest.mark.parametrize(
    "changes,words",
    [
        ({"model_config": None}, "'model_config'"),
        ({"model_config": [1, 2]}, "'model_config'"),
        ({"model_config": {**TINY.to_dict(), "width": "4"}}, "'width'"),
        ({"model_config": {**TINY.to_dict(), "width": 10**7}}, "'width'"),
        ({"model_config": {**TINY.to_dict(), "n_views": True}}, "'n_views'"),
        ({"model_config": {**TINY.to_dict(), "crop_scale": float("nan")}}, "'crop_scale'"),
        ({"model_config": {**TINY.to_dict(), "backbone": "resnet9000"}}, "resnet9000"),
        ({"model_config": {**TINY.to_dict(), "colour": 1}}, "colour"),
        ({"model_config": {**TINY.to_dict(), "width": 8}}, "shape"),
        ({"model_config": {**TINY.to_dict(), "width": 1000, "fuse_hidden": 90000}}, "parameters"),
        ({"model": [1, 2]}, "'model'"),
        ({"model": {}}, "missing"),
        ({"model": {1: torch.zeros(1)}}, "'model'"),
    ],
)
def test_checkpoint_without_or_with_a_wrong_model_config_is_one_line(tmp_path, changes, words):
    ck = tiny_checkpoint(**changes)
    if ck["model_config"] is None:
        del ck["model_config"]
    path = _save(tmp_path, ck)
    t = time.perf_counter()
    with pytest.raises(MfnetError) as err:
        load_checkpoint(path)
    assert time.perf_counter() - t < 5.0
    _one_line(err.value, str(path), words)


def test_checkpoint_tensors_checked(tmp_path):
    state = MFNet(TINY).state_dict()
    k = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
    bad = dict(state)
    bad[k] = bad[k].clone()
    bad[k].view(-1)[0] = float("nan")
    with pytest.raises(MfnetError) as err:
        load_checkpoint(_save(tmp_path, tiny_checkpoint(model=bad)))
    _one_line(err.value, k, "NaN")
    bad = dict(state)
    bad[k] = state[k].to(torch.complex64)  # loading would drop the imaginary part
    with pytest.raises(MfnetError) as err:
        load_checkpoint(_save(tmp_path, tiny_checkpoint(model=bad)))
    _one_line(err.value, k, "expected floating point")
    bad = dict(state)
    bad[k] = "weights"
    with pytest.raises(MfnetError) as err:
        load_checkpoint(_save(tmp_path, tiny_checkpoint(model=bad)))
    _one_line(err.value, k, "not a tensor")


def test_checkpoint_with_a_compressed_member_is_refused(tmp_path):
    path = _save(tmp_path, tiny_checkpoint())
    buf = io.BytesIO()
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    path.write_bytes(buf.getvalue())
    with pytest.raises(MfnetError) as err:
        load_checkpoint(path)
    _one_line(err.value, str(path), "compressed")


def test_checkpoint_metadata_is_bounded(tmp_path):
    x: list = []
    for _ in range(40):
        x = [x, x]
    path = _save(tmp_path, tiny_checkpoint(eval=x))
    with pytest.raises(MfnetError) as err:
        load_checkpoint(path)
    _one_line(err.value, str(path), "metadata")


def test_checkpoint_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "ck.pt"
    os.mkfifo(fifo)
    _no_hang(lambda: load_checkpoint(fifo), str(fifo), "FIFO")


def test_torch_floor_is_2_6():
    """torch.load(weights_only=True) could be bypassed before 2.6 (CVE-2025-32434)."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if d.split(">")[0].split("=")[0].strip() == "torch"]
    floor = tuple(int(x) for x in spec.split(">=")[1].split(",")[0].strip().split(".")[:2])
    assert floor >= (2, 6)
