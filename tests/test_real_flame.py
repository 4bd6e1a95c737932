"""Checks on the user's real FLAME model; skipped unless MFNET_FLAME_MODEL points at it."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

FLAME_PATH = os.environ.get("MFNET_FLAME_MODEL", "")
pytestmark = pytest.mark.skipif(
    not FLAME_PATH or not Path(FLAME_PATH).is_file(),
    reason="real FLAME not available: set MFNET_FLAME_MODEL to generic_model.pkl / flame2023.pkl "
    "(FLAME is a registered download and is never shipped with mfnet)",
)


@pytest.fixture(scope="module")
def flame_assets():
    from mfnet_core.head.flame import load_flame_assets

    return load_flame_assets(Path(FLAME_PATH))


def test_real_flame_loads_and_poses(flame_assets):
    import smplx.lbs

    from mfnet_core.head.flame import FLAME

    a = flame_assets
    assert a.kind == "flame"
    assert a.faces.max() < a.n_vertices and a.n_joints == 5
    flame = FLAME(a, n_shape=100, n_expr=50)
    g = torch.Generator().manual_seed(0)
    shape, expr = torch.randn(2, 100, generator=g), torch.randn(2, 50, generator=g)
    jaw = torch.tensor([[0.2, 0.0, 0.0], [0.1, 0.0, 0.0]])
    out = flame(shape=shape, expression=expr, jaw_pose=jaw)
    pose = flame.pose_vector(None, None, jaw, None, 2)
    betas = torch.cat([shape, expr], 1)
    ref, _ = smplx.lbs.lbs(
        betas,
        pose,
        flame.v_template,
        flame.blend_dirs,
        flame.posedirs,
        flame.j_regressor,
        flame.parents,
        flame.lbs_weights,
    )
    torch.testing.assert_close(out.vertices, ref, atol=1e-6, rtol=0)
    lmk = flame.landmarks_3d(out.vertices, torch.zeros(2))
    assert lmk.shape == (2, 68, 3)


def test_real_flame_multiview_fit(flame_assets):
    from mfnet_core.fit.landmark_fit import fit_landmarks
    from mfnet_core.head.flame import FLAME
    from mfnet_core.metrics import vertex_error_mm
    from mfnet_core.synthetic import make_subject, procedural_texture

    flame = FLAME(flame_assets, 100, 50)
    subject = make_subject(flame, procedural_texture(flame, 256), seed=1, image_size=1024)
    lmk = np.stack([v.landmarks_noisy for v in subject.views])
    fit = fit_landmarks(flame, lmk, [v.intrinsics for v in subject.views]).result()
    err = vertex_error_mm(fit.vertices_model, subject.vertices_true, flame_assets.face_region)
    assert np.median(err) < 2.0
    assert np.median(fit.residuals_px) < 2.0
