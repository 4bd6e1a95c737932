"""ARKit-named expression keys on any head: the ICT Face Model's 53 blendshapes transferred
onto another head's rest mesh (FLAME, the generated test head, a fitted identity).

``transfer_expression_keys(target_vertices, target_faces, target_landmarks)`` returns a
`KeyTransferResult` (``names, deltas = result`` works): the key names (ICT's: eyeBlink_L,
jawOpen, ...), (K,V,3) deltas on the target's vertices, per-key diagnostics and the
registration's. `fit_jaw_rotation` splits a key into a jaw rotation plus a residual shape on
targets with a jaw joint. Nothing here is wired into the pipeline: a caller passes a fitted
head's rest mesh and stores the keys.

Method
------
1. Source: the ICT model's skin, its `face` and `head_and_neck` vertex ranges (one connected
   surface of 11,248 vertices, open at the eyes, the mouth and the neck). Eyeballs, teeth,
   gums, tongue, lashes, the eye and mouth sockets and the lacrimal/occlusion meshes are
   left out: targets rarely have them, and ICT's expressions never move its eyeballs (its
   eyeLook keys move only the lids). Target vertices outside `target_mask` (the eyeballs:
   `vertex_mask_without_eyes`) get no delta; step 6 keeps the lids outside the eyeballs.
2. Similarity: Umeyama from ICT's landmark vertices to the target's landmarks (the inner 51;
   the jaw contour means different things on different meshes). ICT's "_L" is the subject's
   left (+x in mfnet's axes, iBUG points 42-47), and so it stays.
3. Registration, in two stages, onto the target's skin (its faces inside the mask):
   a. ICT's own identity space (the first 30 components, a Gaussian prior): a few rounds of
      closest points and landmarks, each a small linear solve, bring ICT's surface to the
      target's overall shape with a human face's proportions.
   b. Non-rigid ICP: the vertex positions X minimise
      ``w_cp sum_i c_i |x_i - p_i|^2`` (each source vertex to its closest target point)
      ``+ w_rev sum_j r_j |B_j X - t_j|^2`` (each target vertex to its closest point on the
      source, so the source also reaches the target's bumps)
      ``+ w_lm sum_l |x_l - L_l|^2`` (the inner 51 landmarks)
      ``+ stiffness |L (X - X0)|^2`` (the graph Laplacian of the displacement from stage a:
      a smooth displacement keeps ICT's detail where the target does not ask otherwise),
      the stiffness lowered over five rounds, each one sparse LU solve. Pairs further apart
      than a distance that shrinks over the rounds are dropped.
   Closest points only pair surfaces that face the same way (normals within 73 degrees for
   the registration, 90 for step 5), and only on the same side of the lips and lids: ICT's upper and lower lips are two sheets
   less than a millimetre apart, the test head's (and FLAME's) lip vertices sit on one
   slit, and the nearest point alone can hand an upper-lip vertex the lower lip's motion.
   A vertex is on the upper (lower) side of a mouth or eye when, along the mesh's edges, it
   is clearly nearer that feature's upper (lower) landmarks (61-63 / 65-67, 37-38 / 40-41,
   43-44 / 46-47); the two sides of a slit meet only at its corners, so this is topology,
   not geometry, and holds however close the sheets are. Normals alone, or sides alone,
   already open the test head's mouth; with neither, jawOpen leaves it shut.
4. The keys on the registered source: ``s R delta`` (the ICT delta rotated and scaled by
   the similarity; `method="displacement"`, the default) or Sumner & Popovic's deformation
   transfer (`method="deformation_transfer"`: per-triangle deformation gradients of the
   key, with the fourth vertex along the normal, applied to the registered triangles and
   integrated by one Poisson solve whose small anchor term is the displacement). Why the
   displacement is the default: after the similarity and the identity fit both faces look
   the same way and have the same proportions, so much of the local turn and stretch that
   deformation transfer adds is the crumple of fitting a fine mesh to a coarser one (on
   the test head a registered triangle of the moving face is turned 16 degrees from its
   ICT original at the median, 40 at the 90th percentile), not a real difference of the
   skin; carried into the keys it weakens them (the
   blink closes 67 %/79 % of the test head's eye opening at the two upper-lid landmarks,
   against 75 %/89 % with the displacement) and the global solve spreads a little of
   every key over the whole head (up to 0.03 mm on the other eye for a blink; exactly zero
   with the displacement). A larger head gets proportionally larger motions from the
   similarity's scale, as deformation transfer would give it. Both return ICT onto ICT
   exactly. The correspondence problem of the original paper (its triangle matching) is
   the registration of step 3.
5. Sampling: each target vertex takes the displacement at its closest point on the
   registered source (triangle + barycentrics; facing the same way, on its own side). A
   coverage weight is 1 up to `full_mm` from the source and falls smoothly to 0 at
   `zero_mm` (0 where no skin facing the same way is in reach); the deltas solve
   ``D = w * sampled + (1 - w) * mean(neighbours' D)`` (one sparse solve: a harmonic fill),
   held at zero outside the mask and beyond `pin_mm`. So the keys fade out smoothly where
   ICT has no counterpart (the test head's eye fissure behind the eyeball, its nostrils; the
   back of the head carries ICT's own near-zero deltas) and nothing tears where the
   correspondence jumps: no target edge stretches faster than the same key stretches ICT's
   own mesh (at most 0.89 of it on the test head).
6. Eyeballs (optional, ``eyeballs=[(centre, radius), ...]``, `eyeballs_from_rig`): a vertex
   near an eyeball is kept at least at its rest distance from the centre (capped at radius
   + `eyeball_band_mm`), so the lids close onto the eyeball without passing through it
   (unguarded, ICT's blink sinks the test head's lid 3.4 mm into it).

Measured (tests/test_key_transfer.py): ICT onto itself, also moved and scaled, returns its
own 53 keys to 1e-12 mm on every skin vertex; onto another ICT identity (whose true keys are
ICT's own) the 99th percentile error is 0.2 mm, 28 of 9,409 face vertices (the inner mouth
corners) off by more than 1 mm. On the test head: 1.3-2.5 s for all 53 keys on 2 busy CPU
cores, 2-4 s onto the ICT mesh; eyeBlink_L brings the left upper lid down by 75 %/89 % of
the opening and moves the right eye by nothing; mirrored left keys equal the right ones
within 10 % of their motion (ICT's own pairs differ by up to 13 %); jawOpen parts the inner
lips by 31 mm.

Jaw: on a target with a jaw joint, jawOpen/jawLeft/jawRight/jawForward are mostly a turn of
the jaw's skinned region. `fit_jaw_rotation` finds the axis-angle ``r`` that best explains
a key by linear blend skinning about the jaw joint (``w_i (R(r) - I)(v_i - joint)``) and
returns it with the residual shape (the key minus that), so that the jaw bone turned by
``r`` plus the residual key at 1 is the key exactly. A rig plays weight ``a`` as the bone
turned by ``a * r`` plus ``a * residual``: exact at 0 and 1; in between the jaw moves on an
arc where the linear key moves on a chord (for jawOpen on the test head, 17.7 degrees about
+x explaining 81 % of the key, about 1 mm at the chin at a = 0.5). jawForward is mostly a
slide, which a rotation about the joint explains poorly (17 %): its residual is most of it.
`transfer_expression_keys(jaw=JawRig(...))` fits the four jaw keys (`result.jaw`);
`result.rig_deltas()` gives the deltas with their residuals in their place.

Units: the target's (metres for every mfnet head); thresholds are in millimetres.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import scipy.sparse as sp
from scipy.optimize import least_squares
from scipy.sparse.csgraph import dijkstra
from scipy.sparse.linalg import splu
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from mfnet_core.errors import MfnetError
from mfnet_core.metrics import similarity_transform

__all__ = [
    "JAW_KEYS",
    "METHODS",
    "IctSource",
    "JawFit",
    "JawRig",
    "KeyDiagnostics",
    "KeyTransferResult",
    "TransferOptions",
    "closest_points",
    "eyeballs_from_rig",
    "fit_jaw_rotation",
    "ict_source",
    "mirror_name",
    "transfer_expression_keys",
    "vertex_mask_without_eyes",
]

METHODS = ("displacement", "deformation_transfer")
JAW_KEYS = ("jawOpen", "jawLeft", "jawRight", "jawForward")
# The ICT vertex ranges that form the source surface (one connected mesh).
SOURCE_RANGES = ("face", "head_and_neck")
# Landmarks the similarity and the registration use: brows, nose, eyes, mouth (the jaw
# contour's points 0..16 mean different things on different models' meshes).
INNER_LANDMARKS = np.arange(17, 68)
# Upper and lower lids (right eye 37,38 / 41,40; left eye 43,44 / 47,46) and inner lips
# (61-63 / 65-67): what tells one side of a slit from the other (module docstring, step 3).
SIDE_FEATURES = (((37, 38), (40, 41)), ((43, 44), (46, 47)), ((61, 62, 63), (65, 66, 67)))
UPPER_LANDMARKS = tuple(lm for up, _ in SIDE_FEATURES for lm in up)
LOWER_LANDMARKS = tuple(lm for _, lo in SIDE_FEATURES for lm in lo)
MM = 1e-3  # target units (metres) per millimetre


# -- the source --------------------------------------------------------------------------------


@dataclass(frozen=True)
class IctSource:
    """The ICT model's skin as the transfer's source (metres, the model's axes)."""

    vertex_ids: np.ndarray  # (Vs,) ids into the ICT model's vertices
    vertices: np.ndarray  # (Vs,3) float64 neutral
    faces: np.ndarray  # (Fs,3) int64 into `vertices`
    deltas: np.ndarray  # (K,Vs,3) float64 expression deltas at weight 1
    names: tuple[str, ...]  # (K,) ICT's ARKit-style names (eyeBlink_L, jawOpen, ...)
    landmarks: np.ndarray  # (68,) int64 into `vertices`
    identity: np.ndarray  # (S,Vs,3) float64 identity components (per unit coefficient)


def _source_from_assets(assets) -> IctSource:
    ranges = assets.regions["vertex_ranges_inclusive"]
    ids = np.unique(
        np.concatenate([np.arange(ranges[r][0], ranges[r][1] + 1) for r in SOURCE_RANGES])
    )
    remap = np.full(len(assets.v_template), -1, dtype=np.int64)
    remap[ids] = np.arange(len(ids))
    faces = remap[assets.faces]
    faces = faces[(faces >= 0).all(1)]
    lm = remap[np.asarray(assets.regions["multipie68_vertex"], dtype=np.int64)]
    if (lm < 0).any():
        raise MfnetError("ICT model: a landmark vertex lies outside the face (damaged file?)")
    deltas = np.transpose(assets.exprdirs[ids].astype(np.float64), (2, 0, 1))
    identity = np.transpose(assets.shapedirs[ids].astype(np.float64), (2, 0, 1))
    return IctSource(
        vertex_ids=ids,
        vertices=assets.v_template[ids].astype(np.float64),
        faces=faces,
        deltas=np.ascontiguousarray(deltas),
        names=tuple(assets.expression_names),
        landmarks=lm,
        identity=np.ascontiguousarray(identity),
    )


@lru_cache(maxsize=1)
def _default_source() -> IctSource:
    from mfnet_core.head.ict import load_ict_assets

    return _source_from_assets(load_ict_assets())


def ict_source(assets=None) -> IctSource:
    """The transfer's source from `ICTAssets` (`load_ict_assets()`); the shipped model,
    loaded once, when None."""
    return _default_source() if assets is None else _source_from_assets(assets)


def mirror_name(name: str) -> str:
    """eyeBlink_L <-> eyeBlink_R, jawLeft <-> jawRight, mouthLeft <-> mouthRight; others as
    they are."""
    for a, b in (("_L", "_R"), ("Left", "Right")):
        if name.endswith(a):
            return name[: -len(a)] + b
        if name.endswith(b):
            return name[: -len(b)] + a
    return name


# -- options and results ---------------------------------------------------------------------


@dataclass(frozen=True)
class TransferOptions:
    """The transfer's knobs (the defaults suit human heads in metres)."""

    method: str = "displacement"  # or "deformation_transfer" (module docstring, step 4)
    # ICT's identity first: components, rounds, prior (p: a coefficient of 1 costs as much as
    # a residual of sqrt(p) mm at every pair); then the non-rigid ICP: stiffness per round
    # (high = stiff) and the terms' relative weights
    identity_components: int = 30
    identity_rounds: int = 3
    identity_prior: float = 0.05
    stiffness: tuple[float, ...] = (5000.0, 2000.0, 800.0, 300.0, 200.0)
    landmark_weight: float = 2.0
    closest_weight: float = 1.0
    reverse_weight: float = 0.5
    reject_mm: tuple[float, float] = (20.0, 5.0)  # pair rejection distance, first/last round
    normal_dot_min: float = 0.3  # registration pairs whose normals disagree more: none
    sample_dot_min: float = 0.0  # a target vertex never samples skin that faces away
    # sides of the lips and lids: how far from their landmarks, how much closer to one side
    side_radius_mm: float = 18.0
    side_margin_mm: float = 0.5
    # deformation transfer's anchor weight (relative to the Laplacian)
    anchor: float = 1e-3
    # sampling: coverage 1 up to full_mm from the source, 0 beyond zero_mm; zero past pin_mm
    full_mm: float = 2.0
    zero_mm: float = 6.0
    pin_mm: float = 15.0
    eyeball_band_mm: float = 3.0


@dataclass(frozen=True)
class KeyDiagnostics:
    """One key: its largest motion on the source (at the target's scale), on the target, and
    on target vertices with coverage below one half (motion that comes from the fill)."""

    name: str
    source_max_mm: float
    target_max_mm: float
    filled_max_mm: float


@dataclass(frozen=True)
class JawFit:
    """A key as a jaw rotation plus a residual shape (see `fit_jaw_rotation`)."""

    axis_angle: np.ndarray  # (3,) radians about the jaw joint, in the target's axes
    residual: np.ndarray  # (V,3) float32, the key minus the rotation's motion
    explained: float  # 1 - |residual|^2 / |key|^2 over the fitted vertices


@dataclass(frozen=True)
class JawRig:
    """A target's jaw: the rest joint position (3,) and its skin weights (V,)."""

    joint: np.ndarray
    weights: np.ndarray


@dataclass
class KeyTransferResult:
    """The transferred keys and how they were made. Unpacks as ``names, deltas = result``."""

    names: tuple[str, ...]
    deltas: np.ndarray  # (K,V,3) float32, the full keys on the target's vertices
    diagnostics: tuple[KeyDiagnostics, ...]
    # the similarity ICT -> target: x_target = scale * rotation @ x_ict + translation
    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    registered: np.ndarray  # (Vs,3) the registered source, in the target's axes
    landmark_rms_mm: float  # registered source vs target, inner 51 landmarks
    surface_mm: tuple[float, float]  # source to target distance: median, 95th percentile
    corr_faces: np.ndarray  # (V,) source triangle per target vertex
    corr_bary: np.ndarray  # (V,3)
    corr_distance_mm: np.ndarray  # (V,) inf outside the mask or with no skin facing its way
    coverage: np.ndarray  # (V,) in [0,1]
    jaw: dict[str, JawFit] = field(default_factory=dict)
    seconds: float = 0.0

    def __iter__(self):
        yield self.names
        yield self.deltas

    def key(self, name: str) -> np.ndarray:
        """(V,3) one key's deltas."""
        return self.deltas[self.names.index(name)]

    def rig_deltas(self) -> np.ndarray:
        """(K,V,3): the deltas with each fitted jaw key's residual in its place."""
        out = self.deltas.copy()
        for name, fit in self.jaw.items():
            out[self.names.index(name)] = fit.residual
        return out


# -- mesh helpers --------------------------------------------------------------------------------


def _closest_on_triangles(p, a, b, c):
    """Closest points of p on triangles (a, b, c), all (...,3): (point, barycentrics).
    Works on coordinate planes ((3,...) copies): dot products over a trailing axis of 3 were
    most of the key transfer's closest-point time; the sums are the same, term for term."""
    p, a, b, c = np.broadcast_arrays(p, a, b, c)
    pp, pa, pb, pc = (np.ascontiguousarray(np.moveaxis(t, -1, 0)) for t in (p, a, b, c))

    def dot(x, y):
        return x[0] * y[0] + x[1] * y[1] + x[2] * y[2]

    ab, ac, ap = pb - pa, pc - pa, pp - pa
    d1 = dot(ab, ap)
    d2 = dot(ac, ap)
    bp = pp - pb
    d3 = dot(ab, bp)
    d4 = dot(ac, bp)
    cp = pp - pc
    d5 = dot(ab, cp)
    d6 = dot(ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2

    def div(n, d):
        return n / np.where(np.abs(d) > 1e-300, d, 1e-300)

    den = va + vb + vc
    v = div(vb, den)
    w = div(vc, den)
    bary = [1 - v - w, v, w]
    # Ericson's regions (Real-Time Collision Detection 5.1.5), applied in reverse so that
    # the first test that holds there wins here
    t_bc = div(d4 - d3, (d4 - d3) + (d5 - d6))
    t_ac = div(d2, d2 - d6)
    t_ab = div(d1, d1 - d3)
    z = np.zeros_like(d1)
    one = np.ones_like(d1)
    regions = [
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), (z, 1 - t_bc, t_bc)),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), (1 - t_ac, z, t_ac)),
        ((d6 >= 0) & (d5 <= d6), (z, z, one)),
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), (1 - t_ab, t_ab, z)),
        ((d3 >= 0) & (d4 <= d3), (z, one, z)),
        ((d1 <= 0) & (d2 <= 0), (one, z, z)),
    ]
    for cond, bc in regions:
        bary = [np.where(cond, new, old) for new, old in zip(bc, bary, strict=True)]
    point = bary[0] * pa + bary[1] * pb + bary[2] * pc  # (3,...)
    return np.moveaxis(point, 0, -1), np.stack(bary, -1)


