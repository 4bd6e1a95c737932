"""Writes a contract-conformant result folder (docs/RESULT_FOLDER.md, format_version 1)
from synthetic data: an ellipsoid "head", 5 FLAME-named joints, smooth random expression
and pose-corrective bases, smooth skin weights and a procedural texture.

numpy + zlib only, so it runs in the backend venv, in Blender's Python and in the bpy venv.
Not FLAME and not the backend's test head: model_kind is "fixture".

    python tests/blender/make_fixture_result.py OUTDIR [--flame-sized] [--expressions K] [--seed S]

--flame-sized gives FLAME's counts: 5023 vertices, 9976 faces, 100 expression keys and
36 pose-corrective keys (the rig-build benchmark uses it).

--arkit names the expression keys like ICT's ARKit keys (jawOpen, eyeLookDown_L...) with
[0, 1] bounds and leaves the jaw unskinned, as on the ICT Face Model: the add-on then
makes bone-driven DRV- keys, while the correctives and joint drift of the FLAME-style
fixture stay, so one small rig has every kind of driver (the game-export test uses it).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

JOINT_NAMES = ("root", "neck", "jaw", "eye_L", "eye_R")
PARENTS = (-1, 0, 1, 1, 1)
JOINT_TARGETS = np.array(
    [
        [0.0, -0.095, -0.01],
        [0.0, -0.065, -0.005],
        [0.0, -0.03, 0.03],
        [0.032, 0.03, 0.06],
        [-0.032, 0.03, 0.06],
    ]
)
RADII = np.array([0.075, 0.11, 0.095])
THETA_MAX = 0.85 * np.pi  # open at the bottom (a "neck hole")
# --arkit: key names (ICT spelling); the jaw and eyeLook keys get bone-driven DRV- copies
ARKIT_NAMES = (
    "jawOpen",
    "jawLeft",
    "jawRight",
    "eyeLookDown_L",
    "eyeLookUp_L",
    "eyeBlink_L",
    "eyeBlink_R",
    "mouthSmile_L",
    "mouthSmile_R",
    "browInnerUp_L",
)


def write_png(path: Path, image: np.ndarray) -> None:
    """Minimal PNG writer: (H,W,3) or (H,W) uint8."""
    img = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = img.shape[:2]
    color = 2 if img.ndim == 3 else 0
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def ellipsoid(rings: int, segs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top pole + `rings` rings of `segs` vertices; faces outward; UVs with a seam column.

    Returns vertices (V,3), faces (F,3), uv_coords (T,2), uv_faces (F,3).
    """
    theta = np.linspace(0.0, THETA_MAX, rings + 1)[1:]
    phi = np.arange(segs) * 2 * np.pi / segs
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    ring_pts = np.stack([np.sin(th) * np.sin(ph), np.cos(th), np.sin(th) * np.cos(ph)], -1) * RADII
    verts = np.concatenate([[[0.0, RADII[1], 0.0]], ring_pts.reshape(-1, 3)])

    def vid(i, s):  # ring i (0-based), segment s
        return 1 + i * segs + (s % segs)

    def tid(i, s):  # UV grid has segs+1 columns (seam duplicated)
        return 1 + i * (segs + 1) + s

    s = np.arange(segs)
    faces = [np.stack([np.zeros(segs, int), vid(0, s), vid(0, s + 1)], 1)]
    uvf = [np.stack([np.zeros(segs, int), tid(0, s), tid(0, s + 1)], 1)]
    for i in range(rings - 1):
        a, b, c, d = vid(i, s), vid(i, s + 1), vid(i + 1, s + 1), vid(i + 1, s)
        ta, tb, tc, td = tid(i, s), tid(i, s + 1), tid(i + 1, s + 1), tid(i + 1, s)
        faces += [np.stack([a, d, c], 1), np.stack([a, c, b], 1)]
        uvf += [np.stack([ta, td, tc], 1), np.stack([ta, tc, tb], 1)]
    faces = np.concatenate(faces)
    uv_faces = np.concatenate(uvf)
    # outward orientation
    tri = verts[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = np.einsum("fc,fc->f", normal, tri.mean(1)) < 0
    faces[flip] = faces[flip][:, ::-1]
    uv_faces[flip] = uv_faces[flip][:, ::-1]
    u = np.arange(segs + 1) / segs
    v = 1.0 - theta / THETA_MAX * 0.98
    uu, vv = np.meshgrid(u, v)
    uv = np.concatenate([[[0.5, 1.0]], np.stack([uu, vv], -1).reshape(-1, 2)])
    return verts, faces, uv, uv_faces


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def skin_weights(verts: np.ndarray) -> np.ndarray:
    x, y, z = verts.T
    root = _sigmoid((-0.07 - y) / 0.008)
    jaw = _sigmoid((-0.005 - y) / 0.008) * _sigmoid((z - 0.02) / 0.01) * (1 - root)
    eyes = [
        np.exp(-np.sum((verts - JOINT_TARGETS[j] * [1, 1, 1.4]) ** 2, 1) / (2 * 0.014**2))
        for j in (3, 4)
    ]
    w = np.stack([root, np.zeros_like(x), jaw, eyes[0], eyes[1]], 1)
    w[w < 2e-3] = 0.0
    w[:, 1] = np.clip(1.0 - w.sum(1), 0.0, None)
    w[w < 2e-3] = 0.0
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def smooth_fields(
    verts: np.ndarray, n: int, peak: float, rng: np.random.Generator, mask: np.ndarray | None = None
) -> np.ndarray:
    """(n,V,3) smooth random displacement fields (quadratic polynomials), max |.| = peak."""
    x, y, z = (verts / RADII).T
    mono = np.stack(
        [np.ones_like(x), x, y, z, x * y, y * z, x * z, x * x, y * y, z * z], 1
    )  # (V,10)
    coef = rng.normal(size=(n, 10, 3))
    fields = np.einsum("vm,nmc->nvc", mono, coef)
    if mask is not None:
        fields *= mask[None, :, None]
    scale = np.abs(fields).reshape(n, -1).max(1)
    return fields * (peak / np.maximum(scale, 1e-12))[:, None, None]


def make_result(
    out_dir: str | Path,
    *,
    rings: int = 16,
    segs: int = 24,
    n_expressions: int = 10,
    seed: int = 0,
    texture_size: int = 256,
    flame_sized: bool = False,
    arkit: bool = False,
) -> Path:
    """Writes the folder and returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if flame_sized:
        rings, segs, n_expressions = 81, 62, 100
    verts, faces, uv, uv_faces = ellipsoid(rings, segs)
    if flame_sized:  # FLAME: 5023 vertices, 9976 faces
        faces, uv_faces = faces[:9976], uv_faces[:9976]
    n_v = len(verts)
    face_mask = _sigmoid(verts[:, 2] / 0.02) * _sigmoid((0.07 - verts[:, 1]) / 0.01)
    expr_basis = smooth_fields(verts, n_expressions, 0.004, rng, face_mask).astype(np.float32)
    weights = skin_weights(verts)
    corr = []
    for j in range(1, 5):
        region = (
            np.clip(weights[:, j] * 4, 0, 1) if j != 1 else (1 - weights[:, 0]) * (verts[:, 1] < 0)
        )
        corr.append(smooth_fields(verts, 9, 0.006, rng, region))
    pose_correctives = np.concatenate(corr).astype(np.float32)
    if arkit:  # the jaw opens by its keys (bone-driven), not by skinning
        weights[:, 1] += weights[:, 2]
        weights[:, 2] = 0.0
    # joints and their expression drift, from a regressor over the nearest vertices
    jreg = np.zeros((5, n_v))
    for j, target in enumerate(JOINT_TARGETS):
        d = np.linalg.norm(verts - target, axis=1)
        near = np.argsort(d)[:12]
        jreg[j, near] = 1.0 / (d[near] + 1e-3)
        jreg[j] /= jreg[j].sum()
    joints = JOINT_TARGETS.astype(np.float32)
    joint_expr = np.einsum("jv,kvc->kjc", jreg, expr_basis).astype(np.float32)
    expression = (rng.normal(size=n_expressions) * 0.8).astype(np.float32)
    n_views = 3
    arrays = {
        "format_version": np.array(1, dtype=np.int32),
        "model_kind": np.array("fixture"),
        "model_name": np.array("fixture (synthetic, not FLAME)"),
        "vertices": verts.astype(np.float32),
        "faces": faces.astype(np.int32),
        "uv_coords": uv.astype(np.float32),
        "uv_faces": uv_faces.astype(np.int32),
        "expression_basis": expr_basis,
        "expression": expression,
        "pose_correctives": pose_correctives,
        "joints": joints,
        "joint_expression_basis": joint_expr,
        "joint_names": np.array(JOINT_NAMES),
        "parents": np.array(PARENTS, dtype=np.int32),
        "skin_weights": weights,
        "shape": np.zeros(10, dtype=np.float32),
        "jaw_pose": np.array([0.12, 0.0, 0.01], dtype=np.float32),
        "neck_pose": np.array([0.05, -0.1, 0.0], dtype=np.float32),
        "eye_pose": np.array([0.0, 0.08, 0.0, 0.0, 0.08, 0.0], dtype=np.float32),
        "head_pose": np.zeros((n_views, 3), dtype=np.float32),
        "head_translation": np.tile(np.array([0.0, 0.0, -0.6], dtype=np.float32), (n_views, 1)),
        "camera": np.tile(np.array([1200.0, 1200.0, 512.0, 512.0], dtype=np.float32), (n_views, 1)),
        "image_size": np.tile(np.array([1024, 1024], dtype=np.int32), (n_views, 1)),
        "view_names": np.array(["left", "front", "right"]),
    }
    if arkit:
        if n_expressions > len(ARKIT_NAMES):
            raise ValueError(f"--arkit names at most {len(ARKIT_NAMES)} keys")
        expression = (rng.uniform(size=n_expressions) * 0.3).astype(np.float32)
        arrays["expression"] = expression
        arrays["expression_names"] = np.array(ARKIT_NAMES[:n_expressions])
        arrays["expression_lower"] = np.zeros(n_expressions, dtype=np.float32)
        arrays["expression_upper"] = np.ones(n_expressions, dtype=np.float32)
    np.savez_compressed(out / "rig.npz", **arrays)
    s = texture_size
    yy, xx = np.mgrid[0:s, 0:s] / s
    checker = ((np.floor(xx * 8) + np.floor(yy * 8)) % 2)[..., None]
    tex = np.concatenate(
        [0.55 + 0.35 * xx[..., None], 0.45 + 0.25 * yy[..., None], 0.4 + 0.1 * checker], -1
    )
    write_png(out / "texture.png", (np.clip(tex, 0, 1) * 255).astype(np.uint8))
    write_png(out / "texture_mask.png", np.full((s, s), 255, np.uint8))
    params = {
        "format_version": 1,
        "model": {"kind": "fixture", "name": "fixture", "sha256": None},
        "expression": expression.tolist(),
        "jaw_pose": arrays["jaw_pose"].tolist(),
        "neck_pose": arrays["neck_pose"].tolist(),
        "eye_pose": arrays["eye_pose"].tolist(),
    }
    (out / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    (out / "report.json").write_text(
        json.dumps({"model_kind": "fixture", "views": ["left", "front", "right"], "warnings": []})
        + "\n"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output")
    ap.add_argument("--flame-sized", action="store_true")
    ap.add_argument("--expressions", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arkit", action="store_true")
    args = ap.parse_args(argv)
    path = make_result(
        args.output,
        n_expressions=args.expressions,
        seed=args.seed,
        flame_sized=args.flame_sized,
        arkit=args.arkit,
    )
    print(json.dumps({"result_dir": str(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
