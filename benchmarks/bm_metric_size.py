"""The head's size and shape against a real capture, with and without the irises' metric
size (issue 13 item 7: face-region distance <= 1.5 mm, similarity scale within 5 % of 1).

    python benchmarks/bm_metric_size.py [--model ict] [--size 1024] [--json]

Inputs, all of the James capture (../shared/assets/headscan-james-menpo3d, BSD-3): its mesh
rendered with its own photo texture at -35/0/+35 and -40/0/+40 degrees
(`synthetic.render_scan`), and its two real camera photos (james.jpg's halves, no EXIF: the
default field of view). Each runs the full `reconstruct` with the default landmarks (MediaPipe
where installed) and default losses, once with --size-from model and once with iris.
Reported: the median distance from the capture's face region to the result after a
similarity alignment (`bm_accuracy.scan_distance_mm`), that alignment's scale (1 = the
result is as big as the person), the iris factor and its eyes, and seconds (ratio to the
reference workload timed in the same process).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bm_accuracy import SCAN_DIR, scan_distance_mm
from PIL import Image
from reference import Reference

from mfnet_core.head.registry import load_head_model
from mfnet_core.inputs.images import photo_from_array
from mfnet_core.reconstruct import ReconstructOptions, ViewInput, reconstruct
from mfnet_core.synthetic import load_headscan, render_scan


def photo_sets(scan, size: int) -> dict[str, list[ViewInput]]:
    sets: dict[str, list[ViewInput]] = {}
    for yaw in (35.0, 40.0):
        views = render_scan(scan, (-yaw, 0.0, yaw), image_size=size, seed=0, landmarks="projected")
        sets[f"renders +-{yaw:.0f}"] = [ViewInput(photo=v.photo) for v in views.views]
    rgb = np.asarray(Image.open(SCAN_DIR / "james.jpg").convert("RGB"))
    half = rgb.shape[1] // 2
    sets["real photos (2)"] = [
        ViewInput(photo=photo_from_array(np.ascontiguousarray(rgb[:, :half]), "james_a.png")),
        ViewInput(photo=photo_from_array(np.ascontiguousarray(rgb[:, half:]), "james_b.png")),
    ]
    return sets


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ict")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ref = Reference.start()
    load_before = os.getloadavg()
    head = load_head_model(args.model)
    faces = head.faces.cpu().numpy()
    scan = load_headscan(SCAN_DIR)
    rows: dict[str, dict] = {}
    for name, inputs in photo_sets(scan, args.size).items():
        for size_from in ("model", "iris"):
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                rec = reconstruct(
                    inputs, head, Path(tmp) / "out", ReconstructOptions(size_from=size_from)
                )
            seconds = time.perf_counter() - t0
            verts = rec.fit.vertices_model
            with torch.no_grad():  # the landmark embedding is the topology's: any size
                lm3 = head.landmarks_3d(torch.as_tensor(verts)[None].float(), 0.0)[0].numpy()
            dist, scale = scan_distance_mm(scan, verts, faces, lm3)
            ms = rec.report["metric_size"]
            rows[f"{name} / {size_from}"] = {
                "scan_median_mm": round(dist, 3),
                "similarity_scale": round(scale, 3),
                "iris_factor": ms["factor"],
                "iris_eyes": [e["factor"] for e in ms["eyes_used"]],
                "landmarks_from": sorted({v["landmarks_from"] for v in rec.report["views"]}),
                "seconds": round(seconds, 2),
            }
    load_after = os.getloadavg()
    ref.finish()
    out = {
        **ref.to_json(),
        "model": args.model,
        "image_size": args.size,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "results": rows,
        "ratio_to_reference": ref.ratios({k: r["seconds"] for k, r in rows.items()}),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"reference {ref.seconds:.3f} s, load {load_before} -> {load_after}")
    print(f"{'input / size from':34s} {'mm':>6s} {'scale':>6s} {'iris x':>7s} {'s':>6s}")
    for k, r in rows.items():
        print(
            f"{k:34s} {r['scan_median_mm']:6.3f} {r['similarity_scale']:6.3f} "
            f"{r['iris_factor'] or 0:7.3f} {r['seconds']:6.1f}"
        )


if __name__ == "__main__":
    main()
