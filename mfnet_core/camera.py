"""Perspective cameras, projection and the PnP start of the per-view head pose.

Camera space is OpenGL-like (looks along -z, y up) so that a head with zero rotation faces
the camera; pixels have their origin at the top-left corner with v growing downward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

# Flips OpenCV camera axes (x right, y down, z forward) to ours (x right, y up, z back).
_CV_TO_GL = np.diag([1.0, -1.0, -1.0])

# A portrait taken with a phone's main camera or a 50 mm lens sees about 40 degrees on the
# long side; used when a photo has no EXIF focal length.
DEFAULT_FOV_DEG = 40.0


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of one photo, in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @staticmethod
    def from_fov(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> Intrinsics:
        """Square pixels, principal point at the centre, `fov_deg` across the long side."""
        f = 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2)
        return Intrinsics(f, f, width / 2, height / 2, width, height)

    @staticmethod
    def from_focal(width: int, height: int, focal_px: float | None) -> Intrinsics:
        if focal_px is None or not math.isfinite(focal_px) or focal_px <= 0:
            return Intrinsics.from_fov(width, height)
        return Intrinsics(focal_px, focal_px, width / 2, height / 2, width, height)

    def as_vector(self) -> np.ndarray:
        """(4,) fx, fy, cx, cy."""
        return np.array([self.fx, self.fy, self.cx, self.cy], dtype=np.float32)

    def matrix_cv(self) -> np.ndarray:
        """(3,3) OpenCV camera matrix."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    def fov_deg(self) -> float:
        return math.degrees(2 * math.atan(0.5 * max(self.width, self.height) / self.fx))


def project(points_cam: Tensor, camera: Tensor) -> Tensor:
    """Camera-space points to pixels.

    points_cam: (B,N,3) OpenGL-like camera space; camera: (B,4) fx, fy, cx, cy.
    Returns (B,N,2) pixel coordinates (u right, v down).
    """
    depth = (-points_cam[..., 2]).clamp_min(1e-6)
    fx, fy, cx, cy = (camera[:, i, None] for i in range(4))
    u = cx + fx * points_cam[..., 0] / depth
    v = cy - fy * points_cam[..., 1] / depth
    return torch.stack([u, v], dim=-1)


def to_screen(points_cam: Tensor, camera: Tensor) -> Tensor:
    """(B,N,3) camera-space points -> (B,N,3) (u_px, v_px, depth) for the rasteriser."""
    uv = project(points_cam, camera)
    return torch.cat([uv, -points_cam[..., 2:3]], dim=-1)


def axis_angle_to_matrix(aa: Tensor) -> Tensor:
    """(B,3) axis-angle -> (B,3,3) rotation matrices (Rodrigues; smooth at zero)."""
    theta2 = (aa * aa).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2 + 1e-16)
    k = aa / theta
    kx, ky, kz = k.unbind(-1)
    zero = torch.zeros_like(kx)
    kmat = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(kmat)
    s = torch.sin(theta)[..., None]
    c = torch.cos(theta)[..., None]
    return eye + s * kmat + (1 - c) * (kmat @ kmat)


def yaw_pitch_roll_deg(rotation: Tensor) -> Tensor:
    """(B,3,3) head rotations -> (B,3) yaw, pitch, roll in degrees as the camera sees them.

    Yaw is positive when the face turns toward camera-space +x (the image's right, which is
    the subject's own left when they face the camera), pitch positive when the face looks up.
    """
    forward = rotation[:, :, 2]  # where the face's +z axis points
    yaw = torch.atan2(forward[:, 0], forward[:, 2])
    pitch = torch.asin(forward[:, 1].clamp(-1, 1))
    up = rotation[:, :, 1]
    roll = torch.atan2(-up[:, 0], up[:, 1])
    return torch.rad2deg(torch.stack([yaw, pitch, roll], dim=-1))


def solve_head_pose_pnp(
    model_points: np.ndarray,
    image_points: np.ndarray,
    intrinsics: Intrinsics,
    pivot: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Rigid head pose from 2D-3D landmark pairs, in this project's head-pose form.

    model_points: (N,3) landmark positions on the unposed model (FLAME axes, metres);
    image_points: (N,2) detected pixels; pivot: (3,) the model's root joint, about which
    FLAME applies its global rotation. Returns (rotation (3,3), translation (3,)) such that
    X_cam = R (X - pivot) + pivot + t.
    """
    obj = np.ascontiguousarray(model_points, dtype=np.float64)
    img = np.ascontiguousarray(image_points, dtype=np.float64)
    kmat = intrinsics.matrix_cv()
    # Start from a frontal head about 0.6 m away; EPnP alone flips on near-planar faces.
    rvec0 = cv2.Rodrigues(_CV_TO_GL)[0]
    scale = np.linalg.norm(img.std(0)) / max(np.linalg.norm(obj.std(0)), 1e-9)
    tvec0 = np.array([0.0, 0.0, intrinsics.fx / max(scale, 1e-9)])
    ok, rvec, tvec = cv2.solvePnP(
        obj, img, kmat, None, rvec0.copy(), tvec0.reshape(3, 1), True, cv2.SOLVEPNP_ITERATIVE
    )
    if not ok or tvec[2, 0] <= 0:
        rvec, tvec = rvec0, tvec0.reshape(3, 1)
    r_cv = cv2.Rodrigues(rvec)[0]
    rot = _CV_TO_GL @ r_cv
    trans = _CV_TO_GL @ tvec[:, 0] + rot @ pivot - pivot
    return rot, trans


def matrix_to_axis_angle(rotation: np.ndarray) -> np.ndarray:
    """(3,3) rotation -> (3,) axis-angle (OpenCV's Rodrigues)."""
    return cv2.Rodrigues(np.asarray(rotation, dtype=np.float64))[0][:, 0]


def axis_angle_to_matrix_np(aa: np.ndarray) -> np.ndarray:
    """(3,) axis-angle -> (3,3) rotation (OpenCV's Rodrigues), float64: the numpy side of
    `axis_angle_to_matrix`."""
    return cv2.Rodrigues(np.asarray(aa, dtype=np.float64).reshape(3, 1))[0]
