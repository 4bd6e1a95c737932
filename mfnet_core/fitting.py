"""Test-time multi-view fitting (paper section 3.5, without a trained network).

One shape and expression for the person, one jaw/eye/neck pose, and a rigid head pose
per view (the head pose plays the camera, as in the paper's section 3.6). Landmark stages
run coarse to fine with L-BFGS; dense terms (flow, photometric) plug in as extra stages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .camera import (
    Intrinsics,
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    project,
    solve_head_pose_pnp,
    yaw_pitch_roll_deg,
)
from .flame import FLAME
from .losses import (
    EYELID_PAIRS,
    LIP_PAIRS,
    LossWeights,
    landmark_loss,
    offset_loss,
    outlier_weights,
    regularisation,
)

ProgressFn = Callable[[float, str], None]

# Landmarks that stay put under expression changes: a stable set for the rigid start.
RIGID_LANDMARKS = list(range(17, 48))

LOSS_TERMS = ("landmarks", "eye", "lip", "flow", "photo", "reg")


@dataclass
class FitOptions:
    """Knobs of the fit; defaults are the paper's lambdas and a schedule measured on the
    synthetic benchmark (docs/BENCHMARKS.md)."""

    n_shape: int = 100
    n_expr: int = 50
    weights: LossWeights = field(default_factory=LossWeights)
    losses: tuple[str, ...] = ("landmarks", "eye", "lip", "reg")
    jaw_reg: float = 1e-2
    expression_reg_scale: float = 1.0
    iterations: tuple[int, int, int] = (25, 40, 60)
    outlier_rounds: int = 2
    seed: int = 0


@dataclass
class FitParams:
    """Optimisable parameters. N views."""

    shape: Tensor  # (1,S)
    expression: Tensor  # (1,E)
    jaw_pose: Tensor  # (1,3)
    eye_pose: Tensor  # (1,6)
    neck_pose: Tensor  # (1,3)
    head_rot: Tensor  # (N,3) axis-angle about the root joint
    head_trans: Tensor  # (N,3)

    def tensors(self) -> list[Tensor]:
        return [
            self.shape,
            self.expression,
            self.jaw_pose,
            self.eye_pose,
            self.neck_pose,
            self.head_rot,
            self.head_trans,
        ]

    def detached_numpy(self) -> dict[str, np.ndarray]:
        return {
            "shape": self.shape.detach().cpu().numpy()[0],
            "expression": self.expression.detach().cpu().numpy()[0],
            "jaw_pose": self.jaw_pose.detach().cpu().numpy()[0],
            "eye_pose": self.eye_pose.detach().cpu().numpy()[0],
            "neck_pose": self.neck_pose.detach().cpu().numpy()[0],
            "head_pose": self.head_rot.detach().cpu().numpy(),
            "head_translation": self.head_trans.detach().cpu().numpy(),
        }


@dataclass
class FitResult:
    params: dict[str, np.ndarray]
    vertices_model: np.ndarray  # (V,3) expressed, jaw-posed, no head pose (FLAME axes)
    vertices_cam: np.ndarray  # (N,V,3) per-view camera space
    landmarks_px: np.ndarray  # (N,68,2) fitted landmark projections
    residuals_px: np.ndarray  # (N,68) distance to detections
    landmark_weights: np.ndarray  # (N,68) final robust weights
    yaw_pitch_roll: np.ndarray  # (N,3) degrees
    loss_terms: dict[str, float]
    history: list[dict[str, float]]


class MultiViewFitter:
    """Holds the model, the observations and the parameters; stages call `step`."""

    def __init__(
        self,
        flame: FLAME,
        landmarks_px: np.ndarray,
        intrinsics: list[Intrinsics],
        options: FitOptions,
        device: torch.device,
    ) -> None:
        self.flame = flame
        self.options = options
        self.device = device
        self.dtype = torch.float32
        self.n_views = len(intrinsics)
        self.intrinsics = intrinsics
        self.detected = torch.as_tensor(landmarks_px, dtype=self.dtype, device=device)
        self.camera = torch.as_tensor(
            np.stack([k.as_vector() for k in intrinsics]), dtype=self.dtype, device=device
        )
        size = self.detected.amax(1) - self.detected.amin(1)  # (N,2)
        self.scale = 0.5 * size.amax(-1)
        self.lm_weights = torch.ones(self.n_views, 68, dtype=self.dtype, device=device)
        self.history: list[dict[str, float]] = []
        self.extra_terms: dict[str, Callable[[dict[str, Tensor]], Tensor]] = {}
        ns, ne = flame.n_shape, flame.n_expr
        z = lambda *s: torch.zeros(*s, dtype=self.dtype, device=device)  # noqa: E731
        self.params = FitParams(
            z(1, ns), z(1, ne), z(1, 3), z(1, 6), z(1, 3), z(self.n_views, 3), z(self.n_views, 3)
        )

    # -- model evaluation -------------------------------------------------------------
    def evaluate(self, with_vertices: bool = False) -> dict[str, Tensor]:
        """FLAME once without head pose, then a rigid pose per view about the root joint."""
        p = self.params
        out = self.flame(
            shape=p.shape,
            expression=p.expression,
            global_pose=torch.zeros_like(p.neck_pose),
            neck_pose=p.neck_pose,
            jaw_pose=p.jaw_pose,
            eye_pose=p.eye_pose,
        )
        rot = axis_angle_to_matrix(p.head_rot)  # (N,3,3)
        yaw = yaw_pitch_roll_deg(rot.detach())[:, 0]
        verts = out.vertices.expand(self.n_views, -1, -1)
        lmk_model = self.flame.landmarks_3d(verts, yaw)  # (N,68,3)
        pivot = out.joints[:, 0]  # (1,3)
        lmk_cam = self._pose(lmk_model, rot, pivot, p.head_trans)
        result = {
            "rotation": rot,
            "pivot": pivot,
            "landmarks_cam": lmk_cam,
            "landmarks_px": project(lmk_cam, self.camera),
            "vertices_model": out.vertices[0],
        }
        if with_vertices:
            result["vertices_cam"] = self._pose(verts, rot, pivot, p.head_trans)
        return result

    @staticmethod
    def _pose(points: Tensor, rot: Tensor, pivot: Tensor, trans: Tensor) -> Tensor:
        """X_cam = R (X - pivot) + pivot + t. points (N,P,3), rot (N,3,3), pivot (1,3)."""
        centred = points - pivot[:, None]
        return centred @ rot.transpose(1, 2) + pivot[:, None] + trans[:, None]

    # -- objective --------------------------------------------------------------------
    def objective(self, lmk_subset: list[int] | None = None) -> tuple[Tensor, dict[str, float]]:
        o = self.options
        w = o.weights
        ev = self.evaluate(with_vertices=bool(self.extra_terms))
        pred = ev["landmarks_px"]
        weights = self.lm_weights
        if lmk_subset is not None:
            mask = torch.zeros_like(weights)
            mask[:, lmk_subset] = 1
            weights = weights * mask
        terms: dict[str, Tensor] = {}
        if "landmarks" in o.losses:
            terms["landmarks"] = w.landmarks * landmark_loss(pred, self.detected, weights, self.scale)
        if "eye" in o.losses:
            terms["eye"] = w.eye * offset_loss(pred, self.detected, EYELID_PAIRS, weights, self.scale)
        if "lip" in o.losses:
            terms["lip"] = w.lip * offset_loss(pred, self.detected, LIP_PAIRS, weights, self.scale)
        if "reg" in o.losses:
            p = self.params
            terms["reg"] = w.reg * regularisation(p.shape, p.expression * o.expression_reg_scale)
        p = self.params
        # Keep the jaw a hinge and the unobserved eyes and neck at rest unless data says otherwise.
        terms["pose_prior"] = o.jaw_reg * (
            (p.jaw_pose[:, 1:] ** 2).sum() * 10 + (p.jaw_pose[:, 0].clamp(max=0) ** 2).sum() * 10
        ) + 1e-2 * ((p.eye_pose**2).sum() + (p.neck_pose**2).sum())
        for name, fn in self.extra_terms.items():
            terms[name] = fn(ev)
        total = torch.stack(list(terms.values())).sum()
        return total, {k: float(v.detach()) for k, v in terms.items()}

    def run_stage(
        self,
        name: str,
        trainable: list[Tensor],
        iterations: int,
        lmk_subset: list[int] | None = None,
        grad_masks: dict[int, Tensor] | None = None,
    ) -> None:
        """L-BFGS on the given parameters; deterministic for fixed inputs.

        grad_masks (keyed by id of a parameter) freeze parts of a parameter: L-BFGS then
        moves only in the unmasked subspace (coarse stages use the leading components).
        """
        hooks = []
        for t in self.params.tensors():
            t.requires_grad_(any(t is x for x in trainable))
            if grad_masks and id(t) in grad_masks:
                mask = grad_masks[id(t)]
                hooks.append(t.register_hook(lambda g, m=mask: g * m))
        opt = torch.optim.LBFGS(
            trainable,
            lr=1.0,
            max_iter=iterations,
            history_size=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
        )
        last: dict[str, float] = {}

        def closure() -> Tensor:
            opt.zero_grad()
            total, parts = self.objective(lmk_subset)
            total.backward()
            last.clear()
            last.update(parts)
            return total

        opt.step(closure)
        for h in hooks:
            h.remove()
        for t in self.params.tensors():
            t.requires_grad_(False)
        self.history.append({"stage": name, **last})  # type: ignore[dict-item]

    # -- initialisation ----------------------------------------------------------------
    def initialise_poses(self) -> None:
        """PnP of the mean head's landmarks against each view's detections."""
        with torch.no_grad():
            out = self.flame(
                shape=self.params.shape,
                expression=self.params.expression,
                global_pose=torch.zeros(1, 3, device=self.device),
                neck_pose=self.params.neck_pose,
                jaw_pose=self.params.jaw_pose,
                eye_pose=self.params.eye_pose,
            )
            pivot = out.joints[0, 0].cpu().numpy().astype(np.float64)
            rots, trans = [], []
            for v in range(self.n_views):
                det = self.detected[v].cpu().numpy()
                # Two passes: frontal contour, then the contour for the yaw just found.
                yaw = torch.zeros(1, device=self.device)
                for _ in range(2):
                    lmk = self.flame.landmarks_3d(out.vertices, yaw)[0].cpu().numpy()
                    idx = RIGID_LANDMARKS + list(range(48, 68)) + list(range(0, 17))
                    rot, t = solve_head_pose_pnp(lmk[idx], det[idx], self.intrinsics[v], pivot)
                    rt = torch.as_tensor(rot, dtype=self.dtype, device=self.device)[None]
                    yaw = yaw_pitch_roll_deg(rt)[:, 0]
                rots.append(matrix_to_axis_angle(rot))
                trans.append(t)
            self.params.head_rot.copy_(torch.as_tensor(np.stack(rots), dtype=self.dtype))
            self.params.head_trans.copy_(torch.as_tensor(np.stack(trans), dtype=self.dtype))

    def update_outlier_weights(self) -> None:
        with torch.no_grad():
            pred = self.evaluate()["landmarks_px"]
            res = (pred - self.detected).norm(dim=-1)
            self.lm_weights = outlier_weights(res, self.scale)

    # -- results -----------------------------------------------------------------------
    def result(self) -> FitResult:
        with torch.no_grad():
            ev = self.evaluate(with_vertices=True)
            total, parts = self.objective()
            pred = ev["landmarks_px"]
            res = (pred - self.detected).norm(dim=-1)
        return FitResult(
            params=self.params.detached_numpy(),
            vertices_model=ev["vertices_model"].cpu().numpy(),
            vertices_cam=ev["vertices_cam"].cpu().numpy(),
            landmarks_px=pred.cpu().numpy(),
            residuals_px=res.cpu().numpy(),
            landmark_weights=self.lm_weights.cpu().numpy(),
            yaw_pitch_roll=yaw_pitch_roll_deg(ev["rotation"]).cpu().numpy(),
            loss_terms={**parts, "total": float(total)},
            history=self.history,
        )


def fit_landmarks(
    flame: FLAME,
    landmarks_px: np.ndarray,
    intrinsics: list[Intrinsics],
    options: FitOptions | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
) -> MultiViewFitter:
    """The landmark part of the fit: PnP start, rigid, coarse, fine with outlier rounds.

    landmarks_px: (N,68,2) detections per view. Returns the fitter so that dense stages
    (flow, photometric) can continue from it.
    """
    options = options or FitOptions()
    torch.manual_seed(options.seed)
    fitter = MultiViewFitter(flame, landmarks_px, intrinsics, options, torch.device(device))
    report = progress or (lambda f, m: None)
    p = fitter.params
    it_rigid, it_coarse, it_fine = options.iterations
    report(0.0, "initialising head poses (PnP)")
    fitter.initialise_poses()
    report(0.15, "rigid alignment")
    fitter.run_stage("rigid", [p.head_rot, p.head_trans], it_rigid, RIGID_LANDMARKS)
    report(0.3, "coarse shape and expression")
    coarse = {
        id(p.shape): _leading_mask(p.shape, 20),
        id(p.expression): _leading_mask(p.expression, 10),
    }
    fitter.run_stage(
        "coarse",
        [p.shape, p.expression, p.jaw_pose, p.head_rot, p.head_trans],
        it_coarse,
        grad_masks=coarse,
    )
    for r in range(options.outlier_rounds + 1):
        report(0.5 + 0.5 * r / (options.outlier_rounds + 1), f"fine fit, round {r + 1}")
        fitter.update_outlier_weights()
        fitter.run_stage(
            f"fine{r}",
            [p.shape, p.expression, p.jaw_pose, p.head_rot, p.head_trans],
            it_fine,
        )
    report(1.0, "landmark fit done")
    return fitter


def _leading_mask(param: Tensor, count: int) -> Tensor:
    """(1,K) mask with ones on the first `count` components."""
    mask = torch.zeros_like(param)
    mask[:, :count] = 1
    return mask
