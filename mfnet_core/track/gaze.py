"""Eye gaze from the picture: where the iris is inside each eye's landmark outline, turned
into the eye joint's rotation (`eye_pose`) and ARKit's eyeLook weights.

dlib's 68 landmarks have no pupil, so gaze needs the image. Per eye: the darkest part inside
the eye's six-point outline (the iris; two passes, the second inside a circle of about the
iris's size around the first estimate, so that lashes and corner shadows weigh little) gives
the iris centre in pixels. The ray through it meets the eyeball (a sphere about the eye joint
of the model's eyeball radius, placed by the frame's head pose); the direction from the
eye's centre to that point, in head axes, against the direction the model's iris faces at
rest, is the eye's rotation. An eye that is closed (lids closer than `MIN_OPENNESS` of its
width) or whose outline is too small gives no measurement: the tracker bridges it.

ARKit's eyeLook weights are gaze, not lid shapes: EyeLookOutLeft is the left eye turned
toward the subject's left, and so on; a weight of 1 is `EYE_LOOK_FULL_DEG` of rotation
(ARKit does not publish its scale; 35 degrees sideways and 25 up or down is where the
weights of ARKit captures saturate in practice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mfnet_core.camera import Intrinsics, axis_angle_to_matrix_np, matrix_to_axis_angle

__all__ = [
    "EYE_LOOK_FULL_DEG",
    "EyeModel",
    "eye_angles",
    "eye_look_weights",
    "eye_models",
    "gaze_from_iris",
    "eye_pose_from_angles",
    "iris_centre",
    "look_rotation",
]

MIN_OPENNESS = 0.15  # lid gap over eye width below which the iris is not looked for
MAX_DARK_SPREAD = 0.14  # horizontal spread (std) of the darkest pixels over the eye width
MIN_DARK_COLUMN = 0.5  # share of the opening's height the iris fills at its centre
MIN_CONTRAST = 0.3  # (bright - dark) / bright inside the eye: the white against the iris
EYE_LOOK_FULL_DEG = {"horizontal": 35.0, "up": 25.0, "down": 25.0}
# iBUG-68: 36-41 the subject's right eye, 42-47 the left.
EYE_LANDMARKS = {"L": tuple(range(42, 48)), "R": tuple(range(36, 42))}


@dataclass(frozen=True)
class EyeModel:
    """One eye of the model at the tracked identity (model axes, metres)."""

    side: str  # "L" (the subject's left) or "R"
    joint: int  # index of the eye joint
    radius: float  # eye centre to the front of the eyeball
    rest: np.ndarray  # (3,) unit: where the iris faces with a zero eye pose


def eye_models(
    rest_vertices: np.ndarray,
    joints: np.ndarray,
    joint_names: tuple[str, ...],
    skin_weights: np.ndarray,
    part_vertices: dict[str, np.ndarray],
) -> dict[str, EyeModel]:
    """The model's eyes from its rig arrays: eyeball vertices are those skinned to an eye
    joint; the rest direction is the mean direction of the iris part (`iris_L`/`iris_R`)
    where the model has one, else the model's forward axis (+z)."""
    out = {}
    for side in ("L", "R"):
        name = f"eye_{side}"
        if name not in joint_names:
            continue
        j = joint_names.index(name)
        centre = joints[j]
        ball = np.flatnonzero(skin_weights[:, j] > 0.5)
        if len(ball) < 8:
            continue
        rest = np.array([0.0, 0.0, 1.0])
        iris = part_vertices.get(f"iris_{side}")
        if iris is not None and len(iris):
            m = (rest_vertices[iris] - centre).mean(0)
            if np.linalg.norm(m) > 1e-6:
                rest = m / np.linalg.norm(m)
        radius = float(((rest_vertices[ball] - centre) @ rest).max())
        if radius <= 0:
            continue
        out[side] = EyeModel(side, j, radius, rest)
    return out


def _openness(pts: np.ndarray) -> float:
    """Lid gap over eye width of a six-point iBUG eye outline."""
    width = np.linalg.norm(pts[3] - pts[0])
    gap = 0.5 * (np.linalg.norm(pts[1] - pts[5]) + np.linalg.norm(pts[2] - pts[4]))
    return float(gap / max(width, 1e-6))


