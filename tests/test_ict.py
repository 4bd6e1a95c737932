"""The shipped ICT Face Model behind the head-model interface: files, units, joints, contour
landmarks, bounded expressions, painted parts, and a fit through the interface."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mfnet_core.errors import MfnetError
from mfnet_core.head.flame import joined_bases
from mfnet_core.head.ict import (
    ICT_LICENCE_FILE,
    ICT_MODEL_FILE,
    ICTFaceModel,
    contour_table,
    load_ict_assets,
)
from mfnet_core.head.interface import MAX_YAW_DEG
from mfnet_core.head.registry import load_head_model, resolve_kind

ARKIT_SAMPLE = ("eyeBlink_L", "jawOpen", "mouthSmile_R", "browInnerUp_L", "cheekPuff_R")


@pytest.fixture(scope="module")
def assets():
    return load_ict_assets()


@pytest.fixture(scope="module")
def ict(assets):
    return ICTFaceModel(assets).eval()


def test_shipped_with_licence_and_registered():
    assert ICT_MODEL_FILE.is_file()
    licence = ICT_LICENCE_FILE.read_text()
    assert "MIT" in licence and "USC Institute for Creative Technologies" in licence
    assert resolve_kind("ict") == "ict"
    assert resolve_kind("auto", None) in ("ict", "flame")  # FLAME only where the user has it
    head = load_head_model("ict")
    assert isinstance(head, ICTFaceModel) and head.n_shape == 100 and head.n_expr == 53


def test_bases_are_shared_not_copied(assets, ict):
    """The loader writes both bases into one array and the model's buffers use it, the
    posedirs too (copies of 48 + 11 MB were 0.4 s of a cold start); any other pair is
    joined by a copy."""
    n_s = assets.shapedirs.shape[2]
    assert np.shares_memory(ict.blend_dirs.numpy(), assets.shapedirs)
    assert np.shares_memory(ict.blend_dirs.numpy(), assets.exprdirs)
    assert np.array_equal(ict.blend_dirs[:, :, :n_s].numpy(), assets.shapedirs)
    assert np.array_equal(ict.blend_dirs[:, :, n_s:].numpy(), assets.exprdirs)
    assert np.shares_memory(ict.posedirs.numpy(), assets.posedirs)
    assert not ict.posedirs.any() and ict.posedirs.shape == (36, 3 * ict.n_vertices)
    fewer = ICTFaceModel(assets, n_shape=50)  # not adjacent halves: a joined copy
    assert not np.shares_memory(fewer.blend_dirs.numpy(), assets.shapedirs)
    assert np.array_equal(fewer.blend_dirs[:, :, 50:].numpy(), assets.exprdirs)
    assert np.array_equal(fewer.blend_dirs[:, :, :50].numpy(), assets.shapedirs[:, :, :50])
    swapped = joined_bases(assets.exprdirs, assets.shapedirs)
    assert swapped.shape[2] == ict.blend_dirs.shape[2]
    assert not np.shares_memory(swapped, assets.shapedirs)


def test_interface_facts(ict):
    assert ict.info.kind == "ict" and "MIT" in ict.info.licence
    assert ict.info.file_units_to_metres == pytest.approx(0.01)
    space = ict.expression_space
    assert space.prior == "weights" and space.bounded and len(space.names) == 53
    assert set(ARKIT_SAMPLE) <= set(space.names)
    assert np.all(space.lower == 0) and np.all(space.upper == 1)
    assert not ict.shape_space.bounded and ict.shape_space.prior == "normal"
    assert ict.joint_names == ("root", "neck", "jaw", "eye_L", "eye_R")
    assert "jaw" not in ict.posed_joints  # jawOpen is a blendshape in ICT
    # every face has a part; the parts a 3D artist expects are there
    assert len(ict.parts.face_part) == ict.faces.shape[0]
    assert {"skin", "teeth", "gums_tongue", "sclera_L", "iris_R", "eyelashes"} <= set(
        ict.parts.names
    )


def test_metric_human_scale(ict):
    """Centimetres in the file, metres in the product: outer eye corners ~8.9 cm apart."""
    with torch.no_grad():
        v = ict().vertices
        lm = ict.landmarks_3d(v, 0.0)[0]
    assert float((lm[45] - lm[36]).norm()) == pytest.approx(0.089, abs=0.003)
    assert float((lm[42] - lm[39]).norm()) == pytest.approx(0.037, abs=0.003)
    # y up, face toward +z, subject's left on +x (landmark 45 is the left outer corner)
    assert lm[27, 1] > lm[8, 1] and lm[30, 2] > lm[0, 2] and lm[45, 0] > lm[36, 0]


def test_a_damaged_or_edited_file_is_refused(tmp_path):
    bad = tmp_path / "ict_face_model.npz"
    shutil.copy(ICT_MODEL_FILE, bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(MfnetError, match="changed or damaged") as e:
        load_ict_assets(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(MfnetError):
        load_ict_assets(tmp_path / "missing.npz")
    # without the hash check, the damaged zip is still refused with one line
    with pytest.raises(MfnetError) as e:
        load_ict_assets(bad, expected_sha256=None)
    assert "\n" not in str(e.value)


def test_eyeballs_turn_on_their_joints_and_the_jaw_joint_moves_nothing(ict, assets):
    r = assets.regions["vertex_ranges_inclusive"]
    eye = np.arange(r["eyeball_left"][0], r["eyeball_left"][1] + 1)
    lid = np.asarray(assets.regions["multipie68_vertex"])[37:42]
    with torch.no_grad():
        rest = ict()
        look = ict(eye_pose=torch.tensor([[0.0, 0.3, 0.0, 0.0, 0.0, 0.0]]))
        jaw = ict(jaw_pose=torch.tensor([[0.3, 0.0, 0.0]]))
    centre = rest.joints[0, 3]
    d0 = (rest.vertices[0, eye] - centre).norm(dim=-1)
    d1 = (look.vertices[0, eye] - centre).norm(dim=-1)
    assert torch.allclose(d0, d1, atol=1e-6)  # a rigid turn about the eye's centre
    assert float((look.vertices[0, eye] - rest.vertices[0, eye]).norm(dim=-1).max()) > 0.003
    assert torch.equal(look.vertices[0, lid], rest.vertices[0, lid])  # the lids stay
    assert torch.equal(jaw.vertices, rest.vertices)
    # jawOpen opens the mouth and takes the lower teeth with it
    k = ict.expression_space.names.index("jawOpen")
    e = torch.zeros(1, ict.n_expr)
    e[0, k] = 1.0
    with torch.no_grad():
        opened = ict(expression=e)
    teeth = np.arange(r["teeth"][0], r["teeth"][1] + 1)
    drop = (rest.vertices[0, teeth, 1] - opened.vertices[0, teeth, 1]).max()
    assert float(drop) > 0.02
    lm0, lm1 = ict.landmarks_3d(rest.vertices, 0.0)[0], ict.landmarks_3d(opened.vertices, 0.0)[0]
    gap = lambda lm: float((lm[62] - lm[66]).norm())  # noqa: E731 - inner lips apart
    assert gap(lm1) > gap(lm0) + 0.01


def test_joints_follow_the_identity(ict):
    """Joints are means of vertices: a wider head moves the eye joints apart with its eyes."""
    shape = torch.zeros(1, ict.n_shape)
    shape[0, 0] = 3.0
    with torch.no_grad():
        a, b = ict(), ict(shape=shape)
        ja, jb = (
            ict.rest_joints(torch.zeros(1, ict.n_shape), torch.zeros(1, ict.n_expr)),
            (ict.rest_joints(shape, torch.zeros(1, ict.n_expr))),
        )
    assert torch.allclose(a.joints, ja, atol=1e-6) and torch.allclose(b.joints, jb, atol=1e-6)
    assert not torch.allclose(ja, jb)


def test_contour_frontal_turned_and_mirrored(assets):
    """Frontal bins hold the published 68; a side turned toward the camera uses the published
    substitutes; a side turned away slides forward onto the cheek's silhouette; +yaw and
    -yaw are mirror images."""
    emb = assets.landmarks
    reg = assets.regions
    faces = assets.faces
    lm = np.asarray(reg["multipie68_vertex"])
    v = assets.v_template.astype(np.float64)
    on = lambda f, b: (v[faces[f]] * b[..., None]).sum(-2)  # noqa: E731
    front = on(emb.dynamic_faces[MAX_YAW_DEG], emb.dynamic_bary[MAX_YAW_DEG])
    assert np.allclose(front, v[lm[:17]], atol=1e-7)
    k = MAX_YAW_DEG + 30  # yaw +30: the face turns toward +x, the subject's left turns away
    turned = on(emb.dynamic_faces[k], emb.dynamic_bary[k])
    assert np.allclose(turned[:8], v[reg["jawline_right_substitutes_0_7"]], atol=1e-7)
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    out_new = turned[9:16] @ np.array([c, 0, s])
    out_old = v[lm[9:16]] @ np.array([c, 0, s])
    assert np.all(out_new >= out_old - 1e-9) and np.any(out_new > out_old + 5e-4)
    assert np.all(turned[9:16, 2] >= v[lm[9:16], 2] - 1e-6)  # forward, never behind
    # mirror: bin k point i <-> bin 78-k point 16-i, x negated (the mesh is near symmetric)
    mirrored = on(emb.dynamic_faces[2 * MAX_YAW_DEG - k], emb.dynamic_bary[2 * MAX_YAW_DEG - k])
    flip = mirrored[::-1] * np.array([-1, 1, 1])
    assert np.median(np.linalg.norm(flip - turned, axis=1)) < 0.002


def test_contour_table_keeps_frontal_points_below_the_switch():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 3))
    frontal = np.arange(17)
    table = contour_table(v, frontal, frontal[::-1].copy(), np.ones(50, bool))
    assert np.array_equal(table[MAX_YAW_DEG], frontal)
    assert table.shape == (79, 17)


def test_painted_parts_and_atlas(ict):
    uv = ict.uv.uv_coords
    assert uv.min() >= 0 and uv.max() <= 1  # one atlas, not several UDIM tiles
    paint = ict.parts.face_paint()
    teeth = ict.parts.names.index("teeth")
    skin = ict.parts.names.index("skin")
    assert np.allclose(paint[ict.parts.face_part == teeth], ict.parts.painted["teeth"])
    assert np.isnan(paint[ict.parts.face_part == skin]).all()
    # parts do not share texels: the face's cell holds no other part's UVs
    uvf = ict.uv.uv_faces
    centre = uv[uvf].mean(1)
    in_face_cell = (centre[:, 0] < 0.625) & (centre[:, 1] > 0.375)
    assert np.all(ict.parts.face_part[in_face_cell] == skin)


def test_subsets_equal_the_full_model(assets):
    """The fit's vertex and landmark subsets give the full model's vertices (float64)."""
    from mfnet_core.head.subset import LandmarkSubset

    head = ICTFaceModel(assets).double()
    g = torch.Generator().manual_seed(0)
    shape = torch.randn(2, head.n_shape, generator=g, dtype=torch.float64)
    expr = torch.rand(2, head.n_expr, generator=g, dtype=torch.float64)
    eye = torch.tensor([[0.1, 0.2, 0, 0.1, 0.2, 0]] * 2, dtype=torch.float64)
    out = head(shape=shape, expression=expr, eye_pose=eye)
    pose = head.pose_vector(None, None, None, eye, 2, dtype=torch.float64)
    betas = torch.cat([shape, expr], 1)
    ids = torch.arange(0, head.n_vertices, 7)
    verts, joints = head.vertex_subset(ids)(betas, pose)
    torch.testing.assert_close(verts, out.vertices[:, ids], atol=1e-9, rtol=0)
    yaw = torch.tensor([-30.0, 25.0], dtype=torch.float64)
    lmk, _ = LandmarkSubset(head).landmarks(betas, pose, yaw)
    for v in range(2):
        expected = head.landmarks_3d(out.vertices, yaw[v].expand(2))
        torch.testing.assert_close(lmk[:, v], expected, atol=1e-9, rtol=0)


def test_fit_a_synthetic_ict_person(ict, tmp_path):
    """Three renders of a random ICT person (random identity, in-bounds expression): the
    default pipeline (flow on) recovers the face within a millimetre, every fitted weight
    stays in [0, 1], and the painted parts reach the texture."""
    from PIL import Image

    from mfnet_core.metrics import vertex_error_mm
    from mfnet_core.reconstruct import ReconstructOptions, ViewInput, reconstruct
    from mfnet_core.synthetic import make_subject, procedural_texture

    texture = procedural_texture(ict, size=256, seed=3)
    subject = make_subject(ict, texture, seed=3, image_size=512, landmark_noise_px=1.0)
    inputs = [ViewInput(photo=v.photo, landmarks=v.landmarks_noisy) for v in subject.views]
    options = ReconstructOptions(device="cpu", texture_size=512)
    rec = reconstruct(inputs, ict, tmp_path / "out", options)
    expr = rec.fit.params["expression"]
    assert expr.shape == (53,) and expr.min() >= 0 and expr.max() <= 1
    err = vertex_error_mm(rec.fit.vertices_model, subject.vertices_true, ict.face_region)
    print(f"median face vertex error {np.median(err):.3f} mm")
    assert np.median(err) < 1.0, np.median(err)
    tex = np.asarray(Image.open(tmp_path / "out" / "texture.png").convert("RGB"), np.float64)
    s = tex.shape[0]
    uv = ict.uv.uv_coords[ict.uv.uv_faces[ict.parts.face_part == ict.parts.names.index("teeth")]]
    u, v = uv.reshape(-1, 2).mean(0)
    texel = tex[int((1 - v) * s), int(u * s)] / 255
    assert np.abs(texel - np.array(ict.parts.painted["teeth"])).max() < 0.05

    # The eyes: the sclera's front cap is baked from the photos (the renders' irises are
    # dark), the pupils painted; lashes are strands in the texture's alpha channel, which
    # head.glb blends on the lashes only.
    rgba = np.asarray(Image.open(tmp_path / "out" / "texture.png"))
    assert rgba.shape == (s, s, 4)

    def texels(part: str) -> np.ndarray:
        uv = ict.uv.uv_coords[ict.uv.uv_faces[ict.parts.face_part == ict.parts.names.index(part)]]
        px = np.clip((uv.mean(1) * [1, -1] + [0, 1]) * s, 0, s - 1).astype(int)
        return rgba[px[:, 1], px[:, 0]]

    sclera = np.array(ict.parts.painted["sclera_L"]) * 255
    for side in ("L", "R"):
        cornea = texels(f"cornea_{side}")[:, :3].mean(0)
        assert cornea.mean() < 0.7 * sclera.mean(), (side, cornea)
        assert (
            np.abs(
                texels(f"pupil_{side}")[:, :3].mean(0) / 255 - ict.parts.painted[f"pupil_{side}"]
            ).max()
            < 0.05
        )
    assert (texels("skin")[:, 3] == 255).all()
    lash_alpha = texels("eyelashes")[:, 3]
    assert 0.2 < (lash_alpha == 0).mean() < 0.9 and (lash_alpha > 100).any()
    import pygltflib

    glb = pygltflib.GLTF2().load(str(tmp_path / "out" / "head.glb"))
    modes = {m.name: m.alphaMode for m in glb.materials}
    assert (
        modes["eyelashes"] == "BLEND"
        and modes["skin"] == "OPAQUE"
        and modes["cornea_L"] == "OPAQUE"
    )


def _person(ict, expressions: list[np.ndarray], yaws=(-35.0, 0.0, 35.0), size: int = 512):
    """One ICT identity photographed with a different expression per view."""
    from mfnet_core.reconstruct import ViewInput
    from mfnet_core.synthetic import make_subject, procedural_texture

    rng = np.random.default_rng(5)
    texture = procedural_texture(ict, size=256, seed=5)
    shape = rng.normal(size=ict.n_shape).astype(np.float32)
    views = []
    for yaw, e in zip(yaws, expressions, strict=True):
        params = {
            "shape": shape,
            "expression": e.astype(np.float32),
            "jaw_pose": np.zeros(3, np.float32),
            "eye_pose": np.zeros(6, np.float32),
            "neck_pose": np.zeros(3, np.float32),
        }
        subj = make_subject(
            ict,
            texture,
            seed=5,
            yaws_deg=(yaw,),
            image_size=size,
            params=params,
            landmark_noise_px=0.5,
        )
        views.append(subj.views[0])
    return [ViewInput(photo=v.photo, landmarks=v.landmarks_noisy) for v in views]


@pytest.mark.slow  # ~20-30 s on 2 cores
def test_per_photo_expressions_and_the_disagreement_warning(ict, tmp_path):
    """Eyes closed in the left photo only: the fit gives that view its own blink, keeps the
    other views open-eyed, says so in report.json, and keeps each view's weights in
    params.json; --shared-expression (the paper's assumption) gives one expression."""
    import json

    from mfnet_core.fit.landmark_fit import FitOptions
    from mfnet_core.reconstruct import ReconstructOptions, reconstruct

    names = ict.expression_space.names
    blink = np.zeros(ict.n_expr)
    blink[[names.index("eyeBlink_L"), names.index("eyeBlink_R")]] = 1.0
    open_eyes = np.zeros(ict.n_expr)
    inputs = _person(ict, [blink, open_eyes, open_eyes])
    options = ReconstructOptions(device="cpu", texture_size=256)
    rec = reconstruct(inputs, ict, tmp_path / "per_view", options)
    view_e = rec.fit.params["view_expression"]
    k = names.index("eyeBlink_L")
    assert view_e[0, k] > 0.6 and view_e[1, k] < 0.25 and view_e[2, k] < 0.25, view_e[:, k]
    report = json.loads((tmp_path / "per_view" / "report.json").read_text())
    assert any("different expressions" in w and "eyeBlink" in w for w in report["warnings"])
    params = json.loads((tmp_path / "per_view" / "params.json").read_text())
    assert params["expression_names"][k] == "eyeBlink_L"
    assert params["views"][0]["expression"]["eyeBlink_L"] > 0.6

    shared = ReconstructOptions(
        device="cpu", texture_size=256, fit=FitOptions(shared_expression=True)
    )
    rec2 = reconstruct(inputs, ict, tmp_path / "shared", shared)
    e2 = rec2.fit.params["view_expression"]
    assert np.allclose(e2, e2[:1])


def test_eye_caps_split_the_sclera_symmetrically(ict):
    """The sclera shell's front cap is the iris (cornea_L/R) around a pupil: the same number
    of faces on both eyes, mirror images of each other, in front of the eye joints."""
    parts, faces = ict.parts, ict.faces.numpy()
    v = ict.v_template.cpu().numpy()
    centres = v[faces].mean(1)
    counts = {n: int((parts.face_part == parts.names.index(n)).sum()) for n in parts.names}
    for kind in ("cornea", "pupil", "sclera"):
        assert counts[f"{kind}_L"] == counts[f"{kind}_R"] > 10, counts
    assert counts["cornea_L"] + counts["pupil_L"] < counts["sclera_L"]  # a cap, not the ball
    for side in ("L", "R"):
        cap = centres[parts.face_part == parts.names.index(f"cornea_{side}")]
        mirror = centres[
            parts.face_part == parts.names.index(f"cornea_{'R' if side == 'L' else 'L'}")
        ]
        mirror = mirror * [-1, 1, 1]
        d = np.linalg.norm(cap[:, None] - mirror[None], axis=-1).min(1)
        assert d.max() < 1e-4, d.max()
        sclera = centres[parts.face_part == parts.names.index(f"sclera_{side}")]
        assert cap[:, 2].min() > sclera[:, 2].mean()  # the front of the eyeball
