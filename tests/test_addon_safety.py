"""Issue 14, the add-on's part: file names from a .blend or a result folder stay inside
their folder, rig.npz is read bounded and validated field by field (one-line ResultError
for anything else, fuzzed), joint names that Blender cannot hold, and the headless batch
(output inside input, Ctrl-C).

The bpy-free parts run with plain pytest; the rest in real Blenders (tests/blender/)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from blender_addon import rigdata
from blender_addon import strings as S

sys.path.insert(0, str(Path(__file__).parent / "blender"))
import harness  # noqa: E402
from make_fixture_result import write_png  # noqa: E402

# --------------------------------------------------------------------------- file names

CRAFTED_NAMES = [
    "../escape",
    "../../../../../../tmp/mfnet_escape",
    "/tmp/mfnet_escape_abs",
    "/",
    "..",
    ".",
    "",
    "a/../../b",
    "C:\\Windows\\evil",
    "\\\\server\\share\\x",
    "..\\..\\x",
    "name\x00with nul",
    "new\nline",
    "CON",
    "nul.txt",
    ".hidden",
    "   ",
    "é" * 300,
    "\ud800lone surrogate",
    "ok name.png",
]


@pytest.mark.parametrize("name", CRAFTED_NAMES)
def test_safe_file_name_stays_inside_its_folder(tmp_path, name):
    for i, suffix in enumerate(["", ".png", "/../../x", ".tar.gz", "." + "x" * 40]):
        folder = tmp_path / str(i)
        folder.mkdir()
        safe = S.safe_file_name(name, suffix)
        assert safe and safe not in (".", "..") and not safe.startswith(".")
        assert not set(safe) & set("/\\\x00:\n")
        assert len(safe.encode("utf-8")) <= S.FILE_NAME_BYTES
        target = folder / safe
        assert target.parent == folder and target.resolve().parent == folder.resolve()
        target.write_bytes(b"x")  # a name the file system takes
        assert [p.name for p in folder.iterdir()] == [safe]


def test_safe_file_name_keeps_plain_names():
    assert S.safe_file_name("grace_hopper", ".jpg") == "grace_hopper.jpg"
    assert S.safe_file_name("Face 01 (front)", ".png") == "Face 01 (front).png"
    assert S.safe_file_name("x", "/../../y") == "x"  # a suffix that is not one is dropped


# --------------------------------------------------------------------------- a valid rig.npz


@pytest.fixture(scope="module")
def rig_arrays(test_head) -> dict[str, np.ndarray]:
    """The arrays of a real rig.npz: the backend's writer on the generated test head with a
    fitted-looking pose and 5 expression keys."""
    from mfnet_core.outputs.result_folder import build_rig

    rng = np.random.default_rng(0)
    params = {
        "shape": rng.normal(size=100) * 0.5,
        "expression": rng.normal(size=50) * 0.5,
        "jaw_pose": np.array([0.1, 0.0, 0.01]),
        "neck_pose": np.array([0.05, -0.1, 0.0]),
        "eye_pose": np.array([0.0, 0.05, 0.0, 0.0, 0.05, 0.0]),
        "head_pose": rng.normal(size=(3, 3)) * 0.2,
        "head_translation": np.tile([0.0, 0.0, -0.6], (3, 1)),
    }
    camera = np.tile([1200.0, 1200.0, 512.0, 512.0], (3, 1))
    size = np.tile([1024, 1024], (3, 1))
    rig = build_rig(test_head, params, camera, size, ["left", "front", "right"], 5)
    return dict(rig.arrays)


def write_rig(folder: Path, arrays: dict, compressed: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(folder / "rig.npz", **arrays)
    return folder


def npz_bytes(arrays: dict, compressed: bool = True) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def npy_member(header: dict, data: bytes = b"") -> bytes:
    """A .npy file with the given header dict (any shape it declares) and data."""
    text = repr(header).encode("latin-1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


def assert_one_line_error(folder: Path, *fragments: str) -> str:
    with pytest.raises(rigdata.ResultError) as info:
        rigdata.load_result(folder)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 600, msg
    assert "rig.npz" in msg, msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


def test_the_valid_rig_loads(rig_arrays, tmp_path):
    rig = rigdata.load_result(write_rig(tmp_path / "ok", rig_arrays))
    assert rig.model_kind == "test-head" and rig.joint_names == [
        "root",
        "neck",
        "jaw",
        "eye_L",
        "eye_R",
    ]
    assert rig.n_expressions == 5 and rig.pose_correctives.shape[0] == 36 and not rig.warnings
    np.testing.assert_allclose(rig.fitted_pose["jaw_pose"], [0.1, 0.0, 0.01], atol=1e-6)


def _bad(arrays: dict, **changes) -> dict:
    out = dict(arrays)
    for k, v in changes.items():
        if v is None:
            out.pop(k)
        else:
            out[k] = v(out[k]) if callable(v) else v
    return out


def _nan_at(a, i=0):
    a = np.array(a, dtype=np.float32)
    a.flat[i] = np.nan
    return a


BAD_FIELDS = {
    # the issue's reproductions
    "format_version as a string": ({"format_version": np.array("1")}, "format_version", "dtype"),
    "vertices as strings": ({"vertices": lambda v: v.astype(str)}, "vertices", "dtype"),
    "NaN jaw_pose": ({"jaw_pose": np.array([np.nan, 0, 0], np.float32)}, "jaw_pose", "NaN"),
    "faces out of range": ({"faces": lambda f: f + 10**6}, "faces", "index outside"),
    # types and dtypes
    "format_version as a float": ({"format_version": np.array(1.0)}, "format_version", "dtype"),
    "format_version of shape (1,)": ({"format_version": np.array([1])}, "format_version", "shape"),
    "format_version huge": ({"format_version": np.array(2**63 - 1)}, "format_version"),
    "vertices complex": ({"vertices": lambda v: v.astype(np.complex64)}, "vertices", "dtype"),
    "vertices pickled objects": ({"vertices": lambda v: v.astype(object)}, "vertices"),
    "vertices as records": (
        {"vertices": lambda v: np.zeros(len(v), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])},
        "vertices",
    ),
    "faces as floats": ({"faces": lambda f: f.astype(np.float32)}, "faces", "dtype"),
    "parents as bools": ({"parents": lambda p: p.astype(bool)}, "parents", "dtype"),
    "joint_names as numbers": ({"joint_names": np.arange(5)}, "joint_names", "dtype"),
    "joint_names not UTF-8": (
        {"joint_names": np.array([b"root", b"\xff\xfe", b"jaw", b"a", b"b"])},
        "joint_names",
        "text",
    ),
    "model_name as an array of numbers": ({"model_name": np.zeros(3)}, "model_name"),
    # shapes
    "vertices (V, 2)": ({"vertices": lambda v: v[:, :2]}, "vertices", "shape"),
    "vertices empty": ({"vertices": np.zeros((0, 3), np.float32)}, "vertices", "V=0"),
    "uv_faces of another F": ({"uv_faces": lambda f: f[:-1]}, "uv_faces", "F="),
    "expression_basis of another V": (
        {"expression_basis": lambda b: b[:, :-1]},
        "expression_basis",
        "V=",
    ),
    "skin_weights of other joints": ({"skin_weights": lambda w: w[:, :4]}, "skin_weights", "J="),
    "pose_correctives not 9*(J-1)": (
        {"pose_correctives": lambda p: p[:27]},
        "pose_correctives",
        "9*(J-1)",
    ),
    "eye_pose of 3 values": ({"eye_pose": np.zeros(3, np.float32)}, "eye_pose", "shape"),
    "camera of other views": ({"camera": np.ones((2, 4), np.float32)}, "camera", "N="),
    "expression 2000 keys": (
        {
            "expression": np.zeros(2000, np.float32),
            "expression_basis": np.zeros((2000, 1, 1), np.float32),
        },
        "expression",
    ),
    "65 joints": ({"joints": np.zeros((65, 3), np.float32)}, "joints", "J"),
    # values
    "inf in vertices": ({"vertices": lambda v: v * np.float32(np.inf)}, "vertices", "NaN"),
    "NaN in pose_correctives": (
        {"pose_correctives": lambda p: _nan_at(p, 1234)},
        "pose_correctives",
        "NaN",
    ),
    "NaN in skin_weights": ({"skin_weights": _nan_at}, "skin_weights", "NaN"),
    "vertices a kilometre away": ({"vertices": lambda v: v + 5e3}, "vertices", "values"),
    "float64 beyond float32": (
        {"expression": lambda e: e.astype(np.float64) + 1e300},
        "expression",
    ),
    "negative skin weight": ({"skin_weights": lambda w: w - 0.5}, "skin_weights", "values"),
    "negative uv_faces": ({"uv_faces": lambda f: f - 1}, "uv_faces", "index outside"),
    "uint64 faces past int64": (
        {"faces": lambda f: f.astype(np.uint64) + np.uint64(2**63)},
        "faces",
    ),
    "parents not a tree": ({"parents": np.array([-1, 0, 1, 4, 1], np.int32)}, "parents", "tree"),
    "parents with a cycle at the root": (
        {"parents": np.array([0, 0, 1, 1, 1], np.int32)},
        "parents",
    ),
    "duplicate joint names": (
        {"joint_names": np.array(["root", "neck", "jaw", "eye", "eye"])},
        "joint_names",
        "unique",
    ),
    "empty joint name": (
        {"joint_names": np.array(["root", "", "jaw", "eye_L", "eye_R"])},
        "joint_names",
    ),
    "a name of 5000 characters": ({"model_name": np.array("x" * 5000)}, "model_name"),
    # missing and unknown
    "no skin_weights": ({"skin_weights": None}, "missing arrays skin_weights"),
    "no format_version": ({"format_version": None}, "format_version"),
    "format_version 3": ({"format_version": np.array(3, np.int32)}, "format_version 3"),
}


@pytest.mark.parametrize("case", list(BAD_FIELDS), ids=list(BAD_FIELDS))
def test_rig_npz_fields_are_validated(rig_arrays, tmp_path, case):
    change, *fragments = BAD_FIELDS[case]
    folder = tmp_path / "bad"
    write_rig(folder, _bad(rig_arrays, **change))
    assert_one_line_error(folder, *fragments)


def test_rig_npz_never_unpickles(rig_arrays, tmp_path):
    """An object array is a pickle: reading it would run code. It is refused by its header."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    arrays = dict(rig_arrays)
    arrays["model_name"] = np.array([Payload()], dtype=object)
    arrays["vertices"] = np.array([Payload()] * 3, dtype=object)
    write_rig(tmp_path / "r", arrays)
    assert_one_line_error(tmp_path / "r", "objects")
    assert not marker.exists()


