"""Photometric terms: the robust per-view SH solve (eq. 2), PSNR / SSIM in a mask, and the
re-render quality at the true and at a wrong geometry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from mfnet_core.fit import photometric as pm
from mfnet_core.fit.flow import face_faces
from mfnet_core.fit.landmark_fit import FitOptions, MultiViewFitter, set_params
from mfnet_core.head.flame import FLAME
from mfnet_core.render import sh_basis
from mfnet_core.synthetic import RealisticOptions, make_realistic_subject


def _normals(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    v[:, 2] = np.abs(v[:, 2]) + 0.3  # facing the camera
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_solve_sh_recovers_light_and_ignores_occluders():
    rng = np.random.default_rng(0)
    n = _normals(5000, rng)
    albedo = rng.uniform(0.2, 0.9, size=(5000, 3))
    sh = np.zeros((9, 3))
    sh[0] = [2.6, 2.4, 2.2]
    sh[1:4] = np.array([0.2, 0.3, 0.6])[:, None]
    sh[4:] = rng.normal(scale=0.05, size=(5, 3))
    h = sh_basis(torch.as_tensor(n)).numpy()
    obs = albedo * (h @ sh)
    est, w = pm.solve_sh(albedo, n, obs)
    np.testing.assert_allclose(h @ est, h @ sh, rtol=2e-3)  # the shading (band 0 and 2 trade off)
    assert w.min() > 0.99
    # 20% of the pixels are hair / a hand: dark, unrelated colours.
    bad = rng.random(5000) < 0.2
    obs2 = obs.copy()
    obs2[bad] = rng.uniform(0.0, 0.15, size=(bad.sum(), 3))
    est2, w2 = pm.solve_sh(albedo, n, obs2)
    shade_err = np.abs(h @ est2 - h @ sh).mean() / np.abs(h @ sh).mean()
    assert shade_err < 0.03, shade_err
    assert w2[bad].mean() < 0.3 < w2[~bad].mean()
    plain, _ = pm.solve_sh(albedo, n, obs2, iterations=1)  # no reweighting: bent by outliers
    assert np.abs(h @ plain - h @ sh).mean() / np.abs(h @ sh).mean() > 2 * shade_err


def test_masked_psnr_and_ssim():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, size=(64, 64, 3))
    mask = np.zeros((64, 64), bool)
    mask[10:50, 5:60] = True
    b = a.copy()
    b[mask] += 0.1
    assert pm.masked_psnr(b, a, mask) == pytest.approx(20.0, abs=1e-6)
    assert pm.masked_ssim(a, a, mask) == pytest.approx(1.0)
    skm = pytest.importorskip("skimage.metrics")
    img = np.clip(a + rng.normal(scale=0.05, size=a.shape), 0, 1)
    full = np.ones((64, 64), bool)
    ours = pm.masked_ssim(img, a, full)
    ref = skm.structural_similarity(
        img,
        a,
        channel_axis=2,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert ours == pytest.approx(ref, abs=0.02)


def _ssim_whole_image(image, reference, mask, sigma=1.5):
    """masked_ssim's formula on the whole image, no crop: what the crop must equal."""
    a = np.where(mask[..., None], image, reference).astype(np.float64)
    b = reference.astype(np.float64)
    vals = []
    for ch in range(3):
        x, y = a[..., ch], b[..., ch]
        blur = lambda z: cv2.GaussianBlur(z, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)  # noqa: E731
        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        c1, c2 = 0.01**2, 0.03**2
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        vals.append(s[mask].mean())
    return float(np.mean(vals))


@pytest.mark.parametrize("box", [(60, 140, 70, 150), (0, 50, 100, 199), (150, 200, 0, 30)])
def test_masked_ssim_crops_to_the_mask_without_changing_it(box):
    """The SSIM is computed on the mask's box plus the blur's reach: the same value as on
    the whole image, also where the box meets the image border."""
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 1, size=(200, 200, 3)).astype(np.float32)
    img = np.clip(a + rng.normal(scale=0.1, size=a.shape), 0, 1).astype(np.float32)
    mask = np.zeros((200, 200), bool)
    y0, y1, x0, x1 = box
    mask[y0:y1, x0:x1] = rng.uniform(size=(y1 - y0, x1 - x0)) > 0.3
    assert pm.masked_ssim(img, a, mask) == pytest.approx(_ssim_whole_image(img, a, mask), abs=1e-12)
    assert pm.masked_psnr(img, a, mask) == pytest.approx(
        10 * np.log10(1 / ((img.astype(float) - a) ** 2)[mask].mean()), abs=1e-9
    )


