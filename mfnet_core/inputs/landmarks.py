"""Face box + 68 iBUG landmarks per photo, behind one small interface.

Why an interface: the fitter only needs (68,2) pixels in iBUG order; which detector made
them is a deployment choice. dlib (HOG detector + 68-point shape predictor from the
`face-recognition-models` package) works offline out of the box and is the default;
face-alignment (FAN) is more accurate on turned faces but only used when its weights are
already on disk, because mfnet never downloads anything behind the user's back.

iBUG-68 convention (0-based): points 36-41 are the subject's *right* eye, which is on the
image's left in a non-mirrored photo; 42-47 the subject's left eye.

Pixel convention (docs/CONVENTIONS.md): origin at the image's top-left *corner*, so the
centre of pixel (i, j) is (i + 0.5, j + 0.5); dlib reports pixel indices, which we shift by
half a pixel. A horizontal mirror then maps x to W - x exactly.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from mfnet_core.errors import MfnetError, NoFaceError
from mfnet_core.inputs.face_detection import FaceDetection

if TYPE_CHECKING:
    from mfnet_core.inputs.images import Photo

N_LANDMARKS = 68

# A face narrower than this gives coarse landmarks and a blurry texture.
MIN_GOOD_FACE_PX = 100

_GROUPS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 17)),
    "brow_r": tuple(range(17, 22)),
    "brow_l": tuple(range(22, 27)),
    "nose_bridge": tuple(range(27, 31)),
    "nose_lower": tuple(range(31, 36)),
    "eye_r": tuple(range(36, 42)),
    "eye_l": tuple(range(42, 48)),
    "lip_outer": tuple(range(48, 60)),
    "lip_inner": tuple(range(60, 68)),
}

# Upper/lower eyelid pairs (MFNet eq. 8) and upper/lower lip pairs, inner then outer (eq. 9).
EYELID_PAIRS: tuple[tuple[int, int], ...] = ((37, 41), (38, 40), (43, 47), (44, 46))
LIP_PAIRS: tuple[tuple[int, int], ...] = (
    (61, 67),
    (62, 66),
    (63, 65),
    (50, 58),
    (51, 57),
    (52, 56),
)


def _mirror_permutation() -> tuple[int, ...]:
    """Index map for a horizontal flip: point i of the flipped face is point perm[i]."""
    perm = list(range(N_LANDMARKS))
    pairs = [(i, 16 - i) for i in range(8)]  # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
    pairs += [(31, 35), (32, 34)]  # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lips
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


# For a horizontally mirrored image: lm_mirrored[i] ~ flip(lm_original[MIRROR_PERMUTATION[i]]).
MIRROR_PERMUTATION: tuple[int, ...] = _mirror_permutation()


@dataclass(frozen=True)
class LandmarkGroups:
    """Named parts of the iBUG-68 scheme and the point pairs the eye/lip losses use."""

    groups: dict[str, tuple[int, ...]]
    eyelid_pairs: tuple[tuple[int, int], ...]
    lip_pairs: tuple[tuple[int, int], ...]
    mirror: tuple[int, ...]


def landmark_groups() -> LandmarkGroups:
    """iBUG-68 index groups (jaw, brow_r, brow_l, nose_bridge, nose_lower, eye_r, eye_l,
    lip_outer, lip_inner; `_r` = subject's right = image left) and loss pairs."""
    return LandmarkGroups(dict(_GROUPS), EYELID_PAIRS, LIP_PAIRS, MIRROR_PERMUTATION)


@runtime_checkable
class LandmarkBackend(Protocol):
    """Anything that finds faces with 68 iBUG landmarks in an (H,W,3) uint8 RGB image."""

    name: str

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]: ...


