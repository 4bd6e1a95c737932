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

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# dlib's published decision threshold for its face descriptor.
SAME_PERSON_DISTANCE = 0.6
# Views turned further than this are not compared (the aligned chip shows a cheek).
MAX_COMPARED_YAW_DEG = 50.0
# `identity_worker`'s exit status when dlib, or its recognition model, is not installed.
DLIB_MISSING = 3
MODEL_MISSING = 4


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


def face_crop(rgb: np.ndarray, landmarks_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The part of the photo (H,W,3) that dlib's aligned face chip can read, and the (68,2)
    landmarks in it: the landmarks' box grown by its size on every side (the chip spans
    1.5 times the aligned face, ~1.1 box sizes from the centre even turned 45 degrees).
    The shift is whole pixels, so the chip, and the descriptor, are the same as from the
    whole photo."""
    h, w = rgb.shape[:2]
    pts = np.asarray(landmarks_px, dtype=np.float64)
    lo, hi = pts.min(0), pts.max(0)
    grow = hi - lo
    x0, y0 = (max(0, int(np.floor(v))) for v in lo - grow)
    x1, y1 = min(w, int(np.ceil(hi[0] + grow[0]))), min(h, int(np.ceil(hi[1] + grow[1])))
    return np.ascontiguousarray(rgb[y0:y1, x0:x1, :3]), pts - np.array([x0, y0], dtype=np.float64)


class DescriptorJob:
    """Every photo's face descriptor, computed by `identity_worker` in a child process that
    starts at construction (see that module for why); `result` waits for it. Whatever goes
    wrong there (no such process can start, it fails, it takes over `timeout` seconds)
    makes `result` None, and the check computes the descriptors itself as before."""

    def __init__(
        self, photos: list[np.ndarray], landmarks_px: np.ndarray, timeout: float = 120.0
    ) -> None:
        self.timeout = timeout
        self._n = len(photos)
        self._folder: Path | None = None
        self._proc: subprocess.Popen | None = None
        try:
            self._folder = Path(tempfile.mkdtemp(prefix="mfnet-identity-"))
            crops = [face_crop(rgb, lmk) for rgb, lmk in zip(photos, landmarks_px, strict=True)]
            np.savez(
                self._folder / "faces.npz",
                landmarks=np.stack([lmk for _crop, lmk in crops]),
                **{f"crop{i}": crop for i, (crop, _lmk) in enumerate(crops)},
            )
            package_root = str(Path(__file__).resolve().parents[2])
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (package_root, env.get("PYTHONPATH", "")) if p
            )
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "mfnet_core.inputs.identity_worker", str(self._folder)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0,
            )
        except Exception:  # noqa: BLE001 - any failure: the check computes them itself
            self.close()

    def result(self) -> np.ndarray | str | None:
        """(N,128) descriptors; or why there are none (dlib or its model not installed);
        or None when the child gave no answer."""
        if self._proc is None:
            return None
        try:
            code = self._proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self.close()
            return None
        if code == DLIB_MISSING:
            return "dlib is not installed"
        if code == MODEL_MISSING:
            return "dlib's face-recognition model is not installed"
        try:
            assert self._folder is not None
            found = np.load(self._folder / "descriptors.npy", allow_pickle=False)
        except Exception:  # noqa: BLE001 - a missing or damaged answer is no answer
            return None
        return found if code == 0 and found.shape == (self._n, 128) else None

    def close(self) -> None:
        """Stops the child if it still runs and removes its folder."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> DescriptorJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_identity(
    photos: list[np.ndarray],
    landmarks_px: np.ndarray,
    yaws_deg: np.ndarray,
    job: DescriptorJob | None = None,
) -> IdentityCheck:
    """Descriptor distances between every pair of views turned less than
    MAX_COMPARED_YAW_DEG. photos: N (H,W,3) uint8; landmarks_px (N,68,2); yaws_deg (N,).
    job: the photos' descriptors being computed elsewhere (computed here when it has none)."""
    n = len(photos)
    distances = np.full((n, n), np.nan)
    compared = [i for i in range(n) if abs(float(yaws_deg[i])) <= MAX_COMPARED_YAW_DEG]
    if n < 2:
        return IdentityCheck(distances, [], "one photo")
    if len(compared) < 2:
        return IdentityCheck(
            distances, [], f"fewer than two views turned <= {MAX_COMPARED_YAW_DEG:.0f}°"
        )
    found = job.result() if job is not None else None
    if isinstance(found, str):
        return IdentityCheck(distances, [], found)
    try:
        descriptors = (
            {i: face_descriptor(photos[i], landmarks_px[i]) for i in compared}
            if found is None
            else {i: found[i] for i in compared}
        )
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
