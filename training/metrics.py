"""FaceScape benchmark metrics (CD, MNE, CR) and helpers, in numpy.

What the FaceScape benchmark does (``benchmark/code/evaluator.py`` in zhuhao-nju/facescape),
and what this module reproduces:

1. Alignment. The prediction is placed in the camera of the input photo; the only fitted
   alignment is along depth: depth maps of both meshes are rendered with the photo's K, the
   shift ``dz`` minimising the L1 depth difference on their common pixels is found, and the
   prediction is scaled about the camera centre by ``mean_z / (mean_z - dz)`` (FS-Lab).
   ``align_depth`` does this (the L1 minimiser is the median of the differences). Where a
   prediction does not live in the ground truth's camera (the synthetic set, meshes with a
   shared topology) ``align_rigid`` / ``icp_align`` are offered and the caller says which
   it used.
2. Resampling. Both meshes are moved into a head-centred frame (``center``, ``rotation``)
   and intersected with 256 x 256 horizontal rays cast outward from a vertical axis: column
   j points along (-sin phi, 0, -cos phi) with phi = 2 pi j / 255, row i starts at height
   y = 150 - 300 i / 255 mm. Each pixel keeps the radius and the face hit (``cylindrical_map``;
   we keep the outermost hit where a ray crosses the surface more than once, which is
   what a viewer sees; the benchmark keeps whichever hit its ray tracer lists last).
3. CR, completeness rate = (pixels hit by both) / (pixels hit by the ground truth).
4. CD, Chamfer distance in mm: the two radius maps, masked to the common pixels, are turned
   back into grid meshes (``cylinder_to_mesh``, dropping faces across depth jumps > 15 mm)
   and CD = mean over the concatenation of both directed vertex-to-surface distances
   (ground-truth vertices to the predicted surface and predicted vertices to the ground-truth
   surface): one mean over all points, not the average of two means.
5. MNE, mean normal error in radians: per common pixel, the normals of the two faces hit
   are encoded as the benchmark does, n' = (n + 1) / |n + 1| (a normal-map colour code), and
   MNE = mean of arccos(n'_gt . n'_pred). ``encoding="angle"`` gives the plain angle between
   the normals instead (reported in our own tables as ``normal_angle_deg``).

Units: whatever the caller passes; the benchmark works in mm with the ground truth scaled to
a pupil distance of 62.85 mm (``STD_PUPIL_DIST_MM``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import trimesh
from scipy.spatial import cKDTree

STD_PUPIL_DIST_MM = (64.0 + 61.7) / 2
CYL_SIZE = 256
CYL_HALF_HEIGHT_MM = 150.0
CYL_DEPTH_JUMP_MM = 15.0


# --------------------------------------------------------------------------------------
# Closest points on a triangle mesh (per triangle: mfnet_core.metrics)
# --------------------------------------------------------------------------------------
def point_to_surface(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Exact distance from each of (P,3) points to a triangle mesh (V,3)/(F,3).

    Returns (distances (P,), closest points (P,3)). Candidate triangles are those whose
    bounding sphere can hold a point closer than the nearest vertex (an upper bound), so the
    answer is exact for any triangle sizes.
    """
    d, q, _ = closest_points(points, vertices, faces, chunk)
    return d, q


