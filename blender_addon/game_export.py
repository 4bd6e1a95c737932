"""Export for games: the MFNet rig as a .glb or .fbx that plays without Blender's drivers.

Why: a game engine plays a skeleton and blend-shape weights, nothing else. The rig's pose
correctives and DRV- keys are driver-computed, and the MCH- pivot bones move with the
expression; Blender's exporters either drop that motion or (glTF in Blender 3.4) freeze
the expression animation on the corrective drivers. So the export samples the rig as
Blender evaluates it, frame by frame (every shape key's value, every joint's pose
matrix), and writes that onto a temporary copy with no drivers: the joint bones without
the MCH- helpers (their motion baked into the joints' own keys), the mesh with plain
keyed shape keys. The copy lives in a temporary scene and is deleted afterwards; the
user's rig, scene, frame and selection are as they were (tests/blender/check_game_export.py
checks that). The rules (formats, FBX weights outside [0, 1]) are in export_plan.py.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np

from . import export_plan as plan
from .builder import RIG_TAG, rig_of
from .game_bake import Bake, RigValues, decompose, has_animation, local_transforms, sample_rig
from .keyframes import fcurves_of, write_keys

TEMP_SCENE = "mfnet game export"
_RENAMED = ".mfnet-export"  # suffix the originals carry while their copies take their names


@dataclass
class ExportReport:
    path: Path
    format: str
    frames: tuple[int, int] | None  # the baked range; None: the current pose only
    keys: list[str]  # shape keys in the file, in order
    bones: list[str]  # bones in the file
    key_scales: dict[str, list] = field(default_factory=dict)  # FBX: file key -> [source, scale]
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- the copy


@dataclass
class _Copy:
    scene: object
    arm: object
    mesh: object
    actions: list = field(default_factory=list)


def _temp_scene(context, bake: Bake) -> bpy.types.Scene:
    src = context.scene
    tmp = bpy.data.scenes.new(TEMP_SCENE)
    tmp.render.fps, tmp.render.fps_base = src.render.fps, src.render.fps_base
    tmp.unit_settings.system = src.unit_settings.system
    tmp.unit_settings.scale_length = src.unit_settings.scale_length
    tmp.frame_start, tmp.frame_end = 0, len(bake.frames) - 1  # the take starts at time 0
    tmp.frame_current = 0
    return tmp


def _copy_armature(context, tmp, arm, bake: Bake):
    """A new armature of the exported bones with the original rest matrices and deform
    flags, each parented to its nearest exported ancestor."""
    data = bpy.data.armatures.new(arm.data.name)
    obj = bpy.data.objects.new(arm.name, data)
    tmp.collection.objects.link(obj)
    layer = tmp.view_layers[0]
    layer.objects.active = obj
    with context.temp_override(scene=tmp, view_layer=layer, active_object=obj, object=obj):
        bpy.ops.object.mode_set(mode="EDIT")
        try:
            ebs = []
            for name in bake.bones:
                src = arm.data.bones[name]
                eb = data.edit_bones.new(name)
                eb.head, eb.tail = src.head_local, src.tail_local
                eb.matrix = src.matrix_local.copy()
                eb.use_deform = src.use_deform
                eb.use_connect = False
                ebs.append(eb)
            for eb, p in zip(ebs, bake.parents, strict=True):
                if p >= 0:
                    eb.parent = ebs[p]
        finally:
            bpy.ops.object.mode_set(mode="OBJECT")
    for pb in obj.pose.bones:
        pb.rotation_mode = "QUATERNION"
    obj.rotation_mode = "QUATERNION"
    return obj


def _copy_mesh(tmp, mesh, arm_copy):
    """The mesh object and data copied (shape keys, vertex groups, materials, UVs come
    along), drivers and actions dropped, skinned to the copied armature."""
    obj = mesh.copy()
    obj.data = mesh.data.copy()
    tmp.collection.objects.link(obj)
    obj.animation_data_clear()
    if obj.data.shape_keys is not None:
        obj.data.shape_keys.animation_data_clear()
    obj.parent = arm_copy
    obj.matrix_parent_inverse = mesh.matrix_parent_inverse.copy()
    obj.matrix_basis = mesh.matrix_basis.copy()
    for mod in obj.modifiers:
        if mod.type == "ARMATURE":
            mod.object = arm_copy
    return obj


def _take_frames(bake: Bake) -> np.ndarray:
    """The copy's frames: the take starts at frame 0, i.e. time 0 in the file (engines
    start a clip there; Blender's FBX importer puts it on frame 1, its glTF importer on
    frame 0)."""
    return bake.frames - bake.frames[0]


def _key_plan(bake: Bake, fmt: str) -> list[plan.FileKey]:
    if fmt == "FBX":
        return plan.fbx_keys(bake.key_names, bake.key_values)
    return plan.gltf_keys(bake.key_names)


def _write_keys(copy: _Copy, bake: Bake, keys: list[plan.FileKey], animated: bool) -> None:
    """The copy's shape keys become the file's keys: scaled or split (FBX), unmuted,
    sliders wide enough for their values, keyed per frame or set to the one pose."""
    key = copy.mesh.data.shape_keys
    if key is None:
        return
    basis = key.reference_key
    n = 3 * len(basis.data)
    deltas: dict[str, np.ndarray] = {}  # the original shapes, read before any is scaled
    for fk in keys:
        if not fk.unchanged and fk.source not in deltas:
            src = key.key_blocks[fk.source]
            co, ref = np.empty(n, np.float32), np.empty(n, np.float32)
            src.data.foreach_get("co", co)
            src.relative_key.data.foreach_get("co", ref)
            deltas[fk.source] = co - ref
    index = {name: k for k, name in enumerate(bake.key_names)}
    fcs = fcurves_of(key) if animated else None  # the action export_rig assigned
    for fk in keys:
        values = fk.weights(bake.key_values[:, index[fk.source]])
        kb = key.key_blocks.get(fk.name)
        if kb is None:
            kb = copy.mesh.shape_key_add(name=fk.name, from_mix=False)
            kb.relative_key = basis
        if not fk.unchanged:
            ref = np.empty(n, np.float32)
            kb.relative_key.data.foreach_get("co", ref)
            kb.data.foreach_set("co", ref + deltas[fk.source] * np.float32(fk.scale))
        kb.mute = False
        kb.slider_min, kb.slider_max = plan.slider_range(values)
        if animated:
            path = f'key_blocks["{bpy.utils.escape_identifier(kb.name)}"].value'
            write_keys(fcs, path, 0, _take_frames(bake), values, "Shape keys")
        else:
            kb.value = float(values[0])


def _write_pose(copy: _Copy, bake: Bake, animated: bool) -> None:
    """The copied joints' keys (location, rotation, scale where it is not 1) that
    reproduce the sampled pose matrices; the armature object's transform likewise."""
    rest = np.array([np.array(copy.arm.data.bones[n].matrix_local) for n in bake.bones])
    basis = local_transforms(bake, rest)
    fcs = fcurves_of(copy.arm) if animated else None
    frames = _take_frames(bake)
    for b, name in enumerate(bake.bones):
        loc, quat, scale = decompose(basis[:, b])
        pb = copy.arm.pose.bones[name]
        esc = bpy.utils.escape_identifier(name)
        channels = [("location", loc), ("rotation_quaternion", quat)]
        if np.abs(scale - 1.0).max() > 1e-6:
            channels.append(("scale", scale))
        for prop, vals in channels:
            if animated:
                for i in range(vals.shape[1]):
                    write_keys(fcs, f'pose.bones["{esc}"].{prop}', i, frames, vals[:, i], name)
            else:
                setattr(pb, prop, vals[0].tolist())
    loc, quat, scale = decompose(bake.object_matrices)
    moving = np.abs(bake.object_matrices - bake.object_matrices[:1]).max() > 1e-9
    for prop, vals in (("location", loc), ("rotation_quaternion", quat), ("scale", scale)):
        if animated and moving:
            for i in range(vals.shape[1]):
                write_keys(fcs, prop, i, frames, vals[:, i], "Object Transforms")
        else:
            setattr(copy.arm, prop, vals[0].tolist())


