"""Speed of the dense stages (flow, photometric) after the landmark fit.

    python benchmarks/bm_dense.py [--runs 3] [--size 1024] [--device cpu|cuda]

One realistic synthetic subject (3 views at -35/0/+35 degrees, --size px), the landmark fit
once, then `refine_dense` --runs times from the same start with "flow" and with
"flow+photo" (the overlay pictures and PSNR/SSIM report timed separately). Also times the
parts of one flow round: rendering the fitted mesh in 3 views, I_{a->b} + DIS flow for the 4
ordered pairs, and one Levenberg-Marquardt round. Prints one JSON object with medians (s),
the same as ratios to the reference workload timed in the same process
(`benchmarks/reference.py`), the machine and the load average before and after, and
the median vertex errors as a check that the runs did the same work. With --device cuda the
fit runs on the GPU (the flow estimator and rasteriser run where they are; see the docs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from reference import Reference

from mfnet_core.fit import dense as dfm
from mfnet_core.fit import flow as fl
from mfnet_core.fit.landmark_fit import FitOptions, fit_landmarks
from mfnet_core.head.flame import FLAME, load_flame_assets
from mfnet_core.head.testhead import ensure_test_head
from mfnet_core.metrics import vertex_error_mm
from mfnet_core.synthetic import RealisticOptions, make_realistic_subject


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    ref = Reference.start()
    assets = load_flame_assets(ensure_test_head())
    flame = FLAME(assets, n_shape=100, n_expr=50).to(args.device)
    subj = make_realistic_subject(
        FLAME(assets, 100, 50), seed=args.seed, options=RealisticOptions(image_size=args.size)
    )
    photos = [v.photo.rgb for v in subj.views]
    intr = [v.intrinsics for v in subj.views]
    lmk = np.stack([v.landmarks_noisy for v in subj.views])
    t0 = time.perf_counter()
    fitter = fit_landmarks(flame, lmk, intr, FitOptions(), device=args.device)
    t_landmarks = time.perf_counter() - t0
    start = [t.detach().clone() for t in fitter.params.tensors()]

    def reset() -> None:
        with torch.no_grad():
            for dst, src in zip(fitter.params.tensors(), start, strict=True):
                dst.copy_(src)

    def err() -> float:
        return float(
            np.median(
                vertex_error_mm(
                    fitter.result().vertices_model, subj.vertices_true, assets.face_region
                )
            )
        )

    out: dict = {"landmark_fit_s": round(t_landmarks, 3), "landmark_fit_error_mm": round(err(), 4)}
    cases = {
        "flow": ("landmarks", "eye", "lip", "flow", "reg"),
        "flow+photo": ("landmarks", "eye", "lip", "flow", "photo", "reg"),
    }
    for name, losses in cases.items():
        stages: dict[str, list[float]] = {}
        errors = []
        for _ in range(args.runs):
            reset()
            t = time.perf_counter()
            rep = dfm.refine_dense(fitter, photos, dfm.DenseOptions(losses=losses, report=False))
            stages.setdefault("dense_total", []).append(time.perf_counter() - t)
            for k, v in rep.timings_s.items():
                stages.setdefault(k, []).append(v)
            errors.append(err())
        out[name] = {k: round(statistics.median(v), 3) for k, v in stages.items()}
        out[name]["error_mm"] = round(statistics.median(errors), 4)
    # The report (final flow, PSNR / SSIM re-render, pictures) on top of a flow fit.
    reset()
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        rep = dfm.refine_dense(
            fitter, photos, dfm.DenseOptions(losses=("landmarks", "eye", "lip", "reg"))
        )
        times.append(time.perf_counter() - t)
    out["report_and_pictures_s"] = round(statistics.median(times), 3)
    # Parts of one flow round.
    reset()
    tri = fl.face_faces(assets.faces, assets.face_region)
    parts: dict[str, list[float]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(args.runs):
            t = time.perf_counter()
            views = dfm._views(fitter, photos, 512, tri)
            t1 = time.perf_counter()
            pfs = fl.all_pair_flows(views, fitter.head.faces)
            t2 = time.perf_counter()
            fitter.refine_with([dfm.FlowTerm(fitter, pfs, 2.0)], 5)
            t3 = time.perf_counter()
            reset()
            for k, v in (
                ("render_3_views_512", t1 - t),
                ("pairs_4_warp_and_dis", t2 - t1),
                ("lm_round_5_iterations", t3 - t2),
            ):
                parts.setdefault(k, []).append(v)
    finally:
        torch.set_num_threads(threads)
    out["flow_round_parts"] = {k: round(statistics.median(v), 3) for k, v in parts.items()}
    out["samples_per_round"] = int(sum(len(p.faces) for p in pfs))
    ref.finish()
    times = {
        k: ({n: x for n, x in v.items() if n != "error_mm"} if isinstance(v, dict) else v)
        for k, v in out.items()
        if k.endswith("_s") or isinstance(v, dict)
    }
    out["ratio_to_reference"] = ref.ratios(times)
    out = {**ref.to_json(), **out}
    out["machine"]["device"] = args.device
    out["image_size"] = args.size
    out["runs"] = args.runs
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
