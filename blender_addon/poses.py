"""Named expression poses and per-frame FLAME parameter sequences as plain data. No bpy.

A pose is what the expressions panel shows: expression shape-key values plus bone
rotations. Rotations are axis-angle vectors in radians in FLAME axes (for the rig's bones,
FLAME axes are the bones' local axes; see rigdata.py), as in FLAME's `pose` vector.

Pose library file (JSON):
    {"format": "mfnet-poses", "version": 1,
     "poses": {"smile": {"expression": {"exp_000": 1.2, ...},
                         "bones": {"jaw": [0.1, 0, 0], ...}}}}

Sequence files (.npz or .json), T frames; every key is optional except that one must exist:
    expression (T,K)   jaw_pose (T,3)   neck_pose (T,3)   eye_pose (T,6) left then right
    leye_pose / reye_pose (T,3)   global_pose | root_pose | head_pose (T,3)
    pose (T,15) FLAME's full pose (root, neck, jaw, eye_L, eye_R) or (T,6) DECA's (root, jaw)
    fps ()
JSON can hold the same keys as lists of lists, or {"fps": .., "frames": [{key: list}, ...]}.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import livelink, rigdata

POSES_FORMAT = "mfnet-poses"
POSES_VERSION = 1
# A JSON pose library or sequence, and all arrays read from one .npz sequence: an hour of
# 60 fps animation with 100 expression columns is ~170 MB of float64.
MAX_SEQUENCE_BYTES = 512 << 20
MAX_FRAMES = livelink.MAX_FRAMES


class PoseError(ValueError):
    """A pose or sequence file is unreadable or malformed (message names the file)."""


@dataclass
class Pose:
    expression: dict[str, float]
    bones: dict[str, list[float]]  # bone name -> axis-angle (3,) radians, FLAME axes

    def to_json(self) -> dict:
        return {
            "expression": {k: float(v) for k, v in self.expression.items()},
            "bones": {k: [float(x) for x in v] for k, v in self.bones.items()},
        }

    @classmethod
    def from_json(cls, obj: object, where: str = "pose") -> Pose:
        if not isinstance(obj, dict):
            raise PoseError(f"{where}: expected an object with 'expression' and 'bones'")
        expr = obj.get("expression", {})
        bones = obj.get("bones", {})
        if not isinstance(expr, dict) or not isinstance(bones, dict):
            raise PoseError(f"{where}: 'expression' and 'bones' must be objects")
        try:
            e = {str(k): float(v) for k, v in expr.items()}
            b = {str(k): [float(x) for x in v] for k, v in bones.items()}
        except (TypeError, ValueError) as err:
            raise PoseError(f"{where}: non-numeric value ({err})") from err
        bad = [k for k, v in b.items() if len(v) != 3]
        if bad:
            raise PoseError(f"{where}: bone rotations must be 3 numbers (axis-angle): {bad}")
        if not all(np.isfinite(list(e.values()) + [x for v in b.values() for x in v])):
            raise PoseError(f"{where}: NaN or infinite value")
        return cls(e, b)


def load_library(path: str | Path) -> dict[str, Pose]:
    """Named poses from a library file; a missing file is an empty library."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        obj = json.loads(_read_text(path))
    except (OSError, ValueError) as e:
        raise PoseError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(obj, dict) or obj.get("format") != POSES_FORMAT:
        raise PoseError(f"{path}: not an mfnet pose library (format must be {POSES_FORMAT!r})")
    if int(obj.get("version", 0)) > POSES_VERSION:
        raise PoseError(
            f"{path}: pose library version {obj.get('version')} is newer than this add-on"
        )
    poses = obj.get("poses", {})
    if not isinstance(poses, dict):
        raise PoseError(f"{path}: 'poses' must be an object")
    return {str(name): Pose.from_json(p, f"{path}: pose {name!r}") for name, p in poses.items()}


def save_library(path: str | Path, poses: dict[str, Pose]) -> None:
    """Writes the library atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {
        "format": POSES_FORMAT,
        "version": POSES_VERSION,
        "poses": {name: poses[name].to_json() for name in sorted(poses)},
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- sequences


@dataclass
class Sequence:
    """Per-frame FLAME parameters; arrays are (T, n) float64 or None when absent."""

    n_frames: int
    fps: float | None
    expression: np.ndarray | None
    root_pose: np.ndarray | None
    neck_pose: np.ndarray | None
    jaw_pose: np.ndarray | None
    eye_pose: np.ndarray | None  # (T,6) left then right
    named: dict[str, np.ndarray] | None = None  # Live Link column -> (T,) weight
    notes: list[str] = field(default_factory=list)  # e.g. columns the reader did not know

    def joint_rotations(self, joint_names: list[str]) -> dict[str, np.ndarray]:
        """Bone name -> (T,3) axis-angle, by FLAME's joint order (root, neck, jaw, eye_L, eye_R)."""
        out: dict[str, np.ndarray] = {}
        by_index = {0: self.root_pose, 1: self.neck_pose, 2: self.jaw_pose}
        if self.eye_pose is not None:
            by_index[3] = self.eye_pose[:, :3]
            by_index[4] = self.eye_pose[:, 3:6]
        for j, arr in by_index.items():
            if arr is not None and j < len(joint_names):
                out[joint_names[j]] = arr
        return out


