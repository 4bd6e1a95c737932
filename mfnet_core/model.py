"""The MFNet network (paper sections 3.1-3.3) and its use as the fit's initialiser.

A shared ResNet encodes each view's face crop; the N pooled features are concatenated and a
fully connected head regresses the person's FLAME shape, expression and jaw pose (one set for
all views); a per-view head regresses each view's head pose (which plays the camera, paper
section 3.6), SH lighting and an albedo code.

The ResNet is written here rather than imported from torchvision: PyPI's torchvision does
not import beside the CPU torch this project pins, and the torchvision build that does is a
5.5 GB CUDA install. The module and parameter names are identical to torchvision's
(``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``fc``), so an ImageNet ``resnet50`` ``.pth``
saved by torchvision loads key for key, and so does the ``encoder.*`` part of DECA's
``E_flame`` (DECA's ResNet is a copy of torchvision's without ``fc``).

Pose parameterisation. Each view's head pose is predicted relative to that view's crop:
an axis-angle rotation (3), the pixel where the face centre (the centre of the inner-face
landmarks 17..67 on the predicted mesh, ``face_anchor``) lands, as an offset from the crop
centre in units of half the crop (2), and the log of its depth relative to the depth at
which a face of ``REF_HALF_SIZE_M`` fills half the crop (1). Anchoring at the face rather
than at FLAME's root joint (in the neck) keeps a rotation error from also moving the face;
on the synthetic set it halved the loss after 300 steps. ``decode_pose`` turns that, with
the crop's intrinsics, into mfnet_core's ``head_rot``/``head_trans``
(``X_cam = R (X - pivot) + pivot + t``) so the same numbers work at any photo resolution
and drop straight into the fitter. Each view slot (left, front, right) also has a learned
output bias (``view_slot_bias``: the slot's typical yaw).

Albedo. No FLAME albedo model ships with the project, so the "albedo coefficients" are a
small per-view colour code (``n_albedo``, default 3): log RGB gains of a flat skin albedo
(``albedo_rgb``). It is per view because real multi-camera rigs (Multi-PIE, FaceScape)
differ in white balance per camera; eq. 10 regularises it. When a linear albedo model is
available, the same outputs become its coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from .camera import Intrinsics, axis_angle_to_matrix, project, yaw_pitch_roll_deg
from .errors import MfnetError

# Half the width of a landmark-based face crop (1.25 x the 68 landmarks' extent) on an
# average adult, in metres: the depth scale of the pose head's zero output.
REF_HALF_SIZE_M = 0.0875
# ImageNet statistics (torchvision's pretrained weights expect them); DECA expects [0,1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Skin tone the albedo code modulates (linear RGB in [0,1]).
BASE_ALBEDO = (0.70, 0.52, 0.42)

CHECKPOINT_FORMAT = "mfnet-checkpoint"


# --------------------------------------------------------------------------------------
# ResNet with torchvision's names
# --------------------------------------------------------------------------------------
def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck (stride on the 3x3 conv)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


ARCHS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    # For the CPU smoke run only: one basic block per stage (use with a small width).
    "resnet10": (BasicBlock, (1, 1, 1, 1)),
}


class ResNet(nn.Module):
    """torchvision-compatible ResNet; ``forward`` returns pooled features (B, out_dim).

    ``width`` is the first stage's channel count (64 in torchvision); with 64 the state
    dict matches torchvision's ``resnetXX`` key for key and shape for shape. ``num_classes``
    adds torchvision's ``fc`` layer (not used by MFNet; kept so a full ImageNet state dict
    round-trips).
    """

    def __init__(
        self, arch: str = "resnet50", width: int = 64, num_classes: int | None = None
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise MfnetError(f"unknown backbone {arch!r}; choose from {', '.join(ARCHS)}")
        block, layers = ARCHS[arch]
        self.arch = arch
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.out_dim = width * 8 * block.expansion  # type: ignore[attr-defined]
        self.fc = nn.Linear(self.out_dim, num_classes) if num_classes else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero the last BN of each residual branch: every block starts as the identity,
        # which makes training from scratch (smoke run) stable.
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def _make_layer(
        self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        expansion = block.expansion  # type: ignore[attr-defined]
        downsample = None
        if stride != 1 or self.inplanes != planes * expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * expansion, stride),
                nn.BatchNorm2d(planes * expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised images -> (B, out_dim) pooled features."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


# --------------------------------------------------------------------------------------
# MFNet
# --------------------------------------------------------------------------------------
@dataclass
class MFNetConfig:
    """Everything needed to rebuild the network (stored in checkpoints as a plain dict)."""

    backbone: str = "resnet50"
    width: int = 64
    n_views: int = 3
    n_shape: int = 100
    n_expr: int = 50
    n_albedo: int = 3
    fuse_hidden: int = 1024
    view_hidden: int = 1024
    input_size: int = 224
    input_norm: str = "imagenet"  # "imagenet" (torchvision weights) or "none" (DECA: [0,1])
    crop_scale: float = 1.25  # crop side / landmark extent (DECA's value)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> MFNetConfig:
        known = set(MFNetConfig.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise MfnetError(f"unknown model option(s) {unknown}; known: {sorted(known)}")
        return MFNetConfig(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


POSE_DIM = 6  # axis-angle (3), root-joint pixel offset in half-crops (2), log depth (1)
LIGHT_DIM = 27  # 9 SH bands x RGB


@dataclass
class MFNetOutput:
    """Raw network outputs. B people, N views."""

    shape: Tensor  # (B,S)
    expression: Tensor  # (B,E)
    jaw_pose: Tensor  # (B,3)
    pose: Tensor  # (B,N,6) crop-relative pose, see decode_pose
    light: Tensor  # (B,N,9,3) SH coefficients (mfnet_core.render.sh_basis order)
    albedo: Tensor  # (B,N,n_albedo)
    features: Tensor = field(repr=False)  # (B,N,D) backbone features


def _mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    if hidden <= 0:
        return nn.Sequential(nn.Linear(cin, cout))
    return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, cout))


class MFNet(nn.Module):
    """Shared ResNet over N views; fused FC -> (shape, expression, jaw); per-view FC -> (pose, light, albedo)."""

    def __init__(self, config: MFNetConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or MFNetConfig()
        self.backbone = ResNet(c.backbone, c.width)
        d = self.backbone.out_dim
        self.fuse_head = _mlp(c.n_views * d, c.fuse_hidden, c.n_shape + c.n_expr + 3)
        self.view_head = _mlp(d, c.view_hidden, POSE_DIM + LIGHT_DIM + c.n_albedo)
        # Views arrive in a fixed order (left, front, right): each slot has its own output
        # bias (the typical yaw of that camera), the shared head predicts the rest.
        self.view_slot_bias = nn.Parameter(
            torch.zeros(c.n_views, POSE_DIM + LIGHT_DIM + c.n_albedo)
        )
        # Start at the mean head, frontal, centred, at the reference depth, ambient light.
        for head in (self.fuse_head, self.view_head):
            last = head[-1]
            assert isinstance(last, nn.Linear)
            nn.init.normal_(last.weight, std=1e-3)
            nn.init.zeros_(last.bias)
        with torch.no_grad():
            self.view_head[-1].bias[POSE_DIM] = 1.0  # SH band 0 (ambient), R
            self.view_head[-1].bias[POSE_DIM + 1] = 1.0
            self.view_head[-1].bias[POSE_DIM + 2] = 1.0
        mean = torch.tensor(IMAGENET_MEAN if c.input_norm == "imagenet" else (0.0, 0.0, 0.0))
        std = torch.tensor(IMAGENET_STD if c.input_norm == "imagenet" else (1.0, 1.0, 1.0))
        if c.input_norm not in ("imagenet", "none"):
            raise MfnetError(f"input_norm must be 'imagenet' or 'none', not {c.input_norm!r}")
        self.register_buffer("pixel_mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std.view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> MFNetOutput:
        """images: (B,N,3,H,W) face crops in [0,1], views in the trained order (left, front, right)."""
        b, n = images.shape[:2]
        c = self.config
        if n != c.n_views:
            raise ValueError(f"the network was built for {c.n_views} views, got {n}")
        x = (images.flatten(0, 1) - self.pixel_mean) / self.pixel_std
        feats = self.backbone(x).view(b, n, -1)  # (B,N,D)
        fused = self.fuse_head(feats.flatten(1))
        view = self.view_head(feats) + self.view_slot_bias  # (B,N,P)
        s, e = c.n_shape, c.n_expr
        return MFNetOutput(
            shape=fused[:, :s],
            expression=fused[:, s : s + e],
            jaw_pose=fused[:, s + e : s + e + 3],
            pose=view[..., :POSE_DIM],
            light=view[..., POSE_DIM : POSE_DIM + LIGHT_DIM].reshape(b, n, 9, 3),
            albedo=view[..., POSE_DIM + LIGHT_DIM :],
            features=feats,
        )


def albedo_rgb(code: Tensor) -> Tensor:
    """(...,K) albedo code -> (...,3) flat RGB albedo: base skin tone times exp(code[:3])."""
    base = torch.tensor(BASE_ALBEDO, dtype=code.dtype, device=code.device)
    gains = code[..., :3] if code.shape[-1] >= 3 else code[..., :1].expand(*code.shape[:-1], 3)
    return (base * torch.exp(gains)).clamp(0, 1)


def decode_pose(
    pose: Tensor, camera: Tensor, pivot: Tensor, crop_size: int, anchor: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Crop-relative pose -> mfnet_core's per-view head pose.

    pose: (...,6) network output: axis-angle (3), where the anchor lands in the crop as an
    offset from its centre in half-crop units (2), log depth of the anchor relative to
    ``REF_HALF_SIZE_M`` filling half the crop (1). camera: (...,4) fx, fy, cx, cy of the crop
    in crop pixels; pivot: (...,3) the root joint in model space (FLAME's rotation centre,
    after shaping); anchor: (...,3) the model-space point the offset and depth refer to
    (default: the pivot; training uses the centre of the inner-face landmarks, so that a
    rotation error does not also move the face); crop_size: crop side in pixels.
    Returns head_rot (...,3) axis-angle and head_trans (...,3) with
    X_cam = R (X - pivot) + pivot + t in OpenGL-like camera space. Camera space is the same
    for the crop and the full photo, so the result is valid with the photo's intrinsics.
    """
    half = crop_size / 2
    fx, fy, cx, cy = camera.unbind(-1)
    u = half + pose[..., 3] * half
    v = half + pose[..., 4] * half
    depth = fx * REF_HALF_SIZE_M / half * torch.exp(pose[..., 5])
    x = (u - cx) / fx * depth
    y = -(v - cy) / fy * depth
    target = torch.stack([x, y, -depth], dim=-1)  # where the anchor goes in camera space
    head_rot = pose[..., :3]
    if anchor is None:
        return head_rot, target - pivot
    rot = axis_angle_to_matrix(head_rot.reshape(-1, 3)).view(*head_rot.shape[:-1], 3, 3)
    rotated = (rot @ (anchor - pivot)[..., None])[..., 0]
    return head_rot, target - pivot - rotated


