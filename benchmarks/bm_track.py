"""`mfnet track`: speed at 640 px and accuracy on a synthetic clip with known weights.

    python benchmarks/bm_track.py [--frames 30] [--repeat 4] [--size 640] [--json]

The clip: one ICT person (random identity) rendered by `mfnet_core.synthetic.make_subject`
with a `params` dict per frame: a smile, a 3-frame blink, the jaw opening and closing, the
head turning +-12 degrees; `--frames` distinct frames played forward and backward `--repeat`
times (a continuous motion of 2 * frames * repeat frames) and written as an MJPG video at
30 fps, so that decoding through OpenCV is timed too.

Speed: `track_clip` on that video after a warm-up clip (dlib's models and the head model
loaded once, as in a long take): frames per second end to end (decode, dlib on a crop around
the previous face + the 68-point predictor at three box scales, a warm-started 4-iteration
Levenberg-Marquardt on the landmark subset, iris search, smoothing), and the seconds per
frame of each stage. The target is 15 frames/s at 640 px on 2 CPU cores. The reference
workload (`benchmarks/reference.py`) is timed before and after in this process; every time
is also given as a ratio to it.

Accuracy: mean absolute weight error (smoothed and per-frame) on the keys landmarks can see
(eyeBlink_L/R, jawOpen, mouthSmile_L/R), and the frame error of the blink's and the jaw's
peaks, (a) with the model's own landmarks plus 1 px of noise and (b) with the detector's
landmarks on the renders (`--landmarks dlib` or `mediapipe`).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from reference import Reference, machine

VISIBLE = ("eyeBlink_L", "eyeBlink_R", "jawOpen", "mouthSmile_L", "mouthSmile_R")


def truth(names: tuple[str, ...], i: int, n: int) -> np.ndarray:
    """Weights of frame i of n distinct frames: smile early, a 3-frame blink at 40 %, the
    jaw open around 70 %."""
    e = np.zeros(len(names), np.float32)
    b = round(0.4 * n)
    blink = {b - 1: 0.5, b: 1.0, b + 1: 0.5}.get(i, 0.0)
    e[names.index("eyeBlink_L")] = e[names.index("eyeBlink_R")] = blink
    j0, j1 = round(0.55 * n), round(0.9 * n)
    if j0 <= i <= j1:
        e[names.index("jawOpen")] = 0.5 * math.sin(math.pi * (i - j0) / (j1 - j0))
    if round(0.1 * n) <= i <= round(0.25 * n):
        e[names.index("mouthSmile_L")] = e[names.index("mouthSmile_R")] = 0.6
    return e


def render(head, n: int, size: int):
    from mfnet_core.synthetic import make_subject, procedural_texture

    names = head.expression_space.names
    rng = np.random.default_rng(16)
    shape = rng.normal(size=head.n_shape).astype(np.float32)
    texture = procedural_texture(head, size=256, seed=16)
    frames, lms, exprs = [], [], []
    for i in range(n):
        params = {
            "shape": shape,
            "expression": truth(names, i, n),
            "jaw_pose": np.zeros(3, np.float32),
            "eye_pose": np.zeros(6, np.float32),
            "neck_pose": np.zeros(3, np.float32),
        }
        yaw = 12.0 * math.sin(2 * math.pi * i / n)
        s = make_subject(head, texture, seed=16, yaws_deg=(yaw,), image_size=size, params=params)
        frames.append(s.views[0].photo.rgb)
        lms.append(s.views[0].landmarks_true)
        exprs.append(params["expression"])
    return shape, np.stack(frames), np.stack(lms), np.stack(exprs), s.views[0].intrinsics


def peak_timing(estimate: np.ndarray, true: np.ndarray, window: int) -> tuple[float, float]:
    """Over every peak of the true curve (the clip plays its frames back and forth, so each
    appears several times): the mean absolute frame offset of the estimate's peak within
    +-`window` frames, and the estimate's mean peak value."""
    top = true.max()
    peaks = [t for t in range(len(true)) if true[t] == top and (t == 0 or true[t - 1] < top)]
    offsets, values = [], []
    for t in peaks:
        lo, hi = max(0, t - window), min(len(true), t + window + 1)
        k = lo + int(np.argmax(estimate[lo:hi]))
        offsets.append(abs(k - t))
        values.append(float(estimate[k]))
    return float(np.mean(offsets)), float(np.mean(values))


