"""CPU against CUDA: the whole `reconstruct` pipeline on the same synthetic input, per stage.

    python benchmarks/bm_devices.py [--repeats 3] [--size 1024] [--losses ...]

One synthetic subject (3 views of --size px at -35/0/+35 degrees yaw, known landmarks with
1 px noise, so no detector), reconstructed --repeats times on each device (CUDA only where
PyTorch sees a GPU). Prints one JSON object: median seconds per stage and end to end for each
device, also as ratios to the reference workload timed in the same process
(`benchmarks/reference.py`) with the machine's CPU model, cores and load; the results'
agreement (largest difference of the fitted parameters and of the fitted mesh in mm, PSNR
per view) and the error against the known mesh for each device. Exits 1 when the devices
disagree by more than --tolerance-mm on the mesh.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from reference import Reference

from mfnet_core.fit.landmark_fit import FitOptions
from mfnet_core.head.flame import FLAME
from mfnet_core.head.registry import load_model_assets, resolve_kind
from mfnet_core.metrics import vertex_error_mm
from mfnet_core.reconstruct import ReconstructOptions, ViewInput, reconstruct
from mfnet_core.synthetic import make_subject, procedural_texture


def run_device(
    device: str, inputs: list[ViewInput], head, repeats: int, losses: tuple[str, ...]
) -> tuple[dict[str, float], object]:  # noqa: ANN001
    """Median stage timings over ``repeats`` runs (after one warm-up) and the last result."""
    options = ReconstructOptions(device=device, overwrite=True, fit=FitOptions(losses=losses))
    runs: list[dict[str, float]] = []
    rec = None
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(repeats + 1):
            start = time.perf_counter()
            rec = reconstruct(inputs, head, Path(tmp) / device, options)
            total = time.perf_counter() - start
            if k == 0:
                continue  # warm-up: CUDA context, kernels, caches
            times = {n: v for n, v in rec.report["timings_s"].items() if n != "total"}
            runs.append({**times, "end_to_end": total})
    keys = list(runs[0])
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}, rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--losses", default=",".join(FitOptions().losses))
    ap.add_argument("--tolerance-mm", type=float, default=0.1)
    args = ap.parse_args(argv)
    losses = tuple(t for t in args.losses.split(",") if t)
    ref = Reference.start()
    # FLAME when installed, else the test head (FLAME's format); the ICT model has its own
    # benchmarks (bm_accuracy/bm_reconstruct --model(s) ict)
    kind = "flame" if resolve_kind("auto") == "flame" else "test-head"
    assets = load_model_assets(kind)
    flame = FLAME(assets, 100, 50)
    texture = procedural_texture(flame, 512, seed=0)
    subject = make_subject(flame, texture, seed=0, image_size=args.size, landmark_noise_px=1.0)
    inputs = [ViewInput(photo=v.photo, landmarks=v.landmarks_noisy) for v in subject.views]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    timings: dict[str, dict[str, float]] = {}
    results = {}
    for dev in devices:
        timings[dev], results[dev] = run_device(dev, inputs, flame, args.repeats, losses)
    summary: dict[str, object] = {
        "model": assets.kind,
        "losses": list(losses),
        "image_size": args.size,
        "repeats": args.repeats,
        "timings_s": timings,
        "median_vertex_error_mm": {
            d: round(
                float(
                    np.median(
                        vertex_error_mm(
                            r.fit.vertices_model, subject.vertices_true, assets.face_region
                        )
                    )
                ),
                4,
            )
            for d, r in results.items()
        },
        "psnr_face": {d: [v["psnr_face"] for v in r.report["views"]] for d, r in results.items()},
    }
    ref.finish()
    summary["ratio_to_reference"] = ref.ratios(timings)
    summary = {**ref.to_json(), **summary}
    summary["machine"]["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    ok = True
    if "cuda" in results:
        a, b = results["cpu"].fit, results["cuda"].fit
        mesh_mm = float(np.abs(a.vertices_model - b.vertices_model).max() * 1000)
        params = {
            k: float(np.abs(np.asarray(a.params[k]) - np.asarray(b.params[k])).max())
            for k in a.params
            if np.asarray(a.params[k]).shape == np.asarray(b.params[k]).shape
        }
        ok = mesh_mm <= args.tolerance_mm
        summary["agreement"] = {
            "max_mesh_difference_mm": round(mesh_mm, 5),
            "max_parameter_difference": {k: round(v, 6) for k, v in params.items()},
            "within_tolerance": ok,
            "tolerance_mm": args.tolerance_mm,
        }
        summary["speedup_end_to_end"] = round(
            timings["cpu"]["end_to_end"] / timings["cuda"]["end_to_end"], 2
        )
    print(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