def _max_influences(mesh, bones: list[str]) -> int:
    """The most exported deforming bones that weigh on one vertex."""
    deform = {vg.index for vg in mesh.vertex_groups if vg.name in bones}
    counts = [
        sum(1 for g in v.groups if g.group in deform and g.weight > 0.0) for v in mesh.data.vertices
    ]
    return max(counts, default=0)


# --------------------------------------------------------------------------- exporters

_EXPORTERS = {"GLB": ("gltf", "io_scene_gltf2"), "FBX": ("fbx", "io_scene_fbx")}


def _exporter(fmt: str):
    """Blender's own exporter operator for the format (its add-on enabled for this session
    when it is off)."""
    op_name, module = _EXPORTERS[fmt]
    if not hasattr(bpy.types, f"EXPORT_SCENE_OT_{op_name}"):
        import addon_utils

        addon_utils.enable(module, default_set=False)
        if not hasattr(bpy.types, f"EXPORT_SCENE_OT_{op_name}"):
            raise plan.ExportError(f"Blender's {fmt} exporter ({module}) is not available")
    return getattr(bpy.ops.export_scene, op_name)


def _supported(op, wanted: dict) -> dict:
    """The options this Blender's exporter has (names differ between 3.4 and 5.0)."""
    have = set(op.get_rna_type().properties.keys())
    return {k: v for k, v in wanted.items() if k in have}


