"""The realistic synthetic set (skin texture, lighting, jitter, landmark errors) and the real
capture's loader and renderer."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mfnet_core.head.flame import FLAME
from mfnet_core.synthetic import (
    LandmarkErrorModel,
    RealisticOptions,
    load_headscan,
    make_realistic_subject,
    make_subject,
    procedural_texture,
    render_scan,
    skin_texture,
)

SCAN = Path(__file__).resolve().parents[1].parent / "shared" / "assets" / "headscan-james-menpo3d"


@pytest.fixture(scope="module")
def flame(test_head_assets):
    return FLAME(test_head_assets, n_shape=100, n_expr=50)


def test_skin_texture_is_deterministic_and_detailed(test_head):
    a = skin_texture(test_head, 256, seed=3)
    b = skin_texture(test_head, 256, seed=3)
    c = skin_texture(test_head, 256, seed=4)
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    grey = a.astype(np.float32).mean(2)
    covered = grey > 0
    inner = cv2.erode(covered.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    detail = np.abs(grey - cv2.GaussianBlur(grey, (0, 0), 2.0))[inner]
    assert 0.5 < np.median(detail) < 8  # fine, low-contrast detail


def test_realistic_subject(flame):
    opts = RealisticOptions(image_size=384, texture_size=256)
    s1 = make_realistic_subject(flame, seed=7, options=opts)
    s2 = make_realistic_subject(flame, seed=7, options=opts)
    s3 = make_realistic_subject(flame, seed=8, options=opts)
    assert len(s1.views) == 3 and s1.vertices_true.shape == (flame.v_template.shape[0], 3)
    for v1, v2, v3 in zip(s1.views, s2.views, s3.views, strict=True):
        assert np.array_equal(v1.photo.rgb, v2.photo.rgb)
        assert np.array_equal(v1.landmarks_noisy, v2.landmarks_noisy)
        assert not np.array_equal(v1.photo.rgb, v3.photo.rgb)
        assert v1.photo.rgb.shape == (384, 384, 3)
    # Landmark errors: a few pixels for a ~170 px face at 384 px, mostly structured.
    err = np.concatenate(
        [np.linalg.norm(v.landmarks_noisy - v.landmarks_true, axis=1) for v in s1.views]
    )
    face = np.ptp(s1.views[1].landmarks_true[:, 1])
    assert 0.004 * face < err.mean() < 0.03 * face, (err.mean(), face)
    # Per-view exposure differs (the background and face brightness are not the same).
    means = [v.photo.rgb.mean() for v in s1.views]
    assert max(means) - min(means) > 1.0
    # Wider / narrower yaw sets.
    wide = make_realistic_subject(
        flame,
        seed=7,
        options=RealisticOptions(image_size=256, texture_size=128, yaws_deg=(-50.0, 0.0, 50.0)),
    )
    assert len(wide.views) == 3


def test_landmark_error_model_is_structured():
    model = LandmarkErrorModel()
    rng = np.random.default_rng(0)
    t = np.linspace(-1, 1, 68)
    lm = np.stack([300 + 150 * np.sin(3 * t), 300 + 200 * t], 1)
    person = model.person_bias(rng)
    a = model.apply(lm, 0.0, person, rng)
    b = model.apply(lm, 0.0, person, rng)
    # the brow offset is shared between the views of one person (bias, not noise)
    da, db = (a - lm)[17:27].mean(0), (b - lm)[17:27].mean(0)
    assert np.linalg.norm(da - db) < 0.6 * max(np.linalg.norm(da), np.linalg.norm(db)) + 1.5
    zero = LandmarkErrorModel(0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert np.allclose(zero.apply(lm, 0.0, zero.person_bias(rng), rng), lm, atol=1e-4)


def test_original_generator_still_works(test_head, flame):
    tex = procedural_texture(test_head, size=128, seed=1)
    subj = make_subject(flame, tex, seed=1, image_size=256, landmark_noise_px=1.0)
    assert len(subj.views) == 3 and subj.views[0].photo.rgb.shape == (256, 256, 3)


@pytest.mark.skipif(not (SCAN / "james.obj").is_file(), reason=f"real capture not present: {SCAN}")
def test_headscan_loads_in_ibug_order_and_renders():
    scan = load_headscan(SCAN)
    assert scan.vertices.shape == (6393, 3) and scan.faces.shape == (12228, 3)
    lm = scan.landmarks
    # iBUG order, FLAME-like axes (x to the subject's left, y up, face toward +z):
    assert lm[36, 0] < lm[45, 0]  # right eye's outer corner on the subject's right
    assert (
        lm[0, 0] < lm[16, 0] and lm[8, 1] < lm[30, 1] < lm[27, 1]
    )  # jaw, chin < nose tip < bridge
    assert np.argmax(lm[:, 2]) in range(27, 36)  # the nose sticks out most
    assert lm[48, 0] < lm[54, 0] and lm[51, 1] > lm[57, 1]
    region = scan.face_region()
    assert 1500 < region.sum() < 5000
    views = render_scan(scan, (-20.0, 20.0), image_size=256, landmarks="projected")
    assert views.landmark_source == "projected"
    img = views.views[0].photo.rgb
    assert img.shape == (256, 256, 3)
    # the face is drawn where its landmarks project
    p = views.views[0].landmarks_true[30].astype(int)
    assert img[p[1] - 3 : p[1] + 4, p[0] - 3 : p[0] + 4].mean() > 40
