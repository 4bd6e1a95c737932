"""The diagnostic overlay draws where it should and leaves its input alone."""

from __future__ import annotations

import numpy as np
import pytest

from mfnet_core.outputs.overlay import DETECTED_RGB, FITTED_RGB, OUTLINE_RGB, draw_overlay


def _grid(n: int = 68, w: int = 400, h: int = 300) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([rng.uniform(80, w - 40, n), rng.uniform(60, h - 60, n)], 1).astype(np.float32)


def _near(img: np.ndarray, p: np.ndarray, colour: tuple[int, int, int], r: int = 2) -> bool:
    x, y = int(p[0]), int(p[1])
    patch = img[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1].reshape(-1, 3).astype(int)
    return bool((np.abs(patch - np.array(colour)).sum(1) < 60).any())


def test_dots_crosses_outline_and_title() -> None:
    rgb = np.zeros((300, 400, 3), np.uint8)
    det = np.array([[100, 100], [200, 100], [300, 100], [150, 200], [250, 200]], np.float32)
    fit = det + np.array([12.0, 9.0], np.float32)
    outline = np.array([[60, 60], [340, 60], [340, 260], [60, 260]], np.float32)
    out = draw_overlay(rgb, det, fit, outline_px=[outline], title="front: 3.1 px")
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert not rgb.any()  # input untouched
    for d, f in zip(det, fit, strict=True):
        assert _near(out, d, DETECTED_RGB)
        assert _near(out, f, FITTED_RGB)
        mid = (d + f) / 2
        assert out[int(mid[1]) - 2 : int(mid[1]) + 3, int(mid[0]) - 2 : int(mid[0]) + 3].any()
    assert _near(out, np.array([200, 60]), OUTLINE_RGB)  # top edge of the outline
    assert out[:25, :150].any()  # title text in the top-left corner
    assert out[-70:, :150].any()  # legend in the bottom-left corner
    assert not out[140:160, 370:390].any()  # and nothing where nothing was drawn


def test_optional_parts_and_bad_points() -> None:
    rgb = np.full((200, 200, 3), 90, np.uint8)
    det = _grid(68, 200, 200)
    det[3] = np.nan
    only_det = draw_overlay(rgb, det, None)
    assert _near(only_det, det[0], DETECTED_RGB)
    assert not _near(only_det, det[0], FITTED_RGB, r=0)
    only_fit = draw_overlay(rgb, None, det)
    assert _near(only_fit, det[0], FITTED_RGB)
    single_outline = draw_overlay(rgb, None, None, outline_px=np.array([[10, 100], [190, 100]]))
    assert _near(single_outline, np.array([100, 100]), OUTLINE_RGB)
    grey = draw_overlay(rgb[..., 0], det, None)
    assert grey.shape == (200, 200, 3)
    with pytest.raises(ValueError):
        draw_overlay(np.zeros((5, 5, 2), np.uint8), None, None)


def test_markers_scale_with_image() -> None:
    small = np.zeros((256, 256, 3), np.uint8)
    big = np.zeros((2048, 2048, 3), np.uint8)
    p_small = np.array([[128, 128], [20, 20], [230, 230]], np.float32)
    s_out = draw_overlay(small, p_small, None)
    b_out = draw_overlay(big, p_small * 8, None)
    area_s = (s_out[100:156, 100:156].sum(2) > 0).sum()
    area_b = (b_out[800:1248, 800:1248].sum(2) > 0).sum()
    assert area_b > 10 * area_s


def test_legend_can_be_left_out_and_names_the_crosses() -> None:
    rgb = np.zeros((300, 400, 3), np.uint8)
    det = np.array([[200, 100], [250, 120]], np.float32)
    plain = draw_overlay(rgb, det, det + 5, legend=False)
    assert not plain[-70:, :150].any()  # no legend in the bottom-left corner
    fitted = draw_overlay(rgb, det, det + 5)
    network = draw_overlay(rgb, det, det + 5, fitted_label="network")
    assert fitted[-70:, :150].any() and network[-70:, :150].any()
    assert not np.array_equal(fitted[-70:, :150], network[-70:, :150])  # another word
    assert np.array_equal(fitted[:-70], network[:-70])  # the markers are the same


def test_coverage_outline_of_a_big_mask_is_found_small_and_scaled_up() -> None:
    """A phone-size coverage mask (the bake's z-buffer) is brought down to <= 1024 px for
    its contour: every point within one small pixel (2.9 px here) of the full-size one."""
    import cv2

    from mfnet_core.outputs.overlay import coverage_outline

    mask = np.zeros((3000, 2000), bool)
    cv2.ellipse(mask.view(np.uint8), (1000, 1400), (700, 1000), 15, 0, 360, 1, -1)
    full = coverage_outline(mask, max_side=3000)
    small = coverage_outline(mask)
    assert len(full) == len(small) == 1 and len(small[0]) < len(full[0])
    d = [
        abs(cv2.pointPolygonTest(full[0].reshape(-1, 1, 2), (float(x), float(y)), True))
        for x, y in small[0]
    ]
    assert max(d) <= 3000 / 1024, max(d)


def test_mesh_outline_on_a_small_raster_matches_the_full_one() -> None:
    """The outline of a big photo is found on a <= 1024 px raster and scaled up: every
    point lies within a pixel of the small raster (2 px here) of the full-size outline."""
    import cv2
    import torch

    from mfnet_core.head.flame import FLAME, load_flame_assets
    from mfnet_core.head.testhead import ensure_test_head
    from mfnet_core.outputs.report import mesh_outline

    head = FLAME(load_flame_assets(ensure_test_head()), 10, 10)
    v = head.v_template.double()
    size = 2048
    scale = size * 0.8 / float(v[:, 1].max() - v[:, 1].min())
    centre = v.mean(0)
    screen = torch.stack(
        [
            (v[:, 0] - centre[0]) * scale + size / 2,
            (centre[1] - v[:, 1]) * scale + size / 2,
            1.0 + (centre[2] - v[:, 2]),
        ],
        1,
    )
    full = mesh_outline(screen, head.faces, size, size, max_side=size)
    small = mesh_outline(screen, head.faces, size, size)  # the default: 1024 a side
    assert len(full) >= 1 and len(small) >= 1
    big = max(full, key=len)
    pts = max(small, key=len)
    # distance of each small-raster point to the full-size outline polyline
    d = np.array(
        [
            abs(cv2.pointPolygonTest(big.reshape(-1, 1, 2), (float(x), float(y)), True))
            for x, y in pts
        ]
    )
    assert np.percentile(d, 95) <= 2.0 and d.max() <= 3.0, (np.percentile(d, 95), d.max())
    # it spans the head as the full outline does
    np.testing.assert_allclose(pts.min(0), big.min(0), atol=2.5)
    np.testing.assert_allclose(pts.max(0), big.max(0), atol=2.5)
