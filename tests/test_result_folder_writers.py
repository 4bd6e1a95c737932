"""The result folder's mesh writers against the plain per-row formulations they replaced
(issue 15: the same files, written faster)."""

from __future__ import annotations

import numpy as np
import pygltflib
import pytest
from PIL import Image

from mfnet_core.outputs.result_folder import (
    BackgroundWrites,
    RigData,
    save_npz,
    save_png,
    split_by_uv,
    write_glb,
    write_obj,
)


def _rig(rng: np.random.Generator) -> RigData:
    n_v, n_t, n_f = 40, 55, 60
    return RigData(
        {
            "vertices": rng.normal(size=(n_v, 3)).astype(np.float32),
            "faces": rng.integers(0, n_v, size=(n_f, 3)).astype(np.int32),
            "uv_coords": rng.uniform(size=(n_t, 2)).astype(np.float32),
            "uv_faces": rng.integers(0, n_t, size=(n_f, 3)).astype(np.int32),
            "expression_basis": rng.normal(size=(4, n_v, 3)).astype(np.float32),
            "expression": rng.normal(size=4).astype(np.float32),
            "part_names": np.array(["skin", "teeth", "unused"]),
            "face_part": (np.arange(n_f) % 2).astype(np.int32),
        }
    )


def test_obj_is_the_per_row_format(tmp_path):
    rig = _rig(np.random.default_rng(0))
    verts = rig.vertices * 1.5
    write_obj(tmp_path, verts, rig, "texture.png")
    a = rig.arrays
    lines = ["# mfnet fitted head (model axes: y up, face toward +z; metres)", "mtllib head.mtl"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in a["uv_coords"]]
    f, ft = a["faces"] + 1, a["uv_faces"] + 1
    for i, name in enumerate(["skin", "teeth"]):
        sel = np.flatnonzero(a["face_part"] == i)
        lines += [f"g {name}", f"usemtl {name}"]
        lines += [
            f"f {f0}/{t0} {f1}/{t1} {f2}/{t2}"
            for (f0, f1, f2), (t0, t1, t2) in zip(f[sel].tolist(), ft[sel].tolist(), strict=True)
        ]
    assert (tmp_path / "head.obj").read_text() == "\n".join(lines) + "\n"


def test_split_by_uv_is_the_row_unique():
    rng = np.random.default_rng(1)
    faces = rng.integers(0, 30, size=(80, 3))
    uv_faces = rng.integers(0, 45, size=(80, 3))
    pairs = np.stack([faces.reshape(-1), uv_faces.reshape(-1)], axis=1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    vidx, tidx, new_faces = split_by_uv(faces, uv_faces)
    assert np.array_equal(vidx, unique[:, 0]) and np.array_equal(tidx, unique[:, 1])
    assert np.array_equal(new_faces, inverse.reshape(-1, 3)) and new_faces.dtype == np.uint32


def test_glb_target_bounds(tmp_path):
    rig = _rig(np.random.default_rng(2))
    write_glb(tmp_path / "head.glb", rig, b"\x89PNG", n_targets=4)
    gltf = pygltflib.GLTF2().load(str(tmp_path / "head.glb"))
    vidx, _, _ = split_by_uv(rig.arrays["faces"], rig.arrays["uv_faces"])
    targets = rig.expression_basis[:, vidx]
    for k, target in enumerate(gltf.meshes[0].primitives[0].targets):
        acc = gltf.accessors[target["POSITION"]]
        assert np.allclose(acc.min, targets[k].min(0)) and np.allclose(acc.max, targets[k].max(0))


def test_background_writes_run_and_raise(tmp_path):
    """Files written on worker threads are there after `wait`; a job's error reaches the
    caller (the result folder is then discarded)."""
    with BackgroundWrites() as writes:
        png = writes.submit(save_png, tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
        writes.submit(save_npz, tmp_path / "b.npz", {"x": np.arange(5)})
        writes.wait()
        assert png.result() == (tmp_path / "a.png").read_bytes()
        assert np.array_equal(np.load(tmp_path / "b.npz")["x"], np.arange(5))

    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), BackgroundWrites() as writes:
        writes.submit(fail)


def test_png_pixels_round_trip(tmp_path):
    """save_png (OpenCV's encoder for 8-bit images) writes the pixels PIL reads back, in RGB
    order, and returns the file's bytes; other images go through PIL."""
    rng = np.random.default_rng(4)
    for shape in [(20, 30), (20, 30, 3), (20, 30, 4)]:
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        data = save_png(tmp_path / "x.png", image)
        assert data == (tmp_path / "x.png").read_bytes()
        assert np.array_equal(np.asarray(Image.open(tmp_path / "x.png")), image)
    deep = rng.integers(0, 65536, size=(20, 30), dtype=np.uint16)
    save_png(tmp_path / "deep.png", deep)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "deep.png")), deep)
