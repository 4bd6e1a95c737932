"""Do the photos show one person? dlib's face-recognition network, on the landmarks we have.

Why: the fit fuses every photo into one identity, so a photo of somebody else gives a head
that is neither of them, without any error; the landmark residual only catches faces whose
shape the model cannot reach. dlib's ResNet descriptor (128-D, shipped in
face-recognition-models beside the 68-point predictor, no download) tells people apart
from an aligned face chip: Euclidean distance below 0.6 means the same person in dlib's own
benchmark (99.4 % on LFW). Measured here: the two real views of the James capture (about
+-35 degrees apart) 0.41; James against the astronaut photo 0.73-0.77. The descriptor is
made for faces turned up to ~45 degrees, so steeper views are left out of the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# dlib's published decision threshold for its face descriptor.
SAME_PERSON_DISTANCE = 0.6
# Views turned further than this are not compared (the aligned chip shows a cheek).
MAX_COMPARED_YAW_DEG = 50.0


@dataclass
class IdentityCheck:
    """Pairwise descriptor distances of the compared views (NaN where not compared)."""

    distances: np.ndarray  # (N,N)
    compared: list[int]  # view indices that had a descriptor
    skipped_reason: str = ""  # why nothing was compared, when nothing was


def face_descriptor(rgb: np.ndarray, landmarks_px: np.ndarray) -> np.ndarray | None:
    """dlib's 128-D descriptor of the face at `landmarks_px` ((68,2) pixels, pixel-corner
    origin as everywhere in mfnet), or None when the model is not installed."""
    import dlib

    from mfnet_core.inputs.landmarks import dlib_model

    model = dlib_model("recognition")
    if model is None:
        return None
    pts = np.asarray(landmarks_px, dtype=np.float64) - 0.5  # back to dlib's pixel indices
    x0, y0 = np.floor(pts.min(0)).astype(int)
    x1, y1 = np.ceil(pts.max(0)).astype(int)
    shape = dlib.full_object_detection(
        dlib.rectangle(int(x0), int(y0), int(x1), int(y1)),
        [dlib.point(int(round(x)), int(round(y))) for x, y in pts],
    )
    image = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    return np.asarray(model.compute_face_descriptor(image, shape), dtype=np.float64)


def check_identity(
    photos: list[np.ndarray], landmarks_px: np.ndarray, yaws_deg: np.ndarray
) -> IdentityCheck:
    """Descriptor distances between every pair of views turned less than
    MAX_COMPARED_YAW_DEG. photos: N (H,W,3) uint8; landmarks_px (N,68,2); yaws_deg (N,)."""
    n = len(photos)
    distances = np.full((n, n), np.nan)
    compared = [i for i in range(n) if abs(float(yaws_deg[i])) <= MAX_COMPARED_YAW_DEG]
    if n < 2:
        return IdentityCheck(distances, [], "one photo")
    if len(compared) < 2:
        return IdentityCheck(
            distances, [], f"fewer than two views turned <= {MAX_COMPARED_YAW_DEG:.0f}°"
        )
    try:
        descriptors = {i: face_descriptor(photos[i], landmarks_px[i]) for i in compared}
    except ImportError:
        return IdentityCheck(distances, [], "dlib is not installed")
    if any(d is None for d in descriptors.values()):
        return IdentityCheck(distances, [], "dlib's face-recognition model is not installed")
    for i in compared:
        for j in compared:
            distances[i, j] = float(np.linalg.norm(descriptors[i] - descriptors[j]))
    return IdentityCheck(distances, compared)


def different_people_warnings(check: IdentityCheck, names: list[str]) -> list[str]:
    """One warning per view that matches none of the others (or, with two views, for the
    pair): the fit would fuse two people into a head that is neither. names: how to call
    each photo in a sentence (e.g. "astronaut.png (front view)")."""
    idx = check.compared
    if len(idx) < 2:
        return []
    d = check.distances
    if len(idx) == 2:
        i, j = idx
        if d[i, j] <= SAME_PERSON_DISTANCE:
            return []
        return [
            f"{names[i]} and {names[j]} seem to show different people (face "
            f"descriptor distance {d[i, j]:.2f}; the same person is usually below "
            f"{SAME_PERSON_DISTANCE}): the fit fuses them into one head"
        ]
    out = []
    for i in idx:
        nearest = min(d[i, j] for j in idx if j != i)
        if nearest > SAME_PERSON_DISTANCE:
            out.append(
                f"{names[i]} seems to show somebody else (face descriptor distance "
                f"{nearest:.2f} or more to every other photo; the same person is usually below "
                f"{SAME_PERSON_DISTANCE}): the fit fuses them into one head"
            )
    return out


def identity_section(check: IdentityCheck, names: list[str]) -> dict:
    """report.json's record of the check: what was compared, the distances, the threshold."""
    if not check.compared:
        return {"compared": [], "skipped": check.skipped_reason}
    idx = check.compared
    return {
        "compared": [names[i] for i in idx],
        "descriptor_distance": [[round(float(check.distances[i, j]), 3) for j in idx] for i in idx],
        "same_person_below": SAME_PERSON_DISTANCE,
        "model": "dlib_face_recognition_resnet_model_v1",
    }
