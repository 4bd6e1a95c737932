"""Dense stages after the landmark fit: the flow term's Gauss-Newton machinery, and the end
to end check that adding flow beats landmarks alone on a fixed synthetic subject with
detector-like landmark errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfnet_core.fit import corner_term as ct
from mfnet_core.fit import dense as dfm
from mfnet_core.fit import flow as fl
from mfnet_core.fit.landmark_fit import FitOptions, fit_landmarks
from mfnet_core.head.flame import FLAME
from mfnet_core.metrics import vertex_error_mm
from mfnet_core.synthetic import RealisticOptions, make_realistic_subject


@pytest.fixture(scope="module")
def flame(test_head_assets):
    return FLAME(test_head_assets, n_shape=100, n_expr=50)


@pytest.fixture(scope="module")
def subject(flame):
    # Seed 2 of the benchmark's set: landmark errors leave ~2.9 mm, flow brings it to ~1.7.
    opts = RealisticOptions(image_size=1024, texture_size=768)
    return make_realistic_subject(flame, seed=2, options=opts)


def _inputs(subj):
    photos = [v.photo.rgb for v in subj.views]
    intr = [v.intrinsics for v in subj.views]
    lmk = np.stack([v.landmarks_noisy for v in subj.views])
    return photos, intr, lmk


def test_vertex_rig_matches_flame(flame):
    ids = torch.arange(0, flame.v_template.shape[0], 7)
    rig = flame.vertex_subset(ids)
    rng = np.random.default_rng(0)
    shape = torch.as_tensor(rng.normal(size=(2, 100)), dtype=torch.float32)
    expr = torch.as_tensor(rng.normal(size=(2, 50)) * 0.5, dtype=torch.float32)
    jaw = torch.tensor([[0.1, 0.0, 0.0], [0.05, 0.01, 0.0]])
    out = flame(shape=shape, expression=expr, jaw_pose=jaw)
    pose = flame.pose_vector(None, None, jaw, None, 2).double()
    verts, joints = rig(torch.cat([shape, expr], 1).double(), pose)
    np.testing.assert_allclose(verts.numpy(), out.vertices[:, ids].numpy(), atol=2e-6)
    np.testing.assert_allclose(joints.numpy(), out.joints.numpy(), atol=2e-6)


def test_flow_term_jacobian_matches_finite_differences(flame, subject, monkeypatch):
    monkeypatch.setattr(ct, "_MIN_CUT_ROWS", 100)  # the normal equations on two threads
    photos, intr, lmk = _inputs(subject)
    fitter = fit_landmarks(flame, lmk, intr, FitOptions())
    tri = fl.face_faces(flame.faces.numpy(), flame.face_region)
    views = dfm._views(fitter, photos, 256, tri)
    pfs = fl.all_pair_flows(views, flame.faces, fl.FlowOptions(size=256, max_samples=60))
    term = dfm.FlowTerm(fitter, pfs, 1.0)
    free = fitter.free_entries("fine")
    x = fitter._gather(free).double()
    irls = term.reweight(free, x)
    r, jac = term.linearise(free, x, irls)
    h = 1e-6
    cols = [0, 5, 60, 100, 120, 150, 152, 153, 157, 161, 166, 170]
    xb = torch.stack([x + h * torch.eye(len(x), dtype=x.dtype)[c] for c in cols])
    r_fd = (term.residuals(free, xb, irls) - term.residuals(free, x[None], irls)) / h
    np.testing.assert_allclose(
        r.numpy(), term.residuals(free, x[None], irls)[0].numpy(), atol=1e-12
    )
    err = (jac[:, cols].T - r_fd).norm() / r_fd.norm()
    assert float(err) < 1e-2, float(err)
    # the solver's pair-by-pair normal equations are the dense Jacobian's, also when the
    # term is cut into two halves of whole view pairs summed on two threads
    halves = term._cut()
    assert len(halves) == 2
    rows = torch.cat([r_ for _half, r_ in halves])
    assert torch.equal(torch.sort(rows).values, torch.arange(len(term.ia)))
    pair_of = term.ia * 100 + term.ib
    assert not set(pair_of[halves[0][1]].tolist()) & set(pair_of[halves[1][1]].tolist())
    jtj, g, cost = term.normal_equations(free, x, irls)
    np.testing.assert_allclose(jtj.numpy(), (jac.T @ jac).numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(g.numpy(), (jac.T @ r).numpy(), rtol=1e-9, atol=1e-9)
    assert cost == pytest.approx(float(r @ r), rel=1e-12)
    assert len(torch.unique(term.ia * 100 + term.ib)) > 1, "several view pairs"


def test_flow_term_jacobian_with_rows_sharing_one_pose():
    """ICT (no jaw skinning): the views' own expression rows share one pose, so the term
    builds one affine rig map for all of them (`corner_term._affine_rows`); its Jacobian,
    each row's expression columns included, still matches finite differences."""
    from mfnet_core.head.registry import load_head_model

    ict = load_head_model("ict")
    subj = make_realistic_subject(ict, seed=1, options=RealisticOptions(image_size=512))
    photos, intr, lmk = _inputs(subj)
    fitter = fit_landmarks(ict, lmk, intr, FitOptions(iterations=(4, 4, 4), outlier_rounds=0))
    fitter.set_expression_rows(fitter.n_views)
    with torch.no_grad():
        fitter.params.expression.add_(0.05 * torch.arange(3.0)[:, None])  # rows differ
    tri = fl.face_faces(ict.faces.numpy(), ict.face_region)
    views = dfm._views(fitter, photos, 256, tri)
    pfs = fl.all_pair_flows(views, ict.faces, fl.FlowOptions(size=256, max_samples=60))
    term = dfm.FlowTerm(fitter, pfs, 1.0)
    free = fitter.free_entries("fine")
    assert not bool((fitter.columns(free)["jaw_pose"] >= 0).any()), "ICT's jaw is not free"
    x = fitter._gather(free).double()
    irls = term.reweight(free, x)
    r, jac = term.linearise(free, x, irls)
    expr = fitter.columns(free)["expression"]
    cols = [0, 50, *[int(expr[row, k]) for row in range(3) for k in (3, 20)], len(x) - 1]
    h = 1e-6
    xb = torch.stack([x + h * torch.eye(len(x), dtype=x.dtype)[c] for c in cols])
    r0 = term.residuals(free, x[None], irls)
    r_fd = (term.residuals(free, xb, irls) - r0) / h
    np.testing.assert_allclose(r.numpy(), r0[0].numpy(), atol=1e-12)
    assert float((jac[:, cols].T - r_fd).norm() / r_fd.norm()) < 1e-2
    for c in cols[2:8]:  # each expression row moves only the residuals of its views
        assert float(jac[:, c].abs().max()) > 0