def _zip_with(arrays: dict, extra: dict[str, bytes], path: Path, replace: bool = True) -> None:
    """rig.npz from arrays, with some members' raw .npy bytes given directly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, a in arrays.items():
            if k in extra and replace:
                continue
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(a), allow_pickle=False)
            zf.writestr(f"{k}.npy", buf.getvalue())
        for k, raw in extra.items():
            zf.writestr(f"{k}.npy", raw)


def test_declared_gigabytes_are_refused_without_reading(rig_arrays, tmp_path):
    """A member whose .npy header declares 3 GB is refused from its header alone: no
    allocation, no decompression; an unknown member is never read at all."""
    huge = npy_member({"descr": "<f4", "fortran_order": False, "shape": (250_000_000, 3)})
    huge += b"\x00" * 4096  # some data: the reader must not go looking for the rest
    folder = tmp_path / "known"
    _zip_with(rig_arrays, {"pose_correctives": huge}, folder / "rig.npz")
    tracemalloc.start()
    t0 = time.perf_counter()
    msg = assert_one_line_error(folder, "pose_correctives", "declares 3000000000 bytes")
    took = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"refused in {took * 1e3:.1f} ms, peak {peak / 1e6:.1f} MB: {msg}")
    assert peak < 100e6, f"{peak / 1e6:.0f} MB allocated to refuse it"

    # a 3 GB member the add-on does not know: not read (the old reader decompressed it whole)
    folder = tmp_path / "unknown"
    _zip_with(rig_arrays, {"debug_dump": huge}, folder / "rig.npz")
    tracemalloc.start()
    rig = rigdata.load_result(folder)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rig.n_vertices == rig_arrays["vertices"].shape[0]
    assert peak < 200e6, f"{peak / 1e6:.0f} MB allocated for a member nobody reads"


def test_total_declared_size_is_capped(rig_arrays, tmp_path, monkeypatch):
    """Arrays each within the per-array cap but together beyond the total: refused from
    the headers (caps lowered here: 3 MB an array, 1 MB in all; the test-head rig's largest
    array is 2.5 MB)."""
    folder = write_rig(tmp_path / "r", rig_arrays)
    monkeypatch.setattr(rigdata, "MAX_TOTAL_BYTES", 1 << 20)
    monkeypatch.setattr(rigdata, "MAX_ARRAY_BYTES", 3 << 20)
    assert_one_line_error(folder, "arrays declare more than 1048576 bytes")


def test_rigdata_imports_without_bpy_or_torch():
    code = (
        "import sys; import blender_addon.rigdata, blender_addon.strings; "
        "bad = {'bpy', 'torch', 'mfnet_core'} & {m.split('.')[0] for m in sys.modules}; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=harness.REPO, timeout=120)


@pytest.mark.parametrize(
    "header, fragment",
    [
        ({"descr": "<U100000000", "fortran_order": False, "shape": (5,)}, "declares"),
        ({"descr": "S0", "fortran_order": False, "shape": (10**12,)}, "joint_names"),
        ({"descr": "<f4", "fortran_order": False, "shape": (5, -3)}, "malformed"),
        ({"descr": "<f4", "fortran_order": "yes", "shape": (5,)}, "malformed"),
        ({"descr": [("a", "<f4")], "fortran_order": False, "shape": (5,)}, "malformed"),
        ({"descr": "(3,)<f4", "fortran_order": False, "shape": (5,)}, "records"),
        ({"descr": "|O", "fortran_order": False, "shape": (5,)}, "objects"),
        ({"descr": "no such dtype", "fortran_order": False, "shape": (5,)}, "cannot be read"),
    ],
)
def test_crafted_npy_headers(rig_arrays, tmp_path, header, fragment):
    folder = tmp_path / "r"
    _zip_with(rig_arrays, {"joint_names": npy_member(header, b"\x00" * 64)}, folder / "rig.npz")
    assert_one_line_error(folder, "joint_names", fragment)


def test_npy_header_and_data_damage(rig_arrays, tmp_path):
    good = io.BytesIO()
    np.lib.format.write_array(good, rig_arrays["faces"])
    raw = good.getvalue()
    cases = {
        "truncated data": (raw[:-7], "truncated"),
        "trailing data": (raw + b"\x00" * 12, "more data"),
        "bad magic": (b"\x93NUMPZ" + raw[6:], "not a .npy"),
        "header too long": (b"\x93NUMPY\x02\x00" + (10**6).to_bytes(4, "little"), "header of"),
        "unknown npy version": (b"\x93NUMPY\x09\x00" + raw[8:], "version 9"),
        "header not a dict": (b"\x93NUMPY\x01\x00\x06\x00[1, 2]", "malformed"),
        "nested header": (
            b"\x93NUMPY\x01\x00" + (2000).to_bytes(2, "little") + b"(" * 1000 + b")" * 1000,
            "faces",
        ),
    }
    for name, (member, fragment) in cases.items():
        folder = tmp_path / name.replace(" ", "_")
        _zip_with(rig_arrays, {"faces": member}, folder / "rig.npz")
        assert_one_line_error(folder, "faces", fragment)


def test_not_a_zip_and_not_a_file(rig_arrays, tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "rig.npz").write_bytes(b"")
    assert_one_line_error(folder, "cannot be read")
    (folder / "rig.npz").unlink()
    np.save(folder / "rig.npz", rig_arrays["vertices"])  # a .npy, not an .npz
    os.replace(folder / "rig.npz.npy", folder / "rig.npz")
    assert_one_line_error(folder, "cannot be read")
    (folder / "rig.npz").unlink()
    os.mkfifo(folder / "rig.npz")  # a FIFO would block a reader forever
    assert_one_line_error(folder, "not a regular file")


def test_texture_and_params_problems_are_warnings(rig_arrays, tmp_path):
    folder = write_rig(tmp_path / "r", rig_arrays)
    write_png(folder / "texture.png", np.zeros((8, 8, 3), np.uint8))
    assert rigdata.load_result(folder).texture == folder / "texture.png"
    # a PNG header that declares 100000 x 100000 pixels: never handed to Blender's loader
    head = bytearray((folder / "texture.png").read_bytes())
    head[16:24] = (100_000).to_bytes(4, "big") * 2
    (folder / "texture.png").write_bytes(bytes(head))
    rig = rigdata.load_result(folder)
    assert rig.texture is None and any("100000x100000" in w for w in rig.warnings)
    (folder / "texture.png").write_bytes(b"GIF89a not a png")
    rig = rigdata.load_result(folder)
    assert rig.texture is None and any("not a PNG" in w for w in rig.warnings)
    (folder / "params.json").write_text("[" * 100_000 + "]" * 100_000)  # RecursionError
    rig = rigdata.load_result(folder)
    assert rig.params == {} and any("params.json" in w for w in rig.warnings)
    (folder / "params.json").write_text(json.dumps([1, 2]))
    assert rigdata.load_result(folder).params == {}


# --------------------------------------------------------------------------- joint names


LONG = "a_very_long_joint_name_from_some_other_rigging_convention_"  # 58 bytes


def long_named(arrays: dict, names: list[str]) -> dict:
    return dict(arrays, joint_names=np.array(names))


@pytest.mark.parametrize(
    "names",
    [
        [LONG + "root", LONG + "neck", LONG + "jaw", LONG + "eye_L", LONG + "eye_R"],
        ["root", "é" * 40, "é" * 41, "\u6f22" * 30, "\U0001f600" * 20],  # multi-byte UTF-8
        ["root", "MCH-jaw", "jaw", "tab\there", "x" * 200],  # a clash with a pivot bone
    ],
    ids=["ascii-70-bytes", "utf8", "pivot-clash"],
)
def test_joint_names_fit_blender(rig_arrays, tmp_path, names):
    rig = rigdata.load_result(write_rig(tmp_path / "r", long_named(rig_arrays, names)))
    got = rig.joint_names
    bones = got + [rigdata.pivot_bone_name(n) for n in got]
    assert len(set(bones)) == len(bones), got
    for n in got:
        for derived in (n, rigdata.pivot_bone_name(n), rigdata.corrective_key_name(n, 2, 2)):
            assert len(derived.encode("utf-8")) <= rigdata.NAME_BYTES, derived
        assert all(ord(ch) >= 32 for ch in n)
    assert got[0] == names[0] or len(names[0].encode()) > rigdata.JOINT_NAME_BYTES
    renamed = [n for n, g in zip(names, got, strict=True) if n != g]
    assert len(rig.warnings) == len(renamed) > 0
    rigdata.check_blender_names(rig)  # what the builder checks
    rig.joint_names = names
    with pytest.raises(rigdata.ResultError, match="joint names"):
        rigdata.check_blender_names(rig)


# --------------------------------------------------------------------------- fuzz


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(a), allow_pickle=True)
    return buf.getvalue()


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for k, raw in members.items():
            zf.writestr(f"{k}.npy", raw)
    return buf.getvalue()


def _fuzz_folder(tmp_path: Path) -> Path:
    """A folder in memory (tmpfs) when there is one: thousands of 3 MB writes."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        import tempfile

        return Path(tempfile.mkdtemp(prefix="mfnet-fuzz-", dir=shm))
    return tmp_path


