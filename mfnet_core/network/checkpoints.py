"""Weights in: a backbone's ImageNet or DECA weights, and MFNet checkpoints written by
`training.train`; always `torch.load(..., weights_only=True)`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mfnet_core.errors import MfnetError
from mfnet_core.network.mfnet import CHECKPOINT_FORMAT, MFNet, MFNetConfig


@dataclass
class WeightImport:
    """What ``load_backbone_weights`` did."""

    source: str
    kind: str  # "torchvision", "deca", "mfnet"
    loaded: list[str]
    missing: list[str]  # model keys left at their initial values
    unused: list[str]  # file keys not used (fc, DECA's output layer, shape mismatches)

    def summary(self) -> str:
        return (
            f"{self.kind} weights from {self.source}: {len(self.loaded)} tensors loaded, "
            f"{len(self.missing)} left at init, {len(self.unused)} in the file unused"
        )


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise MfnetError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling error is the file's fault
        raise MfnetError(
            f"could not read {path} as PyTorch weights with weights_only=True ({type(exc).__name__}: {exc}). "
            "Expected a torchvision ResNet state dict (.pth), DECA's deca_model.tar or an MFNet checkpoint."
        ) from exc


def load_backbone_weights(model: MFNet, path: str | Path) -> WeightImport:
    """Partial import of pretrained weights into ``model`` (paper section 4.1).

    Accepts a torchvision ResNet state dict (ImageNet ``resnet50-*.pth``), DECA's
    ``deca_model.tar`` (``E_flame``: ``encoder.*`` -> backbone, ``layers.0`` -> the per-view
    head's hidden layer when shapes match), or an MFNet checkpoint. Tensors whose name or
    shape does not match are reported, never forced. Loads with ``weights_only=True``.
    """
    path = Path(path)
    data = _torch_load(path)
    if not isinstance(data, dict):
        raise MfnetError(f"{path} holds a {type(data).__name__}, not a state dict")
    target = model.state_dict()
    mapping: dict[str, Tensor] = {}
    unused: list[str] = []
    if data.get("format") == CHECKPOINT_FORMAT:
        kind = "mfnet"
        src = data["model"]
        mapping = dict(src.items())
    elif "E_flame" in data:
        kind = "deca"
        for k, v in data["E_flame"].items():
            if k.startswith("encoder."):
                mapping["backbone." + k[len("encoder.") :]] = v
            elif k.startswith("layers.0."):
                mapping["view_head.0." + k[len("layers.0.") :]] = v
            else:
                unused.append("E_flame." + k)
        unused += [f"{k}.*" for k in data if k != "E_flame"]
    else:
        kind = "torchvision"
        src = data.get("state_dict", data.get("model", data))
        if not isinstance(src, dict) or not any(isinstance(v, Tensor) for v in src.values()):
            raise MfnetError(f"{path}: no tensors found (expected a ResNet state dict)")
        for k, v in src.items():
            k2 = k[len("module.") :] if k.startswith("module.") else k
            mapping["backbone." + k2] = v
    loaded = []
    new_state = {}
    for k, v in mapping.items():
        if not isinstance(v, Tensor):
            continue
        if k in target and target[k].shape == v.shape:
            new_state[k] = v.to(target[k].dtype)
            loaded.append(k)
        else:
            unused.append(k)
    if not loaded:
        raise MfnetError(
            f"{path}: none of its {len(mapping)} tensors match the {model.config.backbone} backbone "
            f"(width {model.config.width}); is it the right architecture?"
        )
    model.load_state_dict(new_state, strict=False)
    missing = [k for k in target if k not in new_state and not k.endswith("num_batches_tracked")]
    return WeightImport(str(path), kind, sorted(loaded), sorted(missing), sorted(unused))


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[MFNet, dict[str, Any]]:
    """An MFNet checkpoint -> (network in eval mode, the checkpoint's metadata). weights_only=True."""
    path = Path(path)
    data = _torch_load(path)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise MfnetError(
            f"{path} is not an MFNet checkpoint (written by `python -m training.train`)"
        )
    model = MFNet(MFNetConfig.from_dict(data["model_config"]))
    model.load_state_dict(data["model"])
    model.to(device).eval()
    meta = {
        k: v
        for k, v in data.items()
        if k not in ("model", "optimizer", "scaler", "scheduler", "rng")
    }
    return model, meta