_ROOT_KEYS = ("global_pose", "root_pose", "head_pose", "global_orient")


def load_sequence(path: str | Path) -> Sequence:
    """Reads a .npz or .json sequence (format in the module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            if not path.is_file():
                raise PoseError(f"{path}: not a file")
            raw: dict = _read_npz(path)
        elif suffix == ".json":
            obj = json.loads(_read_text(path))
            raw = _json_to_arrays(obj, path)
        elif suffix == ".csv":
            return sequence_from_livelink(livelink.read_livelink_csv(path))
        else:
            raise PoseError(f"{path}: use a .npz, .json or Live Link Face .csv file")
    except PoseError:
        raise
    except livelink.LiveLinkError as e:
        raise PoseError(str(e)) from None
    except Exception as e:  # OSError, ValueError, BadZipFile
        raise PoseError(f"{path}: cannot be read ({e})") from e
    return sequence_from_arrays(raw, str(path))


# The keys sequence_from_arrays reads; nothing else in an .npz is decompressed.
SEQUENCE_KEYS = (
    "expression",
    "exp",
    "neck_pose",
    "jaw_pose",
    "eye_pose",
    "leye_pose",
    "reye_pose",
    *_ROOT_KEYS,
    "pose",
    "fps",
)


def _read_text(path: Path) -> str:
    """A JSON file's text, refusing what is not a regular file or is too big to be ours."""
    if not path.is_file():
        raise PoseError(f"{path}: not a file")
    size = path.stat().st_size
    if size > MAX_SEQUENCE_BYTES:
        raise PoseError(f"{path}: {size >> 20} MiB, larger than {MAX_SEQUENCE_BYTES >> 20} MiB")
    return path.read_text(encoding="utf-8")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The sequence arrays of an .npz: only SEQUENCE_KEYS, every header checked (numbers
    only, declared size within MAX_SEQUENCE_BYTES in all) before any data is decompressed,
    never unpickled; a tiny file declaring gigabytes is refused, not expanded."""
    try:
        zf, members = rigdata.open_npz(path)
        with zf:
            headers: dict[str, rigdata.NpzMember] = {}
            total = 0
            for key in SEQUENCE_KEYS:
                if key not in members:
                    continue
                m = rigdata.NpzMember(zf, members[key], f"{path}: {key}")
                m.read_header()
                if m.dtype.kind not in "fiub":
                    raise PoseError(f"{path}: {key} holds {m.dtype.str}, not numbers")
                total += m.nbytes
                if total > MAX_SEQUENCE_BYTES:
                    raise PoseError(
                        f"{path}: the sequence arrays declare more than "
                        f"{MAX_SEQUENCE_BYTES >> 20} MiB"
                    )
                headers[key] = m
            return {key: m.read_data() for key, m in headers.items()}
    except rigdata.ResultError as e:
        raise PoseError(str(e)) from None


def sequence_from_livelink(take: livelink.LiveLinkTake) -> Sequence:
    """A Live Link Face take as a sequence: named ARKit weights, the head's angles on the
    neck bone, the eyes' on the eye bones."""
    n = take.n_frames
    a = take.angles

    def rotation(names: tuple[str, str, str]) -> np.ndarray | None:
        if not any(k in a for k in names):
            return None
        yaw, pitch, roll = (a.get(k, np.zeros(n)) for k in names)
        return livelink.angles_to_axis_angle(yaw, pitch, roll)

    left, right = rotation(livelink.EYE_ANGLES["L"]), rotation(livelink.EYE_ANGLES["R"])
    eyes = None
    if left is not None or right is not None:
        zero = np.zeros((n, 3))
        eyes = np.concatenate(
            [left if left is not None else zero, right if right is not None else zero], 1
        )
    notes = [f"columns not understood: {', '.join(take.unknown)}"] if take.unknown else []
    return Sequence(
        n_frames=n,
        fps=take.fps,
        expression=None,
        root_pose=None,
        neck_pose=rotation(livelink.HEAD_ANGLES),
        jaw_pose=None,
        eye_pose=eyes,
        named=take.weights,
        notes=notes,
    )


