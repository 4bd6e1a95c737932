"""Multi-view UV bake on a synthetic scene with a known texture.

Scene: a unit sphere plus a small sphere in front of it (an occluder for the front view),
UV-unwrapped by xatlas, with a smooth procedural texture; rendered from three yaw angles
with `render_textured`, then baked back and compared with the known texture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import torch
import trimesh
import xatlas

from mfnet_core.outputs.texture import (
    BakeView,
    _bilinear_linear,
    _nearest_pixel,
    bake_texture,
    linear_to_srgb,
    srgb_to_linear,
    uv_layout,
)
from mfnet_core.render import interpolate, rasterize, render_textured, vertex_normals

TEX = 256
IMG = 320
YAWS = {"left": -45.0, "front": 0.0, "right": 45.0}
CAM_DIST = 4.0
SMALL_C = np.array([0.0, 0.0, 1.3])
SMALL_R = 0.25


@dataclass
class Scene:
    faces: torch.Tensor
    uv: torch.Tensor
    uv_faces: torch.Tensor
    verts: torch.Tensor
    truth: np.ndarray  # (TEX,TEX,3) uint8, dilated beyond the islands
    layout: np.ndarray  # (TEX,TEX) bool
    points: np.ndarray  # (TEX,TEX,3) 3D point of each texel
    normals: np.ndarray  # (TEX,TEX,3) analytic normal of each texel
    cams: dict[str, np.ndarray]


def colour_fn(p: np.ndarray) -> np.ndarray:
    r = 0.45 + 0.2 * np.sin(7 * p[..., 0] + 3 * p[..., 1]) * np.cos(5 * p[..., 2])
    g = 0.40 + 0.2 * np.sin(9 * p[..., 1] - 2 * p[..., 2])
    b = 0.35 + 0.2 * np.cos(6 * p[..., 2] + 4 * p[..., 0])
    return np.stack([r, g, b], -1)


def dilate_nearest(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    _, lab = cv2.distanceTransformWithLabels(
        (~mask).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    out = img.copy()
    out[~mask] = img.reshape(-1, img.shape[-1])[np.flatnonzero(mask)[lab[~mask] - 1]]
    return out


@pytest.fixture(scope="module")
def scene() -> Scene:
    big = trimesh.creation.icosphere(subdivisions=3)
    small = trimesh.creation.icosphere(subdivisions=2, radius=SMALL_R)
    small.apply_translation(SMALL_C)
    mesh = trimesh.util.concatenate([big, small])
    vmap, idx, uvs = xatlas.parametrize(mesh.vertices, mesh.faces)
    faces = torch.tensor(vmap[idx].astype(np.int64))
    uv_faces = torch.tensor(idx.astype(np.int64))
    uv = torch.tensor(uvs, dtype=torch.float32)
    verts = torch.tensor(mesh.vertices, dtype=torch.float32)
    scr = torch.stack([uv[:, 0] * TEX, (1 - uv[:, 1]) * TEX, torch.ones(len(uv))], -1)
    fr = rasterize(scr, uv_faces, TEX, TEX)
    layout = (fr.face_index >= 0).numpy()
    points = interpolate(fr, verts, faces).numpy()
    on_small = np.linalg.norm(points - SMALL_C, axis=-1) < SMALL_R + 0.05
    normals = np.where(on_small[..., None], points - SMALL_C, points)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True) + 1e-12
    truth = dilate_nearest(colour_fn(points) * layout[..., None], layout)
    truth = (truth * 255).round().astype(np.uint8)
    cams = {
        n: CAM_DIST * np.array([math.sin(math.radians(y)), 0.0, math.cos(math.radians(y))])
        for n, y in YAWS.items()
    }
    return Scene(faces, uv, uv_faces, verts, truth, layout, points, normals, cams)


def render_views(
    scene: Scene, gains: dict[str, tuple[float, float, float]] | None = None
) -> list[BakeView]:
    views = []
    texture = torch.tensor(scene.truth, dtype=torch.float32) / 255
    for name, yaw in YAWS.items():
        a = math.radians(yaw)
        rot = torch.tensor(
            [[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]]
        )
        vc = scene.verts @ rot.T - torch.tensor([0.0, 0.0, CAM_DIST])
        f = 1.2 * IMG  # everything stays inside the image in every view
        scr = torch.stack(
            [IMG / 2 + f * vc[:, 0] / -vc[:, 2], IMG / 2 - f * vc[:, 1] / -vc[:, 2], -vc[:, 2]], -1
        )
        normals = vertex_normals(vc, scene.faces)
        img, mask, _ = render_textured(
            scr, normals, scene.faces, scene.uv, scene.uv_faces, texture, IMG, IMG
        )
        gain = np.array(gains[name] if gains else (1.0, 1.0, 1.0))
        rgb = img.numpy() * gain + np.array([0.1, 0.6, 0.2]) * (
            1 - mask.numpy()[..., None]
        )  # green screen
        views.append(BakeView((rgb.clip(0, 1) * 255).round().astype(np.uint8), scr, normals, name))
    return views


def facing(scene: Scene, name: str) -> np.ndarray:
    """(TEX,TEX) cosine between a texel's normal and its direction to the camera."""
    to_cam = scene.cams[name] - scene.points
    return (scene.normals * to_cam).sum(-1) / np.linalg.norm(to_cam, axis=-1)


