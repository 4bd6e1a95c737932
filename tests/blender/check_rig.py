"""Inside Blender: install the add-on, build the rig from a result folder, report its
structure, and pose it at random jaw/neck/eye/root rotations and expression values.

    blender -b --factory-startup -P tests/blender/check_rig.py -- RESULT_DIR OUT.npz [--zip ZIP] [--poses N]
    .venv-bpy/bin/python tests/blender/check_rig.py RESULT_DIR OUT.npz [--zip ZIP] [--poses N]

OUT.npz gets the sampled parameters and the Blender-evaluated vertices (FLAME axes) so the
pytest side can compare them with mfnet_core's FLAME forward pass.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bl_common  # noqa: E402
import bpy  # noqa: E402
import numpy as np  # noqa: E402


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("result_dir")
    ap.add_argument("out")
    ap.add_argument("--zip", default=None)
    ap.add_argument("--poses", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(bl_common.script_args())

    module = bl_common.install_addon(args.zip)
    addon = bl_common.addon_module(module)
    builder = addon.builder
    rigdata = addon.rigdata

    t0 = time.perf_counter()
    rep = builder.build_rig(args.result_dir)
    build_s = time.perf_counter() - t0
    arm, mesh = rep.armature, rep.mesh
    rig = rigdata.load_result(args.result_dir)
    info: dict = {
        "module": module,
        "build_seconds": build_s,
        "timings": rep.timings,
        "warnings": rep.warnings,
    }

    # ---- structure
    me = mesh.data
    info["n_vertices"] = len(me.vertices)
    info["n_faces"] = len(me.polygons)
    info["bones"] = {b.name: (b.parent.name if b.parent else None) for b in arm.data.bones}
    info["bone_deform"] = {b.name: b.use_deform for b in arm.data.bones}
    info["rotation_modes"] = sorted({pb.rotation_mode for pb in arm.pose.bones})
    info["bone_axes_ok"] = all(
        np.allclose(
            np.array(b.matrix_local.to_3x3()),
            np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]]),
            atol=1e-6,
        )
        for b in arm.data.bones
    )
    info["vertex_groups"] = [vg.name for vg in mesh.vertex_groups]
    # read the weights back (test-side loop)
    w = np.zeros((len(me.vertices), len(mesh.vertex_groups)))
    for v in me.vertices:
        for g in v.groups:
            w[v.index, g.group] = g.weight
    order = [mesh.vertex_groups[n].index for n in rig.joint_names]
    info["weights_max_err"] = float(np.abs(w[:, order] - rig.skin_weights).max())
    keys = me.shape_keys.key_blocks
    info["shape_keys"] = [kb.name for kb in keys]
    info["shape_key_relative"] = [kb.relative_key.name for kb in keys][1:3]
    mods = [(m.type, getattr(m.object, "name", None)) for m in mesh.modifiers]
    info["modifiers"] = mods
    info["parent"] = mesh.parent.name if mesh.parent else None
    drivers = []
    for owner in (me.shape_keys, arm):
        ad = owner.animation_data
        for fc in ad.drivers if ad else []:
            d = fc.driver
            drivers.append(
                {
                    "path": fc.data_path,
                    "index": fc.array_index,
                    "type": d.type,
                    "expression": d.expression,
                    "simple": bool(getattr(d, "is_simple_expression", True))
                    if d.type == "SCRIPTED"
                    else True,
                    "valid": bool(d.is_valid) and bool(fc.is_valid),
                    "n_vars": len(d.variables),
                }
            )
    info["drivers"] = drivers
    mat = me.materials[0] if me.materials else None
    info["material"] = mat.name if mat else None
    tex_nodes = [n for n in mat.node_tree.nodes if n.type == "TEX_IMAGE"] if mat else []
    info["texture_image"] = (
        tex_nodes[0].image.filepath if tex_nodes and tex_nodes[0].image else None
    )
    info["texture_size"] = (
        list(tex_nodes[0].image.size) if tex_nodes and tex_nodes[0].image else None
    )
    linked = bool(tex_nodes) and any(
        link.from_node == tex_nodes[0] and link.to_socket.name == "Base Color"
        for link in mat.node_tree.links
    )
    info["texture_linked"] = linked
    info["uv_layers"] = [uv.name for uv in me.uv_layers]
    uv = np.empty(len(me.loops) * 2, dtype=np.float32)
    me.uv_layers[0].data.foreach_get("uv", uv)
    want_uv = rig.uv_coords[rig.uv_faces.reshape(-1)].reshape(-1)
    info["uv_max_err"] = float(np.abs(uv - want_uv).max())
    lv = np.empty(len(me.loops), dtype=np.int32)
    me.loops.foreach_get("vertex_index", lv)
    info["faces_equal"] = bool(np.array_equal(lv, rig.faces.reshape(-1)))
    co = np.empty(len(me.vertices) * 3, dtype=np.float32)
    me.vertices.foreach_get("co", co)
    info["rest_max_err"] = float(
        np.abs(addon.rigdata.to_flame(co.reshape(-1, 3)) - rig.vertices).max()
    )
    info["expression_values"] = [keys[n].value for n in rig.expression_key_names()]

    # ---- the fitted state (as built) and random poses
    samples_e, samples_p, samples_v = [], [], []
    fitted_pose = np.zeros((rig.n_joints, 3))
    for name, q in rig.fitted_quaternions().items():
        fitted_pose[rig.joint_names.index(name)] = rigdata.quaternion_to_axis_angle(q)
    bpy.context.view_layer.update()
    samples_e.append(np.array(info["expression_values"]))
    samples_p.append(fitted_pose)
    samples_v.append(rigdata.to_flame(builder.evaluated_vertices(mesh)))

    rng = np.random.default_rng(args.seed)
    for _ in range(args.poses):
        e = rng.normal(size=rig.n_expressions) * 1.0
        pose = rng.normal(size=(rig.n_joints, 3)) * 0.25
        pose[2] = [
            abs(rng.normal()) * 0.3,
            rng.normal() * 0.05,
            rng.normal() * 0.05,
        ]  # jaw mostly opens
        for name, v in zip(rig.expression_key_names(), e, strict=True):
            keys[name].value = float(v)
        for j, name in enumerate(rig.joint_names):
            arm.pose.bones[name].rotation_quaternion = [
                float(x) for x in rigdata.axis_angle_to_quaternion(pose[j])
            ]
        bpy.context.view_layer.update()
        samples_e.append(e)
        samples_p.append(pose)
        samples_v.append(rigdata.to_flame(builder.evaluated_vertices(mesh)))

    # the gap the pivot drivers close: mute them and evaluate the last pose again
    muted = 0
    for fc in arm.animation_data.drivers if arm.animation_data else []:
        if fc.data_path.endswith("location"):
            fc.mute = True
            muted += 1
    for pb in arm.pose.bones:
        pb.location = (0.0, 0.0, 0.0)
    bpy.context.view_layer.update()
    no_pivot = rigdata.to_flame(builder.evaluated_vertices(mesh))
    for fc in arm.animation_data.drivers if arm.animation_data else []:
        fc.mute = False

    # the same check against the numpy reference, inside Blender
    import reference_lbs

    with np.load(Path(args.result_dir) / "rig.npz") as z:
        arrays = {k: z[k] for k in z.files}
    errs = [
        float(np.abs(v - reference_lbs.flame_forward(arrays, e, p)).max())
        for e, p, v in zip(samples_e, samples_p, samples_v, strict=True)
    ]
    info["reference_max_err"] = max(errs)
    info["reference_errs"] = errs
    info["gap_without_pivot_drivers"] = float(
        np.abs(no_pivot - reference_lbs.flame_forward(arrays, samples_e[-1], samples_p[-1])).max()
    )
    info["muted_location_drivers"] = muted
    np.savez(
        args.out,
        expression=np.array(samples_e),
        pose=np.array(samples_p),
        vertices=np.array(samples_v),
    )
    return info


bl_common.run(main)