def _json_to_arrays(obj: object, path: Path) -> dict:
    if isinstance(obj, list):
        obj = {"frames": obj}
    if not isinstance(obj, dict):
        raise PoseError(f"{path}: expected a JSON object")
    if "frames" in obj:
        frames = obj["frames"]
        if (
            not isinstance(frames, list)
            or not frames
            or not all(isinstance(f, dict) for f in frames)
        ):
            raise PoseError(f"{path}: 'frames' must be a non-empty list of objects")
        keys = set().union(*(f.keys() for f in frames))
        raw = {}
        for k in keys:
            if not all(k in f for f in frames):
                raise PoseError(f"{path}: key {k!r} is missing in some frames")
            raw[k] = [f[k] for f in frames]
        if "fps" in obj:
            raw["fps"] = obj["fps"]
        return raw
    return dict(obj)


def sequence_from_arrays(raw: dict, where: str = "sequence") -> Sequence:
    def arr(key: str, width: int | None) -> np.ndarray | None:
        if key not in raw:
            return None
        try:
            a = np.asarray(raw[key], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise PoseError(f"{where}: {key} is not numeric ({e})") from e
        if a.ndim == 1 and width is not None and a.shape[0] == width:
            a = a[None]
        if a.ndim != 2 or (width is not None and a.shape[1] != width):
            want = f"(T,{width})" if width else "(T,K)"
            raise PoseError(f"{where}: {key} has shape {a.shape}, expected {want}")
        if not np.all(np.isfinite(a)):
            raise PoseError(f"{where}: {key} contains NaN or infinite values")
        return a

    expression = arr("expression", None) if "expression" in raw else arr("exp", None)
    neck, jaw, eyes = arr("neck_pose", 3), arr("jaw_pose", 3), arr("eye_pose", 6)
    root = None
    for k in _ROOT_KEYS:
        if k in raw:
            root = arr(k, 3)
            break
    if eyes is None and ("leye_pose" in raw or "reye_pose" in raw):
        left, right = arr("leye_pose", 3), arr("reye_pose", 3)
        t = len(left) if left is not None else len(right)
        eyes = np.concatenate(
            [
                left if left is not None else np.zeros((t, 3)),
                right if right is not None else np.zeros((t, 3)),
            ],
            axis=1,
        )
    if "pose" in raw:
        full = arr("pose", None)
        if full.shape[1] == 15:
            root = full[:, 0:3] if root is None else root
            neck = full[:, 3:6] if neck is None else neck
            jaw = full[:, 6:9] if jaw is None else jaw
            eyes = full[:, 9:15] if eyes is None else eyes
        elif full.shape[1] == 6:  # DECA: global + jaw
            root = full[:, 0:3] if root is None else root
            jaw = full[:, 3:6] if jaw is None else jaw
        else:
            raise PoseError(
                f"{where}: pose has {full.shape[1]} columns; expected 15 (FLAME) or 6 (DECA)"
            )
    present = {
        k: v
        for k, v in {
            "expression": expression,
            "root": root,
            "neck": neck,
            "jaw": jaw,
            "eyes": eyes,
        }.items()
        if v is not None
    }
    if not present:
        raise PoseError(f"{where}: no expression, jaw_pose, neck_pose, eye_pose or pose found")
    lengths = {k: len(v) for k, v in present.items()}
    if len(set(lengths.values())) != 1:
        raise PoseError(f"{where}: the arrays have different frame counts {lengths}")
    if next(iter(lengths.values())) > MAX_FRAMES:
        raise PoseError(f"{where}: more than {MAX_FRAMES} frames")
    fps = None
    if "fps" in raw:
        try:
            fps = float(np.asarray(raw["fps"]).reshape(-1)[0])
        except (TypeError, ValueError, IndexError):
            fps = None
        if fps is not None and not (np.isfinite(fps) and fps > 0):
            raise PoseError(f"{where}: fps must be a positive number")
    return Sequence(
        n_frames=next(iter(lengths.values())),
        fps=fps,
        expression=expression,
        root_pose=root,
        neck_pose=neck,
        jaw_pose=jaw,
        eye_pose=eyes,
    )


def fit_expression_columns(expression: np.ndarray, n_keys: int) -> tuple[np.ndarray, int]:
    """(T,K') sequence expression -> (T,n_keys) (padded with zeros or cut), and how many
    columns were dropped."""
    t, k = expression.shape
    out = np.zeros((t, n_keys))
    m = min(k, n_keys)
    out[:, :m] = expression[:, :m]
    return out, max(0, k - n_keys)
