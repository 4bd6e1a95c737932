"""The generated test head: FLAME's file format, deterministic, anatomically placed."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mfnet_core.head.flame import FLAME, load_flame_assets
from mfnet_core.head.testhead import (
    ALL_FILES,
    LANDMARK_NAME,
    MASKS_NAME,
    MODEL_NAME,
    TEXTURE_NAME,
    build_test_head,
    ensure_test_head,
    head_file_bytes,
)
from mfnet_core.inputs.safe_pickle import load_npy_object, load_restricted_pickle


@pytest.fixture(scope="module")
def raw(test_head_path):
    return load_restricted_pickle(test_head_path)


@pytest.fixture(scope="module")
def flame(test_head_assets):
    return FLAME(test_head_assets, n_shape=300, n_expr=100)


@pytest.fixture(scope="module")
def rest_landmarks(flame):
    return flame.landmarks_frontal(flame.v_template[None])[0].numpy()


def test_flame_keys_shapes_dtypes(raw):
    v = raw["v_template"]
    n = v.shape[0]
    assert 3000 <= n <= 6000
    assert v.shape == (n, 3) and v.dtype == np.float64
    f = raw["f"]
    assert f.dtype == np.uint32 and f.shape[1] == 3 and f.max() == n - 1
    assert raw["shapedirs"].shape == (n, 3, 400)  # 300 identity + 100 expression
    assert raw["posedirs"].shape == (n, 3, 36)
    assert isinstance(raw["J_regressor"], sp.csc_matrix) and raw["J_regressor"].shape == (5, n)
    np.testing.assert_allclose(np.asarray(raw["J_regressor"].sum(1)).ravel(), 1.0)
    kt = raw["kintree_table"]
    assert kt.shape == (2, 5) and kt[0, 0] == 2**32 - 1 and kt[0, 1:].tolist() == [0, 1, 1, 1]
    w = raw["weights"]
    assert w.shape == (n, 5) and w.min() >= 0
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
    assert raw["mfnet_test_head"] is True and "NOT FLAME" in raw["note"]


def test_side_files(test_head_path):
    folder = test_head_path.parent
    lmk = load_npy_object(folder / LANDMARK_NAME)
    assert lmk["static_lmk_faces_idx"].shape == (51,)
    assert lmk["dynamic_lmk_faces_idx"].shape == (79, 17)
    assert lmk["full_lmk_faces_idx"].shape == (1, 68)
    with np.load(folder / TEXTURE_NAME) as z:
        assert set(z.files) == {"vt", "ft"}
    masks = load_restricted_pickle(folder / MASKS_NAME)
    assert {"face", "left_eyeball", "right_eyeball", "lips", "nose", "neck"} <= set(masks)


@pytest.fixture(scope="module")
def built():
    """A second, independent build (the session fixture wrote the first to disk)."""
    return build_test_head()


def test_deterministic(built, test_head_path):
    files = head_file_bytes(built)
    for name in ALL_FILES:
        on_disk = (test_head_path.parent / name).read_bytes()
        assert hashlib.sha256(files[name]).digest() == hashlib.sha256(on_disk).digest(), name


def test_mesh_is_clean(test_head_assets):
    a = test_head_assets
    f = a.faces
    assert np.all(f[:, 0] != f[:, 1]) and np.all(f[:, 1] != f[:, 2]) and np.all(f[:, 0] != f[:, 2])
    assert len(np.unique(np.sort(f, 1), axis=0)) == len(f)
    assert np.bincount(f.ravel(), minlength=len(a.v_template)).min() > 0
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert counts.max() == 2  # manifold: boundary only at the neck and the mouth slit
    tri = a.v_template[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    assert area.min() > 1e-9


def test_size_and_placement(test_head_assets, rest_landmarks):
    a = test_head_assets
    v = a.v_template
    head = v[v[:, 1] > -0.09]
    width = head[:, 0].max() - head[:, 0].min()
    assert 0.14 < width < 0.19  # ears included
    lm = rest_landmarks
    assert np.argmax(lm[:, 2]) == 30  # the nose tip is the most +z landmark
    assert lm[30, 2] > 0.09 and abs(lm[30, 0]) < 1e-6
    assert abs(v[:, 1].max() - 0.14) < 0.02 and v[:, 1].min() < -0.15  # crown and neck
    j = a.j_regressor @ v
    assert j[0, 1] < j[1, 1] < j[2, 1] < j[3, 1]  # root below neck below jaw below eyes
    np.testing.assert_allclose(j[:3, 0], 0.0, atol=1e-7)
    np.testing.assert_allclose(j[3, 0], -j[4, 0], atol=1e-7)
    assert j[3, 0] > 0.02  # eye_L on the subject's left (+x)


def test_effective_component_counts(test_head_assets):
    a = test_head_assets
    n = a.v_template.shape[0]

    def singular_values(d):
        m = d.reshape(3 * n, -1).astype(np.float64)
        return np.sqrt(np.clip(np.linalg.eigvalsh(m.T @ m)[::-1], 0, None))

    s, e = singular_values(a.shapedirs), singular_values(a.exprdirs)
    assert (s > 0.01 * s[0]).sum() >= 20
    assert (e > 0.01 * e[0]).sum() >= 10
    peak = np.linalg.norm(a.shapedirs, axis=1).max(0) * 1000  # mm per unit std
    assert 3.0 <= peak[0] <= 8.0 and peak[:10].min() >= 2.0 and peak[-1] < 1.0
    assert np.all(np.diff(peak[30:]) <= 1e-6)  # the random tail decays
    epeak = np.linalg.norm(a.exprdirs, axis=1).max(0) * 1000
    assert epeak[:10].min() >= 2.0 and epeak[-1] < 1.0


def test_symmetric_template(test_head_assets):
    v = test_head_assets.v_template
    mirrored = v * [-1, 1, 1]
    from scipy.spatial import cKDTree

    d, _ = cKDTree(v).query(mirrored)
    assert d.max() < 1e-6


def test_jaw_opening_separates_the_lips(flame):
    lm0 = flame.landmarks_3d(flame().vertices, 0.0)[0]
    assert float((lm0[66] - lm0[62]).norm()) < 1e-4  # closed at rest
    out = flame(jaw_pose=torch.tensor([[0.2, 0.0, 0.0]]))
    lm = flame.landmarks_3d(out.vertices, 0.0)[0]
    assert float(lm[62, 1] - lm[66, 1]) > 0.008  # upper lip above the lower by > 8 mm
    assert float((lm[62] - lm0[62]).norm()) < 1e-3  # the upper lip stays


def test_mouth_open_expression_parts_the_lips(flame):
    psi = torch.zeros(1, 100)
    psi[0, 1] = 2.0
    lm = flame.landmarks_3d(flame(expression=psi).vertices, 0.0)[0]
    assert float(lm[62, 1] - lm[66, 1]) > 0.006


def test_eyes_rotate_with_eye_pose_only(flame, test_head_assets):
    a = test_head_assets
    w = a.lbs_weights
    eyes = w[:, 3] + w[:, 4] > 0.5
    assert 100 < eyes.sum() < 1200
    out0 = flame()
    eye = torch.tensor([[0.0, 0.4, 0.0, 0.2, 0.0, 0.0]])
    moved = (flame(eye_pose=eye).vertices - out0.vertices)[0].norm(dim=-1).numpy()
    assert moved[~eyes].max() < 1e-7
    assert moved[w[:, 3] > 0.5].max() > 0.004 and moved[w[:, 4] > 0.5].max() > 0.002
    # eyeball centres are the eye joints (sphere vertices around them)
    j = a.j_regressor @ a.v_template
    r = np.linalg.norm(a.v_template[w[:, 3] > 0.5] - j[3], axis=1)
    assert r.std() < 1e-6 and 0.010 < r.mean() < 0.014


def test_landmarks_on_features(rest_landmarks):
    lm = rest_landmarks
    mirror = [16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    mirror += [26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 27, 28, 29, 30, 35, 34, 33, 32, 31]
    mirror += [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    mirror += [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]
    assert sorted(mirror) == list(range(68))
    np.testing.assert_allclose(lm[mirror] * [-1, 1, 1], lm, atol=1.5e-3)
    x, y = lm[:, 0], lm[:, 1]
    assert (
        np.all(x[0:8] < 0) and np.all(x[9:17] > 0) and np.all(x[36:42] < 0) and np.all(x[42:48] > 0)
    )
    assert np.argmin(y) == 8 or y[8] <= y.min() + 1e-3  # the chin is lowest
    assert y[17:27].min() > y[36:48].max()  # brows above the eyes
    assert y[36:48].min() > y[30] > y[33] > y[51] > y[62] >= y[66] > y[57] > y[8]
    assert x[36] < x[39] < 0 < x[42] < x[45]  # eye corners in order, outer to inner
    eye_w = x[45] - x[42]
    assert 0.018 < eye_w < 0.032 and 0.055 < x[45] - x[36] < 0.1
    assert 0.04 < x[54] - x[48] < 0.06  # mouth width
    assert 0.11 < x[16] - x[0] < 0.17  # face width at the contour ends


def test_contour_moves_to_the_silhouette_when_turning(flame, test_head_assets):
    v = flame.v_template[None]
    lm0 = flame.landmarks_3d(v, 0.0)[0].numpy()
    lm30 = flame.landmarks_3d(v, 30.0)[0].numpy()
    assert np.linalg.norm(lm30[9:17] - lm0[9:17], axis=1).max() > 0.005
    np.testing.assert_allclose(lm30[:9], lm0[:9])
    # seen from the camera (head turned +30 about y), the new points lie further out than
    # the frontal points would: they are on the silhouette of the turned head
    a = np.radians(30.0)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    x_new = (lm30[10:17] @ rot.T)[:, 0]  # (9 sits by the chin, on its lower outline)
    x_old = (lm0[10:17] @ rot.T)[:, 0]
    assert np.all(x_new >= x_old - 1e-6) and (x_new - x_old).max() > 0.003
    # and nothing of the cheek/jaw region sticks out past them at their height
    verts = test_head_assets.v_template @ rot.T
    face = test_head_assets.face_region & (test_head_assets.v_template[:, 2] > 0.0)
    for p in lm30[10:15] @ rot.T:
        band = face & (np.abs(verts[:, 1] - p[1]) < 0.002)
        assert verts[band, 0].max() <= p[0] + 0.004


def test_uv_layout(test_head_assets):
    uv = test_head_assets.uv
    assert uv.uv_coords.min() >= 0 and uv.uv_coords.max() <= 1
    t = uv.uv_coords[uv.uv_faces]
    signed = 0.5 * (
        (t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1])
        - (t[:, 2, 0] - t[:, 0, 0]) * (t[:, 1, 1] - t[:, 0, 1])
    )
    assert np.all(signed > 0)  # no flipped (overlapping) charts
    assert signed.sum() < 1.0


def test_pose_correctives_are_there(test_head_assets):
    pd = test_head_assets.posedirs
    per_joint = np.abs(pd).reshape(len(pd), 3, 4, 9).max((0, 1, 3))
    assert per_joint[0] > 1e-3 and per_joint[1] > 1e-3  # neck and jaw
    assert per_joint[2] == 0 and per_joint[3] == 0  # eyes: none, as in FLAME


def test_loaded_as_test_head_not_flame(test_head_path):
    a = load_flame_assets(test_head_path)
    assert a.kind == "test-head" and "NOT_FLAME" in a.name
    eyes = a.lbs_weights[:, 3:].sum(1) > 0.5
    assert not (a.face_region & eyes).any()


def test_ensure_test_head_regenerates_when_needed(tmp_path, built, monkeypatch):
    import mfnet_core.head.testhead as th

    calls = []
    monkeypatch.setattr(th, "build_test_head", lambda: calls.append(1) or built)
    p = ensure_test_head(tmp_path)
    assert p == tmp_path / MODEL_NAME and all((tmp_path / n).is_file() for n in ALL_FILES)
    stamp = p.stat().st_mtime_ns
    assert ensure_test_head(tmp_path) == p and p.stat().st_mtime_ns == stamp  # cached
    assert len(calls) == 1
    (tmp_path / LANDMARK_NAME).unlink()
    ensure_test_head(tmp_path)
    assert (tmp_path / LANDMARK_NAME).is_file() and len(calls) == 2
    (tmp_path / "generator.txt").write_text("an older generator\n")
    ensure_test_head(tmp_path)
    assert "older" not in (tmp_path / "generator.txt").read_text() and len(calls) == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_eyeballs_stay_rigid_spheres_under_shape(flame, test_head_assets):
    w = test_head_assets.lbs_weights
    g = torch.Generator().manual_seed(4)
    out = flame(shape=torch.randn(1, 300, generator=g))
    joints = out.joints[0].numpy()
    for k in (3, 4):
        r = np.linalg.norm(out.vertices[0, w[:, k] > 0.5].numpy() - joints[k], axis=1)
        assert r.std() < 1e-6