@pytest.fixture(scope="module")
def setup(test_head_assets):
    flame = FLAME(test_head_assets, n_shape=100, n_expr=50)
    opts = RealisticOptions(image_size=512, texture_size=512, expression_jitter=0.0, jaw_jitter=0.0)
    subj = make_realistic_subject(flame, seed=4, options=opts)
    lm = np.stack([v.landmarks_true for v in subj.views])
    f = MultiViewFitter(
        flame, lm, [v.intrinsics for v in subj.views], FitOptions(), torch.device("cpu")
    )
    set_params(f, subj.fit_params())
    return flame, subj, f


def test_rerender_quality_drops_with_wrong_geometry(setup):
    flame, subj, f = setup
    photos = [v.photo.rgb for v in subj.views]
    tri = face_faces(flame.faces.numpy(), flame.face_region)
    good = pm.view_quality(f, photos, 384, tri)
    assert all(q["psnr_face"] > 27 and q["ssim_face"] > 0.8 for q in good), good
    saved = f.params.head_trans.clone()
    with torch.no_grad():
        f.params.head_trans[0, 0] += 0.003  # the left view's head 3 mm off
    bad = pm.view_quality(f, photos, 384, tri)
    with torch.no_grad():
        f.params.head_trans.copy_(saved)
    assert bad[0]["psnr_face"] < good[0]["psnr_face"] - 1.0
    assert bad[0]["ssim_face"] < good[0]["ssim_face"]
    assert good[0]["image"].shape == (384, 3 * 384, 3)


def test_albedo_bake_of_a_region_equals_the_full_bake_there(setup):
    """The report bakes only the texels the face region's lookups can reach (through the
    colour bleed): the texture inside the region must be the full bake's, to the bit."""
    flame, subj, f = setup
    photos = [v.photo.rgb for v in subj.views]
    tri = face_faces(flame.faces.numpy(), flame.face_region)
    with torch.no_grad():
        vc = list(f.evaluate(with_vertices=True)["vertices_cam"])
    views = [pm.render_view(vc[i], f.camera[i], flame.faces, tri, photos[i], 256) for i in range(3)]
    uv = flame.uv
    full, _ = pm.bake_albedo(views, vc, flame.faces, uv.uv_coords, uv.uv_faces, 256)
    part, _ = pm.AlbedoBake(views, vc, flame.faces, uv.uv_coords, uv.uv_faces, 256, tri).bake(views)
    pix, fid, _ = pm.uv_texels(flame.faces.numpy(), uv.uv_coords, uv.uv_faces, 256)
    inside = pix[tri[fid]]
    region = np.zeros(256 * 256, bool)
    region[inside] = True
    near = cv2.dilate(region.reshape(256, 256).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert near.sum() > region.sum() > 1000
    np.testing.assert_array_equal(part[near], full[near])  # bilinear lookups' texels too
    assert (np.abs(part - full).sum(-1) > 0).any()  # texels far from the region are left out


def test_photometric_term_is_stationary_at_truth(setup):
    flame, subj, f = setup
    photos = [v.photo.rgb for v in subj.views]
    tri = face_faces(flame.faces.numpy(), flame.face_region)
    smp = pm.photo_samples(f, photos, 256, tri, per_view=300)
    term = pm.PhotoTerm(f, smp, 0.1)
    free = f.free_entries("fine")
    x = f._gather(free).double()
    e = term.errors(free, x[None])[0]
    assert float(e.abs().median()) < 1.0  # median below one PHOTO_SIGMA (5% intensity)
    r, jac = term.linearise(free, x, term.reweight(free, x))
    assert jac.shape == (len(r), len(x)) and torch.isfinite(jac).all()
    # single-view residuals: both sides' columns are the same view's; the solver's normal
    # equations (pair by pair, duplicate columns summed) are still the dense Jacobian's
    jtj, g, cost = term.normal_equations(free, x, term.reweight(free, x))
    np.testing.assert_allclose(jtj.numpy(), (jac.T @ jac).numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(g.numpy(), (jac.T @ r).numpy(), rtol=1e-9, atol=1e-9)
    assert abs(cost - float(r @ r)) <= 1e-9 * max(float(r @ r), 1.0)


def test_texel_attributes_are_the_corner_sum():
    """`_at_texels` gives what `(attrs[tri] * bary[..., None]).sum(1)` gives, bit for bit."""
    from mfnet_core.fit.photometric import _at_texels

    rng = np.random.default_rng(1)
    attrs = rng.normal(size=(500, 3))
    tri = rng.integers(0, 500, (2000, 3))
    for bary in (rng.random((2000, 3)), rng.random((2000, 3)).astype(np.float32)):
        assert np.array_equal(_at_texels(attrs, tri, bary), (attrs[tri] * bary[..., None]).sum(1))
