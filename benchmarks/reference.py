"""The reference workload every benchmark times in its own process (issue 15, item 1).

A fixed piece of OpenCV and float32 matrix work that never changes: 4 DIS optical flows
(preset MEDIUM) between fixed seeded 512x512 images, then 8 products of fixed seeded
1024x1024 float32 matrices, on one thread (OpenCV and torch pinned to 1 thread while it runs,
as the rasteriser and the dense stages run torch). One unit takes ~0.2 s on the 2-core
development VM; `measure` times 5 units after a warm-up and keeps the median, ~1 s in all.

Every benchmark prints its figures in seconds and divided by this time ("ratio"), with the
machine (CPU model, cores, load average) and the library versions: a ratio is what another
machine of the same kind should reproduce within 30 %, even when a busy or slower machine
changes the seconds. `Reference.start()` measures at the beginning of a run,
`Reference.finish()` again at the end; the ratio divides by the median of all samples, and
both medians are printed so that a change of load during the run shows.

Change nothing here that changes the work (sizes, counts, seeds, preset): ratios recorded in
docs/BENCHMARKS.md would no longer compare. Bump `VERSION` if it ever must change.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

VERSION = 1
DIS_SIZE = 512
DIS_FLOWS = 4
MATMUL_N = 1024
MATMULS = 8
SEED = 15
REPEATS = 5

__all__ = ["Reference", "machine", "ratios", "cpu_model", "VERSION"]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    """CPU model, logical / usable cores, load average now (1/5/15 min), and the versions
    of numpy, OpenCV and torch where already imported (this imports nothing)."""
    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": _usable_cores(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }
    return {**out, **_versions()}


def _versions() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("numpy", "cv2", "torch"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
    return out


def _inputs() -> tuple[Any, Any, Any, Any]:
    """The fixed inputs: two 512x512 uint8 images (smooth seeded noise, the second the first
    moved 3 px down and 3 px left) and two 1024x1024 float32 matrices."""
    import cv2
    import numpy as np
    import torch

    rng = np.random.default_rng(SEED)
    pad = 16
    noise = rng.standard_normal((DIS_SIZE + 2 * pad, DIS_SIZE + 2 * pad)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 3.0)
    smooth = cv2.normalize(smooth, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    a = np.ascontiguousarray(smooth[pad : pad + DIS_SIZE, pad : pad + DIS_SIZE])
    b = np.ascontiguousarray(smooth[pad - 3 : pad - 3 + DIS_SIZE, pad + 3 : pad + 3 + DIS_SIZE])
    m = rng.standard_normal((2, MATMUL_N, MATMUL_N)).astype(np.float32)
    return a, b, torch.from_numpy(m[0].copy()), torch.from_numpy(m[1].copy())


def _unit(inputs: tuple[Any, Any, Any, Any]) -> float:
    """One unit of the work, single-threaded; returns its wall seconds."""
    import cv2

    a, b, x, y = inputs
    t = time.perf_counter()
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    for i in range(DIS_FLOWS):
        src, dst = (a, b) if i % 2 == 0 else (b, a)
        dis.calc(src, dst, None)
    z = x
    for _ in range(MATMULS):
        z = x @ y
    float(z[0, 0])
    return time.perf_counter() - t


def _time_units(repeats: int) -> list[float]:
    import cv2
    import torch

    inputs = _inputs()
    cv_threads, torch_threads = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    try:
        _unit(inputs)  # warm-up: first DIS call, allocator, caches
        return [_unit(inputs) for _ in range(repeats)]
    finally:
        cv2.setNumThreads(cv_threads)
        torch.set_num_threads(torch_threads)


@dataclass
class Reference:
    """The reference time of this process: `seconds` is the median over all samples."""

    start_samples: list[float] = field(default_factory=list)
    end_samples: list[float] = field(default_factory=list)
    machine_start: dict[str, Any] = field(default_factory=dict)
    load_avg_end: list[float] | None = None

    @classmethod
    def start(cls, repeats: int = REPEATS, machine_start: dict | None = None) -> Reference:
        """Record the machine (or take `machine_start`, recorded earlier) and time the
        reference workload (call before the figures)."""
        ref = cls(machine_start=machine_start or machine())
        ref.start_samples = _time_units(repeats)
        return ref

    def finish(self, repeats: int = REPEATS) -> Reference:
        """Time the workload again after the figures (the load may have changed); with
        repeats=0 only record the load average."""
        if repeats:
            self.end_samples = _time_units(repeats)
        self.load_avg_end = [round(x, 2) for x in os.getloadavg()]
        return self

    @property
    def seconds(self) -> float:
        return statistics.median(self.start_samples + self.end_samples)

    def ratio(self, seconds: float, digits: int = 3) -> float:
        """`seconds` in units of the reference time."""
        return round(seconds / self.seconds, digits)

    def ratios(self, figures: Any, digits: int = 3) -> Any:
        """`ratios(figures, self.seconds)`."""
        return ratios(figures, self.seconds, digits)

    def to_json(self) -> dict[str, Any]:
        """The machine and the reference time, for a benchmark's JSON output."""
        out: dict[str, Any] = {
            "machine": {**self.machine_start, **_versions(), "load_avg_end": self.load_avg_end},
            "reference": {
                "version": VERSION,
                "work": (
                    f"{DIS_FLOWS} DIS MEDIUM flows {DIS_SIZE}x{DIS_SIZE} + "
                    f"{MATMULS} float32 matmuls {MATMUL_N}^3, 1 thread"
                ),
                "seconds": round(self.seconds, 4),
                "start_median_s": round(statistics.median(self.start_samples), 4),
                "samples_s": [round(x, 4) for x in self.start_samples + self.end_samples],
            },
        }
        if self.end_samples:
            out["reference"]["end_median_s"] = round(statistics.median(self.end_samples), 4)
        if self.load_avg_end is None:
            del out["machine"]["load_avg_end"]
        return out

    def summary(self) -> str:
        """One line for text output: machine and reference time."""
        m = self.machine_start
        load = m["load_avg"] if self.load_avg_end is None else (m["load_avg"], self.load_avg_end)
        return (
            f"machine: {m['cpu']}, {m['cores_usable']}/{m['cores']} cores, load {load}; "
            f"reference v{VERSION}: {self.seconds:.4f} s"
        )


def ratios(figures: Any, reference_s: float, digits: int = 3) -> Any:
    """The same structure as `figures` (nested dicts / lists of seconds) with every number
    divided by `reference_s` (None stays None) and a key's "_s" / "_seconds" suffix dropped
    ({"fit_s": 0.5} -> {"fit": 2.5} for a 0.2 s reference)."""
    if isinstance(figures, dict):
        return {_unit_free(k): ratios(v, reference_s, digits) for k, v in figures.items()}
    if isinstance(figures, (list, tuple)):
        return [ratios(v, reference_s, digits) for v in figures]
    if figures is None:
        return None
    return round(float(figures) / reference_s, digits)


def _unit_free(key: Any) -> Any:
    if isinstance(key, str):
        for suffix in ("_seconds", "_s"):
            if key.endswith(suffix) and len(key) > len(suffix):
                return key[: -len(suffix)]
    return key


if __name__ == "__main__":
    import json

    print(json.dumps(Reference.start().finish().to_json(), indent=1))