def encode_pose(
    head_rot: Tensor,
    head_trans: Tensor,
    camera: Tensor,
    pivot: Tensor,
    crop_size: int,
    anchor: Tensor | None = None,
) -> Tensor:
    """Inverse of ``decode_pose`` (for tests and supervised warm starts): (...,6)."""
    half = crop_size / 2
    point = head_trans + pivot
    if anchor is not None:
        rot = axis_angle_to_matrix(head_rot.reshape(-1, 3)).view(*head_rot.shape[:-1], 3, 3)
        point = point + (rot @ (anchor - pivot)[..., None])[..., 0]
    depth = -point[..., 2]
    fx, fy, cx, cy = camera.unbind(-1)
    u = cx + fx * point[..., 0] / depth
    v = cy - fy * point[..., 1] / depth
    log_depth = torch.log(depth * half / (fx * REF_HALF_SIZE_M))
    return torch.cat(
        [head_rot, torch.stack([(u - half) / half, (v - half) / half, log_depth], -1)], -1
    )


def face_anchor(landmarks_model: Tensor) -> Tensor:
    """(...,68,3) model-space landmarks -> (...,3) the centre of the inner face (17..67)."""
    return landmarks_model[..., 17:, :].mean(-2)


def pose_points(points: Tensor, rot: Tensor, pivot: Tensor, trans: Tensor) -> Tensor:
    """X_cam = R (X - pivot) + pivot + t. points (B,N,P,3), rot (B,N,3,3), pivot (B,3), trans (B,N,3)."""
    p = pivot[:, None, None]
    return (points - p) @ rot.transpose(-1, -2) + p + trans[:, :, None]


