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

import ast
import json
import math
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

FORMAT_VERSION = 2  # the newest this add-on reads; 1 stays readable
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
# Copies of ARKit keys that a bone drives (the jaw opens jawOpen, the eyes the eyeLook
# keys): the artist's own sliders stay free, both workflows add up.
DRIVEN_PREFIX = "DRV-"


def is_expression_key(name: str) -> bool:
    """Expression keys are every shape key but the basis, the pose correctives (drivers own
    them) and the bone-driven copies."""
    return name != BASIS_KEY and not name.startswith((CORRECTIVE_PREFIX, DRIVEN_PREFIX))


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
    warnings: list[str] = field(default_factory=list)  # renamed joints, ignored files
    expression_names: list[str] | None = None  # e.g. ARKit names; None: exp_000...
    expression_lower: np.ndarray | None = None  # (K,) slider limits where bounded
    expression_upper: np.ndarray | None = None
    view_names: list[str] = field(default_factory=list)
    view_expressions: np.ndarray | None = None  # (N,K) each photo's own expression
    part_names: list[str] = field(default_factory=lambda: ["skin"])
    face_part: np.ndarray | None = None  # (F,) index into part_names
    part_alpha: np.ndarray | None = None  # (Q,) opacity per part
    licence: str = ""
    arkit_names: list[str] = field(default_factory=list)  # ARKit keys beside PCA ones
    arkit_basis: np.ndarray | None = None  # (A,V,3)

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
        """The model's own key names (ARKit names on the ICT model), else exp_000..."""
        if self.expression_names is not None and len(self.expression_names) == self.n_expressions:
            return list(self.expression_names)
        return [expression_key_name(k) for k in range(self.n_expressions)]

    def corrective_key_names(self) -> list[tuple[int, str]]:
        """[(posedirs component p, shape key name)] in component order; none for models
        without pose correctives (all zero, e.g. the ICT model)."""
        if not np.any(self.pose_correctives):
            return []
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


# --------------------------------------------------------------------------- reading rig.npz

# Limits no real result comes near (FLAME: V=5023, F=9976, K<=300, J=5, ~25 MB of arrays),
# so that a damaged or crafted file is refused before it costs memory or time. Sizes are
# the ones each .npy header declares, checked for every array before any array is read.
MAX_ARRAY_BYTES = 512 << 20  # one array
MAX_TOTAL_BYTES = 1 << 30  # all arrays read from one rig.npz
MAX_TEXT_BYTES = 1 << 20  # one array of names
MAX_TEXT_CHARS = 1024  # one name
MAX_NPY_HEADER = 10_000  # numpy's own default limit for a .npy header
MAX_PARAMS_BYTES = 16 << 20  # params.json
MAX_TEXTURE_SIZE = 16384  # texture.png, pixels per side
_READ_CHUNK = 16 << 20

# The symbolic dimensions of rig.npz (docs/RESULT_FOLDER.md) and their allowed ranges.
DIMENSIONS: dict[str, tuple[int, int]] = {
    "V": (3, 2_000_000),  # vertices
    "F": (1, 4_000_000),  # faces
    "T": (1, 4_000_000),  # UV coordinates
    "K": (0, 1000),  # expression keys
    "J": (1, 64),  # joints
    "P": (0, 9 * 63),  # pose-corrective components, 9*(J-1)
    "S": (0, 10_000),  # shape coefficients
    "N": (0, 256),  # views
    "Q": (1, 64),  # parts / materials
    "A": (0, 200),  # ARKit keys transferred onto a PCA model
}
GEOMETRY = 1e3  # metres: no part of a head lies a kilometre away
ANGLE = 1e3  # radians, axis-angle


@dataclass(frozen=True)
class Field:
    """How one rig.npz array must look.

    shape: per axis an exact size (int) or a symbolic dimension (DIMENSIONS) that every
    field using it must agree on. kind: "float" (any float dtype), "int" (any integer
    dtype) or "str" (unicode or UTF-8 bytes). limit: floats: the largest absolute value, or
    an inclusive (low, high) range; ints: a (low, high) range, high exclusive, where high
    may be a dimension name (indices). Every float must be finite.
    """

    shape: tuple
    kind: str
    required: bool = True
    limit: float | tuple | None = None


