"""The paper's losses (MFNet eq. 6-11) as plain functions.

Landmarks are compared in face-normalised coordinates (pixels divided by half the detected
face size, as DECA's crop normalises them), so the paper's lambdas mean the same thing for a
400 px and a 4000 px photo.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mfnet_core.fit.solver import charbonnier

# The eyelid (eq. 8) and lip (eq. 9) pairs live with the rest of the iBUG-68 scheme.

__all__ = ["landmark_loss", "offset_loss", "regularisation"]

# Charbonnier epsilon in face-normalised units (~0.15 px on a 300 px face).
EPS = 1e-3


def landmark_loss(predicted: Tensor, detected: Tensor, weights: Tensor, scale: Tensor) -> Tensor:
    """Single-view landmark loss, eq. 7, summed over views (more views = more evidence
    against the same prior, which is what makes one photo need a stronger prior).

    predicted, detected: (N,68,2) pixels; weights: (N,68) (0 for landmarks outside the face
    mask MF or rejected as outliers); scale: (N,) half the face size in pixels.
    """
    residual = (predicted - detected) / scale[:, None, None]
    return (weights * charbonnier(residual, EPS)).sum()


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
    return (w * charbonnier((d_pred - d_det) / scale[:, None, None], EPS)).sum()


def regularisation(shape: Tensor, expression: Tensor, albedo: Tensor | None = None) -> Tensor:
    """Eq. 10 as squared norms (coefficients are in units of standard deviations)."""
    reg = (shape * shape).sum() + (expression * expression).sum()
    if albedo is not None:
        reg = reg + (albedo * albedo).sum()
    return reg
