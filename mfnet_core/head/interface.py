"""The one head-model interface that the fit, the texture bake, the export, the report and
the network use.

A head model is a torch module that maps coefficients and joint rotations to a mesh. What
the rest of mfnet may assume about it is written here and nowhere else: a template with
faces (and which part/material each face belongs to), an identity and an expression
coefficient space (with names where the model has them and per-coefficient bounds where
a space is bounded, e.g. blendshape weights in [0, 1]), joints with skinning (FLAME's five,
or a rig made for the model), a 68-point iBUG landmark embedding with contour landmarks that
follow the silhouette in turned views, a UV layout (several tiles allowed) and the metric
units of its files. Nothing outside `head/` may assume FLAME, a vertex count, or that
expressions are PCA components.

Axes of every head model: metres, y up, x to the subject's left, the face looks along +z.
Pose order of `pose_vector`: global (root), neck, jaw, eye_L, eye_R; joints a model lacks
stay at rest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CoefficientSpace",
    "HeadModel",
    "HeadOutput",
    "LandmarkEmbedding",
    "ModelInfo",
    "Parts",
    "RigArrays",
    "UVLayout",
    "N_YAW_BINS",
    "MAX_YAW_DEG",
    "JOINT_ORDER",
]

MAX_YAW_DEG = 39
N_YAW_BINS = 2 * MAX_YAW_DEG + 1
# The pose vector's joint order (see `HeadModel.pose_vector`).
JOINT_ORDER = ("root", "neck", "jaw", "eye_L", "eye_R")


@dataclass(frozen=True)
class LandmarkEmbedding:
    """68 iBUG landmarks as (face, barycentric) pairs on the model's triangles.

    The contour (points 0..16) has one row per yaw bin: bin k is for a head yaw of k - 39
    degrees as the camera sees it (positive when the subject turns to their own left).
    """

    static_faces: np.ndarray  # (51,) int64, iBUG points 17..67
    static_bary: np.ndarray  # (51,3) float32
    dynamic_faces: np.ndarray  # (79,17) int64, contour points 0..16 per yaw bin
    dynamic_bary: np.ndarray  # (79,17,3) float32
    full_faces: np.ndarray  # (68,) int64, a fixed frontal 68-point embedding
    full_bary: np.ndarray  # (68,3) float32


@dataclass(frozen=True)
class UVLayout:
    uv_coords: np.ndarray  # (T,2) float32, origin bottom-left (OBJ / Blender); u may span tiles
    uv_faces: np.ndarray  # (F,3) int64 into uv_coords, one per mesh face


@dataclass(frozen=True)
class Parts:
    """Which part (and so which material) each face belongs to: skin, eyes, teeth, ...

    `painted` gives a default sRGB colour (0..1) to parts that photos rarely show well
    (teeth, gums, sclera, lashes): the bake paints them instead of smearing skin into them.
    `alpha` is the opacity of thin overlay parts (lashes, eye occlusion) for the renderer.
    `strands` names parts drawn as hair cards (eyelashes): the texture's alpha channel
    draws strands on them (`outputs.texture.strand_alpha`).
    """

    names: tuple[str, ...]
    face_part: np.ndarray  # (F,) int64 index into names
    painted: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    alpha: dict[str, float] = field(default_factory=dict)
    strands: tuple[str, ...] = ()

    @staticmethod
    def single(n_faces: int, name: str = "skin") -> Parts:
        return Parts((name,), np.zeros(n_faces, dtype=np.int64))

    def opaque(self, min_alpha: float = 0.5) -> np.ndarray:
        """(F,) bool: faces a renderer without blending should draw (thin see-through
        overlays such as the eye-occlusion shell would otherwise hide the eyes)."""
        keep = np.array([self.alpha.get(n, 1.0) >= min_alpha for n in self.names])
        return keep[self.face_part]

    def strand_faces(self) -> np.ndarray | None:
        """(F,) bool: faces of the `strands` parts; None when the model has none."""
        if not self.strands:
            return None
        return np.isin(self.face_part, [self.names.index(n) for n in self.strands])

    def face_paint(self) -> np.ndarray | None:
        """(F,3) float32 sRGB per face, NaN where the photos are baked; None: nothing painted."""
        if not self.painted:
            return None
        table = np.full((len(self.names), 3), np.nan, dtype=np.float32)
        for i, name in enumerate(self.names):
            if name in self.painted:
                table[i] = self.painted[name]
        return table[self.face_part]


@dataclass(frozen=True)
class CoefficientSpace:
    """An identity or expression space.

    `names` where the model has them (ARKit blendshapes), else None (PCA components);
    `lower`/`upper` per coefficient where the space is bounded, else None; `prior` says what
    the regulariser assumes: "normal" (coefficients in standard deviations, ~N(0,1)) or
    "weights" (blendshape weights, pulled to 0).
    """

    size: int
    names: tuple[str, ...] | None = None
    lower: np.ndarray | None = None  # (size,)
    upper: np.ndarray | None = None  # (size,)
    prior: str = "normal"
    # how strongly the regulariser holds this space, relative to the fit's `reg` weight
    # (blendshape weights of 1 are a full expression, not one standard deviation)
    prior_scale: float = 1.0

    @property
    def bounded(self) -> bool:
        return self.lower is not None or self.upper is not None


@dataclass(frozen=True)
class ModelInfo:
    """Where a head model came from, for reports and the result folder."""

    kind: str  # "flame", "test-head", ...
    name: str  # model file name
    sha256: str
    source_path: Path
    licence: str = ""
    file_units_to_metres: float = 1.0  # what the files' units were scaled by on loading


@dataclass
class HeadOutput:
    vertices: Tensor  # (B,V,3) posed, in model axes (plus translation)
    joints: Tensor  # (B,J,3) posed joint positions
    v_shaped: Tensor  # (B,V,3) template + shape + expression, before pose correctives


@dataclass(frozen=True)
class RigArrays:
    """What the result folder's rig needs, for one fitted identity (numpy, metres)."""

    rest_vertices: np.ndarray  # (V,3) template + identity
    expression_basis: np.ndarray  # (K,V,3) per kept expression coefficient
    pose_correctives: np.ndarray  # (P,V,3), P = 9 * (J - 1)
    joints: np.ndarray  # (J,3) rest joint positions
    joint_expression_basis: np.ndarray  # (K,J,3) how the joints move per expression unit
    parents: np.ndarray  # (J,)
    skin_weights: np.ndarray  # (V,J)
    joint_names: tuple[str, ...]