@dataclass
class Decoded:
    """Network outputs pushed through FLAME and the cameras. B people, N views, V vertices."""

    vertices: Tensor | None  # (B,V,3) model space, no head pose (when asked for)
    pivot: Tensor  # (B,3)
    head_rot: Tensor  # (B,N,3)
    head_trans: Tensor  # (B,N,3)
    rotation: Tensor  # (B,N,3,3)
    landmarks_px: Tensor  # (B,N,68,2) projections in crop pixels
    vertices_cam: Tensor | None  # (B,N,V,3) when asked for


def decode(
    out: MFNetOutput,
    flame: nn.Module,
    camera: Tensor,
    crop_size: int,
    with_vertices: bool = False,
) -> Decoded:
    """Network outputs -> FLAME landmarks in each view's crop (and optionally the meshes).

    flame: mfnet_core.flame.FLAME; camera: (B,N,4) crop intrinsics. Runs in float32. The
    landmarks come from ``FLAME.landmarks_only`` (skinning only the vertices the landmark
    triangles use) and the pivot from the root joint's linear dependence on the blend
    shapes, so training never evaluates the full mesh unless ``with_vertices`` asks for it
    (``vertices`` is then (B,V,3) and ``vertices_cam`` (B,N,V,3); else both are None).
    """
    b, n = out.pose.shape[:2]
    f32 = torch.float32
    shape = _fit_width(out.shape.float(), int(flame.n_shape))
    expr = _fit_width(out.expression.float(), int(flame.n_expr))
    jaw = out.jaw_pose.float()
    pivot = root_joint(flame, shape, expr)  # (B,3)
    head_rot = out.pose[..., :3].float()
    rot = axis_angle_to_matrix(head_rot.reshape(-1, 3)).view(b, n, 3, 3)
    yaw = yaw_pitch_roll_deg(rot.detach().reshape(-1, 3, 3))[:, 0]

    def per_view(x: Tensor) -> Tensor:
        return x[:, None].expand(b, n, x.shape[-1]).reshape(b * n, -1)

    lmk = flame.landmarks_only(
        shape=per_view(shape), expression=per_view(expr), jaw_pose=per_view(jaw), yaw_deg=yaw
    ).view(b, n, -1, 3)
    anchor = face_anchor(lmk)  # (B,N,3); the same in every view (inner face is view-independent)
    _, head_trans = decode_pose(
        out.pose.float(), camera.float(), pivot[:, None].expand(b, n, 3), crop_size, anchor
    )
    lmk_cam = pose_points(lmk, rot, pivot, head_trans)
    cam = camera.float().reshape(b * n, 4)
    lmk_px = project(lmk_cam.reshape(b * n, -1, 3), cam).view(b, n, -1, 2)
    verts = vcam = None
    if with_vertices:
        z3 = torch.zeros(b, 3, device=shape.device, dtype=f32)
        fl = flame(
            shape=shape,
            expression=expr,
            global_pose=z3,
            neck_pose=z3,
            jaw_pose=jaw,
            eye_pose=torch.zeros(b, 6, device=shape.device, dtype=f32),
        )
        verts = fl.vertices
        vcam = pose_points(verts[:, None].expand(b, n, -1, 3), rot, pivot, head_trans)
    return Decoded(verts, pivot, head_rot, head_trans, rot, lmk_px, vcam)


