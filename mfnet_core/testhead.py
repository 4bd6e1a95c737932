"""A generated head model in FLAME's file format, made by code at run time (NOT FLAME).

It lets every test, the demo and CI run end to end without the user's FLAME download. The
files use FLAME's keys and conventions (generic_model.pkl: v_template, f, shapedirs with 300
identity + 100 expression components, posedirs, J_regressor as scipy csc, kintree_table,
weights), DECA's landmark_embedding.npy format, FLAME_texture.npz's vt/ft and a
FLAME_masks.pkl-like dict, under names that say they are not FLAME, and the pickle holds
`mfnet_test_head: True` so loaders can tell.

The head: metres, y up, x to the subject's left, face toward +z, origin near the head
centre. A skin grid (rows from the neck up to the crown, columns around the head, denser
on the face) shaped by per-row superellipse cross-sections plus smooth feature fields
(nose, brows, eye sockets with lids, cheeks, lips, chin, ears), a real mouth slit (upper and
lower lip vertices are separate and part when the jaw opens), two eyeball spheres, five
joints (root, neck, jaw, eye_L, eye_R) regressed from vertices. Generation is deterministic
(fixed seeds, fixed arithmetic order) so the files hash the same every time.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.interpolate import PchipInterpolator, make_smoothing_spline

__all__ = [
    "TESTHEAD_VERSION",
    "MODEL_NAME",
    "LANDMARK_NAME",
    "TEXTURE_NAME",
    "MASKS_NAME",
    "TestHead",
    "build_test_head",
    "write_test_head",
    "ensure_test_head",
    "test_head_dir",
]

TESTHEAD_VERSION = "v1"
MODEL_NAME = "mfnet_test_head_NOT_FLAME.pkl"
_STEM = MODEL_NAME[:-4]
LANDMARK_NAME = f"{_STEM}_landmark_embedding.npy"
TEXTURE_NAME = f"{_STEM}_texture.npz"
MASKS_NAME = f"{_STEM}_masks.pkl"
ALL_FILES = (MODEL_NAME, LANDMARK_NAME, TEXTURE_NAME, MASKS_NAME)

N_SHAPE = 300
N_EXPR = 100
JOINT_NAMES = ("root", "neck", "jaw", "eye_L", "eye_R")
PARENTS = np.array([-1, 0, 1, 1, 1], dtype=np.int64)

# -- layout constants (metres) -------------------------------------------------------------
N_COLS = 76  # columns around the head (even: column N_COLS/2 is the front midline)
COL_WARP = 0.55  # > 0 makes columns denser on the face than at the back
EYE_X = 0.031  # eyeball centres at (+-EYE_X, EYE_Y, eye_z)
EYE_Y = 0.030
EYE_R = 0.0122
EYE_LAT, EYE_LON = 12, 20  # eyeball sphere resolution
MOUTH_HALF = 0.025  # mouth corners at x = +-MOUTH_HALF
EYE_INNER = 0.0195  # eye opening from |x| = EYE_INNER to EYE_OUTER
EYE_OUTER = 0.0425

# The head's shape along a profile parameter s (0 = bottom of the neck, 63 = last ring below
# the crown pole): y at the front / side / back, front z, half width, back z, superellipse
# exponent front / back of each horizontal cross-section. Interpolated with PCHIP (C1, no
# overshoot), so the surface is smooth.
_PROFILE = np.array(
    [
        # s    y_f     y_s     y_b     z_f    W      z_b     n_f  n_b
        [0, -0.170, -0.170, -0.170, 0.036, 0.054, -0.072, 2.0, 2.0],
        [3, -0.135, -0.132, -0.128, 0.036, 0.053, -0.072, 2.0, 2.0],
        [6, -0.101, -0.094, -0.088, 0.040, 0.055, -0.075, 2.0, 2.0],
        [9, -0.102, -0.082, -0.062, 0.064, 0.058, -0.080, 2.0, 2.0],
        [12, -0.094, -0.070, -0.040, 0.083, 0.063, -0.087, 2.1, 2.0],
        [15, -0.080, -0.056, -0.022, 0.090, 0.066, -0.093, 2.1, 2.0],
        [18, -0.068, -0.044, -0.008, 0.088, 0.068, -0.097, 2.1, 2.0],
        [21, -0.058, -0.034, 0.002, 0.091, 0.069, -0.099, 2.1, 2.0],
        [24, -0.048, -0.024, 0.010, 0.091, 0.070, -0.101, 2.15, 2.0],
        [27, -0.037, -0.014, 0.018, 0.092, 0.071, -0.102, 2.2, 2.0],
        [30, -0.024, -0.004, 0.026, 0.089, 0.072, -0.103, 2.3, 2.0],
        [33, -0.012, 0.006, 0.033, 0.087, 0.073, -0.103, 2.4, 2.0],
        [36, 0.000, 0.015, 0.040, 0.086, 0.074, -0.103, 2.5, 2.0],
        [39, 0.012, 0.024, 0.047, 0.085, 0.075, -0.102, 2.6, 2.0],
        [42, 0.024, 0.032, 0.054, 0.085, 0.075, -0.100, 2.7, 2.0],
        [44, 0.030, 0.037, 0.058, 0.086, 0.075, -0.099, 2.7, 2.0],
        [46, 0.036, 0.042, 0.062, 0.088, 0.075, -0.097, 2.7, 2.0],
        [49, 0.049, 0.053, 0.070, 0.091, 0.074, -0.094, 2.6, 2.0],
        [52, 0.065, 0.068, 0.082, 0.090, 0.073, -0.089, 2.4, 2.0],
        [55, 0.085, 0.087, 0.097, 0.083, 0.069, -0.080, 2.2, 2.0],
        [58, 0.105, 0.106, 0.111, 0.069, 0.061, -0.067, 2.1, 2.0],
        [61, 0.124, 0.124, 0.125, 0.046, 0.045, -0.048, 2.0, 2.0],
        [63, 0.134, 0.134, 0.134, 0.025, 0.026, -0.028, 2.0, 2.0],
    ]
)
# Grid row -> profile parameter s: the spacing sets the mesh density (dense at the lips and
# eyes, sparse on the neck and the scalp). The mouth slit row sits exactly at s = 24.
_ROW_TO_S = np.array([[0, 0], [18, 18], [27, 24], [36, 30], [48, 40], [56, 46], [69, 63]], dtype=np.float64)
N_ROWS = int(_ROW_TO_S[-1, 0]) + 1
MOUTH_ROW = 27  # the mouth slit runs along this row
CROWN = np.array([0.0, 0.139, -0.002])


def _smoothstep(x: np.ndarray, a: float, b: float) -> np.ndarray:
    t = np.clip((np.asarray(x, dtype=np.float64) - a) / (b - a), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gauss(x: np.ndarray, s: float) -> np.ndarray:
    return np.exp(-0.5 * (x / s) ** 2)


def _smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth maximum (rounded within about k)."""
    return 0.5 * (a + b + np.sqrt((a - b) ** 2 + k * k))


