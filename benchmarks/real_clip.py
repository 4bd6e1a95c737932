"""The real talking-head clip for `mfnet track`: shared by bm_track_real.py and
tests/test_track_real_clip.py (one definition of what is measured and drawn).

The clip (tools/fetch_test_media.py puts it into the git-ignored cache): a real woman, 640x360,
472 frames at 23.976 fps, crying then laughing, small head turns, a hand over her mouth and
cheek for ~170 frames. Her identity comes from the clip itself (`pick_identity_frames`: a few
frames picked by code, then `mfnet reconstruct` on them), then `mfnet track` runs on the clip;
both through the CLI, as a user runs them.

What "residual" means here: per frame, the mean distance (px) between the detected 68 points
and the tracked model's projected 68 points, over all 68 and over the inner 51 (brows, nose,
eyes, mouth: the jaw line's points slide along the silhouette and are the least defined).
Two tracks are measured: the per-frame fit (`landmarks_fitted` of track.npz) and the
smoothed take (the CSV's animation: smoothed pose and weights, the rest level put back),
re-projected here with the head model.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLIP_NAME = "WolfgangLanger_Pexels.mp4"
SKIP_REASON = "the real test clip is not cached: run tools/fetch_test_media.py"
INNER = list(range(17, 68))  # brows, nose, eyes, mouth
# A frame's two detectors (MediaPipe, dlib) agree this well on the jaw and mouth points in
# the take's clearest frames; a hand over the face makes them disagree (on the clip: the
# 40 % best-agreeing frames are all unoccluded, the hand frames 1.2-4x worse).
CLEAR_PERCENTILE = 40
MIN_YAW_STEP_DEG = 8.0


def cached_clip() -> Path | None:
    """The cached clip (MFNET_TEST_MEDIA or <repo>/.cache/test-media), or None."""
    env = os.environ.get("MFNET_TEST_MEDIA")
    path = (Path(env) if env else REPO / ".cache" / "test-media") / CLIP_NAME
    return path if path.is_file() else None


def read_frames(path: Path, start: int = 0, count: int | None = None) -> tuple[list, float]:
    """RGB frames [start, start + count) of a video and its frame rate."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 30.0)
    frames = []
    i = 0
    try:
        while count is None or len(frames) < count:
            ok, bgr = cap.read()
            if not ok:
                break
            if i >= start:
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            i += 1
    finally:
        cap.release()
    return frames, fps


def write_clip(frames: list, path: Path, fps: float) -> Path:
    """The frames as an MJPG .avi (OpenCV writes it everywhere; quality 95)."""
    import cv2

    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for rgb in frames:
        out.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out.release()
    return path


# -- the identity from the clip ----------------------------------------------------------------


@dataclass
class FramePick:
    """Frames picked for the identity and why: per sampled frame its yaw (degrees), its
    calm (sum of the mean face's fitted expression weights, gaze keys left out: lower is
    closer to a resting face) and the detectors' disagreement (face sizes)."""

    frames: list[int]
    sampled: list[int]
    yaw: dict[int, float]
    calm: dict[int, float]
    disagreement: dict[int, float]
    clear_threshold: float


