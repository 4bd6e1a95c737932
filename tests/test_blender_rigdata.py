"""The add-on's bpy-free parts: result folder reading, axes, rotations, driver maths, poses,
sequences, backend command lines. Plain pytest, no Blender."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from blender_addon import backend, poses, rigdata
from blender_addon import drivers_math as dm

sys.path.insert(0, str(Path(__file__).parent / "blender"))
from make_fixture_result import make_result  # noqa: E402
from reference_lbs import flame_forward, rodrigues  # noqa: E402


def assert_close(a, b, atol, msg=""):
    """Tolerance assert with the worst error in the message."""
    err = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    assert err <= atol, f"{msg} max error {err:.3g} > {atol:.3g}"


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    return make_result(tmp_path_factory.mktemp("fx") / "result", n_expressions=12, seed=3)


# --------------------------------------------------------------------------- axes


def test_axis_mapping_matches_contract():
    # FLAME: y up, x to the subject's left, face looks +z. Blender: z up, face looks -y.
    f = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    b = rigdata.to_blender(f)
    np.testing.assert_array_equal(b, [[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    np.testing.assert_array_equal(rigdata.to_flame(b), f)
    np.testing.assert_array_equal(rigdata.AXES @ f.T, b.T)
    assert np.isclose(np.linalg.det(rigdata.AXES), 1.0)  # a rotation, not a mirror


def test_up_pointing_bone_axes_are_flame_axes():
    # A bone pointing +Z with roll 0 has local X, Y, Z = Blender X, Z, -Y (Blender's
    # vec_roll_to_mat3). Mapped back to FLAME those are FLAME's x, y, z.
    bone_axes_in_blender = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # rows X, Y, Z
    np.testing.assert_array_equal(rigdata.to_flame(bone_axes_in_blender), np.eye(3))


# --------------------------------------------------------------------------- rotations


def test_quaternion_round_trip_and_matrix():
    rng = np.random.default_rng(0)
    aa = rng.normal(size=(50, 3)) * 0.9
    q = rigdata.axis_angle_to_quaternion(aa)
    assert_close(np.linalg.norm(q, axis=1), 1.0, 1e-12)
    assert_close(rigdata.quaternion_to_axis_angle(q), aa, 1e-10)
    assert_close(rigdata.quaternion_to_matrix(q), rodrigues(aa), 1e-12)
    assert_close(rigdata.quaternion_to_matrix(q * 3.7), rodrigues(aa), 1e-12, "non-unit quaternion")
    assert_close(rigdata.axis_angle_to_quaternion(np.zeros(3)), [1, 0, 0, 0], 0)


def test_continuous_quaternions_flip_to_one_hemisphere():
    q = rigdata.axis_angle_to_quaternion(np.linspace([0, 0, 0], [0, 3.0, 0], 20))
    q[5::2] *= -1
    c = rigdata.continuous_quaternions(q)
    assert np.all(np.einsum("ti,ti->t", c[1:], c[:-1]) > 0)
    assert_close(rigdata.quaternion_to_matrix(c), rigdata.quaternion_to_matrix(q), 1e-12)


# --------------------------------------------------------------------------- drivers


def test_corrective_expressions_equal_r_minus_i():
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.normal(size=4)  # any norm: Blender normalises when it poses the bone
        want = rigdata.quaternion_to_matrix(q) - np.eye(3)
        vals = dict(zip(dm.QUAT_VARS, q, strict=True))
        got = [
            [dm.evaluate(dm.rotation_minus_identity_expr(r, c), vals) for c in range(3)]
            for r in range(3)
        ]
        assert_close(got, want, 1e-12)


def test_pivot_offset_expression_is_i_minus_r_times_d():
    rng = np.random.default_rng(2)
    for _ in range(20):
        q, d = rng.normal(size=4), rng.normal(size=3)
        vals = dict(zip(dm.QUAT_VARS, q, strict=True)) | dict(zip(dm.OFFSET_VARS, d, strict=True))
        got = [dm.evaluate(dm.pivot_offset_expr(r), vals) for r in range(3)]
        assert_close(got, (np.eye(3) - rigdata.quaternion_to_matrix(q)) @ d, 1e-12)


def test_driver_expressions_fit_blenders_limit():
    exprs = [dm.rotation_minus_identity_expr(r, c) for r in range(3) for c in range(3)]
    exprs += [dm.pivot_offset_expr(r) for r in range(3)]
    assert all(len(e) <= dm.MAX_EXPRESSION_LEN for e in exprs)


@pytest.mark.parametrize("n", [1, 7, 100, 300])
def test_linear_combination_chunks(n):
    rng = np.random.default_rng(n)
    coeffs = rng.normal(size=n) * 10.0 ** rng.uniform(-6, -2, size=n)
    coeffs[::9] = 0.0
    values = rng.normal(size=n) * 2
    chunks = dm.linear_combination_chunks(coeffs)
    total = 0.0
    used = []
    for expr, ks in chunks:
        assert len(expr) <= dm.MAX_EXPRESSION_LEN
        total += dm.evaluate(expr, {f"v{i}": values[k] for i, k in enumerate(ks)})
        used += ks
    assert sorted(used) == [k for k in range(n) if coeffs[k] != 0]
    assert abs(total - float(coeffs @ values)) <= 1e-6 * np.abs(coeffs * values).sum() + 1e-15
    assert dm.linear_combination_chunks(np.zeros(4)) == []


def test_evaluate_refuses_anything_but_arithmetic():
    with pytest.raises(ValueError):
        dm.evaluate("__import__('os')", {})
    with pytest.raises(ValueError):
        dm.evaluate("a+q", {"a": 1.0})


def test_rig_maths_equals_flame_forward(fixture_dir):
    """The rig's pieces, composed the way Blender composes them (shape keys, then each bone
    = parent * pivot location * rotation about the rest joint), equal FLAME's LBS."""
    rig = rigdata.load_result(fixture_dir)
    with np.load(fixture_dir / "rig.npz") as z:
        arrays = {k: z[k] for k in z.files}
    rng = np.random.default_rng(4)
    for _ in range(5):
        e = rng.normal(size=rig.n_expressions)
        pose = rng.normal(size=(rig.n_joints, 3)) * 0.3
        q = rigdata.axis_angle_to_quaternion(pose)
        rot = rigdata.quaternion_to_matrix(q)
        # shape keys: expression keys + correctives with driver values
        corr = np.array([
            dm.evaluate(dm.rotation_minus_identity_expr(r, c), dict(zip(dm.QUAT_VARS, q[j], strict=True)))
            for j in range(1, rig.n_joints) for r in range(3) for c in range(3)
        ])  # fmt: skip
        v = (
            rig.vertices
            + np.einsum("k,kvc->vc", e, rig.expression_basis)
            + np.einsum("p,pvc->vc", corr, rig.pose_correctives)
        )
        # bones: pivot offsets from the chunked drivers
        world = []
        for j in range(rig.n_joints):
            d = np.zeros(3)
            for c in range(3):
                for expr, ks in dm.linear_combination_chunks(rig.joint_expression_basis[:, j, c]):
                    d[c] += dm.evaluate(expr, {f"v{i}": e[k] for i, k in enumerate(ks)})
            vals = dict(zip(dm.QUAT_VARS, q[j], strict=True)) | dict(
                zip(dm.OFFSET_VARS, d, strict=True)
            )
            loc = np.array([dm.evaluate(dm.pivot_offset_expr(r), vals) for r in range(3)])
            jt = rig.joints[j]
            m = np.eye(4)
            m[:3, :3] = rot[j]
            m[:3, 3] = jt + loc - rot[j] @ jt  # x -> J + L + R (x - J)
            p = rig.parents[j]
            world.append(m if p < 0 else world[p] @ m)
        t = np.einsum("vj,jab->vab", rig.skin_weights, np.array(world))
        posed = np.einsum("vab,vb->va", t[:, :3, :3], v) + t[:, :3, 3]
        assert_close(posed, flame_forward(arrays, e, pose), 1e-9)


