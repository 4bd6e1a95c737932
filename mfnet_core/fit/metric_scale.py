"""The head's real size from the irises in the photos.

Why: photos without a calibrated rig do not say how big a head is: a small head near the
camera and a big one further away project alike. The shape model then decides the size from
the face's proportions, which on a real capture (the James scan) gave a head 17-20 % too
small. The iris is the one feature of nearly fixed size across adults: its visible diameter
is 11.7 +- 0.5 mm (the figure MediaPipe Iris uses for metric depth). An iris of `diameter_px`
pixels at focal length f is at depth f * 11.7 mm / diameter_px; the ratio of that depth to
the fitted eye's depth is the factor that makes the fitted head metric. The focal length
cancels to first order (the fitted head's depth was found with the same f), so the photos'
missing EXIF costs little here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IRIS_DIAMETER_M = 0.0117  # visible iris diameter of adults, +- 0.5 mm
MAX_YAW_DEG = 25.0  # beyond this the rim is foreshortened and MediaPipe's iris shrinks
MIN_IRIS_PX = 8.0  # smaller irises are too coarse (1 px is > 12 %)
PLAUSIBLE = (0.7, 1.45)  # factors outside this say the measurement failed, not the model
EYE_A, EYE_B = slice(36, 42), slice(42, 48)  # the 68 iBUG points of each eye


@dataclass
class MetricScale:
    """A size factor for the fitted head, with what it rests on (report.json)."""

    factor: float | None  # None: no usable iris, or an implausible answer (see reason)
    per_eye: list[dict] = field(default_factory=list)  # view, px, depth_m, factor
    reason: str = ""

    def to_json(self) -> dict:
        return {
            "factor": None if self.factor is None else round(self.factor, 4),
            "from": "iris" if self.factor is not None else "model",
            "iris_diameter_mm": IRIS_DIAMETER_M * 1000.0,
            "eyes_used": self.per_eye,
            "reason": self.reason,
        }


def iris_diameter_px(iris: np.ndarray) -> float:
    """Mean of the horizontal and vertical rim diameters of one eye.

    iris: (5,2) px, centre then rim right, top, left, bottom. The mean of the two is steadier
    than either (the lids cover the vertical rim, the horizontal one foreshortens with yaw)."""
    horizontal = float(np.linalg.norm(iris[1] - iris[3]))
    vertical = float(np.linalg.norm(iris[2] - iris[4]))
    return 0.5 * (horizontal + vertical)


def metric_scale_from_irises(
    irises: list[np.ndarray | None],
    eye_landmarks_cam: np.ndarray,
    eye_landmarks_px: np.ndarray,
    focal_px: np.ndarray,
    yaw_deg: np.ndarray,
) -> MetricScale:
    """The factor that makes the fitted head metric, from the views' detected irises.

    irises: per view (2,5,2) px or None; eye_landmarks_cam: (N,68,3) fitted landmarks in
    camera space (metres, the camera looks down -z); eye_landmarks_px: (N,68,2) their
    projections; focal_px: (N,); yaw_deg: (N,) fitted head yaw. Each iris is matched to the
    nearer fitted eye in the image; the answer is the median over the usable eyes."""
    per_eye: list[dict] = []
    for i, iris in enumerate(irises):
        if iris is None:
            continue
        if abs(float(yaw_deg[i])) > MAX_YAW_DEG:
            continue
        for eye in np.asarray(iris, dtype=np.float64).reshape(-1, 5, 2):
            px = iris_diameter_px(eye)
            if px < MIN_IRIS_PX:
                continue
            centres = [eye_landmarks_px[i, s].mean(0) for s in (EYE_A, EYE_B)]
            nearest = int(np.argmin([np.linalg.norm(eye[0] - c) for c in centres]))
            fitted_depth = -float(eye_landmarks_cam[i, (EYE_A, EYE_B)[nearest], 2].mean())
            if fitted_depth <= 0:
                continue
            depth = float(focal_px[i]) * IRIS_DIAMETER_M / px
            per_eye.append(
                {
                    "view": i,
                    "iris_px": round(px, 2),
                    "depth_m": round(depth, 4),
                    "fitted_depth_m": round(fitted_depth, 4),
                    "factor": round(depth / fitted_depth, 4),
                }
            )
    if not per_eye:
        return MetricScale(
            None,
            reason=f"no iris of {MIN_IRIS_PX:.0f} px or more in a view turned "
            f"{MAX_YAW_DEG:.0f} degrees or less (needs the MediaPipe landmarks)",
        )
    factor = float(np.median([e["factor"] for e in per_eye]))
    if not PLAUSIBLE[0] <= factor <= PLAUSIBLE[1]:
        return MetricScale(
            None,
            per_eye,
            reason=f"the irises say x{factor:.2f}, outside {PLAUSIBLE}: not used",
        )
    return MetricScale(factor, per_eye, reason=f"{len(per_eye)} eye(s)")
