"""benchmarks/reference.py: the fixed reference workload every benchmark times in its own
process, and the ratios of its figures to it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location(
        "bm_reference_under_test", REPO / "benchmarks" / "reference.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up while building the class
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def test_ratios_keep_the_structure_and_drop_the_unit(reference):
    figures = {"fit_s": 0.5, "stages": {"dense_seconds": 1.0, "parts": [0.25, None]}, "x": 2}
    assert reference.ratios(figures, 0.25) == {
        "fit": 2.0,
        "stages": {"dense": 4.0, "parts": [1.0, None]},
        "x": 8.0,
    }
    assert reference.ratios({"_s": 1.0}, 0.5) == {"_s": 2.0}  # nothing left to name it


def test_machine_names_the_cpu_and_the_load(reference):
    m = reference.machine()
    assert isinstance(m["cpu"], str) and m["cpu"]
    assert m["cores"] >= 1 and 1 <= m["cores_usable"] <= m["cores"]
    assert len(m["load_avg"]) == 3


def test_the_work_is_fixed(reference):
    a1, b1, x1, y1 = reference._inputs()
    a2, b2, x2, y2 = reference._inputs()
    assert a1.shape == b1.shape == (512, 512) and a1.dtype == np.uint8
    assert x1.shape == y1.shape == (1024, 1024) and str(x1.dtype) == "torch.float32"
    assert (a1 == a2).all() and (b1 == b2).all() and (x1 == x2).all() and (y1 == y2).all()
    # The second image is the first moved 3 px down and 3 px left: a flow for DIS to find.
    assert (b1[3:, :-3] == a1[:-3, 3:]).all()
    assert a1.std() > 20  # textured, not flat
    assert (reference.DIS_FLOWS, reference.MATMULS, reference.VERSION) == (4, 8, 1)


def test_reference_times_and_reports(reference):
    import cv2
    import torch

    threads = (cv2.getNumThreads(), torch.get_num_threads())
    ref = reference.Reference.start(repeats=2).finish(repeats=1)
    assert (cv2.getNumThreads(), torch.get_num_threads()) == threads  # restored
    samples = ref.start_samples + ref.end_samples
    assert len(samples) == 3 and min(samples) > 0
    assert ref.seconds == sorted(samples)[1]
    assert ref.ratio(2 * ref.seconds) == 2.0
    out = ref.to_json()
    assert out["reference"]["version"] == 1 and out["reference"]["seconds"] > 0
    assert {"cpu", "cores", "load_avg", "load_avg_end", "torch", "cv2"} <= set(out["machine"])
    assert "reference v1" in ref.summary()
