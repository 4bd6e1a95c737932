"""Sweeps the regulariser weight (eq. 10's lambda) of the test-time landmark fit.

6 synthetic subjects of the available head, 1024 px renders, 3 px landmark noise; 3 views
(-35/0/+35 degrees) and the front view alone. Prints median face-region vertex error (mm,
rigid alignment) and the largest |expression| coefficient per setting, with the seconds
the setting's fits took, also as a ratio to the reference workload timed in the same process
(`benchmarks/reference.py`; the machine and the reference time are printed first and last,
then every line again with its ratio).

    OMP_NUM_THREADS=1 python benchmarks/bm_regulariser.py
"""

import time

import numpy as np
from reference import Reference

from mfnet_core.fit.landmark_fit import FitOptions, fit_landmarks
from mfnet_core.fit.plan import LossWeights
from mfnet_core.head.flame import FLAME
from mfnet_core.head.registry import load_model_assets, resolve_kind
from mfnet_core.metrics import vertex_error_mm
from mfnet_core.synthetic import make_subject, procedural_texture


def main() -> None:
    ref = Reference.start()
    print(ref.summary())
    # FLAME when installed, else the test head (FLAME's format); the ICT model has its own
    # benchmarks (bm_accuracy/bm_reconstruct --model(s) ict)
    kind = "flame" if resolve_kind("auto") == "flame" else "test-head"
    assets = load_model_assets(kind)
    flame = FLAME(assets, 100, 50)
    texture = procedural_texture(flame, 64, 0)
    subjects = [
        make_subject(flame, texture, seed=s, image_size=1024, landmark_noise_px=3.0)
        for s in range(6)
    ]
    rows: list[tuple[str, float]] = []
    for reg in (1e-4, 3e-3, 1e-2, 3e-2):
        for views in ([0, 1, 2], [1]):
            errors, expr = [], []
            t0 = time.perf_counter()
            for s in subjects:
                lmk = np.stack([s.views[i].landmarks_noisy for i in views])
                intr = [s.views[i].intrinsics for i in views]
                fit = fit_landmarks(
                    flame, lmk, intr, FitOptions(weights=LossWeights(reg=reg))
                ).result()
                err = vertex_error_mm(fit.vertices_model, s.vertices_true, assets.face_region)
                errors.append(np.median(err))
                expr.append(np.abs(fit.params["expression"]).max())
            secs = time.perf_counter() - t0
            line = (
                f"reg {reg:g} views {len(views)}: error {np.median(errors):.3f} mm, "
                f"max|expr| {np.max(expr):.1f}, {secs:.2f} s"
            )
            rows.append((line, secs))
            print(line, flush=True)
    ref.finish()
    print(ref.summary())
    for line, secs in rows:  # the ratios divide by the reference of the whole run
        print(f"{line} ({ref.ratio(secs, 2)} x reference)")


if __name__ == "__main__":
    main()
