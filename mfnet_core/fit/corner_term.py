"""Dense residual terms whose residuals each depend on one mesh triangle seen in two views
(the flow term) or one (the photometric term), with a Gauss-Newton linearisation by the
chain rule through the head model's vertex subset (`HeadModel.vertex_subset`)."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from mfnet_core.camera import axis_angle_to_matrix
from mfnet_core.fit.landmark_fit import MultiViewFitter
from mfnet_core.fit.solver import (
    Free,
    ResidualTerm,
    cauchy,
    cauchy_irls,
    charbonnier,
    charbonnier_irls,
)

__all__ = ["CornerTerm"]


def _pose_vector(fitter: MultiViewFitter, jaw: Tensor) -> Tensor:
    """(B,3) jaw -> (B,3J) full pose as the landmark fit builds it (no global pose)."""
    p = fitter.params
    b, dt = jaw.shape[0], jaw.dtype
    neck, eye = p.neck_pose.to(dt).expand(b, 3), p.eye_pose.to(dt).expand(b, 6)
    return fitter.head.pose_vector(None, neck, jaw, eye, b, dtype=dt)


class CornerTerm(ResidualTerm):
    """A dense term whose K residuals each depend on one mesh triangle seen in two views
    (a, b; equal for single-view terms), as a batched function of the fitter's free
    parameter vector, with a Gauss-Newton linearisation by the chain rule.

    Subclasses give `error(ca, cb) -> (B,K,C)` (normalised residuals from the camera-space
    triangle corners (B,K,3,3) in views a and b) and the robust kernel via `eps`
    (Charbonnier) or `cauchy` (a scale: Cauchy / Lorentzian weights).
    """

    name: str = "dense"
    eps: float = 1e-3
    cauchy: float | None = None
    # A subclass that names its own per-residual tensors (first dimension K) here is cut
    # into two halves of whole view pairs whose normal equations run on two threads
    # (`normal_equations`); None: never cut.
    row_fields: tuple[str, ...] | None = None

    def __init__(
        self,
        fitter: MultiViewFitter,
        faces: np.ndarray,
        ia: np.ndarray,
        ib: np.ndarray,
        weight: np.ndarray,
        total_weight: float,
    ) -> None:
        dev = fitter.device
        corners = fitter.head.faces[torch.as_tensor(faces, device=dev)]  # (K,3)
        ids, local = torch.unique(corners.reshape(-1), return_inverse=True)
        self.local = local.reshape(-1, 3)
        self.ia = torch.as_tensor(ia, device=dev).long()
        self.ib = torch.as_tensor(ib, device=dev).long()
        w = torch.as_tensor(weight, dtype=torch.float64, device=dev)
        self.w = w / w.sum().clamp_min(1e-9)
        self.subset = fitter.head.vertex_subset(ids)
        self.fitter = fitter
        self.total_weight = total_weight
        self._halves: list[tuple[CornerTerm, Tensor]] | None = None

    # -- to be provided -------------------------------------------------------------------
    def error(self, ca: Tensor, cb: Tensor) -> Tensor:
        raise NotImplementedError

    # -- machinery ---------------------------------------------------------------------------
    def corners(self, free: Free, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B,P) -> camera-space corners (B,K,3,3) in views a and b, each view's triangle
        from its own expression."""
        f = self.fitter
        vals = f._values(free, x)
        b, n_e = vals["expression"].shape[:2]
        betas = torch.cat(
            [vals["shape"][:, None].expand(b, n_e, -1), vals["expression"]], -1
        ).reshape(b * n_e, -1)
        verts, joints = self.subset(betas, _pose_vector(f, vals["jaw_pose"].reshape(-1, 3)))
        verts = verts.reshape(b, n_e, *verts.shape[1:])[:, f.view_model]  # (B,N,S,3)
        pivots = joints[:, 0].reshape(b, n_e, 3)[:, f.view_model]  # (B,N,3)
        n = vals["head_rot"].shape[1]
        rot = axis_angle_to_matrix(vals["head_rot"].reshape(-1, 3)).reshape(b, n, 3, 3)

        def posed(idx: Tensor) -> Tensor:
            pivot = pivots[:, idx, None]  # (B,K,1,3)
            tri = verts[:, idx[:, None], self.local] - pivot  # (B,K,3,3) about the pivot
            r = rot[:, idx]  # (B,K,3,3)
            return (
                torch.einsum("bkij,bkcj->bkci", r, tri) + pivot + vals["head_trans"][:, idx, None]
            )

        return posed(self.ia), posed(self.ib)

    def errors(self, free: Free, x: Tensor) -> Tensor:
        return self.error(*self.corners(free, x))

    def kernel(self, e: Tensor) -> Tensor:
        """(…,C) -> (…) robust loss rho."""
        if self.cauchy is not None:
            return cauchy(e, self.cauchy)
        return charbonnier(e, self.eps)

    def reweight(self, free: Free, x: Tensor) -> Tensor:
        """(K,) IRLS weights rho'(|e|)/|e| at x (P,)."""
        e = self.errors(free, x[None])[0]
        if self.cauchy is not None:
            return cauchy_irls(e, self.cauchy)
        return charbonnier_irls(e, self.eps)

    def _scale(self, irls: Tensor) -> Tensor:
        return torch.sqrt(self.total_weight * self.w * irls)

    def residuals(self, free: Free, x: Tensor, irls: Tensor) -> Tensor:
        """x (B,P) -> (B,K*C) weighted residuals (their squares sum to the IRLS cost)."""
        e = self.errors(free, x)
        return (e * self._scale(irls)[None, :, None]).reshape(x.shape[0], -1)

    def value(self, free: Free, x: Tensor) -> float:
        """The term's robust loss at x (P,)."""
        e = self.errors(free, x[None])[0]
        return float(self.total_weight * (self.w * self.kernel(e)).sum())

    def linearise(self, free: Free, x: Tensor, irls: Tensor) -> tuple[Tensor, Tensor]:
        """Weighted residuals (K*C,) and their dense Jacobian (K*C,P) at x (P,) (see
        `_compact`; the solver uses `normal_equations`, which never builds this)."""
        r, d, cols = self._compact(free, x, irls)
        k, c_dim, _q = d.shape
        jac = torch.zeros(k, c_dim, x.shape[0], dtype=x.dtype, device=x.device)
        ok = (cols >= 0)[:, None, :].expand(-1, c_dim, -1)
        jac.scatter_add_(2, cols.clamp_min(0)[:, None, :].expand(-1, c_dim, -1), d * ok)
        return r, jac.reshape(k * c_dim, -1)

    def normal_equations(self, free: Free, x: Tensor, irls: Tensor) -> tuple[Tensor, Tensor, float]:
        """J^T J (P,P), J^T r (P,) and r^T r of the weighted residuals at x (P,). A term
        with `row_fields` and at least two view pairs is cut in two halves of whole pairs
        whose sums run on two threads (torch's ops release the GIL; the solver runs under
        `solver.one_thread`, which holds for the process): the fit's solver is otherwise one
        thread, and the second core idles through the dense iterations (ICT, 3 photos:
        ~55 -> ~36 ms an iteration).
        Torch's own intra-op threads are no substitute: with another process busy they
        made these iterations 5x slower (docs/BENCHMARKS.md)."""
        halves = self._cut()
        if not halves:
            return self._normal_equations(free, x, irls)
        (first, rows_a), (second, rows_b) = halves
        other = _worker().submit(second._normal_equations, free, x, irls[rows_b])
        jtj, g, cost = first._normal_equations(free, x, irls[rows_a])
        jtj_b, g_b, cost_b = other.result()
        return jtj + jtj_b, g + g_b, cost + cost_b

    def _cut(self) -> list[tuple[CornerTerm, Tensor]]:
        """The two halves (a term over some rows, and those rows) or [] (see
        `normal_equations`); made once. Whole pairs go to the half with fewer rows so far,
        the largest pairs first. The halves keep this term's weights (normalised over all
        rows) and share its vertex subset."""
        if self._halves is not None:
            return self._halves
        self._halves = []
        k = len(self.ia)
        if self.row_fields is None or k < _MIN_CUT_ROWS:
            return self._halves
        key = self.ia * (int(self.ib.max()) + 1) + self.ib
        pairs, of_row, counts = torch.unique(key, return_inverse=True, return_counts=True)
        if len(pairs) < 2:
            return self._halves
        side = torch.zeros(len(pairs), dtype=torch.bool)
        sizes = [0, 0]
        for p in torch.argsort(counts, descending=True).tolist():
            half = int(sizes[1] < sizes[0])
            side[p] = bool(half)
            sizes[half] += int(counts[p])
        for half in (False, True):
            rows = torch.nonzero(side.to(of_row.device)[of_row] == half).flatten()
            part = copy.copy(self)
            for name in ("local", "ia", "ib", "w", *self.row_fields):
                setattr(part, name, getattr(self, name)[rows])
            part._halves = []
            self._halves.append((part, rows))
        return self._halves

    def _normal_equations(
        self, free: Free, x: Tensor, irls: Tensor
    ) -> tuple[Tensor, Tensor, float]:
        """`normal_equations` of all this term's rows, pair by pair: a residual touches only
        the identity, its two views' expression rows and poses (Q ~ 220 of P columns), and
        the residuals of one view pair share those columns, so each pair adds its small
        (Q,Q) block. With per-photo expressions P grows with the photos, and the dense
        (K*C,P) Jacobian made the flow term's cost grow with their square (9 photos: 36
        pairs x 500 samples x 650 columns)."""
        r, d, cols = self._compact(free, x, irls)
        k, c_dim, q = d.shape
        n = x.shape[0]
        jtj = torch.zeros(n, n, dtype=x.dtype, device=x.device)
        g = torch.zeros(n, dtype=x.dtype, device=x.device)
        d = d * (cols >= 0)[:, None, :]  # columns not free add nothing
        cols = cols.clamp_min(0)
        r2 = r.reshape(k, c_dim)
        key = self.ia * (int(self.ib.max()) + 1 if k else 1) + self.ib
        for pair in torch.unique(key):
            rows = torch.nonzero(key == pair).flatten()
            cp = cols[rows[0]]  # (Q,) the same for every row of the pair
            jp = d[rows].reshape(-1, q)
            block = jp.T @ jp
            jtj.index_put_((cp[:, None].expand(q, q), cp[None, :].expand(q, q)), block, True)
            g.index_put_((cp,), jp.T @ r2[rows].reshape(-1), True)
        return jtj, g, float(r @ r)

    def _compact(self, free: Free, x: Tensor, irls: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Weighted residuals (K*C,) and their Jacobian in compact form at x (P,): (K,C,Q)
        derivatives w.r.t. the (K,Q) parameter columns each residual depends on (-1: not
        free; a column may appear twice, e.g. a single-view term's two sides), by the chain rule:
        each expression row's subset vertex and pivot derivatives (the subset's affine map of
        the shape and expression entries at the row's pose, forward differences for the jaw
        where it is free) times the residual's derivatives w.r.t. its 18 corner coordinates
        and the two head poses (small finite-difference batches, float64).
        Views a and b may use different expression rows (per-view expressions)."""
        f = self.fitter
        cols = f.columns(free)
        vals = f._values(free, x[None])
        n_s = vals["shape"].shape[1]
        n_e, n_x = vals["expression"].shape[1:]
        h = 1e-6
        dd = {"dtype": x.dtype, "device": x.device}
        # 1. Rig: per expression row, vertices and pivot and their derivatives w.r.t. the
        #    row's betas (exact: affine at the row's pose) and, where it moves, its jaw.
        betas = torch.cat([vals["shape"][0][None].expand(n_e, -1), vals["expression"][0]], 1)
        jaw = vals["jaw_pose"][0]  # (Ne,3)
        poses = _pose_vector(f, jaw)  # (Ne,3J)
        jaw_free = bool((cols["jaw_pose"] >= 0).any())
        # Rows at one pose share one affine map (their betas differ): made once (U of them),
        # row e uses map rig_of[e]. The maps are (S,3,M) each, 12 MB for ICT's 2,571 vertices.
        if jaw_free:
            rig_of = torch.arange(n_e, device=x.device)
        else:
            poses, rig_of = torch.unique(poses, dim=0, return_inverse=True)
        v0, basis, j0, j_basis = _linear(self.subset, poses, n_s + n_x)
        verts = _affine_rows(v0, basis, rig_of, betas)  # (Ne,S,3)
        pivot = j0[rig_of, 0] + torch.einsum("emk,ek->em", j_basis[rig_of, 0], betas)  # (Ne,3)
        d_v, d_p = basis, j_basis[:, 0]  # (U,S,3,M), (U,3,M)
        if jaw_free:  # the pose (and its correctives) is not affine: forward differences
            steps = torch.cat([jaw[:, None], jaw[:, None] + torch.eye(3, **dd)[None] * h], 1)
            vj, jj = self.subset(
                betas.repeat_interleave(4, 0), _pose_vector(f, steps.reshape(-1, 3))
            )
            vj, pj = vj.reshape(n_e, 4, -1, 3), jj[:, 0].reshape(n_e, 4, 3)
            dv_jaw = (vj[:, 1:] - vj[:, :1]) / h  # (Ne,3,S,3)
            dp_jaw = (pj[:, 1:] - pj[:, :1]) / h  # (Ne,3,3)
            d_v = torch.cat([d_v, dv_jaw.permute(0, 2, 3, 1)], -1)
            d_p = torch.cat([d_p, dp_jaw.permute(0, 2, 1)], -1)
        ma, mb = f.view_model[self.ia], f.view_model[self.ib]  # (K,) expression row per side
        va = verts[ma[:, None], self.local]  # (K,3,3)
        vb = verts[mb[:, None], self.local]
        pa, pb = pivot[ma], pivot[mb]  # (K,3)
        # 2. Pose: rotations and their derivatives w.r.t. the axis-angle entries.
        aa = vals["head_rot"][0]  # (N,3)
        n = aa.shape[0]
        aas = torch.cat([aa[None], aa[None] + torch.eye(3, **dd)[:, None] * h])
        rots = axis_angle_to_matrix(aas.reshape(-1, 3)).reshape(4, n, 3, 3)
        rot, d_rot = rots[0], (rots[1:] - rots[0]) / h  # (N,3,3), (3,N,3,3)
        t = vals["head_trans"][0]
        vca, vcb = va - pa[:, None], vb - pb[:, None]
        ra, rb = rot[self.ia], rot[self.ib]
        ca = torch.einsum("kij,kcj->kci", ra, vca) + pa[:, None] + t[self.ia, None]
        cb = torch.einsum("kij,kcj->kci", rb, vcb) + pb[:, None] + t[self.ib, None]
        # 3. The residual's derivatives w.r.t. the 18 corner coordinates.
        k = ca.shape[0]
        hc = 1e-7
        eye18 = torch.eye(18, **dd).reshape(18, 2, 3, 3) * hc
        e = self.error(
            torch.cat([ca[None], ca[None] + eye18[:, 0, None]]),
            torch.cat([cb[None], cb[None] + eye18[:, 1, None]]),
        )  # (19,K,C)
        c_dim = e.shape[-1]
        dq = ((e[1:] - e[0]) / hc).permute(1, 2, 0).reshape(k, c_dim, 2, 3, 3)
        dqa, dqb = dq[:, :, 0], dq[:, :, 1]  # (K,C,corner,xyz)
        eye3 = torch.eye(3, **dd)
        parts_cols: list[Tensor] = []
        parts_d: list[Tensor] = []

        def scatter(c: Tensor, d: Tensor) -> None:
            """Keeps d (K,C,Q') as the derivatives w.r.t. the columns c (K,Q')."""
            parts_cols.append(c)
            parts_d.append(d)

        for dqs, r, row in ((dqa, ra, ma), (dqb, rb, mb)):
            dq_dv = torch.einsum("kcix,kxy->kciy", dqs, r)
            dq_dp = torch.einsum("kcix,kxy->kcy", dqs, eye3 - r)
            j_row = _through_rig(dq_dv, dq_dp, self.local, rig_of[row], d_v, d_p)
            row_cols = [cols["shape"][0][None].expand(k, -1), cols["expression"][row]]
            if jaw_free:
                row_cols.append(cols["jaw_pose"][row])
            scatter(torch.cat(row_cols, 1), j_row)  # (K,M) columns
        dr_a = torch.einsum("jkxy,kiy->kixj", d_rot[:, self.ia], vca)  # (K,corner,xyz,j)
        dr_b = torch.einsum("jkxy,kiy->kixj", d_rot[:, self.ib], vcb)
        scatter(cols["head_rot"][self.ia], torch.einsum("kcix,kixj->kcj", dqa, dr_a))
        scatter(cols["head_rot"][self.ib], torch.einsum("kcix,kixj->kcj", dqb, dr_b))
        scatter(cols["head_trans"][self.ia], dqa.sum(2))
        scatter(cols["head_trans"][self.ib], dqb.sum(2))
        sc = self._scale(irls)  # (K,)
        r = (e[0] * sc[:, None]).reshape(-1)
        d_all = torch.cat(parts_d, 2) * sc[:, None, None]
        return r, d_all, torch.cat(parts_cols, 1)


# Fewer residuals than this are not cut in two (thread hand-over costs more than it saves).
_MIN_CUT_ROWS = 256
_WORKER: ThreadPoolExecutor | None = None


def _worker() -> ThreadPoolExecutor:
    """The one thread that takes the second half of a cut term (made on first use)."""
    global _WORKER
    if _WORKER is None:
        _WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mfnet-dense")
    return _WORKER


def _affine_rows(v0: Tensor, basis: Tensor, rig_of: Tensor, betas: Tensor) -> Tensor:
    """Each row's vertices from its affine map: v0 (U,S,3) + basis (U,S,3,M) @ betas[e]
    for the rows e of map u = rig_of[e]; betas (Ne,M) -> (Ne,S,3). One matrix product per
    map (the maps are large, the rows few)."""
    n_u, n_s, _, m = basis.shape
    out = v0.new_empty(betas.shape[0], n_s, 3)
    for u in range(n_u):
        rows = (rig_of == u).nonzero().squeeze(1)
        prod = basis[u].reshape(n_s * 3, m) @ betas[rows].T  # (S*3,R)
        out[rows] = v0[u] + prod.T.reshape(-1, n_s, 3)
    return out


def _through_rig(
    dq_dv: Tensor, dq_dp: Tensor, local: Tensor, row: Tensor, d_v: Tensor, d_p: Tensor
) -> Tensor:
    """The chain rule from corners to betas: (K,C,M) derivatives of K residuals, given
    their derivatives w.r.t. their 3 corners' subset vertices dq_dv (K,C,3,3) and their
    pivot dq_dp (K,C,3); local (K,3) subset vertex ids; row (K,) the affine map each uses;
    d_v (U,S,3,M) and d_p (U,3,M) each map's vertex and pivot derivatives. Two sparse
    products (9 and 3 entries a residual): gathering (K,3,3,M) rig derivatives first cost
    ~50 ms a call."""
    k, c_dim = dq_dv.shape[:2]
    n_e, n_s, _, m = d_v.shape
    xyz = torch.arange(3, device=local.device)
    vert_cols = (local[:, :, None] * 3 + xyz).reshape(k, 9) + (row * n_s * 3)[:, None]
    piv_cols = row[:, None] * 3 + xyz  # (K,3)
    out = _sparse_rows(dq_dv.reshape(k, c_dim, 9), vert_cols, d_v.reshape(-1, m))
    return out + _sparse_rows(dq_dp, piv_cols, d_p.reshape(-1, m))


def _sparse_rows(values: Tensor, cols: Tensor, dense: Tensor) -> Tensor:
    """values (K,C,E) at columns cols (K,E) of a (K*C, D) sparse matrix, times dense (D,M):
    (K,C,M)."""
    k, c_dim, e = values.shape
    rows = torch.arange(k * c_dim, device=cols.device).reshape(k, c_dim, 1).expand(-1, -1, e)
    sparse = torch.sparse_coo_tensor(
        torch.stack([rows.reshape(-1), cols[:, None].expand(-1, c_dim, -1).reshape(-1)]),
        values.reshape(-1),
        (k * c_dim, dense.shape[0]),
        check_invariants=False,  # built here: in range; repeated entries are summed
    )
    return torch.sparse.mm(sparse, dense).reshape(k, c_dim, -1)


def _linear(subset: torch.nn.Module, pose: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The subset's vertices and joints as affine maps of its K betas at each pose (P,3J):
    (P,S,3), (P,S,3,K), (P,J,3), (P,J,3,K). `SubsetLBS.linear` where the model gives it;
    else from K + 1 evaluations (unit steps are exact for an affine map)."""
    if hasattr(subset, "linear"):
        return subset.linear(pose)
    p = pose.shape[0]
    steps = torch.cat([torch.zeros(1, k), torch.eye(k)]).to(pose)  # (K+1,K)
    verts, joints = subset(steps.repeat(p, 1), pose.repeat_interleave(k + 1, 0))
    verts = verts.reshape(p, k + 1, *verts.shape[1:])
    joints = joints.reshape(p, k + 1, *joints.shape[1:])
    basis = (verts[:, 1:] - verts[:, :1]).permute(0, 2, 3, 1)
    return verts[:, 0], basis, joints[:, 0], (joints[:, 1:] - joints[:, :1]).permute(0, 2, 3, 1)
