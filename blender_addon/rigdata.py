"""Reading and checking a result folder, names, and the FLAME -> Blender axis mapping.

No bpy here (numpy only), so all of it is unit-tested with plain pytest. The contract is
docs/RESULT_FOLDER.md (format_version 1).

Axes: FLAME's model axes are y up, x toward the subject's left, the face looking along +z.
Blender is z up with the face looking along -y (Blender's "front" view), so

    (x_b, y_b, z_b) = (x_f, -z_f, y_f)        to_blender()
    (x_f, y_f, z_f) = (x_b, z_b, -y_b)        to_flame()

Units stay metres. Every bone of the rig is created pointing straight up in Blender (+Z,
tail above head) with roll 0; such a bone's local axes (X, Y, Z) are Blender's (X, Z, -Y),
which are exactly FLAME's (x, y, z). A pose bone's rotation_quaternion is therefore FLAME's
local joint rotation written in FLAME axes, and a pose bone's location is a translation in
FLAME axes (both relative to the parent, like FLAME's kinematic chain).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
RIG_FILE = "rig.npz"
TEXTURE_FILE = "texture.png"
GLB_FILE = "head.glb"

# The FLAME -> Blender rotation as a matrix: p_b = AXES @ p_f.
AXES = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

# Extra bone that FLAME does not have: a weightless, locked "socket" under the neck at the
# eyes' height, to parent hats, glasses or hair to (it follows root and neck exactly).
HEAD_SOCKET = "head"

EXPRESSION_PREFIX = "exp_"
CORRECTIVE_PREFIX = "pose_"
BASIS_KEY = "Basis"


class ResultError(ValueError):
    """The result folder is missing, incomplete or not a format this add-on reads."""


def to_blender(points: np.ndarray) -> np.ndarray:
    """(..., 3) FLAME axes -> Blender axes (x, -z, y), same units."""
    p = np.asarray(points)
    return np.stack([p[..., 0], -p[..., 2], p[..., 1]], axis=-1)


def to_flame(points: np.ndarray) -> np.ndarray:
    """(..., 3) Blender axes -> FLAME axes (x, z, -y), the inverse of to_blender()."""
    p = np.asarray(points)
    return np.stack([p[..., 0], p[..., 2], -p[..., 1]], axis=-1)


def expression_key_name(k: int) -> str:
    """Shape key name of expression component k; the same names as head.glb's morph targets."""
    return f"{EXPRESSION_PREFIX}{k:03d}"


def corrective_key_name(joint: str, r: int, c: int) -> str:
    """Shape key name of the pose corrective for entry (r, c) of joint's (R - I)."""
    return f"{CORRECTIVE_PREFIX}{joint}_{r}{c}"


def corrective_index(j: int, r: int, c: int) -> int:
    """FLAME's posedirs component for non-root joint j (1-based in the joint list), entry (r, c)."""
    return 9 * (j - 1) + 3 * r + c


# --------------------------------------------------------------------------- rotations


