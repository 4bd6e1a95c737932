"""Eq. 11 for a batch of people, from the same functions the test-time fit uses.

L = l1 L_multiop + l2 L_singlelmk + l3 L_eye + l4 L_lip + l5 L_reg with the paper's lambdas
(1, 1, 1, 0.5, 1e-4). The landmark terms are ``mfnet_core.fit.losses.landmark_loss`` and
``offset_loss``, which sum over a person's views; every term is averaged over the B people
of the batch (so DDP's averaging of gradients over equal local batches equals the gradient
of the global batch); L_reg is ``mfnet_core.fit.losses.regularisation`` of shape, expression
and albedo. lambda_5 is the paper's 1e-4 (``mfnet_core.fit.plan.PAPER_REG``); the test-time
fit uses a stronger prior (``LossWeights.reg``) because one photo has far less evidence
than a training set.

L_multiop (eq. 6) comes from ``mfnet_core.fit.flow`` when that module provides it (see
``resolve_flow_term``); otherwise the term is left out and the run's log, checkpoint and
smoke JSON say so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from mfnet_core.camera import yaw_pitch_roll_deg
from mfnet_core.fit.losses import landmark_loss, offset_loss, regularisation
from mfnet_core.inputs.landmarks import EYELID_PAIRS, LIP_PAIRS
from mfnet_core.network.mfnet import Decoded, MFNetOutput

from .config import LossConfig
from .interrupt import ignore_ctrl_c

# (batch, decoded, per-view face scale (B*N,), step) -> scalar
FlowTerm = Callable[[dict[str, Tensor], Decoded, Tensor, int], Tensor]


@dataclass
class FlowStatus:
    active: bool
    message: str


def flow_worker_count(configured: int, batch: int, network_on_gpu: bool) -> int:
    """Processes that make the per-person flow targets (0 in ``configured``: automatic).

    The targets come from the CPU (rasteriser, OpenCV DIS) and take ~90% of a step when
    the network runs on a GPU; threads do not help (the rasteriser's many small torch ops
    hold the GIL), processes do. Automatic: one per CPU core (shared by the processes of
    this machine under torchrun) when the network is on a GPU, else none, since a CPU
    network needs the cores itself.
    """
    if configured > 0:
        return max(1, min(configured, batch))
    if not network_on_gpu:
        return 1
    local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min((os.cpu_count() or 1) // local_world, batch, 32))


_WORKER_CONTEXT: dict[str, Any] = {}


def _flow_worker_init(
    faces: np.ndarray, face_tri: np.ndarray, size: int, opts: Any, one_thread: bool = True
) -> None:
    """Per process: one core each (no nested thread pools), the mesh and options kept;
    Ctrl-C is the parent's to handle (``training.interrupt``)."""
    ignore_ctrl_c()
    if one_thread:
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
    _WORKER_CONTEXT.update(faces=faces, face_tri=face_tri, size=size, opts=opts)


def person_flow_targets(task: tuple, context: dict[str, Any] | None = None) -> list:
    """Flow correspondences of one person: render the predicted mesh in each view, then
    I_{a->b}, MC and DIS for every ordered pair. Only the correspondences come back (the
    pictures are for overlays, not for the loss).

    task: (vertices_cam (N,V,3), camera (N,4), images (N,S,S,3) uint8, landmarks (N,68,2),
    yaw (N,) degrees, seed) as numpy arrays.
    """
    from mfnet_core.fit import flow as mflow

    ctx = context if context is not None else _WORKER_CONTEXT
    verts, cams, imgs, lmks, yaw, seed = task
    faces_t = torch.as_tensor(ctx["faces"], dtype=torch.long)
    views = mflow.render_views(
        torch.from_numpy(verts),
        torch.from_numpy(cams),
        faces_t,
        ctx["face_tri"],
        list(imgs),
        lmks,
        yaw,
        size=ctx["size"],
    )
    pairs = mflow.all_pair_flows(views, faces_t, ctx["opts"], seed=seed)
    empty = np.zeros(0, np.float32)
    return [
        replace(p, warped=empty, valid=empty, box=empty, mask=empty, flow=empty, consistent=empty)
        for p in pairs
    ]


