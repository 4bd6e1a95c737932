"""The solver honours per-coefficient bounds (blendshape weights in [0, 1]): a projected
Levenberg-Marquardt with an active set, checked against scipy's bounded least squares."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import lsq_linear

from mfnet_core.fit.solver import ResidualTerm, active_set, levenberg_marquardt, project


class Linear(ResidualTerm):
    """r(x) = A x - b: a bounded linear least squares has one exact answer to compare with."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        self.a = torch.as_tensor(a)
        self.b = torch.as_tensor(b)

    def reweight(self, free, x):
        return None

    def residuals(self, free, xb, state):
        return xb @ self.a.T - self.b


@pytest.mark.parametrize("seed", range(5))
def test_bounded_fit_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(40, 12))
    b = rng.normal(size=40) * 3
    lo, hi = np.zeros(12), np.ones(12)
    ref = lsq_linear(a, b, bounds=(lo, hi), tol=1e-12).x
    bounds = (torch.as_tensor(lo), torch.as_tensor(hi))
    x, cost = levenberg_marquardt(
        torch.full((12,), 0.5, dtype=torch.float64), [], [Linear(a, b)], 200, bounds=bounds
    )
    x = x.numpy()
    assert np.all(x >= 0) and np.all(x <= 1)
    assert ((ref <= 1e-9) | (ref >= 1 - 1e-9)).any(), "the test must make some bounds active"
    assert np.abs(x - ref).max() < 1e-5
    assert cost == pytest.approx(float(np.sum((a @ ref - b) ** 2)), rel=1e-6)


def test_unbounded_is_unchanged_and_start_is_projected():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=30)
    x, _ = levenberg_marquardt(torch.zeros(5, dtype=torch.float64), [], [Linear(a, b)], 50)
    assert np.allclose(x.numpy(), np.linalg.lstsq(a, b, rcond=None)[0], atol=1e-8)
    bounds = (torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64))
    start = torch.tensor([-3.0, 4.0, 0.5, 0.2, 2.0], dtype=torch.float64)
    assert torch.equal(
        project(start, bounds), torch.tensor([0.0, 1.0, 0.5, 0.2, 1.0], dtype=torch.float64)
    )
    x, _ = levenberg_marquardt(start, [], [Linear(a, b)], 0, bounds=bounds)
    assert x.min() >= 0 and x.max() <= 1


def test_active_set():
    bounds = (torch.zeros(4), torch.ones(4))
    x = torch.tensor([0.0, 0.0, 1.0, 0.5])
    g = torch.tensor([1.0, -1.0, -1.0, 1.0])  # the step goes along -g
    assert active_set(x, g, bounds).tolist() == [True, False, True, False]
    assert not active_set(x, g, None).any()


class Counting(Linear):
    """`Linear` that counts its linearisations (one per iteration)."""

    calls = 0

    def linearise(self, free, x, state):
        Counting.calls += 1
        return super().linearise(free, x, state)


def test_tolerance_ends_the_loop_when_steps_stop_paying():
    """A step that lowers the cost by less than `tol` (relative) is the last one: a loose
    tolerance stops a slow descent early, a tight one runs it further, and both reach a cost
    close to the optimum."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(60, 8)) * np.geomspace(1, 300, 8)  # ill-conditioned: slow LM descent
    b = rng.normal(size=60)
    best = float(np.sum((a @ np.linalg.lstsq(a, b, rcond=None)[0] - b) ** 2))
    runs = {}
    for tol in (1e-2, 1e-10):
        Counting.calls = 0
        _x, cost = levenberg_marquardt(
            torch.zeros(8, dtype=torch.float64), [], [Counting(a, b)], 100, mu=10.0, tol=tol
        )
        runs[tol] = (Counting.calls, cost)
    assert runs[1e-2][0] < runs[1e-10][0]
    assert runs[1e-10][1] <= runs[1e-2][1]
    assert runs[1e-2][1] < best * 1.05