@pytest.mark.slow  # ~20-30 s on 2 cores
def test_fuzz_the_result_folder_reader(rig_arrays, tmp_path):
    """Thousands of damaged rig.npz files made from a valid one (random truncations, bit
    flips anywhere and in the zip/.npy headers, wrong dtypes, shapes and values, lying
    headers, missing and junk members): load_result returns a rig whose invariants hold,
    or raises a one-line ResultError; nothing else, and no case hangs (a 60 s alarm per
    case)."""
    rng = np.random.default_rng(14)
    members = {k: _npy(a) for k, a in rig_arrays.items()}
    seeds = {
        "deflated": _zip(members, zipfile.ZIP_DEFLATED),
        "stored": _zip(members),
    }
    structure: dict[str, list[int]] = {}
    for name, data in seeds.items():
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            spots: list[int] = []
            for info in zf.infolist():
                start = info.header_offset
                spots += range(start, start + 30 + len(info.filename) + 128)
            spots += range(len(data) - 22 - 46 * len(zf.infolist()) - 400, len(data))
        structure[name] = [s for s in spots if 0 <= s < len(data)]
    keys = list(rig_arrays)
    dtypes = ["<U8", "S3", "<f2", ">f8", "i1", "<u8", "?", "<c8", "<M8[s]", "f4,f4", object]

    def mutate(i: int) -> tuple[str, bytes]:
        kind = i % 8
        seed_name = "deflated" if i % 16 < 8 else "stored"
        data = seeds[seed_name]
        if kind == 0:  # truncation
            n = int(rng.integers(0, len(data)))
            return f"{seed_name} truncated to {n}", data[:n]
        if kind in (1, 2):  # bit flips, anywhere or in the zip/.npy headers
            b = bytearray(data)
            where = structure[seed_name] if kind == 2 else None
            for _ in range(int(rng.integers(1, 9))):
                pos = int(rng.choice(where)) if where else int(rng.integers(0, len(b)))
                b[pos] ^= 1 << int(rng.integers(0, 8))
            return f"{seed_name} bit flips ({'headers' if where else 'anywhere'})", bytes(b)
        changed = dict(members)
        key = keys[int(rng.integers(0, len(keys)))]
        a = np.asarray(rig_arrays[key])
        if kind == 3:  # wrong dtype
            dt = dtypes[int(rng.integers(0, len(dtypes)))]
            try:
                changed[key] = _npy(a.astype(dt))
            except (TypeError, ValueError):
                changed[key] = _npy(np.zeros(a.shape, dtype=dt))
            desc = f"{key} as {dt}"
        elif kind == 4:  # wrong shape
            choice = int(rng.integers(0, 5))
            changed[key] = _npy(
                [
                    a.reshape(-1),
                    a[..., None],
                    a.reshape(-1)[: max(0, a.size - 1)],
                    np.zeros((0,) + a.shape[1:], a.dtype),
                    np.array(a.reshape(-1)[0]) if a.size else a,
                ][choice]
            )
            desc = f"{key} reshaped ({choice})"
        elif kind == 5:  # bad values
            if a.dtype.kind == "f" and a.size:
                b = a.copy()
                b.flat[int(rng.integers(0, a.size))] = rng.choice([np.nan, np.inf, -np.inf, 1e30])
            elif a.dtype.kind in "iu" and a.size:
                b = a.astype(np.int64)
                b.flat[int(rng.integers(0, a.size))] = rng.choice([-(2**40), -2, 10**9, 2**62])
            else:
                b = np.array(["x" * int(rng.integers(0, 3000))] * max(1, a.size))
            changed[key] = _npy(b)
            desc = f"{key} bad value"
        elif kind == 6:  # a header that lies about the shape, the dtype or the order
            sizes = [0, 1, 3, 5, 5782, 10**5, 10**9, 2**40]
            shape = tuple(int(x) for x in rng.choice(sizes, size=int(rng.integers(0, 4))))
            descr = str(rng.choice([a.dtype.str, "<f4", "<i4", "<U5", "|b1", ">f8"]))
            header = {"descr": descr, "fortran_order": bool(rng.integers(0, 2)), "shape": shape}
            changed[key] = npy_member(header, members[key][128 : 128 + (1 << 16)])
            desc = f"{key} header says {header}"
        else:  # missing members, junk members, random bytes
            choice = int(rng.integers(0, 3))
            if choice == 0:
                changed.pop(key)
                desc = f"{key} missing"
            elif choice == 1:
                changed[key] = rng.bytes(int(rng.integers(0, 300)))
                desc = f"{key} junk"
            else:
                return "random bytes", rng.bytes(int(rng.integers(0, 5000)))
        return desc, _zip(changed)

    folder = _fuzz_folder(tmp_path)
    n_cases = 3000
    outcomes: dict[str, int] = {"loaded": 0, "refused": 0}
    failures: list[str] = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    slowest = (0.0, "")
    t_start = time.perf_counter()
    try:
        for i in range(n_cases):
            desc, data = mutate(i)
            (folder / "rig.npz").write_bytes(data)
            t0 = time.perf_counter()
            signal.alarm(60)
            try:
                rig = rigdata.load_result(folder)
                _check_invariants(rig)
                outcomes["loaded"] += 1
            except rigdata.ResultError as e:
                outcomes["refused"] += 1
                if "\n" in str(e) or "rig.npz" not in str(e):
                    failures.append(f"case {i} ({desc}): message {str(e)!r}")
            except _Hang:
                failures.append(f"case {i} ({desc}): no answer in 60 s")
            except Exception as e:  # what the test is looking for
                failures.append(f"case {i} ({desc}): {type(e).__name__}: {e}")
            finally:
                signal.alarm(0)
            slowest = max(slowest, (time.perf_counter() - t0, desc))
    finally:
        signal.signal(signal.SIGALRM, previous)
        if folder != tmp_path:
            shutil.rmtree(folder, ignore_errors=True)
    total = time.perf_counter() - t_start
    print(
        f"fuzz: {n_cases} cases in {total:.1f} s, {outcomes}, "
        f"slowest {slowest[0] * 1e3:.0f} ms ({slowest[1]})"
    )
    assert not failures, f"{len(failures)} of {n_cases} cases:\n" + "\n".join(failures[:20])
    assert outcomes["loaded"] > 50 and outcomes["refused"] > 1000, outcomes