# One table per format_version; format_version 2 can be {**FIELDS_V1, ...changes}.
FIELDS_V1: dict[str, Field] = {
    "format_version": Field((), "int"),
    "model_kind": Field((), "str", required=False),
    "model_name": Field((), "str", required=False),
    "vertices": Field(("V", 3), "float", limit=GEOMETRY),
    "faces": Field(("F", 3), "int", limit=(0, "V")),
    "uv_coords": Field(("T", 2), "float", limit=GEOMETRY),
    "uv_faces": Field(("F", 3), "int", limit=(0, "T")),
    "expression_basis": Field(("K", "V", 3), "float", limit=GEOMETRY),
    "expression": Field(("K",), "float", limit=GEOMETRY),
    "pose_correctives": Field(("P", "V", 3), "float", limit=GEOMETRY),
    "joints": Field(("J", 3), "float", limit=GEOMETRY),
    "joint_expression_basis": Field(("K", "J", 3), "float", limit=GEOMETRY),
    "joint_names": Field(("J",), "str"),
    "parents": Field(("J",), "int", limit=(-1, "J")),
    "skin_weights": Field(("V", "J"), "float", limit=(-1e-4, 1.0 + 1e-4)),
    "shape": Field(("S",), "float", required=False, limit=GEOMETRY),
    "jaw_pose": Field((3,), "float", required=False, limit=ANGLE),
    "neck_pose": Field((3,), "float", required=False, limit=ANGLE),
    "eye_pose": Field((6,), "float", required=False, limit=ANGLE),
    "head_pose": Field(("N", 3), "float", required=False, limit=ANGLE),
    "head_translation": Field(("N", 3), "float", required=False, limit=GEOMETRY),
    "camera": Field(("N", 4), "float", required=False, limit=1e7),
    "image_size": Field(("N", 2), "int", required=False, limit=(0, 1 << 20)),
    "view_names": Field(("N",), "str", required=False),
    # added within format 1 (older folders lack them): key names, per-view expressions,
    # key bounds, parts and the head model's licence
    "expression_names": Field(("K",), "str", required=False),
    "expression_lower": Field(("K",), "float", required=False, limit=GEOMETRY),
    "expression_upper": Field(("K",), "float", required=False, limit=GEOMETRY),
    "view_expressions": Field(("N", "K"), "float", required=False, limit=GEOMETRY),
    "view_jaw_pose": Field(("N", 3), "float", required=False, limit=ANGLE),
    "part_names": Field(("Q",), "str", required=False),
    "face_part": Field(("F",), "int", required=False, limit=(0, "Q")),
    "part_alpha": Field(("Q",), "float", required=False, limit=(0.0, 1.0)),
    "licence": Field((), "str", required=False),
    "arkit_names": Field(("A",), "str", required=False),
    "arkit_basis": Field(("A", "V", 3), "float", required=False, limit=GEOMETRY),
}
# Format 2 requires what format 1 only allowed: the keys' names, each view's expression,
# the parts and the model's licence.
_REQUIRED_IN_V2 = (
    "expression_names",
    "view_expressions",
    "view_jaw_pose",
    "part_names",
    "face_part",
    "part_alpha",
    "licence",
)
FIELDS_V2: dict[str, Field] = {
    **FIELDS_V1,
    **{k: replace(FIELDS_V1[k], required=True) for k in _REQUIRED_IN_V2},
}
FIELDS: dict[int, dict[str, Field]] = {1: FIELDS_V1, 2: FIELDS_V2}
_VERSION_FIELD = Field((), "int")
_KINDS = {"float": "f", "int": "iu", "str": "US"}
_KIND_WORDS = {"float": "a float array", "int": "an integer array", "str": "text"}


def _rule_correctives(a: dict, dims: dict) -> str | None:
    if dims["P"] != 9 * (dims["J"] - 1):
        j = dims["J"]
        return f"pose_correctives has {dims['P']} components, expected 9*(J-1)={9 * (j - 1)}"
    return None


def _rule_parents(a: dict, dims: dict) -> str | None:
    p = a["parents"]
    if p[0] != -1 or any(not (0 <= p[j] < j) for j in range(1, len(p))):
        return f"parents {p.tolist()} is not a tree rooted at joint 0 (parents before children)"
    return None


def _rule_joint_names(a: dict, dims: dict) -> str | None:
    names = a["joint_names"]
    if len(set(names)) != len(names) or any(not n.strip() for n in names):
        return f"joint_names {_one_line(names, 200)} must be unique and non-empty"
    return None


