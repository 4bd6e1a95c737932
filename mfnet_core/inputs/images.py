"""Loading and validating photos: one place that turns whatever a user drops in into uint8 RGB.

Why a module of its own: phones write EXIF orientation instead of rotating pixels, scanners
write 16-bit greyscale, print workflows write CMYK JPEGs, cut-outs come as RGBA PNGs, and a
broken download is a truncated JPEG. Every later stage assumes upright (H,W,3) uint8 RGB and
a focal length in pixels (or None), so all of that is settled here, with errors that name
the file.
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mfnet_core.errors import PhotoError
from mfnet_core.inputs.files import describe_mode, open_regular

# Smallest usable side: below this no landmark detector finds a face reliably.
MIN_SIDE_PX = 64
# Larger images are refused before decoding (a 80 Mpx RGB image is already 240 MB decoded;
# anything bigger from a camera is rare, from an attacker a decompression bomb).
MAX_PIXELS = 80_000_000
DEFAULT_MAX_SIDE = 2048
# Larger files are refused before opening: an 80 Mpx 16-bit RGB TIFF is 480 MB.
MAX_FILE_BYTES = 512 * 2**20

# A "normal" lens: 50 mm on 35 mm film (36 x 24 mm) sees 2*atan(18/50) = 39.6 degrees across
# the long side. Phone main cameras are wider (~26 mm equiv.), but portraits are usually taken
# zoomed or cropped, and the 2x "portrait" mode of phones is ~50 mm; 40 degrees is a middle
# ground whose error the fitter absorbs mostly into the head's distance. Same value as
# camera.DEFAULT_FOV_DEG.
DEFAULT_FOV_DEG = 40.0

# Diagonal of 35 mm film (36 x 24 mm): the CIPA/Exif definition of "35 mm equivalent" scales
# by the diagonal, which for 3:2 images equals scaling the long side by 36 mm.
_FILM_DIAGONAL_MM = math.hypot(36.0, 24.0)

# Exif tags (numeric so that we do not depend on Pillow's enum names).
_TAG_ORIENTATION = 0x0112
_IFD_EXIF = 0x8769
_TAG_FOCAL_LENGTH = 0x920A
_TAG_FOCAL_35MM = 0xA405
_TAG_FOCAL_PLANE_XRES = 0xA20E
_TAG_FOCAL_PLANE_UNIT = 0xA210
# FocalPlaneResolutionUnit -> millimetres per unit (Exif: 2 inch, 3 cm; 4 mm and 5 um are
# written by some cameras although the standard only lists 1-3).
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}


@dataclass
class Photo:
    """An upright RGB photo ready for the pipeline.

    rgb: (H,W,3) uint8, EXIF orientation applied, long side <= the `max_side` it was loaded with.
    focal_px: focal length in pixels *of `rgb`* (already scaled), or None when the file
    does not say; use `default_focal_px` (or camera.Intrinsics.from_focal) then.
    original_size: (width, height) of the upright image before downscaling.
    scale: rgb size / original size (1.0 when not downscaled).
    notes: what was done to the pixels (alpha composited, 16-bit scaled, ...), for reports.
    """

    rgb: np.ndarray
    path: Path | None
    name: str
    focal_px: float | None = None
    exif_orientation_applied: bool = False
    original_size: tuple[int, int] = (0, 0)
    scale: float = 1.0
    focal_source: str = "none"  # "exif-35mm", "exif-focal-plane" or "none"
    notes: list[str] = field(default_factory=list)

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def default_focal_px(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> float:
    """Focal length in pixels for a photo without EXIF: `fov_deg` across the long side.

    40 degrees ~ a 50 mm lens on full frame (see DEFAULT_FOV_DEG for why).
    """
    if not 1.0 < fov_deg < 179.0:
        raise ValueError(f"fov_deg must be in (1, 179), got {fov_deg}")
    return 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2)


def photo_from_array(rgb: np.ndarray, name: str, focal_px: float | None = None) -> Photo:
    """Wraps an in-memory image (synthetic renders, tests) as a Photo; no file involved.

    Accepts (H,W,3) uint8 or float in [0,1], or (H,W) greyscale.
    """
    a = np.asarray(rgb)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise PhotoError(f"{name}: expected an (H,W,3) image, got shape {a.shape}")
    a = a[..., :3]
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
        else:
            a = np.clip(a, 0, 255).astype(np.uint8)
    a = np.ascontiguousarray(a)
    h, w = a.shape[:2]
    return Photo(
        rgb=a,
        path=None,
        name=name,
        focal_px=focal_px,
        original_size=(w, h),
        focal_source="given" if focal_px else "none",
    )


def load_photo(path: str | Path, max_side: int = DEFAULT_MAX_SIDE) -> Photo:
    """Reads a photo from disk into an upright uint8 RGB Photo, or raises PhotoError.

    Handles EXIF orientation, RGBA/LA/P with transparency (composited on white, as viewers
    show them), greyscale (L, I;16, I, F), 16-bit files (scaled, not clipped), CMYK
    (through the embedded ICC profile when there is one), and other colour profiles
    (converted to sRGB). Downscales so the long side is <= `max_side` and scales the EXIF
    focal length with it.
    """
    path = Path(path)
    name = path.name
    if max_side < MIN_SIDE_PX:
        raise ValueError(f"max_side must be >= {MIN_SIDE_PX}")
    # stat before opening: open() on a FIFO blocks until a writer comes, a device never ends
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise PhotoError(f"{name}: file not found ({path})") from None
    except OSError as e:
        raise PhotoError(f"{name}: cannot read the file ({e.strerror or e}) ({path})") from None
    if not stat.S_ISREG(st.st_mode):
        raise PhotoError(f"{name}: is {describe_mode(st.st_mode)}, not a photo ({path})")
    if st.st_size > MAX_FILE_BYTES:
        raise PhotoError(
            f"{name}: {st.st_size / 2**20:.0f} MiB is larger than the "
            f"{MAX_FILE_BYTES / 2**20:.0f} MiB limit for a photo; save it smaller first"
        )
    if st.st_size == 0:
        raise PhotoError(f"{name}: the file is empty ({path})")
    with open_regular(path, what="photo", max_bytes=MAX_FILE_BYTES, error=PhotoError) as fh:
        return _load_open(fh, path, name, max_side)


def _load_open(fh: BinaryIO, path: Path, name: str, max_side: int) -> Photo:
    """`load_photo` once the file is known to be a regular file of a sane size and open."""
    if path.suffix.lower() in (".heic", ".heif", ".avif"):
        _register_heif_opener()
    try:
        with warnings.catch_warnings():
            # We enforce our own, lower limit below; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fh)
    except Image.DecompressionBombError as e:
        raise PhotoError(f"{name}: image is absurdly large ({e}); refusing to decode it") from e
    except UnidentifiedImageError as e:
        hint = ""
        if path.suffix.lower() in (".heic", ".heif", ".avif"):
            hint = "; HEIC/AVIF needs `pip install pillow-heif`, or export the photo as JPEG"
        raise PhotoError(
            f"{name}: not an image Pillow can read (corrupt or unsupported format){hint}"
        ) from e
    except OSError as e:
        raise PhotoError(f"{name}: cannot read the file ({e})") from e

    with im:
        w0, h0 = im.size
        if w0 * h0 > MAX_PIXELS:
            raise PhotoError(
                f"{name}: {w0}x{h0} px ({w0 * h0 / 1e6:.0f} Mpx) is larger than the "
                f"{MAX_PIXELS / 1e6:.0f} Mpx limit; downscale it first"
            )
        if min(w0, h0) < MIN_SIDE_PX:
            raise PhotoError(
                f"{name}: {w0}x{h0} px is too small (each side must be at least {MIN_SIDE_PX} px)"
            )
        if im.format != "JPEG":
            # PNG's getexif() decodes the whole image; decode here so that corrupt data is
            # reported as such instead of being swallowed with a bad EXIF block.
            _decode(im, name)
        exif = _read_exif(im)
        orientation = int(exif.get(_TAG_ORIENTATION, 1) or 1)
        focal_full, focal_source = _focal_from_exif(exif, w0, h0)

        # JPEG can decode at 1/2, 1/4, 1/8 scale directly: much faster for 50 Mpx photos.
        scale_req = min(1.0, max_side / max(w0, h0))
        if scale_req < 0.5 and im.format == "JPEG":
            im.draft(None, (math.ceil(w0 * scale_req), math.ceil(h0 * scale_req)))

        notes: list[str] = []
        _decode(im, name)
        try:
            im_up = ImageOps.exif_transpose(im) or im
            rgb_im = _to_rgb(im_up, notes)
        except (OSError, SyntaxError, ValueError) as e:
            raise PhotoError(f"{name}: the image data is corrupt or truncated ({e})") from e

    applied = orientation in (2, 3, 4, 5, 6, 7, 8)
    # Upright size of the full-resolution image (draft may have decoded it smaller).
    orig_w, orig_h = (h0, w0) if orientation in (5, 6, 7, 8) else (w0, h0)
    if applied:
        notes.append(f"EXIF orientation {orientation} applied")

    long_side = max(orig_w, orig_h)
    scale = 1.0
    if long_side > max_side:
        scale = max_side / long_side
        new_size = (max(1, round(orig_w * scale)), max(1, round(orig_h * scale)))
        if rgb_im.size != new_size:
            rgb_im = rgb_im.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        notes.append(f"downscaled from {orig_w}x{orig_h} to {new_size[0]}x{new_size[1]}")
    elif rgb_im.size != (orig_w, orig_h):  # draft decoded smaller although no downscale was asked
        rgb_im = rgb_im.resize((orig_w, orig_h), Image.Resampling.LANCZOS)

    rgb = np.ascontiguousarray(np.asarray(rgb_im, dtype=np.uint8))
    if min(rgb.shape[:2]) < MIN_SIDE_PX:
        raise PhotoError(
            f"{name}: after downscaling to a {max_side} px long side the image is "
            f"{rgb.shape[1]}x{rgb.shape[0]} px, too narrow to find a face"
        )
    # Recompute the actual scale from integer sizes so focal_px matches the pixels exactly.
    scale = rgb.shape[1] / orig_w if scale != 1.0 else 1.0
    return Photo(
        rgb=rgb,
        path=path,
        name=name,
        focal_px=None if focal_full is None else focal_full * scale,
        exif_orientation_applied=applied,
        original_size=(orig_w, orig_h),
        scale=scale,
        focal_source=focal_source,
        notes=notes,
    )


def _register_heif_opener() -> None:
    """Lets Pillow read iPhone HEIC files when the optional pillow-heif is installed."""
    try:
        from pillow_heif import register_heif_opener  # type: ignore[import-not-found]
    except ImportError:
        return
    register_heif_opener()


def _decode(im: Image.Image, name: str) -> None:
    """Decodes the pixels now, turning Pillow's many failure types into one PhotoError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
    except Image.DecompressionBombError as e:
        raise PhotoError(f"{name}: image is absurdly large ({e}); refusing to decode it") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow says "image file is truncated" / "broken data stream" here.
        raise PhotoError(f"{name}: the image data is corrupt or truncated ({e})") from e