def _check_invariants(rig: rigdata.ResultRig) -> None:
    """What a loaded rig promises the builder (and the bpy-free helpers work on it)."""
    v, f, t = rig.n_vertices, rig.faces.shape[0], rig.uv_coords.shape[0]
    assert (
        rig.vertices.shape == (v, 3) and rig.faces.shape == (f, 3) and rig.uv_faces.shape == (f, 3)
    )
    assert (
        0 <= rig.faces.min()
        and rig.faces.max() < v
        and 0 <= rig.uv_faces.min()
        and rig.uv_faces.max() < t
    )
    j = rig.n_joints
    assert rig.pose_correctives.shape == (9 * (j - 1), v, 3) and rig.skin_weights.shape == (v, j)
    for a in (
        rig.vertices,
        rig.expression_basis,
        rig.pose_correctives,
        rig.skin_weights,
        rig.joints,
    ):
        assert np.all(np.isfinite(a))
    for q in rig.fitted_quaternions().values():
        assert np.all(np.isfinite(q))
    rigdata.check_blender_names(rig)
    rigdata.bone_specs(rig)
    rigdata.loop_arrays(rig)
    rig.expressed_joints(rig.expression)


# --------------------------------------------------------------------------- in Blender


@pytest.fixture(scope="module")
def long_names_result(tmp_path_factory) -> tuple[Path, list[str]]:
    from make_fixture_result import make_result

    folder = make_result(tmp_path_factory.mktemp("long") / "result", n_expressions=6, seed=5)
    names = [LONG + "root", LONG + "neck", "jaw", "é" * 40, LONG + "eye_R"]
    with np.load(folder / "rig.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["joint_names"] = np.array(names)
    np.savez_compressed(folder / "rig.npz", **arrays)
    return folder, names


@pytest.mark.blender
@pytest.mark.parametrize("kind", harness.KINDS)
def test_crafted_names_in_blender(kind, long_names_result, tmp_path):
    folder, names = long_names_result
    res = harness.run(kind, "check_safety.py", [tmp_path / "work", folder], tmp_path / "home")
    # packed and generated images named ../x or /abs/x: every file lands in the temp folder
    assert res["n_packed"] == 4 and res["all_inside"] and res["distinct"], res["photos"]
    assert res["outside"] == [] and res["absolute_targets"] == [], res
    assert res["result_folders_inside"], res["result_folders"]
    # joint names beyond Blender's 63 bytes: a rig, not a KeyError
    expected = rigdata.load_result(folder).joint_names
    assert res["joints"] == expected and expected[2] == "jaw" and expected != names
    assert set(expected) <= set(res["bones"]) and res["groups"] == expected
    assert {f"MCH-{n}" for n in expected} <= set(res["bones"])
    assert len(res["correctives"]) == 36 and res["drivers_valid"] and res["drivers"] >= 36
    assert sum("is named" in w for w in res["warnings"]) == 4, res["warnings"]


# --------------------------------------------------------------------------- batch


class _Batch:
    """`blender -b -P batch.py` in its own process group (as a shell runs a foreground
    job: a terminal's Ctrl-C goes to that group; the backend child has its own session, as
    BackendJob starts it, so it never sees the terminal's Ctrl-C), its output read live."""

    def __init__(self, inp: Path, out: Path, home: Path, extra: list[str]) -> None:
        harness.require("binary")
        script = harness.REPO / "blender_addon" / "batch.py"
        args = ["--input", str(inp), "--output", str(out), "--python", sys.executable, *extra]
        cmd = [harness.blender_binary(), "-b", "-noaudio", "-P", str(script), "--", *args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=harness.isolated_env(home),
            cwd=harness.REPO,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines[-60:])

    def wait_for(self, predicate, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout  # hang protection only
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                if predicate(line):
                    return line
            seen = len(self.lines)
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no such line (exit {self.proc.poll()}):\n{self.log}")

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait(self, timeout: float = 600) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f"the batch did not end in {timeout} s:\n{self.log}") from None
        self._reader.join(timeout=10)
        return rc


def _working_on(name: str):
    stages = ("photos", "landmarks", "fit", "dense", "texture", "export", "quality")
    return lambda line: any(line.startswith(f"mfnet-batch: {name}: {s}") for s in stages)


def _processes_writing(path: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in text:
            found.append(text)
    return found


@pytest.mark.blender
@pytest.mark.slow
def test_batch_output_inside_input_and_ctrl_c(tmp_path):
    from blender_addon import backend

    mpl = pytest.importorskip("matplotlib.cbook")
    grace = Path(mpl.get_sample_data("grace_hopper.jpg", asfileobj=False))
    inp = tmp_path / "in"
    out = inp / "out"  # the output inside the input
    for name in ("alice", "bob"):
        (inp / name).mkdir(parents=True)
        shutil.copy(grace, inp / name / "front.jpg")
    extra = ["--model", "test-head", "--expressions", "5", "--no-glb"]
    home = tmp_path / "home"

    # the output folder must not be the input folder itself
    same = _Batch(inp, inp, home, extra)
    assert same.wait() == 2 and "is the --input folder" in same.log

    # one Ctrl-C while Blender builds alice, with bob's backend already running ahead
    # (--prefetch 1): alice finishes, bob's backend is cancelled and nothing of his is left
    ahead_out = tmp_path / "ahead"
    ahead = _Batch(inp, ahead_out, home, extra)
    ahead.wait_for(lambda line: line.startswith("mfnet-batch: alice: building the rig"))
    ahead.ctrl_c()
    assert ahead.wait() == 130, ahead.log
    summary = json.loads((ahead_out / "summary.json").read_text())
    assert summary["succeeded"] == ["alice"] and summary["not_started"] == ["bob"], summary
    assert not (ahead_out / "bob").exists(), list((ahead_out / "bob").rglob("*"))
    assert _processes_writing(ahead_out / "bob") == [], "bob's backend outlived the batch"

    # one Ctrl-C while alice is being reconstructed: alice finishes, bob is not started
    run = _Batch(inp, out, home, extra)
    run.wait_for(_working_on("alice"))
    run.ctrl_c()
    rc = run.wait()
    assert rc == 130, f"exit {rc}:\n{run.log}"
    assert any("stopping after the current person" in ln for ln in run.lines), run.log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["signal"] == "SIGINT"
    assert summary["succeeded"] == ["alice"] and summary["not_started"] == ["bob"]
    assert summary["failed"] == [] and (out / "alice" / "alice.blend").is_file()
    assert not (out / "bob").exists()
    # the output folder inside the input was not taken for a person
    assert "out" not in [p["name"] for p in summary["people"]] + summary["not_started"]
    assert len(summary["notes"]) == 1 and str(out) in summary["notes"][0], summary["notes"]

    # two Ctrl-C while bob is being reconstructed: the batch stops at once, the backend
    # too, nothing of bob's is left; alice (done) is skipped
    again = _Batch(inp, out, home, extra)
    again.wait_for(_working_on("bob"))
    again.ctrl_c()
    time.sleep(0.5)
    t0 = time.perf_counter()
    again.ctrl_c()
    rc = again.wait()
    took = time.perf_counter() - t0
    print(f"second Ctrl-C to exit: {took:.1f} s")
    assert rc == 130, f"exit {rc}:\n{again.log}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["skipped"] == ["alice"]
    assert [f["name"] for f in summary["failed"]] == ["bob"]
    assert "interrupted" in summary["failed"][0]["reason"]
    result = out / "bob" / "result"
    assert not result.exists() and not backend.partial_folders(result)
    assert not backend.lock_path(result).exists()
    assert not list((out / "bob").glob(".*partial*")) and not (out / "bob" / "bob.blend").exists()
    assert _processes_writing(result) == [], "the backend outlived the batch"

    # SIGTERM (to Blender alone, as a service manager sends it) stops at once too
    term = _Batch(inp, out, home, extra)
    term.wait_for(_working_on("bob"))
    term.proc.send_signal(signal.SIGTERM)
    assert term.wait() == 143, term.log
    assert not result.exists() and not backend.partial_folders(result)
    assert _processes_writing(result) == [], "the backend outlived the batch"

    # and a plain rerun finishes the batch: bob is done, alice skipped, the output not a person
    last = _Batch(inp, out, home, extra)
    assert last.wait() == 0, last.log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["succeeded"] == ["bob"] and summary["skipped"] == ["alice"]
    assert summary["interrupted"] is False and summary["failed"] == [] and summary["notes"]
    assert (out / "bob" / "bob.blend").is_file()
