"""FLAME loading and evaluation, on the generated test head (same file format as FLAME)."""

from __future__ import annotations

import math
import pickle
import shutil

import numpy as np
import pytest
import torch
from smplx.lbs import batch_rodrigues, find_dynamic_lmk_idx_and_bcoords, lbs

from mfnet_core.camera import axis_angle_to_matrix, yaw_pitch_roll_deg
from mfnet_core.errors import MfnetError, ModelNotFoundError
from mfnet_core.head.flame import (
    FLAME,
    flame_bins_to_ours,
    generated_uv,
    lbs_subset,
    load_flame_assets,
    yaw_bin,
)
from mfnet_core.head.testhead import LANDMARK_NAME, MASKS_NAME, TEXTURE_NAME
from mfnet_core.inputs.safe_pickle import load_npy_object, load_restricted_pickle


def close(a, b, atol=1e-6):
    """Max-abs comparison with a readable failure."""
    a = a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)
    b = b.detach().cpu().numpy() if torch.is_tensor(b) else np.asarray(b)
    err = float(np.abs(a - b).max())
    assert err <= atol, f"max abs error {err:.3g} > {atol:.3g}"


@pytest.fixture(scope="module")
def flame(test_head_assets):
    return FLAME(test_head_assets, n_shape=300, n_expr=100)


