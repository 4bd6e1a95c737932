"""Live Link Face CSV files (Epic's iPhone app, and `mfnet track`) as sequences for the rig.

The format is public: `Timecode` (HH:MM:SS:FF.mmm), `BlendShapeCount`, the 52 ARKit weights
under names such as `EyeBlinkLeft`, `JawOpen`, `MouthSmileRight`, then `HeadYaw`, `HeadPitch`,
`HeadRoll` and the eyes' `LeftEyeYaw`... in radians. Columns are read by name, never by
position; unknown columns are reported, not fatal. Numpy only (no bpy), so it is testable
outside Blender.

Angles, as `mfnet track` writes them and as the camera sees the head: yaw positive when the
subject turns to their own left, pitch positive looking up, roll positive when the head
tilts toward the subject's own right shoulder; eye angles relative to the head. In the rig's
axes (x to the subject's left, y up, z out of the face) that is R = Ry(yaw) Rx(-pitch) Rz(roll).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAX_CSV_BYTES = 256 << 20
MAX_FRAMES = 1_000_000
STANDARD_RATES = (24, 25, 30, 48, 50, 60, 100, 120)
HEAD_ANGLES = ("HeadYaw", "HeadPitch", "HeadRoll")
EYE_ANGLES = {
    "L": ("LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll"),
    "R": ("RightEyeYaw", "RightEyePitch", "RightEyeRoll"),
}
ANGLE_COLUMNS = (*HEAD_ANGLES, *EYE_ANGLES["L"], *EYE_ANGLES["R"])
META_COLUMNS = ("Timecode", "BlendShapeCount")


class LiveLinkError(ValueError):
    """A file that is not a readable Live Link Face CSV (one line naming the file)."""


@dataclass
class LiveLinkTake:
    """weights: column name -> (T,) in [0, 1]; angles: column name -> (T,) radians."""

    fps: float
    weights: dict[str, np.ndarray]
    angles: dict[str, np.ndarray]
    unknown: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        first = next(iter({**self.weights, **self.angles}.values()), np.zeros(0))
        return int(len(first))


def _timecode_seconds(text: str, rate: int) -> float:
    """HH:MM:SS:FF(.mmm) -> seconds at `rate` frames per second."""
    parts = text.strip().split(":")
    if len(parts) != 4:
        raise ValueError(text)
    h, m, s = (int(p) for p in parts[:3])
    return h * 3600 + m * 60 + s + float(parts[3]) / rate


def infer_fps(timecodes: list[str], default: float = 60.0) -> float:
    """The take's frame rate from its timecodes (the frame field counts up to the nominal
    rate within each second), else `default` (Live Link Face records at 60); a take shorter
    than a second cannot tell."""
    try:
        frames = [float(t.strip().split(":")[3]) for t in timecodes]
    except (IndexError, ValueError):
        return default
    if not frames:
        return default
    seconds = {t.strip().split(":")[2] for t in timecodes}
    top = max(frames) + 1
    if len(seconds) < 2 and top <= default:  # under a second: the frame field tells little
        return default
    rate = next((r for r in STANDARD_RATES if r >= top - 1e-6), int(np.ceil(top)))
    try:
        t = np.array([_timecode_seconds(x, rate) for x in timecodes])
    except ValueError:
        return float(rate)
    dt = np.diff(t)
    dt = dt[dt > 0]
    if not len(dt):
        return float(rate)
    return float(round(1.0 / float(np.median(dt)), 3))


def read_livelink_csv(path: str | Path) -> LiveLinkTake:
    """Reads a Live Link Face CSV by column name; LiveLinkError for anything else."""
    path = Path(path)
    try:
        if not path.is_file():
            raise LiveLinkError(f"{path}: not a file")
        if path.stat().st_size > MAX_CSV_BYTES:
            raise LiveLinkError(f"{path}: larger than {MAX_CSV_BYTES >> 20} MiB")
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LiveLinkError(f"{path}: not a readable CSV ({e})") from None
    if len(rows) < 2:
        raise LiveLinkError(f"{path}: no frames (a header and at least one row are needed)")
    if len(rows) - 1 > MAX_FRAMES:
        raise LiveLinkError(f"{path}: more than {MAX_FRAMES} frames")
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    index = {name: i for i, name in enumerate(header)}
    weights: dict[str, np.ndarray] = {}
    angles: dict[str, np.ndarray] = {}
    unknown: list[str] = []
    for name, i in index.items():
        if name in META_COLUMNS or not name:
            continue
        try:
            values = np.array([float(r[i]) for r in body], dtype=np.float64)
        except (IndexError, ValueError):
            unknown.append(name)
            continue
        if not np.isfinite(values).all():
            raise LiveLinkError(f"{path}: column {name} holds NaN or inf")
        if name in ANGLE_COLUMNS:
            angles[name] = values
        elif name[:1].isupper():
            weights[name] = np.clip(values, 0.0, 1.0)
        else:
            unknown.append(name)
    if not weights and not angles:
        raise LiveLinkError(f"{path}: no blendshape or angle columns (not a Live Link Face CSV?)")
    stamps = [r[index["Timecode"]] for r in body] if "Timecode" in index else []
    return LiveLinkTake(infer_fps(stamps), weights, angles, unknown)


def rig_keys_for(column: str, key_names: set[str]) -> list[str]:
    """The rig's shape keys a Live Link column drives: `EyeBlinkLeft` -> `eyeBlink_L`,
    `JawLeft` -> `jawLeft` (ARKit's own name), `BrowInnerUp` -> `browInnerUp_L` and `_R` on a
    model that splits it (ICT); [] when the rig has no such key."""
    camel = column[:1].lower() + column[1:]
    if camel in key_names:
        return [camel]
    for suffix, side in (("Left", "_L"), ("Right", "_R")):
        if camel.endswith(suffix) and camel[: -len(suffix)] + side in key_names:
            return [camel[: -len(suffix)] + side]
    both = [camel + "_L", camel + "_R"]
    return both if all(b in key_names for b in both) else []


def _axis_rotation(axis: int, angle: np.ndarray) -> np.ndarray:
    """(T,) angles -> (T,3,3) rotations about x (0), y (1) or z (2)."""
    c, s = np.cos(angle), np.sin(angle)
    r = np.zeros((len(angle), 3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r[:, axis, axis] = 1.0
    r[:, i, i] = c
    r[:, j, j] = c
    r[:, i, j] = -s
    r[:, j, i] = s
    return r


def angles_to_axis_angle(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """(T,) yaw, pitch, roll (radians, the module's convention) -> (T,3) axis-angle in the
    rig's axes: R = Ry(yaw) Rx(-pitch) Rz(roll)."""
    r = _axis_rotation(1, yaw) @ _axis_rotation(0, -pitch) @ _axis_rotation(2, roll)
    angle = np.arccos(np.clip((np.trace(r, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0))
    axis = np.stack([r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], 1)
    norm = np.linalg.norm(axis, axis=1, keepdims=True)
    small = norm[:, 0] < 1e-9
    out = np.where(small[:, None], 0.0, axis / np.where(norm > 0, norm, 1.0) * angle[:, None])
    return out