# -- the skin grid ---------------------------------------------------------------------------


def column_angles() -> np.ndarray:
    """(N_COLS,) azimuths: 0 at the front midline, +pi/2 at the subject's left (+x)."""
    u = -np.pi + 2.0 * np.pi * np.arange(N_COLS) / N_COLS
    return u - COL_WARP * np.sin(u)


def _row_params() -> np.ndarray:
    """(N_ROWS, 8) interpolated keypoint parameters per row."""
    s = PchipInterpolator(_ROW_TO_S[:, 0], _ROW_TO_S[:, 1])(np.arange(N_ROWS, dtype=np.float64))
    out = np.empty((N_ROWS, _PROFILE.shape[1] - 1))
    for k in range(1, _PROFILE.shape[1]):
        # Smoothing splines iron out the table's millimetre rounding, which would otherwise
        # show as shading ripples; the front profile (y_f, z_f) keeps its sharp under-chin
        # corner with PCHIP (no overshoot). The features are added on top later.
        col = _PROFILE[:, k]
        if k in (1, 4):
            upper = _PROFILE[:, 0] >= 12
            smooth = make_smoothing_spline(_PROFILE[upper, 0], col[upper], lam=1.0)(s)
            sharp = PchipInterpolator(_PROFILE[:, 0], col)(s)
            w = _smoothstep(s, 12.0, 16.0)
            out[:, k - 1] = (1 - w) * sharp + w * smooth
        else:
            lam = 10.0 if k == 6 else 3.0
            out[:, k - 1] = make_smoothing_spline(_PROFILE[:, 0], col, lam=lam)(s)
    return out