def _gltf_options(path: Path, animated: bool, anim_name: str, influences: int, licence: str):
    return {
        "filepath": str(path),
        "check_existing": False,
        "export_format": "GLB",
        "use_selection": False,
        "use_visible": False,
        "use_renderable": False,
        "use_active_collection": False,
        "use_active_scene": True,  # 3.4 exports every scene otherwise
        "export_extras": True,  # the mesh object's mfnet_* properties
        "export_copyright": licence,
        "export_yup": True,
        "export_apply": False,  # applying modifiers would drop the shape keys
        "export_texcoords": True,
        "export_normals": True,
        "export_materials": "EXPORT",
        "export_image_format": "AUTO",
        "export_cameras": False,
        "export_lights": False,
        "export_skins": True,
        "export_def_bones": False,  # the copy has no helpers; keep the head socket
        "export_all_influences": influences > 4,
        "export_influence_nb": max(4, influences),
        "export_morph": True,
        "export_morph_normal": True,
        "export_morph_tangent": False,
        "export_animations": animated,
        "export_current_frame": not animated,  # 3.4, a still: the joints as posed now
        "export_rest_position_armature": animated,  # 4.x/5.0 likewise (bind pose: rest)
        "export_frame_range": True,
        "export_frame_step": 1,
        "export_force_sampling": True,
        "export_optimize_animation_size": False,
        "export_anim_single_armature": False,  # 3.4 would add every action in the file
        "export_nla_strips": False,  # 3.4: one animation of all objects...
        "export_nla_strips_merged_animation_name": anim_name,  # ...named like this
        "export_animation_mode": "ACTIONS",  # 4.x/5.0: the copy's one action
        "export_merge_animation": "ACTION",
        "export_anim_slide_to_zero": False,
        "export_bake_animation": False,
        "export_reset_pose_bones": True,
        "export_leaf_bone": False,
    }