# --------------------------------------------------------------------------- result folder


def test_load_result(fixture_dir):
    rig = rigdata.load_result(fixture_dir)
    assert rig.joint_names == ["root", "neck", "jaw", "eye_L", "eye_R"]
    assert rig.n_expressions == 12 and rig.pose_correctives.shape[0] == 36
    assert rig.texture == fixture_dir / "texture.png"
    names = [n for _, n in rig.corrective_key_names()]
    assert names[0] == "pose_neck_00" and names[-1] == "pose_eye_R_22" and len(set(names)) == 36
    assert [p for p, _ in rig.corrective_key_names()] == list(range(36))
    assert rig.expression_key_names()[:2] == ["exp_000", "exp_001"]
    quats = rig.fitted_quaternions()
    assert set(quats) == {"neck", "jaw", "eye_L", "eye_R"}
    assert_close(rigdata.quaternion_to_axis_angle(quats["jaw"]), rig.fitted_pose["jaw_pose"], 1e-7)
    e = np.ones(rig.n_expressions)
    assert_close(rig.expressed_joints(e), rig.joints + rig.joint_expression_basis.sum(0), 1e-12)


def test_bone_specs_point_up_and_follow_flame_parents(fixture_dir):
    rig = rigdata.load_result(fixture_dir)
    specs = {s.name: s for s in rigdata.bone_specs(rig)}
    for j, name in enumerate(rig.joint_names):
        s = specs[name]
        assert s.deform and s.parent == rigdata.pivot_bone_name(name)
        pivot = specs[s.parent]
        assert pivot.mechanism and not pivot.deform
        want_parent = None if rig.parents[j] < 0 else rig.joint_names[rig.parents[j]]
        assert pivot.parent == want_parent
        head, tail = np.array(s.head), np.array(s.tail)
        assert_close(head, rigdata.to_blender(rig.joints[j]), 1e-12)
        assert tail[2] > head[2] and np.allclose(tail[:2], head[:2])
    assert specs["head"].socket and specs["head"].parent == "neck" and not specs["head"].deform
    order = list(specs)
    assert all(order.index(s.parent) < order.index(n) for n, s in specs.items() if s.parent)