def axis_angle_to_quaternion(aa: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle (radians) -> (..., 4) unit quaternion (w, x, y, z)."""
    aa = np.asarray(aa, dtype=np.float64)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    half = 0.5 * angle
    # sin(half)/angle, with its limit 1/2 at angle 0
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(
            angle > 1e-8, np.sin(half) / np.where(angle > 1e-8, angle, 1.0), 0.5 - angle**2 / 48.0
        )
    return np.concatenate([np.cos(half), aa * k], axis=-1)


def quaternion_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternion (w, x, y, z), any norm -> (..., 3) axis-angle with angle <= pi."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    q = np.where(q[..., :1] < 0, -q, q)
    s = np.linalg.norm(q[..., 1:], axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, q[..., :1])
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(s > 1e-8, angle / np.where(s > 1e-8, s, 1.0), 2.0)
    return q[..., 1:] * k


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternion (w, x, y, z), any non-zero norm -> (..., 3, 3) rotation (normalised,
    as Blender does when it evaluates a pose bone)."""
    q = np.asarray(q, dtype=np.float64)
    w, x, y, z = np.moveaxis(q, -1, 0)
    n = w * w + x * x + y * y + z * z
    s = 2.0 / n
    m = np.stack(
        [
            1 - s * (y * y + z * z), s * (x * y - w * z), s * (x * z + w * y),
            s * (x * y + w * z), 1 - s * (x * x + z * z), s * (y * z - w * x),
            s * (x * z - w * y), s * (y * z + w * x), 1 - s * (x * x + y * y),
        ],
        axis=-1,
    )  # fmt: skip
    return m.reshape(q.shape[:-1] + (3, 3))


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle -> (..., 3, 3) rotation matrix (Rodrigues)."""
    return quaternion_to_matrix(axis_angle_to_quaternion(aa))


def continuous_quaternions(q: np.ndarray) -> np.ndarray:
    """(T, 4) quaternions with signs flipped so neighbours lie in the same hemisphere
    (keyframe interpolation then takes the short way round)."""
    q = np.array(q, dtype=np.float64, copy=True)
    if len(q) > 1:
        dots = np.einsum("ti,ti->t", q[1:], q[:-1])
        q[1:] *= np.cumprod(np.where(dots < 0.0, -1.0, 1.0))[:, None]
    return q


# --------------------------------------------------------------------------- the folder


_REQUIRED: dict[str, tuple[str, ...]] = {
    # key: symbolic shape (checked against each other below)
    "format_version": (),
    "vertices": ("V", 3),
    "faces": ("F", 3),
    "uv_coords": ("T", 2),
    "uv_faces": ("F", 3),
    "expression_basis": ("K", "V", 3),
    "expression": ("K",),
    "pose_correctives": ("P", "V", 3),
    "joints": ("J", 3),
    "joint_expression_basis": ("K", "J", 3),
    "joint_names": ("J",),
    "parents": ("J",),
    "skin_weights": ("V", "J"),
}
_OPTIONAL_POSES = {"jaw_pose": 3, "neck_pose": 3, "eye_pose": 6}


@dataclass
class ResultRig:
    """The arrays of a result folder's rig.npz that the add-on uses, in FLAME axes, float64.

    Shapes: vertices (V,3), faces (F,3), uv_coords (T,2), uv_faces (F,3), expression_basis
    (K,V,3), expression (K,), pose_correctives (P,V,3) with P = 9*(J-1), joints (J,3),
    joint_expression_basis (K,J,3), parents (J,), skin_weights (V,J).
    """

    folder: Path
    vertices: np.ndarray
    faces: np.ndarray
    uv_coords: np.ndarray
    uv_faces: np.ndarray
    expression_basis: np.ndarray
    expression: np.ndarray
    pose_correctives: np.ndarray
    joints: np.ndarray
    joint_expression_basis: np.ndarray
    joint_names: list[str]
    parents: np.ndarray
    skin_weights: np.ndarray
    model_kind: str = "unknown"
    model_name: str = ""
    fitted_pose: dict[str, np.ndarray] = field(default_factory=dict)  # jaw/neck/eye axis-angle
    texture: Path | None = None
    params: dict = field(default_factory=dict)

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def n_expressions(self) -> int:
        return int(self.expression_basis.shape[0])

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

    def expression_key_names(self) -> list[str]:
        return [expression_key_name(k) for k in range(self.n_expressions)]

    def corrective_key_names(self) -> list[tuple[int, str]]:
        """[(posedirs component p, shape key name)] in component order."""
        out = []
        for j in range(1, self.n_joints):
            for r in range(3):
                for c in range(3):
                    p = corrective_index(j, r, c)
                    out.append((p, corrective_key_name(self.joint_names[j], r, c)))
        return out

    def expressed_joints(self, expression: np.ndarray) -> np.ndarray:
        """(J,3) joints regressed from the expressed mesh: joints + sum_k e_k joint_expression_basis[k]."""
        e = np.zeros(self.n_expressions)
        e[: len(expression)] = np.asarray(expression, dtype=np.float64)[: self.n_expressions]
        return self.joints + np.einsum("k,kjc->jc", e, self.joint_expression_basis)

    def fitted_quaternions(self) -> dict[str, np.ndarray]:
        """Bone name -> (w,x,y,z) of the fitted jaw, neck and eye rotations (root stays neutral)."""
        out: dict[str, np.ndarray] = {}
        names = self.joint_names
        if "neck_pose" in self.fitted_pose and len(names) > 1:
            out[names[1]] = axis_angle_to_quaternion(self.fitted_pose["neck_pose"])
        if "jaw_pose" in self.fitted_pose and len(names) > 2:
            out[names[2]] = axis_angle_to_quaternion(self.fitted_pose["jaw_pose"])
        if "eye_pose" in self.fitted_pose and len(names) > 4:
            eyes = self.fitted_pose["eye_pose"]
            out[names[3]] = axis_angle_to_quaternion(eyes[:3])
            out[names[4]] = axis_angle_to_quaternion(eyes[3:6])
        return out


def _as_str(a: np.ndarray) -> str:
    return str(np.asarray(a).reshape(-1)[0]) if np.asarray(a).size else ""


def load_result(folder: str | Path) -> ResultRig:
    """Reads and checks a result folder (rig.npz, texture.png, params.json).

    Raises ResultError with a message that names the file and what is wrong.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultError(f"{folder}: not a folder (expected an mfnet result folder)")
    path = folder / RIG_FILE
    if not path.is_file():
        raise ResultError(f"{path}: missing; this is not an mfnet result folder")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled objects), OSError
        raise ResultError(f"{path}: cannot be read ({e})") from e

    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ResultError(f"{path}: missing arrays {', '.join(missing)}")
    version = int(np.asarray(data["format_version"]).reshape(-1)[0])
    if version != FORMAT_VERSION:
        raise ResultError(
            f"{path}: format_version {version}; this add-on reads version {FORMAT_VERSION} "
            "(update the add-on or the backend so they match)"
        )
    sizes: dict[str, int] = {}
    for key, shape in _REQUIRED.items():
        arr = np.asarray(data[key])
        if len(shape) != arr.ndim:
            raise ResultError(f"{path}: {key} has shape {arr.shape}, expected {shape}")
        for dim, want in zip(arr.shape, shape, strict=True):
            if isinstance(want, int):
                if dim != want:
                    raise ResultError(f"{path}: {key} has shape {arr.shape}, expected {shape}")
            elif sizes.setdefault(want, dim) != dim:
                raise ResultError(
                    f"{path}: {key} has {want}={dim} but other arrays have {want}={sizes[want]}"
                )
    n_j = sizes["J"]
    if sizes["P"] != 9 * (n_j - 1):
        raise ResultError(
            f"{path}: pose_correctives has {sizes['P']} components, expected 9*(J-1)={9 * (n_j - 1)}"
        )
    faces = np.asarray(data["faces"], dtype=np.int64)
    uv_faces = np.asarray(data["uv_faces"], dtype=np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= sizes["V"]):
        raise ResultError(f"{path}: faces index outside the {sizes['V']} vertices")
    if uv_faces.size and (uv_faces.min() < 0 or uv_faces.max() >= sizes["T"]):
        raise ResultError(f"{path}: uv_faces index outside the {sizes['T']} UV coordinates")
    parents = np.asarray(data["parents"], dtype=np.int64)
    if parents[0] != -1 or any(not (0 <= parents[j] < j) for j in range(1, n_j)):
        raise ResultError(f"{path}: parents {parents.tolist()} is not a tree rooted at joint 0")
    names = [str(n) for n in np.asarray(data["joint_names"]).tolist()]
    if len(set(names)) != len(names) or any(not n for n in names):
        raise ResultError(f"{path}: joint_names {names} must be unique and non-empty")
    floats = {
        k: np.asarray(data[k], dtype=np.float64)
        for k in (
            "vertices", "uv_coords", "expression_basis", "expression", "pose_correctives",
            "joints", "joint_expression_basis", "skin_weights",
        )
    }  # fmt: skip
    for k, a in floats.items():
        if not np.all(np.isfinite(a)):
            raise ResultError(f"{path}: {k} contains NaN or infinite values")

    fitted: dict[str, np.ndarray] = {}
    for key, n in _OPTIONAL_POSES.items():
        if key in data and np.asarray(data[key]).size == n:
            fitted[key] = np.asarray(data[key], dtype=np.float64).reshape(n)

    params: dict = {}
    if (folder / "params.json").is_file():
        try:
            params = json.loads((folder / "params.json").read_text())
        except (OSError, ValueError):
            params = {}
    texture = folder / TEXTURE_FILE
    return ResultRig(
        folder=folder,
        vertices=floats["vertices"],
        faces=faces,
        uv_coords=floats["uv_coords"],
        uv_faces=uv_faces,
        expression_basis=floats["expression_basis"],
        expression=floats["expression"],
        pose_correctives=floats["pose_correctives"],
        joints=floats["joints"],
        joint_expression_basis=floats["joint_expression_basis"],
        joint_names=names,
        parents=parents,
        skin_weights=floats["skin_weights"],
        model_kind=_as_str(data.get("model_kind", np.array("unknown"))),
        model_name=_as_str(data.get("model_name", np.array(""))),
        fitted_pose=fitted,
        texture=texture if texture.is_file() else None,
        params=params,
    )


