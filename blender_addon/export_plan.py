"""What "Export for games" writes, decided without bpy: the file formats, which bones are
helpers, how shape-key weights outside [0, 1] travel in FBX, the names of the partial file
and of the records that ride along in the file.

Why a plan at all: game engines play a skeleton and blend shapes, nothing else. The rig's
drivers (pose correctives, the DRV- keys a bone drives, the MCH- pivot bones the
expression moves) are baked into keyframes by game_export.py; this module holds the rules
it follows, so they are unit-tested in plain pytest.

FBX and weights: FBX stores a blend-shape channel's weight as a percentage, and importers
clamp it to [0, 100] (Blender 3.4's FBX importer leaves the slider at [0, 1], so 1.5 plays
as 1.0; Unity and Unreal clamp too). A key whose baked weights leave [0, 1] is therefore
written as up to two keys with weights in [0, 1]: its positive part under its own name
with the shape scaled by the largest weight, and its negative part as `<name>_neg` with the
shape scaled by minus the smallest weight. The scales are recorded (KEY_SCALES_PROP), so
weight_in_blender = sum(scale * weight_in_file). glTF morph weights are unbounded, so the
.glb keeps every key as it is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .rigdata import MECHANISM_PREFIX

FORMATS = {".glb": "GLB", ".fbx": "FBX"}  # file suffix -> format
NEGATIVE_SUFFIX = "_neg"
# custom properties on the exported mesh object (FBX user properties, glTF node extras)
KEY_RANGES_PROP = "mfnet_key_ranges"  # JSON: key -> [slider_min, slider_max] in Blender
KEY_SCALES_PROP = "mfnet_key_scales"  # JSON (FBX only): file key -> [source key, scale]
WEIGHT_TOLERANCE = 1e-6  # weights this far outside [0, 1] are float noise, not a range


class ExportError(ValueError):
    """The export cannot be done as asked (one line, for the user)."""


def format_for_path(path: str | Path) -> str:
    """ "GLB" or "FBX" from the file name's suffix (the file browser and batch name it)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ExportError(
            f"{Path(path).name}: export to .glb or .fbx (got {suffix or 'no suffix'!r})"
        )
    return FORMATS[suffix]


def parse_formats(text: str) -> list[str]:
    """batch.py's --export value ("glb", "fbx,glb", "none") -> file suffixes in a fixed
    order without repeats (".glb", ".fbx")."""
    words = [w.strip().lower().lstrip(".") for w in text.split(",") if w.strip()]
    if words == ["none"]:
        return []
    unknown = [w for w in words if f".{w}" not in FORMATS]
    if unknown or not words:
        known = ", ".join(s[1:] for s in FORMATS)
        raise ExportError(f"--export takes {known} or none, comma-separated (got {text!r})")
    return [s for s in FORMATS if s[1:] in words]


def is_helper_bone(name: str) -> bool:
    """MCH- pivot bones move the joints with the expression; the export bakes their motion
    into the joint bones and leaves them out."""
    return name.startswith(MECHANISM_PREFIX)


def partial_path(path: Path) -> Path:
    """The hidden sibling an export is written to before it is renamed onto `path` (same
    folder, so the rename is atomic; same suffix, which the exporters insist on)."""
    return path.with_name(f".{path.stem}.mfnet-partial{path.suffix}")


@dataclass(frozen=True)
class FileKey:
    """One shape key as written to the file: `source` key's shape times `scale`, its
    weights clipped to [0, 1] when `bounded` (FBX)."""

    name: str
    source: str
    scale: float = 1.0
    bounded: bool = False

    @property
    def unchanged(self) -> bool:
        return self.name == self.source and self.scale == 1.0

    def weights(self, values: np.ndarray) -> np.ndarray:
        """The file's weights of this key from the source key's baked values (T,)."""
        w = np.asarray(values, dtype=np.float64) / self.scale
        return np.clip(w, 0.0, 1.0) if self.bounded else w


def gltf_keys(names: list[str]) -> list[FileKey]:
    """glTF keys: every key as it is (morph weights are unbounded)."""
    return [FileKey(n, n) for n in names]


def fbx_keys(names: list[str], values: np.ndarray) -> list[FileKey]:
    """FBX keys for shape keys `names` with baked values (T, K): keys within [0, 1] as they
    are; others split into a positive part (own name, scaled by max(values) when it
    exceeds 1) and a negative part (`<name>_neg`, scaled by min(values)). A key whose
    values never leave 0 keeps its own name with scale 1, so no ARKit name goes missing."""
    values = np.asarray(values, dtype=np.float64).reshape(-1, len(names))
    taken = set(names)
    out: list[FileKey] = []
    for k, name in enumerate(names):
        hi, lo = float(values[:, k].max()), float(values[:, k].min())
        scale = hi if hi > 1.0 + WEIGHT_TOLERANCE else 1.0
        out.append(FileKey(name, name, scale, bounded=True))
        if lo < -WEIGHT_TOLERANCE:
            neg = _unique(name + NEGATIVE_SUFFIX, taken)
            taken.add(neg)
            out.append(FileKey(neg, name, lo, bounded=True))
    return out


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}{n}" in taken:
        n += 1
    return f"{name}{n}"


def scales_record(keys: list[FileKey]) -> str:
    """KEY_SCALES_PROP's JSON: only the keys that differ from their source one to one."""
    rec = {k.name: [k.source, k.scale] for k in keys if not k.unchanged}
    return json.dumps(rec, sort_keys=True)


def ranges_record(ranges: dict[str, tuple[float, float]]) -> str:
    """KEY_RANGES_PROP's JSON: each key's slider range in Blender."""
    return json.dumps({n: [float(a), float(b)] for n, (a, b) in ranges.items()}, sort_keys=True)


def slider_range(values: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> tuple[float, float]:
    """A slider range holding `values` and [lo, hi], within Blender's +-10 (so the copy
    that is exported never clamps a baked value)."""
    v = np.asarray(values, dtype=np.float64)
    a = min(lo, float(v.min())) if v.size else lo
    b = max(hi, float(v.max())) if v.size else hi
    return max(-10.0, math.floor(a * 1e6) / 1e6), min(10.0, math.ceil(b * 1e6) / 1e6)