def occluded_by_small(scene: Scene, name: str) -> np.ndarray:
    """(TEX,TEX) bool: the segment from the camera to the texel passes through the small sphere."""
    cam = scene.cams[name]
    d = scene.points - cam
    length = np.linalg.norm(d, axis=-1)
    d = d / length[..., None]
    oc = cam - SMALL_C
    b = (d * oc).sum(-1)
    disc = b**2 - ((oc**2).sum() - SMALL_R**2)
    t_hit = -b - np.sqrt(np.maximum(disc, 0))
    on_big = np.linalg.norm(scene.points, axis=-1) < 1.05
    return (disc > 0) & (t_hit < length - 1e-3) & on_big


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255**2 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def plain_bake(scene):
    views = render_views(scene)
    return views, bake_texture(views, scene.faces, scene.uv, scene.uv_faces, size=TEX)


def test_bake_reproduces_the_known_texture(scene, plain_bake, tmp_path):
    _, res = plain_bake
    assert res.texture.shape == (TEX, TEX, 3) and res.texture.dtype == np.uint8
    assert res.mask.shape == (TEX, TEX) and res.mask.dtype == np.uint8
    seen = res.mask == 255
    assert seen.sum() > 0.25 * scene.layout.sum()
    value = psnr(res.texture[seen], scene.truth[seen])
    assert value > 25, value
    # Seen means seen: texels facing some camera well and not occluded are all in the mask.
    good = np.zeros_like(seen)
    for name in YAWS:
        good |= (facing(scene, name) > 0.5) & ~occluded_by_small(scene, name)
    inner = cv2.erode((good & scene.layout).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert seen[inner].mean() > 0.98
    assert not seen[~scene.layout].any()
    cv2.imwrite(str(tmp_path / "baked.png"), res.texture[..., ::-1])


def test_the_bake_gives_each_view_the_mesh_outline_the_overlays_draw(scene, plain_bake):
    """The overlays draw the outline the bake's z-buffer gives (no second raster): the
    same contours as `mesh_outline` of the mesh in that view."""
    from mfnet_core.outputs.report import mesh_outline

    views, res = plain_bake
    assert len(res.outlines) == len(views)
    for view, outline in zip(views, res.outlines, strict=True):
        h, w = view.rgb.shape[:2]
        ref = mesh_outline(view.verts_screen, scene.faces, h, w)
        assert len(outline) == len(ref) >= 1
        for a, b in zip(outline, ref, strict=True):
            np.testing.assert_array_equal(a, b)


def test_back_side_and_occluded_texels_get_zero_weight(scene, plain_bake):
    _, res = plain_bake
    assert res.per_view_weight.shape == (3, TEX, TEX)
    for i, name in enumerate(YAWS):
        back = (facing(scene, name) < -0.05) & scene.layout
        assert back.sum() > 100
        assert (res.per_view_weight[i][back] == 0).all(), name
    occ = occluded_by_small(scene, "front") & scene.layout
    assert occ.sum() > 100
    assert (res.per_view_weight[1][occ] == 0).all()
    # Nobody sees the far back of the big sphere (z < -0.8): not in the mask.
    far_back = (scene.points[..., 2] < -0.8) & scene.layout
    assert far_back.sum() > 50 and (res.mask[far_back] == 0).all()
    seen = res.mask == 255
    assert np.allclose(res.per_view_weight.sum(0)[seen], 1.0, atol=1e-5)


def test_holes_are_filled_and_islands_have_a_gutter(scene, plain_bake):
    _, res = plain_bake
    holes = scene.layout & (res.mask == 0)
    assert holes.sum() > 0.2 * scene.layout.sum()
    # The truth has no texel darker than ~0.15 * 255 per channel; a fill must not be black.
    assert res.texture[holes].min() > 20
    ring = (
        cv2.dilate(scene.layout.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    ) & ~scene.layout
    assert res.texture[ring].min() > 20
    assert res.texture.reshape(-1, 3).sum(1).min() > 60  # nothing black anywhere
    # Gutter texels next to seen texels copy their island: close to the truth's own
    # nearest-texel dilation.
    near_unseen = cv2.dilate(holes.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    ring_seen = ring & ~near_unseen
    assert ring_seen.sum() > 500
    assert np.abs(res.texture[ring_seen].astype(int) - scene.truth[ring_seen]).mean() < 3


def seam_band(res, scene, width: int = 6) -> np.ndarray:
    """Texels within `width` of a boundary between regions dominated by different views."""
    seen = res.mask == 255
    dom = np.where(seen, res.per_view_weight.argmax(0), -1)
    edge = np.zeros_like(seen)
    for axis in (0, 1):
        a = np.swapaxes(dom, 0, axis)
        diff = (a[1:] != a[:-1]) & (a[1:] >= 0) & (a[:-1] >= 0)
        e = np.swapaxes(edge, 0, axis)
        e[1:] |= diff
        e[:-1] |= diff
    band = cv2.dilate(edge.astype(np.uint8), np.ones((2 * width + 1,) * 2, np.uint8)) > 0
    return band & seen


def test_colour_matching_removes_exposure_seams(scene):
    gains = {"left": (0.75, 0.8, 0.7), "front": (1.0, 1.0, 1.0), "right": (1.25, 1.15, 1.3)}
    views = render_views(scene, gains)
    raw = bake_texture(views, scene.faces, scene.uv, scene.uv_faces, size=TEX, match_colours=False)
    matched = bake_texture(views, scene.faces, scene.uv, scene.uv_faces, size=TEX)
    assert matched.reference == 1  # the view named "front"
    # Gains are estimated in linear light: 1 / g^2.2 relative to the front view.
    np.testing.assert_allclose(matched.gains[0], 1 / np.array(gains["left"]) ** 2.2, rtol=0.04)
    np.testing.assert_allclose(matched.gains[2], 1 / np.array(gains["right"]) ** 2.2, rtol=0.04)
    band = seam_band(matched, scene)
    assert band.sum() > 200
    err_raw = np.abs(raw.texture[band].astype(float) - scene.truth[band]).mean()
    err_matched = np.abs(matched.texture[band].astype(float) - scene.truth[band]).mean()
    assert err_matched < 0.3 * err_raw, (err_raw, err_matched)
    seen = matched.mask == 255
    assert psnr(matched.texture[seen], scene.truth[seen]) > 25


def test_single_view_bigger_texture_and_input_checks(scene, plain_bake):
    views, _ = plain_bake
    calls = []
    res = bake_texture(
        views[1:2],
        scene.faces.numpy(),
        scene.uv.numpy(),
        scene.uv_faces.numpy(),
        size=512,
        progress=lambda f, m: calls.append((f, m)),
    )
    assert res.texture.shape == (512, 512, 3) and res.per_view_weight.shape == (1, 512, 512)
    assert calls and calls[-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in calls)
    assert (res.gains == 1).all()
    bad = BakeView(
        np.zeros((10, 10, 3), np.float32), views[0].verts_screen, views[0].normals_cam, "left"
    )
    with pytest.raises(ValueError, match="left"):
        bake_texture([bad], scene.faces, scene.uv, scene.uv_faces, size=64)
    with pytest.raises(ValueError):
        bake_texture([], scene.faces, scene.uv, scene.uv_faces)


def test_srgb_round_trip():
    x = np.arange(256, dtype=np.uint8)
    assert (linear_to_srgb(srgb_to_linear(x)) == x).all()


def test_srgb_lut_is_the_power_law():
    x = np.arange(256, dtype=np.uint8)
    want = (x.astype(np.float64) / 255) ** 2.2
    assert np.abs(srgb_to_linear(x).astype(np.float64) - want).max() < 1e-7


def test_point_lookups_match_cv2_remap():
    """The bake reads the photo at scattered texel positions (`_nearest_pixel`,
    `_bilinear_linear` on a crop): the same values as cv2.remap over the whole photo."""
    rng = np.random.default_rng(3)
    h, w = 37, 53
    rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    n = 5000
    mx = rng.uniform(-3, w + 2, n).astype(np.float32)
    my = rng.uniform(-3, h + 2, n).astype(np.float32)
    mx[:40] = np.arange(40, dtype=np.float32) * 0.5 - 1.5  # halves: round half to even
    my[:40] = 7.5
    ids = np.arange(h * w, dtype=np.float32).reshape(h, w) + 1  # 0: outside
    want = cv2.remap(ids, mx[None], my[None], cv2.INTER_NEAREST, borderValue=0)[0]
    at, inside = _nearest_pixel(mx, my, h, w)
    assert (np.where(inside, at + 1, 0) == want).all()
    lin = srgb_to_linear(rgb)
    want = cv2.remap(lin, mx[None], my[None], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    assert (_bilinear_linear(rgb, mx, my) == want[0]).all()
    # a cluster away from the border: decoded from a crop, still the same values
    sub = slice(100, 400)
    cx, cy = mx[sub] * 0.2 + 20, my[sub] * 0.2 + 10
    want = cv2.remap(lin, cx[None], cy[None], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    assert (_bilinear_linear(rgb, cx, cy) == want[0]).all()
    assert _bilinear_linear(rgb, mx[:0], my[:0]).shape == (0, 3)


def _small_sphere_faces(scene: Scene) -> np.ndarray:
    centres = scene.verts[scene.faces].mean(1).numpy()
    return np.linalg.norm(centres - SMALL_C, axis=1) < SMALL_R + 0.05


def test_see_through_parts_do_not_hide_what_is_behind_them(scene, plain_bake):
    """`occluders`: a face left out of them (an eyelash card, ICT's eye-occlusion shell)
    no longer keeps the photos from baking what lies behind it (the eyes)."""
    views, res = plain_bake
    small = _small_sphere_faces(scene)
    assert 0 < small.sum() < len(small)
    see_through = bake_texture(
        views, scene.faces, scene.uv, scene.uv_faces, size=TEX, occluders=~small
    )
    # the big sphere's front cap behind the small one (not its back, which the front hides)
    occ = occluded_by_small(scene, "front") & scene.layout & (facing(scene, "front") > 0.3)
    assert occ.sum() > 100 and (res.per_view_weight[1][occ] == 0).all()
    assert (see_through.per_view_weight[1][occ] > 0).mean() > 0.95
    # what nothing covers is baked as before
    free = scene.layout & ~occ & (res.mask == 255)
    diff = np.abs(see_through.texture[free].astype(int) - res.texture[free].astype(int))
    assert np.median(diff) <= 1
    with pytest.raises(ValueError, match="occluders has shape"):
        bake_texture(views, scene.faces, scene.uv, scene.uv_faces, size=TEX, occluders=small[:5])


def test_strand_faces_get_an_alpha_channel_of_strands(scene, plain_bake):
    views, res = plain_bake
    assert res.alpha is None  # no strands asked for: RGB only
    small = _small_sphere_faces(scene)
    out = bake_texture(views, scene.faces, scene.uv, scene.uv_faces, size=TEX, strand_faces=small)
    assert out.alpha.shape == (TEX, TEX) and out.alpha.dtype == np.uint8
    scr = torch.stack(
        [scene.uv[:, 0] * TEX, (1 - scene.uv[:, 1]) * TEX, torch.ones(len(scene.uv))], -1
    )
    face = rasterize(scr, scene.uv_faces, TEX, TEX).face_index.numpy()
    on_small = (face >= 0) & np.append(small, False)[face]
    on_big = (face >= 0) & ~on_small
    assert (out.alpha[on_big] == 255).all()
    a = out.alpha[on_small]
    clear, strand = (a == 0).mean(), (a > 100).mean()
    assert 0.4 < clear < 0.85 and strand > 0.15, (clear, strand)  # strands with gaps
    # strands run along v: down one texel column of a strand face the alpha never switches
    cols = np.flatnonzero(on_small.any(0))
    assert len(cols) > 20
    for c in cols:
        assert len(np.unique(out.alpha[on_small[:, c], c] > 0)) == 1, c
    assert np.array_equal(
        out.texture, bake_texture(views, scene.faces, scene.uv, scene.uv_faces, size=TEX).texture
    )


def test_uv_layout_is_made_once_per_mesh_and_size_and_read_only(scene, plain_bake):
    """reconstruct makes the layout beside the fit; the bake then finds it. It is shared,
    so nothing may write into it."""
    layout, texels, texel_face = uv_layout(scene.faces, scene.uv, scene.uv_faces, TEX)
    again = uv_layout(
        torch.as_tensor(scene.faces).clone(), scene.uv, torch.as_tensor(scene.uv_faces).clone(), TEX
    )
    assert again[0] is layout and again[1] is texels  # found by content, not by object
    assert not layout.flags.writeable and not texels.bary.flags.writeable
    np.testing.assert_array_equal(plain_bake[1].layout, layout)
    assert layout.sum() == len(texels.pix) == (texel_face >= 0).sum()
    smaller = uv_layout(scene.faces, scene.uv, scene.uv_faces, TEX // 2)[0]
    assert smaller.shape == (TEX // 2, TEX // 2)


def test_uv_layout_is_kept_between_runs_in_the_cache_folder(scene, tmp_path, monkeypatch):
    """A new process finds the layout in the cache folder, the same arrays; a damaged or
    foreign file there is made again, a cache folder that cannot be written is no error."""
    from mfnet_core.outputs import texture as tx

    monkeypatch.setenv("MFNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tx, "_LAYOUTS", {})
    made = uv_layout(scene.faces, scene.uv, scene.uv_faces, TEX)
    (kept,) = (tmp_path / "cache" / "uv_layouts").glob("*.npz")
    monkeypatch.setattr(tx, "_LAYOUTS", {})  # as in a new process
    monkeypatch.setattr(tx, "rasterize", None)  # read back, not made again
    read = uv_layout(scene.faces, scene.uv, scene.uv_faces, TEX)
    assert read[0] is not made[0]
    for a, b in zip(
        (made[0], made[2], *vars(made[1]).values()),
        (read[0], read[2], *vars(read[1]).values()),
        strict=True,
    ):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    monkeypatch.undo()
    monkeypatch.setenv("MFNET_CACHE", str(tmp_path / "cache"))
    for damage in (b"not a zip", None):
        if damage is None:  # a valid file whose layout does not fit this mesh
            np.savez(
                kept,
                texel_face=np.full((TEX, TEX), 10**6, np.int32),
                bary=np.zeros((0, 3), np.float32),
            )
        else:
            kept.write_bytes(damage)
        monkeypatch.setattr(tx, "_LAYOUTS", {})
        again = uv_layout(scene.faces, scene.uv, scene.uv_faces, TEX)
        assert np.array_equal(again[2], made[2])
    monkeypatch.setattr(tx, "_LAYOUT_FILE_MAX_SIZE", TEX // 2)  # too big to keep
    monkeypatch.setattr(tx, "_LAYOUTS", {})
    kept.unlink()
    uv_layout(scene.faces, scene.uv, scene.uv_faces, TEX)
    assert not kept.exists()
    monkeypatch.setattr(tx, "_LAYOUT_FILE_MAX_SIZE", TEX)

    def no_home() -> None:
        raise RuntimeError("Could not determine home directory")

    with monkeypatch.context() as m:  # no home folder: no cache, no error
        m.setattr(tx, "user_cache_dir", no_home)
        m.setattr(tx, "_LAYOUTS", {})
        assert np.array_equal(uv_layout(scene.faces, scene.uv, scene.uv_faces, TEX)[2], made[2])
    (tmp_path / "cache" / "uv_layouts").rmdir()
    (tmp_path / "cache" / "uv_layouts").write_text("a file where the folder would go")
    monkeypatch.setattr(tx, "_LAYOUTS", {})
    assert np.array_equal(uv_layout(scene.faces, scene.uv, scene.uv_faces, TEX)[2], made[2])