def _fbx_options(path: Path, animated: bool) -> dict:
    return {
        "filepath": str(path),
        "check_existing": False,
        "use_selection": False,
        "use_visible": False,
        "use_active_collection": False,
        "object_types": {"ARMATURE", "MESH"},
        "global_scale": 1.0,
        "apply_unit_scale": True,
        "apply_scale_options": "FBX_SCALE_NONE",
        "axis_forward": "-Z",
        "axis_up": "Y",
        "use_mesh_modifiers": False,  # applying the Armature modifier would drop the keys
        "mesh_smooth_type": "FACE",
        "use_tspace": False,
        "use_custom_props": True,  # the mesh object's mfnet_* properties
        "add_leaf_bones": False,
        "primary_bone_axis": "Y",
        "secondary_bone_axis": "X",
        "use_armature_deform_only": False,  # the copy has no helpers; keep the head socket
        "armature_nodetype": "NULL",
        "bake_anim": animated,
        "bake_anim_use_all_bones": True,
        "bake_anim_use_nla_strips": False,
        "bake_anim_use_all_actions": False,  # else every action in the file becomes a take
        "bake_anim_force_startend_keying": True,
        "bake_anim_step": 1.0,
        "bake_anim_simplify_factor": 0.0,  # every frame as sampled
        "path_mode": "COPY",
        "embed_textures": True,
    }


# --------------------------------------------------------------------------- the export


def _temp_name(name: str) -> str:
    room = 63 - len(_RENAMED)
    data = name.encode("utf-8")[:room]
    return data.decode("utf-8", errors="ignore") + _RENAMED


def _free_names(ids: list) -> list[tuple[object, str]]:
    """Gives the originals temporary names so that their copies can take theirs (the
    file's objects are named like the user's); returns what to put back."""
    out = []
    for id_block in ids:
        out.append((id_block, id_block.name))
        id_block.name = _temp_name(id_block.name)
    return out


def _delete(copy: _Copy | None) -> None:
    """Removes the temporary scene with everything made for it (also after a failure)."""
    if copy is None:
        return
    for obj in list(copy.scene.collection.all_objects):
        data = obj.data
        bpy.data.objects.remove(obj)
        if isinstance(data, bpy.types.Mesh) and data.users == 0:
            bpy.data.meshes.remove(data)
        elif isinstance(data, bpy.types.Armature) and data.users == 0:
            bpy.data.armatures.remove(data)
    for act in copy.actions:
        bpy.data.actions.remove(act)
    bpy.data.scenes.remove(copy.scene)


def _animation_name(arm, mesh, fallback: str) -> str:
    for id_block in (arm, mesh.data.shape_keys):
        ad = getattr(id_block, "animation_data", None)
        if ad is not None and ad.action is not None:
            return ad.action.name
    return fallback


