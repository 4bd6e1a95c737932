"""The FLAME head model: loading its files safely and evaluating it with PyTorch.

Loading accepts FLAME 2020 / 2023 / 2023 Open pickles (read through the allow-list of
`safe_pickle`), an `.npz` with the same keys, and the generated test head (same format,
flagged `mfnet_test_head`). Side files (landmark embedding, UV layout, masks) are found
next to the model. Evaluation goes through `smplx.lbs`; the maths specific to this project
(landmark embedding, vertex-subset LBS for fitting) are plain functions below.

Axes: metres, y up, x to the subject's left, the face looks along +z.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from smplx.lbs import batch_rigid_transform, batch_rodrigues, lbs
from torch import Tensor, nn

from mfnet_core.errors import MfnetError, ModelNotFoundError
from mfnet_core.head.interface import (
    JOINT_ORDER,
    MAX_YAW_DEG,
    N_YAW_BINS,
    CoefficientSpace,
    HeadModel,
    HeadOutput,
    LandmarkEmbedding,
    ModelInfo,
    Parts,
    RigArrays,
    UVLayout,
)
from mfnet_core.head.subset import SubsetLBS
from mfnet_core.inputs.files import file_sha256, regular_file
from mfnet_core.inputs.model_files import find_side_file, user_cache_dir
from mfnet_core.inputs.npz import ArraySpec, check_array, read_npz
from mfnet_core.inputs.safe_pickle import load_npy_object, load_restricted_pickle

__all__ = [
    "FlameAssets",
    "FLAME",
    "load_flame_assets",
    "yaw_bin",
    "vertices2landmarks",
    "lbs_subset",
    "flame_bins_to_ours",
]

N_SHAPE_FLAME = 300  # FLAME's shapedirs: the first 300 are identity, the rest expression
DEFAULT_JOINT_NAMES = JOINT_ORDER

FLAME_URL = "https://flame.is.tue.mpg.de"
FLAME_LICENCE = f"FLAME: the user's own download under its licence ({FLAME_URL})"
TEST_HEAD_LICENCE = "generated test head (mfnet, MIT), NOT FLAME: not a human shape space"
DECA_URL = "https://github.com/yfeng95/DECA"


# -- the files' contents ------------------------------------------------------------------


@dataclass(frozen=True)
class FlameAssets:
    """Everything read from a FLAME (or test-head) model file and its side files, as numpy."""

    v_template: np.ndarray  # (V,3) float32
    faces: np.ndarray  # (F,3) int64
    shapedirs: np.ndarray  # (V,3,S) float32 identity
    exprdirs: np.ndarray  # (V,3,E) float32 expression
    posedirs: np.ndarray  # (V,3,P) float32, FLAME file layout, P = 9*(J-1)
    j_regressor: np.ndarray  # (J,V) float32 dense
    parents: np.ndarray  # (J,) int64, parents[0] == -1
    lbs_weights: np.ndarray  # (V,J) float32
    joint_names: tuple[str, ...]
    landmarks: LandmarkEmbedding
    uv: UVLayout
    face_region: np.ndarray  # (V,) bool: the face (forehead to chin, ear to ear), no eyeballs
    kind: str  # "flame" or "test-head"
    name: str  # model file name
    sha256: str
    source_path: Path

    @property
    def n_vertices(self) -> int:
        return int(self.v_template.shape[0])


# -- small helpers -----------------------------------------------------------------------------


def _scaled_float32(a: np.ndarray, factor: float) -> np.ndarray:
    """a * factor computed in float64 and stored as float32, without a float64 copy of a
    (ICT's expression basis: 34 MB of fresh memory, up to 0.5 s of page faults here)."""
    out = np.empty(a.shape, dtype=np.float32)
    np.multiply(a, factor, out=out, dtype=np.float64, casting="same_kind")
    return out


def _blend_rows(dirs: np.ndarray, coeffs: np.ndarray, rows: int = 4096) -> np.ndarray:
    """(V,3,K) float32 basis @ (K,) float64 -> (V,3) float64, a block of vertices at a time
    (numpy would first copy the whole basis to float64)."""
    out = np.empty(dirs.shape[:2], dtype=np.float64)
    for i in range(0, dirs.shape[0], rows):
        out[i : i + rows] = dirs[i : i + rows] @ coeffs
    return out


def joined_bases(shapedirs: np.ndarray, exprdirs: np.ndarray) -> np.ndarray:
    """(V,3,S) and (V,3,E) -> (V,3,S+E). When the two are the halves of one C-contiguous
    array (the ICT loader writes them so), that array itself: a copy is 48 MB of fresh
    memory, 0.1-0.3 s of page faults on a cold start here."""
    base = shapedirs.base
    if (
        base is not None
        and exprdirs.base is base
        and base.ndim == 3
        and base.flags.c_contiguous
        and base.dtype == shapedirs.dtype == exprdirs.dtype
        and base.shape == (*shapedirs.shape[:2], shapedirs.shape[2] + exprdirs.shape[2])
        and shapedirs.strides == exprdirs.strides == base.strides
    ):
        start = base.__array_interface__["data"][0]
        step = shapedirs.shape[2] * base.itemsize
        if (
            shapedirs.__array_interface__["data"][0] == start
            and exprdirs.__array_interface__["data"][0] == start + step
        ):
            return base
    return np.concatenate([shapedirs, exprdirs], axis=2)


def _dense(a: Any) -> np.ndarray:
    if hasattr(a, "toarray"):
        return np.asarray(a.toarray())
    return np.asarray(a)


def flame_bins_to_ours(table: np.ndarray) -> np.ndarray:
    """Reorders a dynamic-contour table from FLAME/DECA/smplx order to ours.

    FLAME's look-up table (TF_FLAME, smplx, DECA) is indexed by y = -(rotation about +y in
    degrees): rows 0..39 hold y = 0..39, rows 40..78 hold y = -1..-39. A rotation about +y
    by a positive angle turns the face (+z) toward +x, which is our positive yaw, so
    y = -yaw. Ours: row k holds yaw = k - 39. The permutation is its own inverse, so the
    same function converts ours back to FLAME order.
    """
    idx = np.concatenate([39 - np.arange(40), np.arange(40, N_YAW_BINS)])
    return np.asarray(table)[idx]


def yaw_bin(yaw_deg: Tensor) -> Tensor:
    """(B,) head yaw in degrees -> (B,) long bin index into the dynamic contour table.

    Yaw is the head's rotation as the camera sees it: positive when the face turns toward
    camera-space +x, which is the subject turning to their own left (the subject's left
    cheek then turns away from the camera and its contour points slide onto the cheek).
    """
    return (torch.round(yaw_deg.clamp(-MAX_YAW_DEG, MAX_YAW_DEG)) + MAX_YAW_DEG).long()


# -- plain maths -------------------------------------------------------------------------------


def vertices2landmarks(
    vertices: Tensor, faces: Tensor, lmk_faces: Tensor, lmk_bary: Tensor
) -> Tensor:
    """Barycentric interpolation of landmarks on triangles.

    vertices: (B,V,3); faces: (F,3) long; lmk_faces: (B,L) or (L,) long face ids;
    lmk_bary: (B,L,3) or (L,3). Returns (B,L,3).
    """
    b = vertices.shape[0]
    if lmk_faces.dim() == 1:
        lmk_faces = lmk_faces[None].expand(b, -1)
    if lmk_bary.dim() == 2:
        lmk_bary = lmk_bary[None].expand(b, -1, -1)
    vid = faces[lmk_faces]  # (B,L,3)
    batch = torch.arange(b, device=vertices.device)[:, None, None]
    tri = vertices[batch, vid]  # (B,L,3,3): landmark, corner, xyz
    return (tri * lmk_bary[..., None].to(vertices.dtype)).sum(-2)


def lbs_subset(
    betas: Tensor,
    rot_mats: Tensor,
    v_template: Tensor,
    blend_dirs: Tensor,
    posedirs: Tensor,
    j_regressor: Tensor,
    parents: Tensor,
    lbs_weights: Tensor,
    subset: Tensor,
    reg_support: Tensor,
) -> tuple[Tensor, Tensor]:
    """Linear blend skinning of only the vertices in `subset` (same result as `smplx.lbs`).

    Joints depend on the shaped mesh through the regressor, so the blend shapes are also
    evaluated on the regressor's support. Shapes:
    betas (B,K); rot_mats (B,J,3,3) local joint rotations; v_template (V,3);
    blend_dirs (V,3,K); posedirs (P,V*3) (smplx layout); j_regressor (J,V); parents (J,);
    lbs_weights (V,J); subset (S,) long; reg_support (R,) long (columns of j_regressor
    that are non-zero). Returns (vertices (B,S,3), posed joints (B,J,3)).
    """
    b = rot_mats.shape[0]
    # joints from the shaped mesh
    v_reg = v_template[reg_support] + torch.einsum("bk,rck->brc", betas, blend_dirs[reg_support])
    joints = torch.einsum("jr,brc->bjc", j_regressor[:, reg_support], v_reg)
    # the subset: shape, pose correctives, skinning
    v_sub = v_template[subset] + torch.einsum("bk,sck->bsc", betas, blend_dirs[subset])
    ident = torch.eye(3, dtype=rot_mats.dtype, device=rot_mats.device)
    pose_feature = (rot_mats[:, 1:] - ident).reshape(b, -1)  # (B,P)
    cols = (subset[:, None] * 3 + torch.arange(3, device=subset.device)).reshape(-1)
    v_sub = v_sub + (pose_feature @ posedirs[:, cols]).reshape(b, -1, 3)
    posed_joints, rel = batch_rigid_transform(rot_mats, joints, parents, dtype=rot_mats.dtype)
    t = torch.einsum("sj,bjmn->bsmn", lbs_weights[subset], rel)  # (B,S,4,4)
    verts = torch.einsum("bsmn,bsn->bsm", t[..., :3, :3], v_sub) + t[..., :3, 3]
    return verts, posed_joints


# -- the module --------------------------------------------------------------------------------


# buffers that hold positions (metres) or their bases: what `FLAME.rescaled` multiplies
_POSITION_BUFFERS = ("v_template", "blend_dirs", "posedirs", "joint_template", "joint_dirs")


class FLAME(HeadModel):
    """FLAME (and the generated test head, which uses FLAME's file format) behind the
    head-model interface; all model arrays are buffers so `.to(device)` moves them."""

    def __init__(self, assets: FlameAssets, n_shape: int = 100, n_expr: int = 50) -> None:
        super().__init__()
        self.assets = assets  # the file's arrays: `rescaled` models share them (see `scale`)
        self.n_shape = int(min(max(n_shape, 0), assets.shapedirs.shape[2]))
        self.n_expr = int(min(max(n_expr, 0), assets.exprdirs.shape[2]))
        self.info = ModelInfo(
            kind=assets.kind,
            name=assets.name,
            sha256=assets.sha256,
            source_path=assets.source_path,
            licence=FLAME_LICENCE if assets.kind == "flame" else TEST_HEAD_LICENCE,
        )
        self.joint_names = tuple(assets.joint_names)
        self.uv = assets.uv
        self.parts = Parts.single(int(assets.faces.shape[0]))
        self.face_region = assets.face_region
        self.landmark_embedding = assets.landmarks
        self.shape_space = CoefficientSpace(self.n_shape)
        self.expression_space = CoefficientSpace(self.n_expr)
        f32 = torch.float32
        v = assets.v_template.shape[0]
        self.register_buffer("v_template", torch.as_tensor(assets.v_template, dtype=f32))
        dirs = joined_bases(
            assets.shapedirs[:, :, : self.n_shape], assets.exprdirs[:, :, : self.n_expr]
        )
        self.register_buffer("blend_dirs", torch.as_tensor(dirs, dtype=f32))
        posedirs = np.reshape(assets.posedirs, (v * 3, -1)).T  # (P, V*3) as smplx wants
        self.register_buffer("posedirs", torch.as_tensor(np.ascontiguousarray(posedirs), dtype=f32))
        self.register_buffer("j_regressor", torch.as_tensor(assets.j_regressor, dtype=f32))
        self.register_buffer("parents", torch.as_tensor(assets.parents, dtype=torch.long))
        self.register_buffer("lbs_weights", torch.as_tensor(assets.lbs_weights, dtype=f32))
        self.register_buffer("faces", torch.as_tensor(assets.faces, dtype=torch.long))
        emb = assets.landmarks
        self.register_buffer("static_faces", torch.as_tensor(emb.static_faces, dtype=torch.long))
        self.register_buffer("static_bary", torch.as_tensor(emb.static_bary, dtype=f32))
        self.register_buffer("dynamic_faces", torch.as_tensor(emb.dynamic_faces, dtype=torch.long))
        self.register_buffer("dynamic_bary", torch.as_tensor(emb.dynamic_bary, dtype=f32))
        self.register_buffer("full_faces", torch.as_tensor(emb.full_faces, dtype=torch.long))
        self.register_buffer("full_bary", torch.as_tensor(emb.full_bary, dtype=f32))
        # vertices that any landmark can touch, and the regressor's support (landmarks_only)
        lmk_f = np.concatenate([emb.static_faces, emb.dynamic_faces.ravel(), emb.full_faces])
        lmk_v = np.unique(assets.faces[lmk_f].ravel())
        self.register_buffer("lmk_vertex_ids", torch.as_tensor(lmk_v, dtype=torch.long))
        remap = np.full(v, -1, dtype=np.int64)
        remap[lmk_v] = np.arange(len(lmk_v))
        self.register_buffer(
            "lmk_faces_local", torch.as_tensor(remap[assets.faces], dtype=torch.long)
        )
        # the joints' blend basis: joint 0 = J0 @ v_template + betas @ (J0 @ blend_dirs)
        self.register_buffer("joint_template", self.j_regressor @ self.v_template)  # (J,3)
        jd = torch.einsum("jv,vck->kjc", self.j_regressor, self.blend_dirs)
        self.register_buffer("joint_dirs", jd.reshape(jd.shape[0], -1).contiguous())  # (K,J*3)
        support = np.flatnonzero(np.abs(assets.j_regressor).sum(0) > 0)
        self.register_buffer("reg_support", torch.as_tensor(support, dtype=torch.long))

    # -- parameters ----------------------------------------------------------------------
    def _betas(self, shape: Tensor | None, expression: Tensor | None, b: int) -> Tensor:
        """(B,ns') and (B,ne') with ns' <= n_shape, ne' <= n_expr -> (B, n_shape + n_expr);
        missing trailing coefficients are zeros."""
        dev, dt = self.v_template.device, self.v_template.dtype
        pieces = []
        for name, x, n in (("shape", shape, self.n_shape), ("expression", expression, self.n_expr)):
            if x is None:
                pieces.append(torch.zeros(b, n, device=dev, dtype=dt))
                continue
            if x.shape[-1] > n:
                raise ValueError(f"{name} has {x.shape[-1]} coefficients; this FLAME uses {n}")
            x = x.to(dt).expand(b, -1)
            if x.shape[-1] < n:
                x = torch.cat([x, torch.zeros(b, n - x.shape[-1], device=dev, dtype=dt)], dim=1)
            pieces.append(x)
        return torch.cat(pieces, dim=1)

    def _batch(self, *tensors: Tensor | None) -> int:
        sizes = {t.shape[0] for t in tensors if t is not None}
        sizes.discard(1)
        if len(sizes) > 1:
            raise ValueError(f"inconsistent batch sizes {sorted(sizes)}")
        return sizes.pop() if sizes else 1

    def pose_vector(
        self,
        global_pose: Tensor | None,
        neck_pose: Tensor | None,
        jaw_pose: Tensor | None,
        eye_pose: Tensor | None,
        b: int,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """(B, 3*J) axis-angle pose: global, neck, jaw, eye_L, eye_R (FLAME's order), in
        `dtype` (default: the model's)."""
        dev, dt = self.v_template.device, dtype or self.v_template.dtype

        def part(x: Tensor | None, n: int) -> Tensor:
            return torch.zeros(b, n, device=dev, dtype=dt) if x is None else x.to(dt).expand(b, n)

        pose = torch.cat(
            [part(global_pose, 3), part(neck_pose, 3), part(jaw_pose, 3), part(eye_pose, 6)], dim=1
        )
        j = self.n_joints
        if pose.shape[1] < 3 * j:  # models with more joints: the rest stay at rest
            pose = torch.cat([pose, torch.zeros(b, 3 * j - pose.shape[1], device=dev, dtype=dt)], 1)
        return pose[:, : 3 * j]

    # -- evaluation ------------------------------------------------------------------------
    def forward(
        self,
        shape: Tensor | None = None,
        expression: Tensor | None = None,
        global_pose: Tensor | None = None,
        neck_pose: Tensor | None = None,
        jaw_pose: Tensor | None = None,
        eye_pose: Tensor | None = None,
        translation: Tensor | None = None,
    ) -> HeadOutput:
        """shape (B,ns), expression (B,ne), global/neck/jaw pose (B,3) axis-angle, eye_pose
        (B,6) left then right eye, translation (B,3) or None. Missing inputs are zeros.
        Returns vertices (B,V,3) and posed joints (B,J,3)."""
        b = self._batch(shape, expression, global_pose, neck_pose, jaw_pose, eye_pose, translation)
        betas = self._betas(shape, expression, b)
        pose = self.pose_vector(global_pose, neck_pose, jaw_pose, eye_pose, b)
        verts, joints = lbs(
            betas,
            pose,
            self.v_template,
            self.blend_dirs,
            self.posedirs,
            self.j_regressor,
            self.parents,
            self.lbs_weights,
        )
        v_shaped = self.v_template + torch.einsum("bk,vck->bvc", betas, self.blend_dirs)
        if translation is not None:
            t = translation.to(verts.dtype).expand(b, 3)[:, None]
            verts = verts + t
            joints = joints + t
        return HeadOutput(vertices=verts, joints=joints, v_shaped=v_shaped)

    def rescaled(self, factor: float) -> FLAME:
        """The same model `factor` times bigger: template, identity, expression and pose
        bases scaled, so every head it makes is this one's scaled about the origin (joints
        too: the regressor is linear). With the views' translations scaled alike the photos
        see the same thing, so a fit carries over; what changes is the metric size
        (fit/metric_scale.py). `assets` stay the file's arrays (`rig_arrays` scales what
        it takes from them): copying ICT's 12M-float bases twice cost 0.65 s of a cold run."""
        f = float(factor)
        model = copy.copy(self)  # shares the unscaled buffers (faces, weights...): never
        model._buffers = dict(self._buffers)  # changed in place; the positions are new
        for name in _POSITION_BUFFERS:
            model._buffers[name] = self._buffers[name] * f
        model._parameters = dict(self._parameters)
        model._modules = dict(self._modules)
        model.scale = self.scale * f
        return model

    def rest_vertices(self, shape: Tensor) -> Tensor:
        """(B,ns) -> (B,V,3): template plus identity blend shapes only (no expression, no pose)."""
        k = shape.shape[-1]
        if k > self.n_shape:
            raise ValueError(f"shape has {k} coefficients; this FLAME uses {self.n_shape}")
        return self.v_template + torch.einsum(
            "bk,vck->bvc", shape.to(self.v_template.dtype), self.blend_dirs[:, :, :k]
        )

    def joints_rest(self, vertices: Tensor) -> Tensor:
        """(B,V,3) unposed vertices -> (B,J,3) joint positions (FLAME's regressor)."""
        return torch.einsum("jv,bvc->bjc", self.j_regressor, vertices)

    def rest_joints(self, shape: Tensor, expression: Tensor) -> Tensor:
        """(B,ns), (B,ne) -> (B,J,3). The regressor is linear in the shaped vertices and
        those are linear in the coefficients, so the joints' own basis is used."""
        b = self._batch(shape, expression)
        betas = self._betas(shape, expression, b)
        return self.joint_template + (betas @ self.joint_dirs).reshape(b, -1, 3)

    def vertex_subset(self, vertex_ids: Tensor, dtype: object = None) -> nn.Module:
        """`SubsetLBS` on `vertex_ids` (float64 unless `dtype` says otherwise)."""
        return SubsetLBS(self, vertex_ids, dtype=dtype or torch.float64)

    def rig_arrays(self, shape: np.ndarray, n_expression_keys: int) -> RigArrays:
        """FLAME's own arrays at the fitted identity, in float64 maths, float32 out."""
        a, size = self.assets, float(self.scale)  # the file's arrays; heads are `scale` x
        shape = np.asarray(shape, dtype=np.float64).reshape(-1)
        s = min(shape.shape[0], a.shapedirs.shape[2])
        rest = (
            a.v_template.astype(np.float64) + _blend_rows(a.shapedirs[:, :, :s], shape[:s])
        ) * size
        k = min(n_expression_keys, a.exprdirs.shape[2])
        exprdirs = np.transpose(a.exprdirs[:, :, :k], (2, 0, 1))  # (K,V,3) float32 view
        jreg = a.j_regressor.astype(np.float64)
        support = np.flatnonzero(np.abs(jreg).sum(0) > 0)  # the joints read a few vertices
        joint_basis = np.einsum("jv,kvc->kjc", jreg[:, support], exprdirs[:, support]) * size
        return RigArrays(
            rest_vertices=rest.astype(np.float32),
            expression_basis=_scaled_float32(exprdirs, size),
            pose_correctives=(np.transpose(a.posedirs, (2, 0, 1)) * size).astype(np.float32),
            joints=(jreg @ rest).astype(np.float32),
            joint_expression_basis=joint_basis.astype(np.float32),
            parents=a.parents.astype(np.int32),
            skin_weights=a.lbs_weights.astype(np.float32),
            joint_names=tuple(a.joint_names),
        )

    def landmark_triangles(self, yaw_deg: Tensor | float, b: int) -> tuple[Tensor, Tensor]:
        """(B,68) face ids and (B,68,3) barycentrics for heads at the given yaw."""
        dev = self.static_faces.device
        yaw = torch.as_tensor(yaw_deg, dtype=torch.float32, device=dev).detach().reshape(-1)
        yaw = yaw.expand(b) if yaw.numel() == 1 else yaw
        k = yaw_bin(yaw)
        dyn_f = self.dynamic_faces[k]  # (B,17)
        dyn_b = self.dynamic_bary[k]  # (B,17,3)
        faces = torch.cat([dyn_f, self.static_faces[None].expand(b, -1)], dim=1)
        bary = torch.cat([dyn_b, self.static_bary[None].expand(b, -1, -1)], dim=1)
        return faces, bary

    def landmarks_3d(self, vertices: Tensor, yaw_deg: Tensor | float) -> Tensor:
        """68 iBUG landmarks on a (posed or not) mesh.

        vertices: (B,V,3); yaw_deg: (B,) or scalar, the head's yaw as the camera sees it in
        degrees, positive when the subject turns to their own left (face toward camera
        +x). Points 17..67 are fixed on the surface; the contour 0..16 comes from the
        dynamic bin round(clamp(yaw, -39, 39)) + 39. Returns (B,68,3).
        """
        faces, bary = self.landmark_triangles(yaw_deg, vertices.shape[0])
        return vertices2landmarks(vertices, self.faces, faces, bary)

    def landmarks_frontal(self, vertices: Tensor) -> Tensor:
        """(B,V,3) -> (B,68,3) with the fixed frontal 68-point embedding."""
        return vertices2landmarks(vertices, self.faces, self.full_faces, self.full_bary)

    def landmarks_only(
        self,
        shape: Tensor | None = None,
        expression: Tensor | None = None,
        global_pose: Tensor | None = None,
        neck_pose: Tensor | None = None,
        jaw_pose: Tensor | None = None,
        eye_pose: Tensor | None = None,
        yaw_deg: Tensor | float = 0.0,
        translation: Tensor | None = None,
    ) -> Tensor:
        """Same as `landmarks_3d(forward(...).vertices, yaw_deg)`, evaluating LBS on the few
        hundred vertices that the landmark triangles use (fast landmark fitting). (B,68,3)."""
        b = self._batch(shape, expression, global_pose, neck_pose, jaw_pose, eye_pose, translation)
        betas = self._betas(shape, expression, b)
        pose = self.pose_vector(global_pose, neck_pose, jaw_pose, eye_pose, b)
        rot = batch_rodrigues(pose.reshape(-1, 3)).reshape(b, -1, 3, 3)
        verts, _ = lbs_subset(
            betas,
            rot,
            self.v_template,
            self.blend_dirs,
            self.posedirs,
            self.j_regressor,
            self.parents,
            self.lbs_weights,
            self.lmk_vertex_ids,
            self.reg_support,
        )
        if translation is not None:
            verts = verts + translation.to(verts.dtype).expand(b, 3)[:, None]
        faces, bary = self.landmark_triangles(yaw_deg, b)
        return vertices2landmarks(verts, self.lmk_faces_local, faces, bary)


# -- loading -------------------------------------------------------------------------------------

_REQUIRED = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")

# What each model array may be, checked from the .npy header (npz) or the unpickled array
# (pkl) before anything else touches it: dimensions, dtype kind, finite values, not empty.
_FLOAT = "biuf"
_MODEL_SPECS: dict[str, ArraySpec] = {
    "v_template": ArraySpec((None, 3), _FLOAT, finite=True, min_size=3),
    "f": ArraySpec((None, 3), "iu", min_size=3),
    "shapedirs": ArraySpec((None, 3, None), _FLOAT, finite=True),
    "exprdirs": ArraySpec((None, 3, None), _FLOAT, finite=True, required=False),
    "posedirs": ArraySpec((None, 3, None), _FLOAT, finite=True),
    "J_regressor": ArraySpec((None, None), _FLOAT, finite=True, min_size=1),
    "kintree_table": ArraySpec((2, None), "iu", min_size=2),
    "weights": ArraySpec((None, None), _FLOAT, finite=True, min_size=1),
    "mfnet_test_head": ArraySpec((), "biu", required=False),
}


def _read_model_dict(path: Path) -> dict[str, Any]:
    """The model's arrays (only the keys in _MODEL_SPECS), each checked against its spec."""
    regular_file(path, what="FLAME model file", error=ModelNotFoundError)
    if path.suffix.lower() == ".npz":
        data: dict[str, Any] = read_npz(path, _MODEL_SPECS, what="FLAME model file")
    else:
        obj = load_restricted_pickle(path)
        if not isinstance(obj, dict):
            raise MfnetError(f"{path}: expected a dict of FLAME arrays, found {type(obj).__name__}")
        missing = [k for k, spec in _MODEL_SPECS.items() if spec.required and k not in obj]
        if missing:
            raise MfnetError(f"{path}: missing key(s) {missing} (not a FLAME model file?)")
        data = {}
        for key, spec in _MODEL_SPECS.items():
            if key in obj:
                value = obj[key]
                if key == "mfnet_test_head" and isinstance(value, bool):
                    value = np.asarray(value)
                data[key] = check_array(value, key, str(path), spec)
    if "mfnet_test_head" in data:
        data["mfnet_test_head"] = bool(data["mfnet_test_head"])
    return data


def _array(data: dict[str, Any], key: str, path: Path, ndim: int, dtype: Any) -> np.ndarray:
    try:
        a = _dense(data[key])
    except KeyError:
        raise MfnetError(f"{path}: missing key {key!r} (not a FLAME model file?)") from None
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # refused just below
            a = np.asarray(a, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise MfnetError(f"{path}: key {key!r} is not a numeric array") from None
    if a.ndim != ndim:
        raise MfnetError(f"{path}: key {key!r} has shape {a.shape}, expected {ndim} dimensions")
    if a.dtype.kind == "f" and not np.isfinite(a).all():  # also float64 values past float32
        raise MfnetError(f"{path}: key {key!r} holds NaN/inf or values too large for float32")
    return a


def _load_landmarks(path: Path, n_faces: int, model_path: Path) -> LandmarkEmbedding:
    """DECA `landmark_embedding.npy`, or smplx/TF_FLAME `flame_static_embedding.pkl` with
    `flame_dynamic_embedding.npy` beside it."""

    def arr(d: dict[str, Any], key: str, src: Path, dtype: Any) -> np.ndarray:
        if key not in d:
            raise MfnetError(f"{src}: missing key {key!r} (expected a FLAME landmark embedding)")
        a = check_array(d[key], key, str(src), ArraySpec(kinds=_FLOAT, finite=True, min_size=1))
        if np.dtype(dtype).kind in "iu" and a.dtype.kind == "f" and np.any(a != np.round(a)):
            raise MfnetError(f"{src}: key {key!r} should hold face ids, found fractions")
        return np.asarray(a, dtype=dtype)

    def flat(a: np.ndarray, cols: int, key: str, src: Path) -> np.ndarray:
        if a.size % cols:
            raise MfnetError(f"{src}: key {key!r} has shape {a.shape}, not a multiple of {cols}")
        return a.reshape(-1, cols) if cols > 1 else a.reshape(-1)

    if path.suffix == ".npy":
        d = load_npy_object(path)
        if not isinstance(d, dict):
            raise MfnetError(f"{path}: expected a pickled dict (DECA's landmark_embedding.npy)")
        static_f = flat(
            arr(d, "static_lmk_faces_idx", path, np.int64), 1, "static_lmk_faces_idx", path
        )
        static_b = flat(
            arr(d, "static_lmk_bary_coords", path, np.float32), 3, "static_lmk_bary_coords", path
        )
        dyn_f = arr(d, "dynamic_lmk_faces_idx", path, np.int64)
        dyn_b = arr(d, "dynamic_lmk_bary_coords", path, np.float32)
        if "full_lmk_faces_idx" in d:
            full_f = flat(
                arr(d, "full_lmk_faces_idx", path, np.int64), 1, "full_lmk_faces_idx", path
            )
            full_b = flat(
                arr(d, "full_lmk_bary_coords", path, np.float32), 3, "full_lmk_bary_coords", path
            )
        else:
            full_f = full_b = None
    else:
        d = load_restricted_pickle(path)
        if not isinstance(d, dict):
            raise MfnetError(f"{path}: expected a dict with lmk_face_idx and lmk_b_coords")
        static_f = flat(arr(d, "lmk_face_idx", path, np.int64), 1, "lmk_face_idx", path)
        static_b = flat(arr(d, "lmk_b_coords", path, np.float32), 3, "lmk_b_coords", path)
        dyn_path = path.parent / "flame_dynamic_embedding.npy"
        if not dyn_path.is_file():
            raise ModelNotFoundError(
                f"{dyn_path} is missing (needed with {path.name}): get flame_dynamic_embedding.npy "
                f"from the FLAME website ({FLAME_URL}) or TF_FLAME/smplx, or use DECA's "
                f"data/landmark_embedding.npy ({DECA_URL}) instead"
            )
        dd = load_npy_object(dyn_path)
        if not isinstance(dd, dict):
            raise MfnetError(
                f"{dyn_path}: expected a pickled dict with lmk_face_idx and lmk_b_coords"
            )
        dyn_f = arr(dd, "lmk_face_idx", dyn_path, np.int64)
        dyn_b = arr(dd, "lmk_b_coords", dyn_path, np.float32)
        full_f = full_b = None
        if static_f.shape[0] == 68:  # a 68-point static file: the contour is its first 17
            full_f, full_b = static_f, static_b
            static_f, static_b = static_f[17:], static_b[17:]
    if static_f.shape != (51,) or static_b.shape != (51, 3):
        raise MfnetError(
            f"{path}: static landmarks have shape {static_f.shape}, expected 51 points"
        )
    if dyn_f.shape != (N_YAW_BINS, 17) or dyn_b.shape != (N_YAW_BINS, 17, 3):
        raise MfnetError(f"{path}: dynamic contour has shape {dyn_f.shape}, expected (79, 17)")
    dyn_f = flame_bins_to_ours(dyn_f)
    dyn_b = flame_bins_to_ours(dyn_b)
    if full_f is None:
        full_f = np.concatenate([dyn_f[MAX_YAW_DEG], static_f])
        full_b = np.concatenate([dyn_b[MAX_YAW_DEG], static_b])
    if full_f.shape != (68,) or full_b.shape != (68, 3):
        raise MfnetError(f"{path}: full landmarks have shape {full_f.shape}, expected 68 points")
    for name, f in (("static", static_f), ("dynamic", dyn_f), ("full", full_f)):
        if f.min() < 0 or f.max() >= n_faces:
            raise MfnetError(
                f"{path}: {name} landmark face ids out of range for {model_path.name} ({n_faces} faces); "
                "is this embedding for another FLAME topology?"
            )
    return LandmarkEmbedding(
        static_faces=static_f.astype(np.int64),
        static_bary=static_b.astype(np.float32),
        dynamic_faces=dyn_f.astype(np.int64),
        dynamic_bary=dyn_b.astype(np.float32),
        full_faces=full_f.astype(np.int64),
        full_bary=full_b.astype(np.float32),
    )


def _read_obj_uv(path: Path, faces: np.ndarray) -> UVLayout:
    vt: list[tuple[float, float]] = []
    ft: list[list[int]] = []
    fv: list[list[int]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("vt "):
                parts = line.split()
                vt.append((float(parts[1]), float(parts[2])))
            elif line.startswith("f "):
                corners = [c.split("/") for c in line.split()[1:]]
                if any(len(c) < 2 or not c[1] for c in corners):
                    raise MfnetError(f"{path}: face without texture coordinates ('{line.strip()}')")
                vi = [int(c[0]) - 1 for c in corners]
                ti = [int(c[1]) - 1 for c in corners]
                for k in range(1, len(corners) - 1):  # fan-triangulate polygons
                    fv.append([vi[0], vi[k], vi[k + 1]])
                    ft.append([ti[0], ti[k], ti[k + 1]])
    uv_faces = np.asarray(ft, dtype=np.int64).reshape(-1, 3)
    if uv_faces.shape[0] != faces.shape[0]:
        raise MfnetError(f"{path}: {uv_faces.shape[0]} faces, the model has {faces.shape[0]}")
    if not np.array_equal(np.asarray(fv, dtype=np.int64), faces):
        raise MfnetError(f"{path}: its faces do not match the model's (another topology?)")
    return UVLayout(np.asarray(vt, dtype=np.float32).reshape(-1, 2), uv_faces)


def _load_uv(path: Path, faces: np.ndarray) -> UVLayout:
    if path.suffix.lower() == ".obj":
        return _read_obj_uv(path, faces)
    z = read_npz(path, _UV_SPECS, what="UV layout file")
    vt = np.asarray(z["vt"], dtype=np.float32)
    ft = np.asarray(z["ft"], dtype=np.int64)
    if ft.shape != faces.shape:
        raise MfnetError(f"{path}: ft has shape {ft.shape}, the model has {faces.shape[0]} faces")
    if ft.min() < 0 or ft.max() >= len(vt):
        raise MfnetError(f"{path}: ft indexes past vt ({len(vt)} uv vertices)")
    return UVLayout(vt, ft)


# FLAME_texture.npz also holds the albedo space (hundreds of MB), never read here.
_UV_SPECS = {
    "vt": ArraySpec((None, 2), _FLOAT, finite=True, min_size=2),
    "ft": ArraySpec((None, 3), "iu", min_size=3),
}


def generated_uv(vertices: np.ndarray, faces: np.ndarray) -> UVLayout:
    """A UV layout made with xatlas, cached per topology (sha256 of the faces) because it
    takes seconds and must be identical between runs."""
    key = hashlib.sha256(np.ascontiguousarray(faces, dtype=np.int64).tobytes()).hexdigest()[:32]
    cache = user_cache_dir() / "uv" / f"{key}.npz"
    if cache.is_file():
        try:
            z = read_npz(cache, _UV_SPECS, what="UV cache file")
            vt, ft = z["vt"].astype(np.float32), z["ft"].astype(np.int64)
            if ft.shape == faces.shape and ft.min() >= 0 and ft.max() < len(vt):
                return UVLayout(vt, ft)
        except MfnetError:
            pass  # a damaged cache entry is simply regenerated
    import xatlas

    vmapping, indices, uvs = xatlas.parametrize(
        vertices.astype(np.float32), faces.astype(np.uint32)
    )
    uv = UVLayout(np.asarray(uvs, dtype=np.float32), np.asarray(indices, dtype=np.int64))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{np.random.randint(1 << 30)}.npz")
        np.savez(tmp, vt=uv.uv_coords, ft=uv.uv_faces)
        tmp.replace(cache)
    except OSError:
        pass  # read-only cache: still usable, only slower next time
    return uv


def geometric_face_region(
    v_template: np.ndarray,
    faces: np.ndarray,
    lbs_weights: np.ndarray,
    joint_names: tuple[str, ...],
    emb: LandmarkEmbedding,
) -> np.ndarray:
    """Face vertices when no mask file exists: between the contour's ears, from a little
    under the chin to well above the brows, in front of the ears, skin only (no eyeballs)."""
    lm = (v_template[faces[emb.full_faces]] * emb.full_bary[..., None]).sum(1)  # (68,3)
    x, y, z = v_template.T
    width = 0.5 * (lm[16, 0] - lm[0, 0])
    cx = 0.5 * (lm[16, 0] + lm[0, 0])
    brow = lm[17:27, 1].max()
    eye_dist = np.linalg.norm(lm[45] - lm[36])
    top = brow + 0.6 * eye_dist
    bottom = lm[8, 1] - 0.1 * eye_dist
    front = min(lm[0, 2], lm[16, 2]) - 0.15 * eye_dist
    inside = (np.abs(x - cx) <= 1.05 * abs(width)) & (y <= top) & (y >= bottom) & (z >= front)
    eye_ids = [i for i, n in enumerate(joint_names) if n.startswith("eye")]
    if eye_ids:
        inside &= lbs_weights[:, eye_ids].sum(1) < 0.5
    return inside


def load_flame_assets(
    model_path: Path | str,
    *,
    landmark_path: Path | str | None = None,
    uv_path: Path | str | None = None,
) -> FlameAssets:
    """Reads a FLAME model (.pkl or .npz) and its side files into a `FlameAssets`.

    Side files next to the model (explicit paths take precedence; `<model stem>_<name>`
    before the plain FLAME name): landmarks from `landmark_embedding.npy` (DECA) or
    `flame_static_embedding.pkl` + `flame_dynamic_embedding.npy` (smplx/TF_FLAME); UVs from
    `FLAME_texture.npz` (vt, ft) or `head_template.obj` / `head_template_mesh.obj`, else
    generated with xatlas; the face region from `FLAME_masks.pkl` ('face'), else geometric.
    """
    path = Path(model_path).expanduser()
    data = _read_model_dict(path)
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise MfnetError(f"{path}: missing key(s) {missing} (not a FLAME model file?)")
    v_template = _array(data, "v_template", path, 2, np.float32)
    n_v = v_template.shape[0]
    if v_template.shape[1] != 3:
        raise MfnetError(f"{path}: 'v_template' has shape {v_template.shape}, expected (V,3)")
    faces = _array(data, "f", path, 2, np.int64)
    if faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= n_v:
        raise MfnetError(f"{path}: 'f' must be (F,3) vertex ids below {n_v}")
    alldirs = _array(data, "shapedirs", path, 3, np.float32)
    if alldirs.shape[:2] != (n_v, 3):
        raise MfnetError(f"{path}: 'shapedirs' has shape {alldirs.shape}, expected ({n_v},3,K)")
    if "exprdirs" in data:
        shapedirs = alldirs
        exprdirs = _array(data, "exprdirs", path, 3, np.float32)
        if exprdirs.shape[:2] != (n_v, 3):
            raise MfnetError(f"{path}: 'exprdirs' has shape {exprdirs.shape}, expected ({n_v},3,K)")
    else:
        n_s = min(N_SHAPE_FLAME, alldirs.shape[2])
        shapedirs, exprdirs = alldirs[:, :, :n_s], alldirs[:, :, n_s:]
    kintree = _array(data, "kintree_table", path, 2, np.int64)
    if kintree.shape[0] != 2:
        raise MfnetError(f"{path}: 'kintree_table' has shape {kintree.shape}, expected (2,J)")
    n_j = kintree.shape[1]
    parents = kintree[0].copy()
    parents[0] = -1  # FLAME stores 2**32-1 for the root
    if np.any(parents[1:] < 0) or np.any(parents[1:] >= np.arange(1, n_j)):
        raise MfnetError(f"{path}: 'kintree_table' parents must come before their children")
    posedirs = _array(data, "posedirs", path, 3, np.float32)
    if posedirs.shape != (n_v, 3, 9 * (n_j - 1)):
        raise MfnetError(
            f"{path}: 'posedirs' has shape {posedirs.shape}, expected ({n_v},3,{9 * (n_j - 1)})"
        )
    j_regressor = _array(data, "J_regressor", path, 2, np.float32)
    if j_regressor.shape != (n_j, n_v):
        raise MfnetError(
            f"{path}: 'J_regressor' has shape {j_regressor.shape}, expected ({n_j},{n_v})"
        )
    weights = _array(data, "weights", path, 2, np.float32)
    if weights.shape != (n_v, n_j):
        raise MfnetError(f"{path}: 'weights' has shape {weights.shape}, expected ({n_v},{n_j})")
    joint_names = DEFAULT_JOINT_NAMES if n_j == 5 else tuple(f"joint_{i}" for i in range(n_j))
    kind = "test-head" if bool(data.get("mfnet_test_head", False)) else "flame"

    folder = path.parent
    lmk_file = Path(landmark_path) if landmark_path else find_side_file(path, "landmarks")
    if lmk_file is None or not lmk_file.is_file():
        where = lmk_file or folder
        raise ModelNotFoundError(
            f"no FLAME landmark embedding for {path.name} (looked in {where}): put DECA's "
            f"data/landmark_embedding.npy ({DECA_URL}) next to the model, or "
            f"flame_static_embedding.pkl + flame_dynamic_embedding.npy from {FLAME_URL} (smplx / TF_FLAME)"
        )
    landmarks = _load_landmarks(lmk_file, faces.shape[0], path)

    uv_file = Path(uv_path) if uv_path else find_side_file(path, "uv")
    if uv_file is not None:
        if not uv_file.is_file():
            raise ModelNotFoundError(f"UV layout file not found: {uv_file}")
        uv = _load_uv(uv_file, faces)
    else:
        uv = generated_uv(v_template, faces)

    mask_file = find_side_file(path, "masks")
    face_region = None
    if mask_file is not None:
        masks = load_restricted_pickle(mask_file)
        if isinstance(masks, dict) and "face" in masks:
            ids = check_array(masks["face"], "face", str(mask_file), ArraySpec(kinds="iu"))
            ids = ids.astype(np.int64).reshape(-1)
            if ids.size and ids.min() >= 0 and ids.max() < n_v:
                face_region = np.zeros(n_v, dtype=bool)
                face_region[ids] = True
    if face_region is None:
        face_region = geometric_face_region(v_template, faces, weights, joint_names, landmarks)

    return FlameAssets(
        v_template=v_template,
        faces=faces,
        shapedirs=np.ascontiguousarray(shapedirs),
        exprdirs=np.ascontiguousarray(exprdirs),
        posedirs=posedirs,
        j_regressor=j_regressor,
        parents=parents,
        lbs_weights=weights,
        joint_names=joint_names,
        landmarks=landmarks,
        uv=uv,
        face_region=face_region,
        kind=kind,
        name=path.name,
        sha256=file_sha256(path),
        source_path=path,
    )
