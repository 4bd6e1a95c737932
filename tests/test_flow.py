"""Multi-view flow (MFNet eq. 5-6): masks on known geometry, I_{a->b}, the flow estimator,
and the flow loss at and away from the true parameters."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from mfnet_core.camera import Intrinsics, axis_angle_to_matrix, to_screen
from mfnet_core.errors import MfnetError
from mfnet_core.fit import flow as fl
from mfnet_core.fit.landmark_fit import FitOptions, MultiViewFitter, set_params
from mfnet_core.head.flame import FLAME
from mfnet_core.synthetic import LandmarkErrorModel, RealisticOptions, make_realistic_subject


def _texture(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.uniform(0, 1, (size, size, 3)).astype(np.float32), (0, 0), 1.5)
    return (noise - noise.min()) / (noise.max() - noise.min())


def _planes() -> tuple[torch.Tensor, torch.Tensor]:
    """A 20x20 cm background square at z=0 and a 4x4 cm occluder square 3 cm in front."""

    def square(half: float, z: float, n: int) -> tuple[np.ndarray, np.ndarray]:
        g = np.linspace(-half, half, n + 1)
        xx, yy = np.meshgrid(g, g)
        v = np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, z)], 1)
        f = []
        for i in range(n):
            for j in range(n):
                a = i * (n + 1) + j
                f += [[a, a + 1, a + n + 2], [a, a + n + 2, a + n + 1]]
        return v, np.array(f)

    vb, fb = square(0.10, 0.0, 20)
    vo, fo = square(0.02, 0.03, 4)
    verts = np.concatenate([vb, vo])
    faces = np.concatenate([fb, fo + len(vb)])
    return torch.as_tensor(verts, dtype=torch.float64), torch.as_tensor(faces)


def _view(verts_model, faces, yaw_deg, photo, size=256):
    rot = axis_angle_to_matrix(
        torch.tensor([[0.0, math.radians(yaw_deg), 0.0]], dtype=torch.float64)
    )[0]
    v_cam = verts_model @ rot.T + torch.tensor([0.0, 0.0, -0.6], dtype=torch.float64)
    intr = Intrinsics.from_fov(size, size, 30.0)
    cam = torch.as_tensor(intr.as_vector(), dtype=torch.float64)
    n_f = faces.shape[0]
    views = fl.render_views(
        v_cam[None],
        cam[None],
        faces,
        np.ones(n_f, bool),
        [photo],
        np.zeros((1, 68, 2)),
        np.zeros(1),
        size,
    )
    return views[0], v_cam, cam


def test_warp_and_covisibility_on_an_occluded_plane():
    verts, faces = _planes()
    blank = np.zeros((256, 256, 3), np.uint8)
    view_b, vcam_b, cam_b = _view(verts, faces, 0.0, blank)
    view_a, vcam_a, _ = _view(verts, faces, 30.0, blank)
    _warped, valid, pos = fl.warp_to_view(view_a, view_b, faces)
    # Analytic: a background pixel of view b is seen in view a unless the segment from its
    # point to camera a's centre crosses the occluder square (z = 3 cm, |x|, |y| <= 2 cm).
    fi = view_b.fragments.face_index.numpy()
    n_back = 800
    h, w = fi.shape
    ys, xs = np.mgrid[0:h, 0:w]
    f = cam_b[0].item()
    # back-project pixel centres of view b onto z_model = 0 (depth 0.6 m)
    x = ((xs + 0.5) - cam_b[2].item()) * 0.6 / f
    y = -((ys + 0.5) - cam_b[3].item()) * 0.6 / f
    yaw = math.radians(30.0)
    centre_a = np.array([-0.6 * math.sin(yaw), 0.0, 0.6 * math.cos(yaw)])  # camera a in model frame
    t = 0.03 / centre_a[2]
    px = x + t * (centre_a[0] - x)
    py = y + t * (centre_a[1] - y)
    hidden = (np.abs(px) <= 0.02) & (np.abs(py) <= 0.02)
    background = (fi >= 0) & (fi < n_back)
    expect = background & ~hidden
    # compare away from the boundaries (1.5 px band)
    k = np.ones((5, 5), np.uint8)
    edge = cv2.dilate(expect.astype(np.uint8), k) != cv2.erode(expect.astype(np.uint8), k)
    edge |= cv2.dilate((fi >= n_back).astype(np.uint8), k).astype(bool)
    sel = background & ~edge
    assert hidden[sel].sum() > 200  # the test does cover an occluded region
    agree = (valid[sel] == expect[sel]).mean()
    assert agree > 0.995, agree
    # the warped position of a valid pixel is its surface point's projection in view a
    assert np.isfinite(pos[valid]).all()


def test_warp_carries_texture_exactly_at_the_true_geometry():
    from mfnet_core.render import render_textured

    verts, faces = _planes()
    uv = torch.as_tensor((verts[:, :2].numpy() + 0.1) / 0.2)
    tex = torch.as_tensor(_texture(256))
    photos = []
    for yaw in (0.0, 20.0):
        rot = axis_angle_to_matrix(
            torch.tensor([[0.0, math.radians(yaw), 0.0]], dtype=torch.float64)
        )[0]
        v_cam = verts @ rot.T + torch.tensor([0.0, 0.0, -0.6], dtype=torch.float64)
        cam = torch.as_tensor(Intrinsics.from_fov(256, 256, 30.0).as_vector(), dtype=torch.float64)
        img, _, _ = render_textured(
            to_screen(v_cam[None], cam[None])[0], None, faces, uv, faces, tex, 256, 256
        )
        photos.append((img.clamp(0, 1).numpy() * 255).astype(np.uint8))
    view_b, _, _ = _view(verts, faces, 0.0, photos[0])
    view_a, _, _ = _view(verts, faces, 20.0, photos[1])
    warped, valid, _ = fl.warp_to_view(view_a, view_b, faces)
    core = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    err = np.abs(warped - view_b.photo)[core].mean()
    assert err < 0.02, err


def test_landmark_box_mask_halves_and_mouth():
    # A frontal face of 68 landmarks from the test-head-like layout: use a real render's.
    lm = np.zeros((68, 2))
    t = np.linspace(-1, 1, 17)
    lm[:17] = np.stack([100 + 80 * t, 150 + 60 * (1 - t**2) ** 0.5], 1)  # jaw, chin at the bottom
    lm[17:22] = np.stack([np.linspace(35, 90, 5), np.full(5, 90)], 1)
    lm[22:27] = np.stack([np.linspace(110, 165, 5), np.full(5, 90)], 1)
    lm[27:31] = np.stack([np.full(4, 100), np.linspace(100, 140, 4)], 1)
    lm[31:36] = np.stack([np.linspace(88, 112, 5), np.full(5, 148)], 1)
    lm[36:42] = np.stack([np.linspace(45, 80, 6), np.full(6, 105)], 1)
    lm[42:48] = np.stack([np.linspace(120, 155, 6), np.full(6, 105)], 1)
    a = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    lm[48:60] = np.stack([100 + 25 * np.cos(a), 175 + 8 * np.sin(a)], 1)
    lm[60:68] = lm[48:56]
    full = fl.landmark_box_mask(lm, 0.0, 0.0, (256, 256))
    right_only = fl.landmark_box_mask(lm, 35.0, 0.0, (256, 256))
    left_only = fl.landmark_box_mask(lm, -35.0, 0.0, (256, 256))
    assert full[130, 50] and full[130, 150]
    assert right_only[130, 50] and not right_only[130, 150]  # subject's right = image left
    assert left_only[130, 150] and not left_only[130, 50]
    assert not full[175, 100]  # mouth excluded
    assert full[80, 60]  # the band above the brows (brow_lift) is included
    assert not fl.landmark_box_mask(lm, 0.0, 0.0, (256, 256), brow_lift=0.0)[80, 60]
    # both views turned away from each other: only the strip around the nose remains
    both = fl.landmark_box_mask(lm, 35.0, -35.0, (256, 256))
    assert both.sum() < 0.25 * full.sum()


def test_dis_flow_recovers_a_known_shift_under_exposure_change():
    img = _texture(256, 3)
    shift = np.float32([[1, 0, 2.5], [0, 1, -1.25]])
    moved = cv2.warpAffine(
        img, shift, (256, 256), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    src = fl.flow_input(img, 3.0)
    dst = fl.flow_input(np.clip(moved * 1.3 + 0.02, 0, 1), 3.0)  # brighter, offset
    flow = fl.estimate_flow(src, dst)
    med = np.median(flow[40:-40, 40:-40].reshape(-1, 2), axis=0)
    np.testing.assert_allclose(med, [2.5, -1.25], atol=0.1)


def test_raft_is_never_downloaded():
    src = np.zeros((64, 64), np.uint8)
    with pytest.raises(MfnetError, match="weights"):
        fl.estimate_flow(src, src, method="raft")
    with pytest.raises(MfnetError, match="not found"):
        fl.estimate_flow(src, src, method="raft", raft_weights="/nonexistent/raft.pth")


def test_transfer_points_is_identity_within_one_view():
    rng = np.random.default_rng(0)
    corners = torch.as_tensor(rng.normal(size=(2, 5, 3, 3)) * 0.02 + [0, 0, -0.6])
    cam = torch.tensor([500.0, 500.0, 128.0, 128.0], dtype=torch.float64)
    scr = fl.project_depth(corners[0], cam)
    q = (scr[:, :, :2] * torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)[None, :, None]).sum(1)
    out = fl.transfer_points(corners, corners, cam, cam, q)
    np.testing.assert_allclose(out[0].numpy(), q.numpy(), atol=1e-9)


@pytest.fixture(scope="module")
def subject(test_head_assets):
    flame = FLAME(test_head_assets, n_shape=100, n_expr=50)
    opts = RealisticOptions(
        image_size=640,
        texture_size=512,
        expression_jitter=0.0,
        jaw_jitter=0.0,
        landmarks=LandmarkErrorModel(),
    )
    return flame, make_realistic_subject(flame, seed=5, options=opts)


def _fitter_at_truth(flame, subj, losses=("landmarks", "eye", "lip", "reg")):
    lm = np.stack([v.landmarks_true for v in subj.views])
    opts = FitOptions(losses=losses)
    f = MultiViewFitter(flame, lm, [v.intrinsics for v in subj.views], opts, torch.device("cpu"))
    set_params(f, subj.fit_params())
    return f


def _flows(f, photos, size=320, workers=1):
    faces = f.head.faces
    tri = fl.face_faces(faces.numpy(), f.head.face_region)
    with torch.no_grad():
        ev = f.evaluate(with_vertices=True)
    views = fl.render_views(
        ev["vertices_cam"],
        f.camera,
        faces,
        tri,
        photos,
        ev["landmarks_px"],
        f.contour_yaw(),
        size,
        workers=workers,
    )
    return views, fl.all_pair_flows(views, faces, fl.FlowOptions(size=size), workers=workers)


def test_pair_flows_on_two_threads_equal_one(subject):
    """The dense rounds render the views and run the pairs on a second thread: the same
    renders, and the same pairs, order and samples."""
    flame, subj = subject
    photos = [v.photo.rgb for v in subj.views]
    f = _fitter_at_truth(flame, subj)
    (views_1, one), (views_2, two) = _flows(f, photos), _flows(f, photos, workers=2)
    assert len(views_1) == len(views_2) == 3
    for v, w in zip(views_1, views_2, strict=True):
        assert torch.equal(v.fragments.face_index, w.fragments.face_index)
        assert torch.equal(v.fragments.bary, w.fragments.bary)
        np.testing.assert_array_equal(v.face_mask, w.face_mask)
        np.testing.assert_array_equal(v.photo, w.photo)
    assert [(p.a, p.b) for p in one] == [(p.a, p.b) for p in two] and len(one) == 4
    for p, q in zip(one, two, strict=True):
        np.testing.assert_array_equal(p.faces, q.faces)
        np.testing.assert_array_equal(p.anchor_a, q.anchor_a)
        np.testing.assert_array_equal(p.target_b, q.target_b)
        assert p.stats == q.stats


def test_flow_loss_is_zero_at_truth_and_points_the_right_way(subject):
    from mfnet_core.fit import dense as dfm
    from mfnet_core.metrics import vertex_error_mm

    flame, subj = subject
    photos = [v.photo.rgb for v in subj.views]
    # Only the flow (and the tiny regulariser): landmarks must not be what pulls back.
    f = _fitter_at_truth(flame, subj, losses=("reg",))
    _views, pfs = _flows(f, photos)
    assert len(pfs) == 4  # the +-35 degree pair is skipped (too little overlap)
    flow_at_truth = np.median([p.stats["median_flow_px"] for p in pfs])
    assert flow_at_truth < 0.5, flow_at_truth
    with torch.no_grad():
        ev = f.evaluate(with_vertices=True)
        loss_truth = float(fl.flow_loss(ev["vertices_cam"], f.camera, flame.faces, pfs, f.scale))
    # Shape off: a few identity components moved by about one standard deviation.
    true_shape = f.params.shape.clone()
    delta = torch.zeros_like(true_shape)
    delta[0, :6] = torch.tensor([1.2, -1.0, 0.8, 0.8, -0.6, 0.6])
    with torch.no_grad():
        f.params.shape.copy_(true_shape + delta)
    region = flame.face_region
    err_off = np.median(vertex_error_mm(f.result().vertices_model, subj.vertices_true, region))
    _views, pfs_off = _flows(f, photos)
    flow_off = np.median([p.stats["median_flow_px"] for p in pfs_off])
    assert flow_off > 2 * flow_at_truth + 0.3, (flow_off, flow_at_truth)
    f.params.shape.requires_grad_(True)
    ev = f.evaluate(with_vertices=True)
    loss_off = fl.flow_loss(ev["vertices_cam"], f.camera, flame.faces, pfs_off, f.scale)
    (grad,) = torch.autograd.grad(loss_off, f.params.shape)
    f.params.shape.requires_grad_(False)
    assert float(loss_off.detach()) > 3 * loss_truth, (float(loss_off.detach()), loss_truth)
    # The loss decreases towards the truth: descent direction and truth direction agree.
    cos = float((-grad[0]) @ (-delta[0]) / (grad[0].norm() * delta[0].norm()))
    assert cos > 0.2, cos
    # Gauss-Newton on the flow term alone, re-estimating the flow each round, heads back.
    errs = [err_off]
    for _round in range(3):
        f.refine_with([dfm.FlowTerm(f, _flows(f, photos)[1], 1.0)], 5)
        errs.append(
            np.median(vertex_error_mm(f.result().vertices_model, subj.vertices_true, region))
        )
    print("flow-only rounds, median vertex error mm:", np.round(errs, 3))
    assert errs[1] < errs[0] and errs[-1] < 0.6 * errs[0], errs


def test_pictures(subject):
    flame, subj = subject
    photos = [v.photo.rgb for v in subj.views]
    f = _fitter_at_truth(flame, subj)
    faces = f.head.faces
    tri = fl.face_faces(faces.numpy(), f.head.face_region)
    with torch.no_grad():
        ev = f.evaluate(with_vertices=True)
    views = fl.render_views(
        ev["vertices_cam"], f.camera, faces, tri, photos, ev["landmarks_px"], f.contour_yaw(), 256
    )
    pf = fl.pair_flow(views[0], views[1], faces, 0, 1)
    panel = fl.pair_panel(views[1], pf, ("left", "front"))
    assert panel.shape == (256, 768, 3) and panel.dtype == np.uint8
    rgb = fl.flow_to_rgb(pf.flow, pf.mask)
    assert rgb.shape == (256, 256, 3) and (rgb[~pf.mask] == 0).all()
    assert pf.mask.sum() > 500 and (pf.mask <= (pf.box & views[1].face_mask)).all()


@pytest.mark.parametrize("flow_size", [320, 160])
def test_training_flow_targets_at_a_smaller_working_size_are_in_photo_pixels(subject, flow_size):
    """`loss.flow_size` runs the training flow term below the crop's resolution; its targets
    must still be in the crop's (here the photo's) pixels: at the true mesh every target is
    where the mesh carries its anchor, to within the estimator's noise at that size."""
    from training.losses import flow_context, person_flow_targets

    flame, subj = subject
    f = _fitter_at_truth(flame, subj)
    with torch.no_grad():
        ev = f.evaluate(with_vertices=True)
    verts = ev["vertices_cam"].double()
    photo_size = subj.views[0].photo.rgb.shape[0]
    task = (
        verts.numpy(),
        f.camera.double().numpy(),
        np.stack([v.photo.rgb for v in subj.views]),
        ev["landmarks_px"].double().numpy(),
        f.contour_yaw().double().numpy(),
        0,
    )
    faces = flame.faces
    ctx = flow_context(faces.numpy(), flame.face_region, photo_size, 200, flow_size)
    assert ctx["opts"].size == flow_size
    pairs = person_flow_targets(task, ctx)
    assert len(pairs) == 4
    for pf in pairs:
        tri = faces[torch.as_tensor(pf.faces)]
        carried = fl.transfer_points(
            verts[pf.a][tri][None],
            verts[pf.b][tri][None],
            f.camera[pf.a].double(),
            f.camera[pf.b].double(),
            torch.as_tensor(pf.anchor_a, dtype=torch.float64),
        )[0]
        miss = (carried - torch.as_tensor(pf.target_b, dtype=torch.float64)).norm(dim=-1)
        # ~0.3 working px of DIS noise, in photo px; a unit slip would be hundreds of px.
        assert float(miss.median()) < 0.6 * photo_size / flow_size, (pf.a, pf.b, miss.median())


