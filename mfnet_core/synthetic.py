"""Synthetic multi-view photos of a head with known parameters (demo, tests, benchmarks).

Deterministic from a seed; made at run time, never committed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mfnet_core.camera import (
    Intrinsics,
    axis_angle_to_matrix,
    axis_angle_to_matrix_np,
    matrix_to_axis_angle,
    to_screen,
)
from mfnet_core.head.interface import HeadModel
from mfnet_core.inputs.images import Photo, photo_from_array
from mfnet_core.render import rasterize, render_textured, vertex_normals


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

    def fit_params(self) -> dict[str, np.ndarray]:
        """The truth in `fitting.set_params`'s keys, to start a fitter at it."""
        return {
            "shape": self.params["shape"],
            "expression": self.params["expression"],
            "jaw_pose": self.params["jaw_pose"],
            "head_pose": np.stack([v.head_rot for v in self.views]),
            "head_translation": np.stack([v.head_trans for v in self.views]),
        }


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


def procedural_texture(head: HeadModel, size: int = 512, seed: int = 0) -> np.ndarray:
    """A skin-like albedo in the model's UV layout: skin tone with mottling and pores,
    darker brows, red lips, white eyeballs with an iris, so that renders look like a face
    and give optical flow something to track. Returns (size,size,3) uint8."""
    rng = np.random.default_rng(seed)
    template = TemplateGeometry.of(head)
    uv = torch.as_tensor(template.uv_coords, dtype=torch.float32)
    uv_faces = torch.as_tensor(template.uv_faces, dtype=torch.long)
    screen = torch.stack([uv[:, 0] * size, (1 - uv[:, 1]) * size, torch.ones(len(uv))], -1)
    frags = rasterize(screen, uv_faces, size, size)
    covered = frags.face_index >= 0
    # 3D position of each texel on the template mesh (attributes live on mesh vertices).
    fi = frags.face_index.clamp_min(0)
    tri = torch.as_tensor(template.faces, dtype=torch.long)[fi]  # (S,S,3)
    verts = torch.as_tensor(template.vertices, dtype=torch.float32)
    pos = (verts[tri] * frags.bary[..., None]).sum(-2).numpy()  # (S,S,3)
    pts = pos[covered.numpy()]

    lm = template.landmarks
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
    eye_joint, eye_ids, centres = template.eye_joint, template.eye_ids, template.joints
    if eye_ids:
        tri_np = tri.numpy()[covered.numpy()]
        is_eye = np.isin(eye_joint[tri_np[:, 0]], eye_ids)
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


@dataclass(frozen=True)
class TemplateGeometry:
    """What the procedural textures paint on: the head model's mean mesh (numpy, metres),
    its UV layout, frontal landmarks and which vertices ride on the eye joints."""

    vertices: np.ndarray  # (V,3)
    faces: np.ndarray  # (F,3)
    uv_coords: np.ndarray  # (T,2)
    uv_faces: np.ndarray  # (F,3)
    landmarks: np.ndarray  # (68,3) frontal embedding
    eye_joint: np.ndarray  # (V,) the joint each vertex follows most
    eye_ids: list[int]  # the eye joints' indices
    joints: np.ndarray  # (J,3) rest joint positions

    @staticmethod
    def of(head: HeadModel) -> TemplateGeometry:
        rig = head.rig_arrays(np.zeros(0), 0)
        faces = head.faces.cpu().numpy()
        emb = head.landmark_embedding
        verts = rig.rest_vertices  # float32, as the model stores it
        lm = (verts[faces[emb.full_faces]] * emb.full_bary[..., None]).sum(1)
        names = list(rig.joint_names)
        return TemplateGeometry(
            vertices=verts,
            faces=faces,
            uv_coords=head.uv.uv_coords,
            uv_faces=head.uv.uv_faces,
            landmarks=lm,
            eye_joint=np.argmax(rig.skin_weights, axis=1),
            eye_ids=[names.index(n) for n in ("eye_L", "eye_R") if n in names],
            joints=rig.joints,
        )


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