# Checks between fields, run after every field passed its own checks: (fields, rule).
RULES_V1 = (
    (("pose_correctives", "joints"), _rule_correctives),
    (("parents",), _rule_parents),
    (("joint_names",), _rule_joint_names),
)
RULES: dict[int, tuple] = {1: RULES_V1, 2: RULES_V1}


def _one_line(value: object, limit: int = 300) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clean_text(text: str) -> str:
    """Control characters and lone surrogates (which UTF-8 cannot encode) become '_'."""
    return "".join(
        "_" if ord(ch) < 32 or ord(ch) == 127 or 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text
    )


class NpzMember:
    """One array of an .npz (a zip of .npy files): header first, data only on request."""

    def __init__(self, zf, info, where: str) -> None:
        self.zf, self.info, self.where = zf, info, where
        self.shape: tuple[int, ...] = ()
        self.dtype = np.dtype(np.float64)
        self.fortran = False
        self.nbytes = 0

    def read_header(self) -> None:
        try:
            with self.zf.open(self.info) as f:
                self._parse_header(f)
        except ResultError:
            raise
        except Exception as e:  # zipfile, zlib, struct, literal_eval, np.dtype errors
            raise ResultError(f"{self.where}: cannot be read ({_one_line(e)})") from e

    def _parse_header(self, f) -> None:
        magic = f.read(8)
        if len(magic) != 8 or magic[:6] != b"\x93NUMPY":
            raise ResultError(f"{self.where}: not a .npy array")
        major = magic[6]
        if major not in (1, 2, 3):
            raise ResultError(f"{self.where}: .npy format version {major} is not supported")
        size_bytes = f.read(2 if major == 1 else 4)
        if len(size_bytes) != (2 if major == 1 else 4):
            raise ResultError(f"{self.where}: truncated .npy header")
        size = int.from_bytes(size_bytes, "little")
        if size > MAX_NPY_HEADER:
            raise ResultError(
                f"{self.where}: .npy header of {size} bytes (at most {MAX_NPY_HEADER})"
            )
        text = f.read(size)
        if len(text) != size:
            raise ResultError(f"{self.where}: truncated .npy header")
        header = ast.literal_eval(text.decode("utf-8" if major == 3 else "latin-1"))
        if (
            not isinstance(header, dict)
            or set(header) != {"descr", "fortran_order", "shape"}
            or not isinstance(header["descr"], str)
            or not isinstance(header["fortran_order"], bool)
            or not isinstance(header["shape"], tuple)
            or not all(type(d) is int and d >= 0 for d in header["shape"])
        ):
            raise ResultError(f"{self.where}: malformed .npy header {_one_line(header, 120)}")
        dtype = np.dtype(header["descr"])
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            raise ResultError(
                f"{self.where}: dtype {_one_line(header['descr'], 60)} holds objects or records "
                "(rig.npz holds plain numbers and text, never pickled objects)"
            )
        self.shape, self.dtype, self.fortran = header["shape"], dtype, header["fortran_order"]
        count = math.prod(self.shape)
        self.nbytes = count * dtype.itemsize
        if count and dtype.itemsize == 0:
            raise ResultError(f"{self.where}: dtype {dtype.str} has no size")
        if count > MAX_ARRAY_BYTES or self.nbytes > MAX_ARRAY_BYTES:
            raise ResultError(
                f"{self.where}: declares {self.nbytes} bytes ({self.shape}, {dtype.str}); "
                f"at most {MAX_ARRAY_BYTES} bytes per array"
            )

    def read_data(self) -> np.ndarray:
        try:
            with self.zf.open(self.info) as f:
                self._parse_header(f)
                arr = np.empty(math.prod(self.shape), dtype=self.dtype)
                buf = memoryview(arr.reshape(-1).view(np.uint8))
                pos = 0
                while pos < self.nbytes:
                    chunk = f.read(min(_READ_CHUNK, self.nbytes - pos))
                    if not chunk:
                        raise ResultError(
                            f"{self.where}: truncated: {pos} of {self.nbytes} bytes of data"
                        )
                    buf[pos : pos + len(chunk)] = chunk
                    pos += len(chunk)
                if f.read(1):  # reading to the end also checks the zip's CRC
                    raise ResultError(f"{self.where}: more data than its shape {self.shape}")
        except ResultError:
            raise
        except Exception as e:
            raise ResultError(f"{self.where}: cannot be read ({_one_line(e)})") from e
        return arr.reshape(self.shape, order="F" if self.fortran else "C")