def _read_exif(im: Image.Image) -> dict[int, object]:
    """IFD0 tags plus the Exif sub-IFD merged into one dict; {} when absent or unreadable."""
    try:
        exif = im.getexif()
        tags: dict[int, object] = dict(exif.items())
        try:
            tags.update(exif.get_ifd(_IFD_EXIF))
        except Exception:  # noqa: BLE001 - malformed sub-IFDs are common; treat as absent
            pass
        return tags
    except Exception:  # noqa: BLE001 - a bad EXIF block must not make a good photo unusable
        return {}


def _as_float(v: object) -> float | None:
    try:
        f = float(v)  # type: ignore[arg-type]  # IFDRational, int, tuple-free values
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _focal_from_exif(exif: dict[int, object], w: int, h: int) -> tuple[float | None, str]:
    """Focal length in pixels of the full-resolution image, and where it came from.

    Preferred: FocalLengthIn35mmFilm scaled by the image diagonal (the Exif definition; the
    same as f35/36 * long side for 3:2 images). Else FocalLength (mm) times the sensor's
    pixel density FocalPlaneXResolution. Values giving a field of view outside 8-150
    degrees on the long side are ignored as bogus.
    """
    long_side = max(w, h)

    def plausible(f_px: float) -> bool:
        fov = math.degrees(2 * math.atan(0.5 * long_side / f_px))
        return 8.0 <= fov <= 150.0

    f35 = _as_float(exif.get(_TAG_FOCAL_35MM))
    if f35 is not None:
        f_px = f35 * math.hypot(w, h) / _FILM_DIAGONAL_MM
        if plausible(f_px):
            return f_px, "exif-35mm"
    f_mm = _as_float(exif.get(_TAG_FOCAL_LENGTH))
    xres = _as_float(exif.get(_TAG_FOCAL_PLANE_XRES))
    unit = exif.get(_TAG_FOCAL_PLANE_UNIT, 2)
    unit_mm = _UNIT_MM.get(int(unit) if isinstance(unit, int | float) else 2)
    if f_mm is not None and xres is not None and unit_mm is not None:
        f_px = f_mm * xres / unit_mm
        if plausible(f_px):
            return f_px, "exif-focal-plane"
    return None, "none"


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, scaling (not clipping) high bit depths."""
    mode = im.mode
    icc = im.info.get("icc_profile")

    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im)
        grey = _high_depth_to_uint8(a, mode)
        notes.append(f"{mode} greyscale scaled to 8 bit")
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")

    if mode == "CMYK":
        out = _icc_to_srgb(im, icc)
        notes.append("CMYK converted to RGB" + (" via its ICC profile" if out is not None else ""))
        return out if out is not None else im.convert("RGB")

    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        if alpha.min() < 255:
            notes.append("transparent pixels composited on white")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")

    if mode == "RGB":
        out = _icc_to_srgb(im, icc)
        if out is not None:
            notes.append("colour profile converted to sRGB")
            return out
        return im.copy() if im.readonly else im
    if mode in ("L", "1"):
        notes.append("greyscale photo")
    return im.convert("RGB")


def _high_depth_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """(H,W) 16/32-bit int or float greyscale -> uint8 by its nominal range.

    16-bit data (I;16*, and I whose values fit 0..65535) maps 65535 -> 255 by /257, rounded.
    Floats in [0,1] map by *255; anything else is min-max stretched (its range is unknown).
    """
    a = a.astype(np.float64)
    if mode.startswith("I;16") or (mode == "I" and a.min() >= 0 and a.max() <= 65535):
        return np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(a.shape, np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    return np.clip(np.rint((a - lo) / max(hi - lo, 1e-12) * 255.0), 0, 255).astype(np.uint8)


def _icc_to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image | None:
    """Converts through an embedded ICC profile to sRGB; None when absent or it fails."""
    if not icc:
        return None
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if im.mode == "RGB" and "srgb" in ImageCms.getProfileDescription(src).lower():
            return None  # already sRGB: converting would only cost time
        dst = ImageCms.createProfile("sRGB")
        out = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
        return out
    except Exception:  # noqa: BLE001 - a broken profile: fall back to the plain conversion
        return None
