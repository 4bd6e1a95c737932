"""The head-model interface is all the pipeline needs: a model that exposes nothing else
runs reconstruct (fit, flow, texture, export, report) and gives the same result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mfnet_core.head.flame import FLAME
from mfnet_core.head.interface import HeadModel, HeadOutput, RigArrays
from mfnet_core.head.subset import LandmarkSubset
from mfnet_core.reconstruct import ReconstructOptions, ViewInput, reconstruct
from mfnet_core.synthetic import make_subject, procedural_texture


class InterfaceOnly(HeadModel):
    """Another model behind the interface: it wraps FLAME but answers only what
    `HeadModel` declares, so any consumer that reaches past the interface (FLAME's
    `assets`, `v_template`, `blend_dirs`, ...) fails with AttributeError."""

    def __init__(self, inner: FLAME) -> None:
        super().__init__()
        self.inner = inner
        for name in (
            "info",
            "joint_names",
            "uv",
            "parts",
            "face_region",
            "landmark_embedding",
            "shape_space",
            "expression_space",
            "n_shape",
            "n_expr",
            "posed_joints",
        ):
            object.__setattr__(self, name, getattr(inner, name))

    @property
    def faces(self) -> Tensor:  # type: ignore[override]
        return self.inner.faces

    @property
    def parents(self) -> Tensor:  # type: ignore[override]
        return self.inner.parents

    def forward(self, *args, **kwargs) -> HeadOutput:  # noqa: ANN002, ANN003
        return self.inner(*args, **kwargs)

    def pose_vector(self, *args, **kwargs) -> Tensor:  # noqa: ANN002, ANN003
        return self.inner.pose_vector(*args, **kwargs)

    def rest_vertices(self, shape: Tensor) -> Tensor:
        return self.inner.rest_vertices(shape)

    def rest_joints(self, shape: Tensor, expression: Tensor) -> Tensor:
        return self.inner.rest_joints(shape, expression)

    def rescaled(self, factor: float) -> InterfaceOnly:
        return InterfaceOnly(self.inner.rescaled(factor))

    def vertex_subset(self, vertex_ids: Tensor, dtype: object = None) -> nn.Module:
        return self.inner.vertex_subset(vertex_ids, dtype)

    def landmark_triangles(self, yaw_deg: Tensor | float, b: int) -> tuple[Tensor, Tensor]:
        return self.inner.landmark_triangles(yaw_deg, b)

    def landmarks_3d(self, vertices: Tensor, yaw_deg: Tensor | float) -> Tensor:
        return self.inner.landmarks_3d(vertices, yaw_deg)

    def landmarks_only(self, *args, **kwargs) -> Tensor:  # noqa: ANN002, ANN003
        return self.inner.landmarks_only(*args, **kwargs)

    def rig_arrays(self, shape: np.ndarray, n_expression_keys: int) -> RigArrays:
        return self.inner.rig_arrays(shape, n_expression_keys)


def test_the_proxy_hides_flame_internals(test_head):
    proxy = InterfaceOnly(test_head)
    for internal in ("assets", "v_template", "blend_dirs", "posedirs", "j_regressor"):
        with pytest.raises(AttributeError):
            getattr(proxy, internal)
    assert proxy.n_vertices == test_head.v_template.shape[0]
    assert proxy.dtype == torch.float32 and proxy.kind == "test-head"


def test_subsets_equal_the_full_model(test_head_assets):
    """`vertex_subset` and the landmark subset built on it give the full forward pass's vertices,
    joints and landmarks (what the fit's Jacobians rely on)."""
    flame = FLAME(test_head_assets, n_shape=100, n_expr=50).double()
    head = InterfaceOnly(flame)
    g = torch.Generator().manual_seed(0)
    shape = torch.randn(2, head.n_shape, generator=g, dtype=torch.float64)
    expr = 0.5 * torch.randn(2, head.n_expr, generator=g, dtype=torch.float64)
    jaw = torch.tensor([[0.15, 0.0, 0.0], [0.05, 0.02, 0.0]], dtype=torch.float64)
    out = head(shape=shape, expression=expr, jaw_pose=jaw)
    pose = head.pose_vector(None, None, jaw, None, 2, dtype=torch.float64)
    betas = torch.cat([shape, expr], 1)
    ids = torch.arange(0, head.n_vertices, 5)
    verts, joints = head.vertex_subset(ids)(betas, pose)
    torch.testing.assert_close(verts, out.vertices[:, ids], atol=1e-9, rtol=0)
    torch.testing.assert_close(joints, out.joints, atol=1e-9, rtol=0)
    # FLAME keeps its joint basis precomputed in the files' float32: 0.1 micrometre here
    torch.testing.assert_close(
        head.rest_joints(shape, expr), flame.joints_rest(out.v_shaped), atol=1e-7, rtol=0
    )
    yaw = torch.tensor([-30.0, 20.0], dtype=torch.float64)
    lmk, _ = LandmarkSubset(head).landmarks(betas, pose, yaw)  # (B,N,68,3): every model, every view
    for v in range(2):
        expected = head.landmarks_3d(out.vertices, yaw[v].expand(2))
        torch.testing.assert_close(lmk[:, v], expected, atol=1e-9, rtol=0)


def test_reconstruct_through_the_interface_only(test_head, tmp_path):
    """The whole pipeline with the default losses (flow on) on a model that exposes only the
    interface: same mesh as with FLAME itself."""
    texture = procedural_texture(test_head, size=128, seed=11)
    subject = make_subject(test_head, texture, seed=11, image_size=384, landmark_noise_px=1.0)
    inputs = [ViewInput(photo=v.photo, landmarks=v.landmarks_noisy) for v in subject.views]
    options = ReconstructOptions(device="cpu", texture_size=512, expression_keys=10)
    direct = reconstruct(inputs, test_head, tmp_path / "flame", options)
    proxied = reconstruct(inputs, InterfaceOnly(test_head), tmp_path / "proxy", options)
    assert "flow" in proxied.report["loss_terms_used"]
    np.testing.assert_allclose(
        proxied.fit.vertices_model, direct.fit.vertices_model, atol=1e-6, rtol=0
    )
    with np.load(tmp_path / "proxy" / "rig.npz") as z:
        assert z["expression_basis"].shape == (10, test_head.n_vertices, 3)
        assert str(z["model_kind"]) == "test-head"
