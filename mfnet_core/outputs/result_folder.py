"""Writes the result folder (docs/RESULT_FOLDER.md) atomically and safely.

Everything goes into a hidden temporary sibling folder that is renamed into place at the
end, so a failed, cancelled or interrupted run never leaves a half-written result; the
folder is claimed (checked and locked) before any work starts, and an existing folder is
only replaced with `overwrite=True` when it is an mfnet result (see "output safety" below).

Imports only numpy and PIL at module level (which the CLI has loaded anyway), so that the
CLI can check the destination before torch loads.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from mfnet_core import __version__
from mfnet_core.errors import MfnetError

try:
    import fcntl
except ImportError:  # Windows: O_EXCL lock files instead
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from mfnet_core.head.interface import HeadModel

FORMAT_VERSION = 2  # 2: key names, per-view expressions, parts, licence (docs/RESULT_FOLDER.md)


@dataclass
class RigData:
    """The arrays of rig.npz (shapes in docs/RESULT_FOLDER.md)."""

    arrays: dict[str, np.ndarray]

    @property
    def vertices(self) -> np.ndarray:
        return self.arrays["vertices"]

    @property
    def expression_basis(self) -> np.ndarray:
        return self.arrays["expression_basis"]


def build_rig(
    head: HeadModel,
    params: dict[str, np.ndarray],
    camera: np.ndarray,
    image_size: np.ndarray,
    view_names: list[str],
    n_expression_keys: int,
) -> RigData:
    """Rest mesh, bases and skinning for the fitted person, in model axes and metres."""
    shape = np.asarray(params["shape"], dtype=np.float64)
    r = head.rig_arrays(shape, n_expression_keys)
    k = r.expression_basis.shape[0]
    expression = np.zeros(k, dtype=np.float32)
    fitted = np.asarray(params["expression"], dtype=np.float32)
    expression[: min(k, fitted.shape[0])] = fitted[:k]
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int32),
        "model_kind": np.array(head.info.kind),
        "model_name": np.array(head.info.name),
        # the model's arrays times this made the head (metric size: fit/metric_scale.py)
        "model_scale": np.array(head.scale, dtype=np.float64),
        "vertices": r.rest_vertices,
        "faces": head.faces.cpu().numpy().astype(np.int32),
        "uv_coords": head.uv.uv_coords.astype(np.float32),
        "uv_faces": head.uv.uv_faces.astype(np.int32),
        "expression_basis": r.expression_basis,
        "expression": expression,
        "pose_correctives": r.pose_correctives,
        "joints": r.joints,
        "joint_expression_basis": r.joint_expression_basis,
        "joint_names": np.array(list(r.joint_names)),
        "parents": r.parents,
        "skin_weights": r.skin_weights,
        "shape": shape.astype(np.float32),
        "jaw_pose": np.asarray(params["jaw_pose"], dtype=np.float32),
        "neck_pose": np.asarray(params["neck_pose"], dtype=np.float32),
        "eye_pose": np.asarray(params["eye_pose"], dtype=np.float32),
        "head_pose": np.asarray(params["head_pose"], dtype=np.float32).reshape(-1, 3),
        "head_translation": np.asarray(params["head_translation"], dtype=np.float32).reshape(-1, 3),
        "camera": np.asarray(camera, dtype=np.float32).reshape(-1, 4),
        "image_size": np.asarray(image_size, dtype=np.int32).reshape(-1, 2),
        "view_names": np.array(view_names),
    }
    # Additions readers of format 1 may ignore: key names, each view's own expression,
    # parts and the model's licence (docs/RESULT_FOLDER.md).
    n = len(view_names)
    view_expr = np.zeros((n, k), dtype=np.float32)
    fitted_views = np.asarray(params.get("view_expression", np.tile(fitted, (n, 1))), np.float32)
    view_expr[:, : min(k, fitted_views.shape[1])] = fitted_views[:, :k]
    names = head.expression_space.names
    arrays.update(
        {
            "expression_names": np.array(
                list(names[:k]) if names else [f"exp_{i:03d}" for i in range(k)]
            ),
            "view_expressions": view_expr,
            "view_jaw_pose": np.asarray(
                params.get("view_jaw_pose", np.tile(params["jaw_pose"], (n, 1))), np.float32
            ).reshape(n, 3),
            "part_names": np.array(list(head.parts.names)),
            "face_part": head.parts.face_part.astype(np.int32),
            "part_alpha": np.array(
                [head.parts.alpha.get(n, 1.0) for n in head.parts.names], dtype=np.float32
            ),
            "licence": np.array(head.info.licence),
        }
    )
    space = head.expression_space
    if space.lower is not None and space.upper is not None:
        arrays["expression_lower"] = np.asarray(space.lower[:k], dtype=np.float32)
        arrays["expression_upper"] = np.asarray(space.upper[:k], dtype=np.float32)
    return RigData(arrays)


def _parts(rig: RigData) -> tuple[list[str], np.ndarray]:
    """Part names and (F,) part per face (one "skin" part for rigs without parts)."""
    a = rig.arrays
    if "part_names" in a and "face_part" in a:
        return [str(n) for n in a["part_names"]], np.asarray(a["face_part"])
    return ["skin"], np.zeros(len(a["faces"]), dtype=np.int64)


def write_obj(folder: Path, vertices: np.ndarray, rig: RigData, texture_name: str) -> None:
    """head.obj + head.mtl: the fitted mesh (expression and jaw applied, no head pose), one
    group and material per part (skin, teeth, eyes...), all on the one texture atlas."""
    a = rig.arrays
    names, face_part = _parts(rig)
    vertices = np.asarray(vertices)
    uv = np.asarray(a["uv_coords"])
    # One %-format over all the rows of a block (C-level, not a Python loop per row).
    chunks = [
        "# mfnet fitted head (model axes: y up, face toward +z; metres)\nmtllib head.mtl\n",
        _rows("v %.6f %.6f %.6f\n", vertices),
        _rows("vt %.6f %.6f\n", uv),
    ]
    # f v/vt per corner: columns f0 t0 f1 t1 f2 t2
    corners = np.stack([a["faces"] + 1, a["uv_faces"] + 1], axis=2).reshape(-1, 6)
    for i, name in enumerate(names):
        sel = np.flatnonzero(face_part == i)
        if not len(sel):
            continue
        chunks.append(f"g {name}\nusemtl {name}\n")
        chunks.append(_rows("f %d/%d %d/%d %d/%d\n", corners[sel]))
    (folder / "head.obj").write_text("".join(chunks))
    mtl = [
        f"newmtl {name}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {texture_name}\n"
        for name in names
    ]
    (folder / "head.mtl").write_text("\n".join(mtl))


def _rows(line: str, values: np.ndarray) -> str:
    """`line` %-formatted with each row of the (N,C) array, joined."""
    return (line * len(values)) % tuple(values.reshape(-1).tolist())


def split_by_uv(
    faces: np.ndarray, uv_faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """glTF needs one UV per vertex: split vertices on UV seams.

    Returns (vertex_index (U,), uv_index (U,), new_faces (F,3)) for the U unique pairs.
    """
    f = faces.reshape(-1).astype(np.int64)
    t = uv_faces.reshape(-1).astype(np.int64)
    # one int64 key per pair, ordered as the pairs (vertex, then uv): a 1-D unique is
    # several times faster than np.unique(axis=0) on rows
    n_uv = int(t.max()) + 1 if len(t) else 1
    unique, inverse = np.unique(f * n_uv + t, return_inverse=True)
    return unique // n_uv, unique % n_uv, inverse.reshape(-1, 3).astype(np.uint32)


def write_glb(path: Path, rig: RigData, texture_png: bytes, n_targets: int) -> None:
    """head.glb: neutral mesh, embedded texture, one morph target per expression key
    (named exp_000...) whose default weights are the fitted expression."""
    import pygltflib

    a = rig.arrays
    vidx, tidx, faces = split_by_uv(a["faces"], a["uv_faces"])
    positions = a["vertices"][vidx].astype(np.float32)
    uvs = a["uv_coords"][tidx].astype(np.float32).copy()
    uvs[:, 1] = 1.0 - uvs[:, 1]  # glTF's UV origin is top-left
    targets = a["expression_basis"][:n_targets][:, vidx].astype(np.float32, copy=False)
    weights = a["expression"][:n_targets].astype(float).tolist()

    blobs: list[bytes] = []
    views: list[pygltflib.BufferView] = []
    accessors: list[pygltflib.Accessor] = []
    offset = 0

    def add(data: bytes, target: int | None) -> int:
        nonlocal offset
        pad = (-len(data)) % 4
        blobs.append(data + b"\0" * pad)
        views.append(
            pygltflib.BufferView(buffer=0, byteOffset=offset, byteLength=len(data), target=target)
        )
        offset += len(data) + pad
        return len(views) - 1

    def accessor(arr: np.ndarray, kind: str, ctype: int, target: int | None, minmax: bool) -> int:
        view = add(arr.tobytes(), target)
        acc = pygltflib.Accessor(bufferView=view, componentType=ctype, count=len(arr), type=kind)
        if minmax:
            acc.min = arr.min(0).astype(float).tolist()
            acc.max = arr.max(0).astype(float).tolist()
        accessors.append(acc)
        return len(accessors) - 1

    array_buf, elem_buf = pygltflib.ARRAY_BUFFER, pygltflib.ELEMENT_ARRAY_BUFFER
    fl, ui = pygltflib.FLOAT, pygltflib.UNSIGNED_INT
    pos_acc = accessor(positions, pygltflib.VEC3, fl, array_buf, True)
    uv_acc = accessor(uvs, pygltflib.VEC2, fl, array_buf, False)
    part_names, face_part = _parts(rig)
    part_alpha = np.asarray(a.get("part_alpha", np.ones(len(part_names))), dtype=np.float64)
    used = [i for i in range(len(part_names)) if np.any(face_part == i)]
    idx_accs = [
        accessor(faces[face_part == i].reshape(-1), pygltflib.SCALAR, ui, elem_buf, False)
        for i in used
    ]
    # the targets' bounds in two reductions, not two per target
    t_min, t_max = targets.min(1).astype(float).tolist(), targets.max(1).astype(float).tolist()
    target_accs = []
    for t, lo, hi in zip(targets, t_min, t_max, strict=True):
        target_accs.append({"POSITION": accessor(t, pygltflib.VEC3, fl, array_buf, False)})
        accessors[-1].min, accessors[-1].max = lo, hi
    image_view = add(texture_png, None)
    if "expression_names" in a:
        names = [str(n) for n in a["expression_names"][: len(targets)]]
    else:
        names = [f"exp_{k:03d}" for k in range(len(targets))]
    primitives = [
        pygltflib.Primitive(
            attributes=pygltflib.Attributes(POSITION=pos_acc, TEXCOORD_0=uv_acc),
            indices=acc,
            material=m,
            targets=target_accs,
        )
        for m, acc in enumerate(idx_accs)
    ]
    gltf = pygltflib.GLTF2(
        asset=pygltflib.Asset(generator="mfnet", version="2.0"),
        scene=0,
        scenes=[pygltflib.Scene(nodes=[0])],
        nodes=[pygltflib.Node(mesh=0, name="head")],
        meshes=[
            pygltflib.Mesh(
                name="head", primitives=primitives, weights=weights, extras={"targetNames": names}
            )
        ],
        materials=[
            pygltflib.Material(
                name=part_names[i],
                pbrMetallicRoughness=pygltflib.PbrMetallicRoughness(
                    baseColorTexture=pygltflib.TextureInfo(index=0),
                    baseColorFactor=[1.0, 1.0, 1.0, float(part_alpha[i])],
                    metallicFactor=0.0,
                    roughnessFactor=0.7,
                ),
                # see-through parts blend by their opacity times the texture's alpha
                # (eyelash strands); opaque parts ignore the alpha channel
                alphaMode=pygltflib.BLEND if part_alpha[i] < 1.0 else pygltflib.OPAQUE,
            )
            for i in used
        ],
        textures=[pygltflib.Texture(source=0, sampler=0)],
        samplers=[pygltflib.Sampler()],
        images=[pygltflib.Image(bufferView=image_view, mimeType="image/png")],
        accessors=accessors,
        bufferViews=views,
        buffers=[pygltflib.Buffer(byteLength=offset)],
    )
    gltf.set_binary_blob(b"".join(blobs))
    gltf.save_binary(str(path))


# zlib level of the result folder's PNGs and rig.npz. Why 1: writing them took ~1 s of a
# 3-photo ICT run (12 PNGs, 31 MB of arrays); level 1 takes 0.6-0.75x the time of PNG level 3
# and 0.4x of numpy's default 6, for files 14 % (PNGs) and 8 % (npz) larger
# (docs/BENCHMARKS.md, issue 15).
ZLIB_LEVEL = 1


def save_png(path: Path, image: np.ndarray) -> bytes:
    """Writes an image and returns its PNG bytes (for embedding).

    8-bit grey, RGB and RGBA go through OpenCV's libpng with the "up" row filter and zlib's
    run-length strategy: on the result folder's images (12 of a 3-photo run) that encodes in
    0.45x PIL's time at the same zlib level, for 5 % smaller files, the same pixels (issue
    15); PIL writes anything else."""
    image = np.asarray(image)
    channels = 1 if image.ndim == 2 else image.shape[2] if image.ndim == 3 else 0
    if image.dtype != np.uint8 or channels not in (1, 3, 4):
        Image.fromarray(image).save(path, optimize=False, compress_level=ZLIB_LEVEL)
        return path.read_bytes()
    import cv2

    bgr = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}
    if channels in bgr:
        image = cv2.cvtColor(np.ascontiguousarray(image), bgr[channels])
    params = [cv2.IMWRITE_PNG_COMPRESSION, ZLIB_LEVEL, cv2.IMWRITE_PNG_FILTER]
    params += [cv2.IMWRITE_PNG_FILTER_UP, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    ok, encoded = cv2.imencode(".png", image, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path.name} as PNG")
    data = encoded.tobytes()
    path.write_bytes(data)
    return data


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """`np.savez_compressed` (same layout: one deflated .npy per key, zip64, `np.load`
    reads it) at `ZLIB_LEVEL` instead of zlib's default; no pickled objects."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=ZLIB_LEVEL) as zf:
        for key, value in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)


