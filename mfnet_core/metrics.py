"""Geometry error measures shared by the demo, benchmarks, tests and training evaluation."""

from __future__ import annotations

import numpy as np


def similarity_transform(
    src: np.ndarray, dst: np.ndarray, with_scale: bool = True
) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama: (s, R, t) minimising |s R src + t - dst|^2 over paired (P,3) points;
    s = 1 unless ``with_scale``. Our own because trimesh's `procrustes` scales both point
    sets to unit size (a symmetric scale), not the least-squares scale the FaceScape-style
    similarity alignment needs; its rigid solution equals ours to 1e-14."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, d, vt = np.linalg.svd(b.T @ a / len(src))
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = float((d * sign).sum() / a.var(0).sum()) if with_scale else 1.0
    return scale, rot, mu_d - scale * rot @ mu_s


def similarity_align(source: np.ndarray, target: np.ndarray, with_scale: bool = True) -> np.ndarray:
    """`source` (P,3) moved by the similarity (or rigid) transform that best matches it to
    `target` (P,3) in least squares. Returns (P,3)."""
    scale, rot, t = similarity_transform(source, target, with_scale=with_scale)
    return scale * source @ rot.T + t


def vertex_error_mm(
    predicted: np.ndarray,
    truth: np.ndarray,
    region: np.ndarray | None = None,
    with_scale: bool = False,
) -> np.ndarray:
    """Per-vertex distances in mm after aligning `predicted` to `truth` on `region`.

    predicted, truth: (V,3) metres, same topology; region: (V,) bool. Rigid alignment by
    default, so errors in overall size count; `with_scale` for the similarity variant.
    """
    sel = np.ones(len(truth), bool) if region is None else region
    aligned = similarity_align(predicted[sel], truth[sel], with_scale=with_scale)
    return np.linalg.norm(aligned - truth[sel], axis=1) * 1000.0
