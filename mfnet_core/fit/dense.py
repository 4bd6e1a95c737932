"""Dense stages of the test-time fit: the multi-view flow term (eq. 6) and the photometric
refinement, continuing from the landmark fit (`fitting.fit_landmarks`).

Schedule (`refine_dense`):
1. Flow rounds. Each round renders the fitted mesh in every view, carries each photo through
   it into every other view (`flow.pair_flow`), estimates the flow inside the covisible masks
   and turns it into target points; then a few Levenberg-Marquardt iterations minimise the
   landmark terms (eq. 7-10, exactly the landmark fit's residuals) plus the flow term over
   shape, expression, jaw and the per-view head poses. The next round re-renders with the
   new mesh, so the flow shrinks towards zero (the fixed point of eq. 6).
2. Photometric stage (optional, "photo"): albedo baked from the photos through the mesh,
   SH lighting solved per view by robust least squares, then a few Gauss-Newton steps on the
   robust photometric residual inside the face masks (`photometric.py`).
3. Report: every term's final value, eq. 6's mean |F| per pair, and per view the PSNR and
   SSIM of the re-rendered face against the photo inside the face mask; overlay pictures of
   the covisible masks, I_{a->b} and the flow.

Why Levenberg-Marquardt and not Adam: the problem is a robust least squares in ~170 unknowns
with a good start; LM with IRLS converges in a handful of iterations (Adam needs hundreds),
and the Jacobian costs one batched evaluation of FLAME on the few thousand vertices that
the correspondences touch, like the landmark stage (forward differences in float64).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mfnet_core.camera import axis_angle_to_matrix
from mfnet_core.fit import flow as fl
from mfnet_core.fit.landmark_fit import MultiViewFitter, lm_step
from mfnet_core.head.subset_rig import VertexRig

__all__ = ["DenseOptions", "DenseReport", "refine_dense", "VertexRig"]

ProgressFn = Callable[[float, str], None]


@dataclass
class DenseOptions:
    """Knobs of the dense stages. `losses` decides which run ("flow", "photo")."""

    losses: tuple[str, ...] = ("landmarks", "eye", "lip", "flow", "reg")
    flow: fl.FlowOptions = field(default_factory=fl.FlowOptions)
    # times FitOptions.weights.flow (the paper's lambda_1 = 1): 0.5-3 are equal on the
    # synthetic set, the real capture (systematically wrong dlib landmarks) needs >= 2
    flow_weight: float = 2.0
    rounds: int = 2  # flow re-estimations
    iterations: int = 5  # LM iterations per round
    photo_weight: float = 0.1  # the photometric stage measured neutral at 0.1-3 after flow
    photo_iterations: int = 4
    photo_rounds: int = 1
    photo_size: int = 256
    report_size: int = 512  # resolution of the PSNR / SSIM re-render (longer side)
    images: bool = True  # overlay pictures in the report
    report: bool = True  # final flow, PSNR / SSIM and pictures (off: only the fit, for benchmarks)
    seed: int = 0


@dataclass
class DenseReport:
    """What the dense stages did, for report.json and the overlays."""

    loss_terms: dict[str, float]  # every term's final value (landmark terms, flow, photo)
    views: list[dict[str, float]]  # per view: psnr_face, ssim_face, face_pixels, ...
    pairs: list[dict[str, float]]  # per ordered pair: covisible_px, mean_flow_px before/after
    images: dict[str, np.ndarray]  # name -> (H,W,3) uint8 overlay pictures
    timings_s: dict[str, float]
    history: list[dict[str, float]]


def _pose_vector(fitter: MultiViewFitter, jaw: Tensor) -> Tensor:
    """(B,3) jaw -> (B,3J) full pose as the landmark fit builds it (no global pose)."""
    p = fitter.params
    b, dt = jaw.shape[0], jaw.dtype
    pose = torch.cat(
        [
            torch.zeros(b, 3, dtype=dt, device=jaw.device),
            p.neck_pose.to(dt).expand(b, 3),
            jaw,
            p.eye_pose.to(dt).expand(b, -1),
        ],
        1,
    )
    n = 3 * fitter.flame.n_joints
    if pose.shape[1] < n:
        pose = torch.cat([pose, pose.new_zeros(b, n - pose.shape[1])], 1)
    return pose[:, :n]


def _columns(fitter: MultiViewFitter, free) -> dict[str, Tensor]:  # noqa: ANN001
    """For each parameter, a long tensor shaped like it (without the leading 1 for the
    shared ones; (N,3) for the head pose) holding its column in the free vector, or -1."""
    p = fitter.params
    shapes = {
        "shape": (1, p.shape.shape[1]),
        "expression": (1, p.expression.shape[1]),
        "jaw_pose": (1, 3),
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


class CornerTerm:
    """A dense term whose K residuals each depend on one mesh triangle seen in two views
    (a, b; equal for single-view terms), as a batched function of the fitter's free
    parameter vector, with a Gauss-Newton linearisation by the chain rule.

    Subclasses give `error(ca, cb) -> (B,K,C)` (normalised residuals from the camera-space
    triangle corners (B,K,3,3) in views a and b) and the robust kernel via `eps`
    (Charbonnier) or `cauchy` (a scale: Cauchy / Lorentzian weights).
    """

    name: str = "dense"
    eps: float = 1e-3
    cauchy: float | None = None

    def __init__(
        self,
        fitter: MultiViewFitter,
        faces: np.ndarray,
        ia: np.ndarray,
        ib: np.ndarray,
        weight: np.ndarray,
        total_weight: float,
    ) -> None:
        dev = fitter.device
        corners = fitter.flame.faces[torch.as_tensor(faces, device=dev)]  # (K,3)
        ids, local = torch.unique(corners.reshape(-1), return_inverse=True)
        self.local = local.reshape(-1, 3)
        self.ia = torch.as_tensor(ia, device=dev).long()
        self.ib = torch.as_tensor(ib, device=dev).long()
        w = torch.as_tensor(weight, dtype=torch.float64, device=dev)
        self.w = w / w.sum().clamp_min(1e-9)
        self.rig = VertexRig(fitter.flame, ids)
        self.fitter = fitter
        self.total_weight = total_weight

    # -- to be provided -------------------------------------------------------------------
    def error(self, ca: Tensor, cb: Tensor) -> Tensor:
        raise NotImplementedError

    # -- machinery ---------------------------------------------------------------------------
    def corners(self, free, x: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        """x (B,P) -> camera-space corners (B,K,3,3) in views a and b."""
        f = self.fitter
        vals = f._values(free, x)
        betas = torch.cat([vals["shape"], vals["expression"]], 1)
        verts, joints = self.rig(betas, _pose_vector(f, vals["jaw_pose"]))
        b, n = vals["head_rot"].shape[:2]
        rot = axis_angle_to_matrix(vals["head_rot"].reshape(-1, 3)).reshape(b, n, 3, 3)
        pivot = joints[:, 0][:, None, None]  # (B,1,1,3)
        tri = verts[:, self.local] - pivot  # (B,K,3,3) model space about the pivot

        def posed(idx: Tensor) -> Tensor:
            r = rot[:, idx]  # (B,K,3,3)
            return (
                torch.einsum("bkij,bkcj->bkci", r, tri) + pivot + vals["head_trans"][:, idx, None]
            )

        return posed(self.ia), posed(self.ib)

    def errors(self, free, x: Tensor) -> Tensor:  # noqa: ANN001
        return self.error(*self.corners(free, x))

    def kernel(self, e: Tensor) -> Tensor:
        """(…,C) -> (…) robust loss rho."""
        sq = (e * e).sum(-1)
        if self.cauchy is not None:
            return 0.5 * self.cauchy**2 * torch.log1p(sq / self.cauchy**2)
        return torch.sqrt(sq + self.eps**2) - self.eps

    def irls(self, free, x: Tensor) -> Tensor:  # noqa: ANN001
        """(K,) IRLS weights rho'(|e|)/|e| at x (P,)."""
        e = self.errors(free, x[None])[0]
        sq = (e * e).sum(-1)
        if self.cauchy is not None:
            return 1.0 / (1.0 + sq / self.cauchy**2)
        return 1.0 / torch.sqrt(sq + self.eps**2)

    def _scale(self, irls: Tensor) -> Tensor:
        return torch.sqrt(self.total_weight * self.w * irls)

    def residuals(self, free, x: Tensor, irls: Tensor) -> Tensor:  # noqa: ANN001
        """x (B,P) -> (B,K*C) weighted residuals (their squares sum to the IRLS cost)."""
        e = self.errors(free, x)
        return (e * self._scale(irls)[None, :, None]).reshape(x.shape[0], -1)

    def value(self, free, x: Tensor) -> float:  # noqa: ANN001
        """The term's robust loss at x (P,)."""
        e = self.errors(free, x[None])[0]
        return float(self.total_weight * (self.w * self.kernel(e)).sum())

    def linearise(self, free, x: Tensor, irls: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        """Weighted residuals (K*C,) and their Jacobian (K*C,P) at x (P,), by the chain rule:
        the rig's vertex and pivot derivatives (one batched evaluation over the shape,
        expression and jaw entries) times the residual's derivatives w.r.t. its 18 corner
        coordinates and the two head poses (small finite-difference batches, float64)."""
        f = self.fitter
        cols = _columns(f, free)
        vals = f._values(free, x[None])
        n_b = vals["shape"].shape[1] + vals["expression"].shape[1]
        h = 1e-6
        # 1. Rig: vertices and pivot, and their derivatives w.r.t. betas and jaw.
        betas0 = torch.cat([vals["shape"], vals["expression"]], 1)[0]
        jaw0 = vals["jaw_pose"][0]
        m = n_b + 3
        dd = {"dtype": x.dtype, "device": x.device}
        pert = torch.eye(m, **dd) * h
        betas = torch.cat([betas0[None], betas0 + pert[:, :n_b]])
        jaw = torch.cat([jaw0[None], jaw0 + pert[:, n_b:]])
        verts, joints = self.rig(betas, _pose_vector(f, jaw))
        d_v = (verts[1:] - verts[0]) / h  # (M,S,3)
        d_p = (joints[1:, 0] - joints[0, 0]) / h  # (M,3)
        v, p = verts[0][self.local], joints[0, 0]  # (K,3,3), (3,)
        # 2. Pose: rotations and their derivatives w.r.t. the axis-angle entries.
        aa = vals["head_rot"][0]  # (N,3)
        n = aa.shape[0]
        aas = torch.cat([aa[None], aa[None] + torch.eye(3, **dd)[:, None] * h])
        rots = axis_angle_to_matrix(aas.reshape(-1, 3)).reshape(4, n, 3, 3)
        rot, d_rot = rots[0], (rots[1:] - rots[0]) / h  # (N,3,3), (3,N,3,3)
        t = vals["head_trans"][0]
        vc = v - p
        ca = torch.einsum("kij,kcj->kci", rot[self.ia], vc) + p + t[self.ia, None]
        cb = torch.einsum("kij,kcj->kci", rot[self.ib], vc) + p + t[self.ib, None]
        # 3. The residual's derivatives w.r.t. the 18 corner coordinates.
        k = ca.shape[0]
        hc = 1e-7
        eye18 = torch.eye(18, **dd).reshape(18, 2, 3, 3) * hc
        e = self.error(
            torch.cat([ca[None], ca[None] + eye18[:, 0, None]]),
            torch.cat([cb[None], cb[None] + eye18[:, 1, None]]),
        )  # (19,K,C)
        c_dim = e.shape[-1]
        dq = ((e[1:] - e[0]) / hc).permute(1, 2, 0).reshape(k, c_dim, 2, 3, 3)
        dqa, dqb = dq[:, :, 0], dq[:, :, 1]  # (K,C,corner,xyz)
        ra, rb = rot[self.ia], rot[self.ib]
        eye3 = torch.eye(3, **dd)
        dq_dv = torch.einsum("kcix,kxy->kciy", dqa, ra) + torch.einsum("kcix,kxy->kciy", dqb, rb)
        dq_dp = torch.einsum("kcix,kxy->kcy", dqa, eye3 - ra) + torch.einsum(
            "kcix,kxy->kcy", dqb, eye3 - rb
        )
        j_bj = torch.einsum("kciy,mkiy->kcm", dq_dv, d_v[:, self.local]) + torch.einsum(
            "kcy,my->kcm", dq_dp, d_p
        )
        dq_dta, dq_dtb = dqa.sum(2), dqb.sum(2)  # (K,C,3)
        dr_a = torch.einsum("jkxy,kiy->kixj", d_rot[:, self.ia], vc)  # (K,corner,xyz,j)
        dr_b = torch.einsum("jkxy,kiy->kixj", d_rot[:, self.ib], vc)
        dq_dwa = torch.einsum("kcix,kixj->kcj", dqa, dr_a)
        dq_dwb = torch.einsum("kcix,kixj->kcj", dqb, dr_b)
        # 4. Assemble (K,C,P) in the fitter's column order.
        jac = torch.zeros(k, c_dim, x.shape[0], **dd)
        bj_cols = torch.cat([cols["shape"][0], cols["expression"][0], cols["jaw_pose"][0]])
        ok = bj_cols >= 0
        jac[:, :, bj_cols[ok]] = j_bj[:, :, ok]
        for name, idx, d in (
            ("head_rot", self.ia, dq_dwa),
            ("head_rot", self.ib, dq_dwb),
            ("head_trans", self.ia, dq_dta),
            ("head_trans", self.ib, dq_dtb),
        ):
            c = cols[name][idx]  # (K,3)
            okc = (c >= 0)[:, None, :].expand(-1, c_dim, -1)
            jac.scatter_add_(2, c.clamp_min(0)[:, None, :].expand(-1, c_dim, -1), d * okc)
        sc = self._scale(irls)  # (K,)
        r = (e[0] * sc[:, None]).reshape(-1)
        jac = jac * sc[:, None, None]
        return r, jac.reshape(k * c_dim, -1)


class _FlowTerm(CornerTerm):
    """The flow correspondences of one round (eq. 6 as transfer errors, `flow.flow_loss`)."""

    name = "flow"
    eps = fl.FLOW_EPS

    def __init__(self, fitter: MultiViewFitter, pair_flows: list[fl.PairFlow], weight: float):
        cat = lambda key: np.concatenate([getattr(pf, key) for pf in pair_flows])  # noqa: E731
        ia = np.concatenate([np.full(len(pf.faces), pf.a) for pf in pair_flows])
        ib = np.concatenate([np.full(len(pf.faces), pf.b) for pf in pair_flows])
        super().__init__(fitter, cat("faces"), ia, ib, cat("weight"), weight * fl.FLOW_POINTS)
        f64, dev = torch.float64, fitter.device
        self.q_a = torch.as_tensor(cat("anchor_a"), dtype=f64, device=dev)
        self.target = torch.as_tensor(cat("target_b"), dtype=f64, device=dev)
        self.scale_b = fitter.scale.to(f64)[self.ib]
        cam = fitter.camera.to(f64)
        self.cam_a, self.cam_b = cam[self.ia], cam[self.ib]

    def error(self, ca: Tensor, cb: Tensor) -> Tensor:
        qb = fl.transfer_points(ca, cb, self.cam_a, self.cam_b, self.q_a)
        return (qb - self.target) / self.scale_b[:, None]


@torch.no_grad()
def _lm_dense(
    fitter: MultiViewFitter, terms: list[CornerTerm], iterations: int
) -> dict[str, float]:
    """Levenberg-Marquardt on the landmark residuals plus dense terms (IRLS per iteration)."""
    free = fitter.free_entries("fine")
    x = fitter._gather(free).double()
    yaw = fitter.contour_yaw()
    mask = torch.ones_like(fitter.lm_weights)
    h = 1e-6
    eye = torch.eye(x.shape[0], dtype=x.dtype, device=x.device) * h
    mu = 1e-3
    cost = float("nan")

    def resid(xb: Tensor, irls_l, irls_d) -> Tensor:  # noqa: ANN001
        parts = [fitter.residuals(free, xb, yaw, irls_l, mask)]
        parts += [t.residuals(free, xb, w) for t, w in zip(terms, irls_d, strict=True)]
        return torch.cat(parts, 1)

    for _ in range(iterations):
        irls_l = fitter._irls(free, x, yaw)
        irls_d = [t.irls(free, x) for t in terms]
        r_all = fitter.residuals(free, torch.cat([x[None], x[None] + eye]), yaw, irls_l, mask)
        lin = [t.linearise(free, x, w) for t, w in zip(terms, irls_d, strict=True)]
        r = torch.cat([r_all[0], *[li[0] for li in lin]])
        jac = torch.cat([((r_all[1:] - r_all[0]) / h).T, *[li[1] for li in lin]])
        x, cost, mu, improved = lm_step(
            x, r, jac, lambda v, a=irls_l, b=irls_d: resid(v[None], a, b)[0], mu
        )
        if not improved:
            break
    vals = fitter._values(free, x[None])
    for name, _ in free:
        getattr(fitter.params, name).copy_(vals[name][0].to(fitter.dtype))
    return {"cost": cost, **{t.name: t.value(free, x) for t in terms}}


def _views(
    fitter: MultiViewFitter, photos: list[np.ndarray], size: int, face_tri: np.ndarray
) -> list[fl.ViewRender]:
    with torch.no_grad():
        ev = fitter.evaluate(with_vertices=True)
    return fl.render_views(
        ev["vertices_cam"],
        fitter.camera,
        fitter.flame.faces,
        face_tri,
        photos,
        ev["landmarks_px"],
        fitter.contour_yaw(),
        size,
    )


def refine_dense(
    fitter: MultiViewFitter,
    photos: list[np.ndarray],
    options: DenseOptions | None = None,
    progress: ProgressFn | None = None,
    view_names: list[str] | None = None,
) -> DenseReport:
    """Continues the landmark fit with the dense terms; updates `fitter.params` in place.

    photos: the N views' (H,W,3) uint8 RGB images, in the fitter's view order and at the
    resolution its intrinsics describe. Which stages run follows `options.losses` ("flow",
    "photo"); with neither, only the report is made. view_names label the overlays.
    """
    o = options or DenseOptions()
    report = progress or (lambda f, m: None)
    if len(photos) != fitter.n_views:
        raise ValueError(f"{len(photos)} photos for a fit of {fitter.n_views} views")
    names = view_names or [f"view{i}" for i in range(fitter.n_views)]
    faces_np = fitter.flame.faces.cpu().numpy()
    face_tri = fl.face_faces(faces_np, fitter.flame.assets.face_region)
    lam = o.flow_weight * fitter.options.weights.flow
    timings: dict[str, float] = {}
    history: list[dict[str, float]] = []
    pairs_before: list[dict[str, float]] = []
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        use_flow = "flow" in o.losses and fitter.n_views > 1
        last_flow = None
        if use_flow:
            for rnd in range(o.rounds):
                report(rnd / (o.rounds + 1), f"optical flow, round {rnd + 1}/{o.rounds}")
                views = _views(fitter, photos, o.flow.size, face_tri)
                pfs = fl.all_pair_flows(views, fitter.flame.faces, o.flow, seed=o.seed + rnd)
                if rnd == 0:
                    pairs_before = [dict(pf.stats, a=pf.a, b=pf.b) for pf in pfs]
                if not pfs:
                    break
                last_flow = _FlowTerm(fitter, pfs, lam)
                stats = _lm_dense(fitter, [last_flow], o.iterations)
                history.append({"stage": f"flow{rnd + 1}", **stats})  # type: ignore[dict-item]
        timings["flow"] = round(time.perf_counter() - t0, 4)
        if "photo" in o.losses:
            from mfnet_core.fit.photometric import refine_photometric

            t1 = time.perf_counter()
            report(o.rounds / (o.rounds + 1), "photometric refinement")
            ph = refine_photometric(fitter, photos, o, face_tri, [last_flow] if last_flow else [])
            history.extend(ph)
            timings["photo"] = round(time.perf_counter() - t1, 4)
        if not o.report:
            with torch.no_grad():
                _total, parts = fitter.objective()
            for h in history:
                for key in ("flow", "photo"):
                    if key in h:
                        parts[key] = float(h[key])
            parts["total"] = float(sum(v for k, v in parts.items() if k != "total"))
            return DenseReport(
                loss_terms={k: round(v, 6) for k, v in parts.items()},
                views=[],
                pairs=[],
                images={},
                timings_s=timings,
                history=history,
            )
        t2 = time.perf_counter()
        out = _final_report(fitter, photos, o, names, face_tri, lam, pairs_before)
        timings["report"] = round(time.perf_counter() - t2, 4)
        out.timings_s = {**timings, **out.timings_s}
        out.history = history
        return out
    finally:
        torch.set_num_threads(threads)


def _final_report(
    fitter: MultiViewFitter,
    photos: list[np.ndarray],
    o: DenseOptions,
    names: list[str],
    face_tri: np.ndarray,
    lam: float,
    pairs_before: list[dict[str, float]],
) -> DenseReport:
    """Eq. 6 at the final mesh, every term's value, PSNR / SSIM per view, pictures."""
    from mfnet_core.fit.photometric import view_quality

    views = _views(fitter, photos, o.flow.size, face_tri)
    pfs = (
        fl.all_pair_flows(views, fitter.flame.faces, o.flow, seed=o.seed + 99)
        if fitter.n_views > 1
        else []
    )
    extra = dict(fitter.extra_terms)
    if "flow" in o.losses:
        fitter.extra_terms["flow"] = lambda ev: fl.flow_loss(
            ev["vertices_cam"], fitter.camera, fitter.flame.faces, pfs, fitter.scale, lam
        )
    try:
        with torch.no_grad():
            _total, parts = fitter.objective()
    finally:
        fitter.extra_terms = extra
    t_q = time.perf_counter()
    quality = view_quality(fitter, photos, o.report_size, face_tri)
    if "photo" in o.losses:
        # mean robust RGB error inside the face masks (Charbonnier, [0,1] units), x lambda
        parts["photo"] = o.photo_weight * float(np.mean([q["photo_loss"] for q in quality]))
    parts["total"] = float(sum(v for k, v in parts.items() if k != "total"))
    by_key = {(p["a"], p["b"]): p for p in pairs_before}
    pairs = []
    for pf in pfs:
        before = by_key.get((pf.a, pf.b), {})
        entry = {
            "from": names[pf.a],
            "to": names[pf.b],
            "covisible_px": pf.stats["covisible_px"],
            "consistent_frac": round(pf.stats["consistent_frac"], 4),
            "mean_flow_px": round(pf.stats["mean_flow_px"], 4),
            "median_flow_px": round(pf.stats["median_flow_px"], 4),
        }
        if "mean_flow_px" in before:
            entry["mean_flow_px_before"] = round(before["mean_flow_px"], 4)
            entry["median_flow_px_before"] = round(before["median_flow_px"], 4)
        pairs.append(entry)
    images: dict[str, np.ndarray] = {}
    for i, q in enumerate(quality):
        pic = q.pop("image", None)
        if o.images and pic is not None:
            images[f"rerender_{names[i]}"] = pic
    if o.images:
        for pf in pfs:
            images[f"flow_{names[pf.a]}_to_{names[pf.b]}"] = fl.pair_panel(
                views[pf.b], pf, (names[pf.a], names[pf.b])
            )
    return DenseReport(
        loss_terms={k: round(v, 6) for k, v in parts.items()},
        views=[{"name": names[i], **q} for i, q in enumerate(quality)],
        pairs=pairs,
        images=images,
        timings_s={"quality": round(time.perf_counter() - t_q, 4)},
        history=[],
    )
