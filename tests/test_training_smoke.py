"""The CI smoke run: `python -m training --smoke --json` trains on CPU, the loss falls and the
network beats the mean head on held-out synthetic people."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_run(tmp_path: Path):
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "training", "--smoke", "--json", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stdout  # exactly one JSON object on stdout
    out = json.loads(lines[0])
    assert {"loss_first", "loss_last", "eval", "checkpoint"} <= set(out)
    assert out["loss_last"] < out["loss_first"]
    ev = out["eval"]
    assert ev["median_vertex_error_mm"] < ev["mean_head_median_vertex_error_mm"], ev
    ck = torch.load(out["checkpoint"], map_location="cpu", weights_only=True)
    assert ck["step"] == out["steps"]
    assert elapsed < 300, f"smoke run took {elapsed:.0f} s (CI budget: 5 minutes)"
