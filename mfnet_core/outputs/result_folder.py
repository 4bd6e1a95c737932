"""Writes the result folder (docs/RESULT_FOLDER.md) atomically.

Everything goes into a hidden temporary sibling folder that is renamed into place at the
end, so a failed or cancelled run never leaves a half-written result and an existing
result is only replaced with `overwrite=True`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pygltflib
from PIL import Image

from mfnet_core.errors import MfnetError
from mfnet_core.head.interface import HeadModel

FORMAT_VERSION = 1


@dataclass
class RigData:
    """The arrays of rig.npz (shapes in docs/RESULT_FOLDER.md)."""

    arrays: dict[str, np.ndarray]

    @property
    def vertices(self) -> np.ndarray:
        return self.arrays["vertices"]

    @property
    def expression_basis(self) -> np.ndarray:
        return self.arrays["expression_basis"]


def build_rig(
    head: HeadModel,
    params: dict[str, np.ndarray],
    camera: np.ndarray,
    image_size: np.ndarray,
    view_names: list[str],
    n_expression_keys: int,
) -> RigData:
    """Rest mesh, bases and skinning for the fitted person, in model axes and metres."""
    shape = np.asarray(params["shape"], dtype=np.float64)
    r = head.rig_arrays(shape, n_expression_keys)
    k = r.expression_basis.shape[0]
    expression = np.zeros(k, dtype=np.float32)
    fitted = np.asarray(params["expression"], dtype=np.float32)
    expression[: min(k, fitted.shape[0])] = fitted[:k]
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int32),
        "model_kind": np.array(head.info.kind),
        "model_name": np.array(head.info.name),
        "vertices": r.rest_vertices,
        "faces": head.faces.cpu().numpy().astype(np.int32),
        "uv_coords": head.uv.uv_coords.astype(np.float32),
        "uv_faces": head.uv.uv_faces.astype(np.int32),
        "expression_basis": r.expression_basis,
        "expression": expression,
        "pose_correctives": r.pose_correctives,
        "joints": r.joints,
        "joint_expression_basis": r.joint_expression_basis,
        "joint_names": np.array(list(r.joint_names)),
        "parents": r.parents,
        "skin_weights": r.skin_weights,
        "shape": shape.astype(np.float32),
        "jaw_pose": np.asarray(params["jaw_pose"], dtype=np.float32),
        "neck_pose": np.asarray(params["neck_pose"], dtype=np.float32),
        "eye_pose": np.asarray(params["eye_pose"], dtype=np.float32),
        "head_pose": np.asarray(params["head_pose"], dtype=np.float32).reshape(-1, 3),
        "head_translation": np.asarray(params["head_translation"], dtype=np.float32).reshape(-1, 3),
        "camera": np.asarray(camera, dtype=np.float32).reshape(-1, 4),
        "image_size": np.asarray(image_size, dtype=np.int32).reshape(-1, 2),
        "view_names": np.array(view_names),
    }
    return RigData(arrays)


def write_obj(folder: Path, vertices: np.ndarray, rig: RigData, texture_name: str) -> None:
    """head.obj + head.mtl: the fitted mesh (expression and jaw applied, no head pose)."""
    a = rig.arrays
    lines = ["# mfnet fitted head (FLAME axes, metres)", "mtllib head.mtl", "o head"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in a["uv_coords"]]
    lines.append("usemtl skin")
    f = a["faces"] + 1
    ft = a["uv_faces"] + 1
    lines += [
        f"f {f0}/{t0} {f1}/{t1} {f2}/{t2}"
        for (f0, f1, f2), (t0, t1, t2) in zip(f.tolist(), ft.tolist(), strict=True)
    ]
    (folder / "head.obj").write_text("\n".join(lines) + "\n")
    (folder / "head.mtl").write_text(
        f"newmtl skin\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {texture_name}\n"
    )


def split_by_uv(
    faces: np.ndarray, uv_faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """glTF needs one UV per vertex: split vertices on UV seams.

    Returns (vertex_index (U,), uv_index (U,), new_faces (F,3)) for the U unique pairs.
    """
    pairs = np.stack([faces.reshape(-1), uv_faces.reshape(-1)], axis=1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return unique[:, 0], unique[:, 1], inverse.reshape(-1, 3).astype(np.uint32)


def write_glb(path: Path, rig: RigData, texture_png: bytes, n_targets: int) -> None:
    """head.glb: neutral mesh, embedded texture, one morph target per expression key
    (named exp_000...) whose default weights are the fitted expression."""
    a = rig.arrays
    vidx, tidx, faces = split_by_uv(a["faces"], a["uv_faces"])
    positions = a["vertices"][vidx].astype(np.float32)
    uvs = a["uv_coords"][tidx].astype(np.float32).copy()
    uvs[:, 1] = 1.0 - uvs[:, 1]  # glTF's UV origin is top-left
    targets = a["expression_basis"][:n_targets][:, vidx].astype(np.float32)
    weights = a["expression"][:n_targets].astype(float).tolist()

    blobs: list[bytes] = []
    views: list[pygltflib.BufferView] = []
    accessors: list[pygltflib.Accessor] = []
    offset = 0

    def add(data: bytes, target: int | None) -> int:
        nonlocal offset
        pad = (-len(data)) % 4
        blobs.append(data + b"\0" * pad)
        views.append(
            pygltflib.BufferView(buffer=0, byteOffset=offset, byteLength=len(data), target=target)
        )
        offset += len(data) + pad
        return len(views) - 1

    def accessor(arr: np.ndarray, kind: str, ctype: int, target: int | None, minmax: bool) -> int:
        view = add(arr.tobytes(), target)
        acc = pygltflib.Accessor(bufferView=view, componentType=ctype, count=len(arr), type=kind)
        if minmax:
            acc.min = arr.min(0).astype(float).tolist()
            acc.max = arr.max(0).astype(float).tolist()
        accessors.append(acc)
        return len(accessors) - 1

    array_buf, elem_buf = pygltflib.ARRAY_BUFFER, pygltflib.ELEMENT_ARRAY_BUFFER
    fl, ui = pygltflib.FLOAT, pygltflib.UNSIGNED_INT
    pos_acc = accessor(positions, pygltflib.VEC3, fl, array_buf, True)
    uv_acc = accessor(uvs, pygltflib.VEC2, fl, array_buf, False)
    idx_acc = accessor(faces.reshape(-1), pygltflib.SCALAR, ui, elem_buf, False)
    target_accs = [{"POSITION": accessor(t, pygltflib.VEC3, fl, array_buf, True)} for t in targets]
    image_view = add(texture_png, None)
    names = [f"exp_{k:03d}" for k in range(len(targets))]
    primitive = pygltflib.Primitive(
        attributes=pygltflib.Attributes(POSITION=pos_acc, TEXCOORD_0=uv_acc),
        indices=idx_acc,
        material=0,
        targets=target_accs,
    )
    gltf = pygltflib.GLTF2(
        asset=pygltflib.Asset(generator="mfnet", version="2.0"),
        scene=0,
        scenes=[pygltflib.Scene(nodes=[0])],
        nodes=[pygltflib.Node(mesh=0, name="head")],
        meshes=[
            pygltflib.Mesh(
                name="head", primitives=[primitive], weights=weights, extras={"targetNames": names}
            )
        ],
        materials=[
            pygltflib.Material(
                name="skin",
                pbrMetallicRoughness=pygltflib.PbrMetallicRoughness(
                    baseColorTexture=pygltflib.TextureInfo(index=0),
                    metallicFactor=0.0,
                    roughnessFactor=0.7,
                ),
            )
        ],
        textures=[pygltflib.Texture(source=0, sampler=0)],
        samplers=[pygltflib.Sampler()],
        images=[pygltflib.Image(bufferView=image_view, mimeType="image/png")],
        accessors=accessors,
        bufferViews=views,
        buffers=[pygltflib.Buffer(byteLength=offset)],
    )
    gltf.set_binary_blob(b"".join(blobs))
    gltf.save_binary(str(path))


def save_png(path: Path, image: np.ndarray) -> bytes:
    """Writes an image and returns its PNG bytes (for embedding)."""
    Image.fromarray(image).save(path, optimize=False, compress_level=3)
    return path.read_bytes()


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: object) -> object:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def check_destination(out_dir: Path, overwrite: bool) -> None:
    """Fails early, before any work, when the result would clobber something."""
    if out_dir.exists() and not overwrite:
        raise MfnetError(f"{out_dir} already exists; pass --overwrite to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise MfnetError(f"{out_dir} exists and is not a folder")


@contextlib.contextmanager
def atomic_folder(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yields a temporary folder beside `out_dir`; renames it into place on success."""
    out_dir = out_dir.resolve()
    check_destination(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