def _base_skin() -> np.ndarray:
    """(N_ROWS, N_COLS, 3) the head without facial features."""
    p = _row_params()
    th = column_angles()
    a = np.abs(th)
    t_fs = _smoothstep(a, 0.30, np.pi / 2)
    t_sb = _smoothstep(a, np.pi / 2, np.pi)
    y_f, y_s, y_b = p[:, 0:1], p[:, 1:2], p[:, 2:3]
    y = np.where(a <= np.pi / 2, y_f + (y_s - y_f) * t_fs, y_s + (y_b - y_s) * t_sb)
    front = np.cos(th) >= 0
    n = np.where(front, p[:, 6:7], p[:, 7:8])
    depth = np.where(front, p[:, 3:4], -p[:, 5:6])
    s, c = np.sin(th), np.cos(th)
    x = p[:, 4:5] * np.sign(s) * np.abs(s) ** (2.0 / n)
    z = depth * np.sign(c) * np.abs(c) ** (2.0 / n)
    return np.stack([x, y, z], axis=-1)


@dataclass
class _Geometry:
    """The rest mesh and the bookkeeping that the rest of the generator needs."""

    verts: np.ndarray  # (V,3)
    faces: np.ndarray  # (F,3)
    grid: np.ndarray  # (N_ROWS, N_COLS) vertex id of each skin grid point
    slit_lower: dict[int, int]  # column -> duplicated lower-lip vertex on the mouth row
    pole: int
    eye_ids: list[np.ndarray]  # [left (+x), right (-x)] eyeball vertex ids
    eye_centres: np.ndarray  # (2,3) left, right
    skin_count: int  # vertices [0, skin_count) are skin
    kinds: dict[str, np.ndarray] = field(default_factory=dict)  # per-face part labels


