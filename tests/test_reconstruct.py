"""End to end on the generated test head: 3 rendered views with known parameters, 1 px
landmark noise, the real pipeline, the result folder read back by independent readers."""

import json

import numpy as np
import pygltflib
import pytest
import trimesh

from mfnet_core.errors import MfnetError
from mfnet_core.flame import FLAME
from mfnet_core.metrics import vertex_error_mm
from mfnet_core.reconstruct import ReconstructOptions, ViewInput, reconstruct
from mfnet_core.synthetic import make_subject, procedural_texture


@pytest.fixture(scope="module")
def demo_run(test_head_assets, tmp_path_factory):
    assets = test_head_assets
    flame = FLAME(assets, n_shape=100, n_expr=50)
    texture = procedural_texture(assets, size=256, seed=3)
    subject = make_subject(flame, texture, seed=3, image_size=512, landmark_noise_px=1.0)
    # Give the views out of order to check that left/front/right come from the fit.
    order = [2, 0, 1]
    inputs = [
        ViewInput(photo=subject.views[i].photo, landmarks=subject.views[i].landmarks_noisy)
        for i in order
    ]
    out = tmp_path_factory.mktemp("rec") / "result"
    rec = reconstruct(
        inputs, assets, out, ReconstructOptions(device="cpu", texture_size=512, expression_keys=20)
    )
    return subject, rec, order, assets


def test_recovers_geometry_and_poses(demo_run):
    subject, rec, order, assets = demo_run
    err = vertex_error_mm(rec.fit.vertices_model, subject.vertices_true, assets.face_region)
    mean_head = FLAME(assets, n_shape=100, n_expr=50)
    import torch

    with torch.no_grad():
        mean_verts = mean_head(shape=torch.zeros(1, 100)).vertices[0].numpy()
    err_mean = vertex_error_mm(mean_verts, subject.vertices_true, assets.face_region)
    assert np.median(err) < 0.5 * np.median(err_mean), (np.median(err), np.median(err_mean))
    assert np.median(err) < 2.0
    # Per-view head rotation recovered within 2 degrees (yaw from the fit vs the truth).
    yaw_true = np.array([-35.0, 0.0, 35.0])[order]
    np.testing.assert_allclose(rec.fit.yaw_pitch_roll[:, 0], yaw_true, atol=2.0)
    assert rec.view_names == ["right", "left", "front"]
    assert np.median(rec.fit.residuals_px) < 2.0


def test_result_folder_contract(demo_run):
    _, rec, _, assets = demo_run
    out = rec.result_dir
    names = {p.name for p in out.iterdir()}
    for f in (
        "rig.npz",
        "params.json",
        "texture.png",
        "texture_mask.png",
        "head.obj",
        "head.mtl",
        "head.glb",
        "report.json",
        "overlay_left.png",
        "overlay_front.png",
        "overlay_right.png",
    ):
        assert f in names, f
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".result")]
    rig = np.load(out / "rig.npz", allow_pickle=False)
    assert int(rig["format_version"]) == 1
    v = rig["vertices"]
    assert v.shape == (assets.n_vertices, 3)
    assert rig["expression_basis"].shape == (20, len(v), 3)
    assert rig["pose_correctives"].shape[0] == 9 * (len(rig["parents"]) - 1)
    np.testing.assert_allclose(rig["skin_weights"].sum(1), 1, atol=1e-5)
    assert str(rig["model_kind"]) == "test-head"
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "test-head"
    assert any("NOT FLAME" in w for w in report["warnings"])
    assert set(report["timings_s"]) >= {"photos", "landmarks", "fit", "texture", "export", "total"}
    assert len(report["views"][0]["landmark_residual_px"]["per_landmark"]) == 68


def test_glb_and_obj_read_back(demo_run):
    _, rec, _, assets = demo_run
    glb = pygltflib.GLTF2().load(str(rec.result_dir / "head.glb"))
    prim = glb.meshes[0].primitives[0]
    assert len(prim.targets) == 20
    assert glb.meshes[0].extras["targetNames"][0] == "exp_000"
    scene = trimesh.load(rec.result_dir / "head.glb")
    mesh = next(iter(scene.geometry.values()))
    assert len(mesh.faces) == len(assets.faces)
    obj = trimesh.load(rec.result_dir / "head.obj", process=False)
    assert len(obj.faces) == len(assets.faces)


def test_existing_result_is_not_overwritten(demo_run, test_head_assets):
    subject, rec, _, _ = demo_run
    inputs = [ViewInput(photo=subject.views[1].photo, landmarks=subject.views[1].landmarks_noisy)]
    with pytest.raises(MfnetError, match="already exists"):
        reconstruct(inputs, test_head_assets, rec.result_dir)


def test_fit_is_robust_to_a_few_wrong_landmarks(test_head_assets):
    """Five landmarks per view moved by 40 px (a detector's bad day) barely move the fit."""
    from mfnet_core.fitting import fit_landmarks

    flame = FLAME(test_head_assets, n_shape=100, n_expr=50)
    texture = procedural_texture(test_head_assets, size=64, seed=5)
    subject = make_subject(flame, texture, seed=5, image_size=512, landmark_noise_px=0.5)
    lmk = np.stack([v.landmarks_noisy for v in subject.views])
    rng = np.random.default_rng(0)
    bad = lmk.copy()
    for v in range(3):
        idx = rng.choice(np.arange(17, 68), size=5, replace=False)
        bad[v, idx] += rng.choice([-1, 1], size=(5, 2)) * 40
    intr = [v.intrinsics for v in subject.views]
    clean = fit_landmarks(flame, lmk, intr).result()
    dirty = fit_landmarks(flame, bad, intr).result()
    region = test_head_assets.face_region
    e_clean = np.median(vertex_error_mm(clean.vertices_model, subject.vertices_true, region))
    e_dirty = np.median(vertex_error_mm(dirty.vertices_model, subject.vertices_true, region))
    assert e_dirty < e_clean + 0.5, (e_clean, e_dirty)
    assert (dirty.landmark_weights < 0.5).sum() >= 12  # most outliers were found


def test_fit_is_deterministic(test_head_assets):
    from mfnet_core.fitting import fit_landmarks

    flame = FLAME(test_head_assets, n_shape=100, n_expr=50)
    texture = procedural_texture(test_head_assets, size=64, seed=6)
    subject = make_subject(flame, texture, seed=6, image_size=512)
    lmk = np.stack([v.landmarks_noisy for v in subject.views])
    intr = [v.intrinsics for v in subject.views]
    a = fit_landmarks(flame, lmk, intr).result()
    b = fit_landmarks(flame, lmk, intr).result()
    np.testing.assert_array_equal(a.vertices_model, b.vertices_model)