def open_npz(path: Path):
    """The zip and {key: ZipInfo} of its .npy members (nothing decompressed yet)."""
    zf = None
    try:
        zf = zipfile.ZipFile(path)
        members = {
            i.filename[: -len(".npy")]: i for i in zf.infolist() if i.filename.endswith(".npy")
        }
    except Exception as e:  # BadZipFile, OSError, ValueError, struct.error...
        if zf is not None:
            zf.close()
        raise ResultError(f"{path}: cannot be read as .npz ({_one_line(e)})") from e
    return zf, members


def _check_header(path: Path, key: str, spec: Field, m: NpzMember, dims: dict[str, int]) -> None:
    where = f"{path}: {key}"
    want = "".join(_KINDS[spec.kind])
    if m.dtype.kind not in want:
        raise ResultError(f"{where}: has dtype {m.dtype.str}, expected {_KIND_WORDS[spec.kind]}")
    if len(m.shape) != len(spec.shape):
        raise ResultError(f"{where}: has shape {m.shape}, expected {_shape_text(spec.shape)}")
    for size, sym in zip(m.shape, spec.shape, strict=True):
        if isinstance(sym, int):
            if size != sym:
                raise ResultError(
                    f"{where}: has shape {m.shape}, expected {_shape_text(spec.shape)}"
                )
            continue
        if sym in dims and dims[sym] != size:
            raise ResultError(f"{where}: has {sym}={size} but other arrays have {sym}={dims[sym]}")
        lo, hi = DIMENSIONS[sym]
        if not lo <= size <= hi:
            raise ResultError(f"{where}: has {sym}={size}, expected {lo} <= {sym} <= {hi}")
        dims[sym] = size
    if spec.kind == "str" and m.nbytes > MAX_TEXT_BYTES:
        raise ResultError(f"{where}: {m.nbytes} bytes of text (at most {MAX_TEXT_BYTES})")


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _check_values(path: Path, key: str, spec: Field, raw: np.ndarray, dims: dict[str, int]):
    """The array converted for use (float64, int64, str or list of str) after its checks."""
    where = f"{path}: {key}"
    if spec.kind == "float":
        a = np.asarray(raw, dtype=np.float64)
        if not np.all(np.isfinite(a)):
            raise ResultError(f"{where}: contains NaN or infinite values")
        if a.size and spec.limit is not None:
            lo, hi = spec.limit if isinstance(spec.limit, tuple) else (-spec.limit, spec.limit)
            if a.min() < lo or a.max() > hi:
                raise ResultError(
                    f"{where}: values from {a.min():.6g} to {a.max():.6g}, expected {lo:g} to {hi:g}"
                )
        return a
    if spec.kind == "int":
        if not raw.size:
            return raw.astype(np.int64)
        low, high = int(raw.min()), int(raw.max())  # Python ints: exact for any dtype
        lo, hi = spec.limit if spec.limit is not None else (-(2**62), 2**62)
        hi = dims[hi] if isinstance(hi, str) else hi
        if low < lo or high >= hi:
            what = {"faces": "vertices", "uv_faces": "UV coordinates"}.get(key, "")
            extra = f" (index outside the {hi} {what})" if what else ""
            raise ResultError(
                f"{where}: values from {low} to {high}, expected {lo} <= value < {hi}{extra}"
            )
        return raw.astype(np.int64)
    try:
        items = [
            x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in raw.reshape(-1).tolist()
        ]
    except Exception as e:  # invalid UTF-8 or code points
        raise ResultError(f"{where}: is not valid text ({_one_line(e, 80)})") from e
    if any(len(x) > MAX_TEXT_CHARS for x in items):
        raise ResultError(f"{where}: a name longer than {MAX_TEXT_CHARS} characters")
    return items[0] if raw.ndim == 0 else items


