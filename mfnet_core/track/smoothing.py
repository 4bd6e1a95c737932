"""Temporal smoothing of tracked curves, and bridging of frames without a face.

Why a one-euro filter run forward and then backward: per-frame fits jitter (landmark noise
of a pixel moves a blink weight by a few hundredths), but blinks last 3-5 frames at 30 fps
and must survive. The one-euro filter (Casiez, Roussel, Vogel, CHI 2012) is a low-pass whose
cutoff rises with the signal's speed: still curves are smoothed hard, fast ones pass. Run
once it lags (its output trails a fast rise); run forward and then backward over the
finished take (offline, so the whole clip is known) the lags cancel: no phase shift, the
peak stays where it was. On a 3-frame blink (0.5, 1, 0.5) at 30 fps the default weights'
setting keeps a peak of 0.86 and cuts still-frame noise to 0.37 of its size
(tests/test_track.py checks > 0.7).

All functions take (T,C) arrays (T frames, C channels) and a frame rate, so the filter's
cutoffs are in Hz and mean the same at any fps. numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "OneEuro",
    "bridge_gaps",
    "gap_ranges",
    "median_of_valid",
    "one_euro",
    "smooth_zero_phase",
    "WEIGHTS",
    "HEAD_ROTATION",
    "HEAD_TRANSLATION",
    "EYE_ROTATION",
]


@dataclass(frozen=True)
class OneEuro:
    """One-euro settings: `min_cutoff` (Hz) for still signals, `beta` (Hz per unit/s of
    speed) how fast the cutoff rises with speed, `d_cutoff` (Hz) the speed estimate's own
    low-pass."""

    min_cutoff: float
    beta: float
    d_cutoff: float = 10.0

    def scaled(self, strength: float) -> OneEuro:
        """Stronger (>1) or lighter (<1) smoothing: the still cutoff divided by `strength`."""
        return OneEuro(self.min_cutoff / strength, self.beta, self.d_cutoff)


# Blendshape weights (units: weight, 0..1): blinks must survive (see the module docstring).
WEIGHTS = OneEuro(min_cutoff=1.5, beta=2.0, d_cutoff=10.0)
# Head rotation (radians; a head turns at up to ~3 rad/s) and translation (metres).
HEAD_ROTATION = OneEuro(min_cutoff=1.0, beta=5.0, d_cutoff=10.0)
HEAD_TRANSLATION = OneEuro(min_cutoff=1.0, beta=30.0, d_cutoff=10.0)
# Eye rotation (radians): saccades are fast, fixations still.
EYE_ROTATION = OneEuro(min_cutoff=1.0, beta=2.0, d_cutoff=10.0)


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def one_euro(x: np.ndarray, fps: float, settings: OneEuro) -> np.ndarray:
    """The causal one-euro filter over (T,C) `x` (or (T,)) sampled at `fps`."""
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(len(x), -1)
    out = np.empty_like(flat)
    if len(flat) == 0:
        return out.reshape(x.shape)
    dt = 1.0 / float(fps)
    a_d = _alpha(settings.d_cutoff, dt)
    xh = flat[0].copy()
    dxh = np.zeros_like(xh)
    out[0] = xh
    for t in range(1, len(flat)):
        dx = (flat[t] - xh) / dt
        dxh = dxh + a_d * (dx - dxh)
        a = _alpha(settings.min_cutoff + settings.beta * np.abs(dxh), dt)
        xh = xh + a * (flat[t] - xh)
        out[t] = xh
    return out.reshape(x.shape)


def smooth_zero_phase(x: np.ndarray, fps: float, settings: OneEuro) -> np.ndarray:
    """The one-euro filter forward, then backward over its output: no lag (see the module
    docstring). (T,C) or (T,) in, same shape out. The take is extended at both ends by its
    point reflection (half a second, as scipy's filtfilt pads) about a straight line fitted
    to its first / last frames, so that the filters start and end on the curve's own slope
    instead of lagging behind it, and a noisy end frame is not taken as the pivot."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    pad = min(n - 1, max(1, int(round(0.5 * fps)))) if n > 1 else 0
    if pad:
        first, last = _end_values(x, max(3, int(round(0.1 * fps))))
        head = 2 * first - x[pad:0:-1]
        tail = 2 * last - x[-2 : -pad - 2 : -1]
        x = np.concatenate([head, x, tail])
    forward = one_euro(x, fps, settings)
    out = one_euro(forward[::-1], fps, settings)[::-1]
    return out[pad : pad + n].copy()


def _end_values(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The values at the first and last frame of straight lines fitted (least squares) to
    the first and the last `k` frames of (T,...) `x`."""
    k = max(2, min(k, len(x)))
    t = np.arange(k, dtype=np.float64)
    w = (t - t.mean()) / ((t - t.mean()) ** 2).sum()  # slope weights
    flat = x.reshape(len(x), -1)
    a, b = flat[:k], flat[-k:]
    first = a.mean(0) - (a * w[:, None]).sum(0) * t.mean()
    last = b.mean(0) + (b * w[:, None]).sum(0) * (k - 1 - t.mean())
    return first.reshape(x.shape[1:]), last.reshape(x.shape[1:])


def gap_ranges(valid: np.ndarray) -> list[tuple[int, int]]:
    """[(start, stop)) frame ranges where `valid` (T,) is False."""
    v = np.asarray(valid, dtype=bool)
    out = []
    t = 0
    while t < len(v):
        if v[t]:
            t += 1
            continue
        start = t
        while t < len(v) and not v[t]:
            t += 1
        out.append((start, t))
    return out


def bridge_gaps(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(T,C) values with the rows where `valid` is False filled in: linearly between the
    valid frames on either side, held at the first / last valid value at the ends. With no
    valid frame at all, the input comes back unchanged."""
    x = np.array(x, dtype=np.float64, copy=True)
    v = np.asarray(valid, dtype=bool)
    if v.all() or not v.any():
        return x
    flat = x.reshape(len(x), -1)
    t = np.arange(len(x))
    for c in range(flat.shape[1]):
        flat[~v, c] = np.interp(t[~v], t[v], flat[v, c])
    return flat.reshape(x.shape)


def median_of_valid(x: np.ndarray, valid: np.ndarray, window: int = 5) -> np.ndarray:
    """(T,C) each valid row replaced by the median of the valid rows within `window` frames
    centred on it (a single wrong measurement goes; a held value stays); invalid rows are
    returned unchanged."""
    x = np.asarray(x, dtype=np.float64)
    v = np.asarray(valid, dtype=bool)
    out = x.copy()
    half = window // 2
    for t in np.flatnonzero(v):
        lo, hi = max(0, t - half), min(len(x), t + half + 1)
        rows = x[lo:hi][v[lo:hi]]
        out[t] = np.median(rows, axis=0)
    return out
