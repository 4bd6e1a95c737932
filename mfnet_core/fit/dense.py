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

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mfnet_core.fit import flow as fl
from mfnet_core.fit.corner_term import CornerTerm
from mfnet_core.fit.landmark_fit import MultiViewFitter
from mfnet_core.fit.photometric import refine_photometric, view_quality
from mfnet_core.fit.plan import DEFAULT_LOSSES, uses
from mfnet_core.fit.solver import one_thread

__all__ = [
    "DenseOptions",
    "DenseReport",
    "DenseRounds",
    "FlowTerm",
    "dense_report",
    "refine_dense",
    "run_dense_rounds",
]

ProgressFn = Callable[[float, str], None]
# threads for the rounds' pair flows (their torch ops run on one thread: solver.one_thread)
FLOW_WORKERS = min(2, os.cpu_count() or 1)


@dataclass
class DenseOptions:
    """Knobs of the dense stages. `losses` decides which run ("flow", "photo")."""

    losses: tuple[str, ...] = DEFAULT_LOSSES
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
    pairs_skipped: list[dict[str, str]] = field(default_factory=list)  # from, to, reason


class FlowTerm(CornerTerm):
    """The flow correspondences of one round (eq. 6 as transfer errors, `flow.flow_loss`)."""

    name = "flow"
    eps = fl.FLOW_EPS
    row_fields = ("q_a", "target", "scale_b", "cam_a", "cam_b")

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


def _views(
    fitter: MultiViewFitter, photos: list[np.ndarray], size: int, face_tri: np.ndarray
) -> list[fl.ViewRender]:
    with torch.no_grad():
        ev = fitter.evaluate(with_vertices=True)
    return fl.render_views(
        ev["vertices_cam"],
        fitter.camera,
        fitter.head.faces,
        face_tri,
        photos,
        ev["landmarks_px"],
        fitter.contour_yaw(),
        size,
        workers=FLOW_WORKERS,
    )


@dataclass
class DenseRounds:
    """What the dense rounds leave for their report (`dense_report`): the report needs only
    the fitted parameters and this, so it can run beside the texture bake."""

    options: DenseOptions
    names: list[str]
    face_tri: np.ndarray
    lam: float
    pairs_before: list[dict[str, float]]
    history: list[dict[str, float]]
    timings_s: dict[str, float]


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
    rounds = run_dense_rounds(fitter, photos, options, progress, view_names)
    return dense_report(fitter, photos, rounds)


def run_dense_rounds(
    fitter: MultiViewFitter,
    photos: list[np.ndarray],
    options: DenseOptions | None = None,
    progress: ProgressFn | None = None,
    view_names: list[str] | None = None,
) -> DenseRounds:
    """`refine_dense` without its report: the flow rounds (and the photometric stage)."""
    o = options or DenseOptions()
    report = progress or (lambda f, m: None)
    if len(photos) != fitter.n_views:
        raise ValueError(f"{len(photos)} photos for a fit of {fitter.n_views} views")
    names = view_names or [f"view{i}" for i in range(fitter.n_views)]
    fitter.hold_expression_departures(fitter.options.dense_expression_coupling)
    faces_np = fitter.head.faces.cpu().numpy()
    face_tri = fl.face_faces(faces_np, fitter.head.face_region)
    lam = o.flow_weight * fitter.options.weights.flow
    timings: dict[str, float] = {}
    history: list[dict[str, float]] = []
    pairs_before: list[dict[str, float]] = []
    t0 = time.perf_counter()
    with one_thread():
        use_flow = uses(o.losses, "flow") and fitter.n_views > 1
        last_flow = None
        if use_flow:
            for rnd in range(o.rounds):
                report(rnd / (o.rounds + 1), f"optical flow, round {rnd + 1}/{o.rounds}")
                views = _views(fitter, photos, o.flow.size, face_tri)
                pfs = fl.all_pair_flows(
                    views, fitter.head.faces, o.flow, seed=o.seed + rnd, workers=FLOW_WORKERS
                )
                if rnd == 0:
                    pairs_before = [dict(pf.stats, a=pf.a, b=pf.b) for pf in pfs]
                if not pfs:
                    break
                last_flow = FlowTerm(fitter, pfs, lam)
                stats = fitter.refine_with([last_flow], o.iterations)
                history.append({"stage": f"flow{rnd + 1}", **stats})  # type: ignore[dict-item]
        timings["flow"] = round(time.perf_counter() - t0, 4)
        if uses(o.losses, "photo"):
            t1 = time.perf_counter()
            report(o.rounds / (o.rounds + 1), "photometric refinement")
            ph = refine_photometric(fitter, photos, o, face_tri, [last_flow] if last_flow else [])
            history.extend(ph)
            timings["photo"] = round(time.perf_counter() - t1, 4)
    return DenseRounds(o, names, face_tri, lam, pairs_before, history, timings)


def dense_report(
    fitter: MultiViewFitter, photos: list[np.ndarray], rounds: DenseRounds
) -> DenseReport:
    """The dense stages' report at the fitter's current parameters (`DenseOptions.report`:
    final flow, PSNR / SSIM and pictures; off: only every term's value). Reads the fitter
    and leaves it as it was."""
    o, history, timings = rounds.options, rounds.history, rounds.timings_s
    with one_thread():
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
                timings_s=dict(timings),
                history=history,
            )
        t2 = time.perf_counter()
        out = _final_report(
            fitter, photos, o, rounds.names, rounds.face_tri, rounds.lam, rounds.pairs_before
        )
        out.timings_s = {**timings, "report": round(time.perf_counter() - t2, 4), **out.timings_s}
        out.history = history
        return out


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
    views = _views(fitter, photos, o.flow.size, face_tri)
    skipped: list[tuple[int, int, str]] = []
    pfs = (
        fl.all_pair_flows(views, fitter.head.faces, o.flow, seed=o.seed + 99, skipped=skipped)
        if fitter.n_views > 1
        else []
    )
    extra = dict(fitter.extra_terms)
    if uses(o.losses, "flow"):
        fitter.extra_terms["flow"] = lambda ev: fl.flow_loss(
            ev["vertices_cam"], fitter.camera, fitter.head.faces, pfs, fitter.scale, lam
        )
    try:
        with torch.no_grad():
            _total, parts = fitter.objective()
    finally:
        fitter.extra_terms = extra
    t_q = time.perf_counter()
    # the flow renders above already picked each pixel's face at the final mesh
    picks = [v.fragments.face_index for v in views] if o.flow.size == o.report_size else None
    quality = view_quality(fitter, photos, o.report_size, face_tri, face_index=picks)
    if uses(o.losses, "photo"):
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
        pairs_skipped=[{"from": names[a], "to": names[b], "reason": r} for a, b, r in skipped],
        images=images,
        timings_s={"quality": round(time.perf_counter() - t_q, 4)},
        history=[],
    )