# --------------------------------------------------------------------------- rig layout


@dataclass
class BoneSpec:
    """One bone in Blender axes: head at the joint, tail straight above it (+Z), roll 0."""

    name: str
    head: tuple[float, float, float]
    tail: tuple[float, float, float]
    parent: str | None
    deform: bool = True
    socket: bool = False  # locked, weightless helper bone for attaching things
    mechanism: bool = False  # hidden pivot bone whose location the expression drives


# Bone length as a fraction of the head's height, per FLAME joint name.
_BONE_LENGTH = {
    "root": 0.25,
    "neck": 0.25,
    "jaw": 0.12,
    "eye_L": 0.06,
    "eye_R": 0.06,
    HEAD_SOCKET: 0.3,
}
MECHANISM_PREFIX = "MCH-"


def pivot_bone_name(joint: str) -> str:
    """The hidden parent bone that carries joint's expression pivot offset (Rigify-style name)."""
    return f"{MECHANISM_PREFIX}{joint}"


def bone_specs(rig: ResultRig) -> list[BoneSpec]:
    """The armature's bones, parents before children.

    Per FLAME joint (same names, FLAME's parents): a hidden, non-deforming pivot bone
    "MCH-<joint>" whose location the expression drives (drivers_math.py explains why it
    cannot be the joint's own bone: a bone's location driven by its own rotation is a
    dependency cycle), and under it the deforming bone "<joint>" that animators rotate.
    Plus the weightless, locked "head" socket under "neck" when the model has no joint of
    that name.
    """
    joints_b = to_blender(rig.joints)
    height = float(np.ptp(rig.vertices[:, 1])) or 0.2
    specs: list[BoneSpec] = []
    for j, name in enumerate(rig.joint_names):
        head = joints_b[j]
        length = _BONE_LENGTH.get(name, 0.1) * height
        parent = None if rig.parents[j] < 0 else rig.joint_names[int(rig.parents[j])]
        pivot = pivot_bone_name(name)
        specs.append(
            BoneSpec(
                pivot,
                _t(head),
                _t(head + (0.0, 0.0, 0.5 * length)),
                parent,
                deform=False,
                mechanism=True,
            )
        )
        specs.append(BoneSpec(name, _t(head), _t(head + (0.0, 0.0, length)), pivot))
    names = rig.joint_names
    if HEAD_SOCKET not in names and len(names) > 1:
        neck = names[1]
        eyes = [names.index(n) for n in ("eye_L", "eye_R") if n in names]
        base = joints_b[1].copy()
        if eyes:
            base[2] = float(np.mean(joints_b[eyes, 2]))
            base[1] = float(np.mean(joints_b[eyes, 1])) * 0.5 + base[1] * 0.5
        else:
            base[2] += 0.3 * height
        tail = base + (0.0, 0.0, _BONE_LENGTH[HEAD_SOCKET] * height)
        specs.append(BoneSpec(HEAD_SOCKET, _t(base), _t(tail), neck, deform=False, socket=True))
    return specs