class _MeshQuery:
    """Closest points on a triangle mesh. The triangles with the k nearest centroids are the
    candidates: exact for meshes of fairly even triangles at distances up to about a
    triangle's size (the heads here); further away the answer may be a neighbour of the
    closest triangle, a fraction of an edge off."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, k: int = 10) -> None:
        self.v = np.asarray(vertices, dtype=np.float64)
        self.f = np.asarray(faces, dtype=np.int64)
        self.tree = cKDTree(self.v[self.f].mean(1))
        self.k = min(k, len(self.f))
        self.normals = _face_normals(self.v, self.f)

    def closest(
        self,
        points: np.ndarray,
        normals: np.ndarray | None = None,
        min_dot: float = -1.0,
        chunk: int = 4096,
    ):
        """(N,3) -> triangle (N,), barycentrics (N,3), point (N,3), distance (N,). With
        `normals` (N,3), triangles whose normal makes a dot product below `min_dot` with
        the point's are passed over; a point left with none gets distance inf (and the
        closest triangle regardless)."""
        points = np.asarray(points, dtype=np.float64)
        n = len(points)
        tri = np.zeros(n, dtype=np.int64)
        bary = np.zeros((n, 3))
        pt = np.zeros((n, 3))
        dist = np.zeros(n)
        for s in range(0, n, chunk):
            p = points[s : s + chunk]
            _, cand = self.tree.query(p, k=self.k)
            cand = cand.reshape(len(p), -1)
            a, b, c = (self.v[self.f[cand, i]] for i in range(3))
            q, bc = _closest_on_triangles(p[:, None, :], a, b, c)
            d = np.linalg.norm(p[:, None, :] - q, axis=-1)
            r = np.arange(len(p))
            if normals is not None:
                facing = np.einsum("nkd,nd->nk", self.normals[cand], normals[s : s + chunk])
                d_ok = np.where(facing >= min_dot, d, np.inf)
                best = np.where(np.isfinite(d_ok).any(1), d_ok.argmin(1), d.argmin(1))
                dist[s : s + chunk] = d_ok[r, best]
            else:
                best = d.argmin(1)
                dist[s : s + chunk] = d[r, best]
            tri[s : s + chunk] = cand[r, best]
            bary[s : s + chunk] = bc[r, best]
            pt[s : s + chunk] = q[r, best]
        return tri, bary, pt, dist


class _SidedQuery:
    """Closest points that stay on a query point's side (+1 upper, -1 lower, 0 either): a
    point of one side never lands on a triangle of the other."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, face_side: np.ndarray) -> None:
        self.all = _MeshQuery(vertices, faces)
        self.ids = {s: np.flatnonzero(face_side != -s) for s in (1, -1)}
        self.sub = {s: _MeshQuery(vertices, faces[ids]) for s, ids in self.ids.items()}

    def closest(self, points, side, normals=None, min_dot=-1.0):
        """`_MeshQuery.closest` of each point on the triangles its side may reach (all of
        them for side 0, or when its side has none); each point is looked up once."""
        points = np.asarray(points, dtype=np.float64)
        n = len(points)
        tri, bary = np.zeros(n, dtype=np.int64), np.zeros((n, 3))
        pt, dist = np.zeros((n, 3)), np.zeros(n)
        sided = {s: (side == s) & (len(self.ids[s]) > 0) for s in (1, -1)}
        for query, sel, ids in (
            (self.all, ~(sided[1] | sided[-1]), None),
            *((self.sub[s], sided[s], self.ids[s]) for s in (1, -1)),
        ):
            if sel.any():
                nrm = None if normals is None else normals[sel]
                t, b, p, d = query.closest(points[sel], nrm, min_dot)
                tri[sel] = t if ids is None else ids[t]
                bary[sel], pt[sel], dist[sel] = b, p, d
        return tri, bary, pt, dist