class HeadModel(nn.Module, ABC):
    """The interface; subclasses register their arrays as buffers so `.to(device)` moves them.

    Attributes every model sets: `info` (ModelInfo), `faces` (F,3) long buffer, `parents`
    (J,) long buffer, `joint_names`, `uv` (UVLayout), `parts` (Parts), `face_region` (V,)
    bool numpy (the face from forehead to chin and ear to ear, no eyeballs),
    `landmark_embedding` (LandmarkEmbedding), `shape_space` and `expression_space`
    (CoefficientSpace of the kept coefficients), `n_shape` and `n_expr` (their sizes).
    """

    info: ModelInfo
    faces: Tensor
    parents: Tensor
    joint_names: tuple[str, ...]
    uv: UVLayout
    parts: Parts
    face_region: np.ndarray
    landmark_embedding: LandmarkEmbedding
    shape_space: CoefficientSpace
    expression_space: CoefficientSpace
    n_shape: int
    n_expr: int
    # Joints whose rotation moves the mesh (ICT opens the mouth with a blendshape, not its jaw
    # joint): the fit frees only these poses.
    posed_joints: frozenset[str] = frozenset(JOINT_ORDER)
    # how many times bigger than the model's own files this model makes heads (`rescaled`):
    # a result stores it, so a track of that person uses the same size
    scale: float = 1.0

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def n_joints(self) -> int:
        return int(self.parents.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's float arrays (float32 unless `.double()` was called)."""
        return next(b for b in self.buffers() if b.is_floating_point()).dtype

    @property
    def n_vertices(self) -> int:
        return int(self.face_region.shape[0])

    # -- evaluation ------------------------------------------------------------------------
    @abstractmethod
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
        (B,6) left then right eye, translation (B,3). Missing inputs are zeros."""

    @abstractmethod
    def pose_vector(
        self,
        global_pose: Tensor | None,
        neck_pose: Tensor | None,
        jaw_pose: Tensor | None,
        eye_pose: Tensor | None,
        b: int,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """(B,3J) axis-angle per joint in the model's joint order (JOINT_ORDER first), in
        `dtype` (default: the model's); missing parts are zeros."""

    @abstractmethod
    def rest_vertices(self, shape: Tensor) -> Tensor:
        """(B,ns) -> (B,V,3): template plus identity only (no expression, no pose)."""

    @abstractmethod
    def rest_joints(self, shape: Tensor, expression: Tensor) -> Tensor:
        """(B,ns), (B,ne) -> (B,J,3) joint positions before any rotation."""

    @abstractmethod
    def vertex_subset(self, vertex_ids: Tensor, dtype: object = None) -> nn.Module:
        """The model evaluated on a few vertices only (the fit's Jacobians need thousands
        of evaluations): a module (betas (B,ns+ne), pose (B,3J)) -> (vertices (B,S,3),
        posed joints (B,J,3)), equal to `forward` on those vertices. It may also offer
        `linear(pose)`, the affine map of the betas at fixed poses (`SubsetLBS.linear`),
        which the dense terms use for their Jacobian; without it they build that map from
        K + 1 evaluations."""

    # -- landmarks ---------------------------------------------------------------------------
    @abstractmethod
    def landmark_triangles(self, yaw_deg: Tensor | float, b: int) -> tuple[Tensor, Tensor]:
        """(B,68) face ids and (B,68,3) barycentrics of the landmarks for heads at the given
        yaw (degrees as the camera sees it): the contour follows the silhouette."""

    @abstractmethod
    def landmarks_3d(self, vertices: Tensor, yaw_deg: Tensor | float) -> Tensor:
        """(B,V,3) mesh -> (B,68,3) iBUG landmarks for heads at the given yaw."""

    @abstractmethod
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
        """Same as `landmarks_3d(forward(...).vertices, yaw_deg)`, cheaper: (B,68,3)."""

    @abstractmethod
    def rescaled(self, factor: float) -> HeadModel:
        """The same model `factor` times bigger (every head it makes scaled about the
        origin, joints too): how a fit is made metric (fit/metric_scale.py)."""

    # -- export ----------------------------------------------------------------------------
    @abstractmethod
    def rig_arrays(self, shape: np.ndarray, n_expression_keys: int) -> RigArrays:
        """The fitted identity's rest mesh, bases, joints and skinning for the result folder."""
