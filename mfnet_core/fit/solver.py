"""The fit's one solver: Levenberg-Marquardt with iteratively reweighted residuals (IRLS),
the residual-term base class it minimises, and the robust kernels every term uses.

Why Levenberg-Marquardt and not torch's optimisers: the fit is a robust least squares in a
few hundred unknowns with a good start. L-BFGS and Adam stalled at 2-3 px on noise-free
landmarks (the pose/shape valley); LM with Marquardt's diagonal damping reaches 0.01 px in
a handful of iterations. Robust losses enter as IRLS weights rho'(|e|)/|e| recomputed at
every iterate, so the squared weighted residuals equal the robust loss at convergence.

A term works on the fitter's free parameter vector x (P,) given as a list of
(parameter name, slice) entries (`Free`); `levenberg_marquardt` stacks every term's
residuals and Jacobian, takes a damped Gauss-Newton step, and lets the terms react to an
accepted step (e.g. contour landmarks re-picked as the head turns).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Bounds",
    "Free",
    "active_set",
    "project",
    "ResidualTerm",
    "cauchy",
    "cauchy_irls",
    "cauchy_weights_mad",
    "charbonnier",
    "charbonnier_irls",
    "forward_difference",
    "levenberg_marquardt",
    "lm_step",
    "normal_equations",
    "one_thread",
    "outlier_weights",
]

Free = list[tuple[str, slice]]


# -- robust kernels ----------------------------------------------------------------------------


def charbonnier(e: Tensor, eps: float) -> Tensor:
    """(…,C) residual vectors -> (…) smooth L1: sqrt(|e|^2 + eps^2) - eps."""
    return torch.sqrt((e * e).sum(-1) + eps * eps) - eps


def charbonnier_irls(e: Tensor, eps: float) -> Tensor:
    """(…,C) -> (…) IRLS weights of `charbonnier`: 1 / sqrt(|e|^2 + eps^2)."""
    return 1.0 / torch.sqrt((e * e).sum(-1) + eps * eps)


def cauchy(e: Tensor, c: float) -> Tensor:
    """(…,C) -> (…) Cauchy / Lorentzian loss with scale c: c^2/2 log(1 + |e|^2/c^2)."""
    return 0.5 * c * c * torch.log1p((e * e).sum(-1) / (c * c))


def cauchy_irls(e: Tensor, c: float) -> Tensor:
    """(…,C) -> (…) IRLS weights of `cauchy`: 1 / (1 + |e|^2/c^2)."""
    return 1.0 / (1.0 + (e * e).sum(-1) / (c * c))


def cauchy_weights_mad(residual: np.ndarray, k: float = 2.5, floor: float = 0.01) -> np.ndarray:
    """(P,C) residuals -> (P,) Cauchy weights 1/(1+(r/(k*s))^2) with a robust scale
    s = 1.4826 * median |r|, at least `floor` (noise-free data must not make every sample an
    outlier). Used where the scale is unknown (the photometric stage's lighting)."""
    r = np.linalg.norm(residual.reshape(len(residual), -1), axis=1)
    s = max(1.4826 * float(np.median(r)), floor)
    return 1.0 / (1.0 + (r / (k * s)) ** 2)


def outlier_weights(
    residual_px: Tensor, scale: Tensor, k: float = 3.0, floor: float = 0.03
) -> Tensor:
    """Down-weights landmarks far off the fit, for robustness to a few wrong detections.

    residual_px: (N,L) residual lengths in pixels; scale: (N,) half the face size in pixels.
    A landmark beyond k times the median residual (and beyond `floor` of the face size)
    gets a weight that falls off as a Cauchy kernel; the rest keep weight 1.
    """
    med = residual_px.median(dim=1, keepdim=True).values
    threshold = torch.maximum(k * med, floor * scale[:, None])
    ratio = residual_px / threshold
    return torch.where(ratio > 1, 1.0 / (ratio * ratio), torch.ones_like(ratio))


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one CPU thread inside the block. The fit is thousands of small ops, where
    extra intra-op threads only add synchronisation: measured 7x slower with 2 threads on a
    busy 2-core machine, and a full ICT forward pass 0.13 s instead of 0.02 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- Jacobians --------------------------------------------------------------------------------


def forward_difference(
    residual_batch: Callable[[Tensor], Tensor], x: Tensor, h: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Residuals (R,) and their Jacobian (R,P) at x (P,) from ONE batched evaluation of
    `residual_batch` ((B,P) -> (B,R)) at x and its P forward steps; cheaper here than
    autograd's per-row passes, and exact enough in float64."""
    eye = torch.eye(x.shape[0], dtype=x.dtype, device=x.device) * h
    r_all = residual_batch(torch.cat([x[None], x[None] + eye]))
    return r_all[0], ((r_all[1:] - r_all[0]) / h).T


# -- terms ------------------------------------------------------------------------------------


class ResidualTerm(ABC):
    """One group of residuals of the fit, as functions of the free parameter vector.

    `reweight` returns the IRLS state at an iterate (held fixed while the step is searched),
    `linearise` the weighted residuals and their Jacobian there, `residuals` the weighted
    residuals of a batch of parameter vectors (their squares sum to the IRLS cost).
    """

    name: str = "term"

    @abstractmethod
    def reweight(self, free: Free, x: Tensor) -> Any:
        """IRLS weights (or any per-iteration state) at x (P,)."""

    @abstractmethod
    def residuals(self, free: Free, xb: Tensor, state: Any) -> Tensor:
        """xb (B,P) -> (B,R) weighted residuals."""

    def linearise(self, free: Free, x: Tensor, state: Any) -> tuple[Tensor, Tensor]:
        """(R,) weighted residuals and their (R,P) Jacobian at x (P,); forward differences
        unless a term knows better."""
        return forward_difference(lambda xb: self.residuals(free, xb, state), x)

    def normal_equations(self, free: Free, x: Tensor, state: Any) -> tuple[Tensor, Tensor, float]:
        """J^T J (P,P), J^T r (P,) and r^T r of the weighted residuals at x (P,), what the
        solver uses; from `linearise` unless a term with a sparse Jacobian knows better."""
        r, jac = self.linearise(free, x, state)
        return jac.T @ jac, jac.T @ r, float(r @ r)

    def accepted(self, free: Free, x: Tensor) -> None:  # noqa: B027 - optional hook
        """Called after a step that lowered the cost, with the new x."""

    def value(self, free: Free, x: Tensor) -> float | None:
        """The term's robust loss at x, for the report (None: not reported)."""
        return None


# -- Levenberg-Marquardt -------------------------------------------------------------------


Bounds = tuple[Tensor, Tensor]  # (P,) lower and upper limits, -inf / inf where unbounded


def project(x: Tensor, bounds: Bounds | None) -> Tensor:
    """x (P,) clamped into the box `bounds` (unchanged without bounds)."""
    return x if bounds is None else torch.maximum(torch.minimum(x, bounds[1]), bounds[0])


def active_set(x: Tensor, g: Tensor, bounds: Bounds | None) -> Tensor:
    """(P,) bool: parameters on a bound whose gradient g = J^T r pushes them out of the box.
    They are held still for the step (a projected Levenberg-Marquardt with an active set),
    so a weight at 0 that wants to go negative cannot stall the others."""
    if bounds is None:
        return torch.zeros_like(x, dtype=torch.bool)
    lo, hi = bounds
    return ((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0))


def lm_step(
    x: Tensor,
    jtj: Tensor,
    g: Tensor,
    cost: float,
    residual: Callable[[Tensor], Tensor],
    mu: float,
    bounds: Bounds | None = None,
    tol: float = 1e-6,
) -> tuple[Tensor, float, float, bool]:
    """One Levenberg-Marquardt step with Marquardt's diagonal damping, projected into
    `bounds` when given (parameters held on a bound by the active set do not move).

    x (P,) parameters; the normal equations at x: jtj = J^T J (P,P), g = J^T r (P,), cost =
    r^T r; residual(v) -> (R,) at other v. Raises the damping until the cost falls (at most 8
    tries). Returns the new x, its cost, the new damping and whether the cost fell by more
    than `tol` relative.
    """
    moving = ~active_set(x, g, bounds)
    if not bool(moving.any()):
        return x, cost, mu, False
    jtj_m = jtj[moving][:, moving]
    g_m = g[moving]
    diag = torch.diagonal(jtj_m).clamp_min(1e-12)
    for _try in range(8):
        step = torch.zeros_like(x)
        step[moving] = torch.linalg.solve(jtj_m + mu * torch.diag(diag), -g_m)
        x_new = project(x + step, bounds)
        r_new = residual(x_new)
        new_cost = float(r_new @ r_new)
        if new_cost < cost:
            return x_new, new_cost, max(mu * 0.3, 1e-9), cost - new_cost > tol * cost
        mu *= 10
    return x, cost, mu, False


def normal_equations(
    terms: Sequence[ResidualTerm], free: Free, x: Tensor, states: list
) -> tuple[Tensor, Tensor, float]:
    """Sum of the terms' J^T J (P,P), J^T r (P,) and r^T r at x (P,)."""
    n = x.shape[0]
    jtj = torch.zeros(n, n, dtype=x.dtype, device=x.device)
    g = torch.zeros(n, dtype=x.dtype, device=x.device)
    cost = 0.0
    for term, state in zip(terms, states, strict=True):
        a, b, c = term.normal_equations(free, x, state)
        jtj += a
        g += b
        cost += c
    return jtj, g, cost


@torch.no_grad()
def levenberg_marquardt(
    x: Tensor,
    free: Free,
    terms: Sequence[ResidualTerm],
    iterations: int,
    mu: float = 1e-3,
    bounds: Bounds | None = None,
    tol: float = 1e-6,
) -> tuple[Tensor, float]:
    """Minimises the sum of the terms' squared IRLS-weighted residuals from x (P,), inside
    the box `bounds` when given (x is projected into it first).

    Per iteration: every term re-weights at x, the stacked residuals are linearised, and one
    damped step is taken; the loop stops early when a step no longer lowers the cost by
    `tol` relative. Returns the final x and its cost (nan when `iterations` is 0).
    """
    cost = float("nan")
    x = project(x, bounds)
    for _ in range(iterations):
        states = [t.reweight(free, x) for t in terms]
        jtj, g, cost = normal_equations(terms, free, x, states)

        def residual(v: Tensor, states: list = states) -> Tensor:
            parts = [t.residuals(free, v[None], s)[0] for t, s in zip(terms, states, strict=True)]
            return torch.cat(parts)

        x, cost, mu, improved = lm_step(x, jtj, g, cost, residual, mu, bounds, tol)
        if not improved:
            break
        for t in terms:
            t.accepted(free, x)
    return x, cost
