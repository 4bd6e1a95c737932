"""The head model a training run uses, frozen (train and evaluate share it)."""

from __future__ import annotations

from pathlib import Path

import torch

from mfnet_core.head.interface import HeadModel
from mfnet_core.head.registry import load_head_model
from mfnet_core.inputs.model_files import find_flame_model

from .config import Config


def load_head(cfg: Config, device: torch.device) -> HeadModel:
    """mfnet_core's head model (the user's FLAME, else the generated test head), frozen,
    keeping the network's `model.n_shape` / `model.n_expr` components."""
    flame_path = Path(cfg.train.flame_model) if cfg.train.flame_model else None
    # The paper's network predicts FLAME's PCA coefficients; without FLAME it trains on the
    # test head (same format), not on the ICT model's bounded ARKit weights.
    kind = "flame" if find_flame_model(flame_path) is not None else "test-head"
    head = load_head_model(kind, flame_path, cfg.model.n_shape, cfg.model.n_expr)
    head = head.to(device).eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return head
