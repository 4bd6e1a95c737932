"""Inside Blender: the rig of an ICT Face Model result: ARKit-named keys with [0, 1]
sliders, one material slot per part, no empty pose-corrective keys, the jaw bone opening the
mouth and the eye bones moving the lids through their bone-driven keys, and each photo's own
expression on demand.

    blender -b --factory-startup -P tests/blender/check_ict_rig.py -- RESULT_DIR --lips A B [--zip ZIP]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bl_common  # noqa: E402
import bpy  # noqa: E402
import numpy as np  # noqa: E402


def driven(mesh, name: str) -> float:
    """A driven shape key's value as the depsgraph evaluated it."""
    ob = mesh.evaluated_get(bpy.context.evaluated_depsgraph_get())
    return float(ob.data.shape_keys.key_blocks[name].value)


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("result_dir")
    ap.add_argument("--lips", type=int, nargs=2, required=True)
    ap.add_argument("--zip", default=None)
    args = ap.parse_args(bl_common.script_args())
    module = bl_common.install_addon(args.zip)
    addon = bl_common.addon_module(module)
    builder = addon.builder
    rep = builder.build_rig(args.result_dir)
    arm, mesh = rep.armature, rep.mesh
    me = mesh.data
    keys = me.shape_keys.key_blocks
    info: dict = {"warnings": rep.warnings}
    info["keys"] = [kb.name for kb in keys]
    info["sliders"] = {
        n: [keys[n].slider_min, keys[n].slider_max] for n in ("eyeBlink_L", "jawOpen") if n in keys
    }
    info["materials"] = [m.name for m in me.materials]
    idx = np.empty(len(me.polygons), dtype=np.int32)
    me.polygons.foreach_get("material_index", idx)
    info["material_faces"] = np.bincount(idx, minlength=len(me.materials)).tolist()
    lash = next((m for m in me.materials if m.name.endswith("_eyelashes")), None)
    info["lash_blend"] = getattr(lash, "blend_method", None) or getattr(
        lash, "surface_render_method", None
    )

    def alpha_from_texture(mat) -> bool:
        """The BSDF's Alpha is fed (through the opacity multiply) by the texture's alpha."""
        bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
        links = bsdf.inputs["Alpha"].links
        if not links:
            return False
        mul = links[0].from_node
        return any(lk.from_node.type == "TEX_IMAGE" for i in mul.inputs for lk in i.links)

    skin = next(m for m in me.materials if m.name.endswith("_skin"))
    info["lash_alpha_from_texture"] = alpha_from_texture(lash)
    info["skin_alpha_from_texture"] = alpha_from_texture(skin)

    for kb in keys:
        if not kb.name.startswith("DRV-") and not kb.name.startswith("pose_") and kb != keys[0]:
            kb.value = 0.0
    a, b = args.lips
    rest = builder.evaluated_vertices(mesh)
    jaw = arm.pose.bones["jaw"]
    jaw.rotation_quaternion = (np.cos(0.15), np.sin(0.15), 0.0, 0.0)  # 0.3 rad about x
    bpy.context.view_layer.update()
    opened = builder.evaluated_vertices(mesh)
    info["lip_gap_rest"] = float(np.linalg.norm(rest[a] - rest[b]))
    info["lip_gap_jaw"] = float(np.linalg.norm(opened[a] - opened[b]))
    info["drv_jawOpen"] = driven(mesh, "DRV-jawOpen")
    jaw.rotation_quaternion = (1.0, 0.0, 0.0, 0.0)
    # the jaw bone slid 1 cm forward (its local z, the model's forward) juts the chin
    info["jaw_z_unlocked"] = not jaw.lock_location[2]
    jaw.location = (0.0, 0.0, 0.01)
    bpy.context.view_layer.update()
    info["drv_jawForward"] = driven(mesh, "DRV-jawForward")
    jutted = builder.evaluated_vertices(mesh)
    info["chin_forward_m"] = float(np.max(-(jutted - rest)[:, 1]))  # Blender: face toward -Y
    jaw.location = (0.0, 0.0, 0.0)
    eye = arm.pose.bones["eye_L"]
    eye.rotation_quaternion = (np.cos(0.15), np.sin(0.15), 0.0, 0.0)  # looks down
    bpy.context.view_layer.update()
    info["drv_look_down_L"] = driven(mesh, "DRV-eyeLookDown_L")
    info["drv_look_up_L"] = driven(mesh, "DRV-eyeLookUp_L")
    eye.rotation_quaternion = (1.0, 0.0, 0.0, 0.0)

    # each photo's own expression
    bpy.context.view_layer.objects.active = arm
    views = {}
    for view in ("left", "front", "right"):
        res = bpy.ops.mfnet.expressions_view(view=view)
        views[view] = {
            "result": sorted(res),
            "eyeBlink_L": keys["eyeBlink_L"].value,
        }
    info["views"] = views
    return info


bl_common.run(main)
