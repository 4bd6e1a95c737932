"""Weights in: a backbone's ImageNet or DECA weights, and MFNet checkpoints written by
`training.train`; always `torch.load(..., weights_only=True)`."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mfnet_core.errors import MfnetError
from mfnet_core.inputs.files import open_regular, regular_file
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


# An MFNet checkpoint with its optimizer state is ~0.5 GB for ResNet-50; DECA's is 400 MB.
MAX_CHECKPOINT_BYTES = 4 * 2**30
MAX_PARAMETERS = 250_000_000  # elements of all network tensors (ResNet-50 MFNet: ~40 M)
MAX_META_NODES = 100_000  # the checkpoint's metadata (config, eval results) as a tree

# Lines of torch's refusal text that are advice, not the reason.
_TORCH_ADVICE = (
    "weights only load failed",
    "weights_only",
    "check the documentation",
    "please file an issue",
    "in pytorch 2.6",
)


def _one_line(exc: BaseException) -> str:
    """torch's multi-line refusal reduced to its reason, without its advice to turn the
    safety off."""
    keep = []
    for line in str(exc).splitlines():
        line = line.strip()
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        if line and not any(a in line.lower() for a in _TORCH_ADVICE):
            keep.append(line)
    text = "; ".join(keep) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _check_zip(path: Path) -> None:
    """torch.save writes an uncompressed zip; a compressed member (a zip bomb: a few KB
    expanding to gigabytes) is refused before torch decompresses it."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return  # the legacy (pre-1.6) format: torch reads it record by record
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                    raise MfnetError(
                        f"{path}: member {info.filename!r} is compressed; torch.save never "
                        "writes that, refusing the file"
                    )
    except MfnetError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged zip: torch says the rest
        raise MfnetError(f"{path}: not a readable PyTorch file ({_one_line(exc)})") from None


def _torch_load(path: Path) -> Any:
    # stat before open: a FIFO would block torch.load for ever
    regular_file(path, what="weights file", max_bytes=MAX_CHECKPOINT_BYTES)
    _check_zip(path)
    try:
        with open_regular(path, what="weights file", max_bytes=MAX_CHECKPOINT_BYTES) as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except MfnetError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling error is the file's fault
        raise MfnetError(
            f"{path}: not loadable as PyTorch weights with weights_only=True ({_one_line(exc)}); "
            "expected a torchvision "
            "ResNet state dict (.pth), DECA's deca_model.tar or an MFNet checkpoint"
        ) from None


