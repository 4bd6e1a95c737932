"""Camera maths: Rodrigues, projection conventions, yaw sign, PnP start."""

import cv2
import numpy as np
import torch

from mfnet_core.camera import (
    Intrinsics,
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    project,
    solve_head_pose_pnp,
    yaw_pitch_roll_deg,
)


def test_axis_angle_matches_opencv():
    rng = np.random.default_rng(0)
    aa = rng.normal(size=(8, 3))
    ours = axis_angle_to_matrix(torch.as_tensor(aa)).numpy()
    for a, r in zip(aa, ours, strict=True):
        np.testing.assert_allclose(r, cv2.Rodrigues(a)[0], atol=1e-10)
    np.testing.assert_allclose(
        axis_angle_to_matrix(torch.zeros(1, 3))[0].numpy(), np.eye(3), atol=1e-7
    )


def test_projection_convention():
    cam = torch.tensor([[1000.0, 1000.0, 512.0, 384.0]])
    pts = torch.tensor([[[0.0, 0.0, -1.0], [0.1, 0.0, -1.0], [0.0, 0.1, -1.0]]])
    uv = project(pts, cam)[0].numpy()
    np.testing.assert_allclose(uv[0], [512, 384])
    assert uv[1, 0] > 512  # +x is image right
    assert uv[2, 1] < 384  # +y is image up (v grows downward)


def test_yaw_sign_positive_when_face_turns_to_image_right():
    rot = axis_angle_to_matrix(torch.tensor([[0.0, np.radians(30), 0.0]]))
    ypr = yaw_pitch_roll_deg(rot)[0].numpy()
    np.testing.assert_allclose(ypr, [30, 0, 0], atol=1e-4)
    rot = axis_angle_to_matrix(torch.tensor([[-np.radians(20), 0.0, 0.0]]))
    assert yaw_pitch_roll_deg(rot)[0, 1] > 19  # rotating about -x tilts the face up


def test_pnp_recovers_pose():
    rng = np.random.default_rng(1)
    model = rng.normal(scale=0.05, size=(40, 3)) + [0, 0.03, 0.05]
    pivot = np.array([0.0, -0.05, 0.0])
    intr = Intrinsics.from_fov(1024, 1024)
    aa_true = np.array([0.05, np.radians(35), -0.03])
    r = cv2.Rodrigues(aa_true)[0]
    t = np.array([0.01, -0.02, -0.6])
    cam_pts = (model - pivot) @ r.T + pivot + t
    uv = project(
        torch.as_tensor(cam_pts)[None], torch.as_tensor(intr.as_vector(), dtype=torch.float64)[None]
    )[0].numpy()
    rot, trans = solve_head_pose_pnp(model, uv, intr, pivot)
    np.testing.assert_allclose(matrix_to_axis_angle(rot), aa_true, atol=1e-5)
    np.testing.assert_allclose(trans, t, atol=1e-5)


def test_intrinsics_default_fov():
    k = Intrinsics.from_fov(4000, 3000)
    assert abs(k.fov_deg() - 40.0) < 1e-6
    assert Intrinsics.from_focal(100, 100, None) == Intrinsics.from_fov(100, 100)