def _t(v: np.ndarray) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


def loop_arrays(rig: ResultRig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat arrays for Mesh.foreach_set: loop vertex indices (3F,), loop starts (F,), and
    per-loop UVs (3F*2,) float32."""
    f = rig.faces.shape[0]
    loops = rig.faces.reshape(-1).astype(np.int32)
    starts = np.arange(0, 3 * f, 3, dtype=np.int32)
    uvs = rig.uv_coords[rig.uv_faces.reshape(-1)].astype(np.float32).reshape(-1)
    return loops, starts, uvs


def weight_groups(weights: np.ndarray, threshold: float = 0.0) -> list[tuple[float, np.ndarray]]:
    """For one joint's (V,) skin weights: [(weight, vertex indices)] grouped by equal value,
    for VertexGroup.add (which takes one weight per call). Zero weights are left out."""
    w = np.asarray(weights, dtype=np.float32)
    idx = np.nonzero(w > threshold)[0]
    if idx.size == 0:
        return []
    values, inverse = np.unique(w[idx], return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(values) + 1))
    return [(float(values[i]), idx[order[bounds[i] : bounds[i + 1]]]) for i in range(len(values))]


def expression_slider_limit(values: np.ndarray, minimum: float = 5.0) -> float:
    """Shape-key slider range (+-) that holds the given values (Blender allows at most 10)."""
    peak = float(np.max(np.abs(values))) if np.size(values) else 0.0
    return float(min(10.0, max(minimum, math.ceil(peak + 1.0))))