def _tensor_dict(value: Any, path: Path, what: str) -> dict[str, Tensor]:
    """A state dict: str keys, tensor values (other values are dropped by the callers)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise MfnetError(f"{path}: {what} is a {type(value).__name__}, not a state dict")
    return value


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
        mapping = dict(_tensor_dict(data.get("model"), path, "'model'"))
    elif "E_flame" in data:
        kind = "deca"
        for k, v in _tensor_dict(data["E_flame"], path, "'E_flame'").items():
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
            if not isinstance(k, str):
                continue
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


def _config(value: Any, path: Path) -> MFNetConfig:
    """The checkpoint's `model_config`, every field of the right type and in a sane range
    (a config is what the network is allocated from: width 10**6 would be terabytes)."""
    if not isinstance(value, dict):
        raise MfnetError(
            f"{path}: 'model_config' is a {type(value).__name__}, not a dict; not an MFNet checkpoint"
        )
    defaults = MFNetConfig()
    for key, v in value.items():
        if not isinstance(key, str) or not hasattr(defaults, key):
            continue  # from_dict names unknown options
        want = type(getattr(defaults, key))
        if want is float:
            ok = isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 100
        elif want is int:
            ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 100_000
        else:
            ok = isinstance(v, want)
        if not ok:
            raise MfnetError(
                f"{path}: model_config[{key!r}] = {str(v)[:40]!r} is not a valid {want.__name__}"
            )
    try:
        return MFNetConfig.from_dict(value)
    except MfnetError as exc:
        raise MfnetError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001
        raise MfnetError(f"{path}: invalid model_config ({_one_line(exc)})") from None


def _bounded_meta(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """Metadata is printed and written to reports: refuse a structure whose tree is huge
    (shared references expanded, as json would)."""
    budget = MAX_META_NODES
    todo: list[Any] = [meta]
    while todo:
        obj = todo.pop()
        budget -= 1
        if budget < 0:
            raise MfnetError(
                f"{path}: the checkpoint's metadata is larger than {MAX_META_NODES:,} objects; "
                "refusing it"
            )
        if isinstance(obj, dict):
            todo.extend(obj.values())
        elif isinstance(obj, list | tuple | set):
            todo.extend(obj)
    return meta


@functools.lru_cache(maxsize=8)
def _meta_shapes(items: tuple[tuple[str, Any], ...]) -> dict[str, tuple[tuple[int, ...], bool]]:
    with torch.device("meta"):  # no memory, whatever the config says
        net = MFNet(MFNetConfig(**dict(items)))
        return {k: (tuple(v.shape), v.is_floating_point()) for k, v in net.state_dict().items()}


def _shapes(config: MFNetConfig, path: Path) -> dict[str, tuple[tuple[int, ...], bool]]:
    """The state dict (shape, is floating point) of the network `config` describes, from a
    network on the meta device (no memory) before the real one is made."""
    try:
        return dict(_meta_shapes(tuple(sorted(config.to_dict().items()))))
    except MfnetError as exc:
        raise MfnetError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - nn layers refuse odd sizes in their own words
        raise MfnetError(
            f"{path}: model_config describes no valid network ({_one_line(exc)})"
        ) from None


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[MFNet, dict[str, Any]]:
    """An MFNet checkpoint -> (network in eval mode, the checkpoint's metadata). weights_only=True.

    Every problem is one MfnetError line: not a checkpoint, no or a malformed
    `model_config`, tensors missing, extra, of another shape, or not finite.
    """
    path = Path(path)
    data = _torch_load(path)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise MfnetError(
            f"{path} is not an MFNet checkpoint (written by `python -m training.train`)"
        )
    if "model_config" not in data:
        raise MfnetError(f"{path}: the checkpoint has no 'model_config'; not an MFNet checkpoint")
    config = _config(data["model_config"], path)
    state = _tensor_dict(data.get("model"), path, "'model'")
    shapes = _shapes(config, path)
    n_params = sum(math.prod(s) for s, _ in shapes.values())
    if n_params > MAX_PARAMETERS:
        raise MfnetError(
            f"{path}: model_config describes {n_params:,} parameters, more than the "
            f"{MAX_PARAMETERS:,} allowed"
        )
    missing = sorted(set(shapes) - set(state))
    extra = sorted(set(state) - set(shapes))
    if missing or extra:
        raise MfnetError(
            f"{path}: the weights do not fit its model_config ({len(missing)} missing, e.g. "
            f"{missing[:2]}; {len(extra)} unexpected, e.g. {extra[:2]})"
        )
    for k, (want, floating) in shapes.items():
        v = state[k]
        if not isinstance(v, Tensor):
            raise MfnetError(f"{path}: model[{k!r}] is a {type(v).__name__}, not a tensor")
        if tuple(v.shape) != want:
            raise MfnetError(f"{path}: model[{k!r}] has shape {tuple(v.shape)}, expected {want}")
        if v.is_complex() or v.is_floating_point() != floating:
            kind = "floating point" if floating else "integer"
            raise MfnetError(f"{path}: model[{k!r}] is {v.dtype}, expected {kind}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise MfnetError(f"{path}: model[{k!r}] holds NaN/inf values")
    try:
        model = MFNet(config)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - e.g. an integer tensor where floats belong
        raise MfnetError(f"{path}: the weights do not load ({_one_line(exc)})") from None
    model.to(device).eval()
    meta = {
        k: v
        for k, v in data.items()
        if k not in ("model", "optimizer", "scaler", "scheduler", "rng")
    }
    return model, _bounded_meta(meta, path)