class BackgroundWrites:
    """Worker threads that write some of the result folder's files while the caller writes
    the others. Why: PNG and zip encoding run in zlib and libpng without the GIL, so on two
    cores they overlap the meshes' formatting (issue 15). Jobs start in the order given;
    `wait` raises the first job's error; leaving the `with` on an error drops the jobs not
    started (the folder is discarded anyway)."""

    def __init__(self, workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mfnet-write")
        self._jobs: list[Future] = []

    def submit(self, fn: Callable[..., object], *args: object) -> Future:
        job = self._pool.submit(fn, *args)
        self._jobs.append(job)
        return job

    def wait(self) -> None:
        for job in self._jobs:
            job.result()

    def __enter__(self) -> BackgroundWrites:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)
        if exc_type is None:
            self.wait()


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: object) -> object:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


# --------------------------------------------------------------------------- output safety
#
# A result folder OUT is only ever written through a claim on it (`claim_destination`): the
# checks below pass, the lock `.OUT.lock` beside it is held (flock; a lock left by a dead run
# is taken over), and the files go into `.OUT.partial-*` that `atomic_folder` renames into
# place at the end. `--overwrite` replaces only a folder that holds the marker
# `.mfnet-result` (written last, listing every file mfnet put there) and nothing else. The
# renames and the clean-ups run with SIGINT/SIGTERM/SIGHUP deferred, so an interrupt leaves
# either the old result or the new one whole and no hidden folder behind.