def test_weight_groups_cover_all_weights():
    rng = np.random.default_rng(0)
    w = rng.choice([0.0, 0.25, 0.5, 1.0], size=200).astype(np.float32)
    w[:30] = rng.random(30)
    back = np.zeros_like(w)
    for value, idx in rigdata.weight_groups(w):
        assert value > 0
        back[idx] = value
    np.testing.assert_array_equal(back, w)


def test_loop_arrays(fixture_dir):
    rig = rigdata.load_result(fixture_dir)
    loops, starts, uvs = rigdata.loop_arrays(rig)
    assert loops.dtype == np.int32 and len(loops) == 3 * len(rig.faces)
    np.testing.assert_array_equal(starts[:3], [0, 3, 6])
    np.testing.assert_array_equal(uvs[:2], rig.uv_coords[rig.uv_faces[0, 0]].astype(np.float32))


def _rewrite(folder: Path, **changes) -> None:
    with np.load(folder / "rig.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    np.savez(folder / "rig.npz", **arrays)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format_version": np.array(3)}, "format_version 3"),
        ({"skin_weights": None}, "missing arrays skin_weights"),
        ({"faces": np.array([[0, 1, 99999]], dtype=np.int32)}, "faces"),
        ({"parents": np.array([-1, 0, 1, 5, 1], dtype=np.int32)}, "parents"),
        ({"expression": np.zeros(3, np.float32)}, "K="),
    ],
)
def test_load_result_errors_name_the_problem(fixture_dir, tmp_path, change, message):
    bad = tmp_path / "bad"
    shutil.copytree(fixture_dir, bad)
    _rewrite(bad, **change)
    with pytest.raises(rigdata.ResultError, match=message.replace("(", r"\(")):
        rigdata.load_result(bad)


def test_load_result_not_a_folder(tmp_path):
    with pytest.raises(rigdata.ResultError, match="not a folder"):
        rigdata.load_result(tmp_path / "nope")
    with pytest.raises(rigdata.ResultError, match="rig.npz: missing"):
        rigdata.load_result(tmp_path)


