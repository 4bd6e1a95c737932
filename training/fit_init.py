"""The test-time fit started from the network (issue item 5), for measuring what it buys.

``fit_with_init`` mirrors ``mfnet_core.fitting.fit_landmarks`` but replaces the PnP start
and the coarse stage by the network's prediction (``mfnet_core.model.predict_init``): a
short rigid refinement, then the fine stages. The lead wires the same idea into
``mfnet_core.fitting`` behind ``--weights``; this module is what the benchmark in
docs/BENCHMARKS.md ran.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from mfnet_core.camera import Intrinsics
from mfnet_core.fitting import RIGID_LANDMARKS, FitOptions, MultiViewFitter, fit_landmarks
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
    options = options or FitOptions()
    torch.manual_seed(options.seed)
    fitter = MultiViewFitter(
        flame, np.asarray(landmarks_px), list(intrinsics), options, torch.device(device)
    )
    p = fitter.params
    with torch.no_grad():
        for name, t in (("shape", p.shape), ("expression", p.expression)):
            v = torch.as_tensor(np.asarray(init[name], np.float32))
            k = min(v.numel(), t.shape[1])
            t.zero_()
            t[0, :k] = v[:k]
        p.jaw_pose.copy_(torch.as_tensor(np.asarray(init["jaw_pose"], np.float32))[None])
        p.head_rot.copy_(torch.as_tensor(np.asarray(init["head_pose"], np.float32)))
        p.head_trans.copy_(torch.as_tensor(np.asarray(init["head_translation"], np.float32)))
    it_rigid, it_fine = iterations
    if it_rigid:
        fitter.run_stage("rigid", [p.head_rot, p.head_trans], it_rigid, RIGID_LANDMARKS)
    for r in range(outlier_rounds + 1):
        fitter.update_outlier_weights()
        fitter.run_stage(
            f"fine{r}", [p.shape, p.expression, p.jaw_pose, p.head_rot, p.head_trans], it_fine
        )
    return fitter


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


def fit_from_init(
    flame: nn.Module,
    model: MFNet,
    photos: Sequence[np.ndarray],
    landmarks: Sequence[np.ndarray],
    intrinsics: Sequence[Intrinsics],
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Network prediction, then ``fit_with_init``; returns (V,3) model-space vertices."""
    init = predict_init(model, photos, landmarks, flame, intrinsics, device)
    opts = FitOptions(n_shape=flame.n_shape, n_expr=flame.n_expr)
    fitter = fit_with_init(flame, np.stack(landmarks), intrinsics, init, opts)
    return fitter.result().vertices_model.astype(np.float64)
