"""Inside Blender: import a Live Link Face CSV onto a rig with ARKit-named keys and check the
keys, the neck and eye bones, the frame rate and the range.

    blender -b --factory-startup -P tests/blender/check_livelink.py -- RESULT_DIR TAKE.csv [--zip ZIP]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bl_common  # noqa: E402
import bpy  # noqa: E402
import numpy as np  # noqa: E402


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("result_dir")
    ap.add_argument("csv")
    ap.add_argument("--zip", default=None)
    args = ap.parse_args(bl_common.script_args())
    module = bl_common.install_addon(args.zip)
    addon = bl_common.addon_module(module)
    rep = addon.builder.build_rig(args.result_dir)
    arm, mesh = rep.armature, rep.mesh
    bpy.context.view_layer.objects.active = arm
    res = bpy.ops.mfnet.import_sequence(filepath=args.csv, start_frame=1)
    scene = bpy.context.scene
    keys = mesh.data.shape_keys.key_blocks
    frames = {}
    for f in (1, 5, 10):
        scene.frame_set(f)
        q = np.array(arm.pose.bones["neck"].rotation_quaternion)
        e = np.array(arm.pose.bones["eye_L"].rotation_quaternion)
        frames[f] = {
            "eyeBlink_L": keys["eyeBlink_L"].value,
            "jawOpen": keys["jawOpen"].value,
            "browInnerUp_L": keys["browInnerUp_L"].value,
            "browInnerUp_R": keys["browInnerUp_R"].value,
            "neck_axis_angle": addon.rigdata.quaternion_to_axis_angle(q).tolist(),
            "eye_L_axis_angle": addon.rigdata.quaternion_to_axis_angle(e).tolist(),
        }
    return {
        "result": sorted(res),
        "frames": frames,
        "fps": scene.render.fps / scene.render.fps_base,
        "range": [scene.frame_start, scene.frame_end],
    }


bl_common.run(main)
