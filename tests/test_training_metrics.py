"""FaceScape metrics on hand-made meshes with answers known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mfnet_core.metrics import similarity_transform
from training.metrics import (
    align_depth,
    chamfer_distance,
    cylindrical_map,
    depth_map,
    face_normals,
    facescape_scores,
    icp_align,
    mean_normal_error,
    point_to_surface,
)

EYE = np.eye(3)
ORIGIN = np.zeros(3)


def grid_mesh(fn, nu: int, nv: int) -> tuple[np.ndarray, np.ndarray]:
    """Mesh of the parametric surface fn(u, v) on [0,1]^2 with nu x nv quads; faces wound so
    that the normal is cross(d/dv, d/du) (outward for the surfaces below)."""
    u, v = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1))
    verts = fn(u.ravel(), v.ravel())
    idx = np.arange((nu + 1) * (nv + 1)).reshape(nv + 1, nu + 1)
    a, b = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel()
    c, d = idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, c, b], 1), np.stack([d, b, c], 1)])
    return verts, faces


def plane(z: float, x=(-40.0, 40.0), y=(-51.0, 51.0), n=(16, 20)):
    """Plane z = const, normal toward -z (facing the cylinder rays)."""
    return grid_mesh(
        lambda u, v: np.stack(
            [x[0] + (x[1] - x[0]) * u, y[0] + (y[1] - y[0]) * v, np.full_like(u, z)], -1
        ),
        *n,
    )


def cylinder(radius: float, half_angle_deg: float = 60.0, y=(-51.0, 51.0), n=(120, 30)):
    """Cylinder patch about the y axis, centred on the -z direction, normal pointing outward."""
    a = math.radians(half_angle_deg)

    def fn(u, v):
        phi = a - 2 * a * u  # x grows with u, as for the plane
        return np.stack(
            [-radius * np.sin(phi), y[0] + (y[1] - y[0]) * v, -radius * np.cos(phi)], -1
        )

    return grid_mesh(fn, *n)


def test_plane_normals_point_toward_minus_z():
    v, f = plane(-80.0)
    np.testing.assert_allclose(
        face_normals(v, f), np.tile([0.0, 0.0, -1.0], (len(f), 1)), atol=1e-12
    )
    v, f = cylinder(80.0)
    n = face_normals(v, f)
    centre = v[f].mean(1)
    radial = centre * [1, 0, 1] / np.linalg.norm(centre * [1, 0, 1], axis=1, keepdims=True)
    assert (np.einsum("ij,ij->i", n, radial) > 0.999).all()


def test_point_to_surface_exact_for_huge_triangles():
    # Two triangles only: the nearest *vertex* is far from the nearest surface point.
    v = np.array([[-100.0, -100, 0], [100, -100, 0], [-100, 100, 0], [100, 100, 0]])
    f = np.array([[0, 1, 2], [3, 2, 1]])
    d, q = point_to_surface(np.array([[3.0, -7.0, 2.5], [150.0, 0.0, 0.0]]), v, f)
    np.testing.assert_allclose(d, [2.5, 50.0])
    np.testing.assert_allclose(q, [[3.0, -7.0, 0.0], [100.0, 0.0, 0.0]])


def test_chamfer_identical_is_zero_and_shifted_plane_is_shift():
    va, fa = plane(-80.0)
    assert chamfer_distance(va, fa, va, fa)[0] == pytest.approx(0.0, abs=1e-12)
    vb, fb = plane(-82.0, n=(7, 9))  # other tessellation, same extent, 2 mm away
    cd, d_ab, d_ba = chamfer_distance(va, fa, vb, fb)
    assert cd == pytest.approx(2.0, abs=1e-9)
    np.testing.assert_allclose(d_ab, 2.0)
    np.testing.assert_allclose(d_ba, 2.0)


def test_facescape_identical_meshes():
    v, f = cylinder(80.0)
    s = facescape_scores(v, f, v, f, ORIGIN, EYE)
    assert s.cd == pytest.approx(0.0, abs=1e-9)
    assert s.mne == pytest.approx(0.0, abs=1e-6)
    assert s.cr == 1.0


def test_facescape_concentric_cylinders_are_2mm_apart():
    vg, fg = cylinder(80.0)
    vp, fp = cylinder(82.0, half_angle_deg=70.0, y=(-60.0, 60.0))  # covers all of the GT
    s = facescape_scores(vg, fg, vp, fp, ORIGIN, EYE)
    assert s.cd == pytest.approx(2.0, abs=2e-3)
    assert s.cr == 1.0
    assert s.normal_angle_deg < 0.6  # same radial normals up to the facet angle (1 deg facets)


def test_completeness_half_covered():
    # Rows sit at y = 150 - 300 i / 255: [-51, 51] holds 86 rows, [0, 51] exactly 43 of them.
    vg, fg = plane(-80.0)
    vp, fp = plane(-80.0, y=(0.0, 51.0))
    s = facescape_scores(vg, fg, vp, fp, ORIGIN, EYE)
    assert s.cr == pytest.approx(0.5, abs=1e-12)
    assert s.cd == pytest.approx(0.0, abs=1e-9)  # CD and MNE only look at the common part
    assert s.mne == pytest.approx(0.0, abs=1e-6)


def test_tilted_plane_normal_error():
    theta = math.radians(10.0)
    vg, fg = plane(-80.0)
    c, s_ = math.cos(theta), math.sin(theta)
    rot_y = np.array([[c, 0, s_], [0, 1, 0], [-s_, 0, c]])
    pivot = np.array([0.0, 0.0, -80.0])
    vp = (vg - pivot) @ rot_y.T + pivot
    s = facescape_scores(vg, fg, vp, fg, ORIGIN, EYE)
    assert math.radians(s.normal_angle_deg) == pytest.approx(theta, abs=1e-9)
    n_gt = np.array([0.0, 0.0, -1.0])
    n_pr = rot_y @ n_gt
    enc = lambda n: (n + 1) / np.linalg.norm(n + 1)  # noqa: E731 - the benchmark's encoding
    assert s.mne == pytest.approx(math.acos(enc(n_gt) @ enc(n_pr)), abs=1e-9)
    assert mean_normal_error(n_gt[None], n_pr[None], "angle") == pytest.approx(theta)


def test_cylindrical_map_wraps_the_seam():
    # The front (-z) is where phi = 0 = 2 pi: columns at both ends must see the patch.
    v, f = cylinder(80.0, half_angle_deg=20.0)
    m = cylindrical_map(v, f)
    assert m.mask[:, 0].any() and m.mask[:, -1].any() and m.mask[:, 5].any() and m.mask[:, -6].any()
    assert not m.mask[:, 128].any()
    np.testing.assert_allclose(m.value[m.mask], 80.0, rtol=1e-4)


def test_depth_map_of_a_plane_and_depth_alignment():
    k = np.array([[300.0, 0, 128], [0, 300.0, 128], [0, 0, 1]])
    vg, fg = grid_mesh(
        lambda u, v: np.stack([-60 + 120 * u, -60 + 120 * v, np.full_like(u, 600.0)], -1), 4, 4
    )
    d = depth_map(vg, fg, k, 256, 256)
    np.testing.assert_allclose(d.value[d.mask], 600.0)
    assert d.mask.sum() == pytest.approx(120 / 600 * 300 * 120 / 600 * 300, rel=0.05)
    # A prediction 5 % too large and correspondingly too far: depth alignment undoes it.
    aligned, dz = align_depth(vg, fg, vg * 1.05, fg, k)
    assert dz == pytest.approx(-30.0, abs=1e-6)
    np.testing.assert_allclose(aligned, vg, atol=1e-6)


def test_rigid_and_icp_recover_a_known_motion():
    # A bumpy, non-symmetric surface (a cylinder would slide along its axis).
    v, f = grid_mesh(
        lambda u, v: np.stack(
            [-40 + 80 * u, -50 + 100 * v, -80 + 10 * np.sin(4 * u) * np.cos(3 * v) + 8 * u * u], -1
        ),
        40,
        40,
    )
    ang = math.radians(5.0)
    rot = np.array(
        [[math.cos(ang), -math.sin(ang), 0], [math.sin(ang), math.cos(ang), 0], [0, 0, 1]]
    )
    moved = v @ rot.T + [1.0, -2.0, 0.5]
    s, r, t = similarity_transform(moved, v, with_scale=False)
    np.testing.assert_allclose(s * moved @ r.T + t, v, atol=1e-9)
    back = icp_align(moved, v, f, iterations=20, trim=1.0)
    assert np.abs(back - v).max() < 1e-6
