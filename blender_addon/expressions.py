"""For animators: expression sliders, reset / fitted / keyframe all, named poses (JSON pose
library), and an importer that keyframes the rig from per-frame FLAME parameters."""

from __future__ import annotations

import json

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import builder, livelink, poses, preferences
from . import strings as S
from .keyframes import fcurves_of, write_keys
from .rigdata import (
    axis_angle_to_quaternion,
    continuous_quaternions,
    expression_slider_limit,
    is_expression_key,
    quaternion_to_axis_angle,
)

# --------------------------------------------------------------------------- rig access


def active_rig(context):
    """(armature, mesh) of the MFNet head the active object belongs to, or None."""
    return builder.rig_of(
        getattr(context, "active_object", None) or getattr(context, "object", None)
    )


def joint_bones(arm) -> list[str]:
    """The FLAME joint bones (animator-rotated) in FLAME's order (root, neck, jaw, eye_L, eye_R)."""
    tag = arm.get(builder.RIG_TAG)
    names = list(tag.get("joints", [])) if tag is not None else []
    if names and all(n in arm.pose.bones for n in names):
        return names
    return [b.name for b in arm.data.bones if b.use_deform]


def expression_keys(mesh) -> list:
    key = mesh.data.shape_keys
    return [kb for kb in key.key_blocks if is_expression_key(kb.name)] if key else []


def current_pose(arm, mesh) -> poses.Pose:
    expr = {kb.name: float(kb.value) for kb in expression_keys(mesh)}
    bones = {}
    for name in joint_bones(arm):
        q = np.array(arm.pose.bones[name].rotation_quaternion, dtype=np.float64)
        bones[name] = quaternion_to_axis_angle(q).tolist()
    return poses.Pose(expr, bones)


def apply_pose(arm, mesh, pose: poses.Pose, reset_missing: bool = True) -> list[str]:
    """Sets shape keys and bone rotations; returns names in the pose the rig lacks."""
    missing = []
    keys = mesh.data.shape_keys.key_blocks
    for kb in expression_keys(mesh):
        if kb.name in pose.expression:
            v = pose.expression[kb.name]
            if not kb.slider_min <= v <= kb.slider_max:  # widen, keeping bounded keys' [0, 1]
                lim = expression_slider_limit(np.array([v, kb.slider_max]))
                kb.slider_min, kb.slider_max = min(kb.slider_min, -lim), max(kb.slider_max, lim)
            kb.value = v
        elif reset_missing:
            kb.value = 0.0
    missing += [k for k in pose.expression if k not in keys]
    bones = joint_bones(arm)
    for name in bones:
        pb = arm.pose.bones[name]
        if name in pose.bones:
            pb.rotation_quaternion = [
                float(x) for x in axis_angle_to_quaternion(np.array(pose.bones[name]))
            ]
        elif reset_missing:
            pb.rotation_quaternion = (1.0, 0.0, 0.0, 0.0)
    missing += [b for b in pose.bones if b not in bones]
    return missing


def fitted_pose(arm) -> poses.Pose:
    return poses.Pose.from_json(
        json.loads(arm.get(builder.FITTED_TAG, '{"expression": {}, "bones": {}}')), "fitted pose"
    )


# --------------------------------------------------------------------------- keyframes