def accuracy(names, estimate: np.ndarray, raw: np.ndarray, true: np.ndarray) -> dict:
    idx = [names.index(k) for k in VISIBLE]
    blink = names.index("eyeBlink_L")
    jaw = names.index("jawOpen")
    blink_dt, blink_peak = peak_timing(estimate[:, blink], true[:, blink], 3)
    jaw_dt, jaw_peak = peak_timing(estimate[:, jaw], true[:, jaw], 5)
    return {
        "mae_visible_keys": round(float(np.abs(estimate[:, idx] - true[:, idx]).mean()), 4),
        "mae_visible_keys_per_frame_fit": round(
            float(np.abs(raw[:, idx] - true[:, idx]).mean()), 4
        ),
        "mae_per_key": {
            k: round(float(np.abs(estimate[:, i] - true[:, i]).mean()), 4)
            for k, i in zip(VISIBLE, idx, strict=True)
        },
        "blink_peak_mean": round(blink_peak, 3),
        "blink_peak_frame_offset_mean": round(blink_dt, 2),
        "jaw_peak_mean": round(jaw_peak, 3),
        "jaw_peak_frame_offset_mean": round(jaw_dt, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=30, help="distinct rendered frames")
    ap.add_argument("--repeat", type=int, default=4, help="forward-backward plays of them")
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--landmarks", default="dlib", choices=("dlib", "mediapipe"), help="the frames' detector"
    )
    args = ap.parse_args()
    machine_start = machine()
    ref = Reference.start(machine_start=machine_start)

    import cv2

    from mfnet_core.head.registry import load_head_model
    from mfnet_core.track.identity import Identity
    from mfnet_core.track.run import ClipOptions, Tracker, track_clip
    from mfnet_core.track.tracker import TrackOptions
    from mfnet_core.track.video import open_frames

    head = load_head_model("ict")
    names = head.expression_space.names
    t = time.perf_counter()
    shape, frames, lms, exprs, intr = render(head, args.frames, args.size)
    render_s = time.perf_counter() - t
    identity = Identity(Path("bench"), shape.astype(np.float64), "ict", "", names)
    order = (list(range(args.frames)) + list(range(args.frames - 1, -1, -1))) * args.repeat
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "clip.avi"
        w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (args.size,) * 2)
        for i in order:
            w.write(cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR))
        w.release()
        warm = open_frames(video)
        detector = TrackOptions(landmarks=args.landmarks)
        # loads the detector's models
        track_clip(warm, head, identity, ClipOptions(max_frames=10, track=detector))
        runs = []
        for _ in range(2):
            src = open_frames(video)
            t = time.perf_counter()
            result = track_clip(src, head, identity, ClipOptions(track=detector))
            runs.append((time.perf_counter() - t, result))
    wall, result = min(runs, key=lambda r: r[0])
    n = result.n_frames
    timings = result.summary["timings_s"]
    stages = {k: timings[k] / n for k in ("landmarks", "fit", "gaze")}
    stages["decode_and_rest"] = wall / n - sum(stages.values())
    a = result.arrays
    true_clip = exprs[order]
    detected_acc = accuracy(names, a["expression"], a["expression_raw"], true_clip)

    tracker = Tracker(head, identity, intr, 30.0)
    rng = np.random.default_rng(7)
    t = time.perf_counter()
    for i in order:
        tracker.add_frame(frames[i], lms[i] + rng.normal(scale=1.0, size=lms[i].shape))
    given_s = time.perf_counter() - t
    given = tracker.result().arrays
    given_acc = accuracy(names, given["expression"], given["expression_raw"], true_clip)
    ref.finish()

    figures = {
        "frame_s": wall / n,
        "stage_frame_s": stages,
        "fit_and_gaze_frame_s_landmarks_given": given_s / n,
    }
    out = {
        **ref.to_json(),
        "clip": {
            "frames": n,
            "distinct_frames": args.frames,
            "size_px": args.size,
            "fps": 30.0,
            "render_s": round(render_s, 2),
        },
        "frames_per_second": round(n / wall, 2),
        "frames_per_second_landmarks_given": round(n / given_s, 2),
        "target_frames_per_second": 15,
        "seconds": {
            "frame_s": round(figures["frame_s"], 5),
            "stage_frame_s": {k: round(v, 5) for k, v in stages.items()},
            "fit_and_gaze_frame_s_landmarks_given": round(given_s / n, 5),
        },
        "ratio_to_reference": ref.ratios(figures, digits=4),
        "frames_with_face": int(a["face_found"].sum()),
        "landmarks": args.landmarks,
        f"median_landmark_residual_px_{args.landmarks}": round(
            float(np.nanmedian(a["residual_px"])), 3
        ),
        f"accuracy_{args.landmarks}_on_renders": detected_acc,
        "accuracy_model_landmarks_1px_noise": given_acc,
        "runs_wall_s": [round(r[0], 3) for r in runs],
    }
    if args.json:
        print(json.dumps(out))
        return
    print(ref.summary())
    print(
        f"{n} frames at {args.size} px: {out['frames_per_second']} frames/s end to end "
        f"({1000 * figures['frame_s']:.1f} ms/frame = "
        f"{ref.ratio(figures['frame_s'], 4)} x reference; target 15 frames/s)"
    )
    print("  per frame: " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in stages.items()))
    print(f"  fit + gaze with landmarks given: {out['frames_per_second_landmarks_given']} frames/s")
    print("accuracy, model landmarks + 1 px noise:", json.dumps(given_acc))
    print(f"accuracy, {args.landmarks} on the renders:", json.dumps(detected_acc))
    print(
        "runs (s):", out["runs_wall_s"], " median:", round(statistics.median(out["runs_wall_s"]), 3)
    )


if __name__ == "__main__":
    main()
