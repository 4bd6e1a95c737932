"""ARKit weights for a track of a model whose own expression keys are PCA components (FLAME,
the test head): each frame's expression and jaw, as a displacement of the fitted face, is
written as the bounded mix of the result's ARKit keys (rig.npz `arkit_basis`, the ICT
model's keys carried onto this face by `head.key_transfer`) that reproduces it best.

Why a projection and not a second fit: the tracker's fit is in the model's own space (that
is what the landmarks constrain well); the ARKit keys live on the same mesh, so the per-frame
least-squares problem is small (a few thousand coordinates, 53 unknowns in [0, 1]) and its
matrix is the same for every frame: one QR, then a 53x53 bounded solve per frame.
"""

from __future__ import annotations

import numpy as np
import torch

from mfnet_core.head.interface import HeadModel

MAX_VERTICES = 3000  # the displacement is compared on at most this many moving vertices
RIDGE = 0.03  # `bounded_key_weights`


def moving_vertices(basis: np.ndarray, limit: int = MAX_VERTICES) -> np.ndarray:
    """(S,) vertex ids the keys move (more than 0.1 mm at weight 1), evenly thinned to
    `limit`. basis: (A,V,3) key offsets in metres."""
    reach = np.linalg.norm(basis, axis=-1).max(0)  # (V,)
    ids = np.flatnonzero(reach > 1e-4)
    if len(ids) > limit:
        ids = ids[np.linspace(0, len(ids) - 1, limit).round().astype(int)]
    return ids


@torch.no_grad()
def frame_displacements(
    head: HeadModel,
    shape: np.ndarray,
    expression: np.ndarray,
    jaw_pose: np.ndarray,
    vertex_ids: np.ndarray,
    chunk: int = 256,
) -> np.ndarray:
    """(T,S,3) each frame's offsets from the neutral face on `vertex_ids`: the model at the
    identity `shape` (S_id,) with the frame's `expression` (T,E) and `jaw_pose` (T,3), no
    head pose, minus the same with both zero."""
    sub = head.vertex_subset(torch.as_tensor(vertex_ids, device=head.faces.device))
    dev = head.faces.device
    t, ne = expression.shape
    ns, k = head.n_shape, min(ne, head.n_expr)
    identity = torch.zeros(ns, dtype=torch.float64)
    identity[: min(ns, len(shape))] = torch.as_tensor(np.asarray(shape, dtype=np.float64)[:ns])

    def faces_of(expr: np.ndarray, jaw: np.ndarray) -> np.ndarray:
        b = len(expr)
        betas = torch.zeros(b, ns + head.n_expr, dtype=torch.float64)
        betas[:, :ns] = identity
        betas[:, ns : ns + k] = torch.as_tensor(expr[:, :k], dtype=torch.float64)
        jaw_t = torch.as_tensor(jaw, dtype=torch.float64)
        pose = head.pose_vector(None, None, jaw_t, None, b, dtype=torch.float64)
        verts, _ = sub(betas.to(dev), pose.to(dev))
        return verts.double().cpu().numpy()

    neutral = faces_of(np.zeros((1, ne)), np.zeros((1, 3)))[0]
    out = np.empty((t, len(vertex_ids), 3))
    for start in range(0, t, chunk):
        stop = min(t, start + chunk)
        out[start:stop] = faces_of(expression[start:stop], jaw_pose[start:stop]) - neutral
    return out


def bounded_key_weights(
    basis: np.ndarray, displacements: np.ndarray, ridge: float = RIDGE
) -> np.ndarray:
    """(T,A) weights w in [0,1] minimising |sum_a w_a basis_a - d_t|^2 + lam |w|^2 for each
    frame, lam = `ridge` x the keys' mean squared size.

    Why the ridge: on a face that is not ICT's the keys are far from independent; a test-head
    jaw turned 0.15 rad came out as jawOpen 0.39 plus eyeLookUp 0.43 and mouthShrugUpper
    0.46 without it, jawOpen 0.39, mouthShrugUpper 0.28 and no eyeLookUp with 0.03.
    basis: (A,M) key offsets flattened over the compared coordinates; displacements (T,M)."""
    from scipy.optimize import lsq_linear

    a = basis.shape[0]
    q, r = np.linalg.qr(basis.T)  # (M,A), (A,A)
    lam = ridge * float(np.mean(np.sum(r * r, 0)))
    system = np.vstack([r, np.sqrt(lam) * np.eye(a)])
    targets = displacements @ q  # (T,A): the part of each frame the keys can reach
    out = np.zeros((len(displacements), a))
    for i, b in enumerate(targets):
        rhs = np.concatenate([b, np.zeros(a)])
        out[i] = lsq_linear(system, rhs, bounds=(0.0, 1.0), method="bvls").x
    return out


def pca_track_key_weights(
    head: HeadModel,
    shape: np.ndarray,
    expression: np.ndarray,
    jaw_pose: np.ndarray,
    basis: np.ndarray,
) -> np.ndarray:
    """(T,A) weights of the result's ARKit keys (`basis` (A,V,3)) for a PCA model's track."""
    ids = moving_vertices(basis)
    disp = frame_displacements(head, shape, expression, jaw_pose, ids)
    return bounded_key_weights(basis[:, ids].reshape(len(basis), -1), disp.reshape(len(disp), -1))
