"""The test-time fit started from the network (issue item 5), for measuring what it buys.

``fit_with_init`` mirrors ``mfnet_core.fitting.fit_landmarks`` but replaces the PnP start
and the coarse stage by the network's prediction (``mfnet_core.model.predict_init``): a
short rigid refinement, then the fine stages. The lead wires the same idea into
``mfnet_core.fitting`` behind ``--weights``; this module is what the benchmark in
docs/BENCHMARKS.md ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from mfnet_core.camera import Intrinsics
from mfnet_core.fitting import FitOptions, MultiViewFitter, fit_landmarks
from mfnet_core.model import MFNet, predict_init

# Iterations (rigid, fine per round) and outlier rounds when starting from the network.
INIT_ITERATIONS = (4, 12)
INIT_OUTLIER_ROUNDS = 1


def fit_with_init(
    flame: nn.Module,
    landmarks_px: np.ndarray,
    intrinsics: Sequence[Intrinsics],
    init: dict[str, np.ndarray],
    options: FitOptions | None = None,
    iterations: tuple[int, int] = INIT_ITERATIONS,
    outlier_rounds: int = INIT_OUTLIER_ROUNDS,
    device: str | torch.device = "cpu",
) -> MultiViewFitter:
    """Landmark fit from ``init`` (the keys of ``predict_init``). landmarks_px: (N,68,2)."""
    base = options or FitOptions()
    opts = replace(
        base, iterations=(iterations[0], 0, iterations[1]), outlier_rounds=outlier_rounds
    )
    return fit_landmarks(flame, np.asarray(landmarks_px), list(intrinsics), opts, device, init=init)


def fit_from_scratch(
    flame: nn.Module, landmarks: Sequence[np.ndarray], intrinsics: Sequence[Intrinsics]
) -> np.ndarray:
    """mfnet_core's default landmark fit; returns (V,3) model-space vertices."""
    fitter = fit_landmarks(
        flame,
        np.stack(landmarks),
        list(intrinsics),
        FitOptions(n_shape=flame.n_shape, n_expr=flame.n_expr),
    )
    return fitter.result().vertices_model.astype(np.float64)


# A cheaper schedule from the network's start: no rigid stage, one fine round.
SHORT_ITERATIONS = (0, 8)
SHORT_OUTLIER_ROUNDS = 0


def fit_from_init(
    flame: nn.Module,
    model: MFNet,
    photos: Sequence[np.ndarray],
    landmarks: Sequence[np.ndarray],
    intrinsics: Sequence[Intrinsics],
    device: str | torch.device = "cpu",
    short: bool = False,
) -> np.ndarray:
    """Network prediction, then ``fit_with_init``; returns (V,3) model-space vertices."""
    init = predict_init(model, photos, landmarks, flame, intrinsics, device)
    opts = FitOptions(n_shape=flame.n_shape, n_expr=flame.n_expr)
    its, rounds = (
        (SHORT_ITERATIONS, SHORT_OUTLIER_ROUNDS)
        if short
        else (INIT_ITERATIONS, INIT_OUTLIER_ROUNDS)
    )
    fitter = fit_with_init(flame, np.stack(landmarks), intrinsics, init, opts, its, rounds)
    return fitter.result().vertices_model.astype(np.float64)