def root_joint(flame: nn.Module, shape: Tensor, expression: Tensor) -> Tensor:
    """FLAME's root joint (the head pose's pivot) for (B,S) shape and (B,E) expression: (B,3).

    The joint regressor is linear in the shaped vertices and those are linear in the
    coefficients, so joint 0 = J0 @ v_template + betas @ (J0 @ blend_dirs); the root does
    not move with the (zero) global pose.
    """
    j0 = flame.j_regressor[0]  # (V,)
    base = j0 @ flame.v_template  # (3,)
    dirs = torch.einsum("v,vck->kc", j0, flame.blend_dirs)  # (S+E,3)
    betas = torch.cat([shape, expression], dim=1).to(base.dtype)
    return base + betas @ dirs


def _fit_width(x: Tensor, k: int) -> Tensor:
    """(B,K') -> (B,k): truncate or zero-pad coefficient vectors."""
    if x.shape[1] == k:
        return x
    if x.shape[1] > k:
        return x[:, :k]
    return torch.cat([x, x.new_zeros(x.shape[0], k - x.shape[1])], dim=1)


# --------------------------------------------------------------------------------------
# Crops from landmarks (training and inference share this)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CropBox:
    """A square crop: top-left corner and side in photo pixels (no rotation)."""

    x0: float
    y0: float
    side: float

    def scale(self, size: int) -> float:
        return size / self.side

    def intrinsics(self, intr: Intrinsics | np.ndarray, size: int) -> np.ndarray:
        """The photo's (fx, fy, cx, cy) -> the crop's, (4,) float32."""
        v = intr.as_vector() if isinstance(intr, Intrinsics) else np.asarray(intr, dtype=np.float32)
        k = self.scale(size)
        return np.array(
            [v[0] * k, v[1] * k, (v[2] - self.x0) * k, (v[3] - self.y0) * k], dtype=np.float32
        )

    def points(self, pts: np.ndarray, size: int) -> np.ndarray:
        """(...,2) photo pixels -> crop pixels."""
        k = self.scale(size)
        return ((np.asarray(pts) - [self.x0, self.y0]) * k).astype(np.float32)


