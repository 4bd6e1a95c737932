"""Rasterisation, interpolation, SH shading and visibility in plain PyTorch.

Screen-space vertices are (V,3) = (u_px, v_px, depth): u right, v down, origin at the top-left
corner of the image, pixel (x, y) has its centre at (x + 0.5, y + 0.5), depth = -z_cam > 0
(smaller is nearer). See docs/CONVENTIONS.md.

The rasteriser is not differentiable by itself (it picks a face per pixel); differentiability
comes from recomputing barycentrics from the vertex positions at the fixed face assignment
(`differentiable_bary`), which is how the photometric and flow losses get gradients with
respect to vertex positions, and from `interpolate` / `grid_sample` for attributes and
textures.

Backends: a pure-PyTorch rasteriser (scanline spans: per face and pixel row, the run of
covered pixel centres comes straight from the edge functions, so the cost is one item per
face row plus one per covered pixel, not faces x pixels or bounding-box areas; an int64
z-buffer key reduced with `scatter_reduce(amin)`); when `pytorch3d` is importable and the tensors are on a
CUDA device, its `rasterize_meshes` picks the face per pixel instead (backend="auto"). Both
paths share the barycentric and depth computation, so their outputs agree exactly wherever
they pick the same face.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Fragments",
    "rasterize",
    "fragments_for_faces",
    "depth_buffer",
    "interpolate",
    "differentiable_bary",
    "vertex_normals",
    "sh_basis",
    "shade_sh",
    "render_textured",
    "sample_texture",
    "vertex_visibility",
    "face_mask",
    "pytorch3d_available",
    "working_resolution",
]

_INT64_MAX = torch.iinfo(torch.int64).max
# Fragments (face x covered pixel) or covered pixels handled in one pass of tensor ops;
# bounds memory to ~50 MB a chunk.
_CHUNK = 1 << 20
# Inside test tolerance on normalised edge functions (barycentrics): keeps shared edges
# watertight under float32 rounding; a pixel centre on an edge counts as inside.
_EDGE_EPS = 1e-6
# Smallest |signed area| (px^2) of a triangle that is rasterised at all.
_MIN_AREA = 1e-10
# CPU threads for the rasteriser's many mid-sized tensor ops. One thread: on a quiet 2-core
# machine two threads gain ~1.3x, on a busy one they lose 3-50x (each op waits for a
# descheduled worker); single-threaded, a 10k-triangle head at 1024 px takes ~30 ms
# (0.14-0.16 x benchmarks/reference.py's workload; bm_render.py raster_1024).
_CPU_THREADS = 1


@dataclass
class Fragments:
    """Per-pixel output of `rasterize`.

    face_index: (H,W) int64, the visible face, -1 for background.
    bary: (H,W,3) barycentrics of the pixel centre in that face (0 for background), in the
        dtype of the screen vertices; screen-space (affine) unless `perspective_correct`.
    depth: (H,W) interpolated depth, +inf for background.
    perspective_correct: whether bary/depth were interpolated perspective-correctly
        (1/depth linear in screen space) rather than affinely.
    """

    face_index: Tensor
    bary: Tensor
    depth: Tensor
    perspective_correct: bool = False

    @property
    def height(self) -> int:
        return int(self.face_index.shape[0])

    @property
    def width(self) -> int:
        return int(self.face_index.shape[1])

    def covered(self) -> tuple[Tensor, Tensor]:
        """(P,) flat indices of covered pixels (row-major) and (P,) their face indices."""
        fi = self.face_index.reshape(-1)
        pix = (fi >= 0).nonzero().squeeze(1)
        return pix, fi[pix]


def pytorch3d_available() -> bool:
    try:
        import pytorch3d.renderer.mesh.rasterize_meshes  # noqa: F401
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------------------
# Rasterisation


def working_resolution(
    height: int, width: int, max_side: int, minimum: int = 8
) -> tuple[int, int, float, float]:
    """An image of (height, width) brought down to at most `max_side` pixels a side (never
    up), each side at least `minimum`: (h, w) and the scale factors (sx, sy) = (w / width,
    h / height) that carry pixel coordinates and intrinsics there."""
    s = min(1.0, max_side / max(height, width))
    h, w = max(minimum, round(height * s)), max(minimum, round(width * s))
    return h, w, w / width, h / height


def rasterize(
    verts_screen: Tensor,
    faces: Tensor,
    height: int,
    width: int,
    *,
    cull_backfaces: bool = False,
    perspective_correct: bool = False,
    backend: str = "auto",
) -> Fragments:
    """Z-buffered rasterisation of one triangle mesh.

    verts_screen: (V,3) (u_px, v_px, depth); faces: (F,3) int. Faces with a vertex at depth
    <= 0 (behind the camera), non-finite coordinates or zero area are skipped.
    cull_backfaces: drop faces whose screen-space winding is clockwise as seen on screen
        (u right, v down), i.e. faces that are counter-clockwise in a y-up view: a mesh with
        outward counter-clockwise faces (FLAME, trimesh) keeps the faces that face the camera.
    perspective_correct: interpolate with 1/depth linear in screen space (the exact rule for a
        pinhole camera); default is affine screen-space barycentrics, for which depth is
        exactly linear in (u, v) across a triangle.
    backend: "auto" (pytorch3d on CUDA tensors when installed, else "torch"), "torch" or
        "pytorch3d"; the environment variable MFNET_RASTER_BACKEND overrides "auto".
    Returns Fragments with (H,W) face_index, (H,W,3) bary, (H,W) depth.
    """
    if verts_screen.ndim != 2 or verts_screen.shape[-1] != 3:
        raise ValueError(f"verts_screen must be (V,3), got {tuple(verts_screen.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F,3), got {tuple(faces.shape)}")
    height, width = int(height), int(width)
    verts = verts_screen.detach()
    faces = faces.to(device=verts.device, dtype=torch.long)
    use = _pick_backend(backend, verts.device)
    with _cpu_threads(_CPU_THREADS if verts.device.type == "cpu" else None):
        if use == "pytorch3d":
            face_index = _face_index_pytorch3d(verts, faces, height, width, cull_backfaces)
        else:
            face_index = _face_index_torch(
                verts, faces, height, width, cull_backfaces, perspective_correct
            )
        return _fragments_from_faces(verts, faces, face_index, perspective_correct)


def depth_buffer(
    verts_screen: Tensor, faces: Tensor, height: int, width: int, *, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """The visible face (H,W) int64 (-1: background) and its affine depth (H,W) float32
    (+inf: background) per pixel: `rasterize`'s face_index and depth without the
    barycentrics. Why: the z-buffer already holds each pixel's depth (a float32 in its key),
    and the barycentrics are ~40 % of a rasterisation (the texture bake's visibility test
    needs depth alone). The depth is the scanline's, computed in float64 and rounded once,
    so it may differ from `rasterize`'s float32 interpolation in the last bit."""
    verts = verts_screen.detach()
    faces = faces.to(device=verts.device, dtype=torch.long)
    if _pick_backend(backend, verts.device) == "pytorch3d":
        frags = rasterize(verts, faces, height, width, backend="pytorch3d")
        return frags.face_index, frags.depth.float()
    with _cpu_threads(_CPU_THREADS if verts.device.type == "cpu" else None):
        zkey = _zbuffer_keys(verts, faces, int(height), int(width), False, False)
    face = _unpack_face(zkey).view(height, width)
    depth = _unpack_depth(zkey).view(height, width)
    return face, depth


