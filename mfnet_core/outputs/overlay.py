"""Diagnostic overlays: detected vs fitted landmarks (and the fitted mesh outline) on a photo.

Why: a per-view picture is the fastest way for a user to see whether a bad head comes from
a bad detection (green dots off the face) or a bad fit (red crosses away from green dots).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from mfnet_core.render import working_resolution

# Colours in RGB (we draw on RGB arrays directly).
DETECTED_RGB = (40, 230, 40)
FITTED_RGB = (240, 40, 40)
LINK_RGB = (255, 220, 0)
OUTLINE_RGB = (0, 200, 255)
_SHIFT = 4  # sub-pixel drawing: coordinates are passed to OpenCV times 2**_SHIFT
_ONE = 1 << _SHIFT


def draw_overlay(
    rgb: np.ndarray,
    detected: np.ndarray | None,
    fitted: np.ndarray | None,
    outline_px: np.ndarray | Sequence[np.ndarray] | None = None,
    title: str = "",
    fitted_label: str = "fitted",
    legend: bool = True,
) -> np.ndarray:
    """A copy of `rgb` with landmarks, their residuals, a mesh outline and a legend.

    rgb: (H,W,3) uint8 (greyscale (H,W) is accepted). detected, fitted: (N,2) pixels
    (x right, y down) or None; drawn as green dots and red crosses, with yellow lines
    joining corresponding points when both are given. outline_px: one (M,2) closed polyline
    or a list of them (e.g. the silhouette contours of the fitted mesh), in cyan.
    Marker sizes scale with the image so the overlay reads the same at 512 and 4000 px.
    Non-finite points are skipped. `fitted_label` names the red crosses in the legend (e.g.
    "network"); `legend=False` leaves the legend out (panels of a grid). Returns a new
    (H,W,3) uint8 array.
    """
    img = np.asarray(rgb)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"expected an (H,W,3) image, got {img.shape}")
    out = np.ascontiguousarray(img[..., :3], dtype=np.uint8).copy()
    h, w = out.shape[:2]
    s = max(h, w) / 512.0
    det = _points(detected)
    fit = _points(fitted)
    # Markers follow the image size, but never grow past ~1/60 of the face (a small face in
    # a 4000 px photo would otherwise vanish under its own dots).
    m = s
    pts = [p for p in (det, fit) if p is not None and np.isfinite(p).any()]
    if pts:
        allp = np.concatenate(pts)
        allp = allp[np.isfinite(allp).all(1)]
        m = min(s, float(np.ptp(allp, axis=0).max()) / 150.0)
    thick = max(1, round(m))
    radius = max(2.0, 2.2 * m)
    arm = max(3.0, 3.0 * m)

    if outline_px is not None:
        lines = [outline_px] if isinstance(outline_px, np.ndarray) else list(outline_px)
        polys = [_fixed(np.asarray(p, np.float64).reshape(-1, 2)) for p in lines if len(p) >= 2]
        polys = [p[np.isfinite(p).all(1)] for p in polys]
        cv2.polylines(
            out,
            [p.astype(np.int32) for p in polys if len(p) >= 2],
            True,
            OUTLINE_RGB,
            thick,
            cv2.LINE_AA,
            _SHIFT,
        )

    if det is not None and fit is not None and len(det) == len(fit):
        for a, b in zip(det, fit, strict=True):
            if np.isfinite(a).all() and np.isfinite(b).all():
                cv2.line(out, _pt(a), _pt(b), LINK_RGB, thick, cv2.LINE_AA, _SHIFT)
    if det is not None:
        for p in det:
            if np.isfinite(p).all():
                cv2.circle(out, _pt(p), round(radius * _ONE), DETECTED_RGB, -1, cv2.LINE_AA, _SHIFT)
    if fit is not None:
        for p in fit:
            if np.isfinite(p).all():
                for dx, dy in ((arm, arm), (arm, -arm)):
                    a, b = p + (-dx, -dy), p + (dx, dy)
                    cv2.line(out, _pt(a), _pt(b), FITTED_RGB, thick, cv2.LINE_AA, _SHIFT)

    entries = []
    if legend:
        if det is not None:
            entries.append(("o detected", DETECTED_RGB))
        if fit is not None:
            entries.append((f"x {fitted_label}", FITTED_RGB))
        if outline_px is not None:
            entries.append(("- mesh outline", OUTLINE_RGB))
    _legend(out, s, entries, title)
    return out


def _points(p: np.ndarray | None) -> np.ndarray | None:
    if p is None:
        return None
    return np.asarray(p, dtype=np.float64).reshape(-1, 2)


def _fixed(p: np.ndarray) -> np.ndarray:
    return np.rint(p * _ONE)


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(p[0] * _ONE)), int(round(p[1] * _ONE))


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts only draw ASCII."""
    return text.replace("°", " deg").encode("ascii", "replace").decode("ascii")


