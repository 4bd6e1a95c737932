"""Light removal in the texture bake (outputs/albedo.py), on a synthetic head with a known
albedo photographed under known SH lights.

Scene: the generated test head with `synthetic.skin_texture` (skin tone, mottling, stubble,
brows, lips) as its albedo, rendered from -35/0/+35 degrees of yaw at 512 px by
`render.render_textured` in linear light (albedo decoded from sRGB, times the SH shading,
encoded again), then baked through the true mesh with and without `skin_faces`, and once
through the whole pipeline (`reconstruct`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import torch

from mfnet_core.camera import Intrinsics, axis_angle_to_matrix, to_screen
from mfnet_core.errors import MfnetError
from mfnet_core.fit.landmark_fit import FitOptions
from mfnet_core.inputs.images import photo_from_array
from mfnet_core.outputs.albedo import (
    directional_sh,
    fit_view_light,
    head_skin_faces,
    landmarks_on_mesh,
    remove_lighting,
    sh_shading,
)
from mfnet_core.outputs.texture import BakeView, bake_texture, srgb_to_linear
from mfnet_core.reconstruct import ReconstructOptions, ViewInput, reconstruct
from mfnet_core.render import rasterize, render_textured, sh_basis, vertex_normals
from mfnet_core.synthetic import (
    _euler_to_axis_angle,
    drawn_faces,
    random_params,
    skin_texture,
)

IMG = 512
TEX = 512
YAWS = {"left": -35.0, "front": 0.0, "right": 35.0}
KEY = directional_sh(0.5, 0.5, (0.7, 0.4, 1.0))  # a key light from the upper right
OTHER = directional_sh(0.45, 0.55, (-0.8, 0.3, 0.7), tint=(1.0, 0.93, 0.85))  # warm, left
FLAT = directional_sh(1.0, 0.0, (0.0, 0.0, 1.0))  # the same light from everywhere


@dataclass
class Head:
    model: object
    params: dict
    verts: torch.Tensor  # (V,3) posed mesh, model axes
    pivot: torch.Tensor  # (3,)
    albedo_srgb: np.ndarray  # (TEX,TEX,3) uint8, the truth
    skin: np.ndarray  # (F,) bool skin faces
    skin_texels: np.ndarray  # (TEX,TEX) bool, skin texels of the layout


@pytest.fixture(scope="module")
def head(test_head) -> Head:
    rng = np.random.default_rng(5)
    params = random_params(test_head, rng, expression_scale=0.3)
    t = {k: torch.as_tensor(v)[None] for k, v in params.items()}
    with torch.no_grad():
        out = test_head(
            shape=t["shape"],
            expression=t["expression"],
            neck_pose=t["neck_pose"],
            jaw_pose=t["jaw_pose"],
            eye_pose=t["eye_pose"],
        )
    verts = out.vertices[0]
    skin = head_skin_faces(test_head, verts.numpy())
    uv = torch.as_tensor(test_head.uv.uv_coords, dtype=torch.float32)
    scr = torch.stack([uv[:, 0] * TEX, (1 - uv[:, 1]) * TEX, torch.ones(len(uv))], -1)
    face = rasterize(scr, torch.as_tensor(test_head.uv.uv_faces), TEX, TEX).face_index.numpy()
    texels = (face >= 0) & np.append(skin, False)[face]
    albedo = skin_texture(test_head, TEX, seed=2)
    return Head(test_head, params, verts, out.joints[0, 0], albedo, skin, texels)


def photograph(head: Head, lights: dict[str, np.ndarray]) -> list[BakeView]:
    """One photo per view of `lights` (name -> (9,3) SH in that camera's space), rendered in
    linear light on a grey background."""
    faces, uv_faces = drawn_faces(head.model)
    albedo = torch.as_tensor(srgb_to_linear(head.albedo_srgb))
    cam = torch.as_tensor(Intrinsics.from_fov(IMG, IMG).as_vector())[None]
    views = []
    for name, sh in lights.items():
        aa = _euler_to_axis_angle(YAWS[name], 0.0, 0.0)
        rot = axis_angle_to_matrix(torch.as_tensor(aa, dtype=torch.float32)[None])[0]
        v_cam = (head.verts - head.pivot) @ rot.T + head.pivot + torch.tensor([0, -0.03, -0.6])
        screen = to_screen(v_cam[None], cam)[0]
        img, mask, _ = render_textured(
            screen,
            vertex_normals(v_cam[None], faces)[0],
            faces,
            torch.as_tensor(head.model.uv.uv_coords),
            uv_faces,
            albedo,
            IMG,
            IMG,
            sh_coeffs=torch.as_tensor(sh, dtype=torch.float32),
            normals_kind="normals",
        )
        lin = torch.where(mask[..., None], img.clamp(0, 1), torch.tensor(0.2)).numpy()
        rgb = (lin ** (1 / 2.2) * 255).round().astype(np.uint8)
        normals = vertex_normals(v_cam[None], head.model.faces)[0]
        views.append(BakeView(rgb, screen, normals, name))
    return views


def bake(head: Head, views: list[BakeView], **kw):  # noqa: ANN201
    m = head.model
    return bake_texture(
        views,
        m.faces,
        m.uv.uv_coords,
        m.uv.uv_faces,
        size=TEX,
        face_paint=m.parts.face_paint(),
        occluders=m.parts.opaque(min_alpha=1.0),
        **kw,
    )


def lin(tex: np.ndarray) -> np.ndarray:
    return srgb_to_linear(tex[..., :3]).astype(np.float64)


def error_to_truth(tex: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """RMS linear error on `region` after one least-squares gain per channel: a bake's level
    is the photos' (light times albedo), the truth's is the albedo's."""
    x, y = lin(tex)[region], lin(truth)[region]
    gain = (x * y).sum(0) / (x * x).sum(0)
    return float(np.sqrt(((x * gain - y) ** 2).mean()))


def rms(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    return float(np.sqrt(((lin(a) - lin(b))[region] ** 2).mean()))


@pytest.fixture(scope="module")
def bakes(head):
    """{light: BakeResult} under the key, the other and the flat light (the same in all
    views: a light that stays in front of the camera while the head turns)."""
    out = {}
    for key, sh in (("key", KEY), ("other", OTHER), ("flat", FLAT)):
        views = photograph(head, dict.fromkeys(YAWS, sh))
        out[key] = bake(head, views, skin_faces=head.skin)
    return out


def region(head: Head, res) -> np.ndarray:  # noqa: ANN001
    """Skin texels the photos saw."""
    return head.skin_texels & (res.mask > 0)


def test_albedo_bake_is_closer_to_the_true_albedo(head, bakes):
    for light in ("key", "other"):
        res = bakes[light]
        seen = region(head, res)
        assert seen.sum() > 5000
        shaded = error_to_truth(res.texture_shaded, head.albedo_srgb, seen)
        albedo = error_to_truth(res.texture, head.albedo_srgb, seen)
        assert albedo < 0.5 * shaded, (light, albedo, shaded)
        # everything the photos saw (ears, neck, scalp too), not only the fitted skin
        anywhere = (res.mask > 0) & (head.skin_texels | ~head.skin_texels)
        assert error_to_truth(res.texture, head.albedo_srgb, anywhere) < error_to_truth(
            res.texture_shaded, head.albedo_srgb, anywhere
        )


def test_two_lights_give_nearly_the_same_albedo(head, bakes):
    seen = region(head, bakes["key"]) & region(head, bakes["other"])
    shaded = rms(bakes["key"].texture_shaded, bakes["other"].texture_shaded, seen)
    albedo = rms(bakes["key"].texture, bakes["other"].texture, seen)
    assert albedo < 0.35 * shaded, (albedo, shaded)


def test_flat_light_leaves_the_texture_nearly_unchanged(head, bakes):
    """The stubble darkens the lower face, which a constant-albedo fit partly reads as light
    from above (albedo.py says so); the ridge keeps that small next to a real light."""
    flat = bakes["flat"]
    seen = region(head, flat)
    change = rms(flat.texture, flat.texture_shaded, seen)
    key_change = rms(bakes["key"].texture, bakes["key"].texture_shaded, region(head, bakes["key"]))
    assert change < 0.25 * key_change, (change, key_change)
    diff = np.abs(flat.texture.astype(int) - flat.texture_shaded.astype(int))[seen]
    assert np.median(diff) <= 3 and np.percentile(diff, 95) <= 12, (
        np.median(diff),
        np.percentile(diff, 95),
    )
    # the skin's mean colour is kept: no colour shift, no change of exposure
    mean_a = lin(flat.texture)[seen].mean(0)
    mean_s = lin(flat.texture_shaded)[seen].mean(0)
    np.testing.assert_allclose(mean_a / mean_s, 1.0, atol=0.03)


def test_skin_tone_is_kept_under_a_coloured_light(head, bakes):
    """Dividing the light out keeps the skin's mean colour as the photos show it (the tint of
    the light stays in, as with the shaded bake): no colour shift between the two textures."""
    res = bakes["other"]
    seen = region(head, res)
    ratio = lin(res.texture)[seen].mean(0) / lin(res.texture_shaded)[seen].mean(0)
    assert np.ptp(ratio / ratio.mean()) < 0.02, ratio
    assert 0.85 < ratio.mean() < 1.15, ratio


def test_estimated_light_points_at_the_key_light(bakes):
    """Each view's band-1 coefficients point where the key light is (camera space)."""
    true_dir = KEY[1:4, 0] / np.linalg.norm(KEY[1:4, 0])
    for light in bakes["key"].lighting:
        assert light.sh.shape == (9, 3) and light.level.shape == (3,)
        d = light.sh[1:4].mean(1)
        cos = float(d @ true_dir / np.linalg.norm(d))
        # 20-27 degrees here: the stubble on the lower face tilts it upwards (albedo.py)
        assert cos > np.cos(np.radians(35)), (light.name, np.degrees(np.arccos(cos)))
        assert light.inliers > 0.8
    for light in bakes["flat"].lighting:  # a flat light has no strong direction
        ratio = np.linalg.norm(light.sh[1:4].mean(1)) / light.sh[0].mean()
        key = next(k for k in bakes["key"].lighting if k.name == light.name)
        assert ratio < 0.35 * np.linalg.norm(key.sh[1:4].mean(1)) / key.sh[0].mean()


def test_shaded_texture_is_the_plain_bake(head, bakes):
    """texture_shaded is the bake without light removal (blended in the same pass as the
    albedo: six channels instead of three, so float rounding may move a texel by one level)."""
    views = photograph(head, dict.fromkeys(YAWS, KEY))
    plain = bake(head, views)
    assert plain.lighting is None and plain.texture_shaded is None
    assert_same_texture(plain.texture, bakes["key"].texture_shaded)
    np.testing.assert_array_equal(plain.mask, bakes["key"].mask)
    only = bake(head, views, skin_faces=head.skin, keep_shaded=False)
    assert only.texture_shaded is None
    assert_same_texture(only.texture, bakes["key"].texture)
    assert set(bakes["key"].timings) == {"light_removal"}


def assert_same_texture(a: np.ndarray, b: np.ndarray) -> None:
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


def test_no_blown_out_or_black_texels(head, bakes):
    """The relative shading is clamped: nothing the photos saw gets much brighter than the
    brightest shaded texel, and the de-lit colours stay inside the photos' range."""
    for res in bakes.values():
        seen = res.mask > 0
        a = res.texture[seen].astype(int).sum(1)
        s = res.texture_shaded[seen].astype(int).sum(1)
        assert np.percentile(a, 99.9) <= np.percentile(s, 99.9) + 30
        assert (a == 0).mean() < 1e-3 and (a >= 3 * 254).mean() < 1e-3


def test_a_view_without_skin_keeps_its_colours(head):
    views = photograph(head, {"front": KEY})
    none = np.zeros_like(head.skin)
    res = bake(head, views, skin_faces=none)
    assert any("too little skin" in w for w in res.warnings)
    assert res.lighting[0].sh is None and res.lighting[0].as_json()["sh"] is None
    np.testing.assert_array_equal(res.texture, res.texture_shaded)
    with pytest.raises(ValueError, match="skin_faces has shape"):
        bake(head, views, skin_faces=head.skin[:-1])


def test_skin_faces_leave_out_eyes_lips_and_brows(head):
    m = head.model
    faces = m.faces.numpy()
    verts = head.verts.numpy()
    lm = landmarks_on_mesh(verts, faces, m.landmark_embedding)
    centre = (faces[head.skin].reshape(-1)).tolist()
    used = np.zeros(len(verts), bool)
    used[centre] = True
    for i in (37, 44, 19, 24, 51, 57, 62):  # an eyelid, a brow, the lips
        nearest = np.argmin(np.linalg.norm(verts - lm[i], axis=1))
        assert not used[nearest], i
    cheek = 0.5 * (lm[2] + lm[31])  # between the jaw line and the nose
    cheek_v = np.argmin(np.linalg.norm(verts - cheek, axis=1))
    forehead = lm[27] + 0.8 * (lm[27] - lm[33])
    forehead_v = np.argmin(np.linalg.norm(verts - forehead, axis=1))
    assert used[cheek_v] and used[forehead_v]
    assert 0.05 < head.skin.mean() < 0.6


def test_sh_shading_and_directional_light():
    rng = np.random.default_rng(0)
    n = rng.normal(size=(500, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    sh = rng.normal(size=(9, 3))
    ref = (sh_basis(torch.as_tensor(n)) @ torch.as_tensor(sh)).numpy()
    np.testing.assert_allclose(sh_shading(n, sh), ref, atol=1e-5)
    np.testing.assert_allclose(sh_shading(n, sh[:, 1]), ref[:, 1], atol=1e-5)
    d = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    s = sh_shading(n, directional_sh(0.4, 0.6, d))[:, 0]
    want = 0.4 + 0.6 * np.maximum(n @ d, 0)
    assert np.abs(s - want).max() < 0.06 and np.abs(s - want).mean() < 0.02


def test_fit_recovers_a_light_and_ignores_outliers():
    """A constant albedo under a known light, 10% of the texels replaced by dark hair."""
    rng = np.random.default_rng(1)
    n = rng.normal(size=(3000, 3))
    n[:, 2] = np.abs(n[:, 2]) + 0.5  # the hemisphere a camera sees
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    light = directional_sh(0.5, 0.5, (0.5, 0.3, 1.0))
    colour = np.array([0.5, 0.3, 0.2]) * sh_shading(n, light)
    hair = rng.uniform(size=len(n)) < 0.1
    colour[hair] = 0.03
    sh, robust = fit_view_light(colour, n, np.ones(len(n)))
    assert robust[hair].mean() < 0.2 and robust[~hair].mean() > 0.9
    fitted = sh_shading(n[~hair], sh)
    rel_err = np.abs(fitted / colour[~hair] - 1)
    assert np.median(rel_err) < 0.05, np.median(rel_err)


def test_remove_lighting_divides_a_known_shading(head):
    """On the texture grid: colours = albedo * shading; the result is the albedo up to one
    gain per channel, wherever the shading is within the clamp."""
    s = 64
    rng = np.random.default_rng(2)
    n = rng.normal(size=(s, s, 3))
    n[..., 2] = np.abs(n[..., 2]) + 0.6
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    albedo = np.array([0.45, 0.3, 0.22]) * (1 + 0.05 * rng.normal(size=(s, s, 1)))
    shade = sh_shading(n.reshape(-1, 3), KEY).reshape(s, s, 3)
    colour = (albedo * shade).astype(np.float32)
    w = np.full((s, s), 0.5, np.float32)
    (out,), (light,), warnings = remove_lighting([colour], [n], [w], np.ones((s, s), bool))
    assert not warnings and light.fit_texels == 4000  # a random subset of the skin
    left = np.std(out / albedo / (out / albedo).mean((0, 1)))
    before = np.std(colour / albedo / (colour / albedo).mean((0, 1)))
    assert before > 0.15 and left < 0.3 * before, (left, before)  # the ridge leaves a little
    # the bake's form: normals only on the texels of nonzero weight, colours changed in place
    w[:5] = 0
    (ref,), _, _ = remove_lighting([colour], [n], [w], np.ones((s, s), bool))
    rows = n.reshape(-1, 3)[w.reshape(-1) > 0]
    mine = colour.copy()
    (same,), _, _ = remove_lighting([mine], [rows], [w], np.ones((s, s), bool), in_place=True)
    assert same is mine and np.array_equal(same, ref)
    with pytest.raises(ValueError, match="normals"):
        remove_lighting([colour], [rows[1:]], [w], np.ones((s, s), bool))


@pytest.fixture(scope="module")
def reconstructed(head, test_head, tmp_path_factory):
    """The whole pipeline on three photos under the key light (landmarks exact)."""
    m = head.model
    views = photograph(head, dict.fromkeys(YAWS, KEY))
    cam = torch.as_tensor(Intrinsics.from_fov(IMG, IMG).as_vector())[None]
    inputs = []
    for v in views:
        aa = _euler_to_axis_angle(YAWS[v.name], 0.0, 0.0)
        rot = axis_angle_to_matrix(torch.as_tensor(aa, dtype=torch.float32)[None])[0]
        lm = m.landmarks_3d(head.verts[None], torch.tensor([YAWS[v.name]]))[0]
        lm_cam = (lm - head.pivot) @ rot.T + head.pivot + torch.tensor([0, -0.03, -0.6])
        lm_px = to_screen(lm_cam[None], cam)[0, :, :2].numpy()
        inputs.append(ViewInput(photo=photo_from_array(v.rgb, f"{v.name}.png"), landmarks=lm_px))
    options = ReconstructOptions(
        device="cpu",
        texture_size=TEX,
        expression_keys=5,
        fit=FitOptions(losses=("landmarks", "reg")),
        texture="both",
    )
    rec = reconstruct(inputs, test_head, tmp_path_factory.mktemp("albedo") / "out", options)
    rec.inputs, rec.options = inputs, options  # for the --texture variants below
    return rec


def test_reconstruct_writes_albedo_and_shaded_textures(head, reconstructed):
    out = reconstructed.result_dir
    read = lambda name: cv2.cvtColor(cv2.imread(str(out / name)), cv2.COLOR_BGR2RGB)  # noqa: E731
    albedo, shaded = read("texture.png"), read("texture_shaded.png")
    mask = cv2.imread(str(out / "texture_mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    seen = head.skin_texels & mask
    assert seen.sum() > 5000
    a = error_to_truth(albedo, head.albedo_srgb, seen)
    s = error_to_truth(shaded, head.albedo_srgb, seen)
    assert a < 0.6 * s, (a, s)
    report = json.loads((out / "report.json").read_text())
    lights = report["texture_lighting"]
    assert [x["name"] for x in lights] == [v["name"] for v in report["views"]]
    true_dir = KEY[1:4, 0] / np.linalg.norm(KEY[1:4, 0])
    for x in lights:
        sh = np.array(x["sh"])
        assert sh.shape == (9, 3) and len(x["skin_level_linear"]) == 3
        d = sh[1:4].mean(1)
        assert d @ true_dir / np.linalg.norm(d) > np.cos(np.radians(30)), x


def test_texture_option_picks_what_texture_png_holds(test_head, reconstructed, tmp_path):
    """Default (albedo): no second pass, no texture_shaded.png; shaded: texture.png is the
    photos' colours (the "both" run's texture_shaded.png) and no light is estimated."""
    from dataclasses import replace

    both = reconstructed.result_dir
    read = lambda d, name: cv2.imread(str(d / name))  # noqa: E731
    runs = {}
    for kind in ("albedo", "shaded"):
        options = replace(reconstructed.options, texture=kind)
        runs[kind] = reconstruct(reconstructed.inputs, test_head, tmp_path / kind, options)
    albedo, shaded = runs["albedo"].result_dir, runs["shaded"].result_dir
    assert not (albedo / "texture_shaded.png").exists()
    assert not (shaded / "texture_shaded.png").exists()
    assert np.abs(read(albedo, "texture.png").astype(int) - read(both, "texture.png")).max() <= 1
    diff = np.abs(read(shaded, "texture.png").astype(int) - read(both, "texture_shaded.png"))
    assert (diff > 1).mean() < 0.001, "shaded == the both-run's texture_shaded.png"
    assert json.loads((shaded / "report.json").read_text())["texture_lighting"] == []
    assert len(json.loads((albedo / "report.json").read_text())["texture_lighting"]) == 3
    with pytest.raises(MfnetError, match="texture 'matte'"):
        reconstruct(reconstructed.inputs, test_head, tmp_path / "bad",
                    replace(reconstructed.options, texture="matte"))  # fmt: skip