def closest_points(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray):
    """Closest points of (N,3) points on a triangle mesh: triangle (N,), barycentrics (N,3),
    point (N,3), distance (N,)."""
    return _MeshQuery(vertices, faces).closest(points)


def _factor(a: sp.spmatrix):
    """Sparse LU of a symmetric matrix (minimum degree on A + A^T without pivoting: about
    twice as fast here as the default ordering)."""
    return splu(
        a.tocsc(),
        permc_spec="MMD_AT_PLUS_A",
        diag_pivot_thresh=0.0,
        options={"SymmetricMode": True},
    )


def _face_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # area weighted
    out = np.zeros_like(v)
    for k in range(3):
        np.add.at(out, f[:, k], n)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-30)


def _adjacency(f: np.ndarray, n: int) -> sp.csr_matrix:
    """(n,n) symmetric 0/1 vertex adjacency along the faces' edges."""
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    a = sp.csr_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    a.data[:] = 1.0
    return a


def _uniform_laplacian(f: np.ndarray, n: int) -> sp.csr_matrix:
    """I - D^-1 A on the vertices the faces use (rows of unused vertices are zero)."""
    a = _adjacency(f, n)
    deg = np.asarray(a.sum(1)).ravel()
    inv = np.where(deg > 0, 1.0 / np.maximum(deg, 1), 0.0)
    return (sp.diags((deg > 0).astype(float)) - sp.diags(inv) @ a).tocsr()


