"""What a result folder says about a run: report.json's entries and the pictures' titles.

Kept apart from the pipeline (reconstruct.py) so that the report's format lives in one
place; docs/RESULT_FOLDER.md describes it.
"""

from __future__ import annotations

import re
from itertools import permutations

import numpy as np
import torch

from mfnet_core.camera import Intrinsics
from mfnet_core.fit.dense import DenseReport
from mfnet_core.fit.flow import FlowOptions
from mfnet_core.fit.landmark_fit import FitResult
from mfnet_core.head.interface import ModelInfo
from mfnet_core.inputs.images import Photo
from mfnet_core.outputs.overlay import (
    OUTLINE_MAX_SIDE,
    draw_overlay,
    outline_of_mask,
    title_panels,
)
from mfnet_core.render import depth_buffer, working_resolution


def view_report(fit: FitResult, i: int, name: str, file: str, k: Intrinsics, photo: Photo) -> dict:
    """report.json's entry for view i: pose, camera and landmark residuals."""
    res = fit.residuals_px[i]
    return {
        "name": name,
        "file": file,
        "yaw_deg": float(fit.yaw_pitch_roll[i, 0]),
        "pitch_deg": float(fit.yaw_pitch_roll[i, 1]),
        "roll_deg": float(fit.yaw_pitch_roll[i, 2]),
        "focal_px": k.fx,
        "focal_source": "exif" if photo.focal_px else "default",
        "image_size": [k.width, k.height],
        "landmark_residual_px": {
            "median": float(np.median(res)),
            "mean": float(res.mean()),
            "max": float(res.max()),
            "per_landmark": res.round(3).tolist(),
        },
        "landmarks_downweighted": int((fit.landmark_weights[i] < 0.5).sum()),
    }


def params_json(
    model: ModelInfo,
    params: dict[str, np.ndarray],
    names: list[str],
    intrinsics: list[Intrinsics],
    expression_names: tuple[str, ...] | None = None,
) -> dict:
    """params.json: the fitted identity, the views' mean expression, and per view its pose,
    camera and own expression (`expression`, named where the model names them)."""
    n = len(names)
    view_expr = params.get(
        "view_expression", np.broadcast_to(params["expression"], (n, len(params["expression"])))
    )
    view_jaw = params.get("view_jaw_pose", np.broadcast_to(params["jaw_pose"], (n, 3)))

    def named(e: np.ndarray) -> object:
        if expression_names is None:
            return e
        return {k: round(float(v), 5) for k, v in zip(expression_names, e, strict=False)}

    return {
        "model": {
            "kind": model.kind,
            "file": model.name,
            "sha256": model.sha256,
            "licence": model.licence,
        },
        "shape": params["shape"],
        "expression_names": list(expression_names) if expression_names else None,
        "expression": params["expression"],
        "jaw_pose": params["jaw_pose"],
        "neck_pose": params["neck_pose"],
        "eye_pose": params["eye_pose"],
        "views": [
            {
                "name": names[i],
                "head_pose": params["head_pose"][i],
                "head_translation": params["head_translation"][i],
                "expression": named(view_expr[i]),
                "jaw_pose": view_jaw[i],
                "camera": {
                    "fx": k.fx,
                    "fy": k.fy,
                    "cx": k.cx,
                    "cy": k.cy,
                    "width": k.width,
                    "height": k.height,
                },
            }
            for i, k in enumerate(intrinsics)
        ],
        "units": "metres, FLAME axes (y up, face toward +z); rotations axis-angle in radians",
    }


def expression_disagreement(
    view_expression: np.ndarray,
    names: list[str],
    expression_names: tuple[str, ...] | None,
    threshold: float = 0.5,
) -> list[str]:
    """Warnings where the photos clearly show different expressions (eyes closed in one,
    a smile in another): a named blendshape weight that differs by more than `threshold`
    between two views, or (unnamed PCA spaces) a view whose expression is more than
    `threshold` x 4 standard deviations away from the others' mean.

    view_expression: (N,E), one row per view."""
    e = np.asarray(view_expression, dtype=np.float64)
    if e.shape[0] < 2:
        return []
    out = []
    if expression_names is not None:
        spread = e.max(0) - e.min(0)
        for k in np.argsort(-spread):
            if spread[k] <= threshold:
                break
            hi, lo = int(e[:, k].argmax()), int(e[:, k].argmin())
            out.append(
                f"the photos show different expressions: {expression_names[k]} is "
                f"{e[hi, k]:.2f} in {names[hi]} but {e[lo, k]:.2f} in {names[lo]}"
            )
        return out[:5]
    for i in range(len(e)):
        others = np.delete(e, i, axis=0).mean(0)
        d = float(np.linalg.norm(e[i] - others))
        if d > 4 * threshold:
            out.append(
                f"the photos show different expressions: {names[i]} differs from the others "
                f"by {d:.1f} standard deviations"
            )
    return out