def read_rig_npz(path: str | Path) -> tuple[int, dict[str, object]]:
    """(format_version, {field: checked value}) of a rig.npz, or ResultError (one line that
    names the file and the field).

    Reads only the fields of its version's table (FIELDS); other members are never
    decompressed. Every field's .npy header (dtype kind, shape, sizes agreeing with the
    other fields, declared bytes) is checked before any array is read; then its values
    (finite, within limits) and the rules between fields (RULES). Never unpickles.
    """
    path = Path(path)
    zf, members = open_npz(path)
    with zf:
        if "format_version" not in members:
            raise ResultError(f"{path}: missing arrays format_version (not an mfnet rig.npz?)")
        m = NpzMember(zf, members["format_version"], f"{path}: format_version")
        m.read_header()
        _check_header(path, "format_version", _VERSION_FIELD, m, {})
        version = int(_check_values(path, "format_version", _VERSION_FIELD, m.read_data(), {}))
        if version not in FIELDS:
            raise ResultError(
                f"{path}: format_version {version}; this add-on reads version "
                f"{', '.join(str(v) for v in FIELDS)} (update the add-on or the backend so they match)"
            )
        table = FIELDS[version]
        missing = [k for k, spec in table.items() if spec.required and k not in members]
        if missing:
            raise ResultError(f"{path}: missing arrays {', '.join(missing)}")
        dims: dict[str, int] = {}
        headers: dict[str, NpzMember] = {}
        total = 0
        for key, spec in table.items():  # every header before any data
            if key not in members:
                continue
            m = NpzMember(zf, members[key], f"{path}: {key}")
            m.read_header()
            _check_header(path, key, spec, m, dims)
            total += m.nbytes
            if total > MAX_TOTAL_BYTES:
                raise ResultError(f"{path}: arrays declare more than {MAX_TOTAL_BYTES} bytes")
            headers[key] = m
        values: dict[str, object] = {}
        for key, m in headers.items():
            values[key] = _check_values(path, key, table[key], m.read_data(), dims)
    for keys, rule in RULES[version]:
        if all(k in values for k in keys):
            problem = rule(values, dims)
            if problem:
                raise ResultError(f"{path}: {problem}")
    return version, values


# --------------------------------------------------------------------------- Blender names

NAME_BYTES = 63  # Blender's limit for bone, vertex-group and shape-key names (UTF-8 bytes)
# A joint name must leave room for its corrective keys' "pose_<joint>_00"
JOINT_NAME_BYTES = NAME_BYTES - len(corrective_key_name("", 0, 0))


def _truncate_utf8(text: str, n_bytes: int) -> str:
    return text.encode("utf-8")[:n_bytes].decode("utf-8", errors="ignore")


def blender_joint_names(names: list[str]) -> tuple[list[str], list[str]]:
    """(names, notes): the joint names as the rig's bones, vertex groups and corrective keys
    can carry them: at most JOINT_NAME_BYTES bytes of UTF-8 (cut at a character), control
    characters replaced, unique also against the "MCH-" pivot bones (a clash gets "~2",
    "~3"...). Names that fit are kept as they are; notes say what was renamed."""
    out: list[str] = []
    notes: list[str] = []
    taken: set[str] = set()
    for name in names:
        clean = _clean_text(name)
        cand, n = _truncate_utf8(clean, JOINT_NAME_BYTES), 1
        while not cand or cand in taken or pivot_bone_name(cand) in taken:
            n += 1
            tail = f"~{n}"
            cand = _truncate_utf8(clean, JOINT_NAME_BYTES - len(tail)) + tail
        taken |= {cand, pivot_bone_name(cand)}
        if cand != name:
            notes.append(f"joint {_one_line(repr(name), 100)} is named {cand!r} in Blender")
        out.append(cand)
    return out, notes


def blender_key_names(names: list[str]) -> tuple[list[str], list[str]]:
    """Names for shape keys and materials: at most 63 UTF-8 bytes, non-empty, unique."""
    out: list[str] = []
    notes: list[str] = []
    seen: set[str] = set()
    for i, n in enumerate(names):
        name = _truncate_utf8(n.strip() or f"key_{i:03d}", 59)
        base, k = name, 2
        while name in seen or name == BASIS_KEY:
            name = f"{_truncate_utf8(base, 56)}~{k}"
            k += 1
        if name != n:
            notes.append(f"name {n!r} became {name!r} (Blender names are unique, at most 63 bytes)")
        seen.add(name)
        out.append(name)
    return out, notes


def check_blender_names(rig: ResultRig) -> None:
    """ResultError unless rig.joint_names already are Blender-safe (blender_joint_names)."""
    fixed, notes = blender_joint_names(rig.joint_names)
    if fixed != rig.joint_names:
        raise ResultError(
            f"{rig.folder}: joint names do not fit Blender ({'; '.join(notes)[:300]})"
        )


# --------------------------------------------------------------------------- the folder


