"""Frames of a video file (OpenCV's VideoCapture: whatever its FFmpeg reads, any fps) or of a
folder of images (sorted by name with numbers in natural order, at a given fps).

`check_source` answers without OpenCV (the CLI calls it before heavy imports); `open_frames`
does the reading. Frames come as (H,W,3) uint8 RGB, scaled so that the longer side is at
most `max_side` when given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mfnet_core.errors import MfnetError

__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_FPS",
    "FrameSource",
    "check_source",
    "image_files",
    "open_frames",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# A folder of images has no frame rate of its own; nor do some video files.
DEFAULT_FPS = 30.0


def _natural_key(path: Path) -> list:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", path.name)]


def image_files(folder: Path) -> list[Path]:
    """The folder's image files (by extension, not hidden), in natural name order
    (frame2 before frame10)."""
    files = [
        p
        for p in Path(folder).iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]
    return sorted(files, key=_natural_key)


def check_source(path: Path | str) -> str:
    """ "video" or "folder", or MfnetError with one line; needs no OpenCV."""
    p = Path(path)
    if p.is_dir():
        if not image_files(p):
            raise MfnetError(
                f"{p}: no images in the folder (looked for {', '.join(IMAGE_EXTENSIONS)})"
            )
        return "folder"
    if not p.exists():
        raise MfnetError(f"{p}: file not found")
    if not p.is_file():
        raise MfnetError(f"{p}: not a video file or a folder of images")
    if p.stat().st_size == 0:
        raise MfnetError(f"{p}: empty file")
    return "video"


@dataclass
class FrameSource:
    """Frames of one clip. `n_frames` is what the container says (None when unknown; a video
    may end earlier); `fps` the rate its frames are meant to play at; `size` (width, height)
    after scaling; `scale` the factor applied to the original frames."""

    path: Path
    kind: str  # "video" or "folder"
    fps: float
    n_frames: int | None
    size: tuple[int, int]
    scale: float = 1.0
    warnings: list[str] = field(default_factory=list)
    _files: list[Path] = field(default_factory=list, repr=False)
    _max_side: int | None = None

    def __iter__(self) -> Iterator[tuple[int, np.ndarray | None]]:
        """(index, RGB frame) in order; the frame is None where an image cannot be read
        (a folder with a broken file: that frame counts as one without a face)."""
        if self.kind == "folder":
            yield from self._folder_frames()
        else:
            yield from self._video_frames()

    def _fit(self, rgb: np.ndarray) -> np.ndarray:
        import cv2

        w, h = self.size
        if rgb.shape[1] != w or rgb.shape[0] != h:
            interp = cv2.INTER_AREA if rgb.shape[1] > w else cv2.INTER_LINEAR
            rgb = cv2.resize(rgb, (w, h), interpolation=interp)
        return np.ascontiguousarray(rgb)

    def _folder_frames(self) -> Iterator[tuple[int, np.ndarray | None]]:
        for i, f in enumerate(self._files):
            rgb = _read_image(f)
            if rgb is None:
                self.warnings.append(
                    f"{f.name}: not a readable image; treated as a frame without a face"
                )
                yield i, None
                continue
            yield i, self._fit(rgb)

    def _video_frames(self) -> Iterator[tuple[int, np.ndarray | None]]:
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        try:
            i = 0
            while True:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else _gray_to_rgb(bgr)
                yield i, self._fit(rgb)
                i += 1
        finally:
            cap.release()


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _read_image(path: Path) -> np.ndarray | None:
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    if data is None or data.size == 0:
        return None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _scaled_size(width: int, height: int, max_side: int | None) -> tuple[tuple[int, int], float]:
    if not max_side or max(width, height) <= max_side:
        return (width, height), 1.0
    s = max_side / max(width, height)
    return (max(1, round(width * s)), max(1, round(height * s))), s


def open_frames(
    path: Path | str, fps: float | None = None, max_side: int | None = None
) -> FrameSource:
    """The frames of a video file or an image folder. `fps`: the rate of a folder's images
    (default 30), or a rate that overrides what a video file says; `max_side`: scale frames
    down so that their longer side is at most this many pixels."""
    p = Path(path)
    kind = check_source(p)
    warnings: list[str] = []
    if kind == "folder":
        files = image_files(p)
        first = None
        for f in files:
            first = _read_image(f)
            if first is not None:
                break
        if first is None:
            raise MfnetError(f"{p}: none of the {len(files)} images could be read")
        h, w = first.shape[:2]
        size, scale = _scaled_size(w, h, max_side)
        return FrameSource(
            p, kind, float(fps or DEFAULT_FPS), len(files), size, scale, warnings, files
        )

    import cv2

    cap = cv2.VideoCapture(str(p))
    try:
        if not cap.isOpened():
            raise MfnetError(f"{p}: OpenCV cannot open this video (unknown format or damaged)")
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        rate = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if w <= 0 or h <= 0:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                raise MfnetError(f"{p}: the video has no readable frame")
            h, w = bgr.shape[:2]
    finally:
        cap.release()
    if fps is None:
        if not (math.isfinite(rate) and 0 < rate <= 1000):
            warnings.append(
                f"{p.name}: the video does not say its frame rate; using {DEFAULT_FPS:g} fps (set --fps)"
            )
            rate = DEFAULT_FPS
        fps = rate
    size, scale = _scaled_size(w, h, max_side)
    return FrameSource(p, kind, float(fps), count if count > 0 else None, size, scale, warnings)