def crop_box(
    landmarks: np.ndarray, scale: float = 1.25, jitter: np.ndarray | None = None
) -> CropBox:
    """Square box around (68,2) landmarks: centre of their extent, side = scale * the larger extent.

    jitter: optional (3,) (dx, dy, ds) in units of the side (augmentation).
    """
    lo, hi = landmarks.min(0), landmarks.max(0)
    centre = (lo + hi) / 2
    side = float(max(hi - lo)) * scale
    if jitter is not None:
        centre = centre + jitter[:2] * side
        side = side * (1 + float(jitter[2]))
    side = max(side, 8.0)
    return CropBox(float(centre[0] - side / 2), float(centre[1] - side / 2), side)


def crop_image(rgb: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """(H,W,3) uint8 -> (size,size,3) uint8 square crop (bilinear, edges replicated)."""
    k = box.scale(size)
    mat = np.array([[k, 0, -box.x0 * k], [0, k, -box.y0 * k]], dtype=np.float64)
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
    if k < 0.5:  # warpAffine has no area filter: pre-shrink
        f = max(1, int(1 / k))
        small = cv2.resize(
            rgb,
            (max(1, rgb.shape[1] // f), max(1, rgb.shape[0] // f)),
            interpolation=cv2.INTER_AREA,
        )
        mat[:, :2] *= f
        rgb = small
        interp = cv2.INTER_LINEAR
    return cv2.warpAffine(rgb, mat, (size, size), flags=interp, borderMode=cv2.BORDER_REPLICATE)


def to_tensor_image(rgb: np.ndarray) -> Tensor:
    """(H,W,3) uint8 -> (3,H,W) float32 in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)


def yaw_keys(landmarks: Sequence[np.ndarray]) -> np.ndarray:
    """(N,) where the nose ridge sits between the two jaw-contour ends, per (68,2) view:
    about 0.5 for a frontal face, ~0.1 / ~0.9 at -35 / +35 degrees of yaw (synthetic set)."""
    keys = []
    for lm in landmarks:
        left, right = lm[0, 0], lm[16, 0]
        keys.append((lm[27:31, 0].mean() - left) / max(right - left, 1e-6))
    return np.asarray(keys, dtype=np.float64)


# yaw_keys of the first and last view slot (left and right cameras at about -+35 degrees).
SLOT_KEY_RANGE = (0.1, 0.9)


def order_views_by_yaw(landmarks: Sequence[np.ndarray]) -> list[int]:
    """Indices that sort views from the one showing the left cheek most to the right: the
    synthetic and Multi-PIE order (left, front, right) the network is trained with."""
    return [int(i) for i in np.argsort(yaw_keys(landmarks), kind="stable")]


# --------------------------------------------------------------------------------------
# Weights: backbone import (ImageNet / DECA) and checkpoints
# --------------------------------------------------------------------------------------
@dataclass
class WeightImport:
    """What ``load_backbone_weights`` did."""

    source: str
    kind: str  # "torchvision", "deca", "mfnet"
    loaded: list[str]
    missing: list[str]  # model keys left at their initial values
    unused: list[str]  # file keys not used (fc, DECA's output layer, shape mismatches)

    def summary(self) -> str:
        return (
            f"{self.kind} weights from {self.source}: {len(self.loaded)} tensors loaded, "
            f"{len(self.missing)} left at init, {len(self.unused)} in the file unused"
        )


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise MfnetError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling error is the file's fault
        raise MfnetError(
            f"could not read {path} as PyTorch weights with weights_only=True ({type(exc).__name__}: {exc}). "
            "Expected a torchvision ResNet state dict (.pth), DECA's deca_model.tar or an MFNet checkpoint."
        ) from exc


def load_backbone_weights(model: MFNet, path: str | Path) -> WeightImport:
    """Partial import of pretrained weights into ``model`` (paper section 4.1).

    Accepts a torchvision ResNet state dict (ImageNet ``resnet50-*.pth``), DECA's
    ``deca_model.tar`` (``E_flame``: ``encoder.*`` -> backbone, ``layers.0`` -> the per-view
    head's hidden layer when shapes match), or an MFNet checkpoint. Tensors whose name or
    shape does not match are reported, never forced. Loads with ``weights_only=True``.
    """
    path = Path(path)
    data = _torch_load(path)
    if not isinstance(data, dict):
        raise MfnetError(f"{path} holds a {type(data).__name__}, not a state dict")
    target = model.state_dict()
    mapping: dict[str, Tensor] = {}
    unused: list[str] = []
    if data.get("format") == CHECKPOINT_FORMAT:
        kind = "mfnet"
        src = data["model"]
        mapping = dict(src.items())
    elif "E_flame" in data:
        kind = "deca"
        for k, v in data["E_flame"].items():
            if k.startswith("encoder."):
                mapping["backbone." + k[len("encoder.") :]] = v
            elif k.startswith("layers.0."):
                mapping["view_head.0." + k[len("layers.0.") :]] = v
            else:
                unused.append("E_flame." + k)
        unused += [f"{k}.*" for k in data if k != "E_flame"]
    else:
        kind = "torchvision"
        src = data.get("state_dict", data.get("model", data))
        if not isinstance(src, dict) or not any(isinstance(v, Tensor) for v in src.values()):
            raise MfnetError(f"{path}: no tensors found (expected a ResNet state dict)")
        for k, v in src.items():
            k2 = k[len("module.") :] if k.startswith("module.") else k
            mapping["backbone." + k2] = v
    loaded = []
    new_state = {}
    for k, v in mapping.items():
        if not isinstance(v, Tensor):
            continue
        if k in target and target[k].shape == v.shape:
            new_state[k] = v.to(target[k].dtype)
            loaded.append(k)
        else:
            unused.append(k)
    if not loaded:
        raise MfnetError(
            f"{path}: none of its {len(mapping)} tensors match the {model.config.backbone} backbone "
            f"(width {model.config.width}); is it the right architecture?"
        )
    model.load_state_dict(new_state, strict=False)
    missing = [k for k in target if k not in new_state and not k.endswith("num_batches_tracked")]
    return WeightImport(str(path), kind, sorted(loaded), sorted(missing), sorted(unused))


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[MFNet, dict[str, Any]]:
    """An MFNet checkpoint -> (network in eval mode, the checkpoint's metadata). weights_only=True."""
    path = Path(path)
    data = _torch_load(path)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise MfnetError(
            f"{path} is not an MFNet checkpoint (written by `python -m training.train`)"
        )
    model = MFNet(MFNetConfig.from_dict(data["model_config"]))
    model.load_state_dict(data["model"])
    model.to(device).eval()
    meta = {
        k: v
        for k, v in data.items()
        if k not in ("model", "optimizer", "scaler", "scheduler", "rng")
    }
    return model, meta


# --------------------------------------------------------------------------------------
# Inference: the network as the fit's initialiser (`mfnet reconstruct --weights CKPT`)
# --------------------------------------------------------------------------------------
def prepare_views(
    photos: Sequence[np.ndarray],
    landmarks: Sequence[np.ndarray],
    intrinsics: Sequence[Intrinsics | np.ndarray],
    size: int,
    scale: float = 1.25,
) -> tuple[Tensor, Tensor, Tensor, list[CropBox]]:
    """Crops and crop-space intrinsics/landmarks: images (N,3,S,S), camera (N,4), landmarks (N,68,2)."""
    imgs, cams, lmks, boxes = [], [], [], []
    for rgb, lm, k in zip(photos, landmarks, intrinsics, strict=True):
        box = crop_box(np.asarray(lm, dtype=np.float64), scale)
        imgs.append(to_tensor_image(crop_image(rgb, box, size)))
        cams.append(torch.from_numpy(box.intrinsics(k, size)))
        lmks.append(torch.from_numpy(box.points(lm, size)))
        boxes.append(box)
    return torch.stack(imgs), torch.stack(cams), torch.stack(lmks), boxes


@torch.no_grad()
def predict_init(
    checkpoint_path: str | Path | MFNet,
    photos: Sequence[np.ndarray],
    landmarks: Sequence[np.ndarray],
    flame: nn.Module,
    intrinsics: Sequence[Intrinsics] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Initial fit parameters from the trained network.

    photos: N (H,W,3) uint8 RGB; landmarks: N (68,2) pixels; flame: mfnet_core.flame.FLAME;
    intrinsics: per photo (default: ``Intrinsics.from_fov``). Views are put in the trained
    left-front-right order by ``order_views_by_yaw``; with fewer views than the network
    takes, the empty slots are filled with the nearest view (the paper feeds one photo three
    times) and each view's pose comes from the slot nearest its own yaw; with more, the
    person-level outputs are averaged over sliding groups of consecutive views. Returns the keys of
    ``FitParams.detached_numpy``: shape (S,), expression (E,), jaw_pose (3,), eye_pose (6,),
    neck_pose (3,), head_pose (N,3) axis-angle, head_translation (N,3), in the photos'
    order, sized to ``flame``'s n_shape/n_expr; plus light (N,9,3) and albedo (N,K).
    """
    if isinstance(checkpoint_path, MFNet):
        model = checkpoint_path.to(device).eval()
    else:
        model, _ = load_checkpoint(checkpoint_path, device)
    c = model.config
    n = len(photos)
    if n == 0 or len(landmarks) != n:
        raise MfnetError("predict_init needs one (68,2) landmark array per photo")
    intr = (
        list(intrinsics)
        if intrinsics is not None
        else [Intrinsics.from_fov(p.shape[1], p.shape[0]) for p in photos]
    )
    images, camera, _, _ = prepare_views(photos, landmarks, intr, c.input_size, c.crop_scale)
    keys = yaw_keys([np.asarray(lm) for lm in landmarks])
    order = [int(i) for i in np.argsort(keys, kind="stable")]
    # groups[g][slot] = view index; use[g][slot] = whether that slot's per-view outputs count.
    groups: list[list[int]] = []
    use: list[list[bool]] = []
    if n >= c.n_views:  # sliding windows over the views in yaw order
        for i in range(0, n - c.n_views + 1):
            groups.append(order[i : i + c.n_views])
            use.append([True] * c.n_views)
    else:  # fill the slots with the nearest views; each view reads its nearest slot
        nominal = np.linspace(SLOT_KEY_RANGE[0], SLOT_KEY_RANGE[1], c.n_views)
        cost = np.abs(keys[:, None] - nominal[None])  # (n, slots)
        slots = [-1] * c.n_views
        flags = [False] * c.n_views
        placed: set[int] = set()
        for flat in np.argsort(cost, axis=None, kind="stable"):  # greedy: one slot per view
            v, sl = divmod(int(flat), c.n_views)
            if v not in placed and slots[sl] < 0:
                slots[sl], flags[sl] = v, True
                placed.add(v)
        for sl in range(c.n_views):  # the other slots repeat the nearest view
            if slots[sl] < 0:
                slots[sl] = int(np.argmin(cost[:, sl]))
        groups.append(slots)
        use.append(flags)
    dev = torch.device(device)
    shapes, exprs, jaws = [], [], []
    pose = torch.zeros(n, POSE_DIM)
    light = torch.zeros(n, 9, 3)
    albedo = torch.zeros(n, c.n_albedo)
    counts = torch.zeros(n)
    for g, flags in zip(groups, use, strict=True):
        out = model(images[g][None].to(dev))
        shapes.append(out.shape[0].cpu())
        exprs.append(out.expression[0].cpu())
        jaws.append(out.jaw_pose[0].cpu())
        for j, (v, ok) in enumerate(zip(g, flags, strict=True)):
            if not ok:
                continue
            pose[v] += out.pose[0, j].cpu()
            light[v] += out.light[0, j].cpu()
            albedo[v] += out.albedo[0, j].cpu()
            counts[v] += 1
    pose /= counts[:, None]
    light /= counts[:, None, None]
    albedo /= counts[:, None]
    shape = torch.stack(shapes).mean(0, keepdim=True)
    expr = torch.stack(exprs).mean(0, keepdim=True)
    jaw = torch.stack(jaws).mean(0, keepdim=True)
    fs = int(getattr(flame, "n_shape", shape.shape[1]))
    fe = int(getattr(flame, "n_expr", expr.shape[1]))
    shape, expr = _fit_width(shape, fs), _fit_width(expr, fe)
    fdev = next((b.device for b in flame.buffers()), torch.device("cpu"))
    shape_d, expr_d, jaw_d = shape.to(fdev), expr.to(fdev), jaw.to(fdev)
    lmk = flame.landmarks_only(shape=shape_d, expression=expr_d, jaw_pose=jaw_d, yaw_deg=0.0)
    anchor = face_anchor(lmk)[0].cpu().float()
    pivot = root_joint(flame, shape_d, expr_d)[0].cpu().float()
    head_rot, head_trans = decode_pose(
        pose, camera, pivot.expand(n, 3), c.input_size, anchor.expand(n, 3)
    )
    return {
        "shape": shape[0].numpy(),
        "expression": expr[0].numpy(),
        "jaw_pose": jaw[0].numpy(),
        "eye_pose": np.zeros(6, dtype=np.float32),
        "neck_pose": np.zeros(3, dtype=np.float32),
        "head_pose": head_rot.numpy().astype(np.float32),
        "head_translation": head_trans.numpy().astype(np.float32),
        "light": light.numpy(),
        "albedo": albedo.numpy(),
    }


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(config: MFNetConfig) -> str:
    """One line for logs: backbone and head sizes."""
    m = MFNet(config)
    return (
        f"MFNet({config.backbone} width {config.width}, {config.n_views} views, "
        f"{count_parameters(m) / 1e6:.2f} M parameters, input {config.input_size}px)"
    )


__all__ = [
    "MFNet",
    "MFNetConfig",
    "MFNetOutput",
    "ResNet",
    "CropBox",
    "Decoded",
    "WeightImport",
    "albedo_rgb",
    "crop_box",
    "crop_image",
    "decode",
    "decode_pose",
    "encode_pose",
    "face_anchor",
    "root_joint",
    "load_backbone_weights",
    "load_checkpoint",
    "order_views_by_yaw",
    "predict_init",
    "prepare_views",
]
