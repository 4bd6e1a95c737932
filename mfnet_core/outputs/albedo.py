"""Light removal for the texture bake: per view, a low-order spherical-harmonics (SH) light
is estimated on the fitted mesh's skin and divided out of that view's colours, so the baked
texture is an albedo estimate and the head relights in Blender.

Model (paper eq. 2, Lambertian, 2nd-order SH as in DECA / 3DMM fitting), in linear light:
colour_i(t) = albedo(t) * S_i(n_i(t)), S_i(n) = H(n) @ l_i, with H the 9 SH functions of the
camera-space normal (`render.sh_basis`) and l_i one light per view. Skin albedo varies little
over the face while shading follows the normal, so each view's light is fitted against one
constant skin albedo (the light's level then holds the skin tone and the view's exposure: a
per-view gain) on the skin texels the view sees well (no eyes, brows, lips, nostrils, no
grazing normals, no clipped colours), by iteratively reweighted least squares with Cauchy
weights (hair, stubble, specular spots and shadows the SH cannot explain lose weight) and a
ridge that holds bands 1 and 2 towards no directional light (`fit_view_light` says why).
The light's shape is grey (fitted on the channel mean); its colour is a level per channel.

Each view's shading is then made relative, divided by its weighted mean over the skin texels
the view sees, so the skin's mean colour is kept (no colour shift, no change of exposure: a
flat light divides by 1), and clamped to [_MIN_SHADE, _MAX_SHADE] so that normals the fit
never saw (grazing, under the chin) cannot blow colours out.

What it cannot do: a darker albedo that follows the normal (a beard on the lower face, darker
cheeks) reads as light from above or the side, so a flat-lit photo of a bearded face gets a
little of its beard taken for shade; the ridge bounds that. A shared per-texel albedo refit
(views' de-lit colours averaged, lights refitted) was tried and made the synthetic tests
worse: the ridge's pull compounds over rounds, and a light that turns with the head is not
seen in the views' ratios anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mfnet_core.fit.solver import cauchy_weights_mad
from mfnet_core.head.interface import HeadModel
from mfnet_core.render import sh_basis

__all__ = [
    "ViewLighting",
    "landmarks_on_mesh",
    "skin_faces",
    "sh_shading",
    "fit_view_light",
    "remove_lighting",
    "head_skin_faces",
    "directional_sh",
]

# Relative shading is clamped to this range before dividing it out: a colour is brightened
# or darkened at most 2x (0.35 / 2.5 left bright specks on the James capture's lower lid rims).
_MIN_SHADE = 0.5
_MAX_SHADE = 2.0
# Texels take part in a view's light fit above this bake weight (cos^3 * fade: about 60
# degrees from the viewing direction), and with every channel inside this linear range.
_FIT_WEIGHT = 0.1
_FIT_RANGE = (0.004, 0.97)
_FIT_TEXELS = 4000
_MIN_FIT_TEXELS = 200
# Ridge per SH coefficient (relative to the data's mean diagonal): band 0 free, band 1 (the
# directional light) held a little, band 2 more. Band 1's 0.1 was chosen on synthetic heads:
# 0.02 removed a key light 5% better and took 20% more of a flat-lit beard for shade, 0.3
# the other way round by 50% / 30%.
_RIDGE = np.array([0.0] + [0.1] * 3 + [1.0] * 5)
# render.sh_basis's constant per band function: its value at the (non-unit) point (2,1,1)
# over the monomials' values there, [1, x, y, z, xy, xz, yz, x^2-y^2, 3z^2-1] = [1,2,1,1,2,2,1,3,2].
_BASIS_CONST = (
    sh_basis(torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    / torch.tensor([1.0, 2.0, 1.0, 1.0, 2.0, 2.0, 1.0, 3.0, 2.0], dtype=torch.float64)
).numpy()

# iBUG 68-point groups excluded from the skin, with the exclusion radius as a fraction of the
# outer eye-corner distance (points 36 and 45): eyes and lids, brows, lips, nostrils.
_FEATURES: tuple[tuple[tuple[int, ...], float], ...] = (
    ((36, 37, 38, 39, 40, 41, 36), 0.16),
    ((42, 43, 44, 45, 46, 47, 42), 0.16),
    ((17, 18, 19, 20, 21), 0.11),
    ((22, 23, 24, 25, 26), 0.11),
    ((48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 48), 0.09),
    ((60, 61, 62, 63, 64, 65, 66, 67, 60), 0.09),
    ((31, 32, 33, 34, 35), 0.06),
)


@dataclass
class ViewLighting:
    """One view's estimated light, for report.json.

    sh: (9,3) SH coefficients (camera space, linear light, the `render.sh_basis` convention):
    H(n) @ sh is the modelled colour of the skin at normal n (the light times one skin
    albedo); the bake divided each colour by H(n) @ sh / level. level: (3,) the skin's
    modelled mean colour in this view (linear). fit_texels: skin texels the fit used;
    inliers: the fraction of them the robust fit kept (Cauchy weight above 0.5; low: the
    skin is far from one albedo under one light). None of it is set when the view showed
    too little skin (its colours were left as they are).
    """

    name: str
    sh: np.ndarray | None
    level: np.ndarray | None
    fit_texels: int
    inliers: float

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "sh": None if self.sh is None else np.round(self.sh, 5).tolist(),
            "skin_level_linear": None if self.level is None else np.round(self.level, 5).tolist(),
            "fit_texels": int(self.fit_texels),
            "inlier_fraction": round(float(self.inliers), 4),
        }


def landmarks_on_mesh(vertices: np.ndarray, faces: np.ndarray, embedding) -> np.ndarray:  # noqa: ANN001
    """(68,3) iBUG landmarks on a mesh from the model's fixed frontal embedding
    (`LandmarkEmbedding.full_faces` / `full_bary`). vertices: (V,3); faces: (F,3)."""
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)[embedding.full_faces]]  # (68,3,3)
    return (tri * np.asarray(embedding.full_bary, np.float64)[..., None]).sum(1)


def skin_faces(
    faces: np.ndarray,
    vertices: np.ndarray,
    face_region: np.ndarray,
    landmarks: np.ndarray,
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """(F,) bool: the triangles the light is fitted on, the face's bare skin.

    Why: the light fit assumes one skin albedo; eyes, brows, lips and nostrils are other
    materials and would tilt the light. faces: (F,3); vertices: (V,3) the fitted mesh;
    face_region: (V,) bool (forehead to chin, ear to ear); landmarks: (68,3) on that mesh;
    keep: (F,) bool, other faces allowed (e.g. not painted, opaque), default all."""
    faces = np.asarray(faces)
    v = np.asarray(vertices, np.float64)
    lm = np.asarray(landmarks, np.float64)
    scale = float(np.linalg.norm(lm[36] - lm[45])) or 1.0
    ok = np.asarray(face_region, bool).copy()
    cand = np.flatnonzero(ok)
    for ids, radius in _FEATURES:
        pts = lm[list(ids)]
        dense = np.concatenate(
            [np.linspace(a, b, 6) for a, b in zip(pts[:-1], pts[1:], strict=True)]
        )
        # only the vertices in the polyline's box grown by the radius can be near it
        r = radius * scale
        box = (v[cand] >= dense.min(0) - r).all(1) & (v[cand] <= dense.max(0) + r).all(1)
        sub = cand[box]
        near = np.zeros(len(sub), bool)
        for start in range(0, len(sub), 8192):
            block = v[sub[start : start + 8192]]
            d2 = ((block[:, None, :] - dense[None]) ** 2).sum(-1).min(1)
            near[start : start + 8192] = d2 < r**2
        ok[sub[near]] = False
    out = ok[faces].all(1)
    if keep is not None:
        out &= np.asarray(keep, bool)
    return out


def sh_shading(normals: np.ndarray, sh: np.ndarray) -> np.ndarray:
    """(P,3) unit camera-space normals, (9,) or (9,C) SH -> (P,) or (P,C) shading H(n) @ sh
    in float32 (the same values as `render.sh_basis(n) @ sh`, without its (P,9) matrix)."""
    n = np.asarray(normals, np.float32)
    x, y, z = n[:, 0], n[:, 1], n[:, 2]
    lc = np.asarray(sh, np.float32) * _BASIS_CONST.reshape((9,) + (1,) * (np.ndim(sh) - 1))
    terms = (1, x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1)
    out = np.zeros((len(n),) + lc.shape[1:], np.float32)
    for k, t in enumerate(terms):
        out += np.multiply.outer(t, lc[k]) if lc.ndim > 1 else t * lc[k]
    return out


def fit_view_light(
    colour: np.ndarray, normals: np.ndarray, weight: np.ndarray, iterations: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """One view's SH light against a constant skin albedo, by iteratively reweighted,
    regularised least squares on the grey level (channel mean), then one level per channel.

    colour: (P,3) linear colours of skin texels; normals: (P,3) unit, camera space; weight:
    (P,) base weights. Returns (sh (9,3): H(n) @ sh is the modelled colour, robust weights
    (P,) in [0,1]).

    Why not `fit.photometric.solve_sh` as it is (a free 9x3 fit, nearly unregularised): one
    view sees the skin's normals within about 60 degrees of its axis, where the constant band
    and the 3z^2-1 band look alike and band 2 is poorly held, and per-channel shapes invent
    coloured light; both show (green or red patches, blown-out ears) where the bake evaluates
    the light beyond the fitted normals. So the shape is grey and held by a ridge (`_RIDGE`).
    """
    h = sh_basis(torch.as_tensor(np.asarray(normals, np.float64))).numpy()  # (P,9)
    obs = np.asarray(colour, np.float64)
    grey = obs.mean(1)
    base = np.asarray(weight, np.float64)
    robust = np.ones_like(base)
    light = np.zeros(9)
    for _ in range(max(1, iterations)):
        light = _ridge_solve(h, grey, base * robust, _RIDGE)
        robust = cauchy_weights_mad((grey - h @ light)[:, None])
    g = h @ light
    w = base * robust
    level = (w * g) @ obs / max(float((w * g) @ g), 1e-12)  # (3,) channel / grey
    return np.outer(light, level), robust


def _ridge_solve(a: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: np.ndarray) -> np.ndarray:
    """argmin_l sum w (y - a l)^2 + lam * sum_k ridge_k (l_k - p_k)^2. a: (P,9); y, w: (P,).
    The prior p is no directional light at the data's level; lam = trace(A^T W A) / 9."""
    aw = a * w[:, None]
    lhs = aw.T @ a
    prior = np.zeros(9)
    prior[0] = float(aw[:, 0] @ y) / max(float(lhs[0, 0]), 1e-12)
    lam = np.trace(lhs) / 9 * np.asarray(ridge) + 1e-12
    return np.linalg.solve(lhs + np.diag(lam), aw.T @ y + lam * prior)