def _mean_edge(v: np.ndarray, f: np.ndarray) -> float:
    return float(np.mean(np.linalg.norm(v[f[:, 1]] - v[f[:, 0]], axis=1)))


def _smoothstep(x, a, b):
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


# -- sides of the lips and lids -------------------------------------------------------------------


def _sides(
    v: np.ndarray,
    f: np.ndarray,
    pins: dict[int, np.ndarray],
    radius: float,
    margin: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Vertex sides (V,) and face sides (F,) in {-1, 0, 1} (module docstring, step 3).

    pins: landmark number -> vertex ids that stand for it. For each feature (the two eyes,
    the mouth), a vertex within `radius` of its landmarks along the mesh's edges is upper
    (+1) where it is more than `margin` closer to the upper landmarks than to the lower ones,
    lower (-1) the other way round. A face is on a side when one of its corners is and
    none is on the other.
    """
    n = len(v)
    adj = _adjacency(f, n).tocoo()
    keep = adj.row < adj.col
    r, c = adj.row[keep], adj.col[keep]
    graph = sp.csr_matrix((np.linalg.norm(v[r] - v[c], axis=1) + 1e-12, (r, c)), shape=(n, n))
    side = np.zeros(n, dtype=np.int64)
    for upper, lower in SIDE_FEATURES:
        dist = []
        for group in (upper, lower):
            ids = np.unique(np.concatenate([pins[lm] for lm in group]))
            dist.append(
                dijkstra(graph, directed=False, indices=ids, min_only=True, limit=2 * radius)
            )
        du, dl = (np.minimum(d_, 4 * radius) for d_ in dist)
        near = np.minimum(du, dl) < radius
        lab = np.where(dl - du > margin, 1, np.where(du - dl > margin, -1, 0))
        side = np.where(near & (lab != 0), lab, side)
    fs = side[f]
    face_side = np.where(
        (fs.max(1) == 1) & (fs.min(1) >= 0),
        1,
        np.where((fs.min(1) == -1) & (fs.max(1) <= 0), -1, 0),
    )
    return side, face_side


def _landmark_pins(faces: np.ndarray, lm_faces: np.ndarray, lm_bary: np.ndarray) -> dict:
    """Side pins of a mesh whose landmarks are (face, barycentric) pairs: the corners of each
    lip/lid landmark's triangle that carry its weight."""
    out = {}
    for upper, lower in SIDE_FEATURES:
        for lm in upper + lower:
            out[lm] = faces[lm_faces[lm]][lm_bary[lm] > 0.05]
    return out


# -- registration --------------------------------------------------------------------------------


def _fit_identity(
    x_sim: np.ndarray,
    basis: np.ndarray,
    faces: np.ndarray,
    v_side: np.ndarray,
    landmark_ids: np.ndarray,
    landmark_targets: np.ndarray,
    target: _SidedQuery,
    opt: TransferOptions,
) -> tuple[np.ndarray, np.ndarray]:
    """ICT's identity coefficients that bring the aligned source closest to the target
    (closest points and landmarks, a Gaussian prior on the coefficients), a few rounds.
    Returns (coefficients (S,), the source with them (Vs,3))."""
    n_s = len(basis)
    if n_s == 0 or opt.identity_rounds == 0:
        return np.zeros(n_s), x_sim
    used = np.zeros(len(x_sim), dtype=bool)
    used[faces.ravel()] = True
    w_lm = opt.landmark_weight * int(used.sum()) / len(landmark_ids)
    b_lm = basis[:, landmark_ids, :].reshape(n_s, -1)
    r_lm = (landmark_targets - x_sim[landmark_ids]).ravel()
    beta = np.zeros(n_s)
    x = x_sim
    for _ in range(opt.identity_rounds):
        _, _, p, d = target.closest(x, v_side, _vertex_normals(x, faces), opt.normal_dot_min)
        ok = used & (d < opt.reject_mm[0] * MM)
        b = basis[:, ok, :].reshape(n_s, -1)
        r = (p[ok] - x_sim[ok]).ravel()
        prior = opt.identity_prior * (int(ok.sum()) + w_lm * len(landmark_ids)) * MM**2
        lhs = b @ b.T * opt.closest_weight + w_lm * (b_lm @ b_lm.T) + prior * np.eye(n_s)
        rhs = b @ r * opt.closest_weight + w_lm * (b_lm @ r_lm)
        beta = np.linalg.solve(lhs, rhs)
        x = x_sim + np.tensordot(beta, basis, axes=1)
    return beta, x


def _nonrigid_icp(
    x0: np.ndarray,
    faces: np.ndarray,
    source_side: tuple[np.ndarray, np.ndarray],
    landmark_ids: np.ndarray,
    landmark_targets: np.ndarray,
    target: _SidedQuery,
    target_points: np.ndarray,
    target_point_normals: np.ndarray,
    target_point_side: np.ndarray,
    opt: TransferOptions,
) -> np.ndarray:
    """The registered source positions (Vs,3) (module docstring, step 3)."""
    n = len(x0)
    lap = _uniform_laplacian(faces, n)
    reg = (lap.T @ lap).tocsr()
    reg_x0 = reg @ x0
    used = np.zeros(n, dtype=bool)
    used[faces.ravel()] = True
    n_used = int(used.sum())
    v_side, f_side = source_side
    lm_diag = np.zeros(n)
    lm_rhs = np.zeros((n, 3))
    w_lm = opt.landmark_weight * n_used / len(landmark_ids)
    np.add.at(lm_diag, landmark_ids, w_lm)
    np.add.at(lm_rhs, landmark_ids, w_lm * landmark_targets)
    w_rev = opt.reverse_weight * n_used / max(len(target_points), 1)
    rows = np.repeat(np.arange(len(target_points)), 3)
    x = x0.copy()
    rounds = len(opt.stiffness)
    for k, stiff in enumerate(opt.stiffness):
        frac = k / max(rounds - 1, 1)
        reject = (opt.reject_mm[0] + (opt.reject_mm[1] - opt.reject_mm[0]) * frac) * MM
        # source -> target, target -> source (pairs whose normals disagree are never made)
        src_n = _vertex_normals(x, faces)
        _, _, p, d = target.closest(x, v_side, src_n, opt.normal_dot_min)
        cw = np.where(used & (d < reject), opt.closest_weight, 0.0)
        sq = _SidedQuery(x, faces, f_side)
        stri, sbary, _, sd = sq.closest(
            target_points, target_point_side, target_point_normals, opt.normal_dot_min
        )
        rw = np.where(sd < reject, w_rev, 0.0)
        b = sp.csr_matrix(
            (sbary.ravel(), (rows, faces[stri].ravel())), shape=(len(target_points), n)
        )
        brw = b.T @ sp.diags(rw)
        a = sp.diags(cw + lm_diag + (~used)) + brw @ b + stiff * reg
        rhs = cw[:, None] * p + lm_rhs + brw @ target_points + stiff * reg_x0
        rhs[~used] = x0[~used]
        x = _factor(a).solve(rhs)
    return x


# -- the keys on the registered source -------------------------------------------------------------


def _gradient_operator(v: np.ndarray, f: np.ndarray):
    """Per-triangle gradients of the hat functions: G (3F,V) sparse (row 3t+d: component d
    on triangle t) and the areas (F,) (0 for degenerate triangles)."""
    e0 = v[f[:, 2]] - v[f[:, 1]]  # the edge opposite each corner
    e1 = v[f[:, 0]] - v[f[:, 2]]
    e2 = v[f[:, 1]] - v[f[:, 0]]
    n = np.cross(e2, -e1)
    area2 = np.linalg.norm(n, axis=1)
    ok = area2 > 1e-12 * max(float(np.median(area2)), 1e-30)
    unit = n / np.maximum(area2, 1e-30)[:, None]
    data = np.stack(
        [np.cross(unit, e) / np.maximum(area2, 1e-30)[:, None] for e in (e0, e1, e2)], 1
    )  # (F, corner, component)
    r = np.broadcast_to(3 * np.arange(len(f))[:, None, None] + np.arange(3), data.shape)
    c = np.broadcast_to(f[:, :, None], data.shape)
    g = sp.csr_matrix((data.ravel(), (r.ravel(), c.ravel())), shape=(3 * len(f), len(v)))
    return g, np.where(ok, 0.5 * area2, 0.0)


def _frames(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Sumner & Popovic's (F,3,3) triangle frames: columns e1, e2, n / sqrt|n|."""
    e1 = v[f[:, 1]] - v[f[:, 0]]
    e2 = v[f[:, 2]] - v[f[:, 0]]
    n = np.cross(e1, e2)
    n = n / np.sqrt(np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30))
    return np.stack([e1, e2, n], -1)


def _deformation_transfer(
    src: np.ndarray, src_deltas: np.ndarray, reg: np.ndarray, faces: np.ndarray, anchor: float
) -> np.ndarray:
    """(K,Vs,3) displacements of the registered source `reg` that carry the deformation
    gradients of `src` -> `src + src_deltas[k]`: per triangle ``J_t = S_t grad_t(reg)``,
    solved as ``(G^T A G + eps M) Y = G^T A J + eps M (reg + delta)`` (the cotangent
    Laplacian; the small eps term, the displacement transfer, fixes the translation)."""
    n = len(reg)
    g, areas = _gradient_operator(reg, faces)
    lap = (g.T @ sp.diags(np.repeat(areas, 3)) @ g).tocsr()
    mass = np.zeros(n)
    for k in range(3):
        np.add.at(mass, faces[:, k], areas / 3.0)
    eps = np.where(mass > 0, anchor / _mean_edge(reg, faces) ** 2 * mass, 1.0)
    solver = _factor(lap + sp.diags(eps))
    # grad_t(reg) (F,3,3), rows = coordinate: the registered triangle's tangent projector
    g_reg = np.stack([(g @ reg[:, c]).reshape(-1, 3) for c in range(3)], 1)
    inv_n = np.linalg.inv(_frames(src, faces))
    out = np.zeros_like(src_deltas)
    for k, delta in enumerate(src_deltas):
        if not delta.any():
            continue
        j = _frames(src + delta, faces) @ inv_n @ g_reg  # S_t grad_t(reg)
        rhs = np.stack([g.T @ (areas[:, None] * j[:, c, :]).ravel() for c in range(3)], 1)
        rhs += eps[:, None] * (reg + delta)
        out[k] = solver.solve(rhs) - reg
    return out


# -- sampling onto the target ----------------------------------------------------------------------


def _fill_solver(f: np.ndarray, n: int, cover: np.ndarray, zero: np.ndarray):
    """Factorised ``D = cover * sampled + (1 - cover) * mean(neighbours' D)`` with D = 0 where
    `zero` (module docstring, step 5)."""
    adj = _adjacency(f, n)
    deg = np.asarray(adj.sum(1)).ravel()
    mean = sp.diags(np.where(deg > 0, 1.0 / np.maximum(deg, 1), 0.0)) @ adj
    free = (1.0 - cover) * (~zero) * (deg > 0)
    return splu((sp.identity(n, format="csr") - sp.diags(free) @ mean).tocsc())


def _keep_outside(v: np.ndarray, d: np.ndarray, eyeballs, band: float) -> np.ndarray:
    """Deltas `d` (V,3) changed so that no vertex near an eyeball ends up closer to its
    centre than at rest (capped at radius + band) (module docstring, step 6)."""
    out = d.copy()
    for centre, radius in eyeballs:
        c = np.asarray(centre, dtype=np.float64)
        r0 = np.linalg.norm(v - c, axis=1)
        near = r0 < radius + band
        if not near.any():
            continue
        need = np.minimum(r0[near], radius + band)
        p = v[near] + out[near] - c
        r1 = np.linalg.norm(p, axis=1)
        push = r1 < need
        if push.any():
            p[push] *= (need[push] / np.maximum(r1[push], 1e-12))[:, None]
            out[np.flatnonzero(near)[push]] = p[push] + c - v[near][push]
    return out


# -- public helpers ------------------------------------------------------------------------------


def vertex_mask_without_eyes(skin_weights: np.ndarray, joint_names: Sequence[str]) -> np.ndarray:
    """(V,) bool: the vertices not skinned to an eye joint (so eyeballs get no delta)."""
    eye = [i for i, n in enumerate(joint_names) if str(n).startswith("eye")]
    if not eye:
        return np.ones(len(skin_weights), dtype=bool)
    return np.asarray(skin_weights)[:, eye].sum(1) < 0.5


def eyeballs_from_rig(
    vertices: np.ndarray,
    skin_weights: np.ndarray,
    joint_names: Sequence[str],
    joints: np.ndarray,
) -> list[tuple[np.ndarray, float]]:
    """[(centre (3,), radius)] per eye joint: the joint and the median distance of the
    vertices skinned to it (the eyeball's surface)."""
    out = []
    for i, n in enumerate(joint_names):
        if not str(n).startswith("eye"):
            continue
        ids = np.asarray(skin_weights)[:, i] > 0.5
        if ids.any():
            c = np.asarray(joints[i], dtype=np.float64)
            out.append((c, float(np.median(np.linalg.norm(vertices[ids] - c, axis=1)))))
    return out


# -- the transfer ---------------------------------------------------------------------------------


def transfer_expression_keys(
    target_vertices: np.ndarray,
    target_faces: np.ndarray,
    target_landmarks: np.ndarray,
    *,
    target_landmark_faces: np.ndarray | None = None,
    target_landmark_bary: np.ndarray | None = None,
    target_mask: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    jaw: JawRig | None = None,
    eyeballs: Sequence[tuple[np.ndarray, float]] = (),
    source: IctSource | None = None,
    options: TransferOptions | None = None,
) -> KeyTransferResult:
    """The ICT model's ARKit-named blendshapes on a target's rest mesh.

    target_vertices (V,3) the rest mesh (metres, y up, face toward +z, like every mfnet
    head); target_faces (F,3); target_landmarks (68,3) its iBUG points (frontal).
    target_landmark_faces (68,) / target_landmark_bary (68,3): the same landmarks as
    (face, barycentric) pairs (a head model's `landmark_embedding.full_faces/full_bary`);
    they tell the upper lip from the lower where both lie on one slit (without them, the
    triangles closest to points a millimetre above the upper and below the lower lip and
    lid landmarks do).
    target_mask (V,) bool: vertices that may move (default all; `vertex_mask_without_eyes`
    keeps eyeballs still). names: the keys (default all 53). jaw: the target's jaw joint and
    skin weights, to fit each jaw key's rotation (`result.jaw`). eyeballs: [(centre,
    radius)] to keep the lids outside (`eyeballs_from_rig`). source: `ict_source()` by
    default. The call takes about a second or two on 2 CPU cores for the test head.
    """
    t_start = time.perf_counter()
    opt = options or TransferOptions()
    if opt.method not in METHODS:
        raise MfnetError(f"unknown key transfer method {opt.method!r}; use one of {METHODS}")
    src = source or ict_source()
    tv = np.asarray(target_vertices, dtype=np.float64)
    tf = np.asarray(target_faces, dtype=np.int64)
    tl = np.asarray(target_landmarks, dtype=np.float64)
    if tv.ndim != 2 or tv.shape[1] != 3 or tf.ndim != 2 or tf.shape[1] != 3:
        raise MfnetError("key transfer: target vertices must be (V,3) and faces (F,3)")
    if tl.shape != (68, 3) or not np.isfinite(tl).all():
        raise MfnetError(f"key transfer: target landmarks must be finite (68,3), got {tl.shape}")
    n_t = len(tv)
    mask = np.ones(n_t, dtype=bool) if target_mask is None else np.asarray(target_mask, bool)
    if mask.shape != (n_t,):
        raise MfnetError("key transfer: target_mask must be (V,) bool")
    keys = list(src.names) if names is None else list(names)
    missing = [k for k in keys if k not in src.names]
    if missing:
        raise MfnetError(f"key transfer: no source key named {missing}")
    key_idx = [src.names.index(k) for k in keys]
    tfm = tf[mask[tf].all(1)]  # the target's movable surface
    if len(tfm) == 0:
        raise MfnetError("key transfer: target_mask leaves no triangle")

    # 1-2. similarity
    inner = INNER_LANDMARKS
    scale, rot, trans = similarity_transform(src.vertices[src.landmarks[inner]], tl[inner])
    x0 = scale * src.vertices @ rot.T + trans
    sdeltas = scale * src.deltas[key_idx] @ rot.T  # (K,Vs,3)

    # sides of the lips and lids on both meshes
    radius, margin = opt.side_radius_mm * MM, opt.side_margin_mm * MM
    src_pins = {lm: src.landmarks[lm : lm + 1] for lm in UPPER_LANDMARKS + LOWER_LANDMARKS}
    src_side = _sides(x0, src.faces, src_pins, radius, margin)
    if target_landmark_faces is None or target_landmark_bary is None:
        # each upper (lower) lip/lid landmark's triangle is sought a millimetre above (below)
        # it, so the two sides of a slit get their own triangles
        lift = np.zeros((68, 3))
        lift[list(UPPER_LANDMARKS), 1] = MM
        lift[list(LOWER_LANDMARKS), 1] = -MM
        near, near_bary, _, _ = _MeshQuery(tv, tfm).closest(tl + lift)
        t_pins = _landmark_pins(tfm, near, near_bary)
    else:
        t_pins = _landmark_pins(
            tf, np.asarray(target_landmark_faces, dtype=np.int64), np.asarray(target_landmark_bary)
        )
    t_vside, t_fside = _sides(tv, tfm, t_pins, radius, margin)

    # 3. ICT's identity, then the non-rigid ICP onto the target's movable surface
    tquery = _SidedQuery(tv, tfm, t_fside)
    t_used = np.unique(tfm)
    t_normals = _vertex_normals(tv, tfm)
    basis = scale * src.identity[: opt.identity_components] @ rot.T
    beta, x0 = _fit_identity(
        x0, basis, src.faces, src_side[0], src.landmarks[inner], tl[inner], tquery, opt
    )
    x = _nonrigid_icp(
        x0,
        src.faces,
        src_side,
        src.landmarks[inner],
        tl[inner],
        tquery,
        tv[t_used],
        t_normals[t_used],
        t_vside[t_used],
        opt,
    )
    lm_rms = float(np.sqrt(np.mean(np.sum((x[src.landmarks[inner]] - tl[inner]) ** 2, 1)))) / MM
    _, _, _, sdist = tquery.closest(x, src_side[0])
    surface = (float(np.median(sdist)) / MM, float(np.percentile(sdist, 95)) / MM)

    # 4. the keys on the registered source
    if opt.method == "deformation_transfer":
        reg_deltas = _deformation_transfer(x0, sdeltas, x, src.faces, opt.anchor)
    else:
        reg_deltas = sdeltas

    # 5. sampling onto the target
    ids = np.flatnonzero(mask)
    squery = _SidedQuery(x, src.faces, src_side[1])
    ctri = np.zeros(n_t, dtype=np.int64)
    cbary = np.zeros((n_t, 3))
    cdist = np.full(n_t, np.inf)
    ctri[ids], cbary[ids], _, cdist[ids] = squery.closest(
        tv[ids], t_vside[ids], t_normals[ids], opt.sample_dot_min
    )
    cover = np.where(mask, 1.0 - _smoothstep(cdist, opt.full_mm * MM, opt.zero_mm * MM), 0.0)
    # held at zero: outside the mask, and far from any of ICT's skin (not merely from skin
    # that faces the same way: that is filled)
    zero = (~mask) | (np.isfinite(cdist) & (cdist > opt.pin_mm * MM))
    fill = _fill_solver(tf, n_t, cover, zero)
    corners = src.faces[ctri]
    deltas = np.zeros((len(keys), n_t, 3), dtype=np.float32)
    diags = []
    filled = cover < 0.5
    for k, name in enumerate(keys):
        sampled = (reg_deltas[k][corners] * cbary[..., None]).sum(1)
        d = fill.solve(np.where(zero[:, None], 0.0, cover[:, None] * sampled))
        d[zero] = 0.0
        if len(eyeballs):
            d = _keep_outside(tv, d, eyeballs, opt.eyeball_band_mm * MM)
        deltas[k] = d
        mag = np.linalg.norm(d, axis=1)
        diags.append(
            KeyDiagnostics(
                name=name,
                source_max_mm=float(np.linalg.norm(sdeltas[k], axis=1).max()) / MM,
                target_max_mm=float(mag.max()) / MM,
                filled_max_mm=float(mag[filled].max() if filled.any() else 0.0) / MM,
            )
        )
    jaw_fits: dict[str, JawFit] = {}
    if jaw is not None:
        for name in keys:
            if name in JAW_KEYS:
                jaw_fits[name] = fit_jaw_rotation(
                    deltas[keys.index(name)], tv, jaw.joint, jaw.weights, mask=mask
                )
    return KeyTransferResult(
        names=tuple(keys),
        deltas=deltas,
        diagnostics=tuple(diags),
        scale=float(scale),
        rotation=rot,
        translation=trans,
        registered=x,
        landmark_rms_mm=lm_rms,
        surface_mm=surface,
        corr_faces=ctri,
        corr_bary=cbary,
        corr_distance_mm=cdist / MM,
        coverage=cover,
        jaw=jaw_fits,
        seconds=time.perf_counter() - t_start,
    )


# -- the jaw --------------------------------------------------------------------------------------


def fit_jaw_rotation(
    delta: np.ndarray,
    rest_vertices: np.ndarray,
    joint: np.ndarray,
    weights: np.ndarray,
    mask: np.ndarray | None = None,
) -> JawFit:
    """The jaw rotation that best explains a key, and what is left of the key.

    delta (V,3) the key's displacements; rest_vertices (V,3); joint (3,) the jaw joint's
    rest position; weights (V,) the jaw's skin weights; mask (V,) the vertices to fit on
    (default all). Finds the axis-angle r minimising
    ``sum_i |w_i (R(r) - I)(v_i - joint) - delta_i|^2`` (linear blend skinning about the
    joint with the other joints at rest) and returns r with the residual
    ``delta - w (R(r) - I)(v - joint)`` on every vertex. Posing the jaw by r and adding the
    residual gives the key back exactly. A key the jaw cannot explain keeps r near zero and
    its residual near the key (`explained` near 0).
    """
    d = np.asarray(delta, dtype=np.float64)
    v = np.asarray(rest_vertices, dtype=np.float64) - np.asarray(joint, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if d.shape != v.shape or w.shape != (len(v),):
        raise MfnetError("fit_jaw_rotation: delta, rest_vertices (V,3) and weights (V,) differ")
    sel = np.ones(len(v), dtype=bool) if mask is None else np.asarray(mask, bool).copy()
    sel &= w > 0
    if not sel.any():
        return JawFit(np.zeros(3), d.astype(np.float32), 0.0)
    vs, ws, ds = v[sel], w[sel], d[sel]

    def resid(r):
        rm = Rotation.from_rotvec(r).as_matrix()
        return (ws[:, None] * (vs @ (rm - np.eye(3)).T) - ds).ravel()

    r = least_squares(resid, np.zeros(3), method="lm", xtol=1e-12, ftol=1e-12).x
    rm = Rotation.from_rotvec(r).as_matrix()
    residual = d - w[:, None] * (v @ (rm - np.eye(3)).T)
    total = float((d[sel] ** 2).sum())
    explained = 1.0 - float((residual[sel] ** 2).sum()) / total if total > 0 else 0.0
    return JawFit(axis_angle=r, residual=residual.astype(np.float32), explained=explained)