def keyframe_sequence(arm, mesh, seq: poses.Sequence, start_frame: int = 1) -> dict:
    """Keyframes the rig from a poses.Sequence: expression keys on the mesh's shape keys,
    joint rotations (as continuous quaternions) on the armature. Returns a summary."""
    frames = np.arange(seq.n_frames, dtype=np.float64) + start_frame
    summary = {
        "frames": seq.n_frames,
        "start": start_frame,
        "expression_keys": 0,
        "bones": [],
        "dropped_columns": 0,
    }
    keys = expression_keys(mesh)
    summary["named_keys"] = 0
    summary["unmatched_columns"] = []
    if seq.named:  # Live Link Face columns onto the rig's ARKit-named keys
        names = {kb.name for kb in keys}
        fcs = fcurves_of(mesh.data.shape_keys)
        for column, values in seq.named.items():
            targets = livelink.rig_keys_for(column, names)
            if not targets:
                summary["unmatched_columns"].append(column)
            for target in targets:
                path = f'key_blocks["{bpy.utils.escape_identifier(target)}"].value'
                write_keys(fcs, path, 0, frames, values, "Expression")
                summary["named_keys"] += 1
    if seq.expression is not None and keys:
        values, dropped = poses.fit_expression_columns(seq.expression, len(keys))
        summary["dropped_columns"] = dropped
        key = mesh.data.shape_keys
        fcs = fcurves_of(key)
        for k, kb in enumerate(keys):
            lim = expression_slider_limit(values[:, k])
            if lim > kb.slider_max:
                kb.slider_min, kb.slider_max = -lim, lim
            write_keys(
                fcs,
                f'key_blocks["{bpy.utils.escape_identifier(kb.name)}"].value',
                0,
                frames,
                values[:, k],
                "Expression",
            )
        summary["expression_keys"] = len(keys)
    rotations = seq.joint_rotations(joint_bones(arm))
    if rotations:
        fcs = fcurves_of(arm)
        for name, aa in rotations.items():
            quat = continuous_quaternions(axis_angle_to_quaternion(aa))
            path = f'pose.bones["{bpy.utils.escape_identifier(name)}"].rotation_quaternion'
            for i in range(4):
                write_keys(fcs, path, i, frames, quat[:, i], name)
            summary["bones"].append(name)
    return summary


# --------------------------------------------------------------------------- operators


class _RigOperator:
    @classmethod
    def poll(cls, context):
        return active_rig(context) is not None


class MFNET_OT_expressions_reset(_RigOperator, bpy.types.Operator):
    bl_idname = S.OP_EXPR_RESET
    bl_label = S.LABEL_RESET
    bl_description = S.TIP_RESET
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        arm, mesh = active_rig(context)
        apply_pose(arm, mesh, poses.Pose({}, {}))
        return {"FINISHED"}


class MFNET_OT_expressions_fitted(_RigOperator, bpy.types.Operator):
    bl_idname = S.OP_EXPR_FITTED
    bl_label = S.LABEL_FITTED
    bl_description = S.TIP_FITTED
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        arm, mesh = active_rig(context)
        apply_pose(arm, mesh, fitted_pose(arm))
        return {"FINISHED"}


_view_items_cache: list[tuple[str, str, str]] = []


def _view_items(self, context):
    """Enum items: the photos whose own expression the rig keeps (module list: Blender
    needs the strings kept alive)."""
    _view_items_cache.clear()
    rig = active_rig(context)
    views = {}
    if rig is not None:
        try:
            views = json.loads(rig[0].get(builder.FITTED_TAG, "{}")).get("views", {})
        except (ValueError, AttributeError):
            views = {}
    for name in views:
        _view_items_cache.append((name, name, f"The expression fitted to the {name} photo"))
    if not _view_items_cache:
        _view_items_cache.append(("", "(one expression for all photos)", ""))
    return _view_items_cache