def remove_lighting(
    colours: list[np.ndarray],
    normals: list[np.ndarray],
    weights: list[np.ndarray],
    skin: np.ndarray,
    names: list[str] | None = None,
    *,
    in_place: bool = False,
) -> tuple[list[np.ndarray], list[ViewLighting], list[str]]:
    """Divides each view's estimated shading out of its colours (module docstring).

    colours: per view (S,S,3) linear colours on the texture grid; normals: per view (S,S,3)
    camera-space normals (any length), or (n,3) for just the texels of nonzero weight in
    raster order (what the bake has); weights: per view (S,S) bake weights (0: unseen);
    skin: (S,S) bool texels of the skin. Returns the de-lit colours (new arrays, or
    `colours` themselves with `in_place`, which saves a copy of each grid when the caller
    keeps no shaded colours; texels of zero weight untouched), each view's `ViewLighting`
    and warnings. A view with too little skin keeps its colours and says so."""
    names = names or [f"view {i}" for i in range(len(colours))]
    skin_flat = skin.reshape(-1)
    rng = np.random.default_rng(0)
    lo, hi = _FIT_RANGE
    out: list[np.ndarray] = []
    lights: list[ViewLighting] = []
    warnings: list[str] = []
    for c, n, w, name in zip(colours, normals, weights, names, strict=True):
        ids = np.flatnonzero(w.reshape(-1) > 0)
        col = c.reshape(-1, 3)[ids]
        wt = w.reshape(-1)[ids]
        fit = np.flatnonzero(skin_flat[ids] & (wt > _FIT_WEIGHT))  # colours checked there only
        fc = col[fit]
        fit = fit[(fc > lo).all(1) & (fc < hi).all(1)]
        if len(fit) < _MIN_FIT_TEXELS:
            warnings.append(
                f"texture: the {name} view shows too little skin to estimate its light; "
                "its shading is left in"
            )
            out.append(c if in_place else c.copy())
            lights.append(ViewLighting(name, None, None, len(fit), 0.0))
            continue
        if len(fit) > _FIT_TEXELS:
            fit = np.sort(rng.choice(fit, _FIT_TEXELS, replace=False))
        nrm = n.reshape(-1, 3)[ids] if n.ndim == 3 else np.asarray(n)
        if len(nrm) != len(ids):
            raise ValueError(f"{name}: {len(nrm)} normals for {len(ids)} texels of nonzero weight")
        x, y, z = nrm[:, 0], nrm[:, 1], nrm[:, 2]  # |n| as np.linalg.norm, 5x faster
        nrm = nrm / np.maximum(np.sqrt(x * x + y * y + z * z), 1e-12)[:, None]
        sh, robust = fit_view_light(col[fit], nrm[fit], wt[fit])
        grey = sh.mean(1)  # the light's shape (9,) at the skin's grey level
        shade = sh_shading(nrm, grey)  # (P,)
        k = wt[fit] * robust
        mean = max(float(shade[fit] @ k) / max(float(k.sum()), 1e-12), 1e-6)
        rel = np.clip(shade / np.float32(mean), _MIN_SHADE, _MAX_SHADE)
        de_lit = c if in_place else c.copy()
        de_lit.reshape(-1, 3)[ids] = col / rel[:, None]
        out.append(de_lit)
        level = sh_shading(nrm[fit], sh).T @ k / max(float(k.sum()), 1e-12)
        lights.append(ViewLighting(name, sh, level, len(fit), float((robust > 0.5).mean())))
    return out, lights, warnings


