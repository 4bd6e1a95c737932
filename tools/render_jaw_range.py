"""Renders docs/img/ict_jaw_open.png: the ICT mean face, flat-shaded without texture so
that folds show, at jawOpen 0, 0.5 and 1, from the front and from below the chin.

Why a picture beside tests/test_ict_jaw.py: the test bounds edge angles on the chin; an
artist judges a crease by looking at it.

    .venv/bin/python tools/render_jaw_range.py [OUT.png]
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import torch

from mfnet_core.camera import Intrinsics, axis_angle_to_matrix, to_screen
from mfnet_core.head.registry import load_head_model
from mfnet_core.render import rasterize
from mfnet_core.synthetic import _euler_to_axis_angle

SIZE = 320
VIEWS_DEG = ((0.0, 0.0), (20.0, 35.0))  # (yaw, pitch): front, and from below the chin
JAW_OPEN = (0.0, 0.5, 1.0)
SHOWN_PARTS = ("skin", "skin_back", "gums_tongue", "teeth")


def shaded(head, jaw_open: float, yaw: float, pitch: float) -> np.ndarray:
    """(SIZE,SIZE) uint8 flat-shaded picture of the mean face."""
    e = torch.zeros(1, head.n_expr)
    e[0, list(head.expression_space.names).index("jawOpen")] = jaw_open
    with torch.no_grad():
        out = head(shape=torch.zeros(1, head.n_shape), expression=e)
    v = (out if isinstance(out, torch.Tensor) else out.vertices)[0]
    shown = [head.parts.names.index(p) for p in SHOWN_PARTS]
    faces = head.faces[torch.as_tensor(np.isin(np.asarray(head.parts.face_part), shown))]
    aa = torch.as_tensor(_euler_to_axis_angle(yaw, pitch, 0.0), dtype=torch.float32)
    rot = axis_angle_to_matrix(aa[None])[0]
    v_cam = (v - torch.tensor([0.0, -0.03, 0.05])) @ rot.T + torch.tensor([0.0, 0.0, -0.45])
    camera = torch.as_tensor(Intrinsics.from_fov(SIZE, SIZE).as_vector())[None]
    frags = rasterize(to_screen(v_cam[None], camera)[0], faces, SIZE, SIZE)
    a, b, c = (v_cam[faces[:, i]] for i in range(3))
    normals = torch.nn.functional.normalize(torch.cross(b - a, c - a, dim=1), dim=1)
    light = torch.nn.functional.normalize(torch.tensor([0.3, 0.4, 1.0]), dim=0)
    shade = (normals @ light).abs() * 0.85 + 0.15
    fi = frags.face_index
    img = torch.where(fi >= 0, shade[fi.clamp(min=0)], torch.zeros(()))
    return (img.numpy() * 255).astype(np.uint8)


def main(out: str = "docs/img/ict_jaw_open.png") -> None:
    head = load_head_model("ict")
    rows = [
        np.concatenate([shaded(head, w, yaw, pitch) for w in JAW_OPEN], 1)
        for yaw, pitch in VIEWS_DEG
    ]
    cv2.imwrite(out, np.concatenate(rows, 0))
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