@dataclass
class LandmarkResult:
    """The chosen face of one photo.

    landmarks: (68,2) float32 pixels (x right, y down), iBUG order.
    warnings: user-facing, each naming the photo.
    """

    landmarks: np.ndarray
    box: tuple[float, float, float, float]
    n_faces: int
    warnings: list[str] = field(default_factory=list)
    score: float = 0.0
    backend: str = ""
    detector: str = ""
    seconds: float = 0.0
    pose_hint: str = ""  # FaceDetection.pose_hint: "frontal", "turned", "steep" or unknown
    iris: np.ndarray | None = None  # FaceDetection.iris: (2,5,2) px, or None


# ---------------------------------------------------------------- dlib


def face_recognition_models_dir() -> Path | None:
    """Folder with face-recognition-models' .dat files, found without importing the package
    (its __init__ imports pkg_resources, which setuptools >= 81 no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "models"
        if d.is_dir():
            return d
    return None


class _DlibModels:
    """dlib models loaded once per process (the 68-point predictor is 100 MB, ~0.5 s)."""

    _lock = threading.Lock()
    _cache: dict[str, Any] = {}

    @classmethod
    def get(cls, key: str) -> Any:
        with cls._lock:
            if key not in cls._cache:
                cls._cache[key] = cls._load(key)
            return cls._cache[key]

    @staticmethod
    def _load(key: str) -> Any:
        try:
            import dlib
        except ImportError as e:
            raise MfnetError(
                "dlib is not installed: `pip install dlib-bin face-recognition-models` "
                "(or choose another landmark backend)"
            ) from e
        if key == "hog":
            return dlib.get_frontal_face_detector()
        models = face_recognition_models_dir()
        file = {
            "predictor": "shape_predictor_68_face_landmarks.dat",
            "cnn": "mmod_human_face_detector.dat",
            "recognition": "dlib_face_recognition_resnet_model_v1.dat",
        }[key]
        if models is None or not (models / file).is_file():
            if key in ("cnn", "recognition"):
                return None  # optional: fallback detector, same-person check
            raise MfnetError(
                f"dlib's 68-point model {file} was not found "
                f"(looked in {models or 'the face_recognition_models package: not installed'}); "
                "`pip install face-recognition-models`"
            )
        if key == "predictor":
            return dlib.shape_predictor(str(models / file))
        if key == "recognition":
            return dlib.face_recognition_model_v1(str(models / file))
        return dlib.cnn_face_detection_model_v1(str(models / file))


def dlib_model(key: str) -> Any:
    """A dlib model loaded once per process: "hog", "predictor", "cnn" or "recognition" (the
    last two None when face-recognition-models lacks them)."""
    return _DlibModels.get(key)


def _resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=interp))


class DlibBackend:
    """dlib's HOG face detector + 68-point shape predictor; CNN (MMOD) detector as fallback.

    The HOG detector has five sub-detectors (frontal, turned left/right, tilted), so it
    finds faces turned up to ~45 degrees, which covers MFNet's side views. When HOG finds
    nothing it retries on a padded copy (faces filling the frame), then with one more
    upsampling (small faces), then, if face-recognition-models ships it, with the slower CNN
    detector (1-2 s per image on a CPU).

    The shape predictor is sensitive to the box (HOG boxes come in pyramid steps): on a
    rendered head with known landmarks one box put the mouth on the chin while a box 20%
    smaller was right. So the predictor runs on the box scaled by each of `box_scales`
    and every point takes the median of those runs (3 ms per run); on a -75..60 degree yaw
    sweep this cut the median landmark error by ~15%. `box_scales=(1.0,)` turns it off.

    detect_max_side: long side of the copy the detector sees (landmarks are always placed
    on the full-resolution image).
    """

    name = "dlib"

    def __init__(
        self,
        use_cnn_fallback: bool = True,
        detect_max_side: int = 1280,
        box_scales: tuple[float, ...] = (0.85, 0.93, 1.0, 1.08, 1.16),
    ) -> None:
        self.use_cnn_fallback = use_cnn_fallback
        self.detect_max_side = detect_max_side
        self.box_scales = tuple(box_scales) or (1.0,)

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]:
        rgb = _check_rgb(rgb)
        h, w = rgb.shape[:2]
        long_side = max(h, w)
        s1 = min(1.0, self.detect_max_side / long_side)
        small = _resize(rgb, s1) if s1 < 1.0 else rgb
        up = 1 if max(small.shape[:2]) < 1000 else 0

        boxes = self._hog(small, up, s1, 0)
        if not boxes:  # face filling the frame: give the detector some context around it
            s2 = min(1.0, 640 / long_side)
            pad = round(0.25 * long_side * s2)
            padded = _pad(_resize(rgb, s2) if s2 < 1.0 else rgb, pad)
            boxes = self._hog(padded, 1, s2, pad)
        if not boxes and up == 0:  # small face in a big photo
            boxes = self._hog(small, 1, s1, 0)
        if not boxes and self.use_cnn_fallback:
            boxes = self._cnn(rgb)

        predictor = _DlibModels.get("predictor")
        out = []
        for box, score, det in boxes:
            runs = [_dlib_shape(predictor, rgb, _scale_box(box, k)) for k in self.box_scales]
            lm = np.median(np.stack(runs), axis=0).astype(np.float32)
            hint = {"hog-frontal": "frontal", "hog-side": "turned", "cnn": "steep"}.get(det, "")
            out.append(
                FaceDetection(
                    box=box,
                    landmarks=lm,
                    score=score,
                    detector=det.split("-")[0],
                    pose_hint=hint,
                )
            )
        out.sort(key=lambda d: -d.area)
        return out

    @staticmethod
    def _hog(img: np.ndarray, upsample: int, scale: float, pad: int) -> list[_Box]:
        detector = _DlibModels.get("hog")
        rects, scores, kinds = detector.run(img, upsample, 0.0)
        # dlib's HOG sub-detectors: 0 frontal, 1/2 looking left/right, 3/4 frontal but tilted
        return [
            (_unmap(r, scale, pad), float(s), "hog-side" if k in (1, 2) else "hog-frontal")
            for r, s, k in zip(rects, scores, kinds, strict=True)
        ]

    @staticmethod
    def _cnn(rgb: np.ndarray) -> list[_Box]:
        cnn = _DlibModels.get("cnn")
        if cnn is None:
            return []
        long_side = max(rgb.shape[:2])
        s = min(1.0, 640 / long_side)
        img = _resize(rgb, s) if s < 1.0 else rgb
        up = 1 if max(img.shape[:2]) <= 320 else 0
        dets = cnn(img, up)
        return [(_unmap(d.rect, s, 0), float(d.confidence), "cnn") for d in dets]


_Box = tuple[tuple[float, float, float, float], float, str]


def _pad(img: np.ndarray, pad: int) -> np.ndarray:
    import cv2

    return np.ascontiguousarray(cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE))


def _unmap(rect: Any, scale: float, pad: int) -> tuple[float, float, float, float]:
    """dlib rectangle in a padded/scaled copy -> (x0,y0,x1,y1) in the original image."""
    return (
        (rect.left() - pad) / scale,
        (rect.top() - pad) / scale,
        (rect.right() + 1 - pad) / scale,
        (rect.bottom() + 1 - pad) / scale,
    )


def _scale_box(
    box: tuple[float, float, float, float], k: float
) -> tuple[float, float, float, float]:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = k * (box[2] - box[0]) / 2, k * (box[3] - box[1]) / 2
    return (cx - hw, cy - hh, cx + hw, cy + hh)


def _dlib_shape(predictor: Any, rgb: np.ndarray, box: tuple[float, ...]) -> np.ndarray:
    """(68,2) float32 landmarks in corner-origin pixels (dlib's integer pixel index + 0.5)."""
    import dlib

    x0, y0, x1, y1 = (round(v) for v in box)
    shape = predictor(rgb, dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
    return np.array([[p.x + 0.5, p.y + 0.5] for p in shape.parts()], dtype=np.float32)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected an (H,W,3) uint8 RGB image, got {a.shape} {a.dtype}")
    return np.ascontiguousarray(a)


# ---------------------------------------------------------------- face-alignment (optional)


def face_alignment_weights() -> tuple[Path, list[str]]:
    """torch hub checkpoint folder and the FAN weight files missing from it ([] = all there).

    face-alignment downloads 2DFAN4 (landmarks) and s3fd (detector) into
    `torch.hub.get_dir()/checkpoints` on first use; we only look.
    """
    import torch

    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    missing = [p for p in ("2DFAN4*", "s3fd*") if not any(ckpt.glob(p))]
    return ckpt, missing


class FaceAlignmentBackend:
    """FAN (face-alignment package) with its S3FD detector, from weights already on disk."""

    name = "face-alignment"

    def __init__(self, device: str | None = None) -> None:
        if importlib.util.find_spec("face_alignment") is None:
            raise MfnetError(
                "the face-alignment landmark backend is not installed: "
                "`pip install 'mfnet[face-alignment]'`, or use the dlib backend"
            )
        ckpt, missing = face_alignment_weights()
        if missing:
            raise MfnetError(
                f"face-alignment's weights ({', '.join(m.rstrip('*') for m in missing)}) are not in "
                f"{ckpt}; mfnet never downloads models. Run face-alignment once with network "
                "access (it caches them there), or use the dlib backend"
            )
        import face_alignment
        import torch

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        types = face_alignment.LandmarksType
        two_d = getattr(types, "TWO_D", None) or types._2D
        self._fa = face_alignment.FaceAlignment(two_d, device=device, flip_input=False)

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]:
        rgb = _check_rgb(rgb)
        lms, _, boxes = self._fa.get_landmarks_from_image(
            rgb, return_bboxes=True, return_landmark_score=True
        )
        out = []
        for i, lm in enumerate(lms or []):
            lm = np.asarray(lm, dtype=np.float32)[:, :2]
            if boxes is not None and i < len(boxes):
                b = np.asarray(boxes[i], dtype=float)
                box = (float(b[0]), float(b[1]), float(b[2]), float(b[3]))
                score = float(b[4]) if b.shape[0] > 4 else 1.0
            else:
                lo, hi = lm.min(0), lm.max(0)
                box, score = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])), 1.0
            out.append(FaceDetection(box=box, landmarks=lm, score=score, detector="sfd"))
        out.sort(key=lambda d: -d.area)
        return out