def iris_centre(gray: np.ndarray, pts: np.ndarray, min_width_px: float = 8.0) -> np.ndarray | None:
    """(2,) the iris centre in pixels (corner origin) inside one eye's six landmarks, or None
    (eye closed, too small, or nothing dark enough). gray: (H,W) uint8 or float."""
    import cv2

    pts = np.asarray(pts, dtype=np.float64)
    width = float(np.linalg.norm(pts[3] - pts[0]))
    if width < min_width_px or _openness(pts) < MIN_OPENNESS:
        return None
    margin = 0.2 * width
    h, w = gray.shape[:2]
    x0, y0 = (pts.min(0) - margin).astype(int)
    x1, y1 = np.ceil(pts.max(0) + margin).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    k = 48.0 / width  # the eye ~48 px wide in the patch
    patch = np.asarray(gray[y0:y1, x0:x1], dtype=np.float32)
    size = (max(4, round((x1 - x0) * k)), max(4, round((y1 - y0) * k)))
    patch = cv2.resize(patch, size, interpolation=cv2.INTER_LINEAR if k > 1 else cv2.INTER_AREA)
    patch = cv2.GaussianBlur(patch, (0, 0), 1.0)
    local = (pts - [x0, y0]) * k  # corner-origin pixels in the patch
    mask = np.zeros(patch.shape, np.uint8)
    cv2.fillPoly(mask, [np.round(local - 0.5).astype(np.int32)], 1)
    mask = cv2.erode(mask, np.ones((7, 7), np.uint8)).astype(bool)  # off the lash line
    if mask.sum() < 30:
        return None
    yy, xx = np.mgrid[0 : patch.shape[0], 0 : patch.shape[1]]
    vals = patch[mask]
    lo, hi = np.percentile(vals, [15, 85])
    if hi - lo < MIN_CONTRAST * hi:  # no dark iris against a white: skin, a lid, a shadow
        return None

    def centroid(sel: np.ndarray, thr: float) -> np.ndarray | None:
        wgt = np.clip(thr - patch, 0.0, None) * sel
        total = float(wgt.sum())
        if total <= 0:
            return None
        return np.array([(wgt * xx).sum() / total, (wgt * yy).sum() / total])

    thr = float(np.percentile(vals, 30))
    c = centroid(mask, thr)
    if c is None:
        return None
    # An iris is a compact dark disc; a lash line or a lid shadow (a closed eye, a render
    # without eyeballs) spreads along the whole eye.
    dark = mask & (patch <= thr)
    if dark.sum() < 5 or float(xx[dark].std()) > MAX_DARK_SPREAD * 48.0:
        return None
    # ... and it fills the opening from lid to lid where it is (a lash line only its top)
    column = mask & (np.abs(xx - c[0]) <= 2.0)
    if column.sum() < 3 or float(dark[column].mean()) < MIN_DARK_COLUMN:
        return None
    iris_r = 0.22 * 48.0
    near = mask & ((xx - c[0]) ** 2 + (yy - c[1]) ** 2 <= (1.3 * iris_r) ** 2)
    if near.sum() >= 10:
        c2 = centroid(near, float(np.percentile(patch[near], 50)))
        if c2 is not None:
            c = c2
    return (c + 0.5) / k + [x0, y0]


def gaze_from_iris(
    iris_px: np.ndarray,
    eye_centre_cam: np.ndarray,
    head_rotation: np.ndarray,
    eye: EyeModel,
    intrinsics: Intrinsics,
) -> np.ndarray:
    """(3,) the eye joint's axis-angle rotation (head axes) that puts the model's iris on
    `iris_px`: the camera ray through the pixel meets the eyeball (radius `eye.radius` about
    `eye_centre_cam`); a ray that misses takes the eyeball's point nearest to it."""
    u, v = float(iris_px[0]), float(iris_px[1])
    d = np.array([(u - intrinsics.cx) / intrinsics.fx, -(v - intrinsics.cy) / intrinsics.fy, -1.0])
    d /= np.linalg.norm(d)
    c = np.asarray(eye_centre_cam, dtype=np.float64)
    along = float(d @ c)
    perp2 = float(c @ c) - along * along
    r = eye.radius
    if perp2 <= r * r:
        point = d * (along - math.sqrt(r * r - perp2))
    else:  # the ray passes beside the ball: its nearest point, pulled onto the surface
        nearest = d * along
        point = c + (nearest - c) * (r / math.sqrt(perp2))
    n_cam = (point - c) / r
    n = head_rotation.T @ n_cam  # head axes
    return matrix_to_axis_angle(look_rotation(n) @ look_rotation(eye.rest).T)


def look_rotation(direction: np.ndarray) -> np.ndarray:
    """The rotation without roll that turns +z into `direction`: yaw about y, pitch about x."""
    d = direction / np.linalg.norm(direction)
    yaw = math.atan2(d[0], d[2])
    pitch = math.asin(max(-1.0, min(1.0, d[1])))
    ry = axis_angle_to_matrix_np(np.array([0.0, yaw, 0.0]))
    rx = axis_angle_to_matrix_np(np.array([-pitch, 0.0, 0.0]))
    return ry @ rx


def eye_angles(eye_pose: np.ndarray, rest: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) in radians of an eye rotated by `eye_pose` (axis-angle, head axes)
    relative to its rest direction: yaw positive toward the subject's own left (+x), pitch
    positive looking up."""
    d = axis_angle_to_matrix_np(eye_pose) @ rest
    yaw = math.atan2(d[0], d[2]) - math.atan2(rest[0], rest[2])
    pitch = math.asin(max(-1.0, min(1.0, d[1]))) - math.asin(max(-1.0, min(1.0, rest[1])))
    return yaw, pitch


def eye_pose_from_angles(yaw: float, pitch: float, rest: np.ndarray) -> np.ndarray:
    """(3,) axis-angle of an eye turned by (yaw, pitch) radians from its rest direction:
    the inverse of `eye_angles`."""
    ry = math.atan2(rest[0], rest[2]) + yaw
    rp = math.asin(max(-1.0, min(1.0, rest[1]))) + pitch
    d = np.array([math.cos(rp) * math.sin(ry), math.sin(rp), math.cos(rp) * math.cos(ry)])
    return matrix_to_axis_angle(look_rotation(d) @ look_rotation(rest).T)


def eye_look_weights(side: str, yaw: float, pitch: float) -> dict[str, float]:
    """ARKit eyeLook weights of one eye (model key names `eyeLookIn_L`...) from its yaw and
    pitch (radians, `eye_angles`)."""
    h = math.radians(EYE_LOOK_FULL_DEG["horizontal"])
    toward_left = max(0.0, min(1.0, yaw / h))
    toward_right = max(0.0, min(1.0, -yaw / h))
    out_w, in_w = (toward_left, toward_right) if side == "L" else (toward_right, toward_left)
    return {
        f"eyeLookOut_{side}": out_w,
        f"eyeLookIn_{side}": in_w,
        f"eyeLookUp_{side}": max(0.0, min(1.0, pitch / math.radians(EYE_LOOK_FULL_DEG["up"]))),
        f"eyeLookDown_{side}": max(0.0, min(1.0, -pitch / math.radians(EYE_LOOK_FULL_DEG["down"]))),
    }
