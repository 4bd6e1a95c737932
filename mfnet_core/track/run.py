"""`mfnet track`: frames -> landmarks -> per-frame fit with the identity fixed -> gaze ->
bridged, calibrated and smoothed curves -> Live Link Face CSV, npz and a JSON summary.

Outputs (in the output folder, each written atomically: a reader sees a whole file):
- `track.csv`: Live Link Face style (mfnet_core.track.livelink): Timecode, BlendShapeCount,
  the 52 ARKit weights, head and eye angles in radians. Times are frame / fps (a variable
  frame rate video is taken at its nominal rate).
- `track.npz` (format_version 1; T frames, K the model's expression keys):
  `model_kind`, `model_name`, `identity` (the result folder), `shape` (S,), `fps` (),
  `times` (T,) seconds, `face_found` (T,) bool, `interpolated` (T,) bool (no face: bridged),
  `gaze_found` (T,2) bool (left, right eye), `expression_names` (K,), `expression` (T,K) the
  final weights (bridged, rest level taken off, smoothed, in the model's bounds),
  `expression_raw` (T,K) the per-frame fit (NaN without a face), `neutral` (K,) the rest
  level taken off, `jaw_pose` (T,3) (zeros for models that open the mouth with a key),
  `head_pose` (T,3) axis-angle about the root joint and `head_translation` (T,3) metres,
  camera space as in docs/RESULT_FOLDER.md ("Camera model"), both also `_raw`; `eye_pose`
  (T,6) left then right axis-angle in head axes; `eye_angles` (T,4) left yaw, pitch, right
  yaw, pitch (radians, relative to the rest gaze; `_raw` as measured, NaN where not),
  `eye_neutral` (4,) the rest gaze taken off; `arkit_names` (52,), `arkit` (T,52) the CSV's
  weights; `angle_names` (9,), `angles` (T,9) the CSV's angles; `landmarks` (T,68,2) the
  detections and `landmarks_fitted` (T,68,2) the fit's (pixels, NaN without a face),
  `residual_px` (T,) their median distance; `camera` (4,) fx, fy, cx, cy and `image_size`
  (2,) of the frames as tracked; `complete` () False for a take cut short by an interrupt.
- `track.json`: frames, fps, frames without a face (as ranges), the rest levels' source,
  speed, warnings, and whether the take is complete.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mfnet_core import __version__
from mfnet_core.camera import Intrinsics, axis_angle_to_matrix, yaw_pitch_roll_deg
from mfnet_core.errors import MfnetError
from mfnet_core.head.interface import HeadModel
from mfnet_core.track import smoothing
from mfnet_core.track.files import OUTPUT_FILES, atomic_write_bytes, atomic_write_text
from mfnet_core.track.gaze import (
    EYE_LANDMARKS,
    EyeModel,
    eye_angles,
    eye_look_weights,
    eye_models,
    eye_pose_from_angles,
    gaze_from_iris,
    iris_centre,
)
from mfnet_core.track.identity import Identity, check_identity_matches
from mfnet_core.track.livelink import ANGLE_NAMES, ARKIT_NAMES, arkit_mapping, write_livelink_csv
from mfnet_core.track.tracker import FrameFitter, TrackOptions
from mfnet_core.track.video import FrameSource

__all__ = [
    "TrackInterrupted",
    "TrackResult",
    "Tracker",
    "track_clip",
    "write_track",
]

TRACK_FORMAT_VERSION = 1
# A frame whose fitted landmarks are this far from the detections (median, in face sizes)
# is taken as a detector failure: treated as a frame without a face.
MAX_RESIDUAL_FACE = 0.12

# `neutral="auto"` needs this many frames with a face to find the rest level of each weight.
MIN_NEUTRAL_FRAMES = 10
# Gaze measured in fewer of the frames with a face than this is taken as unreliable.
MIN_GAZE_FRACTION = 0.3

Progress = Callable[[str, float, str], None]


class TrackInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM / SIGHUP through the CLI) during tracking: `tracker` holds the
    frames done so far, ready for `Tracker.result()`; `signum` the signal when known."""

    def __init__(self, tracker: Tracker, cause: BaseException) -> None:
        super().__init__(*cause.args)
        self.tracker = tracker
        self.signum = getattr(cause, "signum", None)


