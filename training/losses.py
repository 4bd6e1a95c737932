"""Eq. 11 for a batch of people, from the same functions the test-time fit uses.

L = l1 L_multiop + l2 L_singlelmk + l3 L_eye + l4 L_lip + l5 L_reg with the paper's lambdas
(1, 1, 1, 0.5, 1e-4). The landmark terms are ``mfnet_core.losses.landmark_loss`` and
``offset_loss``, which sum over a person's views; every term is averaged over the B people
of the batch (so DDP's averaging of gradients over equal local batches equals the gradient
of the global batch); L_reg is ``mfnet_core.losses.regularisation`` of shape, expression
and albedo. lambda_5 is the paper's 1e-4 (``mfnet_core.losses.PAPER_REG``); the test-time
fit uses a stronger prior (``LossWeights.reg``) because one photo has far less evidence
than a training set.

L_multiop (eq. 6) comes from ``mfnet_core.flow`` when that module provides it (see
``resolve_flow_term``); until then the term is left out and ``flow_status`` says so.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mfnet_core.losses import EYELID_PAIRS, LIP_PAIRS, landmark_loss, offset_loss, regularisation
from mfnet_core.model import Decoded, MFNetOutput

from .config import LossConfig

FlowTerm = Callable[..., Tensor]


@dataclass
class FlowStatus:
    active: bool
    message: str


def resolve_flow_term(cfg: LossConfig) -> tuple[FlowTerm | None, FlowStatus]:
    """The multi-view flow loss (eq. 6) if ``mfnet_core.flow`` offers a batch function.

    Looked for: ``mfnet_core.flow.multiview_flow_loss(images, vertices_cam, camera, faces,
    landmarks_px)`` with images (B,N,3,H,W) in [0,1], vertices_cam (B,N,V,3), camera (B,N,4)
    crop intrinsics, faces (F,3), landmarks_px (B,N,68,2) -> scalar (mean over view pairs).
    """
    if not cfg.use_flow or cfg.flow == 0:
        return None, FlowStatus(False, "multi-view flow term (lambda_1) switched off by the config")
    try:
        from mfnet_core import flow  # type: ignore[attr-defined]
    except ImportError:
        return None, FlowStatus(
            False,
            "mfnet_core.flow is not available: the multi-view flow term (lambda_1) is left out",
        )
    fn = getattr(flow, "multiview_flow_loss", None)
    if fn is None:
        return None, FlowStatus(
            False,
            "mfnet_core.flow has no multiview_flow_loss(images, vertices_cam, camera, faces, "
            "landmarks_px): the multi-view flow term (lambda_1) is left out",
        )
    params = list(inspect.signature(fn).parameters)
    if params[:2] != ["images", "vertices_cam"]:
        return None, FlowStatus(
            False,
            f"mfnet_core.flow.multiview_flow_loss has an unexpected signature {params}: flow term left out",
        )
    return fn, FlowStatus(True, "multi-view flow term (lambda_1) from mfnet_core.flow")


def mfnet_loss(
    out: MFNetOutput,
    dec: Decoded,
    batch: dict[str, Tensor],
    cfg: LossConfig,
    faces: Tensor | None = None,
    flow_term: FlowTerm | None = None,
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
    if flow_term is not None and dec.vertices_cam is not None and faces is not None:
        terms["flow"] = cfg.flow * flow_term(
            images=batch["images"],
            vertices_cam=dec.vertices_cam,
            camera=batch["camera"],
            faces=faces,
            landmarks_px=dec.landmarks_px,
        )
    total = torch.stack(list(terms.values())).sum()
    return total, terms