def flow_context(
    faces: np.ndarray,
    face_region: np.ndarray,
    crop_size: int,
    flow_samples: int,
    flow_size: int = 0,
) -> dict[str, Any]:
    """What every person's flow targets share: the mesh, its face-region triangles and the
    flow options at the working resolution (``flow_size`` px, else the crop's; the targets
    come back in crop pixels either way)."""
    from mfnet_core.fit import flow as mflow

    size = min(flow_size, crop_size) if flow_size > 0 else crop_size
    opts = mflow.FlowOptions(
        size=size,
        stride=max(1, size // 64),
        max_samples=flow_samples,
        erode_px=1,
        valid_erode_px=2,
    )
    face_tri = mflow.face_faces(faces, face_region)
    return {"faces": np.asarray(faces), "face_tri": face_tri, "size": size, "opts": opts}


def flow_target_pool(
    workers: int, context: dict[str, Any], one_thread: bool = True
) -> ProcessPoolExecutor:
    """Spawned processes (the parent may hold a CUDA context) that run
    ``person_flow_targets`` with ``context`` set once per process, each on one thread
    unless ``one_thread`` is False (for measuring what that costs)."""
    import multiprocessing as mp

    return ProcessPoolExecutor(
        workers,
        mp_context=mp.get_context("spawn"),
        initializer=_flow_worker_init,
        initargs=(
            context["faces"],
            context["face_tri"],
            context["size"],
            context["opts"],
            one_thread,
        ),
    )


def flow_tasks(batch: dict[str, Tensor], dec: Decoded, step: int) -> list[tuple]:
    """One ``person_flow_targets`` task per person of the batch, as CPU numpy arrays.

    Seeded by the sample's index and the step, not by its place in the batch, so every
    process and every worker count makes the same targets."""
    assert dec.vertices_cam is not None
    b, n = dec.landmarks_px.shape[:2]
    yaw = yaw_pitch_roll_deg(dec.rotation.detach().reshape(-1, 3, 3))[:, 0].view(b, n)
    imgs = (batch["images"].detach().float().clamp(0, 1) * 255).round().byte()
    imgs = imgs.permute(0, 1, 3, 4, 2).cpu().numpy()  # (B,N,S,S,3)
    verts = dec.vertices_cam.detach().float().cpu().numpy()
    cams = batch["camera"].detach().float().cpu().numpy()
    lmks = dec.landmarks_px.detach().float().cpu().numpy()
    yaws = yaw.float().cpu().numpy()
    index = batch["index"].cpu().tolist() if "index" in batch else None
    seeds = [step * 100_003 + int(index[i]) if index is not None else step for i in range(b)]
    return [(verts[i], cams[i], imgs[i], lmks[i], yaws[i], seeds[i]) for i in range(b)]


def resolve_flow_term(
    cfg: LossConfig,
    faces: np.ndarray,
    face_region: np.ndarray,
    crop_size: int,
    network_on_gpu: bool = False,
) -> tuple[FlowTerm | None, FlowStatus]:
    """The multi-view flow loss (eq. 6) from ``mfnet_core.fit.flow``, when it is there.

    Per person in the batch: the predicted mesh is rendered in each view's crop
    (``render_views``), every ordered view pair gets I_{a->b}, the covisible mask MC (eq. 5)
    and a DIS flow (``all_pair_flows``), and ``flow_loss`` turns the flow into fixed
    correspondence targets that are differentiable through the posed vertices. The batch
    term is the mean over people. The flow estimator itself is not differentiated (see
    mfnet_core/flow.py for why).
    """
    if not cfg.use_flow or cfg.flow == 0:
        return None, FlowStatus(False, "multi-view flow term (lambda_1) switched off by the config")
    try:
        from mfnet_core.fit import flow as mflow
    except ImportError:
        return None, FlowStatus(
            False,
            "mfnet_core.fit.flow is not available: the multi-view flow term (lambda_1) is left out",
        )
    needed = ("render_views", "all_pair_flows", "flow_loss", "face_faces", "FlowOptions")
    missing = [n for n in needed if not hasattr(mflow, n)]
    if missing:
        return None, FlowStatus(
            False,
            f"mfnet_core.fit.flow lacks {missing}: the multi-view flow term (lambda_1) is left out",
        )
    context = flow_context(faces, face_region, crop_size, cfg.flow_samples, cfg.flow_size)
    pool: list[ProcessPoolExecutor] = []  # made on first use, shared by the steps
    faces_on: dict[torch.device, Tensor] = {}

    def targets_for_batch(tasks: list[tuple]) -> list[list]:
        workers = flow_worker_count(cfg.flow_workers, len(tasks), network_on_gpu)
        if workers <= 1:
            return [person_flow_targets(t, context) for t in tasks]
        if not pool:
            pool.append(flow_target_pool(workers, context))
        return list(pool[0].map(person_flow_targets, tasks))

    def term(batch: dict[str, Tensor], dec: Decoded, scale: Tensor, step: int) -> Tensor:
        assert dec.vertices_cam is not None
        b, n = dec.landmarks_px.shape[:2]
        tasks = flow_tasks(batch, dec, step)
        per_person = targets_for_batch(tasks)
        total = dec.vertices_cam.new_zeros(())
        dev = dec.vertices_cam.device
        if dev not in faces_on:  # once per device, not every step
            faces_on[dev] = torch.as_tensor(faces, dtype=torch.long, device=dev)
        faces_dev = faces_on[dev]
        for i, pairs in enumerate(per_person):
            cam = batch["camera"][i].to(dec.vertices_cam)
            total = total + mflow.flow_loss(
                dec.vertices_cam[i], cam, faces_dev, pairs, scale.view(b, n)[i]
            )
        return total / b

    def close() -> None:
        if pool:
            pool.pop().shutdown(cancel_futures=True)

    term.close = close  # type: ignore[attr-defined]

    return term, FlowStatus(
        True, "multi-view flow term (lambda_1) from mfnet_core.fit.flow (DIS flow, eq. 5-6)"
    )


def mfnet_loss(
    out: MFNetOutput,
    dec: Decoded,
    batch: dict[str, Tensor],
    cfg: LossConfig,
    flow_term: FlowTerm | None = None,
    step: int = 0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its weighted terms for B people x N views.

    batch: ``landmarks`` (B,N,68,2) and ``lmk_weights`` (B,N,68) in crop pixels (plus
    ``images`` and ``camera`` for the flow term). Returns (total, {term: weighted value}).
    """
    b, n = dec.landmarks_px.shape[:2]
    pred = dec.landmarks_px.reshape(b * n, -1, 2)
    det = batch["landmarks"].reshape(b * n, -1, 2).to(pred)
    w = batch["lmk_weights"].reshape(b * n, -1).to(pred)
    extent = (det.amax(1) - det.amin(1)).amax(-1)  # (BN,) face size in crop pixels
    scale = (0.5 * extent).clamp_min(1.0)
    terms: dict[str, Tensor] = {}
    # mfnet_core sums over views; per person (sum over its N views), mean over people.
    terms["landmarks"] = cfg.landmarks * landmark_loss(pred, det, w, scale) / b
    terms["eye"] = cfg.eye * offset_loss(pred, det, EYELID_PAIRS, w, scale) / b
    terms["lip"] = cfg.lip * offset_loss(pred, det, LIP_PAIRS, w, scale) / b
    albedo = out.albedo.float().reshape(b, -1)
    terms["reg"] = cfg.reg * regularisation(out.shape.float(), out.expression.float(), albedo) / b
    if flow_term is not None and dec.vertices_cam is not None and step >= cfg.flow_start_step:
        terms["flow"] = cfg.flow * flow_term(batch, dec, scale, step)
    total = torch.stack(list(terms.values())).sum()
    return total, terms