def fragments_for_faces(
    verts_screen: Tensor, faces: Tensor, face_index: Tensor, *, perspective_correct: bool = False
) -> Fragments:
    """Fragments for a visible face per pixel (H,W) that is already known, e.g. from a
    rasterisation of the same mesh and camera with the other interpolation rule. Why: picking
    the face is most of `rasterize`'s cost. verts_screen (V,3), faces (F,3); the same values
    as `rasterize` gives wherever it picks the same face."""
    verts = verts_screen.detach()
    faces = faces.to(device=verts.device, dtype=torch.long)
    with _cpu_threads(_CPU_THREADS if verts.device.type == "cpu" else None):
        return _fragments_from_faces(verts, faces, face_index.to(verts.device), perspective_correct)


@contextmanager
def _cpu_threads(n: int | None) -> Iterator[None]:
    """Temporarily run torch CPU ops on `n` threads (None: leave as is)."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _pick_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        backend = os.environ.get("MFNET_RASTER_BACKEND", "auto")
    if backend == "auto":
        return "pytorch3d" if device.type == "cuda" and pytorch3d_available() else "torch"
    if backend not in ("torch", "pytorch3d"):
        raise ValueError(f"unknown rasteriser backend {backend!r}; use auto, torch or pytorch3d")
    if backend == "pytorch3d" and not pytorch3d_available():
        raise RuntimeError("backend='pytorch3d' was asked for but pytorch3d is not importable")
    return backend


def _valid_faces(tri: Tensor, cull_backfaces: bool) -> tuple[Tensor, Tensor]:
    """tri: (F,3,3) float64 screen triangles -> (F,) bool usable faces, (F,) signed area
    (px^2, negative = counter-clockwise in a y-up view)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    ok = torch.isfinite(tri).all(dim=(1, 2)) & (tri[:, :, 2].amin(1) > 0) & (area.abs() > _MIN_AREA)
    if cull_backfaces:
        ok &= area < 0
    return ok, area


