"""Batch throughput: people per minute of `blender -b -P blender_addon/batch.py` (issue 15,
item 5), one person at a time (--prefetch 0) against the backend of person n+1 running while
Blender builds person n (--prefetch 1, the default).

    python benchmarks/bm_batch.py [--people 20] [--model ict] [--prefetch 0,1] [--size 1024]

The people are synthetic renders of the head model (`synthetic.make_subject`, a different
identity, texture and expression per seed; left/front/right PNGs at --size px), so the
backend runs its full default pipeline with its default landmark detector on each. Each
configuration runs the real batch in a fresh output folder with Debian's Blender binary
(`blender` on PATH, or MFNET_BLENDER); people per minute come from the wall time of the
whole Blender process (cold: Blender's start, the add-on, every backend process), with the
mean CPU use of the machine over the run (from /proc/stat: 100 % = every core busy). Prints
one JSON object with seconds and ratios to the reference workload timed in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from reference import Reference

REPO = Path(__file__).resolve().parents[1]


def make_people(root: Path, n: int, model: str, size: int) -> None:
    """n person folders of three synthetic photos each."""
    from mfnet_core.head.registry import load_head_model
    from mfnet_core.synthetic import make_subject, procedural_texture

    head = load_head_model(model)
    for i in range(n):
        subject = make_subject(head, procedural_texture(head, 512, seed=i), seed=i, image_size=size)
        folder = root / f"person_{i:02d}"
        folder.mkdir(parents=True)
        for name, view in zip(("left", "front", "right"), subject.views, strict=True):
            rgb = np.asarray(view.photo.rgb)
            if rgb.dtype != np.uint8:
                rgb = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
            Image.fromarray(rgb).save(folder / f"{name}.png")


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def run_batch(blender: str, people: Path, out: Path, model: str, prefetch: int) -> dict:
    script = REPO / "blender_addon" / "batch.py"
    cmd = [blender, "-b", "-noaudio", "-P", str(script), "--", "--input", str(people)]
    cmd += ["--output", str(out), "--python", sys.executable, "--model", model]
    cmd += ["--prefetch", str(prefetch), "--quiet"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    busy0, total0 = cpu_ticks()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    busy1, total1 = cpu_ticks()
    if proc.returncode != 0:
        raise SystemExit(
            f"batch failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}"
        )
    summary = json.loads((out / "summary.json").read_text())
    done = summary["succeeded"]
    people_entries = [p for p in summary["people"] if p["status"] == "succeeded"]
    return {
        "people": len(done),
        "wall_s": round(wall, 2),
        "people_per_minute": round(60.0 * len(done) / wall, 3),
        "seconds_per_person": round(wall / max(len(done), 1), 2),
        "mean_backend_s": round(
            float(np.mean([p.get("backend_seconds", 0.0) for p in people_entries])), 2
        ),
        **{
            f"mean_{key}_s": round(float(np.mean([p[f"{key}_seconds"] for p in people_entries])), 2)
            for key in ("build", "export", "save")
        },
        "cpu_busy_percent": round(100.0 * (busy1 - busy0) / max(total1 - total0, 1), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--people", type=int, default=20)
    ap.add_argument("--model", default="ict")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--prefetch", default="0,1", help="comma list of --prefetch values to run")
    args = ap.parse_args()
    blender = os.environ.get("MFNET_BLENDER") or shutil.which("blender")
    if not blender:
        raise SystemExit("no `blender` binary on PATH (or MFNET_BLENDER)")
    ref = Reference.start()
    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        people = Path(tmp) / "people"
        make_people(people, args.people, args.model, args.size)
        for prefetch in (int(p) for p in args.prefetch.split(",") if p):
            out = Path(tmp) / f"out_{prefetch}"
            results[f"prefetch_{prefetch}"] = run_batch(blender, people, out, args.model, prefetch)
    load_after = os.getloadavg()
    ref.finish()
    times = {
        k: {"wall_s": r["wall_s"], "seconds_per_person": r["seconds_per_person"]}
        for k, r in results.items()
    }
    print(
        json.dumps(
            {
                **ref.to_json(),
                "model": args.model,
                "image_size": args.size,
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in load_after],
                "results": results,
                "ratio_to_reference": ref.ratios(times),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