# ---------------------------------------------------------------- entry points

_BACKENDS: dict[str, LandmarkBackend] = {}
_BACKENDS_LOCK = threading.Lock()
_ALIASES = {
    "auto": "auto",
    "dlib": "dlib",
    "mediapipe": "mediapipe",
    "face-alignment": "face-alignment",
    "face_alignment": "face-alignment",
    "fan": "face-alignment",
}
BACKEND_NAMES = ("auto", "mediapipe", "dlib", "face-alignment")


class AutoBackend:
    """MediaPipe where it is installed and finds a face, else dlib: MediaPipe follows
    turned faces far better (mediapipe_landmarks.py), dlib finds small and steeply turned
    faces MediaPipe's short-range detector misses, and tells how turned they are."""

    name = "auto"

    def __init__(self) -> None:
        from mfnet_core.inputs.mediapipe_landmarks import mediapipe_available

        self._first = get_backend("mediapipe") if mediapipe_available() else None

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]:
        if self._first is not None:
            found = self._first.detect(rgb)
            if found:
                return found
        return get_backend("dlib").detect(rgb)


def _make_backend(key: str) -> LandmarkBackend:
    if key == "dlib":
        return DlibBackend()
    if key == "mediapipe":
        from mfnet_core.inputs.mediapipe_landmarks import MediapipeBackend

        return MediapipeBackend()
    if key == "auto":
        return AutoBackend()
    return FaceAlignmentBackend()


