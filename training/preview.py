"""A picture of what the network predicts for a few held-out people, written at each
evaluation: their crops with the detected landmarks (green), the network's (red) and the
outline of its mesh (cyan); one row per person, one column per view. A loss curve says that
something improves; this picture says what (the pose? the jaw? the face's width?).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from mfnet_core.camera import to_screen
from mfnet_core.network.mfnet import MFNet, decode
from mfnet_core.outputs.overlay import draw_overlay
from mfnet_core.outputs.report import mesh_outline

CELL_PX = 256  # crops are drawn at this size, whatever the network's input size


def view_name(n: int, views: int) -> str:
    """The training order of three views is left, front, right."""
    return ("left", "front", "right")[n] if views == 3 else f"view {n}"


@torch.no_grad()
def preview_picture(
    model: MFNet, flame: nn.Module, samples: list[dict[str, torch.Tensor]], device: torch.device
) -> np.ndarray:
    """(rows * CELL_PX, views * CELL_PX, 3) uint8 for the given dataset samples."""
    images = torch.stack([s["images"] for s in samples])  # (K,N,3,S,S)
    camera = torch.stack([s["camera"] for s in samples]).float()  # (K,N,4)
    detected = torch.stack([s["landmarks"] for s in samples]).float()  # (K,N,68,2)
    weights = torch.stack([s["lmk_weights"] for s in samples])  # (K,N,68)
    size = images.shape[-1]
    was_training = model.training
    model.eval()
    out = model(images.to(device))
    dec = decode(out, flame, camera.to(device), size, with_vertices=True)
    model.train(was_training)
    assert dec.vertices_cam is not None
    scale = CELL_PX / size
    faces = flame.faces.cpu()
    cam_cell = camera * scale  # fx, fy, cx, cy all scale with the crop
    rows = []
    for k in range(images.shape[0]):
        cells = []
        for n in range(images.shape[1]):
            crop = (images[k, n].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
            rgb = cv2.resize(crop, (CELL_PX, CELL_PX), interpolation=cv2.INTER_LINEAR)
            det = detected[k, n].numpy().astype(np.float64)
            det[weights[k, n].numpy() <= 0] = np.nan  # not detected in this view
            pred = dec.landmarks_px[k, n].float().cpu().numpy().astype(np.float64)
            screen = to_screen(dec.vertices_cam[k, n].float().cpu()[None], cam_cell[k, n][None])[0]
            err = np.nanmedian(np.linalg.norm(pred - det, axis=1))
            cells.append(
                draw_overlay(
                    rgb,
                    det * scale,
                    pred * scale,
                    outline_px=mesh_outline(screen, faces, CELL_PX, CELL_PX),
                    title=f"#{k} {view_name(n, images.shape[1])}: {err:.1f} px",
                    fitted_label="network",
                    legend=k == 0 and n == 0,  # once, in the top-left panel
                )
            )
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def write_preview(picture: np.ndarray, path: Path) -> Path:
    """PNG, written whole or not at all (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    if not cv2.imwrite(str(tmp), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {tmp}")
    os.replace(tmp, path)
    return path
