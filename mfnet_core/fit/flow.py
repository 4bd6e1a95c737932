"""Multi-view optical flow through the fitted mesh (MFNet section 3.5.1, eq. 5-6).

For an ordered pair of views (a, b):

1. `I_{a->b}`: view a's photo carried through the fitted mesh into view b's camera. Every
   pixel p of view b that the mesh covers has a surface point S(p) (face + perspective-correct
   barycentrics); S(p) is posed into view a, projected, and photo a is sampled there. Pixels
   whose S(p) is hidden in view a (z-buffer test) or falls outside photo a are invalid.
2. The covisible mask (eq. 5) `MC_{a,b} = MB_{a,b} ⊙ MF_b`: MF_b is the rendered face
   region of the fitted mesh in view b (skin only: no eyeballs, hair, neck or back of the
   head); MB_{a,b} is the paper's landmark box, drawn in view b from the fitted model's
   eyebrow, nose, cheek (contour) and chin landmarks: the face between the jaw line and the
   eyebrows (raised by one brow-to-eye distance, so the lower forehead counts), cut along
   the far side of the nose on the half of the face that view a (or view b) sees turned
   away (|yaw| > 12 degrees), with the mouth excluded. We also multiply by the valid part of
   `I_{a->b}` (S(p) visible in view a, a few pixels in from its border), which eq. 5 leaves
   implicit. Pairs turned to opposite sides (left-right) are skipped: their MB is a thin
   strip along the nose seen at grazing angles, and their flow was measured to be biased
   by 1-2 px at the true geometry.
3. Flow `F(I_b, I_{a->b})` (OpenCV DIS by default, offline; RAFT from torchvision only when
   the user gives a weights file, never downloaded): for each pixel p of `I_{a->b}`, the
   displacement d(p) with `I_{a->b}(p) ≈ I_b(p + d(p))`. Both images are converted to a
   lighting-invariant form first (log luminance, high-pass, local contrast normalisation),
   so per-view exposure, white balance and smooth shading differences do not read as motion.
   A forward-backward check rejects occlusions and flow failures.
4. The loss (eq. 6). Eq. 6 is |F| inside MC: zero exactly when view a's photo, carried
   through the mesh, lands on the same skin in view b. We do not differentiate through the
   flow estimator. The flow is turned into fixed photo-to-photo correspondences instead: the
   skin at q_a = π_a(S(p)) in photo a appears at t_b = p + d(p) in photo b. This pairing is
   a fact about the two photos (the mesh only pre-warped them so that the flow is small);
   what depends on the mesh is the transfer: the surface point under q_a in view a (ray-
   triangle intersection, differentiable through the vertex positions), projected into view
   b (`transfer_points`). The residual is transfer(q_a) - t_b; at the mesh the
   correspondences came from it is -d(p), so its robust mean is the paper's |F|, and
   it vanishes when the surface and the relative pose explain the flow. Only the surface is
   constrained, not which mesh vertex lies where: the first version of this code pinned each
   barycentric surface point to both q_a and t_b, which also dictates the sliding of the
   mesh along its own surface, fights the landmarks, and did not lower the error even with
   exact (oracle) flow. Re-rendering and re-estimating the flow a few times
   (`dense_fit.refine_dense`) reaches the fixed point F = 0 in MC. Why not differentiate
   through the flow network as the paper does: DIS is not differentiable, RAFT on a CPU is
   slow, and this form is a least-squares problem that Gauss-Newton solves in a few steps.

Units follow the landmark losses (mfnet_core.fit.losses): pixel residuals are divided by half the
face size of their view, and the term is the weighted mean over all correspondences times
FLOW_POINTS = 68, so with lambda_1 = 1 (the paper's) a mean flow error of 1 px costs as much
as a 1 px error on every landmark. `dense_fit.DenseOptions.flow_weight` (default 2) scales
it: see docs/BENCHMARKS.md, "Accuracy ablation", for why.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from mfnet_core.camera import to_screen
from mfnet_core.errors import MfnetError
from mfnet_core.fit.solver import charbonnier
from mfnet_core.render import Fragments, interpolate_corners, rasterize, working_resolution

__all__ = [
    "FlowOptions",
    "ViewRender",
    "PairFlow",
    "FLOW_POINTS",
    "render_views",
    "face_faces",
    "landmark_box_mask",
    "covisible_mask",
    "warp_to_view",
    "flow_input",
    "estimate_flow",
    "pair_flow",
    "all_pair_flows",
    "pair_plan",
    "transfer_points",
    "surface_bary",
    "project_depth",
    "FLOW_EPS",
    "flow_loss",
    "flow_to_rgb",
    "pair_panel",
]

# Charbonnier epsilon of the flow residuals in face-normalised units: about 1 px on a face
# 400 px tall. Below it the loss is quadratic, so sub-pixel flow noise is averaged rather
# than chased (an L1 would try to zero individual noisy residuals).
FLOW_EPS = 5e-3

# The flow term counts as this many landmark-equivalents: a mean flow residual of 1 px
# costs as much as a 1 px residual on each of the 68 landmarks (lambda_1 = 1, eq. 11).
FLOW_POINTS = 68.0

# iBUG-68 polygons (0-based). The subject's right half is the jaw 0..8, brow 17..21, eye
# 36..41 (the image's left in a frontal photo). A half-face polygon runs along the jaw to the
# chin, up the midline of the mouth, past the far side of the nose (the far nostril wing and
# the far eye's inner corner) and back along the near eyebrow.
_FULL = [*range(0, 17), *range(26, 16, -1)]
_KEEP_RIGHT = [*range(0, 9), 57, 51, 35, 42, 22, 21, 20, 19, 18, 17]
_KEEP_LEFT = [*range(16, 7, -1), 57, 51, 31, 39, 21, 22, 23, 24, 25, 26]
_BROWS = list(range(17, 27))
_MOUTH = list(range(48, 60))
MIN_PAIR_SAMPLES = 100  # a pair's floor under the samples_per_view budget


@dataclass
class FlowOptions:
    """Knobs of the flow stage (working resolution, masks, estimator)."""

    size: int = 512  # longer image side at which masks, renders and flow are computed
    method: str = "dis"  # "dis" (OpenCV, default) or "raft" (torchvision, needs raft_weights)
    raft_weights: str | None = None  # a local RAFT-large state dict; never downloaded
    dis_preset: str = "medium"  # "ultrafast", "fast" or "medium"
    side_threshold_deg: float = 12.0  # |yaw| beyond which a view's far half-face is cut
    brow_lift: float = 1.0  # raise the eyebrow boundary by this many brow-to-eye distances
    mouth_margin: float = 0.25  # grow the excluded mouth polygon by this fraction
    depth_tol: float = 0.008  # visibility test in view a, relative to depth (5 mm at 60 cm)
    erode_px: int = 2  # erode MC (working px)
    valid_erode_px: int = 5  # keep samples this far (working px) from where I_{a->b} is undefined
    max_pair_yaw_deg: float = 75.0  # skip pairs whose views differ more in yaw
    # each view is compared with at most this many others, the nearest in yaw (None: all):
    # pairs grow with the square of the photos. 9 photos over -40..40 (one synthetic ICT
    # person): all pairs 54 s, 1.75 mm; 4 partners 38 s, 1.91 mm; 2 partners 26 s, 2.06 mm.
    # Up to 5 photos nothing changes (no view has more than 4 partners to begin with).
    max_partners: int | None = 4
    skip_opposite: bool = True  # skip pairs turned to opposite sides (beyond side_threshold)
    fb_threshold: float = 0.75  # forward-backward consistency, working px
    stride: int = 4  # sample one covisible pixel in stride x stride (working px)
    max_samples: int = 500  # per ordered pair
    # all pairs together take at most this many samples per photo (None: no budget), so that
    # the dense stage grows with the photos, not with their pairs: 3 photos (4 pairs) keep
    # 500 per pair, 9 photos (36 pairs) get 250
    samples_per_view: int | None = 1000
    highpass_sigma: float = 0.012  # of the working size: the lighting-invariant transform


@dataclass
class ViewRender:
    """The fitted mesh rendered in one view at the working resolution."""

    photo: np.ndarray  # (H,W,3) float32 [0,1], the photo resized to the working resolution
    camera: Tensor  # (4,) fx, fy, cx, cy at the working resolution
    scale: tuple[float, float]  # working px per photo px (x, y)
    verts_cam: Tensor  # (V,3) camera space (metres)
    screen: Tensor  # (V,3) working-resolution screen vertices
    fragments: Fragments  # perspective-correct
    face_mask: np.ndarray  # (H,W) bool MF: pixels on the face region's skin
    landmarks: np.ndarray  # (68,2) fitted model landmarks, working px
    yaw_deg: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.face_mask.shape


@dataclass
class PairFlow:
    """One ordered pair (a -> b): images for the overlays and the flow targets.

    Correspondences (K of them) between the two photos, in the photos' own pixels: the
    point `anchor_a` (K,2) of photo a shows the same skin as `target_b` (K,2) of photo b
    (flow-corrected). `faces` (K,) is the mesh triangle under both at the current fit,
    `bary` (K,3) the perspective-correct barycentrics there; `weight` (K,) in [0,1].
    """

    a: int
    b: int
    warped: np.ndarray  # (H,W,3) float32 I_{a->b} at the working resolution (0 where invalid)
    valid: np.ndarray  # (H,W) bool: I_{a->b} defined (S(p) seen in view a)
    box: np.ndarray  # (H,W) bool MB_{a,b}
    mask: np.ndarray  # (H,W) bool MC_{a,b} (with valid and the erosion)
    flow: np.ndarray  # (H,W,2) working px: I_{a->b}(p) ~ I_b(p + flow(p))
    consistent: np.ndarray  # (H,W) bool: passes the forward-backward check
    faces: np.ndarray  # (K,) int64
    bary: np.ndarray  # (K,3) float32
    anchor_a: np.ndarray  # (K,2) photo-a px
    target_b: np.ndarray  # (K,2) photo-b px
    weight: np.ndarray  # (K,)
    stats: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Rendering the fitted mesh per view


def face_faces(faces: np.ndarray, face_region: np.ndarray) -> np.ndarray:
    """(F,) bool: triangles whose three vertices are in the face region (MF's support)."""
    return np.asarray(face_region, bool)[np.asarray(faces)].all(1)


def render_views(
    vertices_cam: Tensor,
    camera: Tensor,
    faces: Tensor,
    face_tri: np.ndarray,
    photos: list[np.ndarray],
    landmarks_px: Tensor | np.ndarray,
    yaw_deg: Tensor | np.ndarray,
    size: int = 512,
    workers: int = 1,
) -> list[ViewRender]:
    """Rasterises the fitted mesh in every view at a working resolution, the views on
    `workers` threads (the same renders on any number).

    vertices_cam: (N,V,3); camera: (N,4) at the photos' resolution; faces: (F,3);
    face_tri: (F,) bool face-region triangles; photos: N (H,W,3) uint8; landmarks_px:
    (N,68,2) the fitted model's landmarks in photo pixels; yaw_deg: (N,). Runs without
    gradients (the fragments only pick faces and barycentrics).
    """
    verts = vertices_cam.detach().to(torch.float64).cpu()
    cams = camera.detach().to(torch.float64).cpu()
    faces_c = faces.detach().cpu().long()
    lmk = np.asarray(torch.as_tensor(landmarks_px).detach().cpu(), dtype=np.float64)
    yaws = np.asarray(torch.as_tensor(yaw_deg).detach().cpu(), dtype=np.float64).reshape(-1)
    tri_ok = torch.as_tensor(np.asarray(face_tri, bool))

    def one(i: int) -> ViewRender:
        photo = photos[i]
        h0, w0 = photo.shape[:2]
        h, w, sx, sy = working_resolution(h0, w0, size)
        img = (
            photo if (w, h) == (w0, h0) else cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
        )
        cam = cams[i] * torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
        screen = to_screen(verts[i][None], cam[None])[0]
        frags = rasterize(screen, faces_c, h, w, perspective_correct=True)
        fi = frags.face_index
        mf = (fi >= 0) & tri_ok[fi.clamp_min(0)]
        return ViewRender(
            photo=img.astype(np.float32) / 255.0,
            camera=cam,
            scale=(sx, sy),
            verts_cam=verts[i],
            screen=screen,
            fragments=frags,
            face_mask=mf.numpy(),
            landmarks=lmk[i] * np.array([sx, sy]),
            yaw_deg=float(yaws[i]),
        )

    if workers < 2 or len(photos) < 2:
        return [one(i) for i in range(len(photos))]
    # the views on `workers` threads: torch's ops release the GIL (its intra-op thread count
    # is the process's: the dense stages run under `solver.one_thread`)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(photos))))


# --------------------------------------------------------------------------------------
# Masks (eq. 5)


def _fill(poly: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Polygon (M,2) in pixel-corner coordinates -> (H,W) bool (sub-pixel accurate)."""
    m = np.zeros(shape, np.uint8)
    pts = np.round((np.asarray(poly, np.float64) - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(m, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return m.astype(bool)


def _lifted(lmk: np.ndarray, brow_lift: float) -> np.ndarray:
    """Landmarks with the eyebrows moved up the face by brow_lift brow-to-eye distances."""
    out = lmk.copy()
    up = lmk[27] - lmk[33]
    n = np.linalg.norm(up)
    if n < 1e-9 or brow_lift == 0:
        return out
    up /= n
    eyes = 0.5 * (lmk[36:42].mean(0) + lmk[42:48].mean(0))
    brows = lmk[_BROWS].mean(0)
    d = float(np.dot(brows - eyes, up))
    out[_BROWS] += brow_lift * max(d, 0.0) * up
    return out


def _half_polygon(yaw_deg: float, threshold: float) -> list[int]:
    """Which part of the face a view sees well: positive yaw turns the subject's left cheek
    away (flame.yaw_bin), so the view keeps the subject's right half plus the nose."""
    if yaw_deg > threshold:
        return _KEEP_RIGHT
    if yaw_deg < -threshold:
        return _KEEP_LEFT
    return _FULL


def landmark_box_mask(
    landmarks_b: np.ndarray,
    yaw_a: float,
    yaw_b: float,
    shape: tuple[int, int],
    *,
    side_threshold_deg: float = 12.0,
    brow_lift: float = 1.0,
    mouth_margin: float = 0.25,
) -> np.ndarray:
    """MB_{a,b} (paper eq. 5): the region both views see, from landmarks, in view b.

    landmarks_b: (68,2) the fitted model's landmarks in view b (pixels); yaw_a, yaw_b: the
    views' head yaw in degrees (positive: the face turns to image right). The face between
    the jaw line and the (lifted) eyebrows, cut along the far side of the nose for each of
    the two views that is turned by more than the threshold, minus the mouth. (H,W) bool.
    """
    lmk = _lifted(np.asarray(landmarks_b, np.float64), brow_lift)
    box = _fill(lmk[_FULL], shape)
    for yaw in (yaw_a, yaw_b):
        keep = _half_polygon(yaw, side_threshold_deg)
        if keep is not _FULL:
            box &= _fill(lmk[keep], shape)
    mouth = lmk[_MOUTH]
    c = mouth.mean(0)
    box &= ~_fill(c + (1 + mouth_margin) * (mouth - c), shape)
    return box


def covisible_mask(
    box: np.ndarray, face_mask_b: np.ndarray, valid: np.ndarray, erode_px: int = 0
) -> np.ndarray:
    """MC_{a,b} = MB_{a,b} ⊙ MF_b (eq. 5), times the valid part of I_{a->b}, eroded."""
    m = box & face_mask_b & valid
    if erode_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode_px + 1, 2 * erode_px + 1))
        m = cv2.erode(m.astype(np.uint8), k).astype(bool)
    return m


