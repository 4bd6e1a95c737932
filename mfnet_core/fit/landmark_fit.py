"""Test-time multi-view fitting (paper section 3.5, without a trained network).

One identity for the person, an expression and jaw pose per photo (photos taken one after
another rarely share an expression; `FitOptions.shared_expression` keeps the paper's
same-moment assumption of one expression for all), one eye/neck pose, and a rigid head pose
per view (the head pose plays the camera, as in the paper's section 3.6). The landmark
stages are a robust least-squares problem of a few hundred unknowns, solved coarse to fine
by Levenberg-Marquardt with iteratively reweighted residuals: the L1 of eq. 7-9 and a
Cauchy down-weighting of landmarks far off the fit. Dense terms (flow, photometric) plug in
as later stages through `extra_terms`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
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
from mfnet_core.fit.losses import EPS, landmark_loss, offset_loss, regularisation
from mfnet_core.fit.plan import DEFAULT_LOSSES, LossWeights, uses
from mfnet_core.fit.solver import (
    Bounds,
    Free,
    ResidualTerm,
    charbonnier_irls,
    levenberg_marquardt,
    one_thread,
    outlier_weights,
)
from mfnet_core.head.interface import HeadModel
from mfnet_core.head.subset import LandmarkSubset
from mfnet_core.inputs.landmarks import EYELID_PAIRS, LIP_PAIRS

ProgressFn = Callable[[float, str], None]

# Landmarks that stay put under expression changes: a stable set for the rigid start.
RIGID_LANDMARKS = list(range(17, 48))


@dataclass
class FitOptions:
    """Knobs of the fit; the loss weights default to the paper's lambdas.

    `losses` includes the multi-view flow term (run by `dense_fit.refine_dense` after the
    landmark fit): on 10 synthetic subjects it lowers the median face vertex error from
    1.338 to 0.934 mm (docs/BENCHMARKS.md, "Accuracy ablation"). "photo" stays opt-in: it
    adds ~1 s for ~0.01 mm.
    """

    weights: LossWeights = field(default_factory=LossWeights)
    losses: tuple[str, ...] = DEFAULT_LOSSES
    jaw_prior: float = 1e-3
    iterations: tuple[int, int, int] = (8, 10, 12)
    outlier_rounds: int = 2
    # A Levenberg-Marquardt stage stops when a step lowers its cost by less than this
    # (relative). 1e-4 instead of 1e-6 drops the steps that move nothing (the later outlier
    # rounds: ICT 86 -> 64 steps a fit) and measured the same accuracy (30 synthetic ICT
    # people: median 1.647 -> 1.620 mm, paired median -0.017 mm; docs/BENCHMARKS.md).
    tolerance: float = 1e-4
    seed: int = 0
    shared_expression: bool = False
    # The fit starts with one expression for all views (which fits the identity best); a
    # last round then gives each view its own, pulled toward their mean with weight
    # `expression_coupling` (times the regulariser's), kept
    # only where a view's eye or mouth landmarks move closer by `release_gain` of the face
    # size and by `release_fraction` of their error (eyes closed in one photo, a smile in
    # another). Measured on synthetic people in
    # docs/BENCHMARKS.md: free per-view expressions from the start cost 0.3-0.6 mm of
    # identity error when the photos agree.
    expression_coupling: float = 10.0
    release_gain: float = 0.01
    release_fraction: float = 0.5
    # The dense stages hold each view's departure from the mean where the landmarks put it
    # (this weight), so that flow cannot explain a disagreement between views by expression.
    dense_expression_coupling: float = 1000.0


@dataclass
class FitParams:
    """Optimisable parameters; N views; Ne = N expressions (one per view) or 1 (shared)."""

    shape: Tensor  # (1,S)
    expression: Tensor  # (Ne,E)
    jaw_pose: Tensor  # (Ne,3)
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
        """`expression`/`jaw_pose` are the views' mean (the one shared value when shared);
        `view_expression` (N,E) and `view_jaw_pose` (N,3) hold each view's own."""
        first = lambda t: t.detach().cpu().numpy()[0]  # noqa: E731
        n = self.head_rot.shape[0]
        expr = self.expression.detach().cpu().numpy()
        jaw = self.jaw_pose.detach().cpu().numpy()
        return {
            "shape": first(self.shape),
            "expression": expr.mean(0),
            "jaw_pose": jaw.mean(0),
            "view_expression": np.broadcast_to(expr, (n, expr.shape[1])).copy(),
            "view_jaw_pose": np.broadcast_to(jaw, (n, 3)).copy(),
            "eye_pose": first(self.eye_pose),
            "neck_pose": first(self.neck_pose),
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
    """Holds the model, the observations and the parameters; stages update `params`."""

    def __init__(
        self,
        head: HeadModel,
        landmarks_px: np.ndarray,
        intrinsics: list[Intrinsics],
        options: FitOptions,
        device: torch.device,
    ) -> None:
        self.head = head
        self.landmark_subset = LandmarkSubset(head).to(device)
        self._landmarks64 = LandmarkSubset(head).to(device).double()
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
        ns, ne = head.n_shape, head.n_expr
        z = lambda *s: torch.zeros(*s, dtype=self.dtype, device=device)  # noqa: E731
        n_e = 1  # one expression until `release_expressions` gives each view its own
        self.params = FitParams(
            z(1, ns),
            z(n_e, ne),
            z(n_e, 3),
            z(1, 6),
            z(1, 3),
            z(self.n_views, 3),
            z(self.n_views, 3),
        )
        # which expression row each view uses
        self.view_model = torch.arange(self.n_views, device=device) * (n_e > 1)
        # per-view expressions: pulled toward mean + target with weight coupling * reg
        self.coupling = options.expression_coupling
        self.coupling_target = torch.zeros(n_e, ne, dtype=torch.float64, device=device)

    def rescaled(self, head: HeadModel, factor: float) -> MultiViewFitter:
        """This fit carried over to `head`, this one's model `factor` times bigger
        (`HeadModel.rescaled`): the same coefficients, poses, weights and expression rows,
        the views' translations `factor` times longer. Every projection is unchanged, and
        no term depends on the metric size (pixels, coefficients, angles), so it is the same
        optimum, made metric without fitting again."""
        moved = copy.copy(self)
        moved.head = head
        moved.landmark_subset = LandmarkSubset(head).to(self.device)
        moved._landmarks64 = LandmarkSubset(head).to(self.device).double()
        with torch.no_grad():
            moved.params = FitParams(*(t.detach().clone() for t in self.params.tensors()))
            moved.params.head_trans.mul_(factor)
        moved.lm_weights = self.lm_weights.clone()
        moved.history = list(self.history)
        moved.extra_terms = dict(self.extra_terms)
        return moved

    def set_expression_rows(self, n_e: int) -> None:
        """One expression (and jaw) for all views (n_e = 1) or one per view (n_e = N),
        starting from the current ones' mean."""
        p = self.params
        p.expression = p.expression.mean(0, keepdim=True).repeat(n_e, 1)
        p.jaw_pose = p.jaw_pose.mean(0, keepdim=True).repeat(n_e, 1)
        self.view_model = torch.arange(self.n_views, device=self.device) * (n_e > 1)
        self.coupling_target = torch.zeros(
            n_e, p.expression.shape[1], dtype=torch.float64, device=self.device
        )

    def hold_expression_departures(self, coupling: float) -> None:
        """From now on, each view's departure from the views' mean expression is held where
        it is (with weight `coupling`) while the mean may still move (the dense stages)."""
        e = self.params.expression.detach().double()
        self.coupling_target = e - e.mean(0, keepdim=True)
        self.coupling = coupling

    # -- model evaluation ------------------------------------------------------------------
    def contour_yaw(self, head_rot: Tensor | None = None) -> Tensor:
        """(N,) yaw in degrees that picks each view's contour landmarks."""
        rot = axis_angle_to_matrix(
            (self.params.head_rot if head_rot is None else head_rot).detach()
        )
        return yaw_pitch_roll_deg(rot)[:, 0]

    def evaluate(self, with_vertices: bool = False) -> dict[str, Tensor]:
        """The full model once per expression without head pose, then a rigid pose per view.
        `vertices_model` is the mesh at the views' mean expression (the shared one)."""
        p = self.params
        n_e = p.expression.shape[0]
        mean = n_e > 1
        out = self.head(
            shape=p.shape.expand(n_e + mean, -1),
            expression=torch.cat([p.expression, p.expression.mean(0, keepdim=True)][: 1 + mean]),
            global_pose=torch.zeros(n_e + mean, 3, dtype=self.dtype, device=self.device),
            neck_pose=p.neck_pose,
            jaw_pose=torch.cat([p.jaw_pose, p.jaw_pose.mean(0, keepdim=True)][: 1 + mean]),
            eye_pose=p.eye_pose,
        )
        rot = axis_angle_to_matrix(p.head_rot)  # (N,3,3)
        verts = out.vertices[self.view_model]  # (N,V,3) each view's own expression
        lmk_model = self.head.landmarks_3d(verts, self.contour_yaw())  # (N,68,3)
        pivot = out.joints[self.view_model, 0]  # (N,3)
        lmk_cam = pose_points(lmk_model, rot, pivot, p.head_trans)
        result = {
            "rotation": rot,
            "pivot": pivot,
            "landmarks_cam": lmk_cam,
            "landmarks_px": project(lmk_cam, self.camera),
            "vertices_model": out.vertices[-1],
            "vertices_views_model": verts,
        }
        if with_vertices:
            result["vertices_cam"] = pose_points(verts, rot, pivot, p.head_trans)
        return result

    def objective(self) -> tuple[Tensor, dict[str, float]]:
        """The paper's eq. 11 (landmark part) at the current parameters, for reporting and
        for the dense stages that continue from the landmark fit."""
        o, w, p = self.options, self.options.weights, self.params
        if self.extra_terms:
            ev = self.evaluate(with_vertices=True)
            pred = ev["landmarks_px"]
        else:
            ev, pred = {}, self.current_landmarks_px()
        terms: dict[str, Tensor] = {}
        if uses(o.losses, "landmarks"):
            terms["landmarks"] = w.landmarks * landmark_loss(
                pred, self.detected, self.lm_weights, self.scale
            )
        if uses(o.losses, "eye"):
            terms["eye"] = w.eye * offset_loss(
                pred, self.detected, EYELID_PAIRS, self.lm_weights, self.scale
            )
        if uses(o.losses, "lip"):
            terms["lip"] = w.lip * offset_loss(
                pred, self.detected, LIP_PAIRS, self.lm_weights, self.scale
            )
        if uses(o.losses, "reg"):
            terms["reg"] = w.reg * regularisation(
                p.shape * np.sqrt(self.head.shape_space.prior_scale),
                p.expression * np.sqrt(self.head.expression_space.prior_scale),
            )
        for name, fn in self.extra_terms.items():
            terms[name] = fn(ev)
        total = torch.stack(list(terms.values())).sum()
        return total, {k: float(v.detach()) for k, v in terms.items()}

    # -- Levenberg-Marquardt on the landmark residuals -------------------------------------
    def free_entries(self, stage: str) -> Free:
        """Which parameter entries move in a stage (coarse to fine). The jaw pose moves
        only where the model's jaw joint moves the mesh; a coarse stage frees the first
        10 PCA expression components, or every named blendshape (no order of importance)."""
        rigid: Free = [("head_rot", slice(None)), ("head_trans", slice(None))]
        if stage == "rigid":
            return rigid
        jaw: Free = [("jaw_pose", slice(None))] if "jaw" in self.head.posed_joints else []
        if stage == "coarse":
            named = self.head.expression_space.prior == "weights"
            return [
                ("shape", slice(0, 20)),
                ("expression", slice(None) if named else slice(0, 10)),
                *jaw,
                *rigid,
            ]
        return [("shape", slice(None)), ("expression", slice(None)), *jaw, *rigid]

    def bounds(self, free: Free) -> Bounds | None:
        """(P,) lower and upper limits of the free entries from the model's coefficient
        spaces (blendshape weights in [0, 1]); None when nothing is bounded."""
        spaces = {"shape": self.head.shape_space, "expression": self.head.expression_space}
        if not any(spaces[n].bounded for n, _ in free if n in spaces):
            return None
        lo, hi = [], []
        for name, sl in free:
            base = getattr(self.params, name)
            start, stop, _ = sl.indices(base.shape[-1])
            rows = base.shape[0]
            space = spaces.get(name)
            inf = np.full(stop - start, np.inf)
            low = inf * -1 if space is None or space.lower is None else space.lower[start:stop]
            high = inf if space is None or space.upper is None else space.upper[start:stop]
            lo.append(np.tile(low, rows))
            hi.append(np.tile(high, rows))
        as_t = lambda a: torch.as_tensor(np.concatenate(a), dtype=torch.float64, device=self.device)  # noqa: E731
        return as_t(lo), as_t(hi)

    def _gather(self, free: Free) -> Tensor:
        return torch.cat([getattr(self.params, n)[..., sl].reshape(-1) for n, sl in free])

    def _values(self, free: Free, x: Tensor) -> dict[str, Tensor]:
        """Batched parameter values: x (B,P) free entries -> dict of (B,...) tensors, the
        fixed entries broadcast from the current parameters. Head pose: (B,N,3); expression
        (B,Ne,E) and jaw (B,Ne,3)."""
        b = x.shape[0]
        p = self.params
        dt = x.dtype
        vals = {
            "shape": p.shape.to(dt).expand(b, -1),
            "expression": p.expression.to(dt)[None].expand(b, -1, -1),  # (B,Ne,E)
            "jaw_pose": p.jaw_pose.to(dt)[None].expand(b, -1, -1),  # (B,Ne,3)
            "head_rot": p.head_rot.to(dt)[None].expand(b, -1, -1),
            "head_trans": p.head_trans.to(dt)[None].expand(b, -1, -1),
        }
        i = 0
        for n, sl in free:
            base = vals[n]
            start, stop, _ = sl.indices(base.shape[-1])
            rows = base.shape[1] if base.dim() == 3 else 1
            count = rows * (stop - start)
            part = x[:, i : i + count].reshape(*base.shape[:-1], stop - start)
            vals[n] = torch.cat([base[..., :start], part, base[..., stop:]], dim=-1)
            i += count
        return vals

    def model_rows(self, vals: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The distinct head models a batch needs: betas (U,K) and pose (U,3J) of the U unique
        (shape, expression, jaw) rows, and (B,N) which row each batch entry's view uses.
        A forward-difference batch changes one view's expression per entry (or only a head
        pose), so most rows repeat and are evaluated once."""
        p = self.params
        b, n_e = vals["expression"].shape[:2]
        dt = vals["shape"].dtype
        rows = torch.cat(
            [vals["shape"][:, None].expand(b, n_e, -1), vals["expression"], vals["jaw_pose"]], -1
        ).reshape(b * n_e, -1)
        unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
        u = unique.shape[0]
        betas, jaw = unique[:, :-3], unique[:, -3:]
        p_neck, p_eye = p.neck_pose.to(dt).expand(u, 3), p.eye_pose.to(dt).expand(u, 6)
        pose = self.head.pose_vector(None, p_neck, jaw, p_eye, u, dtype=dt)
        row_of = inverse.reshape(b, n_e)[:, self.view_model]  # (B,N)
        return betas, pose, row_of

    def landmarks_px(self, vals: dict[str, Tensor], yaw: Tensor) -> Tensor:
        """(B,N,68,2) projections of the model landmarks for batched parameter values."""
        b, n = vals["head_rot"].shape[:2]
        dt = vals["shape"].dtype
        betas, pose, row_of = self.model_rows(vals)
        subset = self.landmark_subset if dt == torch.float32 else self._landmarks64
        lmk, pivot = subset.landmarks_of_rows(betas, pose, row_of, yaw)  # (B,N,68,3), (B,N,3)
        rot = axis_angle_to_matrix(vals["head_rot"].reshape(-1, 3)).reshape(b, n, 3, 3)
        pivot = pivot[:, :, None]  # (B,N,1,3)
        cam = (lmk - pivot) @ rot.transpose(-1, -2) + pivot + vals["head_trans"][:, :, None]
        return project(cam.reshape(b * n, 68, 3), self.camera.to(dt).repeat(b, 1)).reshape(
            b, n, 68, 2
        )

    def residuals(
        self, free: Free, x: Tensor, yaw: Tensor, irls: dict[str, Tensor], lmk_mask: Tensor
    ) -> Tensor:
        """Weighted residuals r (B,R) for parameter vectors x (B,P); a stage minimises |r|^2.

        With IRLS weights 1/sqrt(|e|^2+eps^2) from the previous iterate, |r|^2 equals the
        paper's L1 terms (eq. 7-9) at convergence; the regulariser (eq. 10) is quadratic.
        """
        vals = self._values(free, x)
        err = self.landmark_errors(vals, yaw)
        return torch.cat([self._landmark_parts(err, irls, lmk_mask), self._prior_parts(vals)], 1)

    def landmark_errors(self, vals: dict[str, Tensor], yaw: Tensor) -> Tensor:
        """(B,N,68,2) landmark errors in half face sizes for batched parameter values."""
        dt = vals["shape"].dtype
        pred = self.landmarks_px(vals, yaw)
        return (pred - self.detected.to(dt)) / self.scale.to(dt)[:, None, None]

    def _landmark_parts(self, err: Tensor, irls: dict[str, Tensor], lmk_mask: Tensor) -> Tensor:
        """Eq. 7-9's weighted residuals (B,R1) from landmark errors err (B,N,68,2); linear in
        err (the IRLS and outlier weights are held), so it also maps error derivatives."""
        o, w = self.options, self.options.weights
        b, dt = err.shape[0], err.dtype
        parts = [err.new_zeros(b, 0)]
        wl = (self.lm_weights * lmk_mask).to(dt)
        if uses(o.losses, "landmarks"):
            parts.append(
                (err * torch.sqrt(w.landmarks * wl * irls["lmk"])[..., None]).reshape(b, -1)
            )
        for name, pairs, lam in (("eye", EYELID_PAIRS, w.eye), ("lip", LIP_PAIRS, w.lip)):
            if uses(o.losses, name):
                i = [a for a, _ in pairs]
                j = [c for _, c in pairs]
                d = err[:, :, i] - err[:, :, j]
                pw = wl[:, i] * wl[:, j]
                parts.append((d * torch.sqrt(lam * pw * irls[name])[..., None]).reshape(b, -1))
        return torch.cat(parts, dim=1)

    def _prior_parts(self, vals: dict[str, Tensor]) -> Tensor:
        """The regulariser (eq. 10), the per-view expressions' coupling and the jaw's hinge
        prior as weighted residuals (B,R2) of batched parameter values."""
        o, w = self.options, self.options.weights
        b = vals["shape"].shape[0]
        parts = []
        if uses(o.losses, "reg"):
            expr = vals["expression"]
            k_s = np.sqrt(w.reg * self.head.shape_space.prior_scale)
            # per-view expressions: the prior holds their mean as it holds a shared one
            k_e = np.sqrt(w.reg * self.head.expression_space.prior_scale / expr.shape[1])
            parts.append(torch.cat([k_s * vals["shape"], k_e * expr.reshape(b, -1)], 1))
            if expr.shape[1] > 1:
                target = self.coupling_target.to(expr.dtype)
                dev = (expr - expr.mean(1, keepdim=True) - target).reshape(b, -1)
                parts.append(np.sqrt(w.reg * self.coupling) * dev)
        jaw = vals["jaw_pose"]
        # The jaw is a hinge about x that opens with positive rotation.
        prior = torch.cat([10 * jaw[..., 1], 10 * jaw[..., 2], 10 * jaw[..., 0].clamp(max=0)], 1)
        parts.append(np.sqrt(o.jaw_prior) * prior)
        return torch.cat(parts, dim=1)

    def columns(self, free: Free) -> dict[str, Tensor]:
        """For each parameter, a long tensor shaped like it ((1,S) shape, (Ne,E) expression,
        (Ne,3) jaw, (N,3) head pose) holding its column in the free vector, or -1."""
        p = self.params
        shapes = {
            "shape": (1, p.shape.shape[1]),
            "expression": tuple(p.expression.shape),
            "jaw_pose": tuple(p.jaw_pose.shape),
            "head_rot": tuple(p.head_rot.shape),
            "head_trans": tuple(p.head_trans.shape),
        }
        dev = p.shape.device
        cols = {k: torch.full(v, -1, dtype=torch.long, device=dev) for k, v in shapes.items()}
        i = 0
        for name, sl in free:
            start, stop, _ = sl.indices(shapes[name][-1])
            rows = shapes[name][0]
            count = rows * (stop - start)
            cols[name][:, start:stop] = torch.arange(i, i + count, device=dev).reshape(rows, -1)
            i += count
        return cols

    def linearise_landmarks(
        self, free: Free, x: Tensor, yaw: Tensor, irls: dict[str, Tensor], lmk_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """`residuals` (R,) at x (P,) and their Jacobian (R,P). Why not forward differences
        alone: most columns are shape and expression coefficients, and at a fixed pose the
        landmarks are affine in them (`SubsetLBS.linear`), so their columns come by the chain
        rule through the rotation and the projection; forward differences remain for the
        head poses and the jaw (one small batch) and for the priors."""
        h = 1e-6
        p_dim = x.shape[0]
        cols = self.columns(free)
        blend = torch.zeros(p_dim, dtype=torch.bool, device=x.device)
        for name in ("shape", "expression"):
            c = cols[name]
            blend[c[c >= 0]] = True
        other = (~blend).nonzero().squeeze(1)
        steps = x[None].repeat(1 + len(other), 1)
        steps[torch.arange(1, len(other) + 1), other] += h
        r_all = self.residuals(free, steps, yaw, irls, lmk_mask)
        r = r_all[0]
        jac = x.new_zeros(r.shape[0], p_dim)
        jac[:, other] = ((r_all[1:] - r) / h).T
        idx = blend.nonzero().squeeze(1)
        if len(idx) == 0:
            return r, jac
        # the blend-shape columns: the landmark part by the chain rule ...
        vals = self._values(free, x[None])
        d_err = self._error_basis(vals, yaw)  # (N,68,2,K)
        n_s = vals["shape"].shape[1]
        d_cols = x.new_zeros(p_dim, *d_err.shape[:3])  # (P,N,68,2): err's columns
        shape_cols = cols["shape"][0]
        on = shape_cols >= 0
        d_cols[shape_cols[on]] = d_err[..., :n_s][..., on].permute(3, 0, 1, 2)
        for n in range(self.n_views):  # each view's own expression row
            expr_cols = cols["expression"][self.view_model[n]]
            ok = expr_cols >= 0
            d_cols[expr_cols[ok], n] = d_err[n, ..., n_s:][..., ok].permute(2, 0, 1)
        n_lmk = self._landmark_parts(d_cols[:1], irls, lmk_mask).shape[1]
        jac[:n_lmk, idx] = self._landmark_parts(d_cols[idx], irls, lmk_mask).T
        # ... and the priors, linear in them, by differences (no model evaluation)
        steps = x[None].repeat(1 + len(idx), 1)
        steps[torch.arange(1, len(idx) + 1), idx] += h
        prior = self._prior_parts(self._values(free, steps))
        jac[n_lmk:, idx] = ((prior[1:] - prior[0]) / h).T
        return r, jac

    def _error_basis(self, vals: dict[str, Tensor], yaw: Tensor) -> Tensor:
        """(N,68,2,K) derivatives of each view's landmark errors (`landmark_errors`) w.r.t.
        the betas (shape then expression) of the expression row that view uses, at the
        values vals (a batch of 1)."""
        dt = vals["shape"].dtype
        n = self.n_views
        n_e = vals["expression"].shape[1]
        rows = torch.cat([vals["shape"][0][None].expand(n_e, -1), vals["expression"][0]], 1)
        p = self.params
        pose = self.head.pose_vector(
            None,
            p.neck_pose.to(dt).expand(n_e, 3),
            vals["jaw_pose"][0],
            p.eye_pose.to(dt).expand(n_e, 6),
            n_e,
            dtype=dt,
        )
        subset = self._landmarks64
        v0, basis, j0, j_basis = subset.landmark_subset.linear(pose)
        verts = v0 + torch.einsum("esmk,ek->esm", basis, rows)  # (Ne,S,3)
        pivot = j0[:, 0] + torch.einsum("emk,ek->em", j_basis[:, 0], rows)  # (Ne,3)
        faces, bary = self.head.landmark_triangles(yaw, n)  # (N,68), (N,68,3)
        tri = subset.faces_local[faces]  # (N,68,3)
        bary = bary.to(dt)
        m = self.view_model  # (N,)
        lmk = (verts[m[:, None, None], tri] * bary[..., None]).sum(-2)  # (N,68,3)
        d_lmk = torch.einsum("nlc,nlcxk->nlxk", bary, basis[m[:, None, None], tri])
        piv = pivot[m]  # (N,3)
        d_piv = j_basis[m, 0]  # (N,3,K)
        rot = axis_angle_to_matrix(vals["head_rot"][0])  # (N,3,3)
        cam = torch.einsum("nij,nlj->nli", rot, lmk - piv[:, None]) + piv[:, None]
        cam = cam + vals["head_trans"][0][:, None]
        d_cam = torch.einsum("nij,nljk->nlik", rot, d_lmk - d_piv[:, None]) + d_piv[:, None]
        # the projection's derivative (`camera.project`): u = cx + fx X/d, v = cy - fy Y/d
        cam_k = self.camera.to(dt)  # (N,4)
        depth = (-cam[..., 2]).clamp_min(1e-6)  # (N,68)
        fx, fy = cam_k[:, 0, None], cam_k[:, 1, None]
        du = (fx / depth)[..., None] * d_cam[..., 0, :] + (fx * cam[..., 0] / depth**2)[
            ..., None
        ] * d_cam[..., 2, :]
        dv = (
            -(fy / depth)[..., None] * d_cam[..., 1, :]
            - (fy * cam[..., 1] / depth**2)[..., None] * d_cam[..., 2, :]
        )
        d_pred = torch.stack([du, dv], 2)  # (N,68,2,K)
        return d_pred / self.scale.to(dt)[:, None, None, None]

    def _irls(self, free: Free, x: Tensor, yaw: Tensor) -> dict[str, Tensor]:
        """IRLS weights (N,68) / (N,pairs) that turn squared residuals into eq. 7-9's L1."""
        pred = self.landmarks_px(self._values(free, x[None]), yaw)[0]
        err = (pred - self.detected.to(x.dtype)) / self.scale.to(x.dtype)[:, None, None]
        out = {"lmk": charbonnier_irls(err, EPS)}
        for name, pairs in (("eye", EYELID_PAIRS), ("lip", LIP_PAIRS)):
            i = [a for a, _ in pairs]
            j = [c for _, c in pairs]
            out[name] = charbonnier_irls(err[:, i] - err[:, j], EPS)
        return out

    def run_stage(self, stage: str, iterations: int, lmk_subset: list[int] | None = None) -> None:
        with one_thread():
            self._run_stage(stage, iterations, lmk_subset)

    def _run_stage(self, stage: str, iterations: int, lmk_subset: list[int] | None = None) -> None:
        """Levenberg-Marquardt on the landmark terms alone; the contour landmarks follow the
        silhouette as the head turns."""
        _x, cost = self.solve(stage, [], iterations, lmk_subset, follow_contour=True)
        self.history.append({"stage": stage, "cost": cost})  # type: ignore[dict-item]

    def solve(
        self,
        stage: str,
        terms: list[ResidualTerm],
        iterations: int,
        lmk_subset: list[int] | None = None,
        follow_contour: bool = False,
    ) -> tuple[Tensor, float]:
        """`solver.levenberg_marquardt` on the landmark terms plus `terms` over the stage's
        free entries (float64), written back into `params`. Returns the final free vector
        and cost (the dense stages report their terms' values at it)."""
        free = self.free_entries(stage)
        x = self._gather(free).double()
        landmarks = LandmarkTerm(self, lmk_subset, follow_contour)
        x, cost = levenberg_marquardt(
            x,
            free,
            [landmarks, *terms],
            iterations,
            bounds=self.bounds(free),
            tol=self.options.tolerance,
        )
        vals = self._values(free, x[None])
        with torch.no_grad():
            for name, _ in free:
                getattr(self.params, name).copy_(vals[name][0].to(self.dtype))
        return x, cost

    @torch.no_grad()
    def refine_with(self, terms: list[ResidualTerm], iterations: int) -> dict[str, float]:
        """The landmark terms plus dense `terms` over the fine stage's entries, the contour
        bins held where they are (the dense stages). Returns the cost and each term's value."""
        x, cost = self.solve("fine", terms, iterations)
        free = self.free_entries("fine")
        return {"cost": cost, **{t.name: t.value(free, x) for t in terms}}

    # -- initialisation --------------------------------------------------------------------
    def initialise_poses(self) -> None:
        """PnP of the mean head's landmarks against each view's detections."""
        with torch.no_grad():
            out = self.head(
                shape=self.params.shape,
                expression=self.params.expression[:1],
                neck_pose=self.params.neck_pose,
                jaw_pose=self.params.jaw_pose[:1],
                eye_pose=self.params.eye_pose,
            )
            pivot = out.joints[0, 0].cpu().numpy().astype(np.float64)
            rots, trans = [], []
            idx = RIGID_LANDMARKS + list(range(48, 68)) + list(range(0, 17))
            for v in range(self.n_views):
                det = self.detected[v].cpu().numpy()
                yaw = torch.zeros(1, device=self.device)
                # Twice: frontal contour first, then the contour for the yaw just found.
                for _ in range(2):
                    lmk = self.head.landmarks_3d(out.vertices, yaw)[0].cpu().numpy()
                    rot, t = solve_head_pose_pnp(lmk[idx], det[idx], self.intrinsics[v], pivot)
                    rt = torch.as_tensor(rot, dtype=self.dtype, device=self.device)[None]
                    yaw = yaw_pitch_roll_deg(rt)[:, 0]
                rots.append(matrix_to_axis_angle(rot))
                trans.append(t)
            self.params.head_rot.copy_(torch.as_tensor(np.stack(rots), dtype=self.dtype))
            self.params.head_trans.copy_(torch.as_tensor(np.stack(trans), dtype=self.dtype))

    @torch.no_grad()
    def current_landmarks_px(self) -> Tensor:
        """(N,68,2) projections of the model landmarks at the current parameters, from the
        landmark subset in float64 as the solver sees them (no full-mesh evaluation)."""
        x = torch.zeros(1, 0, dtype=torch.float64, device=self.device)
        return self.landmarks_px(self._values([], x), self.contour_yaw())[0].to(self.dtype)

    def update_outlier_weights(self) -> None:
        with torch.no_grad():
            pred = self.current_landmarks_px()
            res = (pred - self.detected).norm(dim=-1)
            self.lm_weights = outlier_weights(res, self.scale)

    # -- results ---------------------------------------------------------------------------
    def result(self) -> FitResult:
        with torch.no_grad(), one_thread():
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


class LandmarkTerm(ResidualTerm):
    """Eq. 7-10 on the landmark subset (`MultiViewFitter.residuals`), IRLS-weighted; with
    `follow_contour` the contour landmarks' yaw bins are re-picked after every accepted
    step, else they stay where the stage started."""

    name = "landmarks"

    def __init__(
        self, fitter: MultiViewFitter, lmk_subset: list[int] | None, follow_contour: bool
    ) -> None:
        self.fitter = fitter
        self.follow_contour = follow_contour
        self.yaw = fitter.contour_yaw()
        self.mask = torch.ones_like(fitter.lm_weights)
        if lmk_subset is not None:
            self.mask = torch.zeros_like(self.mask)
            self.mask[:, lmk_subset] = 1

    def reweight(self, free: Free, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        return self.fitter._irls(free, x, self.yaw), self.yaw

    def residuals(self, free: Free, xb: Tensor, state: tuple[dict[str, Tensor], Tensor]) -> Tensor:
        irls, yaw = state
        return self.fitter.residuals(free, xb, yaw, irls, self.mask)

    def linearise(
        self, free: Free, x: Tensor, state: tuple[dict[str, Tensor], Tensor]
    ) -> tuple[Tensor, Tensor]:
        """`MultiViewFitter.linearise_landmarks` where the head's subset is affine in the
        betas (`linear`), else forward differences."""
        if not hasattr(self.fitter._landmarks64.landmark_subset, "linear"):
            return super().linearise(free, x, state)
        irls, yaw = state
        return self.fitter.linearise_landmarks(free, x, yaw, irls, self.mask)

    def accepted(self, free: Free, x: Tensor) -> None:
        if self.follow_contour:
            head_rot = self.fitter._values(free, x[None])["head_rot"][0].float()
            self.yaw = self.fitter.contour_yaw(head_rot)


def pose_points(points: Tensor, rot: Tensor, pivot: Tensor, trans: Tensor) -> Tensor:
    """X_cam = R (X - pivot) + pivot + t.

    points (N,P,3), rot (N,3,3), pivot (1,3) or (N,3) (the root joint), trans (N,3) -> (N,P,3).
    """
    centred = points - pivot[:, None]
    return centred @ rot.transpose(1, 2) + pivot[:, None] + trans[:, None]


# From a network's prediction (--weights): no rigid or coarse stage, one fine round of 8;
# measured 1.5x faster than the PnP start at the same error (docs/BENCHMARKS.md, Training).
INIT_ITERATIONS = (0, 0, 8)
INIT_OUTLIER_ROUNDS = 0


def set_params(fitter: MultiViewFitter, init: dict[str, np.ndarray]) -> None:
    """Starts the fit from given parameters (keys of FitParams.detached_numpy)."""
    p = fitter.params
    with torch.no_grad():
        for name in ("shape", "expression"):
            t = getattr(p, name)
            v = torch.as_tensor(np.asarray(init[name], np.float32)).reshape(-1)
            k = min(v.numel(), t.shape[1])
            t.zero_()
            t[:, :k] = v[:k]
        jaw = torch.as_tensor(np.asarray(init["jaw_pose"], np.float32)).reshape(1, 3)
        p.jaw_pose.copy_(jaw.expand_as(p.jaw_pose))
        p.head_rot.copy_(torch.as_tensor(np.asarray(init["head_pose"], np.float32)))
        p.head_trans.copy_(torch.as_tensor(np.asarray(init["head_translation"], np.float32)))


def fit_landmarks(
    head: HeadModel,
    landmarks_px: np.ndarray,
    intrinsics: list[Intrinsics],
    options: FitOptions | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    init: dict[str, np.ndarray] | None = None,
) -> MultiViewFitter:
    """The landmark part of the fit: PnP start (or `init`, e.g. the network's prediction),
    rigid, coarse, then fine rounds with outlier re-weighting. landmarks_px: (N,68,2).
    Returns the fitter so that dense stages (flow, photometric) can continue from it."""
    with one_thread():
        return _fit_landmarks(head, landmarks_px, intrinsics, options, device, progress, init)


def _fit_landmarks(
    head: HeadModel,
    landmarks_px: np.ndarray,
    intrinsics: list[Intrinsics],
    options: FitOptions | None,
    device: torch.device | str,
    progress: ProgressFn | None,
    init: dict[str, np.ndarray] | None,
) -> MultiViewFitter:
    options = options or FitOptions()
    torch.manual_seed(options.seed)
    fitter = MultiViewFitter(head, landmarks_px, intrinsics, options, torch.device(device))
    report = progress or (lambda f, m: None)
    it_rigid, it_coarse, it_fine = options.iterations
    if init is None:
        report(0.0, "initialising head poses (PnP)")
        fitter.initialise_poses()
    else:
        report(0.0, "starting from the network's prediction")
        set_params(fitter, init)
    if it_rigid:
        report(0.15, "rigid alignment")
        fitter.run_stage("rigid", it_rigid, RIGID_LANDMARKS)
    if it_coarse:
        report(0.3, "coarse shape and expression")
        fitter.run_stage("coarse", it_coarse)
    rounds = options.outlier_rounds + 1
    for r in range(rounds):
        report(0.5 + 0.5 * r / rounds, f"fine fit, round {r + 1}/{rounds}")
        fitter.update_outlier_weights()
        fitter.run_stage("fine", it_fine)
    if not options.shared_expression and fitter.n_views > 1 and it_fine:
        report(0.95, "per-photo expressions")
        release_expressions(fitter, it_fine)
    report(1.0, "landmark fit done")
    return fitter


# Landmark groups an expression moves: each eye, the mouth.
EXPRESSIVE_GROUPS = (list(range(36, 42)), list(range(42, 48)), list(range(48, 68)))


def release_expressions(fitter: MultiViewFitter, iterations: int) -> bool:
    """Lets each view's expression depart from the others' (a fine round with the weak
    coupling) and keeps that only if some view's eye and mouth landmarks get closer by
    `release_gain` of the face size; else the held (shared-like) fit is restored. Returns
    whether the views got their own expressions."""
    o = fitter.options
    p = fitter.params
    saved = [t.detach().clone() for t in p.tensors()]
    fitter.set_expression_rows(fitter.n_views)
    # The held fit marks a closed eye's lids as outliers: every landmark counts again here.
    saved_weights = fitter.lm_weights
    fitter.lm_weights = torch.ones_like(saved_weights)

    def expressive_error() -> Tensor:
        """(N,3) mean landmark error of each view's eyes and mouth, in face sizes."""
        with torch.no_grad():
            res = (fitter.current_landmarks_px() - fitter.detected).norm(dim=-1)
            groups = [res[:, g].mean(1) for g in EXPRESSIVE_GROUPS]
            return torch.stack(groups, 1) / fitter.scale[:, None]

    before = expressive_error()
    fitter.coupling = o.expression_coupling
    fitter.run_stage("fine", iterations)
    gain = before - expressive_error()
    # A real disagreement (eyes closed in one photo) is most of that group's error; a
    # detector's bias on a turned face is spread thin and only partly explained.
    clear = (gain >= o.release_gain) & (gain >= o.release_fraction * before)
    if bool(clear.any()):
        fitter.update_outlier_weights()
        fitter.run_stage("fine", iterations)
        fitter.history.append({"stage": "per-photo expressions kept", "cost": float(gain.max())})  # type: ignore[dict-item]
        return True
    fitter.set_expression_rows(1)
    with torch.no_grad():
        for t, v in zip(p.tensors(), saved, strict=True):
            t.copy_(v)
    fitter.lm_weights = saved_weights
    return False
