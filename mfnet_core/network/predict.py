"""The trained network as the fit's initialiser (`mfnet reconstruct --weights CKPT`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mfnet_core.camera import Intrinsics
from mfnet_core.errors import MfnetError
from mfnet_core.head.interface import HeadModel
from mfnet_core.network.checkpoints import load_checkpoint
from mfnet_core.network.crops import (
    SLOT_KEY_RANGE,
    CropBox,
    crop_box,
    crop_image,
    to_tensor_image,
    yaw_keys,
)
from mfnet_core.network.mfnet import (
    POSE_DIM,
    MFNet,
    decode_pose,
    face_anchor,
    fit_width,
    root_joint,
)


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
    flame: HeadModel,
    intrinsics: Sequence[Intrinsics] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Initial fit parameters from the trained network.

    photos: N (H,W,3) uint8 RGB; landmarks: N (68,2) pixels; flame: the head model (mfnet_core.head.interface);
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
    fs, fe = int(flame.n_shape), int(flame.n_expr)
    shape, expr = fit_width(shape, fs), fit_width(expr, fe)
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
