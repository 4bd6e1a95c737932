"""Square face crops from 68 landmarks, shared by training and inference, and the
left-front-right order of views by their landmark yaw."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from mfnet_core.camera import Intrinsics


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