def drawn_faces(head: HeadModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(F',3) faces and (F',3) uv faces a photo renderer draws: the see-through overlays
    (the ICT eye-occlusion shell, lacrimal fluid) are left out, or they hide the eyes."""
    drawn = torch.as_tensor(head.parts.opaque())
    return head.faces.cpu()[drawn], torch.as_tensor(head.uv.uv_faces, dtype=torch.long)[drawn]


def random_params(
    head: HeadModel, rng: np.random.Generator, expression_scale: float = 0.6
) -> dict[str, np.ndarray]:
    """A plausible person: shape ~ N(0,1), a mild expression and a slightly open jaw."""
    shape = rng.normal(size=head.n_shape).astype(np.float32)
    space = head.expression_space
    expr = np.zeros(head.n_expr, dtype=np.float32)
    jaw = np.zeros(3, dtype=np.float32)
    if space.prior == "weights":  # blendshape weights: a few keys a little on, in bounds
        on = rng.uniform(size=head.n_expr) < 0.25
        expr[on] = rng.uniform(0.0, expression_scale * 0.5, size=int(on.sum()))
        expr = np.clip(expr, space.lower, space.upper).astype(np.float32)
    else:
        k = min(10, head.n_expr)
        expr[:k] = rng.normal(scale=expression_scale, size=k)
    if "jaw" in head.posed_joints:
        jaw[0] = rng.uniform(0.0, 0.12)
    return {
        "shape": shape,
        "expression": expr,
        "jaw_pose": jaw,
        "eye_pose": np.zeros(6, dtype=np.float32),
        "neck_pose": np.zeros(3, dtype=np.float32),
    }


def make_subject(
    head: HeadModel,
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
    params = params or random_params(head, rng)
    t = {k: torch.as_tensor(v)[None] for k, v in params.items()}
    with torch.no_grad():
        out = head(
            shape=t["shape"],
            expression=t["expression"],
            global_pose=torch.zeros(1, 3),
            neck_pose=t["neck_pose"],
            jaw_pose=t["jaw_pose"],
            eye_pose=t["eye_pose"],
        )
    verts = out.vertices[0]
    pivot = out.joints[0, 0]
    faces, uv_faces_drawn = drawn_faces(head)
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
            torch.as_tensor(head.uv.uv_coords),
            uv_faces_drawn,
            torch.as_tensor(texture, dtype=torch.float32) / 255.0,
            image_size,
            image_size,
            sh_coeffs=sh,
            normals_kind="normals",
        )
        bg = _background(rng, image_size)
        m = mask[..., None].float()
        rgb = (img.clamp(0, 1) * m + bg * (1 - m)).numpy()
        rgb = (rgb * 255).round().clip(0, 255).astype(np.uint8)
        yaw_t = torch.tensor([yaw], dtype=torch.float32)
        lmk = head.landmarks_3d(verts[None], yaw_t)[0]
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

    ry = axis_angle_to_matrix_np(np.array([0.0, math.radians(yaw), 0.0]))
    rx = axis_angle_to_matrix_np(np.array([-math.radians(pitch), 0.0, 0.0]))
    rz = axis_angle_to_matrix_np(np.array([0.0, 0.0, math.radians(roll)]))
    return matrix_to_axis_angle(rz @ rx @ ry).astype(np.float32)


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


# ------------------------------------------------------------------------------------------
# The realistic set: detailed skin, shared lighting with per-view exposure, expression and
# camera jitter, cluttered backgrounds, detector-like landmark errors.


def _texel_geometry(
    template: TemplateGeometry, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels covered by the UV layout: (S,S) bool, their (P,3) template positions and
    (P,) face ids."""
    uv = torch.as_tensor(template.uv_coords, dtype=torch.float32)
    uv_faces = torch.as_tensor(template.uv_faces, dtype=torch.long)
    screen = torch.stack([uv[:, 0] * size, (1 - uv[:, 1]) * size, torch.ones(len(uv))], -1)
    frags = rasterize(screen, uv_faces, size, size)
    covered = (frags.face_index >= 0).numpy()
    fi = frags.face_index.clamp_min(0).numpy()[covered]
    bary = frags.bary.numpy()[covered]
    tri = template.faces[fi]
    pos = (template.vertices[tri] * bary[..., None]).sum(1)
    return covered, pos, fi


def value_noise_3d(
    points: np.ndarray, rng: np.random.Generator, cell: float, extent: float = 0.4
) -> np.ndarray:
    """(P,3) metres -> (P,) smooth noise in about [-1,1] with feature size `cell` metres:
    a blurred random lattice interpolated trilinearly (no visible grid). `extent` (metres)
    is the size over which it does not repeat when the cell allows. Fast for millions of
    points."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    # A periodic lattice of at most 64^3 cells, randomly rotated and shifted: fine noise
    # repeats every 64 cells, along a direction that hides the period.
    n = min(int(math.ceil(extent / cell)) + 4, 64)
    grid = gaussian_filter(rng.normal(size=(n, n, n)), 0.7, mode="wrap")
    grid /= grid.std() + 1e-12
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    coords = (points @ q).T / cell + rng.uniform(0, n, size=(3, 1))
    return np.clip(map_coordinates(grid, coords, order=1, mode="grid-wrap") / 2.0, -1.5, 1.5)


def _polyline_distance(points: np.ndarray, anchors: np.ndarray, n: int = 12) -> np.ndarray:
    """(P,) distance of each point to the polyline through `anchors` (3D, metres)."""
    from scipy.spatial import cKDTree

    dense = np.concatenate(
        [
            np.linspace(a, b, n, endpoint=False)
            for a, b in zip(anchors[:-1], anchors[1:], strict=True)
        ]
        + [anchors[-1:]]
    )
    return cKDTree(dense).query(points)[0]


def skin_texture(head: HeadModel, size: int = 1024, seed: int = 0) -> np.ndarray:
    """A detailed, low-contrast procedural skin albedo in the model's UV layout.

    Unlike `procedural_texture` (bold blotches, easy for optical flow), this aims at what a
    camera sees on real skin at ~0.4 mm per pixel: a per-person tone, regional colour (redder
    cheeks, nose and lips, darker eyelids, optional stubble on the jaw and upper lip),
    mottling of a few percent at 5-30 mm, pores and fine grain at 0.5-2 mm, a few dozen
    freckles and moles, eyebrows made of hair-like strokes, lips with fine vertical lines,
    eyeballs with an iris. Deterministic from `seed`. Returns (size,size,3) uint8.
    """
    rng = np.random.default_rng(seed)
    template = TemplateGeometry.of(head)
    covered, pts, fi = _texel_geometry(template, size)
    lm = template.landmarks
    # Person: skin tone from light to dark, slightly varied hue.
    lightness = rng.uniform(0.45, 1.0)
    base = np.array([0.86, 0.66, 0.55]) * lightness + np.array([0.0, 0.02, 0.03]) * rng.normal(
        size=3
    )
    colour = np.tile(base, (len(pts), 1))
    # Regional colour.
    eye_d = float(np.linalg.norm(lm[45] - lm[36]))
    cheek_l = lm[[2, 31]].mean(0) * 0.5 + lm[[41]].mean(0) * 0.5
    cheek_r = lm[[14, 35]].mean(0) * 0.5 + lm[[46]].mean(0) * 0.5
    red = np.array([0.08, -0.04, -0.03]) * rng.uniform(0.5, 1.5)
    for c in (cheek_l, cheek_r, lm[30]):
        w = np.exp(-((np.linalg.norm(pts - c, axis=1) / (0.45 * eye_d)) ** 2))
        colour += red * w[:, None]
    for e in (lm[36:42].mean(0), lm[42:48].mean(0)):  # darker, slightly violet eyelids
        w = np.exp(-((np.linalg.norm(pts - e, axis=1) / (0.28 * eye_d)) ** 2))
        colour *= (1 - 0.12 * w)[:, None]
    # Mottling and grain (multiplicative, a few percent).
    shade = (
        0.035 * value_noise_3d(pts, rng, 0.03)
        + 0.03 * value_noise_3d(pts, rng, 0.01)
        + 0.025 * value_noise_3d(pts, rng, 0.004)
        + 0.03 * value_noise_3d(pts, rng, 0.0015)
    )
    hue = 0.02 * value_noise_3d(pts, rng, 0.012)
    colour *= (1 + shade)[:, None]
    colour[:, 0] *= 1 + hue
    # Pores: small dark dots where a fine noise peaks.
    pores = value_noise_3d(pts, rng, 0.0009)
    colour *= (1 - 0.10 * np.clip((pores - 0.55) / 0.4, 0, 1))[:, None]
    # Stubble for some people: fine dark grain on the jaw, chin and upper lip.
    if rng.uniform() < 0.4:
        jaw = _polyline_distance(pts, lm[2:15])
        lip = _polyline_distance(pts, lm[[48, 50, 51, 52, 54]])
        area = np.exp(-((jaw / (0.5 * eye_d)) ** 2)) + np.exp(-((lip / (0.18 * eye_d)) ** 2))
        grain = np.clip(value_noise_3d(pts, rng, 0.0007) + 0.3, 0, 1)
        colour *= (1 - rng.uniform(0.15, 0.35) * np.clip(area, 0, 1) * grain)[:, None]
    # Freckles and moles.
    skin = np.ones(len(pts), bool)
    n_spots = int(rng.integers(15, 80))
    centres = pts[rng.choice(len(pts), n_spots, replace=False)]
    from scipy.spatial import cKDTree

    tree = cKDTree(pts)
    for c in centres:
        r = rng.uniform(0.0008, 0.0025)
        idx = tree.query_ball_point(c, 1.5 * r)
        if not idx:
            continue
        d = np.linalg.norm(pts[idx] - c, axis=1)
        w = np.exp(-((d / r) ** 2)) * rng.uniform(0.15, 0.45)
        colour[idx] = (
            colour[idx] * (1 - w[:, None]) + np.array([0.35, 0.22, 0.15]) * lightness * w[:, None]
        )
    # Eyebrows: strokes = anisotropic fine noise near the brow line.
    hair = np.array([0.18, 0.12, 0.08]) * rng.uniform(0.6, 1.6)
    for brow in (lm[17:22], lm[22:27]):
        d = _polyline_distance(pts, brow)
        w = np.exp(-((d / (0.09 * eye_d)) ** 4))
        strokes = np.clip(0.6 + value_noise_3d(pts * np.array([3.0, 0.6, 3.0]), rng, 0.003), 0, 1)
        a = np.clip(w * strokes * 1.1, 0, 1)[:, None]
        colour = colour * (1 - a) + hair * a
        skin &= w < 0.5
    # Lips: redder, darker, fine vertical lines.
    d_lip = _polyline_distance(pts, lm[[48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 48]])
    w = np.exp(-((d_lip / (0.07 * eye_d)) ** 2))
    lines = 1 + 0.08 * value_noise_3d(pts * np.array([4.0, 0.5, 4.0]), rng, 0.002)
    lip_col = np.array([0.72, 0.36, 0.36]) * (0.7 + 0.3 * lightness) * rng.uniform(0.85, 1.1)
    colour = colour * (1 - w[:, None]) + (lip_col * lines[:, None]) * w[:, None]
    # Eyeballs.
    eye_joint, eye_ids, centres_j = template.eye_joint, template.eye_ids, template.joints
    if eye_ids:
        tri = template.faces[fi]
        iris = np.array([0.25, 0.18, 0.1]) * rng.uniform(0.5, 2.0, size=3)
        for j in eye_ids:
            sel = eye_joint[tri[:, 0]] == j
            d = pts[sel] - centres_j[j]
            d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-9
            c = np.where(
                (d[:, 2] > 0.93)[:, None], np.clip(iris, 0, 1), np.array([0.9, 0.87, 0.85])
            )
            c = np.where((d[:, 2] > 0.985)[:, None], np.array([0.03, 0.03, 0.03]), c)
            colour[sel] = c
    tex = np.zeros((size, size, 3))
    tex[covered] = colour
    return (tex.clip(0, 1) * 255).round().astype(np.uint8)


@dataclass(frozen=True)
class LandmarkErrorModel:
    """Detector-like landmark errors, in pixels for a face 400 px tall (scaled with the face).

    Real detectors are biased per person and per group, not just noisy: the jaw contour
    slides along the jaw and sits inside the true silhouette on turned faces, the brows and
    the nose tip come out a few pixels high or low for a given person, every view adds its
    own smaller group offsets, and each point has its own jitter. Defaults give a mean error
    of ~3.5 px on a 400 px face (about 3% of the inter-ocular distance: the level of a good
    modern detector; dlib's is about twice that).
    """

    noise_px: float = 1.5  # per point, per view
    contour_slide_px: float = 6.0  # per subject and side, along the jaw
    contour_inward_px: float = 2.0  # mean inward shift of the contour (towards the face)
    contour_far_side_px: float = 4.0  # extra inward shift of the far-side contour, turned views
    brow_px: float = 3.0  # per subject, along the face's vertical
    nose_px: float = 2.5  # per subject, along the face's vertical
    eye_px: float = 1.0  # per subject
    mouth_px: float = 1.5  # per subject
    view_group_px: float = 1.5  # per view and group

    def apply(
        self,
        landmarks: np.ndarray,
        yaw_deg: float,
        person: dict[str, np.ndarray],
        rng: np.random.Generator,
    ) -> np.ndarray:
        """landmarks (68,2) exact -> (68,2) with errors; `person` from `person_bias`."""
        lm = np.asarray(landmarks, np.float64)
        out = lm.copy()
        s = (np.ptp(lm[:, 1]) + 1e-9) / 400.0
        up = lm[27] - lm[8]
        up /= np.linalg.norm(up) + 1e-12
        right = np.array([-up[1], up[0]])
        centre = lm[[27, 30, 33]].mean(0)
        # Contour: slide along its tangent, shift along its inward normal.
        tang = np.gradient(lm[:17], axis=0)
        tang /= np.linalg.norm(tang, axis=1, keepdims=True) + 1e-12
        inward = centre - lm[:17]
        inward -= (inward * tang).sum(1, keepdims=True) * tang
        inward /= np.linalg.norm(inward, axis=1, keepdims=True) + 1e-12
        for side, idx in (("right", range(0, 9)), ("left", range(8, 17))):
            idx = list(idx)
            slide = person[f"slide_{side}"] + self.view_group_px * rng.normal()
            shift = self.contour_inward_px + person[f"inward_{side}"]
            far = (side == "left" and yaw_deg > 12) or (side == "right" and yaw_deg < -12)
            if far:
                shift += self.contour_far_side_px * min(abs(yaw_deg) / 35.0, 1.5)
            taper = np.sin(np.linspace(0, np.pi / 2, len(idx)))  # chin point moves least
            taper = taper[::-1] if side == "left" else taper
            out[idx] += s * (slide * taper[:, None] * tang[idx] + shift * inward[idx])
        groups = {
            "brow": (list(range(17, 27)), up),
            "nose": (list(range(30, 36)), up),
            "eye": (list(range(36, 48)), up),
            "mouth": (list(range(48, 68)), up),
        }
        for name, (idx, axis) in groups.items():
            off = person[name][0] * axis + person[name][1] * right
            off = off + self.view_group_px * rng.normal(size=2)
            out[idx] += s * off
        out[27:31] += s * person["nose"][0] * np.linspace(0, 1, 4)[:, None] * up
        out += s * self.noise_px * rng.normal(size=out.shape)
        return out.astype(np.float32)

    def person_bias(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One subject's systematic offsets (shared by all views)."""
        return {
            "slide_right": rng.normal() * self.contour_slide_px,
            "slide_left": rng.normal() * self.contour_slide_px,
            "inward_right": rng.normal() * 0.5 * self.contour_inward_px,
            "inward_left": rng.normal() * 0.5 * self.contour_inward_px,
            "brow": rng.normal(size=2) * np.array([self.brow_px, 0.3 * self.brow_px]),
            "nose": rng.normal(size=2) * np.array([self.nose_px, 0.3 * self.nose_px]),
            "eye": rng.normal(size=2) * self.eye_px,
            "mouth": rng.normal(size=2) * np.array([self.mouth_px, 0.5 * self.mouth_px]),
        }


@dataclass
class RealisticOptions:
    """What varies in `make_realistic_subject` (all drawn from the seed)."""

    yaws_deg: tuple[float, ...] = (-35.0, 0.0, 35.0)
    image_size: int = 1024
    texture_size: int = 1024
    distance_m: float = 0.6
    yaw_jitter_deg: float = 3.0
    pitch_deg: float = 6.0  # uniform +-
    roll_deg: float = 4.0
    expression_jitter: float = 0.08  # per-view change of the first 10 expression coefficients
    jaw_jitter: float = 0.01  # rad
    exposure: float = 0.25  # per-view gain in [1 - e, 1 + e]
    white_balance: float = 0.06  # per-view, per-channel
    light_jitter: float = 0.1  # per-view change of the SH light (relative)
    sensor_noise: float = 1.5  # grey levels (of 255)
    blur_px: float = 0.6  # lens / demosaicing blur, sigma in pixels at 1024
    landmarks: LandmarkErrorModel = LandmarkErrorModel()


def make_realistic_subject(
    head: HeadModel,
    seed: int = 0,
    options: RealisticOptions | None = None,
    texture: np.ndarray | None = None,
    params: dict[str, np.ndarray] | None = None,
) -> SyntheticSubject:
    """A synthetic person photographed from several yaws, made to test dense fitting.

    One shape, expression and jaw (the ground truth, `vertices_true`); each view adds a small
    expression and jaw change (people do not hold still between photos) and its own head pose
    jitter. Lighting: one SH environment in camera space shared by the views (the person turns
    in front of the camera, so the shading on the face changes with the pose, as it does in
    real photos), perturbed a little per view, then a per-view exposure and white balance,
    lens blur and sensor noise. Cluttered, different backgrounds. Landmarks: exact projections
    (`landmarks_true`) and detector-like errors (`landmarks_noisy`, `LandmarkErrorModel`).
    Deterministic from `seed`.
    """
    o = options or RealisticOptions()
    rng = np.random.default_rng([seed, 7])
    if texture is None:
        texture = skin_texture(head, o.texture_size, seed=seed)
    params = params or random_params(head, rng)
    faces, uv_faces = drawn_faces(head)
    uv = torch.as_tensor(head.uv.uv_coords)
    tex_t = torch.as_tensor(texture, dtype=torch.float32) / 255.0
    intr = Intrinsics.from_fov(o.image_size, o.image_size)
    cam = torch.as_tensor(intr.as_vector())[None]
    sh_base = _realistic_sh(rng)
    person = o.landmarks.person_bias(rng)

    def evaluate(p: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        t = {k: torch.as_tensor(v, dtype=torch.float32)[None] for k, v in p.items()}
        with torch.no_grad():
            out = head(
                shape=t["shape"],
                expression=t["expression"],
                neck_pose=t["neck_pose"],
                jaw_pose=t["jaw_pose"],
                eye_pose=t["eye_pose"],
            )
        return out.vertices[0], out.joints[0, 0]

    verts_true, _ = evaluate(params)
    views = []
    for i, yaw0 in enumerate(o.yaws_deg):
        pv = {k: v.copy() for k, v in params.items()}
        k = min(10, head.n_expr)
        pv["expression"][:k] += rng.normal(scale=o.expression_jitter, size=k).astype(np.float32)
        space = head.expression_space
        if space.bounded:
            pv["expression"] = np.clip(pv["expression"], space.lower, space.upper)
        if "jaw" in head.posed_joints:
            pv["jaw_pose"][0] = max(0.0, pv["jaw_pose"][0] + rng.normal(scale=o.jaw_jitter))
        verts, pivot = evaluate(pv)
        yaw = yaw0 + rng.uniform(-1, 1) * o.yaw_jitter_deg
        rot_aa = _euler_to_axis_angle(
            yaw, rng.uniform(-1, 1) * o.pitch_deg, rng.uniform(-1, 1) * o.roll_deg
        )
        rot = axis_angle_to_matrix(torch.as_tensor(rot_aa, dtype=torch.float32)[None])[0]
        trans = torch.tensor(
            [
                rng.uniform(-0.015, 0.015),
                -0.03 + rng.uniform(-0.015, 0.015),
                -o.distance_m * rng.uniform(0.93, 1.07),
            ]
        )
        v_cam = (verts - pivot) @ rot.T + pivot + trans
        screen = to_screen(v_cam[None], cam)[0]
        normals = vertex_normals(v_cam[None], faces)[0]
        sh = sh_base * (
            1 + o.light_jitter * torch.as_tensor(rng.normal(size=(9, 1)), dtype=torch.float32)
        )
        img, mask, _ = render_textured(
            screen,
            normals,
            faces,
            uv,
            uv_faces,
            tex_t,
            o.image_size,
            o.image_size,
            sh_coeffs=sh,
            normals_kind="normals",
        )
        bg = _cluttered_background(rng, o.image_size)
        m = mask[..., None].float()
        gain = rng.uniform(1 - o.exposure, 1 + o.exposure) * (
            1 + o.white_balance * rng.uniform(-1, 1, size=3)
        )
        rgb = (img.clamp(0, 1) * m + bg * (1 - m)).numpy() * gain
        rgb = _camera_effects(rgb, rng, o.blur_px * o.image_size / 1024, o.sensor_noise)
        lmk = head.landmarks_3d(verts[None], torch.tensor([yaw], dtype=torch.float32))[0]
        lmk_cam = (lmk - pivot) @ rot.T + pivot + trans
        lmk_px = to_screen(lmk_cam[None], cam)[0, :, :2].numpy()
        noisy = o.landmarks.apply(lmk_px, yaw, person, rng)
        views.append(
            SyntheticView(
                photo=photo_from_array(rgb, f"realistic_{seed}_{i}.png"),
                intrinsics=intr,
                head_rot=rot_aa,
                head_trans=trans.numpy(),
                landmarks_true=lmk_px,
                landmarks_noisy=noisy,
            )
        )
    return SyntheticSubject(params=params, vertices_true=verts_true.numpy(), views=views)


def _realistic_sh(rng: np.random.Generator) -> torch.Tensor:
    """(9,3) SH light in camera space: ambient 0.5-0.75 of full brightness, a key light from
    a random direction in front of the face (0.2-0.45), mild band-2 detail and colour."""
    c0, c1 = 1 / math.sqrt(4 * math.pi), (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi))
    d = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.2, 0.7), 1.0])
    d /= np.linalg.norm(d)
    tint = 1 + 0.04 * rng.normal(size=3)
    sh = np.zeros((9, 3))
    sh[0] = rng.uniform(0.5, 0.75) / c0 * tint
    sh[1:4] = (rng.uniform(0.2, 0.45) / c1) * d[:, None] * tint
    sh[4:] = rng.normal(scale=0.05, size=(5, 1))
    return torch.as_tensor(sh, dtype=torch.float32)


