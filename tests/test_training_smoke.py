"""The CI smoke run: `python -m training --smoke --json` trains on CPU, the loss falls and the
network beats the mean head on held-out synthetic people. Its time is a figure, not a check:
the run prints `seconds` (data / train / eval / total) in its JSON, which this test shows with
`pytest -s` (docs/BENCHMARKS.md records it); the subprocess timeout only catches a hang."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_run(tmp_path: Path):
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "training", "--smoke", "--json", "--workdir", str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            # hang protection only: 0.5-1.5 min on a quiet 2-core machine, ~6 min seen under
            # heavy load (docs/BENCHMARKS.md)
            timeout=1800,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hang? the smoke run was still going after {e.timeout:.0f} s")
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
    assert out["seconds"]["total"] > 0
    print("smoke run seconds:", out["seconds"])