def _random_params(b: int, seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, sc=1.0: torch.randn(*s, generator=g) * sc * scale  # noqa: E731
    return {
        "shape": r(b, 300),
        "expression": r(b, 100),
        "global_pose": r(b, 3, sc=0.3),
        "neck_pose": r(b, 3, sc=0.2),
        "jaw_pose": r(b, 3, sc=0.1).abs(),
        "eye_pose": r(b, 6, sc=0.2),
        "translation": r(b, 3, sc=0.05),
    }


def test_assets_layout(test_head_assets):
    a = test_head_assets
    v = a.v_template.shape[0]
    assert a.faces.dtype == np.int64 and a.faces.shape[1] == 3
    assert a.shapedirs.shape == (v, 3, 300) and a.exprdirs.shape == (v, 3, 100)
    assert a.posedirs.shape == (v, 3, 36) and a.j_regressor.shape == (5, v)
    assert a.parents.tolist() == [-1, 0, 1, 1, 1]
    assert a.joint_names == ("root", "neck", "jaw", "eye_L", "eye_R")
    assert a.lbs_weights.shape == (v, 5)
    assert a.kind == "test-head" and a.name.endswith("NOT_FLAME.pkl") and len(a.sha256) == 64
    emb = a.landmarks
    assert emb.static_faces.shape == (51,) and emb.dynamic_faces.shape == (79, 17)
    assert emb.full_faces.shape == (68,) and emb.dynamic_bary.shape == (79, 17, 3)
    assert a.uv.uv_faces.shape == a.faces.shape
    assert a.face_region.dtype == bool and 500 < a.face_region.sum() < v


def test_zero_params_give_the_template(flame, test_head_assets):
    out = flame()
    close(out.vertices[0], test_head_assets.v_template)
    close(out.joints[0], test_head_assets.j_regressor @ test_head_assets.v_template)
    b = flame(shape=torch.zeros(3, 10))
    assert b.vertices.shape == (3, test_head_assets.v_template.shape[0], 3)


def test_forward_equals_smplx_lbs_and_subset_lbs(flame):
    """Our vertex-subset LBS (landmark fitting) equals smplx.lbs on the full mesh."""
    p = _random_params(2, seed=1)
    with torch.no_grad():
        out = flame(**p)
        betas = torch.cat([p["shape"], p["expression"]], 1)
        pose = flame.pose_vector(p["global_pose"], p["neck_pose"], p["jaw_pose"], p["eye_pose"], 2)
        ref_v, ref_j = lbs(
            betas, pose, flame.v_template, flame.blend_dirs, flame.posedirs,
            flame.j_regressor, flame.parents, flame.lbs_weights,
        )  # fmt: skip
        close(out.vertices, ref_v + p["translation"][:, None])
        close(out.joints, ref_j + p["translation"][:, None])
        rot = batch_rodrigues(pose.reshape(-1, 3)).reshape(2, -1, 3, 3)
        all_v = torch.arange(flame.v_template.shape[0])
        sub_v, sub_j = lbs_subset(
            betas, rot, flame.v_template, flame.blend_dirs, flame.posedirs,
            flame.j_regressor, flame.parents, flame.lbs_weights, all_v, flame.reg_support,
        )  # fmt: skip
        close(sub_v, ref_v)
        close(sub_j, ref_j)
        for yaw in ([0.0, 0.0], [25.0, -31.0], [60.0, -60.0]):
            y = torch.tensor(yaw)
            fast = flame.landmarks_only(**p, yaw_deg=y)
            close(fast, flame.landmarks_3d(out.vertices, y))
    assert flame.lmk_vertex_ids.numel() < flame.v_template.shape[0] / 4


def test_gradients_flow(flame):
    p = {k: v.clone().requires_grad_(True) for k, v in _random_params(1, seed=2, scale=0.5).items()}
    lmk = flame.landmarks_only(**p, yaw_deg=10.0)
    lmk.square().sum().backward()
    for k, v in p.items():
        assert v.grad is not None and torch.isfinite(v.grad).all(), k
        if k != "eye_pose":  # landmarks sit on the eyelids, not on the eyeballs
            assert v.grad.abs().sum() > 0, k


def test_expression_is_a_linear_offset(flame, test_head_assets):
    psi = torch.zeros(1, 100)
    psi[0, :5] = torch.tensor([1.5, -1.0, 0.5, 2.0, -0.7])
    out = flame(expression=psi)
    expected = test_head_assets.v_template + test_head_assets.exprdirs @ psi[0].numpy()
    close(out.vertices[0], expected, atol=2e-6)


def test_jaw_opens_downward_for_positive_x_rotation(flame, test_head_assets):
    a = test_head_assets
    out0 = flame()
    out = flame(jaw_pose=torch.tensor([[0.25, 0.0, 0.0]]))
    moved = (out.vertices[0] - out0.vertices[0]).norm(dim=-1).numpy()
    jaw_w = a.lbs_weights[:, 2]
    jaw_correctives = np.abs(a.posedirs[:, :, 9:18]).sum((1, 2))
    still = (jaw_w == 0) & (jaw_correctives == 0)
    assert still.sum() > 1000
    assert moved[still].max() < 1e-7
    assert moved[jaw_w > 0.5].min() > 1e-4
    lm0 = flame.landmarks_3d(out0.vertices, 0.0)[0]
    lm = flame.landmarks_3d(out.vertices, 0.0)[0]
    chin_drop = float(lm0[8, 1] - lm[8, 1])
    assert chin_drop > 0.01  # the chin goes down by centimetres
    assert float(lm[8, 2] - lm0[8, 2]) < 0  # and back, as a real jaw
    close(lm[30], lm0[30])  # the nose tip stays
    assert float((lm[66] - lm[62]).norm()) > 0.01  # the lips part


def test_global_yaw_turns_the_face_toward_plus_x(flame):
    out0 = flame()
    root = out0.joints[0, 0]
    nose = flame.landmarks_3d(out0.vertices, 0.0)[0, 30] - root
    assert nose[2] > 0.08 and abs(float(nose[0])) < 1e-6
    pose = torch.tensor([[0.0, math.pi / 2, 0.0]])
    out = flame(global_pose=pose)
    close(out.joints[0, 0], root)  # FLAME rotates about the root joint
    nose90 = flame.landmarks_3d(out.vertices, 90.0)[0, 30] - root
    assert nose90[0] > 0.08 and abs(float(nose90[2])) < 1e-5
    # the camera's yaw convention agrees: this rotation is yaw +90
    yaw = yaw_pitch_roll_deg(axis_angle_to_matrix(pose))[0, 0]
    assert abs(float(yaw) - 90.0) < 1e-3


def test_eye_pose_rotates_only_the_eyes(flame, test_head_assets):
    a = test_head_assets
    out0 = flame()
    eye = torch.zeros(1, 6)
    eye[0, 1] = 0.3  # left eye looks toward +x
    out = flame(eye_pose=eye)
    moved = (out.vertices[0] - out0.vertices[0]).norm(dim=-1).numpy()
    left = a.lbs_weights[:, 3] > 0.5
    assert moved[~left].max() < 1e-7 and moved[left].max() > 1e-3
    c = out0.joints[0, 3]
    close((out.vertices[0, left] - c).norm(dim=-1), (out0.vertices[0, left] - c).norm(dim=-1))
    front = int(np.argmax(np.where(left, a.v_template[:, 2], -np.inf)))
    assert out.vertices[0, front, 0] > out0.vertices[0, front, 0]


def test_shape_moves_joints_and_rest_helpers(flame, test_head_assets):
    beta = torch.zeros(1, 300)
    beta[0, 0] = 3.0
    rest = flame.rest_vertices(beta)
    out = flame(shape=beta)
    close(out.vertices, rest)
    close(out.joints, flame.joints_rest(rest))
    assert (flame.joints_rest(rest) - flame.joints_rest(flame.v_template[None])).norm() > 1e-3
    with pytest.raises(ValueError):
        flame(shape=torch.zeros(1, 301))


def test_dynamic_contour_follows_yaw(flame):
    v = flame.v_template[None].expand(3, -1, -1)
    lm = flame.landmarks_3d(v, torch.tensor([0.0, 30.0, -30.0]))
    close(lm[0, 17:], lm[1, 17:])  # the static part does not depend on yaw
    d_pos = (lm[1] - lm[0]).norm(dim=-1)
    d_neg = (lm[2] - lm[0]).norm(dim=-1)
    # +30: the subject's left cheek (+x, points 9..16) turns away and its points move
    assert d_pos[9:17].max() > 0.005 and d_pos[:8].max() < 1e-9
    assert d_neg[:8].max() > 0.005 and d_neg[9:17].max() < 1e-9
    close(flame.landmarks_frontal(flame.v_template[None])[0], lm[0])


def test_yaw_bin_and_the_flame_table_order_match_smplx():
    """smplx picks FLAME's LUT row from the neck chain's rotation about y; our bin for the
    same rotation (yaw = +angle about y) must select the same row after reordering."""
    table = torch.arange(79)[:, None].repeat(1, 17)
    bary = torch.zeros(79, 17, 3)
    ours = torch.as_tensor(flame_bins_to_ours(table.numpy()))
    np.testing.assert_array_equal(flame_bins_to_ours(ours.numpy()), table.numpy())
    for deg in (-50, -39, -38.6, -20, -1, -0.4, 0, 0.6, 1, 17, 39, 45):
        pose = torch.zeros(1, 15)
        pose[0, 4] = math.radians(deg)  # global rotation about y
        row, _ = find_dynamic_lmk_idx_and_bcoords(
            torch.zeros(1, 10, 3), pose, table, bary, torch.tensor([1, 0])
        )
        mine = ours[yaw_bin(torch.tensor([float(deg)]))]
        assert int(row[0, 0]) == int(mine[0, 0]), deg
    assert yaw_bin(torch.tensor([-100.0, 0.0, 39.4, 100.0])).tolist() == [0, 39, 78, 78]


def test_module_moves_and_casts(flame):
    f64 = FLAME(flame.assets, n_shape=20, n_expr=10).double()
    p = {k: v.double() for k, v in _random_params(1, seed=3).items()}
    p["shape"], p["expression"] = p["shape"][:, :20], p["expression"][:, :10]
    out = f64(**p)
    assert out.vertices.dtype == torch.float64
    if torch.cuda.is_available():
        cu = f64.to("cuda")
        out_cuda = cu(**{k: v.cuda() for k, v in p.items()})
        close(out_cuda.vertices, out.vertices, atol=1e-9)


def test_clamps_component_counts(test_head_assets):
    f = FLAME(test_head_assets, n_shape=1000, n_expr=500)
    assert (f.n_shape, f.n_expr) == (300, 100)
    f = FLAME(test_head_assets, n_shape=5, n_expr=0)
    out = f(shape=torch.ones(1, 5), expression=torch.zeros(1, 0))
    assert out.vertices.shape[1] == test_head_assets.v_template.shape[0]


# -- loading: formats and errors --------------------------------------------------------------


def _copy_side_files(src, dst, names=(LANDMARK_NAME, TEXTURE_NAME, MASKS_NAME)):
    for n in names:
        shutil.copy(src.parent / n, dst / n)


def test_npz_model_loads_like_the_pickle(test_head_path, test_head_assets, tmp_path):
    data = load_restricted_pickle(test_head_path)
    arrays = {k: np.asarray(v.toarray() if hasattr(v, "toarray") else v) for k, v in data.items()}
    arrays = {k: v for k, v in arrays.items() if v.dtype != object}
    npz = tmp_path / "mfnet_test_head_NOT_FLAME.npz"
    np.savez(npz, **arrays)
    _copy_side_files(test_head_path, tmp_path)
    a = load_flame_assets(npz)
    assert a.kind == "test-head"
    close(a.v_template, test_head_assets.v_template)
    close(a.shapedirs, test_head_assets.shapedirs)
    close(a.j_regressor, test_head_assets.j_regressor)


def test_smplx_landmark_files_match_deca_format(test_head_path, test_head_assets, tmp_path):
    """flame_static_embedding.pkl + flame_dynamic_embedding.npy (TF_FLAME / smplx) load to
    the same embedding as DECA's landmark_embedding.npy."""
    deca = load_npy_object(test_head_path.parent / LANDMARK_NAME)
    model = tmp_path / "generic_model.pkl"
    shutil.copy(test_head_path, model)
    with open(tmp_path / "flame_static_embedding.pkl", "wb") as f:
        pickle.dump(
            {
                "lmk_face_idx": deca["static_lmk_faces_idx"].astype(np.uint32),
                "lmk_b_coords": deca["static_lmk_bary_coords"],
            },
            f,
            protocol=2,
        )
    np.save(
        tmp_path / "flame_dynamic_embedding.npy",
        {
            "lmk_face_idx": deca["dynamic_lmk_faces_idx"],
            "lmk_b_coords": deca["dynamic_lmk_bary_coords"],
        },
        allow_pickle=True,
    )
    shutil.copy(test_head_path.parent / TEXTURE_NAME, tmp_path / "FLAME_texture.npz")
    a = load_flame_assets(model)
    ref = test_head_assets.landmarks
    for field in (
        "static_faces",
        "static_bary",
        "dynamic_faces",
        "dynamic_bary",
        "full_faces",
        "full_bary",
    ):
        close(getattr(a.landmarks, field), getattr(ref, field))
    # the face region is estimated without a masks file
    assert a.face_region.sum() > 500
    assert not a.face_region[test_head_assets.lbs_weights[:, 3:].sum(1) > 0.5].any()


def test_uv_from_obj(test_head_path, test_head_assets, tmp_path):
    a = test_head_assets
    model = tmp_path / "generic_model.pkl"
    shutil.copy(test_head_path, model)
    shutil.copy(test_head_path.parent / LANDMARK_NAME, tmp_path / "landmark_embedding.npy")
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in a.v_template]
    lines += [f"vt {u:.7f} {v:.7f}" for u, v in a.uv.uv_coords]
    lines += [
        f"f {f[0] + 1}/{t[0] + 1} {f[1] + 1}/{t[1] + 1} {f[2] + 1}/{t[2] + 1}"
        for f, t in zip(a.faces, a.uv.uv_faces, strict=True)
    ]
    (tmp_path / "head_template.obj").write_text("\n".join(lines) + "\n")
    b = load_flame_assets(model)
    np.testing.assert_array_equal(b.uv.uv_faces, a.uv.uv_faces)
    close(b.uv.uv_coords, a.uv.uv_coords, atol=1e-6)
    assert b.kind == "test-head"  # the flag is inside the pickle, whatever the file name