def title_panels(image: np.ndarray, titles: Sequence[str]) -> np.ndarray:
    """A copy of a side-by-side picture of len(titles) equal-width panels with each panel's
    title at its top left (white on black, sized like the overlays' titles), so that a
    picture read on its own says which view and which quantity it shows."""
    out = np.ascontiguousarray(np.asarray(image)[..., :3], dtype=np.uint8).copy()
    if not titles:
        return out
    h, w = out.shape[:2]
    panel_w = w // len(titles)
    s = max(h, panel_w) / 512.0
    _, th, _, pad, _ = _text_metrics(s)
    for i, text in enumerate(titles):
        if text:
            _label(out, _ascii(text), i * panel_w + pad, pad + th, (255, 255, 255), s)
    return out


def _text_metrics(s: float) -> tuple[float, int, int, int, int]:
    """(font scale, text height, baseline, padding, thickness) for image scale s."""
    scale = 0.45 * s
    thick = max(1, round(s))
    pad = max(3, round(5 * s))
    (_, th), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    return scale, th, base, pad, thick


def _label(
    out: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int], s: float
) -> None:
    """Text with its baseline at (x, y) on a black box, drawn into `out`."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale, th, base, pad, thick = _text_metrics(s)
    (tw, _), _ = cv2.getTextSize(text, font, scale, thick)
    cv2.rectangle(
        out, (x - pad // 2, y - th - pad // 2), (x + tw + pad // 2, y + base), (0, 0, 0), -1
    )
    cv2.putText(out, text, (x, y), font, scale, colour, thick, cv2.LINE_AA)


def _legend(
    out: np.ndarray, s: float, entries: list[tuple[str, tuple[int, int, int]]], title: str
) -> None:
    """The title at the top left, the (text, colour) entries at the bottom left."""
    _, th, base, pad, _ = _text_metrics(s)
    line_h = th + base + pad
    if title:
        _label(out, _ascii(title), pad, pad + th, (255, 255, 255), s)
    y = out.shape[0] - pad - base
    for text, colour in reversed(entries):
        _label(out, text, pad, y, colour, s)
        y -= line_h


# The outline is found on a mask of at most this many pixels a side and scaled up: a line
# drawn over a phone photo needs no more (a 4032 px raster of the whole mesh took 1.8 s).
OUTLINE_MAX_SIDE = 1024


def coverage_outline(covered: np.ndarray, max_side: int = OUTLINE_MAX_SIDE) -> list:
    """The outer contours of a (H,W) bool mask of the pixels a mesh covers, as (M,2)
    float32 pixel polylines in that image; found at most `max_side` pixels a side (a larger
    mask is brought down by area, each small pixel covered when half of it is)."""
    h0, w0 = covered.shape
    h, w, sx, sy = working_resolution(h0, w0, max_side, minimum=1)
    mask = covered.astype(np.uint8)
    if (h, w) != (h0, w0):
        mask = (cv2.resize(mask * 255, (w, h), interpolation=cv2.INTER_AREA) >= 128).astype(
            np.uint8
        )
    return outline_of_mask(mask, (sx, sy))


def outline_of_mask(mask: np.ndarray, scale: tuple[float, float]) -> list:
    """Outer contours of a uint8 (h,w) mask that is the image brought down by `scale`
    (sx, sy), as (M,2) float32 polylines in the image's pixels (pixel i's centre of the
    small mask lies at (i + 0.5) / s)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    factor = np.array(scale, dtype=np.float32)
    return [((c[:, 0, :] + 0.5) / factor - 0.5).astype(np.float32) for c in contours]
