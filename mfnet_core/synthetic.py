"""Synthetic multi-view photos of a head with known parameters (demo, tests, benchmarks).

Deterministic from a seed; made at run time, never committed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .camera import Intrinsics, axis_angle_to_matrix, to_screen
from .flame import FLAME, FlameAssets
from .images import Photo, photo_from_array
from .render import rasterize, render_textured, vertex_normals


@dataclass
class SyntheticView:
    photo: Photo
    intrinsics: Intrinsics
    head_rot: np.ndarray  # (3,) axis-angle
    head_trans: np.ndarray  # (3,)
    landmarks_true: np.ndarray  # (68,2) exact projections
    landmarks_noisy: np.ndarray  # (68,2) with the requested pixel noise


@dataclass
class SyntheticSubject:
    params: dict[str, np.ndarray]
    vertices_true: np.ndarray  # (V,3) expressed + jaw, no head pose (FLAME axes)
    views: list[SyntheticView]


def smooth_noise_3d(
    points: np.ndarray, rng: np.random.Generator, octaves: int = 5, base_freq: float = 20.0
) -> np.ndarray:
    """(P,3) -> (P,) band-limited noise in [-1,1]: sums of random plane waves per octave."""
    out = np.zeros(len(points))
    amp_total = 0.0
    for o in range(octaves):
        freq = base_freq * 2.0**o
        amp = 0.55**o
        for _ in range(6):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            out += amp * np.sin(freq * points @ d + rng.uniform(0, 2 * np.pi))
            amp_total += amp
    return out / amp_total * 2.0


def procedural_texture(assets: FlameAssets, size: int = 512, seed: int = 0) -> np.ndarray:
    """A skin-like albedo in the model's UV layout: skin tone with mottling and pores,
    darker brows, red lips, white eyeballs with an iris, so that renders look like a face
    and give optical flow something to track. Returns (size,size,3) uint8."""
    rng = np.random.default_rng(seed)
    uv = torch.as_tensor(assets.uv.uv_coords, dtype=torch.float32)
    uv_faces = torch.as_tensor(assets.uv.uv_faces, dtype=torch.long)
    screen = torch.stack([uv[:, 0] * size, (1 - uv[:, 1]) * size, torch.ones(len(uv))], -1)
    frags = rasterize(screen, uv_faces, size, size)
    covered = frags.face_index >= 0
    # 3D position of each texel on the template mesh (attributes live on mesh vertices).
    fi = frags.face_index.clamp_min(0)
    tri = torch.as_tensor(assets.faces, dtype=torch.long)[fi]  # (S,S,3)
    verts = torch.as_tensor(assets.v_template, dtype=torch.float32)
    pos = (verts[tri] * frags.bary[..., None]).sum(-2).numpy()  # (S,S,3)
    pts = pos[covered.numpy()]

    lm = _template_landmarks(assets)
    skin = np.array([0.80, 0.60, 0.50]) * rng.uniform(0.85, 1.1, size=3).clip(0, 1.2)
    colour = np.tile(skin, (len(pts), 1))
    mottle = smooth_noise_3d(pts, rng, octaves=3, base_freq=40.0)
    pores = smooth_noise_3d(pts, rng, octaves=2, base_freq=600.0)
    colour *= (1 + 0.10 * mottle + 0.05 * pores)[:, None]
    colour = _paint_near(colour, pts, lm[17:22], 0.006, np.array([0.25, 0.17, 0.12]))
    colour = _paint_near(colour, pts, lm[22:27], 0.006, np.array([0.25, 0.17, 0.12]))
    colour = _paint_near(colour, pts, lm[48:60], 0.004, np.array([0.70, 0.30, 0.30]))
    freckles = smooth_noise_3d(pts, rng, octaves=1, base_freq=300.0) > 0.8
    colour[freckles] *= 0.8
    # Eyeballs: vertices skinned to the eye joints.
    eye_joint = np.argmax(assets.lbs_weights, axis=1)
    names = list(assets.joint_names)
    eye_ids = [names.index(n) for n in ("eye_L", "eye_R") if n in names]
    if eye_ids:
        tri_np = tri.numpy()[covered.numpy()]
        is_eye = np.isin(eye_joint[tri_np[:, 0]], eye_ids)
        centres = assets.j_regressor @ assets.v_template
        for j in eye_ids:
            sel = is_eye & (eye_joint[tri_np[:, 0]] == j)
            d = pts[sel] - centres[j]
            d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-9
            white = np.array([0.92, 0.90, 0.88])
            iris = np.array([0.30, 0.22, 0.15])
            c = np.where((d[:, 2] > 0.93)[:, None], iris, white)
            c = np.where((d[:, 2] > 0.985)[:, None], np.array([0.03, 0.03, 0.03]), c)
            colour[sel] = c
    tex = np.zeros((size, size, 3))
    tex[covered.numpy()] = colour
    return (tex.clip(0, 1) * 255).astype(np.uint8)


def _template_landmarks(assets: FlameAssets) -> np.ndarray:
    emb = assets.landmarks
    tri = assets.faces[emb.full_faces]  # (68,3)
    return (assets.v_template[tri] * emb.full_bary[..., None]).sum(1)


def _paint_near(
    colour: np.ndarray, pts: np.ndarray, anchors: np.ndarray, radius: float, target: np.ndarray
) -> np.ndarray:
    """Blends toward `target` near a polyline through the anchor points."""
    dense = np.concatenate(
        [np.linspace(a, b, 8) for a, b in zip(anchors[:-1], anchors[1:], strict=True)]
    )
    d = np.min(np.linalg.norm(pts[:, None, :] - dense[None], axis=-1), axis=1)
    w = np.exp(-((d / radius) ** 2))[:, None]
    return colour * (1 - w) + target * w


def random_params(
    flame: FLAME, rng: np.random.Generator, expression_scale: float = 0.6
) -> dict[str, np.ndarray]:
    """A plausible person: shape ~ N(0,1), a mild expression and a slightly open jaw."""
    shape = rng.normal(size=flame.n_shape).astype(np.float32)
    expr = np.zeros(flame.n_expr, dtype=np.float32)
    k = min(10, flame.n_expr)
    expr[:k] = rng.normal(scale=expression_scale, size=k)
    jaw = np.array([rng.uniform(0.0, 0.12), 0.0, 0.0], dtype=np.float32)
    return {
        "shape": shape,
        "expression": expr,
        "jaw_pose": jaw,
        "eye_pose": np.zeros(6, dtype=np.float32),
        "neck_pose": np.zeros(3, dtype=np.float32),
    }


def make_subject(
    flame: FLAME,
    texture: np.ndarray,
    *,
    seed: int = 0,
    yaws_deg: tuple[float, ...] = (-35.0, 0.0, 35.0),
    image_size: int = 1024,
    landmark_noise_px: float = 1.0,
    distance_m: float = 0.6,
    params: dict[str, np.ndarray] | None = None,
) -> SyntheticSubject:
    """Renders one synthetic person from several yaw angles with known everything."""
    rng = np.random.default_rng(seed)
    assets = flame.assets
    params = params or random_params(flame, rng)
    t = {k: torch.as_tensor(v)[None] for k, v in params.items()}
    with torch.no_grad():
        out = flame(
            shape=t["shape"],
            expression=t["expression"],
            global_pose=torch.zeros(1, 3),
            neck_pose=t["neck_pose"],
            jaw_pose=t["jaw_pose"],
            eye_pose=t["eye_pose"],
        )
    verts = out.vertices[0]
    pivot = out.joints[0, 0]
    faces = torch.as_tensor(assets.faces, dtype=torch.long)
    intr = Intrinsics.from_fov(image_size, image_size)
    cam = torch.as_tensor(intr.as_vector())[None]
    views = []
    for i, yaw in enumerate(yaws_deg):
        pitch = rng.uniform(-5, 5)
        roll = rng.uniform(-3, 3)
        rot_aa = _euler_to_axis_angle(yaw, pitch, roll)
        rot = axis_angle_to_matrix(torch.as_tensor(rot_aa, dtype=torch.float32)[None])[0]
        # Head centred in the photo (face centre ~ 4 cm above the root joint).
        trans = torch.tensor(
            [rng.uniform(-0.01, 0.01), -0.03 + rng.uniform(-0.01, 0.01), -distance_m]
        )
        v_cam = (verts - pivot) @ rot.T + pivot + trans
        screen = to_screen(v_cam[None], cam)[0]
        normals = vertex_normals(v_cam[None], faces)[0]
        sh = _random_sh(rng)
        img, mask, _ = render_textured(
            screen,
            normals,
            faces,
            torch.as_tensor(assets.uv.uv_coords),
            torch.as_tensor(assets.uv.uv_faces, dtype=torch.long),
            torch.as_tensor(texture, dtype=torch.float32) / 255.0,
            image_size,
            image_size,
            sh_coeffs=sh,
        )
        bg = _background(rng, image_size)
        m = mask[..., None].float()
        rgb = (img.clamp(0, 1) * m + bg * (1 - m)).numpy()
        rgb = (rgb * 255).round().clip(0, 255).astype(np.uint8)
        yaw_t = torch.tensor([yaw], dtype=torch.float32)
        lmk = flame.landmarks_3d(verts[None], yaw_t)[0]
        lmk_cam = (lmk - pivot) @ rot.T + pivot + trans
        lmk_px = to_screen(lmk_cam[None], cam)[0, :, :2].numpy()
        noisy = lmk_px + rng.normal(scale=landmark_noise_px, size=lmk_px.shape)
        views.append(
            SyntheticView(
                photo=photo_from_array(rgb, f"synthetic_{seed}_{i}.png"),
                intrinsics=intr,
                head_rot=rot_aa,
                head_trans=trans.numpy(),
                landmarks_true=lmk_px,
                landmarks_noisy=noisy.astype(np.float32),
            )
        )
    return SyntheticSubject(params=params, vertices_true=verts.numpy(), views=views)


def _euler_to_axis_angle(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Yaw about y, then pitch about x, then roll about z (degrees) -> axis-angle."""
    import cv2

    ry = cv2.Rodrigues(np.array([0.0, math.radians(yaw), 0.0]))[0]
    rx = cv2.Rodrigues(np.array([-math.radians(pitch), 0.0, 0.0]))[0]
    rz = cv2.Rodrigues(np.array([0.0, 0.0, math.radians(roll)]))[0]
    return cv2.Rodrigues(rz @ rx @ ry)[0][:, 0].astype(np.float32)


def _random_sh(rng: np.random.Generator) -> torch.Tensor:
    """(9,3) SH lighting: ambient plus a soft key light from the front-top-side."""
    sh = np.zeros((9, 3), dtype=np.float32)
    sh[0] = rng.uniform(0.75, 0.95)
    sh[1:4] = rng.normal(scale=0.12, size=(3, 1))
    sh[3] += 0.25  # light from the front (+z band-1 term)
    sh[4:] = rng.normal(scale=0.03, size=(5, 1))
    return torch.as_tensor(sh)


def _background(rng: np.random.Generator, size: int) -> torch.Tensor:
    """A smooth coloured gradient with mild texture, different per view."""
    y, x = np.mgrid[0:size, 0:size] / size
    c0, c1 = rng.uniform(0.2, 0.8, size=3), rng.uniform(0.2, 0.8, size=3)
    a = rng.uniform(0, 2 * np.pi)
    t = (np.cos(a) * x + np.sin(a) * y)[..., None]
    img = c0 * (1 - t) + c1 * t + 0.03 * np.sin(40 * x + 13 * y)[..., None]
    return torch.as_tensor(img.clip(0, 1), dtype=torch.float32)