def closest_points(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``point_to_surface`` plus the index of the closest face (P,)."""
    points = np.asarray(points, dtype=np.float64)
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) == 0 or len(points) == 0:
        nan = np.full(len(points), np.nan)
        return nan, np.full((len(points), 3), np.nan), np.full(len(points), -1)
    tri = vertices[faces]  # (F,3,3)
    centroid = tri.mean(1)
    radius = np.linalg.norm(tri - centroid[:, None], axis=-1).max(1)
    used = np.unique(faces)
    d_vert, _ = cKDTree(vertices[used]).query(points)
    # Two size classes, so that a few large triangles do not widen every point's search.
    big = radius > 2.0 * float(np.median(radius))
    classes = []
    for sel in (~big, big):
        ids = np.nonzero(sel)[0]
        if len(ids):
            classes.append((ids, cKDTree(centroid[ids]), float(radius[ids].max())))
    dist = np.empty(len(points))
    closest = np.empty((len(points), 3))
    face = np.empty(len(points), dtype=np.int64)
    for s in range(0, len(points), chunk):
        p = points[s : s + chunk]
        pids, fids = [], []
        for ids, tree, r_max in classes:
            cand = tree.query_ball_point(
                p, d_vert[s : s + chunk] + r_max + 1e-9, return_sorted=False
            )
            counts = np.fromiter((len(c) for c in cand), dtype=np.int64, count=len(cand))
            pids.append(np.repeat(np.arange(len(p)), counts))
            flat = np.fromiter(
                itertools.chain.from_iterable(cand), dtype=np.int64, count=int(counts.sum())
            )
            fids.append(ids[flat])
        pid, fid = np.concatenate(pids), np.concatenate(fids)
        # Drop candidates whose bounding sphere is farther than the nearest vertex.
        keep = (
            np.linalg.norm(centroid[fid] - p[pid], axis=1) - radius[fid] <= d_vert[s + pid] + 1e-9
        )
        pid, fid = pid[keep], fid[keep]
        q = trimesh.triangles.closest_point(tri[fid], p[pid])
        d = np.linalg.norm(q - p[pid], axis=1)
        order = np.lexsort((d, pid))
        first = np.ones(len(order), bool)
        first[1:] = pid[order][1:] != pid[order][:-1]
        best = order[first]
        dist[s : s + len(p)] = d[best]
        closest[s : s + len(p)] = q[best]
        face[s : s + len(p)] = fid[best]
    return dist, closest, face


def chamfer_distance(
    verts_a: np.ndarray, faces_a: np.ndarray, verts_b: np.ndarray, faces_b: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """FaceScape's Chamfer distance between two meshes.

    Mean of the concatenated directed vertex-to-surface distances (A's vertices to B's
    surface and B's vertices to A's surface; unreferenced vertices ignored). Returns
    (cd, distances of A's vertices (P_a,), distances of B's vertices (P_b,)).
    """
    va = verts_a[np.unique(faces_a)]
    vb = verts_b[np.unique(faces_b)]
    d_ab, _ = point_to_surface(va, verts_b, faces_b)
    d_ba, _ = point_to_surface(vb, verts_a, faces_a)
    both = np.concatenate([d_ab, d_ba])
    both = both[np.isfinite(both)]
    return (float(both.mean()) if len(both) else float("nan")), d_ab, d_ba


# --------------------------------------------------------------------------------------
# Ray casting on a pixel grid (cylindrical maps and perspective depth maps)
# --------------------------------------------------------------------------------------
def _ray_triangle(
    o: np.ndarray, d: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray
) -> np.ndarray:
    """Möller-Trumbore, pairwise over (K,3) arrays. Returns t (K,), NaN where no hit (t > 0)."""
    e1, e2 = b - a, c - a
    pvec = np.cross(d, e2)
    det = np.einsum("ij,ij->i", e1, pvec)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    tvec = o - a
    u = np.einsum("ij,ij->i", tvec, pvec) * inv
    qvec = np.cross(tvec, e1)
    v = np.einsum("ij,ij->i", d, qvec) * inv
    t = np.einsum("ij,ij->i", e2, qvec) * inv
    eps = 1e-9
    hit = ok & (u >= -eps) & (v >= -eps) & (u + v <= 1 + eps) & (t > 1e-9)
    return np.where(hit, t, np.nan)


@dataclass
class RayMap:
    """Per-pixel hits of a ray grid. H x W pixels."""

    value: np.ndarray  # (H,W) radius (cylinder) or depth z (perspective); 0 where no hit
    face: np.ndarray  # (H,W) index of the face hit, -1 where none

    @property
    def mask(self) -> np.ndarray:
        return self.face >= 0


def _cast_grid(
    tri: np.ndarray,
    tri_px: np.ndarray,
    h: int,
    w: int,
    rays_for: callable,  # type: ignore[valid-type]
    keep: str,
    value_of: callable,  # type: ignore[valid-type]
    pairs_per_chunk: int = 2_000_000,
) -> RayMap:
    """Shared ray-grid caster: tri (F,3,3) in the casting frame, tri_px (F,3,2) their (col,row)
    grid coordinates (columns may exceed w-1 for triangles across a wrap seam; rays_for maps
    them). A triangle can only be hit by rays inside its (col,row) bounding box."""
    cmin = np.ceil(tri_px[..., 0].min(1)).astype(np.int64)
    cmax = np.floor(tri_px[..., 0].max(1)).astype(np.int64)
    rmin = np.maximum(np.ceil(tri_px[..., 1].min(1)).astype(np.int64), 0)
    rmax = np.minimum(np.floor(tri_px[..., 1].max(1)).astype(np.int64), h - 1)
    nc = np.maximum(cmax - cmin + 1, 0)
    nr = np.maximum(rmax - rmin + 1, 0)
    count = nc * nr
    fids = np.nonzero(count > 0)[0]
    best = np.full(h * w, np.nan)
    face = np.full(h * w, -1, dtype=np.int64)
    if len(fids) == 0:
        return RayMap(np.zeros((h, w)), face.reshape(h, w))
    cum = np.cumsum(count[fids])
    starts = np.concatenate([[0], cum[:-1]])
    lo = 0
    while lo < len(fids):
        hi = int(np.searchsorted(cum, cum[lo] - count[fids[lo]] + pairs_per_chunk, side="right"))
        hi = max(hi, lo + 1)
        f = fids[lo:hi]
        k = count[f]
        fid = np.repeat(f, k)
        local = np.arange(int(k.sum())) - np.repeat(starts[lo:hi] - starts[lo], k)
        col = cmin[fid] + local % nc[fid]
        row = rmin[fid] + local // nc[fid]
        o, d, pix = rays_for(row, col)
        valid = pix >= 0
        t = np.full(len(fid), np.nan)
        t[valid] = _ray_triangle(
            o[valid], d[valid], tri[fid[valid], 0], tri[fid[valid], 1], tri[fid[valid], 2]
        )
        val = value_of(t, d)
        hit = np.isfinite(val)
        pix, val, fid = pix[hit], val[hit], fid[hit]
        # Per pixel keep the nearest / farthest hit (sort, then take the first per pixel).
        order = np.lexsort((val if keep == "near" else -val, pix))
        pix, val, fid = pix[order], val[order], fid[order]
        first = np.ones(len(pix), bool)
        first[1:] = pix[1:] != pix[:-1]
        pix, val, fid = pix[first], val[first], fid[first]
        cur = best[pix]
        better = np.isnan(cur) | ((val < cur) if keep == "near" else (val > cur))
        best[pix[better]] = val[better]
        face[pix[better]] = fid[better]
        lo = hi
    value = np.nan_to_num(best, nan=0.0).reshape(h, w)
    return RayMap(value, face.reshape(h, w))


def to_cylinder_frame(vertices: np.ndarray, center: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """FaceScape's standard frame: R^T (v - center). (V,3) -> (V,3)."""
    return (np.asarray(vertices, np.float64) - center) @ np.asarray(rotation, np.float64)


def cylindrical_map(
    vertices: np.ndarray,
    faces: np.ndarray,
    size: int = CYL_SIZE,
    half_height: float = CYL_HALF_HEIGHT_MM,
) -> RayMap:
    """Radius map of a mesh (already in the cylinder frame: axis = y, face toward -z).

    Column j: direction (-sin phi, 0, -cos phi), phi = 2 pi j / (size - 1); row i: height
    half_height - 2 half_height i / (size - 1). Keeps the outermost hit per ray.
    """
    v = np.asarray(vertices, np.float64)
    faces = np.asarray(faces, np.int64)
    tri = v[faces]
    step_phi = 2 * np.pi / (size - 1)
    step_y = 2 * half_height / (size - 1)
    phi = np.mod(np.arctan2(-tri[..., 0], -tri[..., 2]), 2 * np.pi)  # (F,3)
    span = phi.max(1) - phi.min(1)
    seam = span > np.pi
    phi = np.where(seam[:, None] & (phi < np.pi), phi + 2 * np.pi, phi)
    col = phi / step_phi
    row = (half_height - tri[..., 1]) / step_y
    tri_px = np.stack([col, row], -1)

    def rays_for(r: np.ndarray, c: np.ndarray):
        c = np.where(c > size - 1, c - (size - 1), c)
        ok = (c >= 0) & (c <= size - 1)
        ang = c * step_phi
        o = np.stack([np.zeros_like(ang), half_height - r * step_y, np.zeros_like(ang)], -1)
        d = np.stack([-np.sin(ang), np.zeros_like(ang), -np.cos(ang)], -1)
        return o, d, np.where(ok, r * size + c, -1)

    out = _cast_grid(tri, tri_px, size, size, rays_for, "far", lambda t, d: t)
    # Column 0 and column size-1 are the same direction: fill each from the other.
    for a, b in ((0, size - 1), (size - 1, 0)):
        miss = (out.face[:, a] < 0) & (out.face[:, b] >= 0)
        out.value[miss, a] = out.value[miss, b]
        out.face[miss, a] = out.face[miss, b]
    return out


def depth_map(
    vertices: np.ndarray, faces: np.ndarray, k: np.ndarray, height: int, width: int
) -> RayMap:
    """Z-buffer depth of a mesh in OpenCV camera space ((V,3), z forward) seen through K (3,3).

    Pixel (u, v) is the ray through its centre (u + 0.5, v + 0.5); keeps the nearest hit.
    """
    v = np.asarray(vertices, np.float64)
    tri = v[np.asarray(faces, np.int64)]
    z = np.maximum(tri[..., 2], 1e-9)
    u = k[0, 0] * tri[..., 0] / z + k[0, 2] - 0.5
    vv = k[1, 1] * tri[..., 1] / z + k[1, 2] - 0.5
    front = (tri[..., 2] > 1e-9).all(1)
    tri, tri_px = tri[front], np.stack([u, vv], -1)[front]
    face_ids = np.nonzero(front)[0]

    def rays_for(r: np.ndarray, c: np.ndarray):
        ok = (c >= 0) & (c < width)
        d = np.stack(
            [(c + 0.5 - k[0, 2]) / k[0, 0], (r + 0.5 - k[1, 2]) / k[1, 1], np.ones(len(c))], -1
        )
        return np.zeros_like(d), d, np.where(ok, r * width + c, -1)

    out = _cast_grid(tri, tri_px, height, width, rays_for, "near", lambda t, d: t * d[:, 2])
    out.face[out.face >= 0] = face_ids[out.face[out.face >= 0]]
    return out


def cylinder_to_mesh(
    radius: np.ndarray,
    half_height: float = CYL_HALF_HEIGHT_MM,
    threshold: float = CYL_DEPTH_JUMP_MM,
) -> tuple[np.ndarray, np.ndarray]:
    """Radius map (H,W) -> grid mesh (vertices (P,3), faces (F,3)) in the cylinder frame.

    Two triangles per pixel quad whose four radii are all set and within ``threshold`` of
    each other (the benchmark's rule); unreferenced vertices dropped.
    """
    h, w = radius.shape
    phi = np.arange(w) * 2 * np.pi / (w - 1)
    y = np.linspace(half_height, -half_height, h)
    verts = np.stack(
        [
            radius * -np.sin(phi)[None],
            np.broadcast_to(y[:, None], (h, w)),
            radius * -np.cos(phi)[None],
        ],
        -1,
    ).reshape(-1, 3)
    r00, r01 = radius[:-1, :-1], radius[:-1, 1:]
    r10, r11 = radius[1:, :-1], radius[1:, 1:]
    quad = np.stack([r00, r01, r10, r11], -1)
    ok = (quad != 0).all(-1) & ((quad.max(-1) - quad.min(-1)) < threshold)
    ii, jj = np.nonzero(ok)
    i00 = ii * w + jj
    i01, i10, i11 = i00 + 1, i00 + w, i00 + w + 1
    faces = np.concatenate([np.stack([i00, i01, i10], 1), np.stack([i11, i10, i01], 1)])
    used, inverse = np.unique(faces, return_inverse=True)
    return verts[used], inverse.reshape(-1, 3)


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F,3) unit normals (right-handed winding)."""
    tri = np.asarray(vertices, np.float64)[np.asarray(faces, np.int64)]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)


def mean_normal_error(
    normals_gt: np.ndarray, normals_pred: np.ndarray, encoding: str = "facescape"
) -> float:
    """Mean angle (radians) between paired (P,3) unit normals.

    encoding "facescape": both are first mapped to (n + 1) / |n + 1| as the benchmark does;
    "angle": the plain angle between the normals.
    """
    a, b = np.asarray(normals_gt, np.float64), np.asarray(normals_pred, np.float64)
    if len(a) == 0:
        return float("nan")
    if encoding == "facescape":
        a = (a + 1) / np.linalg.norm(a + 1, axis=1, keepdims=True)
        b = (b + 1) / np.linalg.norm(b + 1, axis=1, keepdims=True)
    elif encoding != "angle":
        raise ValueError(f"encoding must be 'facescape' or 'angle', not {encoding!r}")
    cos = np.clip(np.einsum("ij,ij->i", a, b), -1.0, 1.0)
    return float(np.arccos(cos).mean())


@dataclass
class FaceScapeScores:
    cd: float  # Chamfer distance (input units, mm in the benchmark)
    mne: float  # mean normal error, radians, benchmark encoding
    cr: float  # completeness rate in [0,1]
    normal_angle_deg: float  # mean plain angle between normals, degrees

    def as_dict(self) -> dict[str, float]:
        return {
            "cd": self.cd,
            "mne": self.mne,
            "cr": self.cr,
            "normal_angle_deg": self.normal_angle_deg,
        }


def facescape_scores(
    gt_vertices: np.ndarray,
    gt_faces: np.ndarray,
    pred_vertices: np.ndarray,
    pred_faces: np.ndarray,
    center: np.ndarray,
    rotation: np.ndarray,
    size: int = CYL_SIZE,
    half_height: float = CYL_HALF_HEIGHT_MM,
    threshold: float = CYL_DEPTH_JUMP_MM,
) -> FaceScapeScores:
    """CD, MNE and CR of an already aligned prediction, as the FaceScape benchmark defines them.

    Meshes in the same frame and units (mm for the benchmark's numbers); ``center`` (3,) and
    ``rotation`` (3,3) put the head on the cylinder axis facing -z (``to_cylinder_frame``).
    """
    gt_c = to_cylinder_frame(gt_vertices, center, rotation)
    pr_c = to_cylinder_frame(pred_vertices, center, rotation)
    gmap = cylindrical_map(gt_c, gt_faces, size, half_height)
    pmap = cylindrical_map(pr_c, pred_faces, size, half_height)
    both = gmap.mask & pmap.mask
    n_gt = int(gmap.mask.sum())
    cr = float(both.sum() / n_gt) if n_gt else float("nan")
    gv, gf = cylinder_to_mesh(gmap.value * both, half_height, threshold)
    pv, pf = cylinder_to_mesh(pmap.value * both, half_height, threshold)
    cd = chamfer_distance(gv, gf, pv, pf)[0] if len(gf) and len(pf) else float("nan")
    ng = face_normals(gt_c, gt_faces)[gmap.face[both]]
    npred = face_normals(pr_c, pred_faces)[pmap.face[both]]
    mne = mean_normal_error(ng, npred, "facescape")
    ang = float(np.degrees(mean_normal_error(ng, npred, "angle")))
    return FaceScapeScores(cd, mne, cr, ang)


# --------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------
def align_depth(
    gt_vertices: np.ndarray,
    gt_faces: np.ndarray,
    pred_vertices: np.ndarray,
    pred_faces: np.ndarray,
    k: np.ndarray,
    height: int = 256,
    width: int = 256,
) -> tuple[np.ndarray, float]:
    """The benchmark's FS-Lab alignment: OpenCV camera space, depth shift turned into a scale.

    Renders both depth maps through K (3,3) at height x width, takes dz = the L1-optimal
    shift (median of gt - pred on common pixels), and scales the prediction about the camera
    centre by mean_z / (mean_z - dz). Returns (aligned prediction (V,3), dz).
    """
    dg = depth_map(gt_vertices, gt_faces, k, height, width)
    dp = depth_map(pred_vertices, pred_faces, k, height, width)
    both = dg.mask & dp.mask
    if not both.any():
        return np.asarray(pred_vertices, np.float64), float("nan")
    dz = float(np.median(dg.value[both] - dp.value[both]))
    mean_z = float(dg.value[both].mean())
    return np.asarray(pred_vertices, np.float64) * (mean_z / (mean_z - dz)), dz


def icp_align(
    src_vertices: np.ndarray,
    dst_vertices: np.ndarray,
    dst_faces: np.ndarray,
    iterations: int = 30,
    trim: float = 0.9,
) -> np.ndarray:
    """Rigid point-to-plane ICP of (P,3) points onto a mesh, trimmed (each round keeps the
    closest ``trim`` fraction). Start it from a landmark or correspondence alignment.
    Returns the moved (P,3) points."""
    cur = np.asarray(src_vertices, np.float64).copy()
    normals = face_normals(dst_vertices, dst_faces)
    for _ in range(iterations):
        d, q, fid = closest_points(cur, dst_vertices, dst_faces)
        keep = d <= np.quantile(d, trim)
        p, q, n = cur[keep], q[keep], normals[fid[keep]]
        centre = p.mean(0)
        pc = p - centre
        # Linearised: minimise sum(((p - q) + w x p + t) . n)^2 (+ a tiny damping).
        a = np.concatenate([np.cross(pc, n), n], 1)  # (K,6)
        b = -np.einsum("ij,ij->i", p - q, n)
        x = np.linalg.solve(a.T @ a + 1e-9 * np.eye(6), a.T @ b)
        w, t = x[:3], x[3:]
        ang = np.linalg.norm(w)
        k = w / ang if ang > 0 else np.zeros(3)
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        rot = np.eye(3) + np.sin(ang) * kx + (1 - np.cos(ang)) * kx @ kx
        new = (cur - centre) @ rot.T + centre + t
        step = np.abs(new - cur).max()
        cur = new
        if step < 1e-9:
            break
    return cur
