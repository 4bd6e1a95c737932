"""One detected face, as every landmark backend returns it (its own module so that the
backends in other modules and landmarks.py, which picks between them, share it without an
import cycle)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FaceDetection:
    """One face: box (x0, y0, x1, y1) and (68,2) float32 landmarks, both in input pixels."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float
    detector: str = ""  # which detector found the box ("hog", "cnn", "sfd")
    # how turned the detector saw the face: "frontal", "turned" (HOG's side detectors, about
    # 25-60 degrees), "steep" (only the CNN found it: HOG misses faces beyond ~60 degrees)
    pose_hint: str = ""
    # (2,5,2) iris centre and 4 rim points (right, top, left, bottom) of both eyes, in input
    # pixels, from detectors that see the iris (MediaPipe's attention mesh); else None
    iris: np.ndarray | None = None

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)
