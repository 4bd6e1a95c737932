"""Training configuration: nested dataclasses read from a TOML or JSON file.

Every option has the paper's value or a documented default; unknown keys are errors (a typo
should not silently train with a default). ``--set section.key=value`` overrides a value
from the command line (values parsed as TOML: ``1e-4``, ``true``, ``"text"``, ``[1, 2]``).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from mfnet_core.errors import MfnetError
from mfnet_core.network.mfnet import MFNetConfig


@dataclass
class SyntheticData:
    """A multi-view set rendered from FLAME (or the generated test head) with ground truth."""

    root: str = ".cache/mfnet-training/synthetic"  # cache folder, created on first use
    n_train: int = 512
    n_val: int = 32
    seed: int = 0
    image_size: int = 256  # render side in pixels
    yaws_deg: list[float] = field(default_factory=lambda: [-35.0, 0.0, 35.0])
    yaw_jitter_deg: float = 8.0  # per subject and view
    landmark_noise_px: float = 1.0  # Gaussian noise on the "detected" landmarks, render pixels
    n_textures: int = 8  # procedural skin textures shared round-robin by the subjects
    texture_size: int = 256
    # Processes that render the set (0: one per CPU core, up to 16, for sets of 200+ subjects).
    # Subjects are seeded by index, so the set is the same for any count. Not part of the cache key.
    render_workers: int = 0


@dataclass
class MultiPieData:
    """Multi-PIE triplets: camera 05_1 (front) plus a left and a right view (paper 4.1)."""

    root: str = ""  # folder holding data/session0X/multiview/...
    sessions: list[str] = field(default_factory=lambda: ["01", "02", "03", "04"])
    front_camera: str = "05_1"
    # Cameras at about +-30 and +-45 degrees; one of each side is drawn per triplet.
    left_cameras: list[str] = field(default_factory=lambda: ["19_0", "04_1"])
    right_cameras: list[str] = field(default_factory=lambda: ["08_0", "13_0"])
    illuminations: list[int] = field(default_factory=list)  # empty: all found
    fov_deg: float = 40.0  # intrinsics are not published; a default field of view is used
    val_fraction: float = 0.02


@dataclass
class FaceScapeData:
    """FaceScape multi-view images (fsmview_images/<id>/<expression>/<n>.jpg + params.json)."""

    root: str = ""  # folder holding fsmview_images/
    side_yaw_deg: float = 35.0  # the left/right views closest to +-this yaw from the front one
    max_image_side: int = 1024  # photos are downscaled to this before landmarks and crops
    val_fraction: float = 0.02


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # "synthetic", "multipie", "facescape"
    cache_dir: str = ".cache/mfnet-training/cache"  # landmark caches of the real datasets
    landmark_backend: str = "dlib"
    augment: bool = True  # crop jitter (shift/scale), deterministic per sample and epoch
    jitter_shift: float = 0.04  # of the crop side
    jitter_scale: float = 0.06
    num_workers: int = 2
    synthetic: SyntheticData = field(default_factory=SyntheticData)
    multipie: MultiPieData = field(default_factory=MultiPieData)
    facescape: FaceScapeData = field(default_factory=FaceScapeData)


@dataclass
class LossConfig:
    """Eq. 11 lambdas (paper 4.1: 1, 1, 1, 0.5, 1e-4)."""

    flow: float = 1.0
    landmarks: float = 1.0
    eye: float = 1.0
    lip: float = 0.5
    reg: float = 1e-4
    use_flow: bool = True  # used when mfnet_core.fit.flow provides the term
    flow_start_step: int = 0  # the flow term joins after this many steps
    flow_samples: int = 200  # flow correspondences per ordered view pair
    flow_size: int = 0  # working resolution of the flow term in px (0: the crop's)
    # Processes that render and run DIS for the people of a batch at once (0: one per CPU
    # core when the network is on a GPU, else 1). Results do not depend on it: each person
    # is seeded by its index.
    flow_workers: int = 0


@dataclass
class TrainConfig:
    workdir: str = "runs/mfnet"
    epochs: int = 10  # paper 4.1
    max_steps: int = 0  # 0: epochs decide
    batch_size: int = 8  # people (each with n_views photos) per step and process
    lr: float = 1e-3  # paper 4.1
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # "constant" (paper) or "cosine"
    warmup_steps: int = 0
    grad_clip: float = 10.0  # 0: off
    pose_warmup_steps: int = 0  # first steps train the per-view poses on the mean head only
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 + scaler)
    bn_mode: str = (
        "batch"  # "batch", "frozen" (eval-mode BatchNorm), "sync" (SyncBatchNorm with DDP on CUDA)
    )
    log_every: int = 10
    checkpoint_every: int = 500  # steps; also at the end of every epoch
    keep_checkpoints: int = 3
    eval_every_epochs: int = 1
    preview_people: int = 4  # held-out people drawn at each evaluation (<workdir>/previews/)
    progress: bool = True
    backbone_weights: str = ""  # ImageNet .pth or DECA deca_model.tar (partial import)
    flame_model: str = ""  # FLAME file; empty: mfnet_core's search, else the test head


@dataclass
class Config:
    model: MFNetConfig = field(default_factory=MFNetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any], where: str = "config") -> Config:
        return _build(Config, d, where)


def _build(cls: type, d: dict[str, Any], where: str) -> Any:
    if not isinstance(d, dict):
        raise MfnetError(f"{where}: expected a table, got {type(d).__name__}")
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise MfnetError(f"{where}: unknown option(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    defaults = cls()
    for k, v in d.items():
        cur = getattr(defaults, k)
        if is_dataclass(cur):
            kwargs[k] = _build(type(cur), v, f"{where}.{k}")
        else:
            kwargs[k] = _coerce(cur, v, f"{where}.{k}")
    return cls(**kwargs)


def _coerce(default: Any, value: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise MfnetError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, list) and isinstance(value, list):
        return value
    if default is not None and not isinstance(value, type(default)):
        raise MfnetError(
            f"{where}: expected {type(default).__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Reads a .toml or .json file (missing sections keep their defaults) and applies overrides."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise MfnetError(f"config file not found: {p}")
        try:
            text = p.read_text(encoding="utf-8")
            data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise MfnetError(
                f"{p}: not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {exc}"
            ) from exc
    for item in overrides or []:
        if "=" not in item:
            raise MfnetError(f"--set expects section.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # bare strings
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return Config.from_dict(data, str(path) if path else "config")


def dump_toml(cfg: Config) -> str:
    """The full configuration as TOML (written next to checkpoints for the record)."""
    lines: list[str] = []

    def emit(prefix: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in d.items() if isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {json.dumps(v)}")
        if prefix or scalars:
            lines.append("")
        for k, v in tables.items():
            emit(f"{prefix}.{k}" if prefix else k, v)

    emit("", cfg.to_dict())
    return "\n".join(lines)
