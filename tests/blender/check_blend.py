"""Inside Blender: open a .blend written by batch.py and report the head in it; pose the
jaw to check that the drivers run in a file opened without trusting its Python.

    blender -b --factory-startup -P tests/blender/check_blend.py -- FILE.blend
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bl_common  # noqa: E402
import bpy  # noqa: E402
import numpy as np  # noqa: E402


def main() -> dict:
    (path,) = bl_common.script_args()[:1]
    bpy.ops.wm.open_mainfile(filepath=path, load_ui=False)
    arm = next(o for o in bpy.data.objects if o.type == "ARMATURE")
    mesh = next(o for o in bpy.data.objects if o.type == "MESH")
    key = mesh.data.shape_keys
    drivers = list(key.animation_data.drivers) + (
        list(arm.animation_data.drivers) if arm.animation_data else []
    )
    images = [i for i in bpy.data.images if i.source == "FILE"]

    def verts():
        bpy.context.view_layer.update()
        me = mesh.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh()
        co = np.empty(len(me.vertices) * 3)
        me.vertices.foreach_get("co", co)
        return co.reshape(-1, 3)

    arm.pose.bones["jaw"].rotation_quaternion = (1.0, 0.0, 0.0, 0.0)
    rest = verts()
    arm.pose.bones["jaw"].rotation_quaternion = (0.98, 0.2, 0.0, 0.0)
    opened = verts()
    # FLAME-style rigs: the jaw's pose corrective; ICT rigs: the jaw bone's DRV-jawOpen key
    ev = mesh.evaluated_get(bpy.context.evaluated_depsgraph_get()).data.shape_keys.key_blocks
    corr = ev["pose_jaw_11"].value if "pose_jaw_11" in ev else None
    drv_jaw = ev["DRV-jawOpen"].value if "DRV-jawOpen" in ev else None
    return {
        "objects": sorted(o.name for o in bpy.data.objects),
        "n_shape_keys": len(key.key_blocks),
        "n_drivers": len(drivers),
        "drivers_valid": all(fc.driver.is_valid for fc in drivers),
        "images_packed": [bool(i.packed_file) for i in images],
        "autoexec_enabled": bool(bpy.context.preferences.filepaths.use_scripts_auto_execute),
        "jaw_moves_mesh": float(np.abs(opened - rest).max()),
        "corrective_value": corr,
        "driven_jaw_open": drv_jaw,
        "simple_expressions": all(
            getattr(fc.driver, "is_simple_expression", True)
            for fc in drivers
            if fc.driver.type == "SCRIPTED"
        ),
        "mfnet_tag": dict(arm["mfnet"]) if "mfnet" in arm.keys() else None,
    }


bl_common.run(main)
