"""Rasteriser, interpolation, differentiable barycentrics, SH shading, visibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from mfnet_core.render import (
    Fragments,
    depth_buffer,
    differentiable_bary,
    face_mask,
    fragments_for_faces,
    interpolate,
    pytorch3d_available,
    rasterize,
    render_textured,
    sh_basis,
    shade_sh,
    vertex_normals,
    vertex_visibility,
)


def assert_close(actual, expected, atol=1e-6, rtol=0.0, msg=""):
    """Tolerance assert on tensors or arrays (pytorch3d-style helper)."""
    a = actual.detach().cpu().numpy() if torch.is_tensor(actual) else np.asarray(actual)
    e = expected.detach().cpu().numpy() if torch.is_tensor(expected) else np.asarray(expected)
    np.testing.assert_allclose(a, e, atol=atol, rtol=rtol, err_msg=msg)


def square(x0, y0, x1, y1, depth=2.0):
    verts = torch.tensor([[x0, y0, depth], [x1, y0, depth], [x1, y1, depth], [x0, y1, depth]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    return verts, faces


def look_at_screen(verts, direction, dist=6.0, f=200.0, size=128):
    """Perspective camera on the ray `direction` from the origin, looking at the origin.
    Returns (V,3) screen vertices (u, v, depth) and the camera rotation (rows = camera axes)."""
    z = np.asarray(direction, float)
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 1.0, 0.0], z)
    if np.linalg.norm(x) < 1e-6:
        x = np.array([1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    rot = torch.tensor(np.stack([x, y, z]), dtype=torch.float64)
    vc = verts.double() @ rot.T - torch.tensor([0.0, 0.0, dist], dtype=torch.float64)
    d = -vc[:, 2]
    scr = torch.stack([size / 2 + f * vc[:, 0] / d, size / 2 - f * vc[:, 1] / d, d], -1)
    return scr, rot


def brute_force(verts, faces, h, w):
    """Reference rasteriser: every pixel against every triangle (numpy, float64).
    Returns face index (H,W) and the min |edge function| margin at the winner."""
    v = verts.double().numpy()
    ys, xs = np.mgrid[0:h, 0:w]
    px, py = xs + 0.5, ys + 0.5
    best = np.full((h, w), np.inf)
    fid = np.full((h, w), -1)
    for i, (a, b, c) in enumerate(v[faces.numpy()]):
        area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if abs(area) < 1e-12 or min(a[2], b[2], c[2]) <= 0:
            continue
        wa = ((b[0] - px) * (c[1] - py) - (b[1] - py) * (c[0] - px)) / area
        wb = ((c[0] - px) * (a[1] - py) - (c[1] - py) * (a[0] - px)) / area
        wc = 1 - wa - wb
        inside = (wa >= 0) & (wb >= 0) & (wc >= 0)
        z = wa * a[2] + wb * b[2] + wc * c[2]
        win = inside & (z < best)
        best[win] = z[win]
        fid[win] = i
    return fid


def test_square_exact_coverage_and_constant_depth():
    for x0, y0, x1, y1, n in [(10, 20, 40, 60, 30 * 40), (10.3, 20.7, 40.2, 60.1, 30 * 39)]:
        verts, faces = square(x0, y0, x1, y1, depth=2.5)
        for f in (faces, faces.flip(1)):  # both windings
            fr = rasterize(verts, f, 80, 64)
            assert int(face_mask(fr).sum()) == n
            assert_close(fr.depth[face_mask(fr)], torch.full((n,), 2.5), atol=1e-6)
            assert torch.isinf(fr.depth[~face_mask(fr)]).all()
            assert set(fr.face_index.unique().tolist()) == {-1, 0, 1}
            assert (fr.bary[~face_mask(fr)] == 0).all()


def test_tilted_plane_depth_is_linear():
    a, b, c = 0.01, -0.02, 3.0
    uv = torch.tensor([[5.0, 3.0], [90.0, 10.0], [60.0, 70.0], [2.0, 60.0]])
    verts = torch.cat([uv, (a * uv[:, :1] + b * uv[:, 1:] + c)], dim=1)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    fr = rasterize(verts, faces, 75, 100)
    ys, xs = torch.nonzero(face_mask(fr), as_tuple=True)
    expected = a * (xs + 0.5) + b * (ys + 0.5) + c
    assert len(xs) > 3000
    assert_close(fr.depth[ys, xs], expected, atol=1e-5)


def test_barycentrics_reproduce_pixel_centres():
    g = torch.Generator().manual_seed(0)
    verts = torch.cat(
        [
            torch.rand(30, 2, generator=g) * torch.tensor([90.0, 70.0]),
            1 + torch.rand(30, 1, generator=g),
        ],
        1,
    )
    faces = torch.randint(0, 30, (40, 3), generator=g)
    fr = rasterize(verts, faces, 70, 90)
    uv = interpolate(fr, verts[:, :2], faces)
    ys, xs = torch.nonzero(face_mask(fr), as_tuple=True)
    assert len(xs) > 500
    assert_close(uv[ys, xs], torch.stack([xs + 0.5, ys + 0.5], -1).float(), atol=2e-4)
    assert_close(fr.bary[ys, xs].sum(-1), torch.ones(len(xs)), atol=1e-5)
    assert fr.bary[ys, xs].min() > -1e-4


def test_matches_brute_force_with_offscreen_large_and_degenerate_triangles():
    g = torch.Generator().manual_seed(1)
    h, w = 48, 64
    n = 60
    uv = torch.rand(n, 2, generator=g) * torch.tensor([1.6 * w, 1.6 * h]) - torch.tensor(
        [0.3 * w, 0.3 * h]
    )
    verts = torch.cat([uv, 1 + 5 * torch.rand(n, 1, generator=g)], 1)
    faces = torch.randint(0, n, (50, 3), generator=g)
    faces = torch.cat([faces, torch.tensor([[0, 0, 1], [2, 3, 3]])])  # degenerate
    # A huge triangle far behind everything, bigger than the image, forces the tiled path.
    big = torch.tensor([[-500.0, -500.0, 50.0], [900.0, -400.0, 50.0], [0.0, 900.0, 50.0]])
    behind = torch.tensor(
        [[10.0, 10.0, -1.0], [50.0, 10.0, 2.0], [10.0, 40.0, 2.0]]
    )  # crosses the camera plane
    verts = torch.cat([verts, big, behind])
    faces = torch.cat([faces, torch.tensor([[n, n + 1, n + 2], [n + 3, n + 4, n + 5]])])
    fr = rasterize(verts, faces, h, w)
    ref = brute_force(verts, faces, h, w)
    agree = (fr.face_index.numpy() == ref).mean()
    assert agree > 0.995, agree  # only pixel centres on shared edges may differ
    assert face_mask(fr).all()  # the big one fills the background
    assert face_mask(rasterize(verts, faces[-2:-1], h, w)).all()
    assert not (fr.face_index == len(faces) - 1).any()  # a vertex behind the camera: skipped


def test_large_triangles_match_brute_force():
    verts = torch.tensor(
        [[-3.0, 5.0, 1.0], [300.0, 20.0, 2.0], [40.0, 250.0, 3.0], [200.0, 200.0, 0.5]]
    )
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    fr = rasterize(verts, faces, 230, 260)
    ref = brute_force(verts, faces, 230, 260)
    assert (fr.face_index.numpy() != ref).sum() <= 2


def brute_force_all(verts, faces, h, w, perspective):
    """Every triangle at every pixel centre (numpy, float64): (F,H,W) smallest barycentric,
    depth and (F,H,W,3) barycentrics (perspective-correct when asked); +inf / nan where a
    face is unusable (zero area, a vertex at depth <= 0)."""
    v = verts.double().numpy()
    ys, xs = np.mgrid[0:h, 0:w]
    px, py = xs + 0.5, ys + 0.5
    n = len(faces)
    wmin = np.full((n, h, w), -np.inf)
    depth = np.full((n, h, w), np.inf)
    bary = np.zeros((n, h, w, 3))
    for i, (a, b, c) in enumerate(v[faces.numpy()]):
        area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if abs(area) < 1e-10 or min(a[2], b[2], c[2]) <= 0:
            continue
        wa = ((b[0] - px) * (c[1] - py) - (b[1] - py) * (c[0] - px)) / area
        wb = ((c[0] - px) * (a[1] - py) - (c[1] - py) * (a[0] - px)) / area
        wc = ((a[0] - px) * (b[1] - py) - (a[1] - py) * (b[0] - px)) / area
        wmin[i] = np.minimum(np.minimum(wa, wb), wc)
        ws = np.stack([wa, wb, wc], -1)
        if perspective:
            q = ws / np.array([a[2], b[2], c[2]])
            depth[i] = 1.0 / q.sum(-1)
            bary[i] = q * depth[i][..., None]
        else:
            depth[i] = ws @ np.array([a[2], b[2], c[2]])
            bary[i] = ws
    return wmin, depth, bary


def _tie_mesh(h, w, seed):
    """A random mesh over an h x w image: a jittered grid with shared edges, reaching past
    every border (faces partly off-screen), a tilted depth with bumps; random triangles
    (slivers, big ones, partly off-screen) in front of and behind it; exact copies of some
    grid faces appended (same coordinates: depth ties, the lower id must win); two
    overlapping triangles in one constant-depth plane (ties between different faces)."""
    g = np.random.default_rng(seed)
    nx, ny = 9, 7
    gx, gy = np.meshgrid(np.linspace(-0.2 * w, 1.2 * w, nx), np.linspace(-0.25 * h, 1.25 * h, ny))
    gx = gx + g.uniform(-0.3, 0.3, gx.shape) * w / nx
    gy = gy + g.uniform(-0.3, 0.3, gy.shape) * h / ny
    gz = 3.0 + 0.01 * gx - 0.02 * gy + 0.3 * g.uniform(size=gx.shape)
    verts = [np.stack([gx, gy, gz], -1).reshape(-1, 3)]
    idx = np.arange(nx * ny).reshape(ny, nx)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    grid = np.concatenate([np.stack([a, b, c], -1), np.stack([a, c, d], -1)]).reshape(-1, 3)
    faces = [grid]
    n0 = nx * ny
    k = 25
    centre = g.uniform([-0.2 * w, -0.2 * h], [1.2 * w, 1.2 * h], (k, 1, 2))
    size = np.exp(g.uniform(np.log(0.5), np.log(0.8 * w), (k, 1, 1)))
    corners = centre + size * g.normal(size=(k, 3, 2))
    z = np.repeat(g.uniform(1.5, 4.5, (k, 1, 1)), 3, 1) + g.uniform(-0.5, 0.5, (k, 3, 1))
    verts.append(np.concatenate([corners, z], -1).reshape(-1, 3))
    faces.append(n0 + np.arange(3 * k).reshape(k, 3))
    n1 = n0 + 3 * k
    plane = np.array(
        [[0.1 * w, 0.2 * h, 2.0], [0.8 * w, 0.3 * h, 2.0], [0.3 * w, 0.9 * h, 2.0]]
        + [[0.2 * w, 0.7 * h, 2.0], [0.7 * w, 0.1 * h, 2.0], [0.9 * w, 0.8 * h, 2.0]]
    )
    verts.append(plane)
    faces.append(n1 + np.arange(6).reshape(2, 3))
    dup = g.choice(len(grid), 20, replace=False)  # grid faces are faces 0..len(grid)-1
    faces.append(grid[dup])
    verts = torch.tensor(np.concatenate(verts), dtype=torch.float32)
    faces = torch.tensor(np.concatenate(faces))
    return verts, faces, len(faces) - len(dup), dup


@pytest.mark.parametrize("perspective", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spans_match_brute_force_with_ties_and_offscreen_faces(perspective, seed):
    h, w = 53, 77
    verts, faces, first_dup, dup = _tie_mesh(h, w, seed)
    fr = rasterize(verts, faces, h, w, perspective_correct=perspective)
    wmin, depth, bary = brute_force_all(verts, faces, h, w, perspective)
    fi = fr.face_index.numpy()
    eps, tol_w = 1e-6, 1e-7
    clearly_in = wmin >= tol_w
    maybe_in = wmin >= -eps - tol_w
    zmin = np.where(clearly_in, depth, np.inf).min(0)
    ys, xs = np.mgrid[0:h, 0:w]
    # Background only where no face clearly covers the pixel centre.
    assert not clearly_in[:, fi < 0].any()
    # The chosen face covers the pixel (up to the edge tolerance) and nothing that clearly
    # covers it is nearer (up to float32 depth resolution).
    won = fi >= 0
    f, y, x = fi[won], ys[won], xs[won]
    assert maybe_in[f, y, x].all()
    assert (depth[f, y, x] <= zmin[won] * (1 + 1e-6)).all()
    # Where the answer is unambiguous (no face within the tolerance of an edge, no depth
    # tie other than with a copy), it is exactly the brute-force answer.
    own = slice(0, first_dup)
    z_sorted = np.sort(np.where(maybe_in[own], depth[own], np.inf), axis=0)
    clear = ~(maybe_in & ~clearly_in).any(0) & (z_sorted[1] > z_sorted[0] * (1 + 1e-5))
    best = np.where(clearly_in.any(0), np.where(clearly_in, depth, np.inf).argmin(0), -1)
    assert clear.mean() > 0.8
    assert (fi[clear] == best[clear]).all()
    # Copies of faces never win: equal depth goes to the lower face id (their originals,
    # which tie with them everywhere, do show).
    assert not (fi >= first_dup).any()
    assert np.isin(fi, dup).sum() > 50
    # Barycentrics and depth at the chosen face: the brute force's, to float32 precision.
    assert_close(fr.bary.numpy()[won], bary[f, y, x], atol=2e-5)
    assert_close(fr.depth.numpy()[won], depth[f, y, x], atol=0, rtol=2e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_depth_buffer_is_the_rasterisers_face_and_depth(seed):
    """`depth_buffer` (face and depth read from the z-buffer's keys) picks the faces
    `rasterize` picks, with the brute force's depth to float32 precision, on a mesh with
    ties, slivers and faces past the borders; +inf and -1 on the background."""
    h, w = 53, 77
    verts, all_faces, _first_dup, _dup = _tie_mesh(h, w, seed)
    for faces in (all_faces, all_faces[-40:]):  # the grid covers everything; without it
        fr = rasterize(verts, faces, h, w)
        face, depth = depth_buffer(verts, faces, h, w)
        assert torch.equal(face, fr.face_index)
        assert depth.dtype == torch.float32
        won = face.numpy() >= 0
        assert np.isinf(depth.numpy()[~won]).all()
        _wmin, brute, _bary = brute_force_all(verts, faces, h, w, False)
        ys, xs = np.mgrid[0:h, 0:w]
        f = face.numpy()[won]
        assert_close(depth.numpy()[won], brute[f, ys[won], xs[won]], atol=0, rtol=2e-6)
    assert (~won).sum() > 100, "the background is tested"
    empty_face, empty_depth = depth_buffer(verts, faces[:0], h, w)
    assert (empty_face == -1).all() and torch.isinf(empty_depth).all()


@pytest.mark.parametrize("perspective", [False, True])
def test_chunked_spans_give_the_same_fragments(monkeypatch, perspective):
    """Rows and fragments are processed in chunks to bound memory; tiny chunks (down to one
    row, runs split anywhere) give the same face, barycentrics and depth at every pixel."""
    import mfnet_core.render as render

    verts, faces, _, _ = _tie_mesh(53, 77, 3)
    whole = rasterize(verts, faces, 53, 77, perspective_correct=perspective)
    for chunk in (97, 8, 1):
        monkeypatch.setattr(render, "_CHUNK", chunk)
        part = rasterize(verts, faces, 53, 77, perspective_correct=perspective)
        assert torch.equal(part.face_index, whole.face_index)
        assert torch.equal(part.bary, whole.bary) and torch.equal(part.depth, whole.depth)


def test_nearer_triangle_wins_regardless_of_order():
    near = [[10.0, 10.0, 1.0], [50.0, 12.0, 1.0], [20.0, 45.0, 1.0]]
    far = [[5.0, 5.0, 2.0], [55.0, 8.0, 2.0], [30.0, 55.0, 2.0]]
    for order in ([near, far], [far, near]):
        verts = torch.tensor(order[0] + order[1])
        faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
        fr = rasterize(verts, faces, 64, 64)
        near_id = 0 if order[0] is near else 1
        inside_near = fr.face_index == near_id
        assert inside_near.sum() > 400
        assert_close(fr.depth[inside_near], torch.ones(int(inside_near.sum())), atol=1e-6)
        assert (fr.face_index == 1 - near_id).sum() > 100  # the far one shows around it


def test_cube_from_a_corner_shows_three_faces():
    box = trimesh.creation.box(extents=(2, 2, 2))
    verts = torch.tensor(box.vertices)
    faces = torch.tensor(box.faces)
    direction = np.array([1.0, 0.8, 0.6])
    scr, _ = look_at_screen(verts, direction)
    front = set(np.nonzero(box.face_normals @ direction > 0)[0].tolist())
    assert len(front) == 6  # three square sides, two triangles each
    for cull in (False, True):
        fr = rasterize(scr.float(), faces, 128, 128, cull_backfaces=cull)
        seen = set(fr.face_index.unique().tolist()) - {-1}
        assert seen == front
        for f in front:
            assert (fr.face_index == f).sum() > 50
    # Culling keeps exactly the camera-facing faces.
    fr_back = rasterize(scr.float(), faces.flip(1), 128, 128, cull_backfaces=True)
    assert set(fr_back.face_index.unique().tolist()) - {-1} == set(range(12)) - front


def test_perspective_correct_depth_matches_ray_plane_intersection():
    # A tilted plane in camera space, depth at every pixel known analytically.
    f, size = 100.0, 64
    pts = torch.tensor(
        [[-1.0, -1.0, -2.0], [1.5, -1.0, -4.0], [1.5, 1.2, -4.0], [-1.0, 1.2, -2.0]],
        dtype=torch.float64,
    )
    d = -pts[:, 2]
    scr = torch.stack([size / 2 + f * pts[:, 0] / d, size / 2 - f * pts[:, 1] / d, d], -1)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    fr = rasterize(scr, faces, size, size, perspective_correct=True)
    ys, xs = torch.nonzero(face_mask(fr), as_tuple=True)
    # Plane: z = -2 - (x + 1) * 0.8 (through the points); ray (x, y, z) = t * (dx, dy, -1).
    dx = ((xs.double() + 0.5) - size / 2) / f
    t = 2.8 / (1 - 0.8 * dx)
    assert_close(fr.depth[ys, xs], t, atol=1e-9)
    # Affine interpolation is off by a visible amount on such a plane.
    fr_affine = rasterize(scr, faces, size, size)
    assert (fr_affine.depth[ys, xs] - t).abs().max() > 1e-3


def test_fragments_for_faces_redo_the_other_interpolation_rule():
    """Barycentrics and depth for a face pick made with the other rule (the PSNR re-render
    reuses the flow's perspective-correct pick) equal a full affine rasterisation's where the
    picks agree, and a perspective-correct one's with its own pick."""
    verts, faces = _sphere_screen()
    persp = rasterize(verts, faces, 96, 96, perspective_correct=True)
    affine = rasterize(verts, faces, 96, 96)
    redone = fragments_for_faces(verts, faces, persp.face_index)
    same = persp.face_index == affine.face_index
    assert int(same.sum()) > 1000
    assert not redone.perspective_correct
    assert_close(redone.bary[same], affine.bary[same], atol=0)
    assert_close(redone.depth[same], affine.depth[same], atol=0)
    assert (persp.bary[same] - affine.bary[same]).abs().max() > 1e-4  # the rules differ
    back = fragments_for_faces(verts, faces, persp.face_index, perspective_correct=True)
    assert_close(back.bary, persp.bary, atol=0)


def _sphere_screen():
    """A unit sphere 3 units in front of a 96 px pinhole camera: (V,3) screen vertices, faces."""
    mesh = trimesh.creation.icosphere(subdivisions=3)
    vc = torch.as_tensor(mesh.vertices, dtype=torch.float64) - torch.tensor([0.0, 0.0, 3.0])
    d = -vc[:, 2]
    scr = torch.stack([48 + 120 * vc[:, 0] / d, 48 - 120 * vc[:, 1] / d, d], -1)
    return scr, torch.as_tensor(mesh.faces, dtype=torch.long)


def _grad_case():
    torch.manual_seed(0)
    verts = torch.tensor(
        [[4.0, 3.0, 2.0], [28.0, 5.0, 2.5], [26.0, 27.0, 3.0], [3.0, 25.0, 2.2], [15.0, 14.0, 1.8]],
        dtype=torch.float64,
    )
    faces = torch.tensor([[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])
    return verts, faces


@pytest.mark.parametrize("perspective", [False, True])
def test_differentiable_bary_gradient_matches_finite_differences(perspective):
    verts, faces = _grad_case()
    fr = rasterize(verts, faces, 32, 32, perspective_correct=perspective)
    assert_close(differentiable_bary(fr, verts, faces), fr.bary, atol=1e-12)
    verts = verts.clone().requires_grad_(True)
    proj = torch.randn(32, 32, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda v: (differentiable_bary(fr, v, faces) * proj).sum(), (verts,), eps=1e-6, atol=1e-6
    )


def test_render_textured_gradients_match_finite_differences():
    verts, faces = _grad_case()
    uv = torch.tensor(
        [[0.1, 0.9], [0.9, 0.85], [0.8, 0.1], [0.15, 0.2], [0.5, 0.5]], dtype=torch.float64
    )
    g = torch.Generator().manual_seed(3)
    tex = torch.rand(6, 6, 3, generator=g, dtype=torch.float64)
    sh = torch.zeros(9, 3, dtype=torch.float64)
    sh[0] = 3.0
    sh[3] = 0.5
    world = verts.clone()
    world[:, 2] = torch.tensor([0.0, 0.3, -0.2, 0.1, 0.4], dtype=torch.float64)
    fr = rasterize(verts, faces, 32, 32)

    proj = torch.randn(32, 32, 3, generator=g, dtype=torch.float64)

    def loss(v, t, s, wv):  # a random projection of the image: one output, all pixels
        img, _, _ = render_textured(
            v, wv, faces, uv, faces, t, 32, 32, s, normals_kind="verts", fragments=fr
        )
        return (img * proj).sum()

    inputs = tuple(x.clone().requires_grad_(True) for x in (verts, tex, sh, world))
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5)
    assert face_mask(fr).sum() > 400
    grad = torch.autograd.grad(loss(*inputs), inputs[0])[0]
    assert grad[:, :2].abs().sum() > 0  # the image moves with the vertices


def test_render_textured_samples_texture_without_light():
    verts, faces = square(0, 0, 16, 16, depth=1.0)
    uv = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # image-aligned
    tex = torch.rand(16, 16, 3)
    img, mask, fr = render_textured(verts, None, faces, uv, faces, tex, 16, 16)
    assert mask.all()
    assert_close(img, tex, atol=1e-5)  # texel centres land on pixel centres


def test_interpolate_gradient_wrt_attributes():
    verts, faces = _grad_case()
    fr = rasterize(verts, faces, 32, 32)
    attrs = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    proj = torch.randn(32, 32, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda a: (interpolate(fr, a, faces) * proj).sum(), (attrs,), eps=1e-6, atol=1e-6
    )
    out = interpolate(fr, attrs[:, 0], faces)
    assert out.shape == (32, 32)


def test_sh_constant_term_and_deca_constants():
    n = torch.nn.functional.normalize(torch.randn(50, 3), dim=-1)
    albedo = torch.rand(50, 3)
    sh = torch.zeros(9, 3)
    sh[0] = torch.tensor([2.0, 1.0, 0.5])
    out = shade_sh(albedo, n, sh)
    assert_close(out, albedo * sh[0] / math.sqrt(4 * math.pi), atol=1e-6)
    b = sh_basis(torch.tensor([0.0, 0.0, 1.0]))
    assert_close(b[3], (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi)), atol=1e-6)
    assert_close(b[8], (math.pi / 4) * 0.5 * math.sqrt(5 / (4 * math.pi)) * 2, atol=1e-6)
    assert b.shape == (9,)


def test_vertex_normals_of_a_sphere_point_outward():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    v = torch.tensor(sphere.vertices, dtype=torch.float32)
    n = vertex_normals(v[None], torch.tensor(sphere.faces))
    assert n.shape == (1, len(v), 3)
    assert (n[0] * v).sum(-1).min() > 0.99
    assert_close(vertex_normals(v, torch.tensor(sphere.faces)), n[0])


def test_vertex_visibility_of_a_sphere_and_an_occluder():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    small = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    small.apply_translation([0.0, 0.0, 1.6])
    mesh = trimesh.util.concatenate([sphere, small])
    verts = torch.tensor(mesh.vertices)
    faces = torch.tensor(mesh.faces)
    scr, _ = look_at_screen(verts, [0.0, 0.0, 1.0], dist=5.0, f=300.0, size=256)
    vis = vertex_visibility(scr.float(), faces, 256, 256).numpy()
    p = mesh.vertices[: len(sphere.vertices)]
    cam = np.array([0.0, 0.0, 5.0])
    facing = ((cam - p) * p).sum(1) / np.linalg.norm(cam - p, axis=1)  # cos of view angle
    # Rays from the camera to the big sphere's points hitting the small sphere.
    d = (p - cam) / np.linalg.norm(p - cam, axis=1, keepdims=True)
    oc = cam - np.array([0.0, 0.0, 1.6])
    bq = (d * oc).sum(1)
    disc = bq**2 - ((oc**2).sum() - 0.3**2)
    occluded = disc > 0.02
    big_vis = vis[: len(sphere.vertices)]
    clear_front = (facing > 0.15) & ~((disc > -0.02) & (disc < 0.05))
    assert big_vis[clear_front & ~occluded].all()
    assert not big_vis[facing < -0.15].any()
    assert occluded.sum() > 20 and not big_vis[occluded & (disc > 0.05)].any()
    assert vis[len(sphere.vertices) :][small.vertices[:, 2] > 1.75].all()
    # No winding convention is assumed: flipped faces give the same answer.
    assert (vertex_visibility(scr.float(), faces.flip(1), 256, 256).numpy() == vis).all()


def test_fragments_shapes_and_empty_mesh():
    fr = rasterize(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long), 10, 12)
    assert isinstance(fr, Fragments)
    assert fr.face_index.shape == (10, 12) and (fr.face_index == -1).all()
    assert fr.bary.shape == (10, 12, 3) and fr.depth.shape == (10, 12)
    verts, faces = square(-50, -50, -10, -10)  # fully off-screen
    assert not face_mask(rasterize(verts, faces, 10, 12)).any()