# --------------------------------------------------------------------------- poses, sequences


def test_pose_library_round_trip(tmp_path):
    lib = tmp_path / "poses.json"
    assert poses.load_library(lib) == {}
    p = poses.Pose({"exp_000": 1.5, "exp_003": -0.25}, {"jaw": [0.2, 0.0, 0.0]})
    poses.save_library(lib, {"smile": p, "open": poses.Pose({}, {"jaw": [0.4, 0, 0]})})
    back = poses.load_library(lib)
    assert set(back) == {"smile", "open"} and back["smile"] == p
    assert json.loads(lib.read_text())["format"] == "mfnet-poses"
    lib.write_text('{"format": "other"}')
    with pytest.raises(poses.PoseError, match="not an mfnet pose library"):
        poses.load_library(lib)


def test_sequence_npz_and_json(tmp_path):
    t = 5
    rng = np.random.default_rng(0)
    arrays = {
        "expression": rng.normal(size=(t, 20)),
        "jaw_pose": rng.normal(size=(t, 3)) * 0.1,
        "neck_pose": rng.normal(size=(t, 3)) * 0.1,
        "eye_pose": rng.normal(size=(t, 6)) * 0.1,
        "fps": np.array(25.0),
    }
    np.savez(tmp_path / "seq.npz", **arrays)
    s = poses.load_sequence(tmp_path / "seq.npz")
    assert s.n_frames == t and s.fps == 25.0 and s.root_pose is None
    rots = s.joint_rotations(["root", "neck", "jaw", "eye_L", "eye_R"])
    assert set(rots) == {"neck", "jaw", "eye_L", "eye_R"}
    np.testing.assert_array_equal(rots["eye_R"], arrays["eye_pose"][:, 3:])
    frames = [{"expression": arrays["expression"][i].tolist(), "pose": [0.0] * 6 + arrays["jaw_pose"][i].tolist() + [0.0] * 6}
              for i in range(t)]  # fmt: skip
    for i in range(t):
        frames[i]["pose"][:3] = [0.0, 0.1 * i, 0.0]
    (tmp_path / "seq.json").write_text(json.dumps({"fps": 30, "frames": frames}))
    s2 = poses.load_sequence(tmp_path / "seq.json")
    np.testing.assert_allclose(s2.jaw_pose, arrays["jaw_pose"])
    np.testing.assert_allclose(s2.root_pose[:, 1], 0.1 * np.arange(t))
    cut, dropped = poses.fit_expression_columns(s2.expression, 8)
    assert cut.shape == (t, 8) and dropped == 12
    pad, dropped = poses.fit_expression_columns(s2.expression, 30)
    assert pad.shape == (t, 30) and dropped == 0 and not pad[:, 20:].any()


def test_sequence_errors(tmp_path):
    (tmp_path / "a.json").write_text(
        json.dumps({"jaw_pose": [[0, 0, 0]], "neck_pose": [[0, 0, 0], [0, 0, 0]]})
    )
    with pytest.raises(poses.PoseError, match="different frame counts"):
        poses.load_sequence(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"fps": 30}))
    with pytest.raises(poses.PoseError, match="no expression"):
        poses.load_sequence(tmp_path / "b.json")
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(poses.PoseError, match=".npz, .json or Live Link Face .csv"):
        poses.load_sequence(tmp_path / "c.txt")


# --------------------------------------------------------------------------- backend