def head_skin_faces(head: HeadModel, vertices: np.ndarray) -> np.ndarray:
    """(F,) bool `skin_faces` of a head model on its fitted mesh (V,3): the face region's
    opaque, unpainted triangles away from eyes, brows, lips and nostrils."""
    faces = head.faces.cpu().numpy()
    keep = head.parts.opaque(min_alpha=1.0)
    paint = head.parts.face_paint()
    if paint is not None:
        keep = keep & np.isnan(paint[:, 0])
    lm = landmarks_on_mesh(vertices, faces, head.landmark_embedding)
    return skin_faces(faces, vertices, head.face_region, lm, keep)


def directional_sh(
    ambient: float,
    key: float,
    direction: np.ndarray | tuple[float, float, float],
    tint: np.ndarray | tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """(9,3) SH (the `render.sh_basis` convention) of a uniform `ambient` light plus a
    distant light of strength `key` from `direction` (camera space, towards the light), times
    `tint` per channel: shading ~ ambient + key * max(0, n . d), the clamped cosine kept to
    band 2 (Ramamoorthi & Hanrahan 2001: band factors pi, 2 pi / 3, pi / 4). For tests and
    benchmarks: a physically plausible light (never much below the ambient)."""
    d = np.asarray(direction, np.float64)
    d = d / np.linalg.norm(d)
    h = sh_basis(torch.as_tensor(d)).numpy()  # band factor * Y_k(d); band 0: Y_0(d) only
    band = np.array([1.0, *([2 * np.pi / 3] * 3), *([np.pi / 4] * 5)])
    light = key * h / band  # key * Y_k(d)
    light[0] = key * np.pi * h[0] + ambient / h[0]
    return np.outer(light, np.asarray(tint, np.float64))
