"""Geometry error measures shared by the demo, benchmarks, tests and training evaluation."""

from __future__ import annotations

import numpy as np


def similarity_align(source: np.ndarray, target: np.ndarray, with_scale: bool = True) -> np.ndarray:
    """Umeyama: the similarity (or rigid) transform of `source` (P,3) best matching
    `target` (P,3) in least squares, applied to `source`. Returns (P,3)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    cov = t.T @ s / len(source)
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (d * sign).sum() / s.var(0).sum() if with_scale else 1.0
    return scale * s @ rot.T + mu_t


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
