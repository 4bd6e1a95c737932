"""Inside Blender: the Reconstruct Face operator end to end with the real backend.

Loads a photo into the Front slot, runs bpy.ops.mfnet.reconstruct() (blocking: Blender is
headless), and reports the rig it built; then runs it on a corrupt photo and reports the
backend's error as the panel would show it. The backend Python comes from MFNET_PYTHON.

    blender -b --factory-startup -P tests/blender/check_operator.py -- PHOTO BAD_PHOTO WORKDIR --zip ZIP
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bl_common  # noqa: E402
import bpy  # noqa: E402


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("photo")
    ap.add_argument("bad_photo")
    ap.add_argument("workdir")
    ap.add_argument("--zip", default=None)
    args = ap.parse_args(bl_common.script_args())
    module = bl_common.install_addon(args.zip)
    addon = bl_common.addon_module(module)
    prefs = addon.preferences.get(bpy.context)
    prefs.output_folder = str(Path(args.workdir) / "results")
    prefs.device = "cpu"
    s = bpy.context.scene.mfnet
    s.front = bpy.data.images.load(args.photo)
    s.texture_size = "1024"
    s.expression_keys = 20
    job = bpy.context.window_manager.mfnet_job
    out: dict = {"module": module}

    # preferences: auto-detect fills in the backend Python, Check shows `mfnet doctor`
    r_detect = bpy.ops.mfnet.detect_backend()
    detected = prefs.backend_python
    r_check = bpy.ops.mfnet.check_backend()
    out["prefs"] = {
        "detect": list(r_detect),
        "backend_python": detected,
        "check": list(r_check),
        "doctor_lines": list(addon.preferences.doctor_lines),
        "pose_library": str(addon.preferences.pose_library_path(prefs)),
    }

    res = bpy.ops.mfnet.reconstruct()
    rig = addon.builder.rig_of(bpy.context.view_layer.objects.active)
    out["ok_run"] = {
        "result": list(res),
        "info": job.info,
        "error": job.error,
        "running": job.running,
        "stage": job.stage,
        "mesh": rig[1].name if rig else None,
        "armature": rig[0].name if rig else None,
        "n_expression_keys": sum(
            addon.rigdata.is_expression_key(kb.name) for kb in rig[1].data.shape_keys.key_blocks
        )
        if rig
        else 0,
        "result_dirs": sorted(p.name for p in (Path(args.workdir) / "results").iterdir()),
        "texture_packed": bool(
            rig and rig[1].data.materials[0].node_tree.nodes["mfnet texture"].image.packed_file
        ),
    }

    s.front = bpy.data.images.load(args.bad_photo)
    s.name = "broken"
    try:
        res = list(bpy.ops.mfnet.reconstruct())
    except RuntimeError as e:  # an operator that reports ERROR raises when called from a script
        res = f"RuntimeError: {e}"
    out["bad_run"] = {
        "result": res,
        "error": job.error,
        "running": job.running,
        "result_dirs": sorted(p.name for p in (Path(args.workdir) / "results").iterdir()),
    }
    return out


bl_common.run(main)
