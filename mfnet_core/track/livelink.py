"""Live Link Face style CSV files: the 52 ARKit blendshape weights plus head and eye angles
per frame, as Epic's Live Link Face app records a take (and as Unreal, MetaHuman tools and
Blender add-ons read it).

Layout (one header line, then one line per frame):

    Timecode,BlendShapeCount,EyeBlinkLeft,...,TongueOut,HeadYaw,HeadPitch,HeadRoll,
    LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll

- `Timecode` is `HH:MM:SS:FF.mmm`: FF counts frames at the nominal rate (the video's fps
  rounded to a whole number) and `.mmm` is the fraction of a frame, so that a 29.97 fps clip
  keeps its real times: t = HH*3600 + MM*60 + SS + (FF + 0.mmm) / nominal_fps.
- `BlendShapeCount` is 61 (the 52 weights and the 9 angles), as Live Link Face writes it.
- The 52 weights are in [0, 1] under Live Link Face's names (`EyeBlinkLeft`, `JawOpen`...);
  "Left" is the subject's own left, as in ARKit.
- The angles are in radians, as the camera sees the head (mfnet_core.camera's
  `yaw_pitch_roll_deg`): HeadYaw positive when the subject turns to their own left, HeadPitch
  positive looking up, HeadRoll positive when the head tilts toward the subject's own right
  shoulder (counter-clockwise in the picture). The eye angles are relative to the head: yaw
  positive toward the subject's own left, pitch positive looking up, roll always 0.

Readers go by column name, never by position (`read_livelink_csv`): other tools order the
columns differently, add some or leave some out. This module needs numpy only.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mfnet_core.errors import MfnetError
from mfnet_core.track.files import atomic_write_text

__all__ = [
    "ANGLE_NAMES",
    "ARKIT_NAMES",
    "BLENDSHAPE_COUNT",
    "LiveLinkTake",
    "arkit_mapping",
    "format_timecode",
    "parse_timecode",
    "read_livelink_csv",
    "write_livelink_csv",
]

# Live Link Face's column order for the 52 ARKit blendshapes.
ARKIT_NAMES: tuple[str, ...] = (
    "EyeBlinkLeft",
    "EyeLookDownLeft",
    "EyeLookInLeft",
    "EyeLookOutLeft",
    "EyeLookUpLeft",
    "EyeSquintLeft",
    "EyeWideLeft",
    "EyeBlinkRight",
    "EyeLookDownRight",
    "EyeLookInRight",
    "EyeLookOutRight",
    "EyeLookUpRight",
    "EyeSquintRight",
    "EyeWideRight",
    "JawForward",
    "JawRight",
    "JawLeft",
    "JawOpen",
    "MouthClose",
    "MouthFunnel",
    "MouthPucker",
    "MouthRight",
    "MouthLeft",
    "MouthSmileLeft",
    "MouthSmileRight",
    "MouthFrownLeft",
    "MouthFrownRight",
    "MouthDimpleLeft",
    "MouthDimpleRight",
    "MouthStretchLeft",
    "MouthStretchRight",
    "MouthRollLower",
    "MouthRollUpper",
    "MouthShrugLower",
    "MouthShrugUpper",
    "MouthPressLeft",
    "MouthPressRight",
    "MouthLowerDownLeft",
    "MouthLowerDownRight",
    "MouthUpperUpLeft",
    "MouthUpperUpRight",
    "BrowDownLeft",
    "BrowDownRight",
    "BrowInnerUp",
    "BrowOuterUpLeft",
    "BrowOuterUpRight",
    "CheekPuff",
    "CheekSquintLeft",
    "CheekSquintRight",
    "NoseSneerLeft",
    "NoseSneerRight",
    "TongueOut",
)
ANGLE_NAMES: tuple[str, ...] = (
    "HeadYaw",
    "HeadPitch",
    "HeadRoll",
    "LeftEyeYaw",
    "LeftEyePitch",
    "LeftEyeRoll",
    "RightEyeYaw",
    "RightEyePitch",
    "RightEyeRoll",
)
BLENDSHAPE_COUNT = len(ARKIT_NAMES) + len(ANGLE_NAMES)  # 61, as Live Link Face writes
HEADER: tuple[str, ...] = ("Timecode", "BlendShapeCount", *ARKIT_NAMES, *ANGLE_NAMES)


def _normalise(name: str) -> str:
    """'eyeBlink_L', 'EyeBlinkLeft', 'eye_blink_left' -> 'eyeblinkleft'."""
    n = name.strip()
    for suffix, side in (("_L", "left"), ("_R", "right"), (".L", "left"), (".R", "right")):
        if n.endswith(suffix):
            n = n[: -len(suffix)] + side
    return n.replace("_", "").replace(" ", "").lower()


def arkit_mapping(names: Sequence[str] | None) -> tuple[np.ndarray, list[str], list[str]]:
    """How a model's named expression keys make the 52 ARKit weights: (52,K) matrix M with
    arkit = M @ weights, the ARKit columns no key feeds (written as 0) and the model keys
    that feed no column.

    A column takes the key of the same name (`eyeBlink_L` -> EyeBlinkLeft, case and `_L` /
    `_R` / `Left` / `Right` spellings ignored); a column the model splits into a left and a
    right key (ICT's browInnerUp_L/_R, cheekPuff_L/_R) takes their mean. A model without
    names (PCA expressions) feeds no column.
    """
    names = list(names or [])
    m = np.zeros((len(ARKIT_NAMES), len(names)), dtype=np.float64)
    keys = [_normalise(n) for n in names]
    used: set[int] = set()
    missing = []
    for a, arkit in enumerate(ARKIT_NAMES):
        want = _normalise(arkit)
        src = [k for k, key in enumerate(keys) if key == want]
        if not src:
            src = [k for k, key in enumerate(keys) if key in (want + "left", want + "right")]
        if not src:
            missing.append(arkit)
            continue
        m[a, src] = 1.0 / len(src)
        used.update(src)
    unused = [n for k, n in enumerate(names) if k not in used]
    return m, missing, unused


# -- timecodes -----------------------------------------------------------------------------


def nominal_rate(fps: float) -> int:
    """The whole frame rate the timecode counts in (29.97 -> 30, 23.976 -> 24)."""
    return max(1, int(round(float(fps))))


def format_timecode(index: int, fps: float, start_s: float = 0.0) -> str:
    """Frame `index` of a clip at `fps` as HH:MM:SS:FF.mmm (FF at the nominal rate, .mmm the
    fraction of a frame)."""
    nominal = nominal_rate(fps)
    frames = (start_s + index / float(fps)) * nominal  # time in nominal frames
    whole = math.floor(frames + 1e-6)
    sub = min(max(int(round((frames - whole) * 1000)), 0), 999)
    seconds, ff = divmod(whole, nominal)
    hh, rest = divmod(seconds, 3600)
    mm, ss = divmod(rest, 60)
    return f"{hh:02d}:{mm:02d}:{ss:02d}:{ff:02d}.{sub:03d}"


def _timecode_parts(text: str) -> tuple[float, float]:
    """'HH:MM:SS:FF.mmm' -> (whole seconds, frames incl. fraction); also HH:MM:SS:FF and
    HH:MM:SS;FF (drop-frame separator)."""
    t = text.strip().replace(";", ":")
    parts = t.split(":")
    if len(parts) != 4:
        raise ValueError(f"not a timecode: {text!r}")
    hh, mm, ss = (int(p) for p in parts[:3])
    return hh * 3600.0 + mm * 60.0 + ss, float(parts[3])


def parse_timecode(text: str, fps: float) -> float:
    """Seconds of a HH:MM:SS:FF.mmm timecode counted at `fps` (its nominal rate)."""
    seconds, frames = _timecode_parts(text)
    return seconds + frames / nominal_rate(fps)


# -- writing -------------------------------------------------------------------------------


def livelink_csv_text(weights: np.ndarray, angles: np.ndarray, fps: float) -> str:
    """The CSV text for (T,52) weights in Live Link Face order and (T,9) angles (radians)."""
    weights = np.asarray(weights, dtype=np.float64)
    angles = np.asarray(angles, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != len(ARKIT_NAMES):
        raise ValueError(f"weights must be (T,{len(ARKIT_NAMES)}), got {weights.shape}")
    if angles.shape != (len(weights), len(ANGLE_NAMES)):
        raise ValueError(f"angles must be ({len(weights)},{len(ANGLE_NAMES)}), got {angles.shape}")
    weights = np.clip(np.nan_to_num(weights), 0.0, 1.0)
    angles = np.nan_to_num(angles)
    lines = [",".join(HEADER)]
    for i, (w, a) in enumerate(zip(weights, angles, strict=True)):
        values = ",".join(f"{v:.6f}" for v in (*w, *a))
        lines.append(f"{format_timecode(i, fps)},{BLENDSHAPE_COUNT},{values}")
    return "\n".join(lines) + "\n"


def write_livelink_csv(path: Path, weights: np.ndarray, angles: np.ndarray, fps: float) -> None:
    """Writes a Live Link Face style CSV atomically (see the module docstring)."""
    atomic_write_text(Path(path), livelink_csv_text(weights, angles, fps))


# -- reading -------------------------------------------------------------------------------

STANDARD_RATES = (24, 25, 30, 48, 50, 60, 100, 120)


@dataclass
class LiveLinkTake:
    """A Live Link Face style CSV read by column name.

    `weights` (T,52) in ARKIT_NAMES order (0 for a column the file lacks, listed in
    `missing`); `angles` (T,9) in ANGLE_NAMES order (0 where absent); `columns` every numeric
    column by its name as written; `unknown` the columns that are neither; `times` seconds
    from the first frame (from the timecodes at `fps`).
    """

    timecodes: list[str]
    weights: np.ndarray
    angles: np.ndarray
    columns: dict[str, np.ndarray]
    fps: float
    times: np.ndarray
    missing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def weight(self, name: str) -> np.ndarray:
        """(T,) one ARKit weight by name (any spelling `arkit_mapping` accepts)."""
        want = _normalise(name)
        for i, n in enumerate(ARKIT_NAMES):
            if _normalise(n) == want:
                return self.weights[:, i]
        raise KeyError(name)


def read_livelink_csv(path: Path, fps: float | None = None) -> LiveLinkTake:
    """Reads a Live Link Face style CSV by column name (any order, extra columns kept in
    `columns` and listed in `unknown`, missing ones zero and listed in `missing`; names
    matched without regard to case or Left/_L spelling). `fps`: the rate the timecodes count
    frames in; None infers it from the largest frame number seen (a take holding a whole
    second; else 60, Live Link Face's default)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise MfnetError(f"{path}: cannot read the CSV ({e})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise MfnetError(f"{path}: empty CSV")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    index = {_normalise(h): i for i, h in enumerate(header)}
    tc_col = index.get("timecode")
    timecodes = [r[tc_col].strip() if tc_col is not None and tc_col < len(r) else "" for r in body]

    def column(i: int) -> np.ndarray:
        out = np.zeros(len(body))
        for k, r in enumerate(body):
            try:
                out[k] = float(r[i]) if i < len(r) and r[i].strip() else np.nan
            except ValueError:
                raise MfnetError(
                    f"{path}: row {k + 2}, column {header[i]!r}: not a number: {r[i]!r}"
                ) from None
        return out

    skip = {"timecode", "blendshapecount"}
    columns = {
        header[i]: column(i) for i in range(len(header)) if _normalise(header[i]) not in skip
    }
    known = {_normalise(n) for n in (*ARKIT_NAMES, *ANGLE_NAMES)}
    unknown = [h for h in columns if _normalise(h) not in known]

    def pick(names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        out = np.zeros((len(body), len(names)))
        absent = []
        for j, n in enumerate(names):
            i = index.get(_normalise(n))
            if i is None:
                absent.append(n)
            else:
                out[:, j] = np.nan_to_num(columns[header[i]])
        return out, absent

    weights, missing = pick(ARKIT_NAMES)
    angles, _ = pick(ANGLE_NAMES)
    if fps is None:
        fps = _infer_rate(timecodes)
    times = np.arange(len(body), dtype=np.float64) / fps
    if timecodes and all(timecodes):
        try:
            t = np.array([parse_timecode(tc, fps) for tc in timecodes])
            times = t - t[0]
        except ValueError:
            pass
    return LiveLinkTake(timecodes, weights, angles, columns, float(fps), times, missing, unknown)


def _infer_rate(timecodes: list[str]) -> float:
    """The smallest standard rate above every frame number seen, when the take holds a whole
    second (three distinct seconds in its timecodes); else 60."""
    seen = []
    for tc in timecodes:
        try:
            seconds, frames = _timecode_parts(tc)
        except ValueError:
            continue
        seen.append((seconds, frames))
    if len({s for s, _ in seen}) < 3:
        return 60.0
    top = max(int(f) for _, f in seen)
    for rate in STANDARD_RATES:
        if rate > top:
            return float(rate)
    return float(top + 1)
