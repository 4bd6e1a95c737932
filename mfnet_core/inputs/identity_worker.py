"""The same-person check's face descriptors, computed in a process of their own.

Why: dlib's recognition network holds Python's GIL for its ~80 ms a face, so computed on a
thread it stalls whatever the other threads do (the texture bake in a reconstruction: 0.25 s
for three photos, docs/BENCHMARKS.md). Started right after the landmarks, a child process
runs it on the core the single-threaded landmark fit leaves idle.

    python -m mfnet_core.inputs.identity_worker FOLDER

reads FOLDER/faces.npz (`crop0`..`cropN-1`: (h,w,3) uint8 face crops, `landmarks`: (N,68,2)
pixels in those crops) and writes FOLDER/descriptors.npy ((N,128) float64) through a
temporary name. Exit status: 0 done, 3 dlib is not installed, 4 its recognition model is
not; anything else is a failure the caller handles by computing the descriptors itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from mfnet_core.inputs.face_identity import DLIB_MISSING, MODEL_MISSING, face_descriptor


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    with np.load(folder / "faces.npz", allow_pickle=False) as data:
        landmarks = data["landmarks"]
        crops = [data[f"crop{i}"] for i in range(len(landmarks))]
    try:
        import dlib  # noqa: F401
    except ImportError:
        return DLIB_MISSING
    out = []
    for crop, lmk in zip(crops, landmarks, strict=True):
        descriptor = face_descriptor(crop, lmk)
        if descriptor is None:
            return MODEL_MISSING
        out.append(descriptor)
    tmp = folder / "descriptors.tmp.npy"
    np.save(tmp, np.stack(out))
    os.replace(tmp, folder / "descriptors.npy")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
