"""The landmark-only rig used by the fitter equals the full FLAME forward pass."""

import torch

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