MARKER = ".mfnet-result"
MARKER_MAX_BYTES = 64 * 1024
# Write errors that say the destination cannot take the result (reported in one line).
STORAGE_ERRNOS = frozenset(
    getattr(errno, n)
    for n in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EIO", "EACCES", "EPERM")
    if hasattr(errno, n)
)
INTERRUPT_SIGNALS = tuple(
    getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)
)


def _test_pause(point: str) -> None:
    """Test hook: MFNET_TEST_PAUSE=<point> holds the run there for MFNET_TEST_PAUSE_S seconds
    (default 10), or until the file MFNET_TEST_RESUME exists, after saying so on stderr, so
    that tests can signal a real process at a known moment: "partial" (the partial folder
    made, nothing written yet), "export" (the files written, not yet marked and moved),
    "swap" (between the two renames)."""
    if os.environ.get("MFNET_TEST_PAUSE") == point:
        print(f"mfnet-test: paused at {point}", file=sys.stderr, flush=True)
        deadline = time.monotonic() + float(os.environ.get("MFNET_TEST_PAUSE_S", "10"))
        resume = os.environ.get("MFNET_TEST_RESUME")  # or until this file exists
        while time.monotonic() < deadline and not (resume and os.path.exists(resume)):
            time.sleep(0.02)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP arriving inside are acted on when the block ends, with the
    handlers that were installed before it (a handler's exception is raised from here)."""
    if threading.current_thread() is not threading.main_thread():
        # Python runs signal handlers in the main thread only: nothing arrives here.
        yield
        return
    pending: list[int] = []
    previous: dict[int, object] = {}

    def hold(signum: int, frame: object) -> None:
        pending.append(signum)

    for s in INTERRUPT_SIGNALS:
        h = signal.getsignal(s)
        if h is None or h == signal.SIG_IGN:  # not set from Python, or ignored: leave it
            continue
        previous[s] = h
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)  # type: ignore[arg-type]
        for s in dict.fromkeys(pending):
            h = previous[s]
            if callable(h):
                h(s, None)  # may raise (KeyboardInterrupt, the CLI's Interrupted)
            elif h == signal.SIG_DFL:
                signal.raise_signal(s)


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _absolute(out_dir: Path | str) -> Path:
    """OUT as an absolute path: its parent with symlinks resolved, its own name kept (a
    symlink named as OUT is refused, never followed)."""
    out = Path(os.path.abspath(os.fspath(out_dir)))
    if out.name in ("", ".", ".."):
        raise MfnetError(f"{out_dir}: not a folder name a result can be written to")
    return out.parent.resolve() / out.name


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def read_marker(folder: Path) -> dict | None:
    """The marker's content when `folder` is an mfnet result, else None."""
    path = folder / MARKER
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MARKER_MAX_BYTES:
            return None
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or obj.get("tool") != "mfnet":
        return None
    files = obj.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return obj


