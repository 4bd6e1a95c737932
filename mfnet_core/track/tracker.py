"""Per-frame fit of a video with the person's identity fixed: head pose, expression (and
jaw, for models that pose one) from the frame's 68 landmarks.

Why not `MultiViewFitter` frame by frame: it re-evaluates the head model (LBS on the
landmark subset) for every column of every Jacobian, ~55 ms for three iterations on one
view; a video needs the whole frame in ~60 ms. With the identity fixed, a landmark in
model space is an affine function of the expression weights (LBS is linear in the shaped
vertices when the pose is fixed, and the expression blend shapes are linear), so the model's
landmarks and its root joint (the head pose's pivot) are evaluated once per contour bin on
the landmark subset (`mfnet_core.head.subset.LandmarkSubset`), exactly, as a basis
(`IdentityLandmarks`). A frame's residuals are then a few small matrix products, and the
frame is solved by the project's one solver (`fit.solver.levenberg_marquardt`, projected to
the expression's bounds: ARKit weights stay in [0, 1]) with the same terms as the photo fit:
the landmarks (eq. 7), the eyelid and lip offsets (eq. 8-9), IRLS-weighted to their L1, and
the expression prior (eq. 10, the fit's weight). A model whose jaw is a joint (FLAME, the
test head) gets the jaw's rotation linearised about the previous frame's jaw, re-evaluated
every frame.

Warm start: each frame starts from the previous one and takes a few iterations; the first
frame, and the first after the face was lost, start from a PnP pose and take more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mfnet_core.camera import (
    Intrinsics,
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    project,
    solve_head_pose_pnp,
    yaw_pitch_roll_deg,
)
from mfnet_core.fit.losses import EPS
from mfnet_core.fit.plan import LossWeights
from mfnet_core.fit.solver import Free, ResidualTerm, charbonnier_irls, levenberg_marquardt
from mfnet_core.head.interface import MAX_YAW_DEG, HeadModel
from mfnet_core.head.subset import LandmarkSubset
from mfnet_core.inputs.landmarks import EYELID_PAIRS, LIP_PAIRS

__all__ = ["FrameFit", "FrameFitter", "IdentityLandmarks", "TrackOptions"]

DT = torch.float64
# The expression prior's weight for one frame: 10x the photo fit's. Measured: on a
# synthetic clip with 1 px landmark noise the visible keys' error falls from 0.031 to 0.023
# and all keys' from 0.055 to 0.035 (a blink still peaks at 0.95); on a real neutral face
# (tests/data/james) the largest spurious weight falls from 1.0 to ~0.7.
TRACK_REG = 0.1
# Landmarks that stay put under expression changes: the PnP start's points.
PNP_LANDMARKS = list(range(17, 48)) + list(range(48, 68)) + list(range(0, 17))


@dataclass
class TrackOptions:
    """Knobs of the per-frame fit.

    iterations: LM iterations of a warm-started frame (on a synthetic 640 px clip with 1 px
    landmark noise, 4 reach a median landmark residual of 0.99 px against 0.97 px for 20, at
    the same error of the visible weights); cold_iterations: (rigid, full) for a frame
    without a previous one; weights: the photo fit's loss weights (eq. 7-10) with a 10x
    stronger expression prior (`TRACK_REG`: one view, the identity held, 53 weights from 68
    points); temporal: weight pulling a frame's expression toward the previous frame's (0:
    off; the smoothing after the fit handles jitter without lag).
    """

    iterations: int = 4
    cold_iterations: tuple[int, int] = (6, 15)
    weights: LossWeights = field(default_factory=lambda: LossWeights(reg=TRACK_REG))
    jaw_prior: float = 1e-3
    temporal: float = 0.0
    landmarks: str = "auto"  # the frames' detector: auto (MediaPipe if installed), mediapipe, dlib


class IdentityLandmarks:
    """The model's 68 landmarks and joints for one fixed identity as affine functions of the
    per-frame coefficients c = (expression, jaw rotation when the model poses its jaw), per
    contour bin: L(c) = L0 + (c - c0) D, joints(c) = J0 + (c - c0) DJ. Exact for the
    expression; the jaw's rotation is linearised at c0 (`basis(yaw, c0)`).

    The landmark subset's vertices are evaluated once (per frame with a posed jaw) as such a
    basis; a contour bin's landmarks are fixed barycentric combinations of them, so a new bin
    costs one small matrix product."""

    def __init__(self, head: HeadModel, shape: np.ndarray) -> None:
        self.head = head
        self.subset = LandmarkSubset(head).double()
        s = np.zeros(head.n_shape)
        shape = np.asarray(shape, dtype=np.float64).reshape(-1)
        s[: min(len(shape), head.n_shape)] = shape[: head.n_shape]
        self.shape = torch.as_tensor(s, dtype=DT)[None]
        self.n_expr = head.n_expr
        self.posed_jaw = "jaw" in head.posed_joints
        self.n_coeffs = self.n_expr + (3 if self.posed_jaw else 0)
        self.n_subset = int(self.subset.landmark_subset.template.shape[0])
        self._vertex_basis: tuple[Tensor, ...] | None = None
        self._bins: dict[int, Tensor] = {}

    def bin_matrix(self, yaw_bin: int) -> Tensor:
        """(68,S) weights of the subset's vertices that make the landmarks of a contour bin."""
        if yaw_bin not in self._bins:
            faces, bary = self.head.landmark_triangles(torch.tensor([float(yaw_bin)]), 1)
            tri = self.subset.faces_local[faces[0]].cpu()  # (68,3) subset ids
            w = torch.zeros(68, self.n_subset, dtype=DT)
            w.scatter_add_(1, tri, bary[0].cpu().to(DT))
            self._bins[yaw_bin] = w
        return self._bins[yaw_bin]

    @torch.no_grad()
    def vertex_basis(self, c0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(V0 (S,3), DV (C,S,3), J0 (J*3,), DJ (C,J*3), c0) of the landmark subset's
        vertices and the joints about c0 (without a posed jaw: once, about zero)."""
        if not self.posed_jaw and self._vertex_basis is not None:
            return self._vertex_basis  # type: ignore[return-value]
        c = self.n_coeffs
        c0 = c0.to(DT) if self.posed_jaw else torch.zeros(c, dtype=DT)
        # Exact for the (linear) expression at any step; small for the jaw's rotation.
        step = torch.ones(c, dtype=DT)
        step[self.n_expr :] = 1e-4
        rows = torch.cat([c0[None], c0[None] + torch.diag(step)])  # (1+C, C)
        b = rows.shape[0]
        betas = torch.cat([self.shape.expand(b, -1), rows[:, : self.n_expr]], 1)
        jaw = rows[:, self.n_expr :] if self.posed_jaw else None
        pose = self.head.pose_vector(None, None, jaw, None, b, dtype=DT)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            verts, joints = self.subset.vertices(betas, pose)  # (B,S,3), (B,J,3)
        finally:
            torch.set_num_threads(threads)
        jflat = joints.reshape(b, -1)
        out = (
            verts[0],
            (verts[1:] - verts[0]) / step[:, None, None],
            jflat[0],
            (jflat[1:] - jflat[0]) / step[:, None],
            c0.clone(),
        )
        if not self.posed_jaw:
            self._vertex_basis = out
        return out

    @torch.no_grad()
    def basis(self, yaw_deg: float, c0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(L0 (68*3,), D (C,68*3), J0 (J*3,), DJ (C,J*3), c0 (C,)) for the contour bin of
        `yaw_deg` (degrees as the camera sees the head)."""
        k = int(round(max(-MAX_YAW_DEG, min(MAX_YAW_DEG, yaw_deg))))
        v0, dv, j0, dj, c0 = self.vertex_basis(c0)
        w = self.bin_matrix(k)
        l0 = (w @ v0).reshape(-1)
        d = torch.einsum("ls,csk->clk", w, dv).reshape(dv.shape[0], -1)
        return l0, d, j0, dj, c0


@dataclass
class FrameFit:
    """One frame's fit: coefficients c (expression then jaw), the head's rotation
    (axis-angle about the root joint) and translation, the fitted and detected landmarks."""

    coeffs: np.ndarray  # (C,)
    head_rot: np.ndarray  # (3,)
    head_trans: np.ndarray  # (3,)
    landmarks_px: np.ndarray  # (68,2) fitted projections
    residual_px: np.ndarray  # (68,) distance to the detections
    joints_cam: np.ndarray  # (J,3) the posed joints in camera space
    cold: bool  # started from PnP (first frame, or the face was lost)


class FrameFitter:
    """Fits frame after frame, each from the previous one (see the module docstring)."""

    def __init__(
        self,
        head: HeadModel,
        shape: np.ndarray,
        intrinsics: Intrinsics,
        options: TrackOptions | None = None,
    ) -> None:
        self.head = head
        self.options = options or TrackOptions()
        self.model = IdentityLandmarks(head, shape)
        self.intrinsics = intrinsics
        self.camera = torch.as_tensor(intrinsics.as_vector(), dtype=DT)[None]
        c = self.model.n_coeffs
        space = head.expression_space
        lo = np.full(c, -np.inf)
        hi = np.full(c, np.inf)
        if space.lower is not None:
            lo[: self.model.n_expr] = space.lower[: self.model.n_expr]
        if space.upper is not None:
            hi[: self.model.n_expr] = space.upper[: self.model.n_expr]
        self.lower, self.upper = lo, hi
        self.previous: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def reset(self) -> None:
        """The next frame starts cold (PnP): the face was lost."""
        self.previous = None

    def fit(self, detected: np.ndarray, pinned: dict[int, float] | None = None) -> FrameFit:
        """Fits one frame's (68,2) detections. `pinned`: coefficient index -> value held
        fixed (the eyeLook keys, set from the measured gaze)."""
        pinned = pinned or {}
        o = self.options
        det = torch.as_tensor(np.asarray(detected, dtype=np.float64))
        cold = self.previous is None
        if cold:
            coeffs = np.zeros(self.model.n_coeffs)
            rot, trans = self._pnp(det.numpy())
        else:
            coeffs, rot, trans = (a.copy() for a in self.previous)
        for k, v in pinned.items():
            coeffs[k] = v
        coeffs = np.clip(coeffs, self.lower, self.upper)
        free = [k for k in range(self.model.n_coeffs) if k not in pinned]
        yaw = float(yaw_pitch_roll_deg(axis_angle_to_matrix(torch.as_tensor(rot)[None]))[0, 0])
        basis = self.model.basis(yaw, torch.as_tensor(coeffs))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # thousands of tiny ops: extra threads only synchronise
        try:
            if cold:
                term = FrameTerm(self, basis, det, coeffs, [], o)
                rot, trans = term.solve(o.cold_iterations[0], rot, trans)[1:]
                term = FrameTerm(self, basis, det, coeffs, free, o)
                coeffs, rot, trans = term.solve(o.cold_iterations[1], rot, trans)
            else:
                term = FrameTerm(self, basis, det, coeffs, free, o)
                coeffs, rot, trans = term.solve(o.iterations, rot, trans)
            px, joints = term.evaluate(coeffs, rot, trans)
        finally:
            torch.set_num_threads(threads)
        self.previous = (coeffs.copy(), rot.copy(), trans.copy())
        res = np.linalg.norm(px - det.numpy(), axis=1)
        return FrameFit(coeffs, rot, trans, px, res, joints, cold)

    def _pnp(self, det: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """PnP of the neutral face's landmarks: frontal contour first, then the contour of
        the yaw found."""
        c0 = torch.zeros(self.model.n_coeffs, dtype=DT)
        yaw = 0.0
        rot = np.eye(3)
        t = np.zeros(3)
        for _ in range(2):
            l0, _, j0, _, _ = self.model.basis(yaw, c0)
            lmk = l0.reshape(68, 3).numpy()
            pivot = j0.reshape(-1, 3)[0].numpy()
            rot, t = solve_head_pose_pnp(
                lmk[PNP_LANDMARKS], det[PNP_LANDMARKS], self.intrinsics, pivot
            )
            yaw = float(yaw_pitch_roll_deg(torch.as_tensor(rot)[None])[0, 0])
        return matrix_to_axis_angle(rot), np.asarray(t, dtype=np.float64)


def _pairs(pairs: tuple[tuple[int, int], ...]) -> tuple[list[int], list[int]]:
    return [a for a, _ in pairs], [b for _, b in pairs]


class FrameTerm(ResidualTerm):
    """One frame's landmark terms over x = (free coefficients, head rotation, translation),
    on the affine basis of `IdentityLandmarks`."""

    name = "landmarks"

    def __init__(
        self,
        fitter: FrameFitter,
        basis: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
        detected: Tensor,
        coeffs: np.ndarray,
        free: list[int],
        options: TrackOptions,
    ) -> None:
        l0, d, j0, dj, c0 = basis
        self.held = np.asarray(coeffs, dtype=np.float64).copy()
        base = torch.as_tensor(self.held, dtype=DT)
        held = base.clone()
        held[free] = 0.0
        self.free = free
        self.n_free = len(free)
        # landmarks and joints at the held coefficients, plus the free ones' columns
        self.l_base = l0 + (held - c0) @ d
        self.d_free = d[free]
        self.j_base = j0 + (held - c0) @ dj
        self.dj_free = dj[free]
        self.n_joints = j0.shape[0] // 3
        self.detected = detected
        self.camera = fitter.camera
        self.start = base[free]
        size = detected.amax(0) - detected.amin(0)
        self.scale = 0.5 * float(size.max().clamp_min(1.0))
        w = options.weights
        self.w = w
        self.options = options
        n_expr = fitter.model.n_expr
        self.expr_cols = [i for i, k in enumerate(free) if k < n_expr]
        self.jaw_cols = [i for i, k in enumerate(free) if k >= n_expr]
        lo, hi = fitter.lower[free], fitter.upper[free]
        inf = np.full(6, np.inf)
        self.bounds = (
            torch.as_tensor(np.concatenate([lo, -inf]), dtype=DT),
            torch.as_tensor(np.concatenate([hi, inf]), dtype=DT),
        )
        self.eye = _pairs(EYELID_PAIRS)
        self.lip = _pairs(LIP_PAIRS)

    # -- model -------------------------------------------------------------------------------
    def pixels(self, xb: Tensor) -> tuple[Tensor, Tensor]:
        """(B,P) -> (B,68,2) projected landmarks and (B,J,3) posed joints in camera space."""
        b = xb.shape[0]
        cf = xb[:, : self.n_free]
        lm = (self.l_base + cf @ self.d_free).reshape(b, 68, 3)
        joints = (self.j_base + cf @ self.dj_free).reshape(b, self.n_joints, 3)
        pivot = joints[:, :1]  # (B,1,3) the root joint
        rot = axis_angle_to_matrix(xb[:, self.n_free : self.n_free + 3])
        trans = xb[:, None, self.n_free + 3 :]
        cam = (lm - pivot) @ rot.transpose(1, 2) + pivot + trans
        joints_cam = (joints - pivot) @ rot.transpose(1, 2) + pivot + trans
        return project(cam, self.camera.expand(b, 4)), joints_cam

    def _errors(self, xb: Tensor) -> Tensor:
        return (self.pixels(xb)[0] - self.detected) / self.scale  # (B,68,2)

    # -- ResidualTerm ------------------------------------------------------------------------
    def reweight(self, free: Free, x: Tensor) -> dict[str, Tensor]:
        err = self._errors(x[None])[0]
        (ei, ej), (li, lj) = self.eye, self.lip
        return {
            "lmk": charbonnier_irls(err, EPS),
            "eye": charbonnier_irls(err[ei] - err[ej], EPS),
            "lip": charbonnier_irls(err[li] - err[lj], EPS),
        }

    def residuals(self, free: Free, xb: Tensor, state: dict[str, Tensor]) -> Tensor:
        w, o = self.w, self.options
        b = xb.shape[0]
        err = self._errors(xb)
        (ei, ej), (li, lj) = self.eye, self.lip
        parts = [
            (err * torch.sqrt(w.landmarks * state["lmk"])[:, None]).reshape(b, -1),
            ((err[:, ei] - err[:, ej]) * torch.sqrt(w.eye * state["eye"])[:, None]).reshape(b, -1),
            ((err[:, li] - err[:, lj]) * torch.sqrt(w.lip * state["lip"])[:, None]).reshape(b, -1),
        ]
        cf = xb[:, : self.n_free]
        if self.expr_cols:
            parts.append(np.sqrt(w.reg) * cf[:, self.expr_cols])
            if o.temporal > 0:
                moved = cf[:, self.expr_cols] - self.start[self.expr_cols]
                parts.append(np.sqrt(o.temporal) * moved)
        if self.jaw_cols:
            jaw = cf[:, self.jaw_cols]
            # a hinge about x that opens with positive rotation (as the photo fit's prior)
            prior = torch.stack([10 * jaw[:, 1], 10 * jaw[:, 2], 10 * jaw[:, 0].clamp(max=0)], 1)
            parts.append(np.sqrt(o.jaw_prior) * prior)
        return torch.cat(parts, 1)

    # -- solving -----------------------------------------------------------------------------
    def solve(
        self, iterations: int, rot: np.ndarray, trans: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LM from (the held start, rot, trans); returns the full coefficients, rot, trans."""
        x = torch.cat(
            [self.start, torch.as_tensor(rot, dtype=DT), torch.as_tensor(trans, dtype=DT)]
        )
        if iterations > 0:
            x, _ = levenberg_marquardt(x, [], [self], iterations, bounds=self.bounds)
        coeffs = self._full(x)
        self.start = x[: self.n_free].clone()
        return (
            coeffs,
            x[self.n_free : self.n_free + 3].numpy().copy(),
            x[self.n_free + 3 :].numpy().copy(),
        )

    def _full(self, x: Tensor) -> np.ndarray:
        """The full coefficient vector: the held values with the free ones from x."""
        out = self.held.copy()
        out[self.free] = x[: self.n_free].numpy()
        return out

    @torch.no_grad()
    def evaluate(
        self, coeffs: np.ndarray, rot: np.ndarray, trans: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(68,2) fitted landmarks and (J,3) camera-space joints at a full parameter set."""
        x = torch.cat(
            [
                torch.as_tensor(coeffs[self.free], dtype=DT),
                torch.as_tensor(rot, dtype=DT),
                torch.as_tensor(trans, dtype=DT),
            ]
        )
        px, joints = self.pixels(x[None])
        return px[0].numpy(), joints[0].numpy()
