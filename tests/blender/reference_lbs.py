"""FLAME's forward pass from a result folder's rig.npz arrays, in plain numpy (tests only).

Mirrors smplx.lbs.lbs: blend shapes (expression + pose correctives from R - I of the
non-root joints), joints regressed from the expressed mesh, then linear blend skinning
along the kinematic chain. FLAME axes in, FLAME axes out.
"""

from __future__ import annotations

import numpy as np


def rodrigues(aa: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle -> (..., 3, 3)."""
    aa = np.asarray(aa, dtype=np.float64)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    axis = aa / np.maximum(angle, 1e-12)
    x, y, z = np.moveaxis(axis, -1, 0)
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(aa.shape[:-1] + (3, 3))
    s = np.sin(angle)[..., None]
    c = np.cos(angle)[..., None]
    eye = np.eye(3)
    return eye + s * k + (1 - c) * (k @ k)


def flame_forward(arrays: dict, expression: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """arrays: rig.npz contents; expression (K,); pose (J,3) axis-angle per joint
    (root, neck, jaw, eye_L, eye_R for FLAME). Returns (V,3) posed vertices."""
    v = np.asarray(arrays["vertices"], np.float64)
    eb = np.asarray(arrays["expression_basis"], np.float64)
    e = np.zeros(eb.shape[0])
    e[: len(expression)] = expression[: eb.shape[0]]
    v_shaped = v + np.einsum("k,kvc->vc", e, eb)
    joints = np.asarray(arrays["joints"], np.float64) + np.einsum(
        "k,kjc->jc", e, np.asarray(arrays["joint_expression_basis"], np.float64)
    )
    rot = rodrigues(np.asarray(pose, np.float64).reshape(-1, 3))
    n_j = rot.shape[0]
    feat = (rot[1:] - np.eye(3)).reshape(-1)
    v_posed = v_shaped + np.einsum(
        "p,pvc->vc", feat, np.asarray(arrays["pose_correctives"], np.float64)
    )
    parents = np.asarray(arrays["parents"])
    g = np.zeros((n_j, 4, 4))
    for j in range(n_j):
        local = np.eye(4)
        local[:3, :3] = rot[j]
        local[:3, 3] = joints[j] - (joints[parents[j]] if parents[j] >= 0 else 0.0)
        g[j] = local if parents[j] < 0 else g[parents[j]] @ local
    a = g.copy()
    a[:, :3, 3] -= np.einsum("jab,jb->ja", g[:, :3, :3], joints)
    w = np.asarray(arrays["skin_weights"], np.float64)
    t = np.einsum("vj,jab->vab", w, a)
    vh = np.concatenate([v_posed, np.ones((len(v_posed), 1))], 1)
    return np.einsum("vab,vb->va", t, vh)[:, :3]