def _eye_opening(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed openness of the eye fissure: (q, inside_x). q < 1 inside the almond.

    The almond runs from |x| = EYE_INNER to EYE_OUTER; its centre line rises a little toward
    the outer corner and the upper half is taller than the lower."""
    ax = np.abs(x)
    t = np.clip((ax - EYE_INNER) / (EYE_OUTER - EYE_INNER), 0.0, 1.0)
    yc = EYE_Y - 0.0005 + 0.0015 * t
    shape = np.sin(np.pi * t) ** 0.7
    h_up = 0.0058 * shape + 1e-4
    h_lo = 0.0044 * shape + 1e-4
    dy = y - yc
    q = np.where(dy >= 0, dy / h_up, -dy / h_lo)
    inside_x = (ax > EYE_INNER) & (ax < EYE_OUTER)
    return np.where(inside_x, q, 10.0), inside_x


def eye_opening_curve(n: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points on the left eye's almond (x > 0): x, upper-lid y, lower-lid y."""
    x = np.linspace(EYE_INNER, EYE_OUTER, n)
    t = (x - EYE_INNER) / (EYE_OUTER - EYE_INNER)
    yc = EYE_Y - 0.0005 + 0.0015 * t
    shape = np.sin(np.pi * t) ** 0.7
    return x, yc + 0.0058 * shape, yc - 0.0044 * shape


def _features(p: np.ndarray, eye_z: float) -> np.ndarray:
    """Adds the face to base skin points p (..., 3); returns new points."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    ax = np.abs(x)
    frontness = _smoothstep(z, 0.02, 0.06)
    dz = np.zeros_like(z)
    # nose: a ridge from the nasion to the tip, a rounded tip, alae
    y_nas, y_tip, y_sub = 0.036, -0.003, -0.021
    t = np.clip((y_nas - y) / (y_nas - y_tip), 0, 1)
    h_ridge = np.where(y > y_tip, 0.004 + 0.024 * t**1.25, 0.0)
    under = np.clip((y_tip - y) / (y_tip - y_sub), 0, 1)
    h_under = np.where(y <= y_tip, 0.028 * np.sqrt(np.clip(1 - under**2, 0, 1)), 0.0)
    h = np.where(y > y_tip, h_ridge, h_under) * (1 - _smoothstep(y, y_nas, y_nas + 0.012))
    w = 0.0042 + 0.0036 * t**2 + np.where(y <= y_tip, 0.003 * under, 0.0)
    dz += h * _gauss(x, w)
    dz += 0.010 * _gauss(ax - 0.0145, 0.0048) * _gauss(y - (-0.0135), 0.0050)  # alae
    dz -= 0.003 * _gauss(ax - 0.0075, 0.003) * _gauss(y - (-0.019), 0.0025)  # nostrils
    # brows and glabella
    tb = np.clip((ax - 0.008) / 0.05, 0, 1)
    y_brow = 0.046 + 0.007 * np.sin(np.pi * tb) - 0.003 * tb
    dz += 0.0045 * _gauss(y - y_brow, 0.0055) * _smoothstep(ax, 0.0, 0.012) * (1 - _smoothstep(ax, 0.05, 0.066))
    dz += 0.002 * _gauss(x, 0.012) * _gauss(y - 0.045, 0.006)
    # cheekbones and cheeks
    dz += 0.005 * _gauss(ax - 0.049, 0.013) * _gauss(y - 0.008, 0.012)
    dz += 0.003 * _gauss(ax - 0.040, 0.014) * _gauss(y - (-0.022), 0.014)
    # lips: rounded upper and lower vermilion (thinner toward the corners), rolled in at
    # the slit, the corners tucked in, the fold under the lower lip
    y_m = -0.048
    tm = np.clip(ax / MOUTH_HALF, 0, 1)
    taper = np.sqrt(np.clip(1 - tm**2, 0, 1))
    h_up = 0.0080 * taper**0.8 + 0.0012 * _gauss(ax - 0.0055, 0.003) - 0.0008 * _gauss(x, 0.0025) + 1e-4
    h_lo = 0.0100 * taper**0.8 + 1e-4
    s_up = np.clip((y - y_m) / h_up, 0, 1)
    s_lo = np.clip((y_m - y) / h_lo, 0, 1)
    dome_up = (4 * s_up * (1 - s_up)) ** 0.6
    dome_lo = (4 * s_lo * (1 - s_lo)) ** 0.6
    dz += np.where(y >= y_m, 0.0042 * dome_up, 0.0052 * dome_lo) * taper**0.5
    dz -= 0.0030 * _gauss(y - y_m, 0.0018) * (1 - _smoothstep(ax, MOUTH_HALF - 0.004, MOUTH_HALF + 0.004))
    dz -= 0.0020 * _gauss(ax - MOUTH_HALF, 0.004) * _gauss(y - y_m, 0.005)
    dz -= 0.0020 * _gauss(y - (-0.066), 0.0045) * (1 - _smoothstep(ax, 0.015, 0.03))
    dz += 0.0015 * _gauss(x, 0.004) * _gauss(y - (-0.030), 0.005)  # philtrum
    # chin
    dz += 0.0045 * _gauss(x, 0.014) * _gauss(y - (-0.078), 0.010)
    # nasolabial groove
    d_nl = np.abs(y - (-0.012 - 1.0 * (ax - 0.018)))
    dz -= 0.0012 * _gauss(d_nl, 0.003) * _gauss(ax - 0.028, 0.008) * (y < -0.008)
    z = z + dz * frontness
    # eye sockets with lids hugging the eyeballs; the fissure pushed behind the eyeball
    out = np.stack([x, y, z], axis=-1)
    for sx in (1.0, -1.0):
        dx, dy = x - sx * EYE_X, y - EYE_Y
        d2 = dx * dx + dy * dy
        r_lid = EYE_R + 0.0012
        z_sph = np.where(d2 < r_lid * r_lid, eye_z + np.sqrt(np.clip(r_lid * r_lid - d2, 0, None)), -1.0)
        d = np.sqrt(d2)
        bowl = 0.006 * (1 - _smoothstep(d, 0.006, 0.024)) * frontness
        z_t = _smax(z_sph, z - bowl, 0.002)
        near = (d < 0.03) & (z > 0.0)
        q, _ = _eye_opening(x, y)
        inside = 1 - _smoothstep(q, 0.75, 1.15)
        z_in = eye_z + 0.25 * EYE_R
        z_new = np.where(near, (1 - inside) * z_t + inside * z_in, z)
        out[..., 2] = np.where((sx * x > 0) & near, z_new, out[..., 2])
        z = out[..., 2]
    # ears: a raised flap on each side (sticking out most at the back rim) with a hollow
    for sx in (1.0, -1.0):
        r = np.sqrt(((y - 0.004) / 0.029) ** 2 + ((z - (-0.014)) / 0.016) ** 2)
        flap = 1 - _smoothstep(r, 0.75, 1.05)
        rim = 0.5 + 0.5 * _smoothstep(-(z - (-0.014)), -0.012, 0.012)
        hollow = _gauss(r, 0.33)
        side = _smoothstep(sx * x, 0.045, 0.065)
        out[..., 0] += sx * (0.011 * flap * rim - 0.004 * hollow) * side
    return out


def _sphere(centre: np.ndarray, r: float, n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """UV sphere with poles on the z axis (front pole = pupil). Returns verts, faces (local)."""
    verts = [centre + [0, 0, r]]
    for i in range(1, n_lat):
        th = np.pi * i / n_lat
        for j in range(n_lon):
            ph = 2 * np.pi * j / n_lon
            verts.append(centre + r * np.array([np.sin(th) * np.sin(ph), np.sin(th) * np.cos(ph), np.cos(th)]))
    verts.append(centre + [0, 0, -r])
    faces = []
    ring = lambda i, j: 1 + (i - 1) * n_lon + (j % n_lon)  # noqa: E731
    for j in range(n_lon):
        faces.append([0, ring(1, j), ring(1, j + 1)])
    for i in range(1, n_lat - 1):
        for j in range(n_lon):
            a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j), ring(i + 1, j + 1)
            faces += [[a, c, b], [b, c, d]]
    last = len(verts) - 1
    for j in range(n_lon):
        faces.append([ring(n_lat - 1, j), last, ring(n_lat - 1, j + 1)])
    return np.asarray(verts), np.asarray(faces, dtype=np.int64)[:, ::-1].copy()  # outward


def _build_geometry() -> _Geometry:
    base = _base_skin()  # (R,C,3)
    # eye depth from the base surface at the eye centre (the cornea sits just behind it)
    sel = (np.abs(np.abs(base[..., 0]) - EYE_X) < 0.006) & (np.abs(base[..., 1] - EYE_Y) < 0.004) & (base[..., 2] > 0)
    eye_z = float(base[..., 2][sel].mean()) - 0.0015 - EYE_R
    skin = _features(base, eye_z)
    n_r, n_c = skin.shape[:2]
    grid = np.arange(n_r * n_c).reshape(n_r, n_c)
    verts = [skin.reshape(-1, 3)]
    nxt = n_r * n_c
    # the mouth slit: duplicate mouth-row vertices strictly between the corners
    mouth_cols = np.flatnonzero(np.abs(skin[MOUTH_ROW, :, 0]) < MOUTH_HALF - 1e-4)
    mouth_cols = mouth_cols[np.argsort(skin[MOUTH_ROW, mouth_cols, 0])]
    slit_lower: dict[int, int] = {}
    for c in mouth_cols:
        slit_lower[int(c)] = nxt
        nxt += 1
    verts.append(skin[MOUTH_ROW, mouth_cols])
    pole = nxt
    nxt += 1
    verts.append(CROWN[None])
    faces: list[list[int]] = []
    kinds: list[str] = []
    half = n_c // 2
    for r in range(n_r - 1):
        for c in range(n_c):
            c1 = (c + 1) % n_c
            a, b = grid[r, c], grid[r, c1]  # lower row
            d, e = grid[r + 1, c], grid[r + 1, c1]  # upper row
            if r + 1 == MOUTH_ROW:  # quads just below the slit use the lower-lip copies
                d = slit_lower.get(c, d)
                e = slit_lower.get(c1, e)
            # mirror-symmetric diagonals: split toward the midline on each side
            if c >= half:
                faces += [[a, b, e], [a, e, d]]
            else:
                faces += [[a, b, d], [b, e, d]]
            kinds += ["skin", "skin"]
    for c in range(n_c):
        faces.append([grid[n_r - 1, c], grid[n_r - 1, (c + 1) % n_c], pole])
        kinds.append("skin")
    skin_count = nxt
    eye_ids = []
    centres = []
    for sx in (1.0, -1.0):  # left eye (+x) first, as FLAME's eye_L
        centre = np.array([sx * EYE_X, EYE_Y, eye_z])
        sv, sf = _sphere(centre, EYE_R, EYE_LAT, EYE_LON)
        verts.append(sv)
        faces += (sf + nxt).tolist()
        kinds += ["eye_L" if sx > 0 else "eye_R"] * len(sf)
        eye_ids.append(np.arange(nxt, nxt + len(sv)))
        centres.append(centre)
        nxt += len(sv)
    return _Geometry(
        verts=np.concatenate(verts),
        faces=np.asarray(faces, dtype=np.int64),
        grid=grid,
        slit_lower=slit_lower,
        pole=pole,
        eye_ids=eye_ids,
        eye_centres=np.asarray(centres),
        skin_count=skin_count,
        kinds={"face_kind": np.asarray(kinds)},
    )
