"""Inside Blender: the animator tools on a built rig. Reset / Fitted / Keyframe All, pose
library save / apply / delete, and importing a FLAME parameter sequence (.npz and .json)
as keyframes, checked against FLAME's forward pass (numpy reference) at a few frames.

    blender -b --factory-startup -P tests/blender/check_animation.py -- RESULT_DIR WORKDIR [--zip ZIP]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bl_common  # noqa: E402
import bpy  # noqa: E402
import numpy as np  # noqa: E402
import reference_lbs  # noqa: E402


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("result_dir")
    ap.add_argument("workdir")
    ap.add_argument("--zip", default=None)
    args = ap.parse_args(bl_common.script_args())
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    module = bl_common.install_addon(args.zip)
    addon = bl_common.addon_module(module)
    rigdata, builder = addon.rigdata, addon.builder
    rep = builder.build_rig(args.result_dir)
    arm, mesh = rep.armature, rep.mesh
    rig = rigdata.load_result(args.result_dir)
    keys = mesh.data.shape_keys.key_blocks
    exp_names = rig.expression_key_names()
    joints = rig.joint_names
    with np.load(Path(args.result_dir) / "rig.npz") as z:
        arrays = {k: z[k] for k in z.files}
    out: dict = {"module": module}

    def state():
        e = np.array([keys[n].value for n in exp_names])
        q = np.array([arm.pose.bones[n].rotation_quaternion for n in joints])
        return e, q

    # reset and fitted
    res = bpy.ops.mfnet.expressions_reset()
    e, q = state()
    out["reset"] = {
        "result": list(res),
        "max_expr": float(np.abs(e).max()),
        "max_quat_err": float(np.abs(q - [1, 0, 0, 0]).max()),
    }
    res = bpy.ops.mfnet.expressions_fitted()
    e, q = state()
    fitted_q = rig.fitted_quaternions()
    qerr = max(float(np.abs(q[joints.index(n)] - fq).max()) for n, fq in fitted_q.items())
    out["fitted"] = {
        "result": list(res),
        "expr_err": float(np.abs(e - rig.expression).max()),
        "quat_err": qerr,
    }

    # pose library
    lib = work / "poses.json"
    rng = np.random.default_rng(5)
    e_set = rng.normal(size=len(exp_names))
    for n, v in zip(exp_names, e_set, strict=True):
        keys[n].value = float(v)
    arm.pose.bones["jaw"].rotation_quaternion = list(
        rigdata.axis_angle_to_quaternion(np.array([0.3, 0.0, 0.02]))
    )
    r1 = bpy.ops.mfnet.pose_save(name="wide", filepath=str(lib))
    bpy.ops.mfnet.expressions_reset()
    r2 = bpy.ops.mfnet.pose_apply(name="wide", filepath=str(lib))
    e, q = state()
    saved = json.loads(lib.read_text())
    r3 = bpy.ops.mfnet.pose_delete(name="wide", filepath=str(lib))
    out["poses"] = {
        "results": [list(r1), list(r2), list(r3)],
        "expr_err": float(np.abs(e - e_set).max()),
        "jaw_err": float(
            np.abs(
                q[joints.index("jaw")]
                - rigdata.axis_angle_to_quaternion(np.array([0.3, 0.0, 0.02]))
            ).max()
        ),
        "saved_names": sorted(saved["poses"]),
        "after_delete": sorted(json.loads(lib.read_text())["poses"]),
    }

    # keyframe all
    bpy.context.scene.frame_set(7)
    r4 = bpy.ops.mfnet.expressions_keyframe()
    key_fc = mesh.data.shape_keys.animation_data.action
    out["keyframe_all"] = {
        "result": list(r4),
        "key_action": bool(key_fc),
        "arm_action": bool(arm.animation_data and arm.animation_data.action),
    }

    # sequence import: npz with expression/jaw/neck/eyes and a global pose, then json
    t = 12
    seq = {
        "expression": rng.normal(size=(t, len(exp_names) + 3))
        * 0.8,  # 3 columns more than the rig has
        "jaw_pose": np.stack([np.linspace(0.0, 0.35, t), np.zeros(t), np.zeros(t)], 1),
        "neck_pose": rng.normal(size=(t, 3)) * 0.15,
        "eye_pose": rng.normal(size=(t, 6)) * 0.1,
        "global_pose": rng.normal(size=(t, 3)) * 0.2,
        "fps": np.array(24.0),
    }
    np.savez(work / "seq.npz", **seq)
    r5 = bpy.ops.mfnet.import_sequence(filepath=str(work / "seq.npz"), start_frame=10)
    scene = bpy.context.scene
    errs, key_errs, quat_errs = [], [], []
    pose_all = np.stack(
        [
            seq["global_pose"],
            seq["neck_pose"],
            seq["jaw_pose"],
            seq["eye_pose"][:, :3],
            seq["eye_pose"][:, 3:],
        ],
        1,
    )
    for i in (0, 5, 11):
        scene.frame_set(10 + i)
        e, q = state()
        key_errs.append(float(np.abs(e - seq["expression"][i, : len(exp_names)]).max()))
        want_q = rigdata.axis_angle_to_quaternion(pose_all[i])
        quat_errs.append(
            float(
                np.min(
                    [np.abs(q - want_q).max(axis=1), np.abs(q + want_q).max(axis=1)], axis=0
                ).max()
            )
        )
        verts = rigdata.to_flame(builder.evaluated_vertices(mesh))
        errs.append(
            float(
                np.abs(
                    verts
                    - reference_lbs.flame_forward(
                        arrays, seq["expression"][i, : len(exp_names)], pose_all[i]
                    )
                ).max()
            )
        )
    out["sequence_npz"] = {
        "result": list(r5),
        "frame_range": [scene.frame_start, scene.frame_end],
        "fps": scene.render.fps / scene.render.fps_base,
        "key_errs": key_errs,
        "quat_errs": quat_errs,
        "mesh_errs": errs,
    }
    frames = [
        {"expression": seq["expression"][i, :4].tolist(), "jaw_pose": seq["jaw_pose"][i].tolist()}
        for i in range(t)
    ]
    (work / "seq.json").write_text(json.dumps({"fps": 30, "frames": frames}))
    r6 = bpy.ops.mfnet.import_sequence(filepath=str(work / "seq.json"), start_frame=1)
    scene.frame_set(6)
    e, q = state()
    out["sequence_json"] = {
        "result": list(r6),
        "expr_err": float(np.abs(e[:4] - seq["expression"][5, :4]).max()),
        "rest_zero": float(np.abs(e[4:]).max()) if len(e) > 4 else 0.0,
        "jaw_err": float(
            np.abs(
                q[joints.index("jaw")] - rigdata.axis_angle_to_quaternion(seq["jaw_pose"][5])
            ).max()
        ),
        "fps": scene.render.fps / scene.render.fps_base,
    }
    # a bad file reports an error instead of raising
    (work / "bad.json").write_text("{}")
    try:
        r7 = bpy.ops.mfnet.import_sequence(filepath=str(work / "bad.json"))
        out["bad_sequence"] = list(r7)
    except RuntimeError as e:  # operators that report ERROR raise RuntimeError from scripts
        out["bad_sequence"] = str(e)
    return out


bl_common.run(main)
