"""A tiny landmark-only multi-view set for tests of the training machinery (DDP, resume).

No rendering: each sample is a random person (a few shape/expression components) seen from
yawed cameras; its "photo" is a dark image with the projected landmarks drawn as dots, so
images and targets agree. Deterministic from the sample index.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from mfnet_core.camera import Intrinsics, axis_angle_to_matrix, project

from .datasets import MultiViewDataset


class ToyDataset(MultiViewDataset):
    def __init__(
        self,
        flame: nn.Module,
        n: int,
        crop_size: int = 32,
        photo_size: int = 96,
        yaws_deg: tuple[float, ...] = (-30.0, 0.0, 30.0),
        seed: int = 0,
        augment: bool = True,
    ) -> None:
        super().__init__(crop_size, 1.25, seed, augment, (0.04, 0.06))
        self.intr = Intrinsics.from_fov(photo_size, photo_size)
        cam = torch.as_tensor(self.intr.as_vector())[None]
        self.items = []
        for i in range(n):
            rng = np.random.default_rng([seed, i, 7])
            shape = torch.zeros(1, flame.n_shape)
            shape[0, :10] = torch.as_tensor(rng.normal(size=10), dtype=torch.float32)
            expr = torch.zeros(1, flame.n_expr)
            expr[0, :5] = torch.as_tensor(rng.normal(scale=0.5, size=5), dtype=torch.float32)
            with torch.no_grad():
                out = flame(shape=shape, expression=expr)
                verts, pivot = out.vertices, out.joints[:, 0]
                lmks = []
                for yaw in yaws_deg:
                    y = float(np.radians(yaw + rng.uniform(-5, 5)))
                    rot = axis_angle_to_matrix(torch.tensor([[0.0, y, 0.0]]))
                    lm = flame.landmarks_3d(verts, torch.tensor([yaw]))
                    t = torch.tensor([[0.0, -0.03, -0.6]])
                    lm_cam = (
                        (lm - pivot[:, None]) @ rot.transpose(1, 2) + pivot[:, None] + t[:, None]
                    )
                    lmks.append(project(lm_cam, cam)[0].numpy().astype(np.float64))
            self.items.append(lmks)
        self.photo_size = photo_size

    def __len__(self) -> int:
        return len(self.items)

    def _photo(self, lm: np.ndarray) -> np.ndarray:
        img = np.zeros((self.photo_size, self.photo_size, 3), np.uint8)
        ij = np.clip(np.round(lm).astype(int), 0, self.photo_size - 1)
        img[ij[:, 1], ij[:, 0]] = 255
        return img

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        lmks = self.items[i]
        photos = [self._photo(lm) for lm in lmks]
        k = self.intr.as_vector()
        return self._crop_views(i, photos, lmks, [k] * len(lmks))