class MFNET_OT_expressions_view(_RigOperator, bpy.types.Operator):
    bl_idname = S.OP_EXPR_VIEW
    bl_label = S.LABEL_VIEW
    bl_description = S.TIP_VIEW
    bl_options = {"REGISTER", "UNDO"}
    bl_property = "view"

    view: EnumProperty(name="Photo", items=_view_items)  # type: ignore[valid-type]

    def invoke(self, context, event):
        context.window_manager.invoke_search_popup(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        arm, mesh = active_rig(context)
        views = json.loads(arm.get(builder.FITTED_TAG, "{}")).get("views", {})
        if self.view not in views:
            self.report({"WARNING"}, "this rig keeps no per-photo expressions")
            return {"CANCELLED"}
        fitted = fitted_pose(arm)
        apply_pose(arm, mesh, poses.Pose(views[self.view], fitted.bones))
        return {"FINISHED"}


class MFNET_OT_expressions_keyframe(_RigOperator, bpy.types.Operator):
    bl_idname = S.OP_EXPR_KEYFRAME
    bl_label = S.LABEL_KEYFRAME
    bl_description = S.TIP_KEYFRAME
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        arm, mesh = active_rig(context)
        frame = context.scene.frame_current
        n = 0
        for kb in expression_keys(mesh):
            kb.keyframe_insert("value", frame=frame)
            n += 1
        for name in joint_bones(arm):
            arm.pose.bones[name].keyframe_insert("rotation_quaternion", frame=frame, group=name)
            n += 1
        self.report({"INFO"}, f"Keyed {n} channels at frame {frame}")
        return {"FINISHED"}


_pose_items_cache: list[tuple[str, str, str]] = []


def _pose_items(self, context):
    """Enum items from the pose library (kept alive in a module list, as Blender requires)."""
    _pose_items_cache.clear()
    try:
        lib = poses.load_library(preferences.pose_library_path(preferences.get(context)))
    except poses.PoseError:
        lib = {}
    for name in sorted(lib):
        _pose_items_cache.append((name, name, f"Apply pose {name!r}"))
    if not _pose_items_cache:
        _pose_items_cache.append(("", "(no saved poses)", ""))
    return _pose_items_cache


class MFNET_OT_pose_save(_RigOperator, bpy.types.Operator):
    bl_idname = S.OP_POSE_SAVE
    bl_label = S.LABEL_POSE_SAVE
    bl_description = S.TIP_POSE_SAVE

    name: StringProperty(name="Name", default="pose")
    filepath: StringProperty(
        name="Library", subtype="FILE_PATH", default="", description="Empty: the preference"
    )

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        name = self.name.strip()
        if not name:
            self.report({"ERROR"}, "Give the pose a name")
            return {"CANCELLED"}
        arm, mesh = active_rig(context)
        path = self.filepath or str(preferences.pose_library_path(preferences.get(context)))
        try:
            lib = poses.load_library(path)
            lib[name] = current_pose(arm, mesh)
            poses.save_library(path, lib)
        except (poses.PoseError, OSError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Saved pose {name!r} to {path}")
        return {"FINISHED"}


class MFNET_OT_pose_apply(_RigOperator, bpy.types.Operator):
    bl_idname = S.OP_POSE_APPLY
    bl_label = S.LABEL_POSE_APPLY
    bl_description = S.TIP_POSE_APPLY
    bl_options = {"REGISTER", "UNDO"}
    bl_property = "pose"

    pose: EnumProperty(name="Pose", items=_pose_items)
    name: StringProperty(
        name="Name", default="", description="Pose name (overrides the list; for scripts)"
    )
    filepath: StringProperty(
        name="Library", subtype="FILE_PATH", default="", description="Empty: the preference"
    )

    def invoke(self, context, event):
        context.window_manager.invoke_search_popup(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        arm, mesh = active_rig(context)
        path = self.filepath or str(preferences.pose_library_path(preferences.get(context)))
        name = self.name or self.pose
        try:
            lib = poses.load_library(path)
        except poses.PoseError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        if name not in lib:
            self.report({"ERROR"}, f"No pose {name!r} in {path}")
            return {"CANCELLED"}
        missing = apply_pose(arm, mesh, lib[name])
        if missing:
            self.report({"WARNING"}, f"Pose {name!r}: this rig has no {', '.join(missing[:5])}")
        return {"FINISHED"}


class MFNET_OT_pose_delete(bpy.types.Operator):
    bl_idname = S.OP_POSE_DELETE
    bl_label = S.LABEL_POSE_DELETE
    bl_description = S.TIP_POSE_DELETE
    bl_property = "pose"

    pose: EnumProperty(name="Pose", items=_pose_items)
    name: StringProperty(name="Name", default="")
    filepath: StringProperty(name="Library", subtype="FILE_PATH", default="")

    def invoke(self, context, event):
        context.window_manager.invoke_search_popup(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        path = self.filepath or str(preferences.pose_library_path(preferences.get(context)))
        name = self.name or self.pose
        try:
            lib = poses.load_library(path)
            if lib.pop(name, None) is None:
                self.report({"ERROR"}, f"No pose {name!r} in {path}")
                return {"CANCELLED"}
            poses.save_library(path, lib)
        except (poses.PoseError, OSError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        return {"FINISHED"}


class MFNET_OT_import_sequence(_RigOperator, bpy.types.Operator):
    bl_idname = S.OP_IMPORT_SEQUENCE
    bl_label = S.LABEL_IMPORT_SEQUENCE
    bl_description = S.TIP_IMPORT_SEQUENCE
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(subtype="FILE_PATH")
    filter_glob: StringProperty(default="*.npz;*.json;*.csv", options={"HIDDEN"})
    start_frame: IntProperty(name="Start Frame", default=1)
    use_fps: BoolProperty(name="Use the File's Frame Rate", default=True)
    set_range: BoolProperty(name="Set Scene Frame Range", default=True)

    def invoke(self, context, event):
        self.start_frame = context.scene.frame_start
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        arm, mesh = active_rig(context)
        try:
            seq = poses.load_sequence(bpy.path.abspath(self.filepath))
        except poses.PoseError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        summary = keyframe_sequence(arm, mesh, seq, self.start_frame)
        scene = context.scene
        if self.use_fps and seq.fps:
            scene.render.fps = max(1, int(round(seq.fps)))
            scene.render.fps_base = scene.render.fps / seq.fps
        if self.set_range:
            scene.frame_start = self.start_frame
            scene.frame_end = self.start_frame + seq.n_frames - 1
        notes = list(seq.notes)
        if summary["unmatched_columns"]:
            notes.append(
                f"{len(summary['unmatched_columns'])} columns have no shape key on this rig: "
                + ", ".join(summary["unmatched_columns"][:6])
            )
        for note in notes:
            self.report({"WARNING"}, note)
        if summary["dropped_columns"]:
            self.report(
                {"WARNING"},
                f"{summary['dropped_columns']} expression columns beyond the rig's keys were ignored",
            )
        self.report(
            {"INFO"},
            f"Keyed {seq.n_frames} frames ({summary['expression_keys'] + summary['named_keys']} "
            f"expression keys, bones {summary['bones']})",
        )
        return {"FINISHED"}


# --------------------------------------------------------------------------- UI


class MFNET_UL_expressions(bpy.types.UIList):
    """Expression shape keys as sliders (the pose-corrective keys are hidden: drivers own them)."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        layout.prop(item, "value", text=item.name, slider=True, emboss=True)

    def filter_items(self, context, data, propname):
        items = getattr(data, propname)
        flags = [self.bitflag_filter_item if is_expression_key(kb.name) else 0 for kb in items]
        if self.filter_name:
            pattern = self.filter_name.lower()
            flags = [
                f if pattern in kb.name.lower() else 0 for f, kb in zip(flags, items, strict=True)
            ]
        return flags, []


class MFNET_PT_expressions(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = S.CATEGORY
    bl_label = S.LABEL_PANEL_EXPRESSIONS
    bl_order = 1

    @classmethod
    def poll(cls, context):
        return active_rig(context) is not None

    def draw(self, context):
        layout = self.layout
        arm, mesh = active_rig(context)
        layout.label(text=f"{mesh.name} ({len(expression_keys(mesh))} keys)", icon="SHAPEKEY_DATA")
        row = layout.row(align=True)
        row.operator(S.OP_EXPR_RESET, icon="LOOP_BACK")
        row.operator(S.OP_EXPR_FITTED, icon="USER")
        row.operator(S.OP_EXPR_VIEW, icon="IMAGE_DATA")
        row.operator(S.OP_EXPR_KEYFRAME, icon="KEY_HLT")
        layout.template_list(
            "MFNET_UL_expressions",
            "",
            mesh.data.shape_keys,
            "key_blocks",
            context.scene.mfnet,
            "expression_index",
            rows=8,
        )


class MFNET_PT_animation(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = S.CATEGORY
    bl_label = S.LABEL_PANEL_ANIMATION
    bl_order = 2
    bl_options = {"DEFAULT_CLOSED"}

    @classmethod
    def poll(cls, context):
        return active_rig(context) is not None

    def draw(self, context):
        layout = self.layout
        row = layout.row(align=True)
        row.operator(S.OP_POSE_SAVE, icon="FILE_TICK")
        row.operator(S.OP_POSE_APPLY, icon="IMPORT")
        row.operator(S.OP_POSE_DELETE, text="", icon="TRASH")
        layout.operator(S.OP_IMPORT_SEQUENCE, icon="ANIM")


classes = (
    MFNET_OT_expressions_reset,
    MFNET_OT_expressions_fitted,
    MFNET_OT_expressions_view,
    MFNET_OT_expressions_keyframe,
    MFNET_OT_pose_save,
    MFNET_OT_pose_apply,
    MFNET_OT_pose_delete,
    MFNET_OT_import_sequence,
    MFNET_UL_expressions,
    MFNET_PT_expressions,
    MFNET_PT_animation,
)