@dataclass
class TrackResult:
    """A finished (or interrupted) take: the arrays of track.npz plus the summary."""

    arrays: dict[str, np.ndarray]
    summary: dict
    fps: float

    @property
    def n_frames(self) -> int:
        return int(len(self.arrays["times"]))


class Tracker:
    """Frame by frame: landmarks (given, or dlib's through `VideoLandmarker`), the fit with
    the identity fixed, the gaze from the picture. `result()` bridges, smooths and maps to
    ARKit at any point (also after an interrupt)."""

    def __init__(
        self,
        head: HeadModel,
        identity: Identity,
        intrinsics: Intrinsics,
        fps: float,
        options: TrackOptions | None = None,
        smoothing_strength: float = 1.0,
        gaze: bool = True,
        neutral: str | int = "auto",
    ) -> None:
        check_identity_matches(identity, head.kind, head.n_shape, head.expression_space.names)
        if abs(identity.model_scale - head.scale) > 1e-9:  # the person's metric size
            head = head.rescaled(identity.model_scale / head.scale)
        self.head = head
        self.identity = identity
        self.intrinsics = intrinsics
        self.fps = float(fps)
        self.options = options or TrackOptions()
        self.smoothing_strength = float(smoothing_strength)
        if not (neutral in ("auto", "none") or isinstance(neutral, int)):
            raise MfnetError(f"neutral must be auto, none or a frame number, not {neutral!r}")
        self.neutral = neutral
        self.fitter = FrameFitter(head, identity.shape, intrinsics, self.options)
        self.names = tuple(head.expression_space.names or ())
        self.eyes: dict[str, EyeModel] = self._eye_models() if gaze else {}
        self.look_index = {n: i for i, n in enumerate(self.names) if n.startswith("eyeLook")}
        self.look = dict.fromkeys(self.look_index, 0.0)  # last measured eyeLook weights
        self.frames: list[dict] = []
        self.landmarker = None
        self.seconds = {"landmarks": 0.0, "fit": 0.0, "gaze": 0.0}
        self.wall_seconds = 0.0  # the whole run's time, decoding included (set by track_clip)
        self.warnings: list[str] = []

    def _eye_models(self) -> dict[str, EyeModel]:
        rig = self.head.rig_arrays(self.identity.shape[: self.head.n_shape], 0)
        faces = self.head.faces.cpu().numpy()
        parts = {}
        for i, name in enumerate(self.head.parts.names):
            if name.startswith("iris_"):
                parts[name] = np.unique(faces[self.head.parts.face_part == i])
        return eye_models(
            rig.rest_vertices, rig.joints, tuple(rig.joint_names), rig.skin_weights, parts
        )

    # -- per frame ---------------------------------------------------------------------------
    def add_frame(self, rgb: np.ndarray | None, landmarks: np.ndarray | None = None) -> dict:
        """Tracks one frame. `landmarks` (68,2): use these instead of detecting (tests,
        other detectors); `rgb` None and no landmarks: a frame without a face."""
        rec: dict = {"face": False, "search": ""}
        t0 = time.perf_counter()
        if landmarks is None and rgb is not None:
            if self.landmarker is None:
                from mfnet_core.track.faces import video_landmarker

                self.landmarker = video_landmarker(self.options.landmarks)
            face = self.landmarker(rgb)
            if face is not None:
                landmarks, rec["search"] = face.landmarks, face.search
        t1 = time.perf_counter()
        self.seconds["landmarks"] += t1 - t0
        if landmarks is None:
            self.fitter.reset()
            self.frames.append(rec)
            return rec
        lm = np.asarray(landmarks, dtype=np.float64).reshape(68, 2)
        pinned = {self.look_index[n]: v for n, v in self.look.items()}
        fit = self.fitter.fit(lm, pinned)
        t2 = time.perf_counter()
        self.seconds["fit"] += t2 - t1
        size = float((lm.max(0) - lm.min(0)).max())
        if np.median(fit.residual_px) > MAX_RESIDUAL_FACE * size:
            # the detector put its points on something that is not this face
            self.fitter.reset()
            if self.landmarker is not None:
                self.landmarker.reset()
            rec["search"] = "rejected"
            self.frames.append(rec)
            return rec
        rec.update(
            face=True,
            coeffs=fit.coeffs,
            rot=fit.head_rot,
            trans=fit.head_trans,
            landmarks=lm,
            fitted=fit.landmarks_px,
            residual=float(np.median(fit.residual_px)),
            cold=fit.cold,
        )
        rec["eyes"] = self._gaze(rgb, lm, fit) if rgb is not None else {}
        self.seconds["gaze"] += time.perf_counter() - t2
        self.frames.append(rec)
        return rec

    def _gaze(self, rgb: np.ndarray, lm: np.ndarray, fit) -> dict[str, tuple[float, float]]:
        """Each open eye's (yaw, pitch) from its iris; updates the pinned eyeLook weights."""
        if not self.eyes:
            return {}
        import cv2

        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        rot = axis_angle_to_matrix(torch.as_tensor(fit.head_rot)[None])[0].numpy()
        out = {}
        for side, eye in self.eyes.items():
            iris = iris_centre(gray, lm[list(EYE_LANDMARKS[side])])
            if iris is None:
                continue
            pose = gaze_from_iris(iris, fit.joints_cam[eye.joint], rot, eye, self.intrinsics)
            yaw, pitch = eye_angles(pose, eye.rest)
            out[side] = (yaw, pitch)
            for name, v in eye_look_weights(side, yaw, pitch).items():
                if name in self.look:
                    self.look[name] = v
        return out

    # -- the take ----------------------------------------------------------------------------
    def _eye_rest(self, eyes: np.ndarray, found: np.ndarray) -> np.ndarray:
        """(2,2) each eye's (yaw, pitch) when the actor looks straight ahead, taken off the
        measured angles: with `neutral="auto"` the median over the frames where the iris was
        found (an actor mostly looks at the camera; this also takes off how far this face's
        irises sit from the model's), with a frame number that frame's angles, else 0."""
        rest = np.zeros((2, 2))
        if self.neutral == "none":
            return rest
        for k in range(2):
            if isinstance(self.neutral, int) and 0 <= self.neutral < len(eyes):
                if found[self.neutral, k]:
                    rest[k] = eyes[self.neutral, k]
                    continue
            if found[:, k].sum() >= MIN_NEUTRAL_FRAMES:
                rest[k] = np.median(eyes[found[:, k], k], axis=0)
        return rest

    def _neutral(self, coeffs: np.ndarray, face: np.ndarray) -> tuple[np.ndarray | None, str]:
        """The person's rest weights to take off every frame, and where they came from.

        Why: dlib's points and the model's landmark definitions differ a little for every
        face, and the fit explains the difference with expression keys that then sit above 0
        on a still face (on tests/data/james up to 0.7). As Live Link Face calibrates on the
        actor's neutral face, the track takes the rest level of each blendshape weight off:
        `auto` (default) its 5th percentile over the frames with a face (the take's quietest
        moments; a take of fewer than MIN_NEUTRAL_FRAMES keeps its weights), a frame number
        that frame's weights, `none` nothing. Then w' = (w - rest) / (1 - rest) so that 1
        stays 1 (gain at most 2). Gaze keys (eyeLook, set from the eyes' angles) and models
        whose expressions are unbounded PCA coefficients are left as they are."""
        n_expr = self.fitter.model.n_expr
        space = self.head.expression_space
        if self.neutral == "none" or space.prior != "weights" or not face.any():
            return None, "none"
        if self.neutral == "auto":
            if int(face.sum()) < MIN_NEUTRAL_FRAMES:
                return None, f"none (fewer than {MIN_NEUTRAL_FRAMES} frames with a face)"
            rest = np.percentile(coeffs[face, :n_expr], 5, axis=0)
            source = "auto: 5th percentile of each weight over the frames with a face"
        else:
            frame = int(self.neutral)
            if not (0 <= frame < len(face)) or not face[frame]:
                self.warnings.append(
                    f"neutral frame {frame}: no face was tracked there; the rest levels come "
                    "from the take instead (auto)"
                )
                saved, self.neutral = self.neutral, "auto"
                try:
                    return self._neutral(coeffs, face)
                finally:
                    self.neutral = saved
            rest = coeffs[frame, :n_expr].copy()
            source = f"frame {frame}"
        for k in self.look_index.values():
            rest[k] = 0.0
        return np.clip(rest, 0.0, 1.0), source

    def result(self, complete: bool = True) -> TrackResult:
        """Bridged (frames without a face interpolated), smoothed, mapped to ARKit."""
        n = len(self.frames)
        c = self.fitter.model.n_coeffs
        n_expr = self.fitter.model.n_expr
        face = np.array([f["face"] for f in self.frames], dtype=bool)
        nan = lambda *s: np.full(s, np.nan)  # noqa: E731
        coeffs, rot, trans = nan(n, c), nan(n, 3), nan(n, 3)
        det, fitted, resid = nan(n, 68, 2), nan(n, 68, 2), nan(n)
        eyes = nan(n, 2, 2)  # (frame, L/R, yaw/pitch)
        for i, f in enumerate(self.frames):
            if not f["face"]:
                continue
            coeffs[i], rot[i], trans[i] = f["coeffs"], f["rot"], f["trans"]
            det[i], fitted[i], resid[i] = f["landmarks"], f["fitted"], f["residual"]
            for k, side in enumerate(("L", "R")):
                if side in f["eyes"]:
                    eyes[i, k] = f["eyes"][side]
        gaze_found = np.isfinite(eyes[..., 0])  # (T,2)
        raw = {
            "coeffs": coeffs.copy(),
            "rot": rot.copy(),
            "trans": trans.copy(),
            "eyes": eyes.copy(),
        }
        warnings = list(dict.fromkeys(self.warnings))
        for k, side in enumerate(("L", "R")):
            if gaze_found[:, k].sum() < MIN_GAZE_FRACTION * max(int(face.sum()), 1):
                if gaze_found[:, k].any():
                    warnings.append(
                        f"the {side} eye's iris was found in only {int(gaze_found[:, k].sum())} "
                        f"of {int(face.sum())} frames with a face: its gaze is not used"
                    )
                gaze_found[:, k] = False
                eyes[:, k] = np.nan
            else:
                eyes[:, k] = smoothing.median_of_valid(eyes[:, k], gaze_found[:, k])
        eye_rest = self._eye_rest(eyes, gaze_found)
        eyes = eyes - eye_rest[None]
        neutral, neutral_from = self._neutral(coeffs, face)
        warnings.extend(w for w in self.warnings if w not in warnings)
        if neutral is not None:
            coeffs[:, :n_expr] = (coeffs[:, :n_expr] - neutral) / np.maximum(1.0 - neutral, 0.5)
        if face.any():
            coeffs = smoothing.bridge_gaps(coeffs, face)
            rot = smoothing.bridge_gaps(rot, face)
            trans = smoothing.bridge_gaps(trans, face)
        else:
            coeffs, rot, trans = np.zeros((n, c)), np.zeros((n, 3)), np.zeros((n, 3))
        for k in range(2):
            eyes[:, k] = (
                smoothing.bridge_gaps(eyes[:, k], gaze_found[:, k])
                if gaze_found[:, k].any()
                else 0.0
            )
        s = self.smoothing_strength
        if s > 0 and n > 1:
            coeffs = smoothing.smooth_zero_phase(coeffs, self.fps, smoothing.WEIGHTS.scaled(s))
            rot = smoothing.smooth_zero_phase(rot, self.fps, smoothing.HEAD_ROTATION.scaled(s))
            trans = smoothing.smooth_zero_phase(
                trans, self.fps, smoothing.HEAD_TRANSLATION.scaled(s)
            )
            eyes = smoothing.smooth_zero_phase(
                eyes.reshape(n, 4), self.fps, smoothing.EYE_ROTATION.scaled(s)
            ).reshape(n, 2, 2)
        lo, hi = self.fitter.lower, self.fitter.upper
        coeffs = np.clip(coeffs, lo, hi)
        # ARKit's eyeLook weights are gaze: from the (smoothed) eye angles where measured
        eye_pose = np.zeros((n, 6))
        for k, side in enumerate(("L", "R")):
            eye = self.eyes.get(side)
            if eye is None or not gaze_found[:, k].any():
                continue
            for i in range(n):
                yaw, pitch = eyes[i, k]
                eye_pose[i, 3 * k : 3 * k + 3] = eye_pose_from_angles(yaw, pitch, eye.rest)
                for name, v in eye_look_weights(side, yaw, pitch).items():
                    if name in self.look_index:
                        coeffs[i, self.look_index[name]] = v
        expression = coeffs[:, :n_expr]
        jaw = coeffs[:, n_expr:] if c > n_expr else np.zeros((n, 3))
        ident = self.identity
        projected = (
            not self.names
            and ident.arkit_basis is not None
            and ident.arkit_basis.shape[1] == self.head.n_vertices
            and n > 0
        )
        if projected:  # a PCA model: its frames as a mix of the result's ARKit keys
            from mfnet_core.track.arkit_projection import pca_track_key_weights

            keys = pca_track_key_weights(self.head, ident.shape, expression, jaw, ident.arkit_basis)
            mapping, missing, unused = arkit_mapping(ident.arkit_names)
            arkit = np.clip(keys @ mapping.T, 0.0, 1.0)
        else:
            mapping, missing, unused = arkit_mapping(self.names)
            arkit = np.clip(expression @ mapping.T, 0.0, 1.0) if self.names else np.zeros((n, 52))
        ypr = (
            yaw_pitch_roll_deg(axis_angle_to_matrix(torch.as_tensor(rot))).numpy().reshape(n, 3)
            if n
            else np.zeros((0, 3))
        )
        angles = np.zeros((n, len(ANGLE_NAMES)))
        angles[:, :3] = np.radians(ypr)
        angles[:, 3:5] = eyes[:, 0]
        angles[:, 6:8] = eyes[:, 1]
        if not self.eyes:
            angles[:, 3:] = 0.0
        times = np.arange(n) / self.fps
        arrays = {
            "format_version": np.array(TRACK_FORMAT_VERSION, dtype=np.int32),
            "model_kind": np.array(self.head.kind),
            "model_name": np.array(self.head.info.name),
            "identity": np.array(str(self.identity.folder)),
            "shape": self.identity.shape.astype(np.float32),
            # the model's arrays times this made the person's head (rig.npz model_scale)
            "model_scale": np.array(self.head.scale, dtype=np.float64),
            "fps": np.array(self.fps),
            "times": times,
            "face_found": face,
            "interpolated": ~face,
            "gaze_found": gaze_found,
            "expression_names": np.array(
                list(self.names) or [f"exp_{i:03d}" for i in range(n_expr)]
            ),
            "expression": expression.astype(np.float32),
            "expression_raw": raw["coeffs"][:, :n_expr].astype(np.float32),
            "jaw_pose": jaw.astype(np.float32),
            "head_pose": rot.astype(np.float32),
            "head_pose_raw": raw["rot"].astype(np.float32),
            "head_translation": trans.astype(np.float32),
            "head_translation_raw": raw["trans"].astype(np.float32),
            "eye_pose": eye_pose.astype(np.float32),
            "eye_angles": eyes.reshape(n, 4).astype(np.float32),
            "eye_angles_raw": raw["eyes"].reshape(n, 4).astype(np.float32),
            "arkit_names": np.array(ARKIT_NAMES),
            "arkit": arkit.astype(np.float32),
            "angle_names": np.array(ANGLE_NAMES),
            "angles": angles.astype(np.float32),
            "landmarks": det.astype(np.float32),
            "landmarks_fitted": fitted.astype(np.float32),
            "residual_px": resid.astype(np.float32),
            "camera": self.intrinsics.as_vector(),
            "image_size": np.array([self.intrinsics.width, self.intrinsics.height], dtype=np.int32),
            "complete": np.array(bool(complete)),
            "neutral": (np.zeros(n_expr) if neutral is None else neutral).astype(np.float32),
            "eye_neutral": eye_rest.reshape(4).astype(np.float32),
        }
        gaps = smoothing.gap_ranges(face)
        if projected:
            warnings.append(
                f"the {self.head.kind} model's expressions are PCA components: the CSV's ARKit "
                "weights are each frame projected onto the result's ARKit keys (rig.npz "
                "arkit_basis); track.npz also holds the model's own coefficients"
            )
        elif not self.names:
            warnings.append(
                f"the {self.head.kind} model has no ARKit-named keys and the identity's result "
                "has none either: the CSV's 52 weights are 0 (track.npz holds the model's own "
                "coefficients)"
            )
        elif [m for m in missing if m != "TongueOut"]:  # no head model here has a tongue key
            warnings.append(
                f"no key of the {self.head.kind} model feeds {', '.join(missing)}: written as 0"
            )
        if n and not face.any():
            warnings.append("no face was found in any frame")
        elif gaps:
            warnings.append(
                f"{int((~face).sum())} of {n} frames without a face, bridged (interpolated): "
                + ", ".join(f"{a}-{b - 1}" if b - a > 1 else f"{a}" for a, b in gaps[:10])
                + (" ..." if len(gaps) > 10 else "")
            )
        total = self.wall_seconds or sum(self.seconds.values())
        summary = {
            "mfnet_version": __version__,
            "complete": bool(complete),
            "frames": n,
            "fps": self.fps,
            "duration_s": round(n / self.fps, 4),
            "model": self.head.kind,
            "identity": str(self.identity.folder),
            "frames_with_face": int(face.sum()),
            "frames_bridged": [[int(a), int(b - 1)] for a, b in gaps],
            "gaze_measured_frames": [int(gaze_found[:, 0].sum()), int(gaze_found[:, 1].sum())],
            "median_landmark_residual_px": (
                round(float(np.nanmedian(resid)), 3) if face.any() else None
            ),
            "smoothing": self.smoothing_strength,
            "neutral": neutral_from,
            "arkit_columns_without_key": missing,
            "model_keys_without_column": unused,
            "timings_s": {
                **{k: round(v, 3) for k, v in self.seconds.items()},
                "total": round(total, 3),
            },
            "frames_per_second": round(n / total, 2) if total > 0 else None,
            "warnings": warnings,
        }
        return TrackResult(arrays, summary, self.fps)


