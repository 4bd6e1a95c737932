"""Issue 15 item 2: `mfnet reconstruct` of 3 photos at 1024 px as a cold process, as users
run it, with the defaults (landmarks detected, flow on, irises' size, albedo texture).

    python benchmarks/bm_cold.py [--models ict,test-head] [--repeats 3] [--json]

Per model: three photos of one synthetic person of that model (`make_realistic_subject`,
seed 3, yaws -35/0/+35, 1024 px, written as JPEG), then `python -m mfnet_core reconstruct`
--repeats times, alternating between the models so that a change of load hits both alike.
Reports the median wall time (process start to exit), the pipeline's own stages
(report.json `timings_s`, medians; `total` is the pipeline's wall time, the dense report
and the identity check run beside the texture), what lies outside the pipeline (interpreter,
imports, model file, exit) and the peak resident memory. Two floors timed the same way:
`python -c "import torch"` (the import alone) and the reference workload
(`benchmarks/reference.py`); every time is also given as a ratio to the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bm_scale import run_cold
from reference import Reference


def three_photos(model: str, folder: Path) -> list[Path]:
    """Three JPEG photos (-35/0/+35 degrees, 1024 px) of one synthetic person of `model`."""
    import cv2

    from mfnet_core.head.registry import load_head_model
    from mfnet_core.synthetic import RealisticOptions, make_realistic_subject

    head = load_head_model(model)
    subject = make_realistic_subject(
        head, seed=3, options=RealisticOptions(yaws_deg=(-35.0, 0.0, 35.0), image_size=1024)
    )
    paths = []
    for i, view in enumerate(subject.views):
        path = folder / f"{model}_{i}.jpg"
        cv2.imwrite(str(path), view.photo.rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        paths.append(path)
    return paths


def import_torch_s() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - t


def median_stages(runs: list[dict]) -> dict[str, float]:
    keys = runs[0]["stages_s"].keys()
    return {k: round(statistics.median(r["stages_s"][k] for r in runs), 3) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ict,test-head")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    models = args.models.split(",")
    ref = Reference.start()
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {m: [] for m in models}
    torch_s = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = {m: three_photos(m, Path(tmp)) for m in models}
        for r in range(args.repeats):
            torch_s.append(import_torch_s())
            for m in models:
                out = Path(tmp) / f"out_{m}_{r}"
                runs[m].append(run_cold(photos[m], out, ("--model", m)))
                if not args.json:
                    print(f"{m} run {r + 1}: {runs[m][-1]['wall_s']:.2f} s", flush=True)
    ref.finish()
    rows = {}
    for m in models:
        wall = statistics.median(x["wall_s"] for x in runs[m])
        stages = median_stages(runs[m])
        rows[m] = {
            "wall_s": round(wall, 3),
            "walls_s": [round(x["wall_s"], 3) for x in runs[m]],
            "outside_pipeline_s": round(wall - stages["total"], 3),
            "stages_s": stages,
            "peak_rss_mb": round(statistics.median(x["peak_rss_mb"] for x in runs[m]), 1),
        }
    figures = {f"{m}_wall": rows[m]["wall_s"] for m in models}
    figures["import_torch"] = statistics.median(torch_s)
    out = {
        **ref.to_json(),
        "load_average_before": [round(x, 2) for x in load_before],
        "import_torch_s": round(statistics.median(torch_s), 3),
        "models": rows,
        "ratio_to_reference": ref.ratios(figures),
    }
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