def pick_identity_frames(
    head, frames: list, fps: float, max_samples: int = 40, max_frames: int = 3
) -> FramePick:
    """Up to `max_frames` frames to reconstruct the person from: the calmest clear frame, and
    the calmest clear frames at least MIN_YAW_STEP_DEG turned to either side of it.

    Why this way: the identity should come from resting faces (an expression the fit cannot
    explain leaks into the identity) seen from different sides (one view leaves the depth of
    the face open), and never from frames where something covers the face (MediaPipe then
    draws a plausible face over the hand). Calm and yaw come from a quick track of sampled
    frames with the model's mean face; "clear" is where dlib's and MediaPipe's jaw and mouth
    points agree as well as in the take's best CLEAR_PERCENTILE % of frames."""
    import torch

    from mfnet_core.camera import Intrinsics, axis_angle_to_matrix, yaw_pitch_roll_deg
    from mfnet_core.inputs.landmarks import get_backend
    from mfnet_core.track.identity import Identity
    from mfnet_core.track.run import Tracker

    names = tuple(head.expression_space.names or ())
    ident = Identity(Path("mean face"), np.zeros(head.n_shape), head.kind, "", names)
    h, w = frames[0].shape[:2]
    tracker = Tracker(head, ident, Intrinsics.from_focal(w, h, None), fps, smoothing_strength=0)
    stride = max(1, math.ceil(len(frames) / max_samples))
    sampled = list(range(0, len(frames), stride))
    keep = [i for i, n in enumerate(names) if not n.startswith("eyeLook")] or None
    dlib = get_backend("dlib")
    lower = list(range(0, 17)) + list(range(48, 68))
    yaw, calm, disagree = {}, {}, {}
    for i in sampled:
        rec = tracker.add_frame(frames[i])
        if not rec["face"]:
            continue
        rot = axis_angle_to_matrix(torch.as_tensor(rec["rot"])[None])
        yaw[i] = float(yaw_pitch_roll_deg(rot)[0, 0])
        expr = np.asarray(rec["coeffs"][: head.n_expr])
        calm[i] = float(expr[keep].sum() if keep else np.abs(expr).sum())
        found = dlib.detect(frames[i])
        lm = rec["landmarks"]
        size = float(np.ptp(lm, axis=0).max())
        disagree[i] = (
            float(np.median(np.linalg.norm(found[0].landmarks - lm, axis=1)[lower])) / size
            if found
            else math.inf
        )
    if not calm:
        raise RuntimeError("no face in any sampled frame of the clip")
    threshold = float(np.percentile([v for v in disagree.values()], CLEAR_PERCENTILE))
    clear = sorted((i for i in calm if disagree[i] <= threshold), key=lambda i: calm[i])
    first = clear[0]
    picked = [first]
    for side in (-1, 1):
        turned = [i for i in clear if side * (yaw[i] - yaw[first]) >= MIN_YAW_STEP_DEG]
        if turned and len(picked) < max_frames:
            picked.append(turned[0])
    return FramePick(sorted(picked), sampled, yaw, calm, disagree, threshold)