# -- outputs -------------------------------------------------------------------------------


def write_track(out: Path, result: TrackResult) -> list[Path]:
    """track.csv, track.npz and track.json into `out` (created when missing), each written
    atomically. Returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    a = result.arrays
    write_livelink_csv(out / "track.csv", a["arkit"], a["angles"], result.fps)
    buf = io.BytesIO()
    np.savez_compressed(buf, **a)
    atomic_write_bytes(out / "track.npz", buf.getvalue())
    atomic_write_text(out / "track.json", json.dumps(result.summary, indent=1, default=str) + "\n")
    return [out / f for f in OUTPUT_FILES]


# -- a whole clip --------------------------------------------------------------------------


@dataclass
class ClipOptions:
    fps: float | None = None  # a folder's frame rate, or one that overrides the video's
    max_side: int | None = None  # scale frames down to this longer side
    focal_px: float | None = None  # the camera's focal length at the original size
    max_frames: int | None = None
    smoothing: float = 1.0
    neutral: str | int = "auto"  # the rest weights taken off (Tracker._neutral)
    track: TrackOptions = field(default_factory=TrackOptions)


def track_clip(
    source: FrameSource,
    head: HeadModel,
    identity: Identity,
    options: ClipOptions | None = None,
    progress: Progress | None = None,
) -> TrackResult:
    """Tracks every frame of `source`. Ctrl-C (a KeyboardInterrupt) ends it with
    `TrackInterrupted`, whose tracker holds the frames done so far."""
    options = options or ClipOptions()
    report = progress or (lambda s, f, m: None)
    w, h = source.size
    focal = options.focal_px * source.scale if options.focal_px else None
    intr = Intrinsics.from_focal(w, h, focal)
    tracker = Tracker(
        head, identity, intr, source.fps, options.track, options.smoothing, neutral=options.neutral
    )
    total = source.n_frames
    if options.max_frames is not None:
        total = min(total, options.max_frames) if total else options.max_frames
    report("track", 0.0, f"tracking {source.path.name} ({total or '?'} frames, {source.fps:g} fps)")
    start = time.perf_counter()
    try:
        for i, rgb in source:
            if options.max_frames is not None and i >= options.max_frames:
                break
            tracker.add_frame(rgb)
            tracker.wall_seconds = time.perf_counter() - start
            done = len(tracker.frames)
            frac = min(done / total, 0.99) if total else 0.0
            report("track", frac, f"frame {done}/{total or '?'}")
    except KeyboardInterrupt as e:
        tracker.warnings.extend(source.warnings)
        raise TrackInterrupted(tracker, e) from e
    tracker.warnings.extend(source.warnings)
    if not tracker.frames:
        raise MfnetError(f"{source.path}: no frames could be read")
    return tracker.result()
