"""Times per stage and end to end for 3 photos of 1024x1024 on this machine.

Two inputs: (a) synthetic renders of the available head (left/front/right, known
landmarks + 1 px noise, so no detector), and (b) a real face (scikit-image's astronaut,
upscaled to 1024 px; the same photo three times, once mirrored) through the real dlib
detector. Default losses (landmarks, eye, lip, flow, reg: the flow term's dense stage runs);
`--losses` picks others, e.g. landmarks,eye,lip,reg for the landmark fit alone. Prints one
JSON object: medians over --repeats runs in seconds and as ratios to the reference workload
timed in the same process (`benchmarks/reference.py`), the machine (CPU model, cores) and
the load average before and after (the machine may be shared). Stages as report.json's
timings_s; dense_flow / dense_report / dense_quality are parts of "dense" (its flow rounds,
its report, and the PSNR / SSIM re-render inside that report).

    python benchmarks/bm_reconstruct.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from reference import Reference

from mfnet_core.fit.landmark_fit import FitOptions
from mfnet_core.head.registry import load_head_model
from mfnet_core.inputs.images import photo_from_array
from mfnet_core.metrics import vertex_error_mm
from mfnet_core.reconstruct import ReconstructOptions, ViewInput, reconstruct
from mfnet_core.synthetic import make_subject, procedural_texture


def astronaut_views(size: int = 1024) -> list[ViewInput]:
    from skimage import data

    img = np.asarray(Image.fromarray(data.astronaut()).resize((size, size), Image.BICUBIC))
    shifted = np.roll(img, 12, axis=1)
    return [
        ViewInput(photo=photo_from_array(img, "astronaut_a.png")),
        ViewInput(photo=photo_from_array(img[:, ::-1].copy(), "astronaut_mirrored.png")),
        ViewInput(photo=photo_from_array(shifted, "astronaut_shifted.png")),
    ]


def run(inputs: list[ViewInput], head, out: Path, options: ReconstructOptions) -> dict:
    start = time.perf_counter()
    rec = reconstruct(inputs, head, out, options)
    total = time.perf_counter() - start
    dense = rec.report.get("dense", {}).get("timings_s", {})
    return {
        **{k: v for k, v in rec.report["timings_s"].items() if k != "total"},
        # inside "dense": the flow rounds, and its report (of which the PSNR / SSIM re-render)
        **{f"dense_{k}": v for k, v in dense.items()},
        "end_to_end": total,
        "_rec": rec,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--losses", default=",".join(FitOptions().losses))
    ap.add_argument(
        "--models",
        default="test-head,ict",
        help="head models, one column each (ict, flame, test-head)",
    )
    args = ap.parse_args()
    losses = tuple(t for t in args.losses.split(",") if t)
    options = ReconstructOptions(device=args.device, overwrite=True, fit=FitOptions(losses=losses))
    ref = Reference.start()
    load_before = os.getloadavg()
    real = astronaut_views()
    results: dict[str, dict] = {}
    for kind in [m for m in args.models.split(",") if m]:
        head = load_head_model(kind)
        texture = procedural_texture(head, 512, seed=0)
        subject = make_subject(head, texture, seed=0, image_size=1024, landmark_noise_px=1.0)
        synth = [ViewInput(photo=v.photo, landmarks=v.landmarks_noisy) for v in subject.views]
        with tempfile.TemporaryDirectory() as tmp:
            for name, inputs in (("synthetic_3x1024", synth), ("astronaut_3x1024_dlib", real)):
                runs = [run(inputs, head, Path(tmp) / name, options) for _ in range(args.repeats)]
                keys = [k for k in runs[0] if not k.startswith("_")]
                row = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}
                psnr = [v["psnr_face"] for v in runs[-1]["_rec"].report["views"]]
                row["psnr_face_mean"] = round(float(np.mean(psnr)), 2)
                if name.startswith("synthetic"):
                    err = vertex_error_mm(
                        runs[-1]["_rec"].fit.vertices_model, subject.vertices_true, head.face_region
                    )
                    row["median_vertex_error_mm"] = round(float(np.median(err)), 3)
                results[f"{kind}/{name}"] = row
    load_after = os.getloadavg()
    ref.finish()
    not_times = ("psnr_face_mean", "median_vertex_error_mm")
    times = {n: {k: v for k, v in r.items() if k not in not_times} for n, r in results.items()}
    print(
        json.dumps(
            {
                **ref.to_json(),
                "models": args.models.split(","),
                "device": args.device,
                "losses": list(losses),
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in load_after],
                "torch_threads": torch.get_num_threads(),
                "repeats": args.repeats,
                "results_s": results,
                "ratio_to_reference": ref.ratios(times),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