def test_flow_beats_landmarks_only_on_a_fixed_subject(flame, subject):
    photos, intr, lmk = _inputs(subject)
    region = flame.face_region
    fitter = fit_landmarks(flame, lmk, intr, FitOptions())
    err_lmk = np.median(
        vertex_error_mm(fitter.result().vertices_model, subject.vertices_true, region)
    )
    rep = dfm.refine_dense(
        fitter, photos, dfm.DenseOptions(), view_names=["left", "front", "right"]
    )
    err_flow = np.median(
        vertex_error_mm(fitter.result().vertices_model, subject.vertices_true, region)
    )
    print(f"median vertex error: landmarks {err_lmk:.3f} mm, + flow {err_flow:.3f} mm")
    assert err_flow < 0.8 * err_lmk, (err_flow, err_lmk)
    # The report: every term, eq. 6 before/after per pair, PSNR/SSIM per view, pictures.
    for k in ("landmarks", "eye", "lip", "reg", "flow", "total"):
        assert k in rep.loss_terms and np.isfinite(rep.loss_terms[k])
    assert len(rep.pairs) == 4
    assert np.median([p["median_flow_px"] for p in rep.pairs]) < np.median(
        [p["median_flow_px_before"] for p in rep.pairs]
    )
    assert [v["name"] for v in rep.views] == ["left", "front", "right"]
    for v in rep.views:
        assert 15 < v["psnr_face"] < 60 and 0.3 < v["ssim_face"] <= 1.0
    assert "flow_left_to_front" in rep.images and "rerender_front" in rep.images
    assert rep.images["flow_left_to_front"].dtype == np.uint8
    assert {"flow", "report"} <= set(rep.timings_s)


def test_no_dense_terms_leaves_the_fit_alone(flame, subject):
    photos, intr, lmk = _inputs(subject)
    fitter = fit_landmarks(flame, lmk, intr, FitOptions(iterations=(3, 3, 3), outlier_rounds=0))
    before = [t.clone() for t in fitter.params.tensors()]
    rep = dfm.refine_dense(
        fitter, photos, dfm.DenseOptions(losses=("landmarks", "reg"), images=False, report_size=256)
    )
    for a, b in zip(before, fitter.params.tensors(), strict=True):
        assert torch.equal(a, b)
    assert "flow" not in rep.loss_terms and len(rep.views) == 3
