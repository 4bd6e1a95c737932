"""Derives mediapipe_landmarks.MP_TO_IBUG68: for each iBUG point, the MediaPipe face-mesh
vertex nearest to it on average (in inter-ocular distances) over frontal renders of random
ICT-model people whose exact 68-point projections are known.

    .venv/bin/python tools/derive_mediapipe68.py [--people 12]

Prints the table and each point's mean distance. Why ICT renders: their landmarks are exact
projections, and no face the mapping is measured on (the James capture, real photos) is
used to choose it.
"""

from __future__ import annotations

import argparse

import numpy as np

from mfnet_core.head.registry import load_head_model
from mfnet_core.inputs.mediapipe_landmarks import MediapipeBackend, quiet_native_stderr
from mfnet_core.synthetic import RealisticOptions, make_realistic_subject

FIRST_SEED = 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=12)
    args = ap.parse_args()
    head = load_head_model("ict")
    backend = MediapipeBackend()
    options = RealisticOptions(yaws_deg=(0.0,), image_size=768, expression_jitter=0.0)
    cost, used = np.zeros((68, 478)), 0  # 468 mesh vertices + 10 iris points
    for seed in range(FIRST_SEED, FIRST_SEED + args.people):
        view = make_realistic_subject(head, seed=seed, options=options).views[0]
        with quiet_native_stderr():
            found = backend._face_mesh().process(view.photo.rgb).multi_face_landmarks
        if not found:
            continue
        h, w = view.photo.rgb.shape[:2]
        mesh = np.array([[p.x * w, p.y * h] for p in found[0].landmark])
        truth = view.landmarks_true
        iod = np.linalg.norm(truth[36:42].mean(0) - truth[42:48].mean(0))
        cost += np.linalg.norm(truth[:, None] - mesh[None], axis=-1) / iod
        used += 1
    table = cost.argmin(1)
    print(f"{used} people; mean distance per point (inter-ocular):")
    print(np.round(cost[np.arange(68), table] / max(used, 1), 3).tolist())
    print("MP_TO_IBUG68 =", tuple(int(i) for i in table))


if __name__ == "__main__":
    main()
