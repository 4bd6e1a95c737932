"""Geometry error measures shared by the demo, benchmarks, tests and training evaluation."""

from __future__ import annotations

import numpy as np


def similarity_transform(
    src: np.ndarray, dst: np.ndarray, with_scale: bool = True
) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama: (s, R, t) minimising |s R src + t - dst|^2 over paired (P,3) points;
    s = 1 unless ``with_scale``."""
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


def closest_point_on_triangles(
    p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray
) -> np.ndarray:
    """Closest points of (K,3) points on (K,3)x3 triangles, pairwise (Ericson, RTCD 5.1.5)."""
    ab, ac, ap = b - a, c - a, p - a
    d1 = np.einsum("ij,ij->i", ab, ap)
    d2 = np.einsum("ij,ij->i", ac, ap)
    bp = p - b
    d3 = np.einsum("ij,ij->i", ab, bp)
    d4 = np.einsum("ij,ij->i", ac, bp)
    cp = p - c
    d5 = np.einsum("ij,ij->i", ab, cp)
    d6 = np.einsum("ij,ij->i", ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = va + vb + vc
        v = np.where(denom != 0, vb / denom, 0.0)
        w = np.where(denom != 0, vc / denom, 0.0)
        out = a + ab * v[:, None] + ac * w[:, None]  # interior
        # Edge regions.
        t_ab = d1 / (d1 - d3)
        t_ac = d2 / (d2 - d6)
        t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
    e_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    e_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    e_bc = (va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0)
    out = np.where(e_bc[:, None], b + (c - b) * np.nan_to_num(t_bc)[:, None], out)
    out = np.where(e_ac[:, None], a + ac * np.nan_to_num(t_ac)[:, None], out)
    out = np.where(e_ab[:, None], a + ab * np.nan_to_num(t_ab)[:, None], out)
    # Vertex regions.
    out = np.where(((d6 >= 0) & (d5 <= d6))[:, None], c, out)
    out = np.where(((d3 >= 0) & (d4 <= d3))[:, None], b, out)
    out = np.where(((d1 <= 0) & (d2 <= 0))[:, None], a, out)
    return out