def test_generated_uv_is_cached(tmp_path, monkeypatch):
    import trimesh

    monkeypatch.setenv("MFNET_CACHE", str(tmp_path / "cache"))
    mesh = trimesh.creation.icosphere(subdivisions=2)
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces, dtype=np.int64)
    uv = generated_uv(v, f)
    assert uv.uv_faces.shape == f.shape and uv.uv_coords.shape[1] == 2
    assert uv.uv_coords.min() >= 0 and uv.uv_coords.max() <= 1
    assert len(list((tmp_path / "cache" / "uv").glob("*.npz"))) == 1
    again = generated_uv(v, f)
    np.testing.assert_array_equal(again.uv_faces, uv.uv_faces)


def test_missing_landmarks_say_where_to_get_them(test_head_path, tmp_path):
    model = tmp_path / "generic_model.pkl"
    shutil.copy(test_head_path, model)
    with pytest.raises(ModelNotFoundError) as err:
        load_flame_assets(model)
    msg = str(err.value)
    assert "landmark_embedding.npy" in msg and "github.com/yfeng95/DECA" in msg
    assert "flame.is.tue.mpg.de" in msg and "generic_model.pkl" in msg


def test_malformed_model_names_file_and_key(test_head_path, tmp_path):
    data = load_restricted_pickle(test_head_path)
    bad = dict(data)
    del bad["posedirs"]
    path = tmp_path / "broken.pkl"
    path.write_bytes(pickle.dumps(bad, protocol=4))
    with pytest.raises(MfnetError, match=r"broken\.pkl.*posedirs"):
        load_flame_assets(path)
    bad = dict(data)
    bad["weights"] = np.zeros((10, 5))
    path.write_bytes(pickle.dumps(bad, protocol=4))
    with pytest.raises(MfnetError, match=r"broken\.pkl.*'weights'"):
        load_flame_assets(path)
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(MfnetError, match="broken.pkl"):
        load_flame_assets(path)
    with pytest.raises(ModelNotFoundError):
        load_flame_assets(tmp_path / "absent.pkl")