# --------------------------------------------------------------------------------------
# I_{a->b}


def _surface_points(
    view_b: ViewRender, verts_other: Tensor, faces: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Covered pixels of view b: (P,) flat indices, (P,) faces, (P,3) positions of their
    surface points in another camera space (verts_other (V,3))."""
    pix, f = view_b.fragments.covered()
    bary = view_b.fragments.bary.reshape(-1, 3)[pix].to(verts_other.dtype)
    return pix, f, interpolate_corners(verts_other, faces[f], bary)


def warp_to_view(
    view_a: ViewRender, view_b: ViewRender, faces: Tensor, depth_tol: float = 0.008
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """I_{a->b}: photo a carried through the mesh into view b (working resolution).

    Returns warped (H,W,3) float32 (0 where invalid), valid (H,W) bool, and the photo-a
    working-resolution position (H,W,2) of each pixel's surface point (nan where uncovered).
    """
    h, w = view_b.shape
    faces = faces.cpu().long()
    pix, _f, pts_a = _surface_points(view_b, view_a.verts_cam, faces)
    scr = to_screen(pts_a[None], view_a.camera[None])[0]  # (P,3)
    ha, wa = view_a.shape
    u, v, z = scr[:, 0], scr[:, 1], scr[:, 2]
    inside = (u >= 0.5) & (u <= wa - 0.5) & (v >= 0.5) & (v <= ha - 0.5) & (z > 0)
    zbuf = view_a.fragments.depth.to(torch.float64)
    # Lenient at silhouettes: compare with the farthest depth in the 3x3 neighbourhood.
    zmax = torch.nn.functional.max_pool2d(zbuf[None, None], 3, stride=1, padding=1)[0, 0]
    xi = u.floor().long().clamp(0, wa - 1)
    yi = v.floor().long().clamp(0, ha - 1)
    seen = inside & (z <= zmax[yi, xi] * (1 + depth_tol))
    pos = np.full((h * w, 2), np.nan, np.float32)
    pos[pix.numpy()] = scr[:, :2].numpy()
    pos = pos.reshape(h, w, 2)
    valid = np.zeros(h * w, bool)
    valid[pix[seen].numpy()] = True
    valid = valid.reshape(h, w)
    mx = np.where(valid, pos[..., 0] - 0.5, -1).astype(np.float32)
    my = np.where(valid, pos[..., 1] - 0.5, -1).astype(np.float32)
    warped = cv2.remap(
        view_a.photo, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    warped[~valid] = 0
    return warped, valid, pos


# --------------------------------------------------------------------------------------
# Flow


def flow_input(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """(H,W,3) float [0,1] -> (H,W) uint8 for the flow estimator, invariant to exposure,
    white balance and smooth shading: log luminance, minus its Gaussian blur (sigma px),
    divided by the local contrast."""
    grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    lg = np.log(grey + 1e-2)
    hp = lg - cv2.GaussianBlur(lg, (0, 0), sigma)
    contrast = np.sqrt(cv2.GaussianBlur(hp * hp, (0, 0), 2 * sigma)) + 0.02
    z = hp / contrast
    return np.clip(128 + 42 * z, 0, 255).astype(np.uint8)


_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def estimate_flow(
    source: np.ndarray,
    target: np.ndarray,
    method: str = "dis",
    dis_preset: str = "medium",
    raft_weights: str | None = None,
) -> np.ndarray:
    """Dense flow d with source(p) ~ target(p + d(p)).

    source, target: (H,W) uint8 (`flow_input`) for DIS; RAFT takes the same single-channel
    images, repeated to three channels. Returns (H,W,2) float32 pixels (x, y).
    """
    if method == "dis":
        if dis_preset not in _DIS_PRESETS:
            raise MfnetError(f"unknown DIS preset {dis_preset!r}; use {sorted(_DIS_PRESETS)}")
        dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[dis_preset])
        return dis.calc(source, target, None)
    if method == "raft":
        return _raft_flow(source, target, raft_weights)
    raise MfnetError(f"unknown flow method {method!r}; use 'dis' or 'raft'")


_RAFT_CACHE: dict[str, torch.nn.Module] = {}


def _raft_flow(source: np.ndarray, target: np.ndarray, weights: str | None) -> np.ndarray:
    """RAFT-large from torchvision with a user-supplied state dict (never downloaded)."""
    if not weights:
        raise MfnetError(
            "flow method 'raft' needs a RAFT weights file (--raft-weights); none is downloaded"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MfnetError(f"RAFT weights file not found: {path}")
    try:
        from torchvision.models.optical_flow import raft_large
    except Exception as exc:  # pragma: no cover - depends on the environment
        raise MfnetError(
            f"flow method 'raft' needs torchvision ({exc}); use the default 'dis'"
        ) from exc
    key = str(path.resolve())
    if key not in _RAFT_CACHE:
        model = raft_large(weights=None, progress=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        _RAFT_CACHE[key] = model.eval()
    model = _RAFT_CACHE[key]
    h, w = source.shape[:2]
    ph, pw = (8 - h % 8) % 8, (8 - w % 8) % 8

    def prep(img: np.ndarray) -> Tensor:
        t = torch.as_tensor(img, dtype=torch.float32)[None, None].repeat(1, 3, 1, 1) / 127.5 - 1
        return torch.nn.functional.pad(t, (0, pw, 0, ph), mode="replicate")

    with torch.no_grad():
        flows = model(prep(source), prep(target))
    return flows[-1][0, :, :h, :w].permute(1, 2, 0).numpy().astype(np.float32)


def _fb_consistent(fwd: np.ndarray, bwd: np.ndarray, threshold: float) -> np.ndarray:
    """(H,W) bool: fwd(p) + bwd(p + fwd(p)) is short."""
    h, w = fwd.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    back = cv2.remap(
        bwd, gx + fwd[..., 0], gy + fwd[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return np.linalg.norm(fwd + back, axis=-1) < threshold


def pair_flow(
    view_a: ViewRender,
    view_b: ViewRender,
    faces: Tensor,
    a: int,
    b: int,
    options: FlowOptions | None = None,
    rng: np.random.Generator | None = None,
) -> PairFlow:
    """I_{a->b}, MC_{a,b}, the flow and the flow targets for one ordered pair."""
    o = options or FlowOptions()
    faces = faces.cpu().long()
    warped, valid, pos_a = warp_to_view(view_a, view_b, faces, o.depth_tol)
    box = landmark_box_mask(
        view_b.landmarks,
        view_a.yaw_deg,
        view_b.yaw_deg,
        view_b.shape,
        side_threshold_deg=o.side_threshold_deg,
        brow_lift=o.brow_lift,
        mouth_margin=o.mouth_margin,
    )
    valid_core = valid
    if o.valid_erode_px > 0:
        k = cv2.getStructuringElement(
            cv2.MORPH_ELLIPSE, (2 * o.valid_erode_px + 1, 2 * o.valid_erode_px + 1)
        )
        valid_core = cv2.erode(valid.astype(np.uint8), k).astype(bool)
    mask = covisible_mask(box, view_b.face_mask, valid_core, o.erode_px)
    sigma = o.highpass_sigma * max(view_b.shape)
    # Outside the valid region I_{a->b} shows I_b itself (zero motion), so that the
    # estimator sees no artificial edge there; only masked pixels are used.
    filled = np.where(valid[..., None], warped, view_b.photo)
    src, dst = flow_input(filled, sigma), flow_input(view_b.photo, sigma)
    fwd = estimate_flow(src, dst, o.method, o.dis_preset, o.raft_weights)
    bwd = estimate_flow(dst, src, o.method, o.dis_preset, o.raft_weights)
    ok = _fb_consistent(fwd, bwd, o.fb_threshold)

    ys, xs = np.nonzero(mask)
    keep = ((ys % o.stride) == (o.stride // 2)) & ((xs % o.stride) == (o.stride // 2))
    ys, xs = ys[keep], xs[keep]
    if len(ys) > o.max_samples:
        rng = rng or np.random.default_rng(a * 31 + b)
        sel = np.sort(rng.choice(len(ys), o.max_samples, replace=False))
        ys, xs = ys[sel], xs[sel]
    h, w = view_b.shape
    flat = ys * w + xs
    fi = view_b.fragments.face_index.reshape(-1)[torch.as_tensor(flat)].numpy()
    bary = view_b.fragments.bary.reshape(-1, 3)[torch.as_tensor(flat)].numpy().astype(np.float32)
    d = fwd[ys, xs]
    sxa, sya = view_a.scale
    sxb, syb = view_b.scale
    anchor = pos_a[ys, xs] / np.array([sxa, sya], np.float32)
    target = (np.stack([xs, ys], -1) + 0.5 + d) / np.array([sxb, syb], np.float32)
    weight = ok[ys, xs].astype(np.float32)
    mag = np.linalg.norm(fwd[mask], axis=-1) if mask.any() else np.zeros(1)
    stats = {
        "covisible_px": int(mask.sum()),
        "samples": len(ys),
        "consistent_frac": float(ok[mask].mean()) if mask.any() else 0.0,
        # eq. 6 at the current mesh, in photo-b pixels: the mean |F| inside MC
        "mean_flow_px": float(mag.mean() / sxb),
        "median_flow_px": float(np.median(mag) / sxb),
    }
    return PairFlow(
        a=a,
        b=b,
        warped=warped,
        valid=valid,
        box=box,
        mask=mask,
        flow=fwd,
        consistent=ok,
        faces=fi.astype(np.int64),
        bary=bary,
        anchor_a=anchor.astype(np.float32),
        target_b=target.astype(np.float32),
        weight=weight,
        stats=stats,
    )


def pair_plan(
    yaws_deg: list[float], options: FlowOptions | None = None
) -> tuple[list[tuple[int, int]], list[tuple[int, int, str]]]:
    """Which ordered pairs (a, b), a != b, the flow term compares, and every pair it leaves
    out with the reason: views turned to opposite sides (each beyond `side_threshold_deg`:
    their MB is the strip along the nose, seen at grazing angles by both; measured biased by
    1-2 px at the true geometry), views more than `max_pair_yaw_deg` apart, and for each
    view b all but its `max_partners` nearest views in yaw."""
    o = options or FlowOptions()
    thr = o.side_threshold_deg
    pairs, skipped = [], []
    for b, yb in enumerate(yaws_deg):
        by_distance = sorted((abs(ya - yb), a) for a, ya in enumerate(yaws_deg) if a != b)
        taken = 0
        for _, a in by_distance:
            ya = yaws_deg[a]
            if abs(ya - yb) > o.max_pair_yaw_deg:
                why = f"the views are {abs(ya - yb):.0f} degrees apart (> {o.max_pair_yaw_deg:g})"
            elif o.skip_opposite and ((ya > thr and yb < -thr) or (ya < -thr and yb > thr)):
                why = (
                    f"turned to opposite sides ({ya:.0f} and {yb:.0f} degrees): they share "
                    "only a grazing strip"
                )
            elif o.max_partners is not None and taken >= o.max_partners:
                why = f"only the {o.max_partners} views nearest in yaw are compared with each"
            else:
                taken += 1
                pairs.append((a, b))
                continue
            skipped.append((a, b, why))
    return pairs, skipped


def pair_sample_cap(options: FlowOptions, n_views: int, n_pairs: int) -> int:
    """Samples one pair may take: `max_samples`, lowered so that all pairs together stay
    within `samples_per_view` per photo (never below MIN_PAIR_SAMPLES)."""
    if options.samples_per_view is None or n_pairs == 0:
        return options.max_samples
    budget = options.samples_per_view * n_views // n_pairs
    return max(MIN_PAIR_SAMPLES, min(options.max_samples, budget))


def all_pair_flows(
    views: list[ViewRender],
    faces: Tensor,
    options: FlowOptions | None = None,
    seed: int = 0,
    skipped: list[tuple[int, int, str]] | None = None,
    workers: int = 1,
) -> list[PairFlow]:
    """The flow of every pair `pair_plan` keeps that has covisible face pixels, on up to
    `workers` threads (the same result on any number). Pairs left out are appended to
    `skipped` as (a, b, reason), for the report."""
    pairs, left_out = pair_plan([v.yaw_deg for v in views], options)
    skip = skipped if skipped is not None else []
    skip.extend(left_out)
    o = options or FlowOptions()
    o = replace(o, max_samples=pair_sample_cap(o, len(views), len(pairs)))

    def one(pair: tuple[int, int]) -> PairFlow:
        a, b = pair
        return pair_flow(views[a], views[b], faces, a, b, o, np.random.default_rng([seed, a, b]))

    # the pairs are independent (own seeds, own DIS objects), and DIS, the warps and torch's
    # ops release the GIL: a second thread keeps the second core busy (RAFT, itself
    # multi-threaded, runs the pairs one by one)
    if workers > 1 and len(pairs) > 1 and o.method == "dis":
        with ThreadPoolExecutor(max_workers=workers) as pool:
            flows = list(pool.map(one, pairs))
    else:
        flows = [one(pair) for pair in pairs]
    out = []
    for (a, b), pf in zip(pairs, flows, strict=True):
        if pf.stats["samples"] > 0:
            out.append(pf)
        else:
            skip.append((a, b, "no covisible face pixels"))
    return out


# --------------------------------------------------------------------------------------
# The loss (eq. 6 as target points)


def transfer_points(
    corners_a: Tensor, corners_b: Tensor, camera_a: Tensor, camera_b: Tensor, q_a: Tensor
) -> Tensor:
    """Carries photo-a points through the mesh into view b.

    corners_a, corners_b: (B,K,3,3) camera-space corners of each correspondence's triangle
    in views a and b (the same triangle, two poses); camera_a, camera_b: (K,4) or (4,);
    q_a: (K,2) points in photo a. The surface point under q_a (`surface_bary`) is projected
    into view b. Returns (B,K,2) pixels, differentiable w.r.t. the corners.
    """
    bary = surface_bary(corners_a, camera_a, q_a)
    x_b = (corners_b * bary[..., None].to(corners_b.dtype)).sum(-2)  # (B,K,3)
    return project_depth(x_b, camera_b.to(corners_b.dtype))[..., :2]


def surface_bary(corners: Tensor, camera: Tensor, q: Tensor) -> Tensor:
    """Perspective-correct barycentrics of the surface point under pixel q: the exact
    ray-plane intersection, extrapolated when q lies outside the triangle.

    corners: (...,K,3,3) camera space; camera: (K,4) or (4,); q: (K,2) px. Returns
    (...,K,3), differentiable w.r.t. the corners.
    """
    dt = corners.dtype
    cam = camera.to(dt)
    scr = project_depth(corners, cam[..., None, :] if cam.dim() == 2 else cam)  # (...,K,3,3)
    u, v, z = scr.unbind(-1)
    u0, u1, u2 = u.unbind(-1)
    v0, v1, v2 = v.unbind(-1)
    area = (u1 - u0) * (v2 - v0) - (v1 - v0) * (u2 - u0)
    area = torch.where(area.abs() < 1e-12, torch.full_like(area, 1e-12), area)
    px, py = q[..., 0].to(dt), q[..., 1].to(dt)
    w1 = ((px - u0) * (v2 - v0) - (py - v0) * (u2 - u0)) / area
    w2 = ((u1 - u0) * (py - v0) - (v1 - v0) * (px - u0)) / area
    w = torch.stack([1 - w1 - w2, w1, w2], -1) / z
    return w / w.sum(-1, keepdim=True)


def project_depth(points: Tensor, camera: Tensor) -> Tensor:
    """(...,3) camera-space points, camera (...,4) broadcastable with them -> (...,3)
    u, v, depth."""
    depth = (-points[..., 2]).clamp_min(1e-6)
    u = camera[..., 2] + camera[..., 0] * points[..., 0] / depth
    v = camera[..., 3] - camera[..., 1] * points[..., 1] / depth
    return torch.stack([u, v, depth], -1)


def flow_loss(
    vertices_cam: Tensor,
    camera: Tensor,
    faces: Tensor,
    pair_flows: list[PairFlow],
    scale: Tensor,
    weight: float = 1.0,
    eps: float = FLOW_EPS,
) -> Tensor:
    """L_multiop (eq. 6) as a differentiable function of the posed vertices.

    vertices_cam: (N,V,3) camera space per view (e.g. `MultiViewFitter.evaluate(True)`);
    camera: (N,4); faces (F,3); scale: (N,) half face size in px (landmark units).
    Each correspondence's photo-a point is carried through the mesh into view b
    (`transfer_points`) and compared with its flow target; the Charbonnier of the
    face-normalised error, weighted mean over all correspondences, times FLOW_POINTS and
    `weight` (lambda_1). At the mesh the correspondences were made from, the error of a
    sample is minus its flow vector: the value is eq. 6's mean |F| over MC.
    """
    if not pair_flows:
        return vertices_cam.new_zeros(())
    dev, dt = vertices_cam.device, vertices_cam.dtype
    faces = faces.to(dev).long()
    total, wsum = vertices_cam.new_zeros(()), 0.0
    for pf in pair_flows:
        tri = faces[torch.as_tensor(pf.faces, device=dev)]  # (K,3)
        w = torch.as_tensor(pf.weight, device=dev, dtype=dt)
        qb = transfer_points(
            vertices_cam[pf.a][tri][None],
            vertices_cam[pf.b][tri][None],
            camera[pf.a],
            camera[pf.b],
            torch.as_tensor(pf.anchor_a, device=dev, dtype=dt),
        )[0]
        e = (qb - torch.as_tensor(pf.target_b, device=dev, dtype=dt)) / scale[pf.b]
        total = total + (w * charbonnier(e, eps)).sum()
        wsum += float(w.sum())
    return weight * FLOW_POINTS * total / max(wsum, 1e-9)


def flow_to_rgb(
    flow: np.ndarray, mask: np.ndarray | None = None, max_px: float | None = None
) -> np.ndarray:
    """(H,W,2) flow -> (H,W,3) uint8: hue = direction, brightness = magnitude (saturating
    at max_px, default the 99th percentile inside the mask); black outside the mask."""
    mag = np.linalg.norm(flow, axis=-1)
    sel = mask if mask is not None and mask.any() else np.ones(mag.shape, bool)
    top = max_px or max(float(np.percentile(mag[sel], 99)), 1e-3)
    ang = (np.degrees(np.arctan2(flow[..., 1], flow[..., 0])) % 360) / 2
    hsv = np.stack([ang, np.full_like(ang, 255), np.clip(mag / top, 0, 1) * 255], -1).astype(
        np.uint8
    )
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if mask is not None:
        rgb[~mask] = 0
    return rgb


def pair_panel(
    view_b: ViewRender, pf: PairFlow, names: tuple[str, str] | None = None
) -> np.ndarray:
    """Overlay picture for one pair, (H, 3W, 3) uint8: photo b with the landmark box MB
    (yellow outline), the covisible mask MC (green tint) and the correspondences; I_{a->b}
    (photo a through the mesh); the flow inside MC (colour wheel, with its scale)."""
    b_img = (view_b.photo * 255).astype(np.uint8)
    left = b_img.copy()
    tint = np.array([60, 255, 60], np.float32)
    left[pf.mask] = (0.6 * left[pf.mask] + 0.4 * tint).astype(np.uint8)
    cnts, _ = cv2.findContours(pf.box.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(left, cnts, -1, (255, 220, 0), 1)
    mid = (np.where(pf.valid[..., None], pf.warped, 0.35 * view_b.photo) * 255).astype(np.uint8)
    mag = np.linalg.norm(pf.flow[pf.mask], axis=-1) if pf.mask.any() else np.zeros(1)
    top = max(float(np.percentile(mag, 99)), 0.5)
    right = flow_to_rgb(pf.flow, pf.mask, top)
    panel = np.concatenate([left, mid, right], 1)
    na, nb = names or (f"view{pf.a}", f"view{pf.b}")
    s = max(0.35, panel.shape[0] / 900)
    w = b_img.shape[1]
    for x, text in (
        (0, f"{nb}: MB (yellow), MC (green)"),
        (w, f"I_{na}->{nb}"),
        (
            2 * w,
            f"flow, full scale {top / view_b.scale[0]:.1f} px, mean {pf.stats['mean_flow_px']:.2f}",
        ),
    ):
        cv2.putText(
            panel,
            text,
            (x + 6, int(22 * s / 0.5)),
            cv2.FONT_HERSHEY_SIMPLEX,
            s,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return panel