def _face_index_torch(
    verts: Tensor, faces: Tensor, height: int, width: int, cull: bool, perspective: bool
) -> Tensor:
    """Pure-torch z-buffer: (H,W) int64 visible face per pixel, -1 for background.

    Scanline spans: every usable face is cut into the pixel rows of its bounding box, and on
    each row its three edge functions (normalised: the barycentrics, float64) give the run of
    pixel centres inside it directly, so the work is one item per face row and one per pixel a
    face covers ("fragment"), never faces x pixels nor the empty part of a bounding box. Each
    fragment's key (float32 depth bits, face id in the low 32 bits) is reduced per pixel with
    scatter_reduce(amin): the nearest face wins, the lower face id on equal depth.
    """
    return _unpack_face(_zbuffer_keys(verts, faces, height, width, cull, perspective)).view(
        height, width
    )


def _zbuffer_keys(
    verts: Tensor, faces: Tensor, height: int, width: int, cull: bool, perspective: bool
) -> Tensor:
    """`_face_index_torch`'s z-buffer: (H*W,) int64 keys (float32 depth bits, face id),
    _INT64_MAX where no face covers the pixel."""
    device = verts.device
    zkey = torch.full((height * width,), _INT64_MAX, dtype=torch.long, device=device)
    if len(faces) == 0:
        return zkey
    # Corner coordinates as (F,) columns (u[i], v[i], z[i]: corner i): every per-face step
    # below is a handful of contiguous 1-D ops, which matters for meshes of 50k faces.
    cols = verts.to(torch.float64).T.contiguous()  # (3,V)
    corner = faces.T.contiguous()  # (3,F)
    u, v, z = ([c.index_select(0, corner[i]) for i in range(3)] for c in cols)
    area = (u[1] - u[0]) * (v[2] - v[0]) - (v[1] - v[0]) * (u[2] - u[0])  # as _valid_faces
    ok = torch.isfinite(torch.stack([*u, *v, *z])).all(0)
    ok &= (torch.minimum(torch.minimum(z[0], z[1]), z[2]) > 0) & (area.abs() > _MIN_AREA)
    if cull:
        ok &= area < 0
    x0 = torch.ceil(torch.minimum(torch.minimum(u[0], u[1]), u[2]) - 0.5).clamp(min=0)
    x1 = torch.floor(torch.maximum(torch.maximum(u[0], u[1]), u[2]) - 0.5).clamp(max=width - 1)
    y0 = torch.ceil(torch.minimum(torch.minimum(v[0], v[1]), v[2]) - 0.5).clamp(min=0)
    y1 = torch.floor(torch.maximum(torch.maximum(v[0], v[1]), v[2]) - 0.5).clamp(max=height - 1)
    ok &= (x1 >= x0) & (y1 >= y0)
    fid = ok.nonzero().squeeze(1)
    if len(fid) == 0:
        return zkey
    u, v, z = ([t.index_select(0, fid) for t in c] for c in (u, v, z))
    area, x0, x1, y0, y1 = (t.index_select(0, fid) for t in (area, x0, x1, y0, y1))

    # Edge functions w_i(p) = cross(v_j - p, v_k - p) / area at the box's first pixel centre
    # (local differences: accurate far from the origin) and their steps per pixel in x, y.
    ox, oy = x0 + 0.5, y0 + 0.5
    zv = [1.0 / t for t in z] if perspective else z
    ea_, eb_, wo_ = [], [], []
    for j, k in ((1, 2), (2, 0), (0, 1)):
        ea_.append((v[j] - v[k]) / area)  # d w_i / du
        eb_.append((u[k] - u[j]) / area)  # d w_i / dv
        wo_.append(((u[j] - ox) * (v[k] - oy) - (v[j] - oy) * (u[k] - ox)) / area)
    za = ea_[0] * zv[0] + ea_[1] * zv[1] + ea_[2] * zv[2]
    zb = eb_[0] * zv[0] + eb_[1] * zv[1] + eb_[2] * zv[2]
    z_o = wo_[0] * zv[0] + wo_[1] * zv[1] + wo_[2] * zv[2]

    # A pixel (x0 + k, y0 + r) is inside when ea_i k + eb_i r + w_o_i >= -eps for i = 0..2.
    # Edges with ea_i == 0 bound the rows; each other edge bounds k on row r:
    # k >= P_i + Q_i r (ea_i > 0) or k <= P_i + Q_i r (ea_i < 0). Unused bounds are +-inf.
    r_lo, r_hi = torch.zeros_like(za), y1 - y0
    lo_p, lo_q, hi_p, hi_q = [], [], [], []
    for ea, eb, w_o in zip(ea_, eb_, wo_, strict=True):
        flat, pos, neg = ea == 0, ea > 0, ea < 0
        rb = (-_EDGE_EPS - w_o) / eb
        r_lo = torch.maximum(r_lo, torch.where(flat & (eb > 0), torch.ceil(rb), 0.0))
        r_hi = torch.minimum(r_hi, torch.where(flat & (eb < 0), torch.floor(rb), math.inf))
        p, q = (-_EDGE_EPS - w_o) / ea, -eb / ea
        lo_p.append(torch.where(pos, p, -math.inf))
        lo_q.append(torch.where(pos, q, 0.0))
        hi_p.append(torch.where(neg, p, math.inf))
        hi_q.append(torch.where(neg, q, 0.0))
    nrow = (r_hi - r_lo + 1).clamp(min=0.0).long()
    per_face = [nrow, r_lo, x1 - x0, y0 * width + x0, z_o, zb, za, fid.to(torch.int32)]
    per_face += lo_p + lo_q + hi_p + hi_q

    for a, b in _chunks(torch.cumsum(nrow, 0), max(1, _CHUNK // 4)):  # ~50 MB of rows
        _scan_rows(zkey, [t[a:b] for t in per_face], width, perspective)
    return zkey


def _scan_rows(zkey: Tensor, per_face: list[Tensor], width: int, perspective: bool) -> None:
    """Rasterises rows r_lo .. r_lo + nrow - 1 of each face into `zkey` (see
    `_face_index_torch`). per_face: (F,) columns nrow, r_lo, last k of the box, flat index
    of its first pixel, depth there, depth steps in y and x, face id, then 3 x P and 3 x Q of
    the lower k bounds and 3 x P and 3 x Q of the upper ones."""
    nrow, r_lo, box_w, box_pix, z_o, zb, za, fid = per_face[:8]
    lo_p, lo_q, hi_p, hi_q = (per_face[8 + 3 * i : 11 + 3 * i] for i in range(4))
    device = zkey.device
    row_start = torch.cumsum(nrow, 0) - nrow
    n_rows = int(row_start[-1] + nrow[-1])
    if n_rows == 0:
        return
    row_face = _run_index(row_start, n_rows)  # (R,)

    def at_row(t: Tensor) -> Tensor:
        return t.index_select(0, row_face)

    r = torch.arange(n_rows, device=device, dtype=torch.float64) - at_row(
        row_start.to(torch.float64) - r_lo
    )
    lo = torch.zeros_like(r)
    hi = at_row(box_w)
    for i in range(3):
        lo = torch.maximum(lo, torch.ceil(torch.addcmul(at_row(lo_p[i]), at_row(lo_q[i]), r)))
        hi = torch.minimum(hi, torch.floor(torch.addcmul(at_row(hi_p[i]), at_row(hi_q[i]), r)))
    n = (hi - lo + 1).clamp(min=0.0).long()  # runs found empty stay, with length 0
    # Per row: flat pixel index and depth of the run's first pixel, depth step, face id.
    pix0 = (at_row(box_pix) + r * width + lo).long()
    dz = at_row(za)
    z0 = at_row(z_o) + at_row(zb) * r + dz * lo
    face_ids = at_row(fid)
    ends = torch.cumsum(n, 0)
    if int(ends[-1]) == 0:
        return
    # Fragments, in chunks of whole rows (~_CHUNK fragments each).
    for s, e in _chunks(ends, _CHUNK):
        # Fragment j of the chunk is pixel k = j - start[row] of its row's run: flat index
        # pix0 + k, depth z0 + dz k (the same numbers however the rows are chunked).
        first = int(ends[s - 1]) if s else 0
        count = int(ends[e - 1]) - first
        start = ends[s:e] - n[s:e] - first
        row = _run_index(start, count)  # (N,) int32
        j = torch.arange(count, device=device)
        pix = (pix0[s:e] - start).index_select(0, row) + j
        k = j.to(torch.float64) - start.to(torch.float64).index_select(0, row)
        z = torch.addcmul(z0[s:e].index_select(0, row), dz[s:e].index_select(0, row), k)
        if perspective:
            z = 1.0 / z
        zbits = z.float().clamp_min(1e-30).view(torch.int32)
        key = _pack_key(zbits, face_ids[s:e].index_select(0, row))
        zkey.scatter_reduce_(0, pix, key, "amin")


def _chunks(ends: Tensor, size: int) -> list[tuple[int, int]]:
    """(N,) cumulative sums of item sizes -> [a, b) ranges of whole items, each ~`size` in
    total (a single item may exceed it)."""
    total = int(ends[-1]) if len(ends) else 0
    cuts = torch.searchsorted(ends, torch.arange(size, max(total, size), size, device=ends.device))
    bounds = [0, *sorted({int(i) + 1 for i in cuts} - {len(ends)}), len(ends)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _run_index(start: Tensor, count: int) -> Tensor:
    """Runs of lengths `length` laid end to end, given as (R,) non-decreasing int64 starts
    (start[0] == 0; cumsum(length) - length) and the total `count` -> (count,) int32 run of
    each element (repeat_interleave(arange(R), length) without its cost; empty runs skipped)."""
    marks = torch.zeros(count + 1, dtype=torch.int32, device=start.device)
    marks.index_add_(
        0, start[1:], torch.ones(len(start) - 1, dtype=torch.int32, device=start.device)
    )
    return torch.cumsum(marks[:count], 0, dtype=torch.int32)


def _pack_key(high: Tensor, low: Tensor) -> Tensor:
    """(N,) int32 high (>= 0), (N,) int32 low (>= 0) -> (N,) int64 high * 2^32 + low."""
    if sys.byteorder == "little":
        return torch.stack([low, high], 1).view(torch.int64).view(-1)
    return (high.long() << 32) | low.long()


def _unpack_face(zkey: Tensor) -> Tensor:
    """z-buffer keys -> int64 face ids (low 32 bits), -1 where still _INT64_MAX."""
    if sys.byteorder == "little":  # _INT64_MAX's low word is 0xFFFFFFFF = -1 as int32
        return zkey.view(torch.int32).view(-1, 2)[:, 0].long()
    return torch.where(zkey == _INT64_MAX, -1, zkey & 0xFFFFFFFF)


def _unpack_depth(zkey: Tensor) -> Tensor:
    """z-buffer keys -> float32 depths (their high 32 bits), +inf where still _INT64_MAX."""
    bits = (
        zkey.view(torch.int32).view(-1, 2)[:, 1]
        if sys.byteorder == "little"
        else (zkey >> 32).int()
    )
    return bits.contiguous().view(torch.float32).masked_fill(zkey == _INT64_MAX, math.inf)


def _face_index_pytorch3d(
    verts: Tensor, faces: Tensor, height: int, width: int, cull: bool
) -> Tensor:
    """pytorch3d's rasterize_meshes picks the face; culling and validity are ours."""
    from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
    from pytorch3d.structures import Meshes

    tri = verts.to(torch.float64)[faces]
    ok, _ = _valid_faces(tri, cull)
    keep = ok.nonzero().squeeze(1)
    if len(keep) == 0:
        return torch.full((height, width), -1, dtype=torch.long, device=verts.device)
    s = float(min(height, width))
    # pytorch3d NDC: +x left, +y up, the shorter image side spans [-1, 1].
    ndc = torch.stack(
        [-(2 * verts[:, 0] - width) / s, -(2 * verts[:, 1] - height) / s, verts[:, 2]], dim=-1
    ).float()
    meshes = Meshes(verts=[ndc], faces=[faces[keep]])
    pix_to_face, _, _, _ = rasterize_meshes(
        meshes,
        image_size=(height, width),
        blur_radius=0.0,
        faces_per_pixel=1,
        perspective_correct=False,
        cull_backfaces=False,
    )
    p2f = pix_to_face[0, :, :, 0]
    return torch.where(p2f >= 0, keep[p2f.clamp_min(0)], -1)


def _pixel_centres(pix: Tensor, width: int, dtype: torch.dtype) -> Tensor:
    """(P,) flat pixel indices -> (P,2) pixel-centre (u, v)."""
    return torch.stack([(pix % width).to(dtype) + 0.5, (pix // width).to(dtype) + 0.5], dim=-1)


def _face_coeffs(tri: Tensor) -> Tensor:
    """(F,3,3) screen triangles -> (F,11) per-face interpolation coefficients:
    vertex 0's (u, v), d w_i / du (3), d w_i / dv (3), vertex depths (3). Barycentrics of a
    point p are w_i = [i == 0] + du_i * (p_u - u_0) + dv_i * (p_v - v_0): local differences,
    so float32 stays accurate far from the origin. Differentiable w.r.t. tri."""
    u, v, z = tri.unbind(-1)  # (F,3) each
    u0, u1, u2 = u.unbind(-1)
    v0, v1, v2 = v.unbind(-1)
    area = (u1 - u0) * (v2 - v0) - (v1 - v0) * (u2 - u0)
    area = torch.where(area == 0, torch.ones_like(area), area)
    du = torch.stack([v1 - v2, v2 - v0, v0 - v1], -1) / area[:, None]
    dv = torch.stack([u2 - u1, u0 - u2, u1 - u0], -1) / area[:, None]
    return torch.cat([u0[:, None], v0[:, None], du, dv, z], dim=-1)


def _bary_from_coeffs(p: Tensor, c: Tensor, perspective: bool) -> tuple[Tensor, Tensor]:
    """p: (P,2) points; c: (P,11) `_face_coeffs` rows of their faces.
    Returns (P,3) barycentrics and (P,) depth."""
    dx = (p[:, 0] - c[:, 0])[:, None]
    dy = (p[:, 1] - c[:, 1])[:, None]
    w = torch.addcmul(c[:, 2:5] * dx, c[:, 5:8], dy)
    w = w + w.new_tensor([1.0, 0.0, 0.0])
    z = c[:, 8:11]
    if perspective:
        q = w / z
        s = _sum3(q)[:, None]
        return q / s, 1.0 / s[:, 0]
    return w, _sum3(w * z)


def _sum3(x: Tensor) -> Tensor:
    """(N,3) -> (N,) row sums (faster than a reduction over a length-3 dimension)."""
    return x[:, 0] + x[:, 1] + x[:, 2]


def _fragments_from_faces(
    verts: Tensor, faces: Tensor, face_index: Tensor, perspective: bool
) -> Fragments:
    """Barycentrics and depth at the pixel centres for a given face per pixel (in chunks of
    covered pixels, to bound memory on large images). The arithmetic is `_bary_from_coeffs`'s,
    op for op (so `differentiable_bary` reproduces these values), on coefficients laid out
    (11,P) so that every operand is contiguous."""
    height, width = face_index.shape
    fi = face_index.reshape(-1)
    dtype = verts.dtype if verts.is_floating_point() else torch.float32
    dev = verts.device
    coef_t = _face_coeffs(verts.to(torch.float64)[faces]).to(dtype).T.contiguous()  # (11,F)
    bary = torch.zeros(height * width, 3, dtype=dtype, device=dev)
    depth = torch.full((height * width,), math.inf, dtype=dtype, device=dev)
    covered = (fi >= 0).nonzero().squeeze(1)
    for start in range(0, len(covered), _CHUNK):
        pix = covered[start : start + _CHUNK]
        f = fi.index_select(0, pix)
        c = torch.empty(11, len(pix), dtype=dtype, device=dev)
        for i in range(11):  # (faster than one index_select along dim 1)
            torch.index_select(coef_t[i], 0, f, out=c[i])
        row = torch.div(pix, width, rounding_mode="floor")
        dx = ((pix - row * width).to(dtype) + 0.5) - c[0]
        dy = (row.to(dtype) + 0.5) - c[1]
        w = torch.addcmul(c[2:5] * dx, c[5:8], dy)  # (3,P)
        w[0] += 1.0
        z = c[8:11]
        if perspective:
            q = w / z
            s = q[0] + q[1] + q[2]
            w, d = q / s, 1.0 / s
        else:
            wz = w * z
            d = wz[0] + wz[1] + wz[2]
        bary.index_copy_(0, pix, w.T)
        depth.index_copy_(0, pix, d)
    return Fragments(
        face_index, bary.view(height, width, 3), depth.view(height, width), perspective
    )


# --------------------------------------------------------------------------------------
# Interpolation and differentiable barycentrics


def interpolate(fragments: Fragments, attrs: Tensor, faces: Tensor) -> Tensor:
    """Per-pixel interpolation of vertex attributes with the fragments' barycentrics.

    attrs: (V,C) (or (V,) for one channel); faces: (F,3) indices into attrs (any per-face
    indexing with the same F as the rasterised mesh, e.g. uv_faces into uv_coords).
    Returns (H,W,C) (background 0), differentiable w.r.t. attrs.
    """
    squeeze = attrs.ndim == 1
    if squeeze:
        attrs = attrs[:, None]
    pix, f = fragments.covered()
    bary = fragments.bary.reshape(-1, 3)[pix].to(attrs.dtype)
    vals = interpolate_corners(attrs, faces.to(attrs.device, torch.long)[f], bary)
    out = _scatter_pixels(vals, pix, fragments.height, fragments.width)
    return out[..., 0] if squeeze else out


def interpolate_corners(attrs: Tensor, corner_idx: Tensor, bary: Tensor) -> Tensor:
    """attrs (V,C), corner_idx (P,3), bary (P,3) -> (P,C)."""
    out = attrs[corner_idx[:, 0]] * bary[:, 0:1]
    out = torch.addcmul(out, attrs[corner_idx[:, 1]], bary[:, 1:2])
    return torch.addcmul(out, attrs[corner_idx[:, 2]], bary[:, 2:3])


def _scatter_pixels(vals: Tensor, pix: Tensor, height: int, width: int) -> Tensor:
    """(P,C) values at flat pixels -> (H,W,C) image with zeros elsewhere (differentiable)."""
    out = vals.new_zeros(height * width, vals.shape[1])
    return out.index_copy(0, pix, vals).view(height, width, vals.shape[1])


def differentiable_bary(fragments: Fragments, verts_screen: Tensor, faces: Tensor) -> Tensor:
    """Barycentrics of every covered pixel centre recomputed from `verts_screen`.

    The face per pixel is the one in `fragments` (fixed); the barycentrics are a smooth
    function of the vertex positions, so gradients flow to verts_screen (u, v, and depth
    when the fragments are perspective-correct).
    verts_screen: (V,3); faces: (F,3). Returns (H,W,3), zeros on background.
    """
    pix, f = fragments.covered()
    bary, _ = _covered_bary(fragments, verts_screen, faces, pix, f)
    return _scatter_pixels(bary, pix, fragments.height, fragments.width)


def _covered_bary(
    fragments: Fragments, verts_screen: Tensor, faces: Tensor, pix: Tensor, f: Tensor
) -> tuple[Tensor, Tensor]:
    coef = _face_coeffs(verts_screen[faces.to(verts_screen.device, torch.long)])
    p = _pixel_centres(pix, fragments.width, verts_screen.dtype)
    return _bary_from_coeffs(p, coef[f], fragments.perspective_correct)


# --------------------------------------------------------------------------------------
# Normals and spherical-harmonics shading


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted vertex normals, unit length.

    verts: (B,V,3) or (V,3); faces: (F,3) counter-clockwise seen from outside.
    Returns the same shape as verts.
    """
    squeeze = verts.ndim == 2
    v = verts[None] if squeeze else verts
    faces = faces.to(v.device, torch.long)
    tri = v[:, faces]  # (B,F,3,3)
    fn = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    n = torch.zeros_like(v)
    for i in range(3):
        n = n.index_add(1, faces[:, i], fn)
    n = F.normalize(n, dim=-1, eps=1e-12)
    return n[0] if squeeze else n


# DECA's constants for the 9 real SH functions (band 0..2) with the Lambertian kernel folded in.
_SH_CONST = (
    1 / math.sqrt(4 * math.pi),
    (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi)),
    (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi)),
    (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi)),
    (math.pi / 4) * 3 * math.sqrt(5 / (12 * math.pi)),
    (math.pi / 4) * 3 * math.sqrt(5 / (12 * math.pi)),
    (math.pi / 4) * 3 * math.sqrt(5 / (12 * math.pi)),
    (math.pi / 4) * (3 / 2) * math.sqrt(5 / (12 * math.pi)),
    (math.pi / 4) * (1 / 2) * math.sqrt(5 / (4 * math.pi)),
)


def sh_basis(normals: Tensor) -> Tensor:
    """(...,3) unit normals -> (...,9) SH functions H_k(N) as in DECA:
    c_k * [1, x, y, z, xy, xz, yz, x^2 - y^2, 3z^2 - 1]."""
    x, y, z = normals.unbind(-1)
    b = torch.stack(
        [torch.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1], dim=-1
    )
    return b * b.new_tensor(_SH_CONST)


def shade_sh(albedo: Tensor, normals: Tensor, sh_coeffs: Tensor) -> Tensor:
    """Paper eq. 2: B = A ⊙ Σ_k l_k H_k(N).

    albedo: (...,3); normals: (...,3) unit; sh_coeffs: (9,3) per-channel coefficients l_k.
    Returns (...,3).
    """
    shading = torch.einsum("...k,kc->...c", sh_basis(normals), sh_coeffs.to(albedo))
    return albedo * shading


# --------------------------------------------------------------------------------------
# Textured rendering


def render_textured(
    verts_screen: Tensor,
    verts_world_or_normals: Tensor | None,
    faces: Tensor,
    uv_coords: Tensor,
    uv_faces: Tensor,
    texture: Tensor,
    height: int,
    width: int,
    sh_coeffs: Tensor | None = None,
    *,
    normals_kind: str = "auto",
    fragments: Fragments | None = None,
    cull_backfaces: bool = False,
) -> tuple[Tensor, Tensor, Fragments]:
    """Renders a UV-textured mesh, optionally SH-shaded (paper eq. 2).

    verts_screen: (V,3) (u_px, v_px, depth); faces: (F,3); uv_coords: (T,2) origin bottom-left;
    uv_faces: (F,3); texture: (Ht,Wt,3) float in [0,1], row 0 is the top (v = 1).
    verts_world_or_normals: (V,3) vertex normals, or vertex positions from which normals are
        computed (`normals_kind` "normals" / "verts"; "auto" takes unit-length rows as normals).
        Only used when sh_coeffs (9,3) is given; normals must be in the frame the SH
        coefficients are expressed in (camera space for the fitting).
    fragments: reuse a rasterisation of verts_screen (else one is made, without gradients).
    Returns image (H,W,3) (0 on background), mask (H,W) bool, fragments. The image is
    differentiable w.r.t. texture, sh_coeffs, verts_screen (through the barycentrics and the
    bilinear texture lookup) and the normals/positions.
    """
    if fragments is None:
        fragments = rasterize(verts_screen, faces, height, width, cull_backfaces=cull_backfaces)
    pix, f = fragments.covered()
    bary, _ = _covered_bary(fragments, verts_screen, faces, pix, f)
    dtype = verts_screen.dtype
    uv = interpolate_corners(
        uv_coords.to(verts_screen.device, dtype),
        uv_faces.to(verts_screen.device, torch.long)[f],
        bary,
    )
    colour = sample_texture(texture.to(dtype), uv)
    if sh_coeffs is not None:
        if verts_world_or_normals is None:
            raise ValueError(
                "sh_coeffs needs vertex normals (or positions) in verts_world_or_normals"
            )
        normals = _as_normals(verts_world_or_normals.to(dtype), faces, normals_kind)
        n = F.normalize(
            interpolate_corners(normals, faces.to(normals.device, torch.long)[f], bary),
            dim=-1,
            eps=1e-12,
        )
        colour = shade_sh(colour, n, sh_coeffs.to(dtype))
    image = _scatter_pixels(colour, pix, fragments.height, fragments.width)
    return image, face_mask(fragments), fragments


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear texture lookup. texture: (Ht,Wt,C), row 0 = top (v = 1); uv: (P,2) origin
    bottom-left, texel centres at ((i + 0.5)/Wt, 1 - (j + 0.5)/Ht). Returns (P,C);
    differentiable w.r.t. texture and uv; clamps at the border."""
    grid = torch.stack([uv[:, 0] * 2 - 1, (1 - uv[:, 1]) * 2 - 1], dim=-1)[None, None]  # (1,1,P,2)
    tex = texture.permute(2, 0, 1)[None]
    out = F.grid_sample(
        tex, grid.to(tex.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[0, :, 0].T


def _as_normals(x: Tensor, faces: Tensor, kind: str) -> Tensor:
    if kind == "auto":
        # unit rows are normals; zero rows are vertices no drawn face uses (a subset of faces)
        length = x.norm(dim=-1)
        unit = ((length - 1).abs() < 1e-3) | (length == 0)
        kind = "normals" if bool(unit.all()) and bool((length > 0).any()) else "verts"
    if kind == "normals":
        return x
    if kind == "verts":
        return vertex_normals(x, faces)
    raise ValueError(f"normals_kind must be auto, normals or verts, got {kind!r}")


# --------------------------------------------------------------------------------------
# Masks and visibility


def face_mask(fragments: Fragments) -> Tensor:
    """(H,W) bool: pixels covered by the mesh."""
    return fragments.face_index >= 0


def vertex_visibility(
    verts_screen: Tensor,
    faces: Tensor,
    height: int,
    width: int,
    fragments: Fragments | None = None,
    tol: float = 5e-3,
) -> Tensor:
    """(V,) bool: vertices on the visible surface.

    A vertex is visible when its pixel lies inside the image, its depth is at most (1 + tol)
    times the largest z-buffer depth in the 3x3 pixel neighbourhood of its pixel (background
    counts as +inf, so silhouette vertices pass), and at least one of its faces is
    front-facing. The neighbourhood maximum keeps vertices whose own faces are seen at grazing
    angles; the front-facing test rejects vertices just behind a silhouette, which project
    within a pixel of it. Which screen winding is "front" is read from the faces that win the
    z-buffer (the visible surface of a closed mesh faces the camera), so no winding convention
    is assumed. `tol` is relative to depth (5e-3: 3 mm at 60 cm).
    verts_screen: (V,3); faces: (F,3); fragments: a rasterisation of the same mesh (made if None).
    """
    faces = faces.to(verts_screen.device, torch.long)
    if fragments is None:
        fragments = rasterize(verts_screen, faces, height, width)
    v = verts_screen.detach()
    zbuf = fragments.depth.to(v.dtype)
    zmax = F.max_pool2d(zbuf[None, None], 3, stride=1, padding=1)[0, 0]
    x = torch.floor(v[:, 0]).long()
    y = torch.floor(v[:, 1]).long()
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height) & (v[:, 2] > 0)
    zref = zmax[y.clamp(0, height - 1), x.clamp(0, width - 1)]
    visible = inside & (v[:, 2] <= zref * (1 + tol))
    _, won = fragments.covered()
    if len(won) and len(faces):
        tri = v.to(torch.float64)[faces]
        area = (tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1]) - (
            tri[:, 1, 1] - tri[:, 0, 1]
        ) * (tri[:, 2, 0] - tri[:, 0, 0])
        front_sign = torch.sign(torch.sign(area[won]).sum())
        if front_sign != 0:
            front = torch.zeros(len(v), dtype=torch.bool, device=v.device)
            front[faces[area * front_sign > 0].reshape(-1)] = True
            visible &= front
    return visible
