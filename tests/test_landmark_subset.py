"""The landmark-only rig used by the fitter equals the full FLAME forward pass; its affine
map of the betas gives the landmark term's Jacobian."""

import numpy as np
import pytest
import torch

from mfnet_core.camera import Intrinsics
from mfnet_core.fit.landmark_fit import FitOptions, LandmarkTerm, MultiViewFitter, set_params
from mfnet_core.fit.solver import forward_difference
from mfnet_core.head.flame import FLAME
from mfnet_core.head.subset import LandmarkSubset


def test_landmark_rig_matches_full_forward(test_head_assets):
    flame = FLAME(test_head_assets, n_shape=100, n_expr=50).double()
    rig = LandmarkSubset(flame)
    g = torch.Generator().manual_seed(0)
    betas = torch.randn(2, 150, generator=g, dtype=torch.float64)
    jaw = torch.tensor([[0.2, 0.01, 0.0], [0.05, 0.0, 0.02]], dtype=torch.float64)
    neck = torch.tensor([[0.1, -0.2, 0.05], [0.0, 0.0, 0.0]], dtype=torch.float64)
    pose = torch.cat(
        [torch.zeros(2, 3, dtype=torch.float64), neck, jaw, torch.zeros(2, 6, dtype=torch.float64)],
        1,
    )
    yaw = torch.tensor([-30.0, 0.0, 25.0])
    lmk, joints = rig.landmarks(betas, pose, yaw)
    out = flame(shape=betas[:, :100], expression=betas[:, 100:], neck_pose=neck, jaw_pose=jaw)
    for v in range(3):
        ref = flame.landmarks_3d(out.vertices, yaw[v].expand(2))
        torch.testing.assert_close(lmk[:, v], ref, atol=1e-9, rtol=0)
    torch.testing.assert_close(joints, out.joints, atol=1e-9, rtol=0)
    # The far-side contour differs between views; the inner face does not.
    assert (lmk[:, 0, :17] - lmk[:, 2, :17]).abs().max() > 1e-3
    torch.testing.assert_close(lmk[:, 0, 17:], lmk[:, 2, 17:])


def test_subset_is_affine_in_the_betas_at_a_fixed_pose(test_head_assets):
    """`SubsetLBS.linear` (the dense terms' exact Jacobian) equals the forward pass, for one
    pose shared by many rows (the shortcut a Jacobian batch takes) and for distinct poses."""
    flame = FLAME(test_head_assets, n_shape=100, n_expr=50).double()
    ids = torch.arange(0, flame.v_template.shape[0], 5)
    rig = flame.vertex_subset(ids)
    g = torch.Generator().manual_seed(1)
    betas = torch.randn(6, 150, generator=g, dtype=torch.float64)
    jaw = torch.tensor([[0.2, 0.01, 0.0]], dtype=torch.float64)
    neck = torch.tensor([[0.1, -0.2, 0.05]], dtype=torch.float64)
    eye = torch.tensor([[0.1, 0.2, 0.0, -0.1, 0.05, 0.0]], dtype=torch.float64)
    pose = flame.pose_vector(None, neck, jaw, eye, 1, dtype=torch.float64)
    shared = pose.expand(6, -1)
    verts, joints = rig(betas, shared)
    out = flame(
        shape=betas[:, :100],
        expression=betas[:, 100:],
        neck_pose=neck.expand(6, -1),
        jaw_pose=jaw.expand(6, -1),
        eye_pose=eye.expand(6, -1),
    )
    torch.testing.assert_close(verts, out.vertices[:, ids], atol=1e-9, rtol=0)
    torch.testing.assert_close(joints, out.joints, atol=1e-9, rtol=0)
    v0, basis, j0, j_basis = rig.linear(pose)
    torch.testing.assert_close(v0[0] + torch.einsum("smk,bk->bsm", basis[0], betas), verts)
    torch.testing.assert_close(j0[0] + torch.einsum("jmk,bk->bjm", j_basis[0], betas), joints)
    # rows at two poses, interleaved: each row as if alone
    mixed = torch.where(torch.arange(6)[:, None] % 2 == 0, shared, torch.zeros_like(shared))
    verts_m, _ = rig(betas, mixed)
    for i in range(6):
        alone, _ = rig(betas[i : i + 1], mixed[i : i + 1])
        torch.testing.assert_close(verts_m[i], alone[0], atol=1e-12, rtol=0)
    assert (verts_m[1] - verts[1]).abs().max() > 1e-3  # the poses differ visibly