def mfnet(*args: str) -> dict:
    """`python -m mfnet_core ARGS --json --progress none`: its JSON summary, or
    RuntimeError with its stderr's last lines."""
    cmd = [sys.executable, "-m", "mfnet_core", *args, "--json", "--progress", "none"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{' '.join(cmd[2:])} failed ({done.returncode}): {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def reconstruct_identity(frames: list, picked: list[int], out: Path) -> dict:
    """`mfnet reconstruct` on the picked frames (written as PNG next to `out`)."""
    import cv2

    photos = out.parent / f"{out.name}_frames"
    photos.mkdir(parents=True, exist_ok=True)
    files = []
    for i in picked:
        f = photos / f"frame_{i:04d}.png"
        cv2.imwrite(str(f), cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR))
        files.append(str(f))
    return mfnet("reconstruct", *files, "-o", str(out), "--texture-size", "512", "--overwrite")


# -- the tracked head in the picture ----------------------------------------------------------


def rest_weights_back(track: dict) -> np.ndarray:
    """(T,K) the smoothed weights with the take's rest level put back (undoing
    Tracker._neutral's w' = (w - rest) / max(1 - rest, 0.5)): what the face in the frame
    shows, as the smoothed take has it."""
    rest = np.asarray(track["neutral"], np.float64)
    w = np.asarray(track["expression"], np.float64) * np.maximum(1.0 - rest, 0.5) + rest
    names = [str(n) for n in track["expression_names"]]
    look = [k for k, n in enumerate(names) if n.startswith("eyeLook")]
    w[:, look] = np.asarray(track["expression"], np.float64)[:, look]  # gaze: never offset
    return w


def track_head(head, track: dict):
    """The model at the size the track used: the identity's metric size (track.npz
    model_scale, from the irises of its photos); its poses and translations fit that size."""
    scale = float(track.get("model_scale", 1.0))
    return head if abs(scale - head.scale) < 1e-9 else head.rescaled(scale / head.scale)


def posed_head(
    head,
    shape: np.ndarray,
    expression: np.ndarray,
    jaw: np.ndarray,
    rot: np.ndarray,
    trans: np.ndarray,
    yaw_deg: np.ndarray,
    mesh: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Camera-space (T,68,3) landmarks (and (T,V,3) vertices with `mesh`) of the head posed
    as the tracker poses it: the model with the identity, expression and jaw, rotated about
    its root joint, then translated (mfnet_core.track.tracker.FrameTerm.pixels)."""
    import torch

    from mfnet_core.camera import axis_angle_to_matrix

    t = len(expression)
    dt = head.dtype
    s = torch.zeros(t, head.n_shape, dtype=dt)
    k = min(len(shape), head.n_shape)
    s[:, :k] = torch.as_tensor(np.asarray(shape)[:k], dtype=dt)
    e = torch.as_tensor(np.nan_to_num(expression), dtype=dt)
    j = torch.as_tensor(np.nan_to_num(jaw), dtype=dt)
    r = axis_angle_to_matrix(torch.as_tensor(np.nan_to_num(rot), dtype=dt))
    tr = torch.as_tensor(np.nan_to_num(trans), dtype=dt)[:, None]
    with torch.no_grad():
        out = head.forward(shape=s, expression=e, jaw_pose=j)
        lm = head.landmarks_3d(out.vertices, torch.as_tensor(yaw_deg, dtype=dt))
        pivot = out.joints[:, :1]
        lm = (lm - pivot) @ r.transpose(1, 2) + pivot + tr
        verts = (out.vertices - pivot) @ r.transpose(1, 2) + pivot + tr if mesh else None
    return lm.numpy(), (verts.numpy() if verts is not None else None)


def project(points: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """(...,3) camera space (OpenGL axes, as mfnet_core.camera.project) -> (...,2) pixels."""
    fx, fy, cx, cy = (float(v) for v in camera)
    depth = np.maximum(-points[..., 2], 1e-6)
    return np.stack([cx + fx * points[..., 0] / depth, cy - fy * points[..., 1] / depth], -1)


def smoothed_landmarks(head, track: dict, batch: int = 32) -> np.ndarray:
    """(T,68,2) the smoothed take's landmarks in the frames (pixels)."""
    import torch

    from mfnet_core.camera import axis_angle_to_matrix, yaw_pitch_roll_deg

    head = track_head(head, track)
    w = rest_weights_back(track)
    rot = np.asarray(track["head_pose"], np.float64)
    yaw = yaw_pitch_roll_deg(axis_angle_to_matrix(torch.as_tensor(rot))).numpy()[:, 0]
    out = []
    for a in range(0, len(w), batch):
        b = slice(a, a + batch)
        lm, _ = posed_head(
            head,
            track["shape"],
            w[b],
            track["jaw_pose"][b],
            rot[b],
            track["head_translation"][b],
            yaw[b],
        )
        out.append(project(lm, track["camera"]))
    return np.concatenate(out)


def residuals(detected: np.ndarray, fitted: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame, the mean point distance (px) over all 68 and over the inner 51 (NaN where
    either side has no points)."""
    d = np.linalg.norm(np.asarray(detected, np.float64) - fitted, axis=-1)  # (T,68)
    return {"all68": d.mean(1), "inner51": d[:, INNER].mean(1)}


def stats(per_frame: np.ndarray) -> dict[str, float | None]:
    """Median, 95th percentile and max over the frames with a value."""
    v = per_frame[np.isfinite(per_frame)]
    if not len(v):
        return {"median": None, "p95": None, "max": None}
    return {
        "median": round(float(np.median(v)), 3),
        "p95": round(float(np.percentile(v, 95)), 3),
        "max": round(float(v.max()), 3),
    }


SHOWN_PARTS = ("skin", "sclera_L", "sclera_R", "iris_L", "iris_R")


def draw_head(
    rgb: np.ndarray, head, verts_cam: np.ndarray, camera: np.ndarray, alpha: float = 0.45
) -> np.ndarray:
    """The frame with the posed head shaded over it (grey, lit from the camera, `alpha`
    opaque) and its mesh's edges faintly drawn: where the head sits, at a glance."""
    import torch

    from mfnet_core.render import interpolate, rasterize, vertex_normals

    h, w = rgb.shape[:2]
    names = head.parts.names
    part = np.asarray(head.parts.face_part)
    keep = np.isin(part, [names.index(n) for n in SHOWN_PARTS if n in names])
    faces = head.faces[torch.as_tensor(keep)]
    v = torch.as_tensor(verts_cam, dtype=torch.float64)
    uv = torch.as_tensor(project(verts_cam, camera))
    screen = torch.cat([uv, -v[:, 2:3]], 1)
    frags = rasterize(screen, faces, h, w)
    n = vertex_normals(v, faces)
    normal = interpolate(frags, n, faces).numpy()
    covered = frags.face_index.numpy() >= 0
    # lit from the camera: each pixel's normal against its ray back to the camera
    u = (np.arange(w) + 0.5 - camera[2]) / camera[0]
    v_ = (np.arange(h) + 0.5 - camera[3]) / camera[1]
    view = np.dstack(np.broadcast_arrays(-u[None, :], v_[:, None], np.ones((h, 1))))
    view /= np.linalg.norm(view, axis=2, keepdims=True)
    lit = np.clip((normal * view).sum(2), 0, 1) ** 0.8
    shade = (60 + 180 * lit)[..., None] * np.array([0.75, 0.9, 1.0])
    out = rgb.astype(np.float64)
    out[covered] = (1 - alpha) * out[covered] + alpha * shade[covered]
    return np.clip(out, 0, 255).astype(np.uint8)


# -- the picture ------------------------------------------------------------------------------

PLOTTED = ("JawOpen", "EyeBlinkLeft", "EyeBlinkRight", "MouthSmileLeft", "BrowInnerUp")


def strip_frames(track: dict, residual: np.ndarray, n: int = 8, spacing: int = 12) -> list[int]:
    """~n frames spread over the take, the most telling first: the strongest turn either
    way, roll, jaw, blink, smile, brow and the worst-fitting frame, then evenly spaced
    frames; at least `spacing` frames apart."""
    names = [str(x) for x in track["arkit_names"]]
    arkit = np.asarray(track["arkit"], np.float64)
    ang = np.degrees(np.asarray(track["angles"], np.float64))
    col = lambda k: arkit[:, names.index(k)]  # noqa: E731
    blink = 0.5 * (col("EyeBlinkLeft") + col("EyeBlinkRight"))
    smile = 0.5 * (col("MouthSmileLeft") + col("MouthSmileRight"))
    res = np.where(np.isfinite(residual), residual, -1)
    wanted = [
        int(np.argmin(ang[:, 0])),
        int(np.argmax(ang[:, 0])),
        int(np.argmax(np.abs(ang[:, 2]))),
        int(np.argmax(col("JawOpen"))),
        int(np.argmax(blink)),
        int(np.argmax(smile)),
        int(np.argmax(col("BrowInnerUp"))),
        int(np.argmax(res)),
    ]
    t = len(arkit)
    wanted += [int(round(x)) for x in np.linspace(0, t - 1, n)]
    picked: list[int] = []
    for i in wanted:
        if len(picked) < n and all(abs(i - j) >= spacing for j in picked):
            picked.append(i)
    return sorted(picked)


def face_crop(rgb: np.ndarray, points: np.ndarray, size: int, margin: float = 1.6):
    """(crop resized to size x size, (x0, y0, scale)): a square around the points, moved
    into the frame where it fits, padded with black where it does not."""
    import cv2

    p = points[np.isfinite(points).all(1)]
    h, w = rgb.shape[:2]
    side = margin * float(np.ptp(p, axis=0).max())
    corner = 0.5 * (p.min(0) + p.max(0)) - side / 2
    for k, extent in enumerate((w, h)):
        if side <= extent:
            corner[k] = min(max(corner[k], 0.0), extent - side)
    x0, y0 = (float(v) for v in corner)
    k = size / side
    m = np.array([[k, 0, -k * x0], [0, k, -k * y0]])
    out = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_AREA, borderValue=(0, 0, 0))
    return out, (x0, y0, k)


def panel(
    rgb: np.ndarray,
    head,
    verts_cam: np.ndarray,
    camera: np.ndarray,
    detected: np.ndarray,
    fitted: np.ndarray,
    size: int,
    title: str,
) -> np.ndarray:
    """One frame of the strip: the tracked head shaded over the frame, the detected points
    (green dots) and the track's (red crosses), cropped to the face."""
    from mfnet_core.outputs.overlay import draw_overlay

    shaded = draw_head(rgb, head, verts_cam, camera)
    crop, (x0, y0, k) = face_crop(shaded, detected, size)
    to_crop = lambda p: (np.asarray(p, np.float64) - (x0, y0)) * k  # noqa: E731
    return draw_overlay(crop, to_crop(detected), to_crop(fitted), title=title, legend=False)


def plot_curves(track: dict, residual: dict[str, np.ndarray], marks: list[int], width: int):
    """(H,W,3) the ARKit weights in PLOTTED and the per-frame residuals over time, the strip's
    frames marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(x) for x in track["arkit_names"]]
    t = np.arange(len(track["arkit"])) / float(track["fps"])
    dpi = 100
    fig, (a, b) = plt.subplots(
        2,
        1,
        figsize=(width / dpi, 4.2),
        dpi=dpi,
        sharex=True,
        gridspec_kw={"height_ratios": [3, 2]},
    )
    for k in PLOTTED:
        a.plot(t, track["arkit"][:, names.index(k)], lw=1.2, label=k)
    a.set_ylim(-0.02, 1.02)
    a.set_ylabel("ARKit weight")
    a.legend(loc="upper left", ncol=len(PLOTTED), fontsize=8, frameon=False)
    for k, v in residual.items():
        b.plot(t, v, lw=1.0, label=k)
    b.set_ylabel("residual (px)")
    b.set_xlabel("time (s)")
    b.legend(loc="upper left", ncol=4, fontsize=8, frameon=False)
    no_face = ~np.asarray(track["face_found"], bool)
    for ax in (a, b):
        for i in marks:
            ax.axvline(t[i], color="k", lw=0.6, ls=":")
        if no_face.any():
            ax.fill_between(
                t, 0, 1, where=no_face, color="r", alpha=0.15, transform=ax.get_xaxis_transform()
            )
    fig.tight_layout(pad=0.4)
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img


def draw_strip(
    path: Path,
    head,
    frames: list,
    track: dict,
    fitted: np.ndarray,
    curves: dict[str, np.ndarray],
    marks: list[int],
    size: int = 320,
    columns: int = 4,
) -> Path:
    """The picture (PNG): the strip's frames (`marks`) in rows of `columns` panels, the track's
    (T,68,2) `fitted` points as red crosses (the panel's title gives their inner-51
    residual), and below them the ARKit weights and the per-frame `curves` over time."""
    import torch
    from PIL import Image

    from mfnet_core.camera import axis_angle_to_matrix, yaw_pitch_roll_deg

    head = track_head(head, track)
    w = rest_weights_back(track)[marks]
    rot = np.asarray(track["head_pose"], np.float64)[marks]
    ypr = yaw_pitch_roll_deg(axis_angle_to_matrix(torch.as_tensor(rot))).numpy()
    _, verts = posed_head(
        head,
        track["shape"],
        w,
        track["jaw_pose"][marks],
        rot,
        track["head_translation"][marks],
        ypr[:, 0],
        mesh=True,
    )
    names = [str(x) for x in track["arkit_names"]]
    arkit = track["arkit"]
    inner = residuals(track["landmarks"], fitted)["inner51"]
    panels = []
    for n, i in enumerate(marks):
        jaw = arkit[i, names.index("JawOpen")]
        blink = 0.5 * (
            arkit[i, names.index("EyeBlinkLeft")] + arkit[i, names.index("EyeBlinkRight")]
        )
        title = f"#{i} yaw {ypr[n, 0]:+.0f} jaw {jaw:.2f} blink {blink:.2f} {inner[i]:.1f}px"
        panels.append(
            panel(
                frames[i],
                head,
                verts[n],
                track["camera"],
                track["landmarks"][i],
                fitted[i],
                size,
                title,
            )
        )
    while len(panels) % columns:
        panels.append(np.zeros_like(panels[0]))
    rows = [np.hstack(panels[r : r + columns]) for r in range(0, len(panels), columns)]
    grid = np.vstack(rows)
    plot = plot_curves(track, curves, marks, grid.shape[1])
    picture = np.vstack([grid, plot])
    # a 256-colour palette (dithered): a third of the size, the same to the eye
    image = Image.fromarray(picture).quantize(256, Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)
    return path
