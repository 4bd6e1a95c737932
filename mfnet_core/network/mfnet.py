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

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mfnet_core.camera import axis_angle_to_matrix, project, yaw_pitch_roll_deg
from mfnet_core.errors import MfnetError
from mfnet_core.head.interface import HeadModel

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
    flame: HeadModel,
    camera: Tensor,
    crop_size: int,
    with_vertices: bool = False,
) -> Decoded:
    """Network outputs -> FLAME landmarks in each view's crop (and optionally the meshes).

    flame: a head model (mfnet_core.head.interface); camera: (B,N,4) crop intrinsics. Runs in float32. The
    landmarks come from ``FLAME.landmarks_only`` (skinning only the vertices the landmark
    triangles use) and the pivot from the root joint's linear dependence on the blend
    shapes, so training never evaluates the full mesh unless ``with_vertices`` asks for it
    (``vertices`` is then (B,V,3) and ``vertices_cam`` (B,N,V,3); else both are None).
    """
    b, n = out.pose.shape[:2]
    f32 = torch.float32
    shape = fit_width(out.shape.float(), int(flame.n_shape))
    expr = fit_width(out.expression.float(), int(flame.n_expr))
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


def root_joint(head: HeadModel, shape: Tensor, expression: Tensor) -> Tensor:
    """The head model's root joint (the head pose's pivot) for (B,S) shape and (B,E)
    expression: (B,3); the root does not move with the (zero) global pose."""
    return head.rest_joints(shape, expression)[:, 0]


def fit_width(x: Tensor, k: int) -> Tensor:
    """(B,K') -> (B,k): truncate or zero-pad coefficient vectors."""
    if x.shape[1] == k:
        return x
    if x.shape[1] > k:
        return x[:, :k]
    return torch.cat([x, x.new_zeros(x.shape[0], k - x.shape[1])], dim=1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(config: MFNetConfig) -> str:
    """One line for logs: backbone and head sizes."""
    m = MFNet(config)
    return (
        f"MFNet({config.backbone} width {config.width}, {config.n_views} views, "
        f"{count_parameters(m) / 1e6:.2f} M parameters, input {config.input_size}px)"
    )