def get_backend(name: str = "dlib") -> LandmarkBackend:
    """A shared backend instance by name: "auto" (MediaPipe if installed, else dlib),
    "mediapipe", "dlib" or "face-alignment"."""
    key = _ALIASES.get(name.lower())
    if key is None:
        raise MfnetError(
            f"unknown landmark backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}"
        )
    with _BACKENDS_LOCK:
        existing = _BACKENDS.get(key)
    if existing is not None:
        return existing
    made = _make_backend(key)  # outside the lock: "auto" asks for its parts
    with _BACKENDS_LOCK:
        return _BACKENDS.setdefault(key, made)


def choose_face(faces: list[FaceDetection]) -> FaceDetection:
    """The largest face; among faces within 30% of the largest area, the most confident.

    Why the tie-break: a false detection (e.g. the patch on the astronaut's suit) can come
    out a pixel larger than the real face because of the detector's pyramid quantisation.
    """
    biggest = max(f.area for f in faces)
    close = [f for f in faces if f.area >= 0.7 * biggest]
    return max(close, key=lambda f: (f.score, f.area))


def detect_landmarks(
    photo_or_rgb: Photo | np.ndarray,
    backend: str | LandmarkBackend = "dlib",
    *,
    source_name: str | None = None,
) -> LandmarkResult:
    """68 iBUG landmarks of the main face in a photo, or NoFaceError naming the file.

    source_name: the file name used in messages (default: the Photo's name, else "image").
    """
    if isinstance(photo_or_rgb, np.ndarray):
        rgb, default_name = photo_or_rgb, "image"
    else:
        rgb, default_name = photo_or_rgb.rgb, photo_or_rgb.name
    name = source_name or default_name
    be = get_backend(backend) if isinstance(backend, str) else backend

    t0 = time.perf_counter()
    faces = be.detect(rgb)
    seconds = time.perf_counter() - t0
    if not faces:
        raise NoFaceError(
            f"no face found in {name}; use a photo where the face is at least "
            f"~{MIN_GOOD_FACE_PX} px wide and not covered"
        )
    face = choose_face(faces)
    warnings = _face_warnings(face, faces, rgb.shape[:2], name)
    return LandmarkResult(
        landmarks=np.asarray(face.landmarks, dtype=np.float32).reshape(N_LANDMARKS, 2),
        box=tuple(float(v) for v in face.box),  # type: ignore[arg-type]
        n_faces=len(faces),
        warnings=warnings,
        score=face.score,
        backend=be.name,
        detector=face.detector,
        seconds=seconds,
        pose_hint=face.pose_hint,
        iris=None if face.iris is None else np.asarray(face.iris, dtype=np.float32),
    )


def _face_warnings(
    face: FaceDetection, faces: list[FaceDetection], hw: tuple[int, ...], name: str
) -> list[str]:
    h, w = hw
    out = []
    if len(faces) > 1:
        out.append(f"{name}: {len(faces)} faces found, using the largest")
    if face.width < MIN_GOOD_FACE_PX:
        out.append(
            f"{name}: the face is only {face.width:.0f} px wide; landmarks and texture will be "
            f"coarse (aim for {2 * MIN_GOOD_FACE_PX} px or more)"
        )
    lm = face.landmarks
    outside = int(((lm[:, 0] < 0) | (lm[:, 0] >= w) | (lm[:, 1] < 0) | (lm[:, 1] >= h)).sum())
    if outside:
        out.append(f"{name}: {outside} landmarks fall outside the image; the face is cut off")
    if face.detector == "cnn":
        out.append(
            f"{name}: the face was found only by the slower CNN detector, so it is probably "
            "turned more than ~60° or partly hidden; the 68-point landmarks are unreliable "
            "there (check the landmark overlay)"
        )
    return out
