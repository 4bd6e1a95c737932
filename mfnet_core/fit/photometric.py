"""Photometric terms: albedo from the photos, SH lighting per view (paper eq. 2), the robust
rendered-vs-photo residual inside the face mask, and PSNR / SSIM of the re-rendered face.

- `bake_albedo`: a quick multi-view UV albedo through the fitted mesh (visibility- and
  angle-weighted mean of each view's colour divided by its shading).
- `solve_sh`: the 9 SH coefficients per colour channel of one view by iteratively
  reweighted least squares: photo ≈ albedo ⊙ Σ_k l_k H_k(N) (eq. 2) is linear in l; a Cauchy
  weight on the residual (scale from the median absolute residual) keeps hair, glasses,
  hands and specular spots from bending the light.
- `refine_photometric`: the optional last stage, Gauss-Newton steps on the robust
  photometric residual plus the landmark terms (see its docstring).
- `view_quality`: per view, the re-rendered image's PSNR and SSIM against the photo inside
  the face mask (MF), for report.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch import Tensor

from mfnet_core.camera import to_screen
from mfnet_core.fit.corner_term import CornerTerm
from mfnet_core.fit.solver import cauchy_weights_mad
from mfnet_core.render import (
    Fragments,
    fragments_for_faces,
    interpolate_corners,
    rasterize,
    sample_texture,
    sh_basis,
    vertex_normals,
    working_resolution,
)

if TYPE_CHECKING:
    from mfnet_core.fit.landmark_fit import MultiViewFitter

__all__ = [
    "ViewShading",
    "uv_texels",
    "region_texels",
    "AlbedoBake",
    "bake_albedo",
    "solve_sh",
    "masked_psnr",
    "masked_ssim",
    "render_view",
    "sample_image",
    "view_quality",
    "refine_photometric",
]


# --------------------------------------------------------------------------------------
# Metrics


def masked_psnr(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB) of float [0,1] images (H,W,C) over the pixels of mask (H,W)."""
    if not mask.any():
        return float("nan")
    # only the masked pixels are converted (the same numbers, summed in the same order)
    err = ((image[mask].astype(np.float64) - reference[mask].astype(np.float64)) ** 2).mean()
    return float(10 * np.log10(1.0 / max(err, 1e-12)))


def masked_ssim(
    image: np.ndarray, reference: np.ndarray, mask: np.ndarray, sigma: float = 1.5
) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian window sigma=1.5, K1=0.01, K2=0.03, data range
    1) over the pixels of mask, per channel then averaged. image, reference: float [0,1]
    (H,W,C) or (H,W). Outside the mask `image` is replaced by `reference`, so windows that
    straddle the mask border compare only what the mask covers."""
    if not mask.any():
        return float("nan")
    # Only the mask's bounding box and the blur's reach around it matter: cropped there
    # (inside the image, whose own border the blur reflects alike) the values are the same.
    reach = _gaussian_radius(sigma)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    y0, y1 = max(rows[0] - 2 * reach, 0), min(rows[-1] + 2 * reach + 1, mask.shape[0])
    x0, x1 = max(cols[0] - 2 * reach, 0), min(cols[-1] + 2 * reach + 1, mask.shape[1])
    if y0 > 0 or x0 > 0 or y1 < mask.shape[0] or x1 < mask.shape[1]:
        return masked_ssim(image[y0:y1, x0:x1], reference[y0:y1, x0:x1], mask[y0:y1, x0:x1], sigma)
    a = np.where(mask[..., None] if image.ndim == 3 else mask, image, reference).astype(np.float64)
    b = reference.astype(np.float64)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for ch in range(a.shape[2]):
        x, y = a[..., ch], b[..., ch]
        blur = lambda z: cv2.GaussianBlur(z, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)  # noqa: E731
        mx, my = blur(x), blur(y)
        sxx = blur(x * x) - mx * mx
        syy = blur(y * y) - my * my
        sxy = blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        vals.append(s[mask].mean())
    return float(np.mean(vals))


def _gaussian_radius(sigma: float) -> int:
    """The half width of OpenCV's Gaussian kernel for float images at `sigma` (ksize 0)."""
    return (int(round(sigma * 4 * 2 + 1)) | 1) // 2


# --------------------------------------------------------------------------------------
# Albedo and lighting