def _cluttered_background(rng: np.random.Generator, size: int) -> torch.Tensor:
    """A room-like background: a smooth gradient, soft blobs and a few hard-edged shapes."""
    import cv2

    img = _background(rng, size).numpy()
    small = cv2.resize(rng.uniform(0, 1, size=(6, 6, 3)).astype(np.float32), (size, size))
    img = 0.6 * img + 0.4 * small
    for _ in range(int(rng.integers(3, 9))):
        col = tuple(float(c) for c in rng.uniform(0.1, 0.9, size=3))
        x0, y0 = (int(v) for v in rng.integers(0, size, size=2))
        w, h = (int(v) for v in rng.integers(size // 20, size // 3, size=2))
        if rng.uniform() < 0.5:
            cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), col, -1)
        else:
            cv2.ellipse(
                img, (x0, y0), (w // 2, h // 2), float(rng.uniform(0, 180)), 0, 360, col, -1
            )
    img = cv2.GaussianBlur(img, (0, 0), 1.0 + 2.0 * rng.uniform())
    return torch.as_tensor(img.clip(0, 1), dtype=torch.float32)


def _camera_effects(
    rgb: np.ndarray, rng: np.random.Generator, blur: float, noise: float
) -> np.ndarray:
    """float (H,W,3) linear-ish [0,1] -> uint8 with lens blur and sensor noise."""
    import cv2

    img = rgb.astype(np.float32)
    if blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    img = img * 255 + rng.normal(scale=noise, size=img.shape).astype(np.float32)
    return img.round().clip(0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------
# A real capture with known geometry (../shared/assets/headscan-james-menpo3d)

# james.ljson lists its 68 points as chin, eyes, eyebrow, nose, eyebrow, mouth; position i of
# that order is iBUG point _LJSON_TO_IBUG[i].
_LJSON_TO_IBUG = np.array(
    [*range(17), *range(36, 48), *range(17, 22), *range(27, 36), *range(22, 27), *range(48, 68)]
)


@dataclass
class HeadScan:
    """A textured face capture in metres, FLAME-like axes (y up, face toward +z)."""

    vertices: np.ndarray  # (V,3)
    faces: np.ndarray  # (F,3)
    uv_coords: np.ndarray  # (T,2) origin bottom-left
    uv_faces: np.ndarray  # (F,3)
    texture: np.ndarray  # (H,W,3) uint8
    landmarks: np.ndarray  # (68,3) iBUG order
    name: str = "scan"

    def face_region(self) -> np.ndarray:
        """(V,) bool: the face as `head.flame.geometric_face_region` defines it on a model (between
        the ears' contour points, a little under the chin to 0.6 eye distances above the
        brows, in front of the contour), from the capture's own landmarks."""
        lm, (x, y, z) = self.landmarks, self.vertices.T
        width = 0.5 * (lm[16, 0] - lm[0, 0])
        cx = 0.5 * (lm[16, 0] + lm[0, 0])
        eye = np.linalg.norm(lm[45] - lm[36])
        top = lm[17:27, 1].max() + 0.6 * eye
        bottom = lm[8, 1] - 0.1 * eye
        front = min(lm[0, 2], lm[16, 2]) - 0.15 * eye
        return (np.abs(x - cx) <= 1.05 * abs(width)) & (y <= top) & (y >= bottom) & (z >= front)


def load_headscan(folder: str | Path) -> HeadScan:
    """Reads headscan-james-menpo3d (OBJ in mm with UVs, JPEG texture, LJSON landmarks)."""
    import json

    import cv2

    folder = Path(folder)
    verts, uvs, faces, uv_faces = [], [], [], []
    with open(folder / "james.obj") as fh:
        for line in fh:
            if line.startswith("v "):
                verts.append([float(t) for t in line.split()[1:4]])
            elif line.startswith("vt "):
                uvs.append([float(t) for t in line.split()[1:3]])
            elif line.startswith("f "):
                idx = [t.split("/") for t in line.split()[1:4]]
                faces.append([int(i[0]) - 1 for i in idx])
                uv_faces.append([int(i[1]) - 1 for i in idx])
    tex = cv2.cvtColor(cv2.imread(str(folder / "james.jpg")), cv2.COLOR_BGR2RGB)
    lj = json.loads((folder / "james.ljson").read_text())["groups"]["LJSON"]["landmarks"]["points"]
    lm = np.asarray(lj, np.float64)[np.argsort(_LJSON_TO_IBUG)]
    v = np.asarray(verts, np.float64) / 1000.0
    lm = lm / 1000.0
    centre = lm.mean(0)
    return HeadScan(
        vertices=(v - centre).astype(np.float32),
        faces=np.asarray(faces, np.int64),
        uv_coords=np.asarray(uvs, np.float32),
        uv_faces=np.asarray(uv_faces, np.int64),
        texture=tex,
        landmarks=(lm - centre).astype(np.float32),
        name=folder.name,
    )


@dataclass
class ScanViews:
    scan: HeadScan
    views: list[SyntheticView]
    landmark_source: str  # "dlib" or "projected+errors"


def render_scan(
    scan: HeadScan,
    yaws_deg: tuple[float, ...] = (-35.0, 0.0, 35.0),
    image_size: int = 1024,
    distance_m: float = 0.6,
    seed: int = 0,
    landmarks: str = "dlib",
    error_model: LandmarkErrorModel | None = None,
) -> ScanViews:
    """Photoreal views of the capture with its own photo texture (its lighting is baked in),
    a cluttered background, per-view exposure, lens blur and sensor noise. Landmarks: dlib
    on each render ("dlib", falling back to the next for a view dlib misses) or the
    capture's 3D landmarks projected plus `error_model` errors ("projected"); any other
    landmark backend by name ("mediapipe", "auto") works as "dlib" does."""
    rng = np.random.default_rng([seed, 11])
    error_model = error_model or LandmarkErrorModel()
    person = error_model.person_bias(rng)
    faces = torch.as_tensor(scan.faces)
    uv = torch.as_tensor(scan.uv_coords)
    uv_faces = torch.as_tensor(scan.uv_faces)
    tex = torch.as_tensor(scan.texture, dtype=torch.float32) / 255.0
    intr = Intrinsics.from_fov(image_size, image_size)
    cam = torch.as_tensor(intr.as_vector())[None]
    # Rotate about a point 9 cm behind the landmarks' centre (roughly the head's centre).
    pivot = torch.tensor([0.0, 0.0, -0.09])
    verts = torch.as_tensor(scan.vertices)
    lmk3 = torch.as_tensor(scan.landmarks)
    backend = None
    if landmarks != "projected":
        from mfnet_core.inputs.landmarks import get_backend

        try:
            backend = get_backend(landmarks)
        except Exception:  # noqa: BLE001 - detector not installed: projected landmarks instead
            backend = None
    views, sources = [], []
    for i, yaw in enumerate(yaws_deg):
        rot_aa = _euler_to_axis_angle(yaw, rng.uniform(-3, 3), rng.uniform(-2, 2))
        rot = axis_angle_to_matrix(torch.as_tensor(rot_aa, dtype=torch.float32)[None])[0]
        trans = torch.tensor([rng.uniform(-0.01, 0.01), rng.uniform(-0.01, 0.01), -distance_m])
        v_cam = (verts - pivot) @ rot.T + pivot + trans
        img, mask, _ = render_textured(
            to_screen(v_cam[None], cam)[0], None, faces, uv, uv_faces, tex, image_size, image_size
        )
        bg = _cluttered_background(rng, image_size)
        m = mask[..., None].float()
        gain = rng.uniform(0.85, 1.15) * (1 + 0.04 * rng.uniform(-1, 1, size=3))
        rgb = (img.clamp(0, 1) * m + bg * (1 - m)).numpy() * gain
        rgb = _camera_effects(rgb, rng, 0.5 * image_size / 1024, 1.5)
        l_cam = (lmk3 - pivot) @ rot.T + pivot + trans
        l_px = to_screen(l_cam[None], cam)[0, :, :2].numpy()
        det = None
        if backend is not None:
            found = backend.detect(rgb)
            if found:
                best = min(
                    found, key=lambda fd: np.linalg.norm(fd.landmarks.mean(0) - l_px.mean(0))
                )
                if np.linalg.norm(best.landmarks.mean(0) - l_px.mean(0)) < 0.2 * np.ptp(l_px[:, 0]):
                    det = np.asarray(best.landmarks, np.float32)
        sources.append(landmarks if det is not None else "projected")
        if det is None:
            det = error_model.apply(l_px, yaw, person, rng)
        views.append(
            SyntheticView(
                photo=photo_from_array(rgb, f"{scan.name}_{i}.png"),
                intrinsics=intr,
                head_rot=rot_aa,
                head_trans=trans.numpy(),
                landmarks_true=l_px,
                landmarks_noisy=det,
            )
        )
    src = sources[0] if len(set(sources)) == 1 else "+".join(sources)
    return ScanViews(scan=scan, views=views, landmark_source=src)