@pytest.mark.skipif(
    not pytorch3d_available(),
    reason="pytorch3d is not installed (it does not build against torch 2.13 CPU)",
)
def test_pytorch3d_backend_agrees_with_torch_backend():
    sphere = trimesh.creation.icosphere(subdivisions=4)
    verts = torch.tensor(sphere.vertices)
    scr, _ = look_at_screen(verts, [0.3, 0.2, 1.0], dist=4.0, f=300.0, size=256)
    faces = torch.tensor(sphere.faces)
    a = rasterize(scr.float(), faces, 256, 256, backend="torch")
    b = rasterize(scr.float(), faces, 256, 256, backend="pytorch3d")
    assert (a.face_index == b.face_index).float().mean() > 0.995
    same = (a.face_index == b.face_index) & face_mask(a)
    assert_close(a.bary[same], b.bary[same], atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    sphere = trimesh.creation.icosphere(subdivisions=4)
    scr, _ = look_at_screen(
        torch.tensor(sphere.vertices), [0.3, 0.2, 1.0], dist=4.0, f=300.0, size=256
    )
    faces = torch.tensor(sphere.faces)
    a = rasterize(scr.float(), faces, 256, 256, backend="torch")
    b = rasterize(scr.float().cuda(), faces.cuda(), 256, 256, backend="torch")
    assert (a.face_index == b.face_index.cpu()).float().mean() > 0.999


def test_auto_normals_with_unused_vertices():
    """Drawing a subset of a mesh's faces leaves some vertices without a normal (zero rows):
    "auto" must still read the array as normals, not as positions (that shaded the ICT
    model's skin black where the eye overlays were left out)."""
    from mfnet_core.render import _as_normals

    normals = torch.nn.functional.normalize(torch.randn(10, 3), dim=-1)
    normals[7:] = 0  # vertices only the left-out faces used
    faces = torch.tensor([[0, 1, 2], [2, 3, 4]])
    assert torch.equal(_as_normals(normals, faces, "auto"), normals)
    positions = torch.randn(10, 3) * 3
    assert not torch.equal(_as_normals(positions, faces, "auto"), positions)