@dataclass
class ViewShading:
    """One view rendered at a working resolution, with what the photometric terms need."""

    photo: np.ndarray  # (H,W,3) float32 [0,1]
    fragments: Fragments
    screen: Tensor  # (V,3)
    normals: Tensor  # (V,3) camera space
    mask: np.ndarray  # (H,W) bool MF (face-region skin)
    sh: Tensor | None = None  # (9,3)
    # `_pixel_attrs` of the mask pixels, kept: the lighting rounds and the report ask again
    pixel_attrs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)


_TEXELS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
# the albedo of the report's PSNR / SSIM re-render (`view_quality`), texels a side
QUALITY_TEX_SIZE = 512


def uv_texels(
    faces: np.ndarray, uv_coords: np.ndarray, uv_faces: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels of the UV layout at size x size: (P,) flat texel ids, (P,) faces, (P,3) bary.
    Cached per layout and size."""
    key = (id(uv_faces), size)
    if key not in _TEXELS:
        uv = torch.as_tensor(uv_coords, dtype=torch.float64)
        scr = torch.stack(
            [uv[:, 0] * size, (1 - uv[:, 1]) * size, torch.ones(len(uv), dtype=torch.float64)], -1
        )
        fr = rasterize(scr, torch.as_tensor(uv_faces, dtype=torch.long), size, size)
        pix, f = fr.covered()
        _TEXELS[key] = (pix.numpy(), f.numpy(), fr.bary.reshape(-1, 3)[pix].numpy())
    return _TEXELS[key]


def solve_sh(
    albedo: np.ndarray,
    normals: np.ndarray,
    observed: np.ndarray,
    weights: np.ndarray | None = None,
    iterations: int = 6,
    ridge: float = 1e-5,
    max_pixels: int = 6000,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-view SH lighting (eq. 2) by robust weighted least squares.

    albedo, observed: (P,3) float; normals: (P,3) unit, camera space. Solves, per colour
    channel c, observed_c ≈ albedo_c * (H(N) @ l_c) for l (9,3), reweighting with Cauchy
    weights each iteration. Returns (l (9,3), final weights (P,)).
    """
    h_all = sh_basis(torch.as_tensor(normals, dtype=torch.float64)).numpy()  # (P,9)
    w_all = np.ones(len(h_all)) if weights is None else np.asarray(weights, np.float64)
    # The fit uses at most `max_pixels` evenly spaced pixels (9 unknowns per channel).
    step = max(1, len(h_all) // max_pixels)
    h, alb, obs, base = h_all[::step], albedo[::step], observed[::step], w_all[::step]
    prior = np.zeros((9, 3))
    prior[0] = 1.0 / 0.2820948  # unit ambient light
    sh = prior.copy()
    w = base.copy()
    for _ in range(max(iterations, 1)):
        for c in range(3):
            a = h * alb[:, c : c + 1]
            aw = a * w[:, None]
            lhs = aw.T @ a
            lam = ridge * np.trace(lhs) / 9 + 1e-12
            lhs = lhs + lam * np.eye(9)
            rhs = aw.T @ obs[:, c] + lam * prior[:, c]
            sh[:, c] = np.linalg.solve(lhs, rhs)
        w = base * cauchy_weights_mad(obs - alb * (h @ sh))
    return sh, w_all * cauchy_weights_mad(observed - albedo * (h_all @ sh))


def sample_image(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear samples of img (H,W,C) at pixel-corner coordinates u, v (P,) -> (P,C)."""
    n = len(u)
    cols = 1024
    rows = max(1, -(-n // cols))
    pad = rows * cols - n
    mx = np.pad(np.asarray(u, np.float32) - 0.5, (0, pad)).reshape(rows, cols)
    my = np.pad(np.asarray(v, np.float32) - 0.5, (0, pad)).reshape(rows, cols)
    out = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(rows * cols, -1)[:n]


def render_view(
    verts_cam: Tensor,
    camera: Tensor,
    faces: Tensor,
    face_tri: np.ndarray,
    photo: np.ndarray,
    size: int,
    face_index: Tensor | None = None,
) -> ViewShading:
    """Rasterises one view at a working resolution (longer side `size`); with `face_index`
    (H,W), the visible faces of a rasterisation of this mesh at that resolution, only the
    barycentrics are made."""
    h0, w0 = photo.shape[:2]
    h, w, sx, sy = working_resolution(h0, w0, size)
    img = photo if (w, h) == (w0, h0) else cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
    cam = camera.detach().double().cpu() * torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
    v = verts_cam.detach().double().cpu()
    screen = to_screen(v[None], cam[None])[0]
    faces_c = faces.cpu().long()
    if face_index is not None and tuple(face_index.shape) == (h, w):
        frags = fragments_for_faces(screen, faces_c, face_index.cpu())
    else:
        frags = rasterize(screen, faces_c, h, w)
    fi = frags.face_index
    tri_ok = torch.as_tensor(np.asarray(face_tri, bool))
    mask = ((fi >= 0) & tri_ok[fi.clamp_min(0)]).numpy()
    normals = vertex_normals(v, faces_c)
    return ViewShading(img.astype(np.float32) / 255.0, frags, screen, normals, mask)


def _pixel_attrs(
    view: ViewShading, faces: Tensor, uv_coords: np.ndarray, uv_faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask pixels of a view: (P,2) ids (y, x), (P,2) uv, (P,3) unit normals. Made once per
    view (a view has one mesh and one UV layout)."""
    if view.pixel_attrs is not None:
        return view.pixel_attrs
    # interpolated at the mask pixels only (`render.interpolate`'s arithmetic, which makes
    # whole images: the mask is a fifth of them)
    ys, xs = np.nonzero(view.mask)
    pix = torch.as_tensor(ys * view.mask.shape[1] + xs)
    face = view.fragments.face_index.reshape(-1)[pix]
    bary = view.fragments.bary.reshape(-1, 3)[pix]
    uv_t = torch.as_tensor(uv_coords, dtype=torch.float64)
    uv = interpolate_corners(uv_t, torch.as_tensor(uv_faces).long()[face], bary.to(uv_t.dtype))
    normals = view.normals
    n = interpolate_corners(normals, faces.cpu().long()[face], bary.to(normals.dtype))
    n = torch.nn.functional.normalize(n, dim=-1)
    view.pixel_attrs = (np.stack([ys, xs], 1), uv.numpy(), n.numpy())
    return view.pixel_attrs


# `bake_albedo` bleeds colours with this many Gaussian passes of this sigma (texels);
# OpenCV's kernel then reaches round(4 sigma) texels, so a baked texel depends on texels up to
# _BLEED_ROUNDS * round(4 * _BLEED_SIGMA) away.
_BLEED_SIGMA = 1.5
_BLEED_ROUNDS = 2


def region_texels(pix: np.ndarray, fid: np.ndarray, region: np.ndarray, size: int) -> np.ndarray:
    """(P,) bool over the texels of `uv_texels`: those whose value can reach a bilinear
    lookup inside the triangles `region` (F,) bool through the bake's colour bleed. Baking
    only these gives the same texture inside the region."""
    need = np.zeros(size * size, np.uint8)
    need[pix[np.asarray(region, bool)[fid]]] = 1
    r = _BLEED_ROUNDS * round(4 * _BLEED_SIGMA) + 2  # + the bilinear lookup's texel + 1 spare
    near = cv2.dilate(need.reshape(size, size), np.ones((2 * r + 1, 2 * r + 1), np.uint8))
    return near.reshape(-1)[pix] > 0


def _at_texels(attrs: np.ndarray, tri: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """attrs (V,C) at texels on triangles tri (T,3) with barycentrics bary (T,3): (T,C), the
    sum over the corners in their order (as `(attrs[tri] * bary[..., None]).sum(1)`, without
    its (T,3,C) temporaries)."""
    out = attrs[tri[:, 0]] * bary[:, 0:1]
    out += attrs[tri[:, 1]] * bary[:, 1:2]
    out += attrs[tri[:, 2]] * bary[:, 2:3]
    return out


class AlbedoBake:
    """A multi-view albedo bake through one fitted mesh: the per-view, per-texel samples
    (texel colour, normal, visibility-and-angle weight) are made once, since the lighting's
    rounds only change each view's SH. `bake_albedo` is one bake."""

    def __init__(
        self,
        views: list[ViewShading],
        verts_cam: list[Tensor],
        faces: Tensor,
        uv_coords: np.ndarray,
        uv_faces: np.ndarray,
        size: int = 256,
        region: np.ndarray | None = None,
    ) -> None:
        """region: (F,) bool, bake only the texels that lookups inside these triangles can
        reach (`region_texels`); the texture elsewhere is then left unknown."""
        pix, fid, bary = uv_texels(np.asarray(faces.cpu()), uv_coords, uv_faces, size)
        if region is not None:
            keep = region_texels(pix, fid, region, size)
            pix, fid, bary = pix[keep], fid[keep], bary[keep]
        self.size, self.pix = size, pix
        tri = faces.cpu().numpy()[fid]
        # per view: texels it sees (ids into pix), their weights, colours, SH basis
        self.samples: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for view, vc in zip(views, verts_cam, strict=True):
            # texel screen position (affine approx), normal and camera-space point
            p = _at_texels(view.screen.numpy(), tri, bary)
            n = _at_texels(view.normals.numpy(), tri, bary)
            n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
            pts = _at_texels(vc.detach().double().cpu().numpy(), tri, bary)
            vdir = -pts / (np.linalg.norm(pts, axis=1, keepdims=True) + 1e-12)
            cos = np.clip((n * vdir).sum(1), 0, 1)
            h, w = view.mask.shape
            xi = np.clip(np.floor(p[:, 0]).astype(int), 0, w - 1)
            yi = np.clip(np.floor(p[:, 1]).astype(int), 0, h - 1)
            zbuf = view.fragments.depth.numpy()
            zmax = cv2.dilate(
                np.where(np.isfinite(zbuf), zbuf, 1e9).astype(np.float32),
                np.ones((3, 3), np.uint8),
            )
            inside = (
                (p[:, 0] >= 0.5) & (p[:, 0] <= w - 0.5) & (p[:, 1] >= 0.5) & (p[:, 1] <= h - 0.5)
            )
            seen = inside & (p[:, 2] <= zmax[yi, xi] * 1.008) & view.mask[yi, xi]
            ids = np.flatnonzero(seen & (cos > 0))  # the others weigh 0
            col = sample_image(view.photo, p[ids, 0], p[ids, 1]).astype(np.float64)
            basis = sh_basis(torch.as_tensor(n[ids])).numpy()
            self.samples.append((ids, cos[ids] ** 2, col, basis))

    def bake(self, views: list[ViewShading]) -> tuple[np.ndarray, np.ndarray]:
        """Albedo texture (size,size,3) float32 and its weight (size,size): each view's colour
        divided by its shading (when `view.sh` is set), weighted by visibility and the squared
        cosine between the normal and the viewing direction."""
        size = self.size
        acc = np.zeros((len(self.pix), 3))
        wsum = np.zeros(len(self.pix))
        for view, (ids, wt, col, basis) in zip(views, self.samples, strict=True):
            if view.sh is not None:
                col = col / np.clip(basis @ view.sh.numpy(), 0.05, None)
            acc[ids] += wt[:, None] * col
            wsum[ids] += wt
        tex = np.zeros((size * size, 3))
        wt_img = np.zeros(size * size)
        ok = wsum > 1e-6
        tex[self.pix[ok]] = acc[ok] / wsum[ok, None]
        wt_img[self.pix] = wsum
        tex = tex.reshape(size, size, 3).astype(np.float32)
        # Bleed colours a few texels past what the views saw (island borders, seams), so that
        # bilinear lookups near the edge of the seen region do not mix in black.
        known = (wt_img.reshape(size, size) > 1e-6).astype(np.float32)
        for _ in range(_BLEED_ROUNDS):
            num = cv2.GaussianBlur(tex * known[..., None], (0, 0), _BLEED_SIGMA)
            den = cv2.GaussianBlur(known, (0, 0), _BLEED_SIGMA)[..., None]
            fill = num / np.maximum(den, 1e-6)
            tex = np.where(known[..., None] > 0, tex, np.where(den > 1e-3, fill, 0)).astype(
                np.float32
            )
            known = np.maximum(known, (den[..., 0] > 1e-3).astype(np.float32))
        return tex, wt_img.reshape(size, size).astype(np.float32)


def bake_albedo(
    views: list[ViewShading],
    verts_cam: list[Tensor],
    faces: Tensor,
    uv_coords: np.ndarray,
    uv_faces: np.ndarray,
    size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-view albedo texture (size,size,3) float and its weight (size,size): each view's
    colour divided by its shading (when `view.sh` is set), weighted by visibility and the
    squared cosine between the normal and the viewing direction."""
    return AlbedoBake(views, verts_cam, faces, uv_coords, uv_faces, size).bake(views)


def _lighting(
    views: list[ViewShading],
    verts_cam: list[Tensor],
    faces: Tensor,
    uv_coords,
    uv_faces,
    tex_size: int,
    rounds: int = 2,
    region: np.ndarray | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Alternates albedo bake and per-view SH solve. Returns the albedo texture (exact inside
    the triangles `region` (F,) bool when given: `AlbedoBake`) and each view's final robust
    pixel weights (over its mask pixels, which must lie in `region`)."""
    weights: list[np.ndarray] = []
    albedo = None
    baker = AlbedoBake(views, verts_cam, faces, uv_coords, uv_faces, tex_size, region)
    for _ in range(rounds):
        albedo, _w = baker.bake(views)
        tex = torch.as_tensor(albedo, dtype=torch.float64)
        weights = []
        for view in views:
            ids, uv, n = _pixel_attrs(view, faces, uv_coords, uv_faces)
            a = sample_texture(tex, torch.as_tensor(uv)).numpy()
            obs = view.photo[ids[:, 0], ids[:, 1]].astype(np.float64)
            sh, w = solve_sh(a, n, obs)
            view.sh = torch.as_tensor(sh)
            weights.append(w)
    assert albedo is not None
    return albedo, weights


def view_quality(
    fitter: MultiViewFitter,
    photos: list[np.ndarray],
    size: int,
    face_tri: np.ndarray,
    tex_size: int = QUALITY_TEX_SIZE,
    face_index: list[Tensor] | None = None,
) -> list[dict]:
    """Per view: PSNR and SSIM of the re-rendered face (albedo baked from all views through
    the fitted mesh, times the view's SH shading) against the photo inside the face mask, at
    a working resolution (longer side `size`). Adds "image": a side-by-side picture.
    face_index: per view, the visible faces (H,W) of a rasterisation of the current mesh
    at that resolution (the dense report's flow renders), reused where the size matches."""
    with torch.no_grad():
        ev = fitter.evaluate(with_vertices=True)
    faces = fitter.head.faces
    layout = fitter.head.uv
    vc = [ev["vertices_cam"][i] for i in range(fitter.n_views)]
    picks = face_index or [None] * fitter.n_views
    views = [
        render_view(vc[i], fitter.camera[i], faces, face_tri, photos[i], size, picks[i])
        for i in range(fitter.n_views)
    ]
    # the masks (MF) hold face-region triangles only: the albedo is needed there alone
    albedo, weights = _lighting(
        views, vc, faces, layout.uv_coords, layout.uv_faces, tex_size, region=face_tri
    )
    tex = torch.as_tensor(albedo, dtype=torch.float64)
    out = []
    for view, w in zip(views, weights, strict=True):
        ids, uv, n = _pixel_attrs(view, faces, layout.uv_coords, layout.uv_faces)
        a = sample_texture(tex, torch.as_tensor(uv)).numpy()
        shade = sh_basis(torch.as_tensor(n)).numpy() @ view.sh.numpy()
        img = view.photo.copy()
        img[ids[:, 0], ids[:, 1]] = np.clip(a * shade, 0, 1)
        resid = (img - view.photo)[view.mask]
        psnr = masked_psnr(img, view.photo, view.mask)
        ssim = masked_ssim(img, view.photo, view.mask)
        rho = np.sqrt((resid**2).sum(1) + 1e-4) - 1e-2
        pic = np.concatenate([view.photo, img, np.clip(np.abs(img - view.photo) * 4, 0, 1)], 1)
        out.append(
            {
                "psnr_face": round(psnr, 3),
                "ssim_face": round(ssim, 4),
                "face_pixels": int(view.mask.sum()),
                "robust_inlier_frac": round(float((w > 0.5).mean()), 4),
                "photo_loss": float(rho.mean()),
                "resolution": [int(view.mask.shape[1]), int(view.mask.shape[0])],
                "image": (pic * 255).astype(np.uint8),
            }
        )
    return out


# Photometric residuals are divided by this intensity (in [0,1]) and by the view's half face
# size, so that a 5% intensity error weighs like a 1 px landmark error (lambda_photo = 1).
PHOTO_SIGMA = 0.05
# Cauchy scale of the photometric residual in PHOTO_SIGMA units: errors beyond ~2 sigma
# (hair, glasses, a hand, specular spots, shading the SH cannot explain) lose weight fast.
PHOTO_CAUCHY = 2.0


class PhotoTerm(CornerTerm):
    """Rendered albedo x fixed per-pixel shading vs the photo (luminance), at sample pixels whose
    mesh triangle stays fixed; the pixel's surface point (hence its UV and albedo)
    moves with the triangle's projection. The shading is held at its current value (its
    dependence on the normals is left out of the Jacobian)."""

    name = "photo"

    def __init__(self, fitter, samples: dict, weight: float) -> None:  # noqa: ANN001
        super().__init__(
            fitter,
            samples["faces"],
            samples["view"],
            samples["view"],
            samples["weight"],
            weight * 68.0,
        )
        f64, dev = torch.float64, fitter.device
        self.cauchy = PHOTO_CAUCHY / 1.0
        self.pix = torch.as_tensor(samples["pixel"], dtype=f64, device=dev)  # (K,2) centres
        self.cam = torch.as_tensor(samples["camera"], dtype=f64, device=dev)  # (K,4)
        self.uv = torch.as_tensor(samples["uv_corners"], dtype=f64, device=dev)  # (K,3,2)
        self.shade = torch.as_tensor(samples["shade"], dtype=f64, device=dev)  # (K,3)
        self.obs = torch.as_tensor(samples["observed"], dtype=f64, device=dev)  # (K,3)
        self.tex = torch.as_tensor(samples["albedo"], dtype=f64, device=dev)
        self.norm = PHOTO_SIGMA
        self.lum = torch.tensor([0.299, 0.587, 0.114], dtype=f64, device=dev)

    def error(self, ca: Tensor, cb: Tensor) -> Tensor:
        cam = self.cam[:, None, :]
        depth = (-ca[..., 2]).clamp_min(1e-6)
        u = cam[..., 2] + cam[..., 0] * ca[..., 0] / depth  # (B,K,3)
        v = cam[..., 3] - cam[..., 1] * ca[..., 1] / depth
        u0, u1, u2 = u.unbind(-1)
        v0, v1, v2 = v.unbind(-1)
        area = (u1 - u0) * (v2 - v0) - (v1 - v0) * (u2 - u0)
        area = torch.where(area.abs() < 1e-12, torch.full_like(area, 1e-12), area)
        px, py = self.pix[:, 0], self.pix[:, 1]
        w1 = ((px - u0) * (v2 - v0) - (py - v0) * (u2 - u0)) / area
        w2 = ((u1 - u0) * (py - v0) - (v1 - v0) * (px - u0)) / area
        bary = torch.stack([1 - w1 - w2, w1, w2], -1)  # (B,K,3)
        uv = (self.uv[None] * bary[..., None]).sum(-2)  # (B,K,2)
        b, k = uv.shape[:2]
        alb = sample_texture(self.tex, uv.reshape(-1, 2)).reshape(b, k, 3)
        return ((alb * self.shade - self.obs) @ self.lum)[..., None] / self.norm


def photo_samples(
    fitter: MultiViewFitter,
    photos: list[np.ndarray],
    size: int,
    face_tri: np.ndarray,
    per_view: int = 800,
    tex_size: int = 256,
    seed: int = 0,
    leave_one_out: bool = True,
) -> dict:
    """Albedo and per-view SH at the current fit, and sample pixels for the photometric term
    (robust inliers of the SH solve, inside MF).

    With `leave_one_out` each view is compared with an albedo baked from the OTHER views
    only (an atlas of one texture per view, side by side): the residual then measures
    multi-view photo-consistency (the paper's "multi-perspective projection loss"), not how
    well a view reproduces a texture made largely from itself. Pixels whose surface the
    other views hardly see are left out."""
    with torch.no_grad():
        ev = fitter.evaluate(with_vertices=True)
    faces = fitter.head.faces
    layout = fitter.head.uv
    n_views = fitter.n_views
    vc = [ev["vertices_cam"][i] for i in range(n_views)]
    views = [
        render_view(vc[i], fitter.camera[i], faces, face_tri, photos[i], size)
        for i in range(n_views)
    ]
    albedo, weights = _lighting(views, vc, faces, layout.uv_coords, layout.uv_faces, tex_size)
    if leave_one_out and n_views > 1:
        texs, seen = [], []
        for i in range(n_views):
            others = [j for j in range(n_views) if j != i]
            t, w = bake_albedo(
                [views[j] for j in others],
                [vc[j] for j in others],
                faces,
                layout.uv_coords,
                layout.uv_faces,
                tex_size,
            )
            texs.append(cv2.GaussianBlur(t, (0, 0), 0.7))
            seen.append(w)
        atlas = np.concatenate(texs, 1)
        seen_atlas = np.concatenate(seen, 1)
    else:
        atlas = cv2.GaussianBlur(albedo, (0, 0), 0.7)
        seen_atlas = np.ones(atlas.shape[:2], np.float32)
    n_tiles = atlas.shape[1] // atlas.shape[0]
    tex = torch.as_tensor(atlas, dtype=torch.float64)
    seen_t = torch.as_tensor(seen_atlas[..., None], dtype=torch.float64)
    seen_min = (
        0.05 * float(np.percentile(seen_atlas[seen_atlas > 0], 90)) if (seen_atlas > 0).any() else 0
    )
    rng = np.random.default_rng(seed)
    uv_c = np.asarray(layout.uv_coords, np.float64)
    uv_f = np.asarray(layout.uv_faces)
    out: dict[str, list] = {
        k: []
        for k in ("faces", "view", "weight", "pixel", "camera", "uv_corners", "shade", "observed")
    }
    loss = []
    for i, (view, w) in enumerate(zip(views, weights, strict=True)):
        ids, uv, n = _pixel_attrs(view, faces, layout.uv_coords, layout.uv_faces)
        tile = i if n_tiles > 1 else 0
        uv_t = np.stack([(uv[:, 0] + tile) / n_tiles, uv[:, 1]], 1)
        shade = sh_basis(torch.as_tensor(n)).numpy() @ view.sh.numpy()
        obs = view.photo[ids[:, 0], ids[:, 1]].astype(np.float64)
        a = sample_texture(tex, torch.as_tensor(uv_t)).numpy()
        seen_px = sample_texture(seen_t, torch.as_tensor(uv_t)).numpy()[:, 0]
        ok = seen_px > seen_min
        if ok.any():
            loss.append(float(np.mean(np.sqrt(((a * shade - obs)[ok] ** 2).sum(1) + 1e-4) - 1e-2)))
        sel = np.flatnonzero((w > 0.3) & ok)
        if len(sel) > per_view:
            sel = np.sort(rng.choice(sel, per_view, replace=False))
        yx = ids[sel]
        fi = view.fragments.face_index.numpy()[yx[:, 0], yx[:, 1]]
        h0, w0 = photos[i].shape[:2]
        hh, ww = view.mask.shape
        cam = fitter.camera[i].detach().double().cpu().numpy() * np.array(
            [ww / w0, hh / h0, ww / w0, hh / h0]
        )
        uvc = uv_c[uv_f[fi]].copy()
        uvc[..., 0] = (uvc[..., 0] + tile) / n_tiles
        out["faces"].append(fi)
        out["view"].append(np.full(len(sel), i))
        out["weight"].append(w[sel])
        out["pixel"].append(np.stack([yx[:, 1] + 0.5, yx[:, 0] + 0.5], 1))
        out["camera"].append(np.tile(cam, (len(sel), 1)))
        out["uv_corners"].append(uvc)
        out["shade"].append(shade[sel])
        out["observed"].append(obs[sel])
    res = {k: np.concatenate(v) for k, v in out.items()}
    res["albedo"] = atlas
    res["loss"] = float(np.mean(loss)) if loss else 0.0
    return res


def refine_photometric(
    fitter: MultiViewFitter,
    photos: list[np.ndarray],
    options,  # noqa: ANN001  (dense_fit.DenseOptions)
    face_tri: np.ndarray,
    keep_terms: list | None = None,
) -> list[dict]:
    """The optional last stage: per-view SH lighting (robust least squares on an albedo
    baked through the current mesh), then Levenberg-Marquardt steps on the landmark terms,
    the last flow correspondences (`keep_terms`, so the flow's surface is not undone) and the
    robust photometric residual of sample pixels in each view's face mask. Re-bakes the
    albedo and re-solves the light once per round. Returns history entries."""
    history = []
    rounds = max(1, int(getattr(options, "photo_rounds", 1)))
    for rnd in range(rounds):
        smp = photo_samples(fitter, photos, options.photo_size, face_tri, seed=options.seed + rnd)
        if len(smp["faces"]) == 0:
            break
        term = PhotoTerm(fitter, smp, options.photo_weight * fitter.options.weights.photo)
        stats = fitter.refine_with([*(keep_terms or []), term], options.photo_iterations)
        history.append({"stage": f"photo{rnd + 1}", "photo_before": smp["loss"], **stats})
    return history
