"""The paper's losses (MFNet eq. 6-11) as plain functions.

Landmarks are compared in face-normalised coordinates (pixels divided by half the detected
face size, as DECA's crop normalises them), so the paper's lambdas mean the same thing for a
400 px and a 4000 px photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# The eyelid (eq. 8) and lip (eq. 9) pairs live with the rest of the iBUG-68 scheme.
from mfnet_core.inputs.landmarks import EYELID_PAIRS, LIP_PAIRS

__all__ = [
    "EYELID_PAIRS",
    "LIP_PAIRS",
    "PAPER_REG",
    "LossWeights",
    "landmark_loss",
    "offset_loss",
    "outlier_weights",
    "regularisation",
    "robust_l1",
]

PAPER_REG = 1e-4


@dataclass(frozen=True)
class LossWeights:
    """Eq. 11's lambdas: multiop 1, singlelmk 1, eye 1, lip 0.5 as in the paper.

    The regulariser's lambda is the exception for test-time fitting: with landmark residuals
    in face-normalised units, the paper's 1e-4 (PAPER_REG, the training default) lets one
    photo's fit run to expression coefficients of +-12 std; 1e-2 gave the lowest error on the
    synthetic benchmark for 1 and 3 views (docs/BENCHMARKS.md, "Regulariser weight").
    """

    flow: float = 1.0
    landmarks: float = 1.0
    eye: float = 1.0
    lip: float = 0.5
    reg: float = 1e-2
    photo: float = 1.0


def robust_l1(residual: Tensor, eps: float = 1e-3) -> Tensor:
    """Charbonnier: a smooth L1 of (…,2) residual vectors -> (…)."""
    return torch.sqrt((residual * residual).sum(-1) + eps * eps) - eps


def landmark_loss(predicted: Tensor, detected: Tensor, weights: Tensor, scale: Tensor) -> Tensor:
    """Single-view landmark loss, eq. 7, summed over views (more views = more evidence
    against the same prior, which is what makes one photo need a stronger prior).

    predicted, detected: (N,68,2) pixels; weights: (N,68) (0 for landmarks outside the face
    mask MF or rejected as outliers); scale: (N,) half the face size in pixels.
    """
    residual = (predicted - detected) / scale[:, None, None]
    return (weights * robust_l1(residual)).sum()


def offset_loss(
    predicted: Tensor,
    detected: Tensor,
    pairs: tuple[tuple[int, int], ...],
    weights: Tensor,
    scale: Tensor,
) -> Tensor:
    """Relative-offset loss of eq. 8 (eyelids) and eq. 9 (lips).

    Compares k(i) - k(j) between detection and projection, which ignores a shared shift of
    the pair; predicted, detected: (N,68,2); weights: (N,68); scale: (N,).
    """
    i = torch.tensor([p[0] for p in pairs], device=predicted.device)
    j = torch.tensor([p[1] for p in pairs], device=predicted.device)
    d_pred = predicted[:, i] - predicted[:, j]
    d_det = detected[:, i] - detected[:, j]
    w = weights[:, i] * weights[:, j]
    return (w * robust_l1((d_pred - d_det) / scale[:, None, None])).sum()


def regularisation(shape: Tensor, expression: Tensor, albedo: Tensor | None = None) -> Tensor:
    """Eq. 10 as squared norms (coefficients are in units of standard deviations)."""
    reg = (shape * shape).sum() + (expression * expression).sum()
    if albedo is not None:
        reg = reg + (albedo * albedo).sum()
    return reg


def outlier_weights(
    residual_px: Tensor, scale: Tensor, k: float = 3.0, floor: float = 0.03
) -> Tensor:
    """Down-weights landmarks far off the fit, for robustness to a few wrong detections.

    residual_px: (N,68) residual lengths in pixels; scale: (N,) half the face size in pixels.
    A landmark beyond k times the median residual (and beyond `floor` of the face size)
    gets a weight that falls off as a Cauchy kernel; the rest keep weight 1.
    """
    med = residual_px.median(dim=1, keepdim=True).values
    threshold = torch.maximum(k * med, floor * scale[:, None])
    ratio = residual_px / threshold
    return torch.where(ratio > 1, 1.0 / (ratio * ratio), torch.ones_like(ratio))