def export_rig(
    context,
    obj,
    filepath: str | Path,
    *,
    animation: bool = True,
    frame_range: tuple[int, int] | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Writes the MFNet rig that `obj` belongs to as .glb or .fbx (by the suffix).

    animation: bake the scene's frame range (or `frame_range`) when the rig has keyframes;
    otherwise, or when False, the current pose is written as a still. An existing file is
    replaced only with overwrite=True. The file is written beside the target and renamed
    onto it when complete. Raises export_plan.ExportError with a one-line message.
    """
    t0 = time.perf_counter()
    found = rig_of(obj)
    if found is None:
        raise plan.ExportError("select an MFNet head (its mesh or armature) to export")
    arm, mesh = found
    path = Path(bpy.path.abspath(str(filepath))).absolute()
    fmt = plan.format_for_path(path)
    if path.is_dir():
        raise plan.ExportError(f"{path} is a folder; give a file name ending in .glb or .fbx")
    if path.exists() and not overwrite:
        raise plan.ExportError(f"{path} exists; choose another name or allow overwriting")
    if not path.parent.is_dir():
        raise plan.ExportError(f"{path.parent} is not a folder")
    if "EDIT" in (arm.mode, mesh.mode):
        raise plan.ExportError("leave Edit Mode before exporting")
    op = _exporter(fmt)
    warnings: list[str] = []
    animated = bool(animation) and has_animation(arm, mesh)
    if animation and not animated:
        warnings.append("the rig has no keyframes: wrote the current pose")
    scene = context.scene
    start, end = frame_range or (scene.frame_start, scene.frame_end)
    if animated and end < start:
        raise plan.ExportError(f"frame range {start}-{end} is empty")
    values = RigValues(arm, mesh)
    try:
        bake = sample_rig(context, arm, mesh, list(range(start, end + 1)) if animated else None)
    except BaseException:
        values.restore(context)
        raise
    licence = str(arm.get(RIG_TAG, {}).get("licence", "")) if RIG_TAG in arm else ""
    keys = _key_plan(bake, fmt)
    partial = plan.partial_path(path)
    window = getattr(context, "window", None)
    shown = (window.scene, window.view_layer) if window is not None else None
    copy: _Copy | None = None
    renamed: list[tuple[object, str]] = []
    try:
        tmp = _temp_scene(context, bake)
        copy = _Copy(tmp, None, None)
        anim_name = _animation_name(arm, mesh, mesh.name)
        same = bpy.data.actions.get(anim_name)  # the file's animation takes its name
        renamed = _free_names([arm, mesh, arm.data, mesh.data] + ([same] if same else []))
        copy.arm = _copy_armature(context, tmp, arm, bake)
        copy.mesh = _copy_mesh(tmp, mesh, copy.arm)
        for id_block, name in zip(
            (copy.arm, copy.mesh, copy.arm.data, copy.mesh.data),
            [n for _, n in renamed[:4]],
            strict=True,
        ):
            id_block.name = name
        if animated:
            act = bpy.data.actions.new(anim_name)
            copy.actions.append(act)
            copy.arm.animation_data_create().action = act
            key = copy.mesh.data.shape_keys
            if key is not None:
                if hasattr(act, "slots"):  # 4.4+: one action, a slot for each
                    key.animation_data_create().action = act
                else:  # 3.4: the exporter merges the two into one animation
                    copy.actions.append(bpy.data.actions.new(f"{anim_name} shape keys"))
                    key.animation_data_create().action = copy.actions[-1]
        _write_pose(copy, bake, animated)
        _write_keys(copy, bake, keys, animated)
        ranges = plan.ranges_record(bake.slider_ranges)
        copy.mesh[plan.KEY_RANGES_PROP] = ranges  # FBX user property, glTF node extras
        copy.mesh.data[plan.KEY_RANGES_PROP] = ranges  # glTF mesh extras
        if fmt == "FBX":
            copy.mesh[plan.KEY_SCALES_PROP] = plan.scales_record(keys)
        if licence:
            copy.mesh["mfnet_licence"] = licence
        influences = _max_influences(copy.mesh, bake.bones)
        if fmt == "GLB" and influences > 4:
            warnings.append(
                f"some vertices have {influences} joint weights: the .glb carries them all "
                "(JOINTS_1/WEIGHTS_1); engines that read 4 renormalise the rest away"
            )
        if fmt == "GLB":
            options = _gltf_options(partial, animated, anim_name, influences, licence)
        else:
            options = _fbx_options(partial, animated)
        layer = tmp.view_layers[0]
        layer.objects.active = copy.arm
        with context.temp_override(scene=tmp, view_layer=layer):
            try:
                result = op(**_supported(op, options))
            except RuntimeError as e:  # the exporter's own error report
                reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise plan.ExportError(f"Blender's {fmt} exporter failed: {reason}") from e
        if "FINISHED" not in result or not partial.is_file():
            raise plan.ExportError(f"Blender's {fmt} exporter did not write {path.name}")
        os.replace(partial, path)
    finally:
        if window is not None and shown is not None:
            window.scene = shown[0]  # the glTF exporter shows the scene it exports
            window.view_layer = shown[1]
        _delete(copy)
        for id_block, name in renamed:
            id_block.name = name
        partial.unlink(missing_ok=True)
        values.restore(context)
    return ExportReport(
        path,
        fmt,
        (start, end) if animated else None,
        [k.name for k in keys],
        list(bake.bones),
        {k.name: [k.source, k.scale] for k in keys if not k.unchanged},
        time.perf_counter() - t0,
        warnings,
    )
