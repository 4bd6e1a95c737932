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

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.interpolate import PchipInterpolator, make_smoothing_spline

from mfnet_core.inputs.files import atomic_write_bytes

__all__ = [
    "TESTHEAD_VERSION",
    "MODEL_NAME",
    "LANDMARK_NAME",
    "TEXTURE_NAME",
    "MASKS_NAME",
    "GeneratedHead",
    "build_test_head",
    "head_file_bytes",
    "write_test_head",
    "ensure_test_head",
    "default_folder",
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
MOUTH_Y = -0.048  # the slit's height at the front (the profile's y_f at s = 24)
EYE_INNER = 0.0195  # eye opening from |x| = EYE_INNER to EYE_OUTER
EYE_OUTER = 0.0425

# The head's shape along a profile parameter s (0 = bottom of the neck, 63 = last ring below
# the crown pole): y at the front / side / back, front z, half width, back z, superellipse
# exponent front / back of each horizontal cross-section. Interpolated smoothly along s (see
# `_row_params`).
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
_ROW_TO_S = np.array(
    [[0, 0], [18, 18], [27, 24], [36, 30], [48, 40], [56, 46], [69, 63]], dtype=np.float64
)
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


def _eye_almond(ax: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The eye fissure at |x| = ax: centre-line height, upper and lower half-heights. It runs
    from EYE_INNER to EYE_OUTER, rises a little toward the outer corner, and its upper half
    is taller than the lower."""
    t = np.clip((np.asarray(ax, dtype=np.float64) - EYE_INNER) / (EYE_OUTER - EYE_INNER), 0, 1)
    shape = np.sin(np.pi * t) ** 0.7
    return EYE_Y - 0.0005 + 0.0015 * t, 0.0058 * shape, 0.0044 * shape


def _eye_opening(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """How far (x, y) is from the middle of the eye fissure: q < 1 inside the almond."""
    ax = np.abs(x)
    yc, h_up, h_lo = _eye_almond(ax)
    dy = y - yc
    q = np.where(dy >= 0, dy / (h_up + 1e-4), -dy / (h_lo + 1e-4))
    return np.where((ax > EYE_INNER) & (ax < EYE_OUTER), q, 10.0)


def eye_opening_curve(n: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points on the left eye's almond (x > 0): x, upper-lid y, lower-lid y."""
    x = np.linspace(EYE_INNER, EYE_OUTER, n)
    yc, h_up, h_lo = _eye_almond(x)
    return x, yc + h_up, yc - h_lo


def brow_y(ax: np.ndarray) -> np.ndarray:
    """Height of the brow ridge's crest at |x| = ax (an arch over each eye)."""
    tb = np.clip((np.asarray(ax, dtype=np.float64) - 0.008) / 0.05, 0, 1)
    return 0.046 + 0.007 * np.sin(np.pi * tb) - 0.003 * tb


def lip_heights(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heights of the upper and lower vermilion above / below the mouth slit at x (thinner
    toward the corners, a Cupid's bow on the upper lip), and the taper factor."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    tm = np.clip(ax / MOUTH_HALF, 0, 1)
    taper = np.sqrt(np.clip(1 - tm**2, 0, 1))
    bow = 0.0012 * _gauss(ax - 0.0055, 0.003) - 0.0008 * _gauss(ax, 0.0025)
    h_up = 0.0080 * taper**0.8 + bow + 1e-4
    h_lo = 0.0100 * taper**0.8 + 1e-4
    return h_up, h_lo, taper


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
    y_brow = brow_y(ax)
    dz += (
        0.0045
        * _gauss(y - y_brow, 0.0055)
        * _smoothstep(ax, 0.0, 0.012)
        * (1 - _smoothstep(ax, 0.05, 0.066))
    )
    dz += 0.002 * _gauss(x, 0.012) * _gauss(y - 0.045, 0.006)
    # cheekbones and cheeks
    dz += 0.005 * _gauss(ax - 0.049, 0.013) * _gauss(y - 0.008, 0.012)
    dz += 0.003 * _gauss(ax - 0.040, 0.014) * _gauss(y - (-0.022), 0.014)
    # lips: rounded upper and lower vermilion (thinner toward the corners), rolled in at
    # the slit, the corners tucked in, the fold under the lower lip
    y_m = MOUTH_Y
    h_up, h_lo, taper = lip_heights(x)
    s_up = np.clip((y - y_m) / h_up, 0, 1)
    s_lo = np.clip((y_m - y) / h_lo, 0, 1)
    dome_up = (4 * s_up * (1 - s_up)) ** 0.6
    dome_lo = (4 * s_lo * (1 - s_lo)) ** 0.6
    dz += np.where(y >= y_m, 0.0042 * dome_up, 0.0052 * dome_lo) * taper**0.5
    dz -= (
        0.0030
        * _gauss(y - y_m, 0.0018)
        * (1 - _smoothstep(ax, MOUTH_HALF - 0.004, MOUTH_HALF + 0.004))
    )
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
        z_sph = np.where(
            d2 < r_lid * r_lid, eye_z + np.sqrt(np.clip(r_lid * r_lid - d2, 0, None)), -1.0
        )
        d = np.sqrt(d2)
        bowl = 0.006 * (1 - _smoothstep(d, 0.006, 0.024)) * frontness
        z_t = _smax(z_sph, z - bowl, 0.002)
        near = (d < 0.03) & (z > 0.0)
        q = _eye_opening(x, y)
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
            verts.append(
                centre
                + r * np.array([np.sin(th) * np.sin(ph), np.sin(th) * np.cos(ph), np.cos(th)])
            )
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
    sel = (
        (np.abs(np.abs(base[..., 0]) - EYE_X) < 0.006)
        & (np.abs(base[..., 1] - EYE_Y) < 0.004)
        & (base[..., 2] > 0)
    )
    eye_z = float(base[..., 2][sel].mean()) - 0.0015 - EYE_R
    skin = _features(base, eye_z)
    n_r, n_c = skin.shape[:2]
    grid = np.arange(n_r * n_c).reshape(n_r, n_c)
    verts = [skin.reshape(-1, 3)]
    nxt = n_r * n_c
    # the mouth slit: duplicate mouth-row vertices strictly between the corners
    mouth_cols = np.flatnonzero(
        (np.abs(skin[MOUTH_ROW, :, 0]) < MOUTH_HALF - 1e-4) & (skin[MOUTH_ROW, :, 2] > 0)
    )
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


# -- rig: joints, regressor, skin weights ---------------------------------------------------------


def _mirror_col(c: np.ndarray | int) -> np.ndarray | int:
    return (N_COLS - np.asarray(c)) % N_COLS


def _lip_side(g: _Geometry) -> np.ndarray:
    """(V,) 1 on the upper lip side of the mouth slit, 0 on the lower side (by row; the
    slit's own vertices: originals are upper, the duplicates lower)."""
    v = g.verts
    side = np.where(v[:, 1] >= v[g.grid[MOUTH_ROW], 1].min() - 1e-9, 1.0, 0.0)
    rows = np.full(len(v), -1)
    rows[g.grid.ravel()] = np.repeat(np.arange(N_ROWS), N_COLS)
    side[rows >= 0] = (rows[rows >= 0] >= MOUTH_ROW).astype(float)
    side[list(g.slit_lower.values())] = 0.0
    side[g.pole] = 1.0
    return side


def _regressor(g: _Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(5,V) joint regressor (rows sum to 1) and the rest joints it gives (5,3).

    Every joint is a mean of mirror-symmetric vertex sets, so shape changes move the
    joints and the joints stay on the midline for symmetric heads."""
    v = g.verts
    reg = np.zeros((5, len(v)))
    ring = g.grid[2]  # root: a ring low on the neck, weighted by arc length (its centre)
    seg = np.linalg.norm(v[ring] - v[np.roll(ring, 1)], axis=1)
    reg[0, ring] = 0.5 * (seg + np.roll(seg, -1))
    th = column_angles()

    def pairs(target: np.ndarray, n: int) -> np.ndarray:
        """n skin grid vertices nearest `target` on the +x side, plus their mirrors."""
        cand = g.grid[:, (th > 0.2) & (th < np.pi - 0.2)].ravel()
        near = cand[np.argsort(np.linalg.norm(v[cand] - target, axis=1))[:n]]
        r, c = np.divmod(near, N_COLS)
        return np.concatenate([near, g.grid[r, _mirror_col(c)]])

    reg[1, pairs(np.array([0.056, -0.060, -0.030]), 4)] = 1.0  # neck: behind the jaw angle
    reg[2, pairs(np.array([0.072, -0.014, 0.006]), 4)] = 1.0  # jaw: in front of the ear
    reg[3, g.eye_ids[0]] = 1.0
    reg[4, g.eye_ids[1]] = 1.0
    reg /= reg.sum(1, keepdims=True)
    return reg, reg @ v


def _skin_weights(g: _Geometry, lip_upper: np.ndarray) -> np.ndarray:
    """(V,5) smooth LBS weights: lower neck -> root, head -> neck, mandible and lower lip ->
    jaw (a sharp split at the mouth slit), eyeballs -> eyes."""
    v = g.verts
    x, y, z = v.T
    ax = np.abs(x)
    y_m = float(v[g.grid[MOUTH_ROW, N_COLS // 2], 1])
    w = np.zeros((len(v), 5))
    root = 1 - _smoothstep(y, -0.150, -0.112)
    # the mandible: below a line from the mouth to the jaw joint, in front of the neck
    y_line = y_m + 0.036 * _smoothstep(ax, 0.02, 0.066)
    width = 0.002 + 0.008 * _smoothstep(ax, MOUTH_HALF - 0.003, MOUTH_HALF + 0.015)
    below = 1 - _smoothstep(y, y_line - width, y_line + width)
    z0 = np.where(y < -0.070, -0.022 + 0.062 * _smoothstep(-y, 0.070, 0.100), -0.022)
    front = _smoothstep(z, z0 - 0.008, z0 + 0.032)
    jaw = below * front
    in_mouth = 1 - _smoothstep(ax, MOUTH_HALF - 0.008, MOUTH_HALF)
    on_slit = np.zeros(len(v), dtype=bool)
    on_slit[g.grid[MOUTH_ROW, list(g.slit_lower)]] = True
    on_slit[list(g.slit_lower.values())] = True
    # near the slit the side decides: upper lip 0, lower lip 1 (0.5 at the corners)
    split = np.where(lip_upper > 0.5, 0.5 * (1 - in_mouth), 1 - 0.5 * (1 - in_mouth))
    jaw = np.where(on_slit, split, jaw)
    jaw = np.minimum(jaw, 1 - root)
    w[:, 0] = root
    w[:, 2] = jaw
    w[:, 1] = 1 - root - jaw
    for k, ids in enumerate(g.eye_ids):
        w[ids] = 0.0
        w[ids, 3 + k] = 1.0
    return np.clip(w, 0, None) / np.clip(w, 0, None).sum(1, keepdims=True)


# -- blend shapes --------------------------------------------------------------------------------


def _masks(v: np.ndarray, y_m: float) -> dict[str, np.ndarray]:
    """Soft (V,) regions used to build the semantic components."""
    x, y, z = v.T
    ax = np.abs(x)
    front = _smoothstep(z, 0.03, 0.07)
    eye = np.maximum(
        _gauss(np.hypot(x - EYE_X, y - EYE_Y), 0.012), _gauss(np.hypot(x + EYE_X, y - EYE_Y), 0.012)
    )
    return {
        "front": front,
        "nose": _gauss(x, 0.012) * _gauss(y - 0.004, 0.020) * front,
        "nose_tip": _gauss(x, 0.010) * _gauss(y - (-0.006), 0.010) * front,
        "alae": _gauss(ax - 0.014, 0.007) * _gauss(y - (-0.013), 0.007) * front,
        "bridge": _gauss(x, 0.008) * _gauss(y - 0.022, 0.010) * front,
        "mouth": _gauss(ax, 0.020) * _gauss(y - y_m, 0.010) * front,
        "lips": (1 - _smoothstep(ax, MOUTH_HALF - 0.004, MOUTH_HALF + 0.004))
        * _gauss(y - y_m, 0.008)
        * front,
        "corners": _gauss(ax - MOUTH_HALF, 0.009) * _gauss(y - y_m, 0.009) * front,
        "chin": _gauss(x, 0.018) * _gauss(y - (-0.080), 0.014) * front,
        "jaw": _smoothstep(ax, 0.02, 0.06)
        * _gauss(y - (-0.070), 0.020)
        * _smoothstep(z, -0.03, 0.01),
        "cheek": _gauss(ax - 0.042, 0.014)
        * _gauss(y - (-0.022), 0.016)
        * _smoothstep(z, 0.02, 0.06),
        "cheekbone": _gauss(ax - 0.050, 0.012)
        * _gauss(y - 0.008, 0.012)
        * _smoothstep(z, 0.02, 0.06),
        "brow": _gauss(y - 0.048, 0.008) * (1 - _smoothstep(ax, 0.05, 0.065)) * front,
        "inner_brow": _gauss(ax - 0.014, 0.010) * _gauss(y - 0.046, 0.008) * front,
        "forehead": _smoothstep(y, 0.035, 0.060)
        * (1 - _smoothstep(y, 0.10, 0.13))
        * _smoothstep(z, 0.0, 0.05),
        "eye": eye * front,
        "upper_lid": eye * _smoothstep(y - EYE_Y, 0.001, 0.006) * front,
        "ear": _smoothstep(ax, 0.05, 0.07) * _gauss(y - 0.004, 0.025) * _gauss(z + 0.014, 0.016),
        "lower_face": (1 - _smoothstep(y, -0.03, 0.0))
        * _smoothstep(y, -0.115, -0.09)
        * _smoothstep(z, -0.02, 0.03),
    }


def _unit(d: np.ndarray, amp: float) -> np.ndarray:
    """Scales a (V,3) field so its largest vertex displacement is `amp` metres."""
    m = np.linalg.norm(d, axis=1).max()
    return d * (amp / m) if m > 0 else d


def _random_fields(
    p: np.ndarray, n: int, rng: np.random.Generator, f_lo: float, f_hi: float, m: int = 160
) -> np.ndarray:
    """(n,P,3) smooth random vector fields, wavelengths going from 2*pi/f_lo (component 0)
    down to 2*pi/f_hi (the last); three of every four mirror-symmetric, the rest
    antisymmetric. Each field mixes m shared plane waves (a matrix product, fast) with
    random weights windowed around its own frequency band."""
    freqs = np.geomspace(f_lo, f_hi, m)
    dirs = rng.normal(size=(m, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    phase = rng.uniform(0, 2 * np.pi, size=m)
    mirror = np.array([-1.0, 1.0, 1.0])
    waves = np.sin(freqs * (p @ dirs.T) + phase)  # (P,m)
    waves_m = np.sin(freqs * ((p * mirror) @ dirs.T) + phase)
    centre = np.linspace(0, m - 1, n)
    window = np.exp(-0.5 * ((np.arange(m)[None] - centre[:, None]) / (m / 20)) ** 2)  # (n,m)
    coef = rng.normal(size=(n, m, 3)) * window[:, :, None]
    c2 = np.transpose(coef, (1, 0, 2)).reshape(m, n * 3)
    f = (waves @ c2).reshape(len(p), n, 3)
    fm = (waves_m @ c2).reshape(len(p), n, 3) * mirror
    sign = np.where(np.arange(n) % 4 == 3, -1.0, 1.0)[None, :, None]
    return np.ascontiguousarray(np.transpose(0.5 * (f + sign * fm), (1, 0, 2)))


def _rigid_eyes(d: np.ndarray, g: _Geometry, field_at_centres: np.ndarray) -> np.ndarray:
    """Eyeballs move as wholes: their vertices take the field's value at their centre."""
    for k, ids in enumerate(g.eye_ids):
        d[..., ids, :] = field_at_centres[..., k : k + 1, :]
    return d


def _shape_basis(g: _Geometry, rng: np.random.Generator) -> np.ndarray:
    """(V,3,N_SHAPE) identity components, displacement per unit standard deviation."""
    v = g.verts
    x, y, z = v.T
    y_m = float(v[g.grid[MOUTH_ROW, N_COLS // 2], 1])
    m = _masks(v, y_m)
    sgn = np.sign(x)
    zero = np.zeros_like(x)
    semantic = [
        # the skull grows around a face of fixed size (a pure scale would be confounded
        # with the camera distance in photos)
        ("cranium size", np.stack([x, y - 0.01, z], 1) * (1 - 0.85 * m["front"])[:, None], 6.0),
        ("head width", np.stack([x * _smoothstep(y, -0.12, -0.06), zero, zero], 1), 5.5),
        ("face length", np.stack([zero, np.minimum(y - 0.02, 0) * m["front"], zero], 1), 5.5),
        ("head depth", np.stack([zero, zero, np.minimum(z + 0.02, 0)], 1), 5.0),
        ("head height", np.stack([zero, np.maximum(y - 0.04, 0), zero], 1), 5.0),
        ("jaw width", np.stack([x * m["jaw"], zero, zero], 1), 4.5),
        ("nose length", np.stack([zero, -m["nose_tip"], 0.6 * m["nose_tip"]], 1), 4.0),
        ("nose protrusion", np.stack([zero, zero, m["nose"]], 1), 4.0),
        ("nose width", np.stack([sgn * m["alae"], zero, zero], 1), 3.5),
        ("chin", np.stack([zero, -0.5 * m["chin"], m["chin"]], 1), 4.0),
        ("cheek fullness", np.stack([sgn * m["cheek"], zero, 0.6 * m["cheek"]], 1), 3.5),
        ("cheekbones", np.stack([sgn * m["cheekbone"], zero, 0.5 * m["cheekbone"]], 1), 3.0),
        ("brow", np.stack([zero, 0.5 * m["brow"], m["brow"]], 1), 3.0),
        ("eye spacing", np.stack([sgn * m["eye"], zero, zero], 1), 3.0),
        ("eye height", np.stack([zero, m["eye"], zero], 1), 2.5),
        ("lip thickness", np.stack([zero, zero, m["lips"]], 1), 2.5),
        ("mouth width", np.stack([x * m["mouth"], zero, zero], 1), 2.5),
        ("forehead slope", np.stack([zero, zero, -(y - 0.035) * m["forehead"]], 1), 3.0),
        ("nose bridge", np.stack([zero, zero, m["bridge"]], 1), 2.0),
        ("ears", np.stack([sgn * m["ear"], 0.5 * m["ear"], zero], 1), 2.5),
        (
            "lower face depth",
            np.stack([zero, zero, m["lower_face"] * _smoothstep(z, 0.0, 0.06)], 1),
            3.0,
        ),
    ]
    n_sem = len(semantic)
    basis = np.empty((N_SHAPE, len(v), 3))
    centres = g.eye_centres
    for k, (_, d, amp) in enumerate(semantic):
        # eyeballs ride along rigidly with the eyelids around them
        d = _rigid_eyes(d.copy(), g, _nearest_skin_field(g, d, centres))
        basis[k] = _unit(d, amp * 1e-3)
    n_rand = N_SHAPE - n_sem
    pts = np.concatenate([v, centres])
    fields = _random_fields(pts, n_rand, rng, 8.0, 70.0)
    for i in range(n_rand):
        f = fields[i, : len(v)].copy()
        f = _rigid_eyes(f, g, fields[i, len(v) :])
        amp = 1.5e-3 * (1 + i / 6.0) ** -1.2
        basis[n_sem + i] = _unit(f, amp)
    return np.ascontiguousarray(np.transpose(basis, (1, 2, 0)))


def _nearest_skin_field(g: _Geometry, d: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(2,3) the field averaged over skin vertices within 2 cm in front of each eye centre
    (where the eyelids are), so eyeballs follow their sockets."""
    v = g.verts[: g.skin_count]
    out = np.zeros((2, 3))
    for k, c in enumerate(centres):
        dist = np.linalg.norm(v - c, axis=1)
        w = np.exp(-0.5 * (dist / 0.012) ** 2) * (v[:, 2] > c[2])
        if w.sum() > 0:
            out[k] = (d[: g.skin_count] * w[:, None]).sum(0) / w.sum()
    return out


def _expression_basis(g: _Geometry, lip_upper: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(V,3,N_EXPR): smile, mouth open, pucker, brow raise, brow furrow, cheek puff, mouth
    left, mouth right, lip press, jaw side, blink, sneer, frown, lip funnel, then small
    smooth random fields on the face. Per unit: a few millimetres."""
    v = g.verts
    x, y, z = v.T
    y_m = float(v[g.grid[MOUTH_ROW, N_COLS // 2], 1])
    m = _masks(v, y_m)
    sgn = np.sign(x)
    zero = np.zeros_like(x)
    lower = (1 - lip_upper) * np.maximum(
        m["mouth"], _gauss(np.abs(x), 0.03) * (y < y_m + 0.001) * m["front"]
    )
    upper = lip_upper * m["mouth"] * _smoothstep(y, y_m - 0.001, y_m + 0.002)
    lips = m["lips"]
    semantic = [
        (
            "smile",
            np.stack(
                [0.5 * sgn * m["corners"], m["corners"] + 0.4 * m["cheek"], -0.4 * m["corners"]], 1
            ),
            5.0,
        ),
        (
            "mouth open",
            np.stack([zero, 0.35 * upper - lower * _smoothstep(y, -0.11, -0.06), zero], 1),
            6.0,
        ),
        ("pucker", np.stack([-0.3 * x / MOUTH_HALF * lips, zero, lips], 1), 4.0),
        ("brow raise", np.stack([zero, m["forehead"] * _gauss(y - 0.05, 0.02), zero], 1), 5.0),
        (
            "brow furrow",
            np.stack([-0.6 * sgn * m["inner_brow"], -m["inner_brow"], 0.3 * m["inner_brow"]], 1),
            3.5,
        ),
        ("cheek puff", np.stack([sgn * m["cheek"], zero, 0.5 * m["cheek"]], 1), 5.0),
        ("mouth left", np.stack([m["mouth"], zero, zero], 1), 4.0),
        ("mouth right", np.stack([-m["mouth"], zero, zero], 1), 4.0),
        ("lip press", np.stack([zero, -(y - y_m) / 0.01 * lips, -0.5 * lips], 1), 2.5),
        ("jaw side", np.stack([m["lower_face"] * _smoothstep(-y, 0.04, 0.07), zero, zero], 1), 4.0),
        ("blink", np.stack([zero, -m["upper_lid"], 0.25 * m["upper_lid"]], 1), 6.0),
        ("sneer", np.stack([0.3 * sgn * m["alae"], m["alae"], zero], 1), 2.5),
        ("frown", np.stack([zero, -m["corners"], zero], 1), 3.5),
        ("lip funnel", np.stack([zero, (y - y_m) / 0.01 * lips, 0.6 * lips], 1), 2.5),
    ]
    basis = np.zeros((N_EXPR, len(v), 3))
    for k, (_, d, amp) in enumerate(semantic):
        basis[k] = _unit(d, amp * 1e-3)
    n_sem = len(semantic)
    n_rand = N_EXPR - n_sem
    fields = _random_fields(v, n_rand, rng, 30.0, 120.0)
    face = m["front"] * _smoothstep(y, -0.11, -0.09) * (1 - _smoothstep(y, 0.07, 0.10))
    for i in range(n_rand):
        f = fields[i] * face[:, None]
        basis[n_sem + i] = _unit(f, 1.2e-3 * (1 + i / 5.0) ** -1.2)
    for ids in g.eye_ids:  # expressions never move the eyeballs
        basis[:, ids] = 0.0
    return np.ascontiguousarray(np.transpose(basis, (1, 2, 0)))


def _pose_correctives(g: _Geometry) -> np.ndarray:
    """(V,3,36) small pose-corrective blend shapes in FLAME's layout: component
    9*(j-1) + 3*r + c multiplies (R_j - I)[r, c]. Neck bend and twist, jaw opening."""
    v = g.verts
    x, y, z = v.T
    pd = np.zeros((len(v), 3, 36))
    sgn = np.sign(x)
    skin = np.zeros(len(v))
    skin[: g.skin_count] = 1.0
    # neck (j=1) flexion about x: (R-I)[2,1] = sin: a fold under the chin, front neck bulges
    under_chin = _gauss(y - (-0.100), 0.012) * _smoothstep(z, 0.0, 0.05) * skin
    pd[:, 2, 9 * 0 + 3 * 2 + 1] = 0.010 * under_chin
    pd[:, 1, 9 * 0 + 3 * 2 + 1] = 0.004 * under_chin
    # neck twist about y: (R-I)[0,2] = sin: the neck muscles on the far side stand out
    side_neck = _gauss(y - (-0.120), 0.025) * _smoothstep(np.abs(x), 0.03, 0.05) * skin
    pd[:, 0, 9 * 0 + 3 * 0 + 2] = 0.006 * side_neck * sgn * (x < 0)
    pd[:, 0, 9 * 0 + 3 * 2 + 0] = -0.006 * side_neck * sgn * (x > 0)
    # jaw (j=2) opening about x: (R-I)[2,1] = sin: cheeks thin, skin under the chin tightens
    cheek = (
        _gauss(np.abs(x) - 0.045, 0.015)
        * _gauss(y - (-0.040), 0.018)
        * _smoothstep(z, 0.0, 0.05)
        * skin
    )
    sub = _gauss(y - (-0.095), 0.012) * _gauss(x, 0.03) * _smoothstep(z, 0.02, 0.06) * skin
    k = 9 * 1 + 3 * 2 + 1
    pd[:, 0, k] = -0.008 * cheek * sgn
    pd[:, 1, k] = 0.006 * sub
    pd[:, 2, k] = -0.004 * sub
    # (R-I)[1,1] = cos - 1 (second order): the lips stretch a little
    lips = _gauss(np.abs(x), 0.02) * _gauss(y - (-0.048), 0.01) * _smoothstep(z, 0.05, 0.08) * skin
    pd[:, 2, 9 * 1 + 3 * 1 + 1] = 0.01 * lips
    return pd


# -- landmarks -------------------------------------------------------------------------------------


def _bary_2d(pts: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Barycentric coordinates of 2D points (N,2) in 2D triangles (F,3,2) -> (N,F,3)."""
    a, b, c = tri[None, :, 0], tri[None, :, 1], tri[None, :, 2]
    p = pts[:, None]
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[..., 0] * v1[..., 1] - v1[..., 0] * v0[..., 1]
    den = np.where(np.abs(den) < 1e-18, 1e-18, den)
    l1 = (v2[..., 0] * v1[..., 1] - v1[..., 0] * v2[..., 1]) / den
    l2 = (v0[..., 0] * v2[..., 1] - v2[..., 0] * v0[..., 1]) / den
    return np.stack([1 - l1 - l2, l1, l2], -1)


def _cast_front(
    v: np.ndarray, faces: np.ndarray, cand: np.ndarray, xy: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rays along -z through points xy (N,2): the front-most hit among candidate faces.
    Returns face ids (N,) and barycentrics (N,3)."""
    tri = v[faces[cand]]  # (F,3,3)
    bary = _bary_2d(xy, tri[..., :2])  # (N,F,3)
    inside = (bary >= -1e-9).all(-1)
    zhit = (bary * tri[None, :, :, 2]).sum(-1)
    zhit = np.where(inside, zhit, -np.inf)
    best = zhit.argmax(1)
    if not np.isfinite(zhit[np.arange(len(xy)), best]).all():
        raise RuntimeError("test head landmark ray missed the mesh")
    b = bary[np.arange(len(xy)), best]
    return cand[best], np.clip(b, 0, 1) / np.clip(b, 0, 1).sum(1, keepdims=True)


def _edge_face(faces: np.ndarray, a: int, b: int) -> tuple[int, np.ndarray]:
    """A face containing the edge (a, b) and the corner slots of a and b in it."""
    hit = np.flatnonzero((faces == a).any(1) & (faces == b).any(1))
    f = int(hit[0])
    return f, np.array(
        [int(np.flatnonzero(faces[f] == a)[0]), int(np.flatnonzero(faces[f] == b)[0])]
    )


def _on_edge(faces: np.ndarray, a: int, b: int, t: float) -> tuple[int, np.ndarray]:
    f, slots = _edge_face(faces, a, b)
    bary = np.zeros(3)
    bary[slots[0]] = 1 - t
    bary[slots[1]] += t
    return f, bary


def _static_landmarks(g: _Geometry) -> tuple[np.ndarray, np.ndarray]:
    """iBUG points 17..67: faces (51,) and barycentrics (51,3), placed on the features."""
    v, faces = g.verts, g.faces
    skin_faces = np.flatnonzero(faces.max(1) < g.skin_count)
    y_m = float(v[g.grid[MOUTH_ROW, N_COLS // 2], 1])
    pts: dict[int, tuple[float, float]] = {}
    # brows 17-21 (subject's right, -x, outer to inner) and 22-26 (left, inner to outer)
    brow_x = np.array([0.056, 0.046, 0.036, 0.026, 0.015])
    by = brow_y(brow_x) + 0.001
    for i in range(5):
        pts[17 + i] = (-brow_x[i], by[i])
        pts[26 - i] = (brow_x[i], by[i])
    # nose bridge 27-30 (top to tip), nostrils 31-35 (-x to +x)
    for i, yy in enumerate((0.034, 0.022, 0.010, -0.003)):
        pts[27 + i] = (0.0, yy)
    for i, (xx, yy) in enumerate(
        (
            (-0.0155, -0.0150),
            (-0.0080, -0.0185),
            (0.0, -0.0205),
            (0.0080, -0.0185),
            (0.0155, -0.0150),
        )
    ):
        pts[31 + i] = (xx, yy)
    # eyes: the fissure, slightly outside its opening so the points sit on the lid margins
    ex, ey_up, ey_lo = eye_opening_curve(7)
    corner_in = (EYE_INNER - 0.0003, float(ey_up[0]))
    corner_out = (EYE_OUTER + 0.0003, float(ey_up[-1]))
    up = [(float(ex[i]), float(ey_up[i]) + 0.0004) for i in (2, 4)]
    lo = [(float(ex[i]), float(ey_lo[i]) - 0.0004) for i in (2, 4)]
    # left eye (+x): 42 inner corner, 43-44 upper lid inner to outer, 45 outer, 46-47 lower outer to inner
    pts[42], pts[43], pts[44], pts[45], pts[46], pts[47] = (
        corner_in,
        up[0],
        up[1],
        corner_out,
        lo[1],
        lo[0],
    )
    # right eye (-x): 36 outer corner, 37-38 upper outer to inner, 39 inner, 40-41 lower inner to outer
    mx = lambda p: (-p[0], p[1])  # noqa: E731
    pts[36], pts[37], pts[38], pts[39], pts[40], pts[41] = (
        mx(corner_out),
        mx(up[1]),
        mx(up[0]),
        mx(corner_in),
        mx(lo[0]),
        mx(lo[1]),
    )
    # outer lips 48-59: 48 right corner, 49-53 upper border, 54 left corner, 55-59 lower border
    pts[48] = (-(MOUTH_HALF + 0.0015), y_m)
    pts[54] = (MOUTH_HALF + 0.0015, y_m)
    for i, xx in enumerate((-0.016, -0.0055, 0.0, 0.0055, 0.016)):
        pts[49 + i] = (xx, y_m + float(lip_heights(xx)[0]) - 0.0008)
    for i, xx in enumerate((0.017, 0.0085, 0.0, -0.0085, -0.017)):
        pts[55 + i] = (xx, y_m - float(lip_heights(xx)[1]) + 0.0008)
    ids = sorted(k for k in pts if k < 60)
    f, b = _cast_front(v, faces, skin_faces, np.array([pts[k] for k in ids]))
    out_f = dict(zip(ids, f, strict=True))
    out_b = dict(zip(ids, b, strict=True))
    # inner lips 60-67 on the slit edges: upper points on the upper lip's faces, lower on
    # the lower lip's (the duplicated vertices), so they part when the mouth opens
    cols = sorted(g.slit_lower, key=lambda c: v[g.grid[MOUTH_ROW, c], 0])
    left_corner = g.grid[
        MOUTH_ROW, (max(cols, key=lambda c: v[g.grid[MOUTH_ROW, c], 0]) + 1) % N_COLS
    ]
    right_corner = g.grid[
        MOUTH_ROW, (min(cols, key=lambda c: v[g.grid[MOUTH_ROW, c], 0]) - 1) % N_COLS
    ]
    xs = np.array([v[g.grid[MOUTH_ROW, c], 0] for c in cols])
    upper_ids = [int(g.grid[MOUTH_ROW, c]) for c in cols]
    lower_ids = [g.slit_lower[c] for c in cols]

    def slit_point(xx: float, ids_: list[int]) -> tuple[int, np.ndarray]:
        i = int(np.clip(np.searchsorted(xs, xx) - 1, 0, len(xs) - 2))
        t = float(np.clip((xx - xs[i]) / (xs[i + 1] - xs[i]), 0, 1))
        return _on_edge(faces, ids_[i], ids_[i + 1], t)

    for k, corner in ((60, right_corner), (64, left_corner)):
        fc = int(np.flatnonzero((faces == corner).any(1) & (faces.max(1) < g.skin_count))[0])
        bc = (faces[fc] == corner).astype(float)
        out_f[k], out_b[k] = fc, bc
    for k, xx in ((61, -0.011), (62, 0.0), (63, 0.011)):
        out_f[k], out_b[k] = slit_point(xx, upper_ids)
    for k, xx in ((65, 0.011), (66, 0.0), (67, -0.011)):
        out_f[k], out_b[k] = slit_point(xx, lower_ids)
    order = range(17, 68)
    return np.array([out_f[k] for k in order], dtype=np.int64), np.array([out_b[k] for k in order])


def _rot_y(deg: float) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _contour_faces(g: _Geometry) -> np.ndarray:
    """Skin faces that may carry jaw-contour points: cheeks and jaw in front of the ears,
    above the neck, away from the nose, mouth and eyes."""
    v, faces = g.verts, g.faces
    c = v[faces].mean(1)
    x, y, z = c.T
    ok = faces.max(1) < g.skin_count
    ok &= (v[faces][..., 2].min(1) > -0.004) & (y > -0.097) & (y < 0.026)
    ok &= ~((np.abs(x) < 0.032) & (y > -0.072))  # nose, lips
    ok &= ~((np.abs(np.abs(x) - EYE_X) < 0.022) & (np.abs(y - EYE_Y) < 0.016))
    return np.flatnonzero(ok)


_CONTOUR_CENTRE = np.array([0.0, -0.004, 0.045])
_CONTOUR_ANGLES = np.radians((np.arange(17) - 8) * 12.0)  # from straight down, + toward +x


def _silhouette(
    g: _Geometry, cand: np.ndarray, yaw: float, ks: list[int]
) -> list[tuple[int, np.ndarray]]:
    """Contour points ks on the silhouette of the head turned by `yaw` degrees (orthographic
    view along -z): along a ray in the image from a point inside the face, the farthest
    crossing of a candidate triangle edge."""
    v, faces = g.verts, g.faces
    rv = v @ _rot_y(yaw).T
    o = (_CONTOUR_CENTRE @ _rot_y(yaw).T)[:2]
    tri = faces[cand]
    ea = np.concatenate([tri[:, 0], tri[:, 1], tri[:, 2]])
    eb = np.concatenate([tri[:, 1], tri[:, 2], tri[:, 0]])
    ef = np.concatenate([cand, cand, cand])
    p, q = rv[ea, :2], rv[eb, :2]
    out = []
    for k in ks:
        a = _CONTOUR_ANGLES[k]
        d = np.array([np.sin(a), -np.cos(a)])
        e = q - p
        den = d[0] * e[:, 1] - d[1] * e[:, 0]
        w = p - o
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (w[:, 0] * e[:, 1] - w[:, 1] * e[:, 0]) / den
            u = (w[:, 0] * d[1] - w[:, 1] * d[0]) / den
        ok = (np.abs(den) > 1e-15) & (t > 0) & (u >= 0) & (u <= 1)
        i = int(np.argmax(np.where(ok, t, -np.inf)))
        f = int(ef[i])  # the candidate face whose edge makes the outermost crossing
        bary = np.zeros(3)
        bary[int(np.flatnonzero(faces[f] == ea[i])[0])] = 1 - u[i]
        bary[int(np.flatnonzero(faces[f] == eb[i])[0])] += u[i]
        out.append((f, bary))
    return out


def _dynamic_contour(g: _Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(79,17) faces and (79,17,3) barycentrics of the jaw contour, bin k for yaw k-39
    degrees (this project's order: positive yaw turns the face toward +x).

    At yaw 0 all 17 points lie on the frontal face outline. When the head turns, the side
    turning away from the camera (+x for positive yaw: points 9..16) slides onto the new
    silhouette over the cheek; the side turning toward the camera keeps the frontal jaw line,
    which stays visible; the chin (8) stays."""
    cand = _contour_faces(g)
    frontal = _silhouette(g, cand, 0.0, list(range(17)))
    faces = np.zeros((79, 17), dtype=np.int64)
    bary = np.zeros((79, 17, 3))
    for b in range(79):
        yaw = float(b - 39)
        pts = list(frontal)
        if yaw > 0:
            for k, fb in zip(
                range(9, 17), _silhouette(g, cand, yaw, list(range(9, 17))), strict=True
            ):
                pts[k] = fb
        elif yaw < 0:
            for k, fb in zip(
                range(0, 8), _silhouette(g, cand, yaw, list(range(0, 8))), strict=True
            ):
                pts[k] = fb
        faces[b] = [p[0] for p in pts]
        bary[b] = [p[1] for p in pts]
    return faces, bary


# -- UV layout and masks ----------------------------------------------------------------------------


def _uv_layout(g: _Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(T,2) UVs (origin bottom-left) and (F,3) UV faces.

    The skin is a cylinder cut at the back of the head: u follows the columns, v the rows,
    so the face (denser columns and rows) gets most of the texture. Each eyeball is a disc
    with the pupil at its centre, in the strip below the skin."""
    faces = g.faces
    n_r = N_ROWS
    u0, u1, v0, v1 = 0.005, 0.995, 0.17, 0.995
    # skin grid UVs with a seam column (index N_COLS == column 0 on the other side)
    cu = u0 + (u1 - u0) * np.arange(N_COLS + 1) / N_COLS
    rv = v0 + (v1 - v0 - 0.01) * np.arange(n_r) / (n_r - 1)
    grid_uv = np.stack(np.meshgrid(cu, rv), -1).reshape(-1, 2)  # (n_r*(N_COLS+1), 2)
    uv_id = lambda r, c: r * (N_COLS + 1) + c  # noqa: E731
    pole_uv = np.stack(
        [u0 + (u1 - u0) * (np.arange(N_COLS) + 0.5) / N_COLS, np.full(N_COLS, v1)], 1
    )
    uvs = [grid_uv, pole_uv]
    n_uv = len(grid_uv) + N_COLS
    # vertex -> (row, col) for skin vertices
    rc = np.full((g.skin_count, 2), -1)
    rc[g.grid.ravel()] = np.stack(np.divmod(np.arange(N_ROWS * N_COLS), N_COLS), 1)
    for c, vid in g.slit_lower.items():
        rc[vid] = (MOUTH_ROW, c)
    ft = np.zeros_like(faces)
    skin = np.flatnonzero(faces.max(1) < g.skin_count)
    for f in skin:
        tri = faces[f]
        if g.pole in tri:
            others = [t for t in tri if t != g.pole]
            cols = sorted(rc[o, 1] for o in others)
            c_lo = cols[0] if cols[1] - cols[0] == 1 else cols[1]  # the wrap quad
            ids = []
            for t in tri:
                if t == g.pole:
                    ids.append(len(grid_uv) + c_lo)
                else:
                    c = rc[t, 1]
                    ids.append(uv_id(rc[t, 0], N_COLS if (c == 0 and c_lo == N_COLS - 1) else c))
            ft[f] = ids
            continue
        r, c = rc[tri, 0], rc[tri, 1]
        if c.max() == N_COLS - 1 and c.min() == 0:  # quad across the seam at the back
            c = np.where(c == 0, N_COLS, c)
        ft[f] = [uv_id(a, b) for a, b in zip(r, c, strict=True)]
    # eyeballs: polar discs
    for k, ids in enumerate(g.eye_ids):
        centre = np.array([0.075 + 0.16 * k, 0.082])
        radius = 0.072
        local = g.verts[ids] - g.eye_centres[k]
        polar = np.arccos(np.clip(local[:, 2] / EYE_R, -1, 1)) / np.pi  # 0 front, 1 back
        az = np.arctan2(local[:, 0], local[:, 1])
        disc = centre + radius * polar[:, None] * np.stack([np.sin(az), np.cos(az)], 1)
        base = n_uv
        uvs.append(disc)
        n_uv += len(disc)
        back = ids[-1]
        efaces = np.flatnonzero(np.isin(faces[:, 0], ids))
        for f in efaces:
            tri = faces[f]
            local_ids = tri - ids[0] + base
            if back in tri:  # the back pole: one UV per fan triangle, at its mid angle
                others = [t for t in tri if t != back]
                mid = g.verts[others].mean(0) - g.eye_centres[k]
                a = np.arctan2(mid[0], mid[1])
                uvs.append((centre + radius * np.array([np.sin(a), np.cos(a)]))[None])
                local_ids = np.where(tri == back, n_uv, local_ids)
                n_uv += 1
            ft[f] = local_ids
    return np.concatenate(uvs).astype(np.float32), ft.astype(np.int64)


def _vertex_masks(g: _Geometry, lmk: np.ndarray) -> dict[str, np.ndarray]:
    """Named vertex-index sets like FLAME_masks.pkl ('face' is what fitting measures)."""
    v = g.verts
    x, y, z = v.T
    n = len(v)
    skin = np.arange(n) < g.skin_count
    eye_l = np.zeros(n, dtype=bool)
    eye_l[g.eye_ids[0]] = True
    eye_r = np.zeros(n, dtype=bool)
    eye_r[g.eye_ids[1]] = True
    chin_y = lmk[8, 1]
    face = skin & (z > 0.005) & (y > chin_y - 0.004) & (y < 0.085) & (np.abs(x) < 0.074)
    face &= ~((y < chin_y + 0.012) & (z < 0.055))  # not under the chin
    neck = skin & (y < -0.095) & ~face
    masks = {
        "face": face,
        "left_eyeball": eye_l,
        "right_eyeball": eye_r,
        "lips": skin
        & (np.abs(x) < MOUTH_HALF + 0.003)
        & (np.abs(y - lmk[62, 1]) < 0.012)
        & (z > 0.06),
        "nose": skin & (np.abs(x) < 0.022) & (y > -0.022) & (y < 0.038) & (z > 0.07),
        "forehead": skin & (y > 0.05) & (y < 0.10) & (z > 0.03),
        "left_eye_region": skin & (np.hypot(x - EYE_X, y - EYE_Y) < 0.02) & (z > 0.04),
        "right_eye_region": skin & (np.hypot(x + EYE_X, y - EYE_Y) < 0.02) & (z > 0.04),
        "neck": neck,
        "scalp": skin & (y > 0.06) & ~face,
        "left_ear": skin & (x > 0.05) & (np.abs(y - 0.004) < 0.03) & (np.abs(z + 0.014) < 0.018),
        "right_ear": skin & (x < -0.05) & (np.abs(y - 0.004) < 0.03) & (np.abs(z + 0.014) < 0.018),
        "boundary": np.isin(np.arange(n), g.grid[0]),
    }
    masks["eye_region"] = masks["left_eye_region"] | masks["right_eye_region"]
    return {k: np.flatnonzero(m).astype(np.int64) for k, m in masks.items()}


# -- assembly and files -------------------------------------------------------------------------------


@dataclass
class GeneratedHead:
    """The generated head in FLAME's formats (numpy / scipy objects, ready to pickle)."""

    model: dict[str, Any]  # generic_model.pkl-style dict, plus mfnet_test_head: True
    landmarks: dict[str, np.ndarray]  # DECA landmark_embedding.npy dict (FLAME bin order)
    uv: dict[str, np.ndarray]  # vt, ft as in FLAME_texture.npz
    masks: dict[str, np.ndarray]  # FLAME_masks.pkl-style vertex index sets


def build_test_head() -> GeneratedHead:
    """Builds the test head in memory, deterministically (about a second)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(20240229)
    g = _build_geometry()
    lip_upper = _lip_side(g)
    reg, joints = _regressor(g)
    weights = _skin_weights(g, lip_upper)
    shapedirs = _shape_basis(g, rng)
    exprdirs = _expression_basis(g, lip_upper, rng)
    posedirs = _pose_correctives(g)
    static_f, static_b = _static_landmarks(g)
    dyn_f, dyn_b = _dynamic_contour(g)
    full_f = np.concatenate([dyn_f[39], static_f])
    full_b = np.concatenate([dyn_b[39], static_b])
    lmk = (g.verts[g.faces[full_f]] * full_b[..., None]).sum(1)
    vt, ft = _uv_layout(g)
    n_j = len(JOINT_NAMES)
    kintree = np.stack([np.where(PARENTS < 0, 2**32 - 1, PARENTS), np.arange(n_j)]).astype(np.int64)
    model = {
        "mfnet_test_head": True,
        "mfnet_test_head_version": TESTHEAD_VERSION,
        "note": "mfnet generated test head: NOT FLAME (same file format, made by code)",
        "v_template": g.verts.astype(np.float64),
        "f": g.faces.astype(np.uint32),
        "shapedirs": np.concatenate([shapedirs, exprdirs], axis=2).astype(np.float64),
        "posedirs": posedirs.astype(np.float64),
        "J_regressor": sp.csc_matrix(reg),
        "J": joints.astype(np.float64),
        "kintree_table": kintree,
        "weights": weights.astype(np.float64),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "joint_names": list(JOINT_NAMES),
    }
    landmarks = {
        "static_lmk_faces_idx": static_f.astype(np.int64),
        "static_lmk_bary_coords": static_b.astype(np.float64),
        # FLAME/DECA bin order (rows 0..39 for y = -yaw = 0..39, then y = -1..-39)
        "dynamic_lmk_faces_idx": flame_bins_to_ours(dyn_f).astype(np.int64),
        "dynamic_lmk_bary_coords": flame_bins_to_ours(dyn_b).astype(np.float64),
        "full_lmk_faces_idx": full_f[None].astype(np.int64),
        "full_lmk_bary_coords": full_b[None].astype(np.float64),
    }
    return GeneratedHead(
        model=model, landmarks=landmarks, uv={"vt": vt, "ft": ft}, masks=_vertex_masks(g, lmk)
    )


def flame_bins_to_ours(table: np.ndarray) -> np.ndarray:
    """Same permutation as `flame.flame_bins_to_ours` (kept here so generating the head
    does not import torch): FLAME's dynamic-contour rows are indexed by -yaw."""
    idx = np.concatenate([39 - np.arange(40), np.arange(40, 79)])
    return np.asarray(table)[idx]


def _npy_bytes(obj: Any) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    return buf.getvalue()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz with fixed zip timestamps (np.savez stamps the current time)."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, _npy_bytes(np.ascontiguousarray(arr)))
    return buf.getvalue()


def head_file_bytes(head: GeneratedHead) -> dict[str, bytes]:
    """File name -> bytes for the four test-head files (deterministic)."""
    return {
        MODEL_NAME: pickle.dumps(head.model, protocol=4),
        LANDMARK_NAME: _npy_bytes(np.array(head.landmarks, dtype=object)),
        TEXTURE_NAME: _npz_bytes(head.uv),
        MASKS_NAME: pickle.dumps(head.masks, protocol=4),
    }


def write_test_head(folder: Path) -> Path:
    """Generates the test head into `folder` (atomically per file, model last) and returns
    the model path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = head_file_bytes(build_test_head())
    for name in (LANDMARK_NAME, TEXTURE_NAME, MASKS_NAME, MODEL_NAME):
        atomic_write_bytes(folder / name, files[name])
    atomic_write_bytes(folder / _STAMP_NAME, _generator_stamp().encode())
    return folder / MODEL_NAME


_STAMP_NAME = "generator.txt"


def _generator_stamp() -> str:
    """Identifies the code that made the files: a changed generator regenerates the cache."""
    import hashlib

    src = Path(__file__).read_bytes()
    return f"{TESTHEAD_VERSION} {hashlib.sha256(src).hexdigest()} numpy {np.__version__}\n"


def default_folder() -> Path:
    from mfnet_core.inputs.model_files import user_cache_dir

    return user_cache_dir() / "testhead" / TESTHEAD_VERSION


def ensure_test_head(folder: Path | None = None) -> Path:
    """The test head's model path, generating the files when any is missing or was made by
    another version of this generator (default folder: <cache>/testhead/v1)."""
    folder = Path(folder) if folder is not None else default_folder()
    stamp = folder / _STAMP_NAME
    complete = all((folder / n).is_file() for n in ALL_FILES) and stamp.is_file()
    if complete and stamp.read_text(errors="replace") == _generator_stamp():
        return folder / MODEL_NAME
    return write_test_head(folder)