def test_affine_maps_are_kept_per_pose_and_per_buffers(test_head_assets):
    """`SubsetLBS.linear` keeps its last results by pose: the same pose gives the same
    tensors back, another pose or converted buffers (.float()) a new map."""
    flame = FLAME(test_head_assets, n_shape=100, n_expr=50)
    sub = flame.vertex_subset(torch.arange(0, flame.n_vertices, 11))
    pose = torch.zeros(2, 15, dtype=torch.float64)
    pose[1, 6] = 0.2  # the jaw opens in row 1
    first = sub.linear(pose)
    again = sub.linear(pose.clone())
    assert all(a is b for a, b in zip(first, again, strict=True))
    other = pose.clone()
    other[1, 6] = 0.1
    moved = sub.linear(other)
    assert not torch.equal(moved[0][1], first[0][1]) and torch.equal(moved[0][0], first[0][0])
    # rows at one pose share one map; once it is made, `forward` at that pose uses it
    same = torch.zeros(3, 15, dtype=torch.float64)
    same[:, 6] = 0.1
    betas = torch.randn(4, 150, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lbs_verts, lbs_joints = sub(betas, same[:1].expand(4, -1))
    shared = sub.linear(same)
    assert shared[1].shape[0] == 3 and shared[1].stride(0) == 0  # one map, expanded
    assert sub._kept_map(same[:1]) is not None
    affine_verts, affine_joints = sub(betas, same[:1].expand(4, -1))
    torch.testing.assert_close(affine_verts, lbs_verts, atol=1e-12, rtol=0)
    torch.testing.assert_close(affine_joints, lbs_joints, atol=1e-12, rtol=0)
    sub.float()
    as_float = sub.linear(pose.float())
    assert as_float[1].dtype == torch.float32
    torch.testing.assert_close(as_float[1].double(), first[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows", [1, 3])
def test_landmark_jacobian_matches_forward_differences(test_head, rows):
    """The landmark term's Jacobian (shape and expression columns by the chain rule through
    the subset's affine map) equals forward differences of its residuals, one expression for
    all views or one per view, with the jaw free."""
    head = test_head
    g = torch.Generator().manual_seed(3)
    params = {
        "shape": torch.randn(100, generator=g).numpy() * 0.5,
        "expression": torch.randn(50, generator=g).numpy() * 0.3,
        "jaw_pose": np.array([0.1, 0.0, 0.0]),
        "head_pose": np.array([[0.0, -0.5, 0.0], [0.05, 0.0, 0.02], [0.0, 0.5, -0.03]]),
        "head_translation": np.array([[0.01, 0.0, -0.6], [0.0, 0.01, -0.62], [0.0, 0.0, -0.58]]),
    }
    intr = [Intrinsics.from_fov(512, 512)] * 3
    lmk = np.full((3, 68, 2), 256.0) + torch.randn(3, 68, 2, generator=g).numpy() * 40
    fitter = MultiViewFitter(head, lmk, intr, FitOptions(), torch.device("cpu"))
    set_params(fitter, params)
    fitter.set_expression_rows(rows)
    with torch.no_grad():
        fitter.params.expression.add_(
            torch.randn(fitter.params.expression.shape, generator=g) * 0.1
        )
    assert "jaw_pose" in dict(fitter.free_entries("fine"))
    for stage in ("rigid", "coarse", "fine"):
        free = fitter.free_entries(stage)
        x = fitter._gather(free).double()
        term = LandmarkTerm(fitter, None, follow_contour=False)
        state = term.reweight(free, x)
        r, jac = term.linearise(free, x, state)
        r_fd, jac_fd = forward_difference(
            lambda xb, t=term, fr=free, st=state: t.residuals(fr, xb, st), x
        )
        torch.testing.assert_close(r, r_fd, atol=1e-12, rtol=0)
        scale = float(jac_fd.abs().max())
        assert scale > 1.0
        torch.testing.assert_close(jac, jac_fd, atol=1e-6 * scale, rtol=0)