def test_reconstruct_command_and_progress_lines():
    paths, views = backend.order_photos({"front": "/p/f.jpg", "left": "", "right": "/p/r.jpg"})
    assert paths == ["/p/f.jpg", "/p/r.jpg"] and views == ["front", "right"]
    cmd = backend.reconstruct_command(
        "py", paths, "/out", views=views, device="cpu", texture_size=2048, expressions=30
    )
    assert cmd[:4] == ["py", "-m", "mfnet_core", "reconstruct"]
    assert cmd[cmd.index("-o") + 1] == "/out" and cmd[cmd.index("--progress") + 1] == "jsonl"
    assert (
        cmd[cmd.index("--views") + 1] == "front,right"
        and cmd[cmd.index("--texture-size") + 1] == "2048"
    )
    with pytest.raises(backend.BackendError):
        backend.reconstruct_command("py", [], "/out")
    assert (
        backend.parse_progress_line('{"stage": "fit", "fraction": 0.5, "message": "x"}')["fraction"]
        == 0.5
    )
    assert backend.parse_progress_line('{"stage": "fit", "fraction": 7}')["fraction"] == 1.0
    assert backend.parse_progress_line("warning: something") is None
    assert backend.parse_progress_line("{not json") is None


def test_photos_in_folder(tmp_path):
    for n in ("b_right.jpg", "a_front.png", "c_left.JPG", "notes.txt"):
        (tmp_path / n).write_bytes(b"")
    paths, views = backend.photos_in_folder(tmp_path)
    assert views == ["left", "front", "right"] and Path(paths[0]).name == "c_left.JPG"
    (tmp_path / "extra.jpg").write_bytes(b"")
    paths, views = backend.photos_in_folder(tmp_path)
    assert views is None and len(paths) == 4


def test_unique_folder(tmp_path):
    assert backend.unique_folder(tmp_path, "a b/c").name == "a_b_c"
    (tmp_path / "head").mkdir()
    assert backend.unique_folder(tmp_path, "head").name == "head_2"


def test_find_backend_python_reports_what_was_tried(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(backend.ENV_PYTHON, raising=False)
    with pytest.raises(backend.BackendError, match="No Python with mfnet_core"):
        backend.find_backend_python("")
    with pytest.raises(backend.BackendError, match="preferences does not work"):
        backend.find_backend_python(str(tmp_path / "missing-python"))
    monkeypatch.setenv(backend.ENV_PYTHON, sys.executable)  # the test venv has mfnet_core
    found = backend.find_backend_python("")
    assert found.source == backend.ENV_PYTHON and found.version


def test_addon_never_imports_torch_or_mfnet_core():
    import ast

    root = Path(__file__).resolve().parents[1] / "blender_addon"
    for py in root.rglob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for n in names:
                assert n.split(".")[0] not in ("torch", "mfnet_core"), f"{py.name} imports {n}"


def test_numpy_reference_equals_smplx_lbs(fixture_dir):
    """The numpy FLAME forward pass the Blender tests compare with is smplx's LBS."""
    torch = pytest.importorskip("torch")
    lbs = pytest.importorskip("smplx.lbs")
    with np.load(fixture_dir / "rig.npz") as z:
        a = {k: z[k] for k in z.files}
    rng = np.random.default_rng(7)
    e = rng.normal(size=len(a["expression"]))
    pose = rng.normal(size=(5, 3)) * 0.3
    v = a["vertices"] + np.einsum("k,kvc->vc", e, a["expression_basis"])
    joints = a["joints"] + np.einsum("k,kjc->jc", e, a["joint_expression_basis"])
    rot = lbs.batch_rodrigues(torch.tensor(pose)).reshape(1, -1, 3, 3)
    feat = (rot[:, 1:] - torch.eye(3, dtype=rot.dtype)).reshape(1, -1)
    pd = torch.tensor(a["pose_correctives"], dtype=torch.float64).reshape(
        len(a["pose_correctives"]), -1
    )
    v_posed = torch.tensor(v)[None] + (feat @ pd).reshape(1, -1, 3)
    _, rel = lbs.batch_rigid_transform(
        rot, torch.tensor(joints)[None], torch.tensor(a["parents"]).long()
    )
    w = torch.tensor(a["skin_weights"], dtype=torch.float64)[None]
    t = (w @ rel.reshape(1, 5, 16)).reshape(1, -1, 4, 4)
    homo = torch.cat([v_posed, torch.ones(1, v_posed.shape[1], 1, dtype=torch.float64)], 2)
    want = (t @ homo[..., None])[0, :, :3, 0].numpy()
    assert_close(flame_forward(a, e, pose), want, 1e-9)