def _replaceable(out: Path) -> None:
    """Raises unless `out` is a folder that mfnet wrote and that holds nothing else."""
    try:
        if not any(os.scandir(out)):
            return  # an empty folder holds nothing to lose
    except OSError as e:
        raise MfnetError(f"cannot read {out}: {e.strerror}") from None
    marker = read_marker(out)
    if marker is None:
        raise MfnetError(
            f"{out} is not an mfnet result folder (no {MARKER} marker): --overwrite only "
            "replaces results mfnet wrote; choose another -o or remove it yourself"
        )
    ours = {*marker["files"], MARKER}
    try:
        entries = sorted(os.scandir(out), key=lambda e: e.name)
    except OSError as e:
        raise MfnetError(f"cannot read {out}: {e.strerror}") from None
    for entry in entries:
        if entry.name not in ours or not entry.is_file(follow_symlinks=False):
            raise MfnetError(
                f"{out} holds {entry.name!r}, which mfnet did not write: --overwrite "
                "refuses to delete it; move it out or choose another -o"
            )


def estimate_result_bytes(
    n_vertices: int,
    n_expression_keys: int | None,
    texture_size: int,
    image_sizes: Sequence[tuple[int, int]] = (),
    textures: int = 1,
) -> int:
    """A low estimate of a result folder's size, for refusing a run when the disk clearly
    cannot hold it (PNGs at a quarter of their raw size; a real result is larger).
    textures: texture PNGs written (2 with `--texture both`: texture_shaded.png)."""
    keys = 100 if n_expression_keys is None else n_expression_keys  # None: all (FLAME: 100)
    texture = texture_size * texture_size * 3 // 4  # texture.png, and again inside head.glb
    mesh = n_vertices * 12 * (keys + 1)  # head.glb's morph targets
    pictures = sum(int(w) * int(h) * 3 // 4 for w, h in image_sizes)  # one overlay each
    return (1 + textures) * texture + mesh + n_vertices * 40 + pictures


def check_destination(
    out_dir: Path | str,
    overwrite: bool,
    *,
    protect: Sequence[Path | str] = (),
    needed_bytes: int = 0,
) -> Path:
    """Fails early, before any work, when the result would clobber something or cannot be
    written; returns OUT as an absolute path. Nothing is created.

    protect: paths (the input photos) whose folders must never be replaced."""
    out = _absolute(out_dir)
    if out.is_symlink():
        raise MfnetError(f"{out} is a symbolic link: give the real folder as -o")
    exists = out.exists()
    if exists and not overwrite:
        raise MfnetError(f"{out} already exists; pass --overwrite to replace it")
    if exists and not out.is_dir():
        raise MfnetError(f"{out} exists and is not a folder")
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        cwd = None
    if cwd is not None and (_within(cwd, out) or _same_file(cwd, out)):
        raise MfnetError(f"{out} is the current folder or holds it: choose another -o")
    for p in protect:
        photo = Path(os.path.abspath(os.fspath(p)))
        photo = photo.parent.resolve() / photo.name
        if _within(photo, out) or _same_file(photo.parent, out):
            raise MfnetError(f"{out} holds the input photo {p}: choose another -o")
    if exists:
        _replaceable(out)
    anchor = _existing_ancestor(out.parent)
    if not anchor.is_dir():
        raise MfnetError(f"cannot create {out}: {anchor} is not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only_fs(anchor) else "permission denied"
        raise MfnetError(f"cannot write to {anchor} ({why}): choose another -o")
    if needed_bytes > 0:
        try:
            free = shutil.disk_usage(anchor).free
        except OSError:
            free = None
        if free is not None and free < needed_bytes:
            raise MfnetError(
                f"not enough free space for the result in {anchor}: about "
                f"{_mb(needed_bytes)} needed, {_mb(free)} free"
            )
    return out


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & getattr(os, "ST_RDONLY", 1))
    except (OSError, AttributeError):
        return False


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _write_error(out: Path, e: OSError) -> MfnetError:
    why = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        why = "the disk is full" if e.errno == errno.ENOSPC else "disk quota exceeded"
    return MfnetError(f"could not write the result to {out}: {why}; nothing was written")


@dataclass
class OutputClaim:
    """This process's claim on a result folder: checked, locked, parents made. Release it
    (or use it as a context manager); `atomic_folder(claim)` writes the result."""

    out_dir: Path
    overwrite: bool
    lock_path: Path
    _fd: int | None = None
    _made: tuple[Path, ...] = ()
    committed: bool = False

    def release(self) -> None:
        with signals_deferred():
            fd, self._fd = self._fd, None
            if fd is None:
                return
            try:
                st = os.fstat(fd)
                now = os.stat(self.lock_path, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                    os.unlink(self.lock_path)
            except OSError:
                pass
            finally:
                os.close(fd)
            if not self.committed:
                for d in self._made:  # parents this claim created, deepest first
                    try:
                        d.rmdir()
                    except OSError:
                        break

    def __enter__(self) -> OutputClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._fd is not None:
                self.release()


def claim_destination(
    out_dir: Path | str,
    overwrite: bool,
    *,
    protect: Sequence[Path | str] = (),
    needed_bytes: int = 0,
) -> OutputClaim:
    """Checks OUT (`check_destination`), makes its parent folders and takes the lock beside
    it, so that a second run into the same OUT stops at once with one line. Leftovers of a
    killed run into OUT are tidied: a lost `.OUT.old-*` (killed between the two renames) is
    put back when OUT is missing, partial folders are removed."""
    out = check_destination(out_dir, overwrite, protect=protect, needed_bytes=needed_bytes)
    made: list[Path] = []
    p = out.parent
    while not p.exists():
        made.append(p)
        p = p.parent
    try:
        for d in reversed(made):
            d.mkdir()
    except OSError as e:
        raise MfnetError(f"cannot create {out.parent}: {e.strerror}") from None
    claim = OutputClaim(out, overwrite, out.parent / f".{out.name}.lock", _made=tuple(made))
    with signals_deferred():
        try:
            claim._fd = _take_lock(claim.lock_path, out)
        except BaseException:
            claim.release()
            for d in made:
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise
    try:
        if _tidy_leftovers(out):  # an old result was put back: check again
            check_destination(out, overwrite, protect=protect)
    except BaseException:
        claim.release()
        raise
    return claim


def _lock_owner(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode("utf-8", "replace"))
        return f" (pid {int(info['pid'])})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _busy(out: Path, owner: str) -> MfnetError:
    return MfnetError(
        f"another mfnet run{owner} is writing {out}: wait for it to finish or choose another -o"
    )


def _take_lock(path: Path, out: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    stamp = json.dumps({"tool": "mfnet", "pid": os.getpid(), "host": platform.node()}).encode()
    while True:
        if fcntl is None:
            return _take_lock_excl(path, out, stamp)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as e:
            raise MfnetError(f"cannot write to {out.parent}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = _lock_owner(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _busy(out, owner) from None
            raise MfnetError(f"cannot lock {path}: {e.strerror}") from None
        try:  # the file may have been removed by the run that held it just before
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            os.close(fd)
            continue
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, stamp)
        return fd


def _take_lock_excl(path: Path, out: Path, stamp: bytes) -> int:
    """Where flock is missing (Windows): O_EXCL create; a lock whose pid is gone is stale."""
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                info = json.loads(path.read_text(encoding="utf-8"))
                pid = int(info["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                pid = None
            if pid is not None and pid != os.getpid() and not _pid_alive(pid):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            raise _busy(out, f" (pid {pid})" if pid else "") from None
        except OSError as e:
            raise MfnetError(f"cannot write to {out.parent}: {e.strerror}") from None
        os.write(fd, stamp)
        return fd
    raise _busy(out, "")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def leftovers(out: Path) -> list[Path]:
    """The hidden siblings a run into OUT makes (partial, old); none after it ends."""
    pattern = glob.escape(f".{out.name}")
    return sorted(p for kind in ("partial", "old") for p in out.parent.glob(f"{pattern}.{kind}-*"))


def _tidy_leftovers(out: Path) -> bool:
    """Under the lock: what a killed run into OUT left (SIGKILL, power loss). Returns True
    when an old result was put back in place."""
    restored = False
    with signals_deferred():
        for p in leftovers(out):
            if ".old-" in p.name[len(out.name) + 1 :]:
                if not out.exists() and not out.is_symlink() and read_marker(p) is not None:
                    os.replace(p, out)  # the swap was cut between its renames: old is whole
                    restored = True
                elif read_marker(p) is not None:
                    shutil.rmtree(p, ignore_errors=True)
            else:
                shutil.rmtree(p, ignore_errors=True)
    return restored


def _finish(folder: Path) -> None:
    """The marker (last, listing the files), modes from the umask, data on disk."""
    mask = _umask()
    names = sorted(e.name for e in os.scandir(folder) if e.name != MARKER)
    marker = {"tool": "mfnet", "version": __version__, "format_version": FORMAT_VERSION}
    (folder / MARKER).write_text(json.dumps({**marker, "files": names}) + "\n")
    for entry in os.scandir(folder):
        if entry.is_symlink():
            continue
        if entry.is_dir():
            os.chmod(entry.path, 0o777 & ~mask)
            continue
        os.chmod(entry.path, 0o666 & ~mask)
        fd = os.open(entry.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.chmod(folder, 0o777 & ~mask)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_folder(claim: OutputClaim | Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty hidden folder beside OUT; when the block ends without an error, the
    files get the marker and the umask's modes and the folder replaces OUT in two renames
    that signals cannot split. On an error or interrupt, nothing of the run stays.

    `claim`: a held `claim_destination(...)` (kept held), or OUT itself (claimed here)."""
    own = not isinstance(claim, OutputClaim)
    if own:
        claim = claim_destination(claim, overwrite)
    assert isinstance(claim, OutputClaim)
    out = claim.out_dir
    tmp: Path | None = None
    try:
        try:
            with signals_deferred():  # a signal held here is raised inside the try
                tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
            _test_pause("partial")
            yield tmp
            _test_pause("export")
            _finish(tmp)
            _commit(claim, tmp)
        except BaseException as e:
            if tmp is not None:
                with signals_deferred():
                    shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS and not claim.committed:
                raise _write_error(out, e) from None
            raise
    finally:
        if own:
            claim.release()


def _commit(claim: OutputClaim, tmp: Path) -> None:
    out = claim.out_dir
    try:
        with signals_deferred():
            if out.is_symlink() or out.exists():  # it may have appeared during the run
                if not claim.overwrite:
                    raise MfnetError(f"{out} appeared during the run; the new result was not kept")
                if out.is_symlink() or not out.is_dir():
                    raise MfnetError(f"{out} is no longer a folder; the new result was not kept")
                _replaceable(out)
                old = out.parent / f".{out.name}.old-{os.getpid()}"
                os.replace(out, old)
                _test_pause("swap")
                try:
                    os.replace(tmp, out)
                except OSError:
                    os.replace(old, out)  # put the old result back
                    raise
                claim.committed = True
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
                claim.committed = True
            _fsync_dir(out.parent)
    except BaseException as e:
        if claim.committed:  # an interrupt delivered after the swap: the result is whole
            with contextlib.suppress(AttributeError, TypeError):
                e.result_written = out  # type: ignore[attr-defined]
        raise
    finally:
        if claim.committed:
            _COMMITTED.append(out)


# Result folders this process has put in place: an interrupt that arrives after that (the
# CLI printing its summary, say) must not be reported as "nothing was written".
_COMMITTED: list[Path] = []


def committed_results() -> list[Path]:
    """The result folders this process has written (in order)."""
    return list(_COMMITTED)