def test_bad_landmark_file_names_key(test_head_path, tmp_path):
    model = tmp_path / "generic_model.pkl"
    shutil.copy(test_head_path, model)
    np.save(
        tmp_path / "landmark_embedding.npy",
        {"static_lmk_faces_idx": np.arange(51)},
        allow_pickle=True,
    )
    with pytest.raises(MfnetError, match=r"landmark_embedding\.npy.*static_lmk_bary_coords"):
        load_flame_assets(model)


# -- finding the model (assets.py) --------------------------------------------------------------


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No FLAME anywhere: empty data and cache folders, no MFNET_FLAME_MODEL."""
    monkeypatch.setenv("MFNET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MFNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MFNET_FLAME_MODEL", raising=False)
    return tmp_path


def test_user_dirs_follow_the_environment(clean_env):
    from mfnet_core.inputs.model_files import flame_dir, user_cache_dir, user_data_dir

    assert user_data_dir() == clean_env / "home"
    assert user_cache_dir() == clean_env / "cache"
    assert flame_dir() == clean_env / "home" / "flame"


def test_find_flame_model_order(clean_env, monkeypatch):
    from mfnet_core.inputs.model_files import find_flame_model

    assert find_flame_model(None) is None
    data = clean_env / "home" / "flame"
    data.mkdir(parents=True)
    (data / "FLAME_masks.pkl").write_bytes(b"x")  # side files are not models
    (data / "flame_static_embedding.pkl").write_bytes(b"x")
    assert find_flame_model(None) is None
    (data / "my_flame.pkl").write_bytes(b"x")
    assert find_flame_model(None) == data / "my_flame.pkl"
    (data / "flame2023.pkl").write_bytes(b"x")
    assert find_flame_model(None) == data / "flame2023.pkl"
    (data / "generic_model.pkl").write_bytes(b"x")
    assert find_flame_model(None) == data / "generic_model.pkl"
    env_model = clean_env / "env.pkl"
    env_model.write_bytes(b"x")
    monkeypatch.setenv("MFNET_FLAME_MODEL", str(env_model))
    assert find_flame_model(None) == env_model
    explicit = clean_env / "explicit.pkl"
    explicit.write_bytes(b"x")
    assert find_flame_model(explicit) == explicit
    assert find_flame_model(data) == data / "generic_model.pkl"  # a folder is searched
    with pytest.raises(ModelNotFoundError, match="nope.pkl"):
        find_flame_model(clean_env / "nope.pkl")
    monkeypatch.setenv("MFNET_FLAME_MODEL", str(clean_env / "gone.pkl"))
    with pytest.raises(ModelNotFoundError, match="MFNET_FLAME_MODEL.*gone.pkl"):
        find_flame_model(None)


def test_doctor_report_without_flame(clean_env):
    import sys

    from mfnet_core.doctor import doctor_report

    had_frm = "face_recognition_models" in sys.modules
    rep = doctor_report(None)
    assert rep["ok"] is True and rep["flame_model"] is None
    items = {i["name"]: i for i in rep["items"]}
    flame_item = items["FLAME model"]
    assert not flame_item["ok"] and flame_item["optional"]
    assert "flame.is.tue.mpg.de" in flame_item["fix"] and "MFNET_FLAME_MODEL" in flame_item["fix"]
    assert str(clean_env / "home" / "flame") in flame_item["fix"]
    assert "github.com/yfeng95/DECA" in items["landmark embedding"]["fix"]
    assert "FLAME_texture.npz" in items["UV layout"]["fix"]
    assert "dlib landmarks" in items and "torch / CUDA" in items
    for i in rep["items"]:
        assert set(i) == {"name", "ok", "detail", "fix", "optional"}
    assert had_frm or "face_recognition_models" not in sys.modules  # found, not imported


def test_doctor_report_with_a_model(clean_env, test_head_path):
    from mfnet_core.doctor import doctor_report

    rep = doctor_report(test_head_path)
    items = {i["name"]: i for i in rep["items"]}
    assert items["FLAME model"]["ok"] and rep["flame_model"] == str(test_head_path)
    assert items["landmark embedding"]["ok"]
    bad = doctor_report(clean_env / "missing.pkl")
    assert bad["ok"] is False


def test_load_model_assets(clean_env, test_head_path):
    from mfnet_core.head.registry import load_model_assets

    assert load_model_assets().kind == "ict"  # auto without FLAME: the shipped ICT model
    a = load_model_assets("test-head")
    assert a.kind == "test-head"
    assert (clean_env / "cache" / "testhead" / "v1" / "mfnet_test_head_NOT_FLAME.pkl").is_file()
    b = load_model_assets("auto", test_head_path)
    assert b.source_path == test_head_path and b.sha256 == a.sha256
