"""The test-time fit started from the network (issue item 5), for measuring what it buys.

Two schedules from the network's prediction (``mfnet_core.model.predict_init``), both
without the PnP start and the coarse stage: ``training.evaluate``'s "network+fit" (rigid 4,
then two fine rounds of 12) and "network+fit-short", which is what
``mfnet reconstruct --weights`` runs (``mfnet_core.fit.landmark_fit.INIT_ITERATIONS``: one fine round
of 8).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from mfnet_core.camera import Intrinsics
from mfnet_core.fit.landmark_fit import (
    INIT_ITERATIONS,
    INIT_OUTLIER_ROUNDS,
    FitOptions,
    fit_landmarks,
)
from mfnet_core.network.mfnet import MFNet
from mfnet_core.network.predict import predict_init

# "network+fit": iterations per stage (rigid, coarse, fine) and outlier rounds.
FULL_ITERATIONS = (4, 0, 12)
FULL_OUTLIER_ROUNDS = 1


def fit_from_scratch(
    flame: nn.Module, landmarks: Sequence[np.ndarray], intrinsics: Sequence[Intrinsics]
) -> np.ndarray:
    """mfnet_core's default landmark fit; returns (V,3) model-space vertices."""
    fitter = fit_landmarks(
        flame,
        np.stack(landmarks),
        list(intrinsics),
        FitOptions(),
    )
    return fitter.result().vertices_model.astype(np.float64)


def fit_from_init(
    flame: nn.Module,
    model: MFNet,
    photos: Sequence[np.ndarray],
    landmarks: Sequence[np.ndarray],
    intrinsics: Sequence[Intrinsics],
    device: str | torch.device = "cpu",
    short: bool = False,
) -> np.ndarray:
    """Network prediction, then the landmark fit from it (the product's schedule when
    ``short``); returns (V,3) model-space vertices."""
    init = predict_init(model, photos, landmarks, flame, intrinsics, device)
    its, rounds = (
        (INIT_ITERATIONS, INIT_OUTLIER_ROUNDS) if short else (FULL_ITERATIONS, FULL_OUTLIER_ROUNDS)
    )
    opts = FitOptions(iterations=its, outlier_rounds=rounds)
    fitter = fit_landmarks(flame, np.stack(landmarks), list(intrinsics), opts, device, init=init)
    return fitter.result().vertices_model.astype(np.float64)