def consistency_warnings(
    detected_px: np.ndarray,
    residuals_px: np.ndarray,
    names: list[str],
    poor_fit: float = 0.05,
) -> list[str]:
    """Warnings where the result would mislead: the same photo given twice (identical
    landmarks add no view), or a photo whose landmarks the fitted head cannot follow (the
    75th percentile of its residuals beyond `poor_fit` of the face size, 0.9 % on ordinary
    synthetic photos, 14 % with another face's eyes and jaw: a profile beyond what the model
    fits, a wrong detection, or another person's photo).

    detected_px (N,68,2); residuals_px (N,68)."""
    d = np.asarray(detected_px, dtype=np.float64)
    out = []
    for i in range(len(d)):
        for j in range(i + 1, len(d)):
            if np.abs(d[i] - d[j]).max() < 0.5:
                out.append(
                    f"the {names[i]} and {names[j]} photos show the face in the same place "
                    "(identical landmarks): the same picture twice adds no view"
                )
    for i in range(len(d)):
        size = float(np.ptp(d[i], axis=0).max())
        # the fit down-weights a few wrong points; a quarter of them far off is another story
        q75 = float(np.percentile(residuals_px[i], 75))
        if size > 0 and q75 > poor_fit * size:
            out.append(
                f"the {names[i]} photo's landmarks do not fit the head (a quarter of them "
                f"{q75:.1f} px or more off, {100 * q75 / size:.0f}% of the face): a face turned "
                "further than the model can follow, a wrong detection, or another person"
            )
    return out


def make_overlay(
    rgb: np.ndarray,
    detected: np.ndarray,
    fitted: np.ndarray,
    outline: list,
    name: str,
) -> np.ndarray:
    """Detected vs fitted landmarks and the fitted mesh's outline (`mesh_outline`, or the
    texture bake's `BakeResult.outlines`) over the photo."""
    res = np.linalg.norm(fitted - detected, axis=1)
    title = f"{name}: median landmark error {np.median(res):.1f} px"
    return draw_overlay(rgb, detected, fitted, outline_px=outline, title=title)


def mesh_outline(
    screen: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    max_side: int = OUTLINE_MAX_SIDE,
) -> list:
    """The silhouette contours, (M,2) float32 pixel polylines in the (height, width) image,
    of a mesh whose screen vertices (V,3) are given; found at most `max_side` pixels a side."""
    h, w, sx, sy = working_resolution(height, width, max_side, minimum=1)
    scr = screen.detach().clone()
    scr[:, 0] *= sx
    scr[:, 1] *= sy
    face, _depth = depth_buffer(scr, faces, h, w)  # only coverage matters
    return outline_of_mask((face >= 0).cpu().numpy().astype(np.uint8), (sx, sy))


def rerender_picture(picture: np.ndarray, label: str, quality: dict) -> np.ndarray:
    """Titles `photometric.view_quality`'s photo | re-render | difference picture."""
    return title_panels(
        picture,
        [
            f"{label}: photo",
            f"re-rendered: PSNR {quality['psnr_face']:.1f} dB, SSIM {quality['ssim_face']:.3f}",
            "|difference| x4, face mask",
        ],
    )


def _safe_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def dense_pictures(
    dense: DenseReport, labels: list[str], names: list[str]
) -> dict[str, np.ndarray]:
    """refine_dense keys (and titles) its pictures by the labels it was given; the files
    are named by view name (`overlay_flow_left_to_front.png`), re-renders get titles."""
    files = {f"rerender_{lab}": f"rerender_{n}" for lab, n in zip(labels, names, strict=True)}
    for a, b in permutations(range(len(names)), 2):
        files[f"flow_{labels[a]}_to_{labels[b]}"] = f"flow_{names[a]}_to_{names[b]}"
    rerender = {f"rerender_{lab}": i for i, lab in enumerate(labels)}
    out = {}
    for key, image in dense.images.items():
        if key in rerender and dense.views:
            i = rerender[key]
            image = rerender_picture(image, labels[i], dense.views[i])
        out[files.get(key, _safe_key(key))] = image
    return out


def dense_section(
    dense: DenseReport, labels: list[str], names: list[str], flow: FlowOptions
) -> dict:
    """report.json's "dense" entry, with views and pairs named like report["views"]."""
    by_label = dict(zip(labels, names, strict=True))
    pairs = [
        {**p, "from": by_label.get(p["from"], p["from"]), "to": by_label.get(p["to"], p["to"])}
        for p in dense.pairs
    ]
    skipped = [
        {**p, "from": by_label.get(p["from"], p["from"]), "to": by_label.get(p["to"], p["to"])}
        for p in dense.pairs_skipped
    ]
    return {
        "flow": {"method": flow.method, "raft_weights": flow.raft_weights},
        "views": [{**v, "name": names[i]} for i, v in enumerate(dense.views)],
        "pairs": pairs,
        "pairs_skipped": skipped,
        "timings_s": dense.timings_s,
    }
