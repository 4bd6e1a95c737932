"""The add-on's Live Link Face CSV reader outside Blender: columns by name, ICT's split keys,
unknown columns reported, damaged files refused with one line, angles in the rig's axes."""

from __future__ import annotations

import numpy as np
import pytest

from blender_addon import livelink, poses
from mfnet_core.track.livelink import ANGLE_NAMES, ARKIT_NAMES, livelink_csv_text


def test_column_names_map_onto_rig_keys():
    ict_like = {"eyeBlink_L", "eyeBlink_R", "jawLeft", "browInnerUp_L", "browInnerUp_R", "jawOpen"}
    assert livelink.rig_keys_for("EyeBlinkLeft", ict_like) == ["eyeBlink_L"]
    assert livelink.rig_keys_for("JawLeft", ict_like) == ["jawLeft"]  # ARKit's own name
    assert livelink.rig_keys_for("BrowInnerUp", ict_like) == ["browInnerUp_L", "browInnerUp_R"]
    assert livelink.rig_keys_for("TongueOut", ict_like) == []
    assert livelink.rig_keys_for("JawOpen", {"jawOpen"}) == ["jawOpen"]


def test_read_by_name_in_any_order_with_unknown_columns(tmp_path):
    t = 70
    w = np.random.default_rng(0).uniform(size=(t, len(ARKIT_NAMES)))
    a = np.zeros((t, len(ANGLE_NAMES)))
    a[:, 0] = 0.1
    rows = [r.split(",") for r in livelink_csv_text(w, a, 60.0).splitlines()]
    order = [0, 1, *reversed(range(2, len(rows[0])))]  # another tool's column order
    text = "\n".join(
        ",".join([row[i] for i in order] + [x])
        for row, x in zip(rows, ["Extra"] + ["1"] * t, strict=True)
    )
    path = tmp_path / "take.csv"
    path.write_text(text + "\n")
    take = livelink.read_livelink_csv(path)
    assert take.n_frames == t and take.fps == pytest.approx(60.0)
    assert np.allclose(
        take.weights["EyeBlinkLeft"], w[:, ARKIT_NAMES.index("EyeBlinkLeft")], atol=1e-5
    )
    assert "Extra" in take.weights  # numeric: kept, and reported by the rig as unmatched
    seq = poses.load_sequence(path)
    assert seq.n_frames == t and seq.neck_pose.shape == (t, 3) and seq.eye_pose.shape == (t, 6)
    assert np.allclose(seq.neck_pose[0], [0, 0.1, 0], atol=1e-9)  # yaw: about +y


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no frames"),
        ("Timecode,BlendShapeCount\n00:00:00:00.000,0\n", "no blendshape"),
        ("Timecode,EyeBlinkLeft\n00:00:00:00.000,nan\n", "NaN"),
    ],
)
def test_bad_files_are_one_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(poses.PoseError, match=message) as e:
        poses.load_sequence(path)
    assert "\n" not in str(e.value)


def test_angles_follow_the_rig_axes():
    one = np.array([0.4])
    zero = np.zeros(1)
    assert np.allclose(livelink.angles_to_axis_angle(one, zero, zero), [[0, 0.4, 0]])
    assert np.allclose(livelink.angles_to_axis_angle(zero, one, zero), [[-0.4, 0, 0]])
    assert np.allclose(livelink.angles_to_axis_angle(zero, zero, one), [[0, 0, 0.4]])