def _texture(folder: Path, warnings: list[str]) -> Path | None:
    """texture.png when it is a regular file with a PNG header of a sane size."""
    path = folder / TEXTURE_FILE
    if not path.exists():
        return None
    if not path.is_file():
        warnings.append(f"{TEXTURE_FILE} is not a regular file: ignored")
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        warnings.append(f"{TEXTURE_FILE} cannot be read ({_one_line(e, 100)}): ignored")
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        warnings.append(f"{TEXTURE_FILE} is not a PNG image: ignored")
        return None
    w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if not (0 < w <= MAX_TEXTURE_SIZE and 0 < h <= MAX_TEXTURE_SIZE):
        warnings.append(f"{TEXTURE_FILE} is {w}x{h} (at most {MAX_TEXTURE_SIZE} a side): ignored")
        return None
    return path


def _params(folder: Path, warnings: list[str]) -> dict:
    path = folder / "params.json"
    if not path.exists():
        return {}
    try:
        if not path.is_file() or path.stat().st_size > MAX_PARAMS_BYTES:
            raise ValueError(f"not a regular file of at most {MAX_PARAMS_BYTES} bytes")
        params = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(params, dict):
            raise ValueError("not a JSON object")
    except Exception as e:  # OSError, ValueError, RecursionError
        warnings.append(f"params.json ignored: {_one_line(e, 100)}")
        return {}
    return params


def load_result(folder: str | Path) -> ResultRig:
    """Reads and checks a result folder (rig.npz, texture.png, params.json).

    Raises ResultError with one line that names the file and what is wrong.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultError(f"{folder}: not a folder (expected an mfnet result folder)")
    path = folder / RIG_FILE
    if not path.exists():
        raise ResultError(f"{path}: missing; this is not an mfnet result folder")
    if not path.is_file():
        raise ResultError(f"{path}: not a regular file")
    _, v = read_rig_npz(path)
    warnings: list[str] = []
    names, notes = blender_joint_names(v["joint_names"])
    warnings += notes
    fitted = {k: v[k].reshape(-1) for k in ("jaw_pose", "neck_pose", "eye_pose") if k in v}
    return ResultRig(
        folder=folder,
        vertices=v["vertices"],
        faces=v["faces"],
        uv_coords=v["uv_coords"],
        uv_faces=v["uv_faces"],
        expression_basis=v["expression_basis"],
        expression=v["expression"],
        pose_correctives=v["pose_correctives"],
        joints=v["joints"],
        joint_expression_basis=v["joint_expression_basis"],
        joint_names=names,
        parents=v["parents"],
        skin_weights=np.clip(v["skin_weights"], 0.0, 1.0),
        model_kind=_clean_text(v.get("model_kind", "unknown")),
        model_name=_clean_text(v.get("model_name", "")),
        fitted_pose=fitted,
        texture=_texture(folder, warnings),
        params=_params(folder, warnings),
        warnings=warnings,
        **_optional_fields(v, len(v["faces"]), warnings),
    )


def _optional_fields(v: dict, n_faces: int, warnings: list[str]) -> dict:
    """The fields added within format 1, where present: key names made safe for Blender
    (unique, at most 63 bytes), per-view expressions, bounds, parts, licence."""
    out: dict = {}
    if "expression_names" in v:
        names, notes = blender_key_names([_clean_text(n) for n in v["expression_names"]])
        out["expression_names"] = names
        warnings += notes
    for key in ("expression_lower", "expression_upper", "view_expressions", "part_alpha"):
        if key in v:
            out[key] = v[key]
    if "view_names" in v:
        out["view_names"] = [_clean_text(n) for n in v["view_names"]]
    if "part_names" in v and "face_part" in v:
        names, notes = blender_key_names([_clean_text(n) for n in v["part_names"]])
        out["part_names"] = names
        out["face_part"] = v["face_part"]
        warnings += notes
    if "licence" in v:
        out["licence"] = _clean_text(v["licence"])
    if "arkit_names" in v and "arkit_basis" in v:
        names, notes = blender_key_names([_clean_text(n) for n in v["arkit_names"]])
        out["arkit_names"] = names
        out["arkit_basis"] = v["arkit_basis"]
        warnings += notes
    return out


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
    height = float(np.ptp(rig.vertices[:, 1]))
    if not height >= 1e-2:  # a flat or tiny mesh: Blender drops bones that round to length 0
        height = 0.2
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
