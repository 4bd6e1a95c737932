"""Sweeps the regulariser weight (eq. 10's lambda) of the test-time landmark fit.

6 synthetic subjects of the available head, 1024 px renders, 3 px landmark noise; 3 views
(-35/0/+35 degrees) and the front view alone. Prints median face-region vertex error (mm,
rigid alignment) and the largest |expression| coefficient per setting.

    OMP_NUM_THREADS=1 python benchmarks/bm_regulariser.py
"""

import numpy as np

from mfnet_core.assets import load_model_or_test_head
from mfnet_core.fitting import FitOptions, fit_landmarks
from mfnet_core.flame import FLAME
from mfnet_core.losses import LossWeights
from mfnet_core.metrics import vertex_error_mm
from mfnet_core.synthetic import make_subject, procedural_texture

a = load_model_or_test_head(None)
flame = FLAME(a, 100, 50)
tex = procedural_texture(a, 64, 0)
subs = [make_subject(flame, tex, seed=s, image_size=1024, landmark_noise_px=3.0) for s in range(6)]
for reg in [1e-4, 3e-3, 1e-2, 3e-2]:
    for views in ([0, 1, 2], [1]):
        errs = []
        ex = []
        for s in subs:
            lm = np.stack([s.views[i].landmarks_noisy for i in views])
            intr = [s.views[i].intrinsics for i in views]
            f = fit_landmarks(flame, lm, intr, FitOptions(weights=LossWeights(reg=reg)))
            r = f.result()
            errs.append(
                np.median(vertex_error_mm(r.vertices_model, s.vertices_true, a.face_region))
            )
            ex.append(np.abs(r.params["expression"]).max())
        print(reg, len(views), "err %.3f" % np.median(errs), "max|expr| %.1f" % np.max(ex))