def test_pair_plan_keeps_the_cost_linear_in_the_photos():
    """Left/front/right: the front with each side, both ways; the sides with each other are
    left out (opposite sides). Nine photos: each view compared with at most
    `max_partners` others, its nearest in yaw, so the pairs grow linearly; every pair left
    out is listed with its reason."""
    from mfnet_core.fit.flow import FlowOptions, pair_plan

    pairs, skipped = pair_plan([-35.0, 0.0, 35.0])
    assert sorted(pairs) == [(0, 1), (1, 0), (1, 2), (2, 1)]
    assert sorted((a, b) for a, b, _ in skipped) == [(0, 2), (2, 0)]
    assert all("opposite sides" in why for _, _, why in skipped)

    yaws = list(np.linspace(-40, 40, 9))
    pairs, skipped = pair_plan(yaws)
    assert len(pairs) + len(skipped) == 9 * 8
    per_view = np.bincount([b for _, b in pairs], minlength=9)
    assert per_view.max() <= FlowOptions().max_partners and per_view.min() >= 2
    for a, b in pairs:  # the nearest: no kept partner is further than a dropped one
        dropped = [abs(yaws[x] - yaws[b]) for x, y, w in skipped if y == b and "nearest" in w]
        assert not dropped or abs(yaws[a] - yaws[b]) <= min(dropped)
    everything, _ = pair_plan(yaws, FlowOptions(max_partners=None))
    assert len(pairs) == 9 * FlowOptions().max_partners < len(everything)
    assert set(pairs) <= set(everything)

    # and the samples: all pairs together take at most samples_per_view per photo, so the
    # dense stage's rows grow with the photos, not with their pairs
    from mfnet_core.fit.flow import MIN_PAIR_SAMPLES, pair_sample_cap

    o = FlowOptions()
    assert pair_sample_cap(o, 3, 4) == o.max_samples  # left/front/right: unchanged
    cap9 = pair_sample_cap(o, 9, len(pairs))
    assert cap9 * len(pairs) <= o.samples_per_view * 9 and cap9 < o.max_samples
    assert pair_sample_cap(o, 2, 1000) == MIN_PAIR_SAMPLES
    assert pair_sample_cap(FlowOptions(samples_per_view=None), 9, len(pairs)) == o.max_samples
