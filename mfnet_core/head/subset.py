"""Head models restricted to a subset of vertices.

`SubsetLBS` is FLAME's LBS on any subset (the dense stages: the vertices their
correspondences touch), its linear parts pre-multiplied; `LandmarkSubset` evaluates any head
model (through `HeadModel.vertex_subset`) on the vertices that the landmarks touch.

The landmark fit evaluates the model (and its Jacobian) many times; the full mesh is not
needed for that. Joints are linear in the blend-shape coefficients (J = R (T + D beta)), so
their basis is computed once; the rest is LBS on a few hundred vertices. Equal to
`FLAME.landmarks_3d(FLAME.forward(...).vertices)` (tests/test_landmark_subset.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from smplx.lbs import batch_rigid_transform, batch_rodrigues
from torch import Tensor, nn

if TYPE_CHECKING:  # FLAME builds its subsets from this module
    from mfnet_core.head.flame import FLAME
    from mfnet_core.head.interface import HeadModel


class SubsetLBS(nn.Module):
    """FLAME's LBS on a subset of its vertices, the linear parts pre-multiplied.

    vertex_ids: (S,) the vertices to evaluate; buffers are built in ``dtype`` (float64 by
    default: the dense stages' finite differences need it). Calling it gives (B,S,3)
    vertices and (B,J,3) posed joints.
    """

    def __init__(
        self, flame: FLAME, vertex_ids: Tensor, dtype: torch.dtype = torch.float64
    ) -> None:
        super().__init__()
        # A plain reference, not a submodule: .double() on the subset must not touch FLAME.
        self._flame = (flame,)
        ids = vertex_ids.to(flame.v_template.device).long()
        s = ids.shape[0]
        k = flame.blend_dirs.shape[2]
        self.register_buffer("template", flame.v_template[ids].to(dtype))  # (S,3)
        self.register_buffer("dirs", flame.blend_dirs[ids].reshape(s * 3, k).to(dtype).contiguous())
        jreg = flame.j_regressor
        self.register_buffer("joint_template", (jreg @ flame.v_template).to(dtype))  # (J,3)
        jd = torch.einsum("jv,vck->jck", jreg, flame.blend_dirs)
        self.register_buffer("joint_dirs", jd.reshape(-1, k).to(dtype).contiguous())  # (J*3,K)
        cols = (ids[:, None] * 3 + torch.arange(3, device=ids.device)).reshape(-1)
        self.register_buffer("posedirs", flame.posedirs[:, cols].to(dtype).contiguous())  # (P,S*3)
        self.register_buffer("weights", flame.lbs_weights[ids].to(dtype).contiguous())  # (S,J)
        # `linear`'s last maps, by buffers and pose (the key says which buffers they came from)
        self._linear_memo: dict[tuple, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def forward(self, betas: Tensor, pose: Tensor) -> tuple[Tensor, Tensor]:
        """betas (B,K) shape then expression; pose (B,3J) axis-angle per joint.
        Returns the subset's vertices (B,S,3) and posed joints (B,J,3).

        LBS split in two: each vertex's blended rotation sum_j w_sj R_j and its pose
        correctives depend only on the pose, so they are made once per distinct pose row (a
        Jacobian batch varies the betas at one or a few poses), and only the translation
        part, linear in the joints, is made per row."""
        b = betas.shape[0]
        n_j = self.joint_template.shape[0]
        poses, inverse = torch.unique(pose, dim=0, return_inverse=True)  # (U,3J), (B,)
        kept = self._kept_map(poses) if poses.shape[0] == 1 else None
        if kept is not None:  # one pose whose affine map `linear` made: two products
            v0, basis, j0, j_basis = kept
            k = basis.shape[-1]
            verts = v0[0] + (betas @ basis[0].reshape(-1, k).T).reshape(b, -1, 3)
            return verts, j0[0] + (betas @ j_basis[0].reshape(-1, k).T).reshape(b, n_j, 3)
        v = self.template + (betas @ self.dirs.T).reshape(b, -1, 3)
        joints = self.joint_template + (betas @ self.joint_dirs.T).reshape(b, n_j, 3)
        # smplx's Rodrigues, as smplx.lbs uses for the full model: the subset must equal it
        rot_u = batch_rodrigues(poses.reshape(-1, 3)).reshape(-1, n_j, 3, 3)
        posed_joints, rel = batch_rigid_transform(
            rot_u[inverse], joints, self._flame[0].parents, dtype=rot_u.dtype
        )
        v = v + self._correctives(rot_u)[inverse]
        trans = torch.einsum("sj,bjm->bsm", self.weights, rel[..., :3, 3])  # (B,S,3)
        if poses.shape[0] == 1:
            return self._rotate(rel[0, :, :3, :3], v) + trans, posed_joints
        first = torch.zeros(poses.shape[0], dtype=torch.long, device=pose.device)
        first.scatter_reduce_(
            0, inverse, torch.arange(b, device=pose.device), "amin", include_self=False
        )
        verts = torch.empty_like(v)
        for u in range(poses.shape[0]):
            rows = (inverse == u).nonzero().squeeze(1)
            verts[rows] = self._rotate(rel[first[u], :, :3, :3], v[rows])
        return verts + trans, posed_joints

    def _correctives(self, rot: Tensor) -> Tensor:
        """(U,J,3,3) local joint rotations -> (U,S,3) pose-corrective offsets."""
        ident = torch.eye(3, dtype=rot.dtype, device=rot.device)
        feat = (rot[:, 1:] - ident).reshape(rot.shape[0], -1)
        return (feat @ self.posedirs).reshape(rot.shape[0], -1, 3)

    def _rotate(self, world: Tensor, v: Tensor) -> Tensor:
        """world (J,3,3) joint rotations of one pose, v (B,S,3) -> (B,S,3): each vertex
        turned by its skinning-weighted rotation."""
        blended = torch.einsum("sj,jmn->smn", self.weights, world)  # (S,3,3)
        return torch.einsum("smn,bsn->bsm", blended, v)

    def linear(self, pose: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The subset as affine maps of the betas at fixed poses (why: at a fixed pose, LBS
        with pose correctives is exactly affine in the shape and expression coefficients,
        so the Jacobian of a dense term needs no evaluation per coefficient).

        pose (P,3J) -> vertices (P,S,3) and their basis (P,S,3,K), posed joints (P,J,3)
        and their basis (P,J,3,K): forward(betas, pose[p]) = (v[p] + basis[p] @ betas,
        joints[p] + joint_basis[p] @ betas).

        The last few results are kept (read-only: callers must not write into them): a
        fit's pose rarely moves while its betas do, and for ICT (no jaw skinning) never.
        Rows with one pose share one map (expanded views)."""
        if pose.shape[0] > 1:
            poses = torch.unique(pose, dim=0)
            if poses.shape[0] == 1:
                return tuple(m.expand(pose.shape[0], *m.shape[1:]) for m in self.linear(poses))  # type: ignore[return-value]
        key = self._memo_key(pose)
        if key not in self._linear_memo:
            if len(self._linear_memo) >= 4:
                self._linear_memo.clear()
            self._linear_memo[key] = self._linear(pose)
        return self._linear_memo[key]

    def _memo_key(self, pose: Tensor) -> tuple:
        return (
            self.dirs.data_ptr(),
            self.dirs.dtype,
            pose.dtype,
            pose.device,
            tuple(pose.shape),
            pose.detach().cpu().numpy().tobytes(),
        )

    def _kept_map(self, pose: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """`linear`'s kept map of one pose (1,3J), if it made one."""
        return self._linear_memo.get(self._memo_key(pose))

    def _linear(self, pose: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        p = pose.shape[0]
        n_j = self.joint_template.shape[0]
        k = self.dirs.shape[1]
        rot = batch_rodrigues(pose.reshape(-1, 3)).reshape(p, n_j, 3, 3)
        # The joints' rigid chain is linear in the rest joints (no constant term), so the
        # template's joints and each basis column go through it as one batch.
        rest = torch.cat([self.joint_template[None], self.joint_dirs.T.reshape(k, n_j, 3)])
        posed, rel = batch_rigid_transform(
            rot[:, None].expand(p, k + 1, n_j, 3, 3).reshape(-1, n_j, 3, 3),
            rest[None].expand(p, -1, -1, -1).reshape(-1, n_j, 3),
            self._flame[0].parents,
            dtype=rot.dtype,
        )
        posed = posed.reshape(p, k + 1, n_j, 3)
        trans = rel[..., :3, 3].reshape(p, k + 1, n_j, 3)
        world = rel.reshape(p, k + 1, n_j, 4, 4)[:, 0, :, :3, :3]  # (P,J,3,3)
        blended = torch.einsum("sj,pjmn->psmn", self.weights, world)  # (P,S,3,3)
        rest_v = self.template + self._correctives(rot)  # (P,S,3)
        verts = torch.einsum("psmn,psn->psm", blended, rest_v)
        verts = verts + torch.einsum("sj,pjm->psm", self.weights, trans[:, 0])
        dirs = self.dirs.reshape(-1, 3, k)  # (S,3,K)
        basis = torch.einsum("psmn,snk->psmk", blended, dirs)
        basis = basis + torch.einsum("sj,pkjm->psmk", self.weights, trans[:, 1:])
        return verts, basis, posed[:, 0], posed[:, 1:].permute(0, 2, 3, 1)


def landmark_vertex_ids(head: HeadModel) -> np.ndarray:
    """(S,) the vertices of every triangle any landmark can sit on (static, contour, frontal)."""
    emb = head.landmark_embedding
    faces = head.faces.cpu().numpy()
    tri = np.concatenate([emb.static_faces, emb.dynamic_faces.ravel(), emb.full_faces])
    return np.unique(faces[tri].ravel())


class LandmarkSubset(nn.Module):
    """Any head model evaluated on the vertices of its landmark triangles
    (`HeadModel.vertex_subset`), in the head's dtype (the fitter makes a float64 copy with
    ``.double()``)."""

    def __init__(self, head: HeadModel) -> None:
        super().__init__()
        self._head = (head,)  # a plain reference: .double() on the subset must not touch the head
        ids = landmark_vertex_ids(head)
        self.landmark_subset = head.vertex_subset(
            torch.as_tensor(ids, device=head.faces.device), dtype=head.dtype
        )
        remap = np.full(head.n_vertices, -1, dtype=np.int64)
        remap[ids] = np.arange(len(ids))
        local = torch.as_tensor(remap[head.faces.cpu().numpy()], device=head.faces.device)
        self.register_buffer("faces_local", local)  # (F,3) subset ids, -1 off the subset

    def vertices(self, betas: Tensor, pose: Tensor) -> tuple[Tensor, Tensor]:
        """Landmark-support vertices (B,S,3) and posed joints (B,J,3)."""
        return self.landmark_subset(betas, pose)

    def landmarks(self, betas: Tensor, pose: Tensor, yaw_deg: Tensor) -> tuple[Tensor, Tensor]:
        """Landmarks of B models seen in N views: (B,N,68,3), plus posed joints (B,J,3).

        betas (B,K), pose (B,3J), yaw_deg (N,) picks each view's contour bin.
        """
        verts, joints = self.vertices(betas, pose)
        n = yaw_deg.shape[0]
        faces, bary = self._head[0].landmark_triangles(yaw_deg, n)  # (N,68), (N,68,3)
        tri = self.faces_local[faces]  # (N,68,3) local vertex ids
        corners = verts[:, tri]  # (B,N,68,3 corners,3)
        lmk = (corners * bary.to(verts.dtype)[None, ..., None]).sum(-2)
        return lmk, joints

    def landmarks_of_rows(
        self, betas: Tensor, pose: Tensor, row_of: Tensor, yaw_deg: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Landmarks when each view has its own model: U models given by betas (U,K) and pose
        (U,3J); row_of (B,N) says which model view n of batch entry b uses; yaw_deg (N,) picks
        each view's contour. Returns (B,N,68,3) landmarks and (B,N,3) root joints."""
        verts, joints = self.vertices(betas, pose)  # (U,S,3), (U,J,3)
        n = yaw_deg.shape[0]
        faces, bary = self._head[0].landmark_triangles(yaw_deg, n)  # (N,68), (N,68,3)
        tri = self.faces_local[faces]  # (N,68,3) local vertex ids
        corners = verts[row_of[:, :, None, None], tri[None]]  # (B,N,68,3 corners,3)
        lmk = (corners * bary.to(verts.dtype)[None, ..., None]).sum(-2)
        return lmk, joints[row_of, 0]
