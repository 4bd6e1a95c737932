"""Sampling the rig for Export for Games (bpy): what Blender shows, frame by frame.

Why sample instead of converting drivers: the rig's motion comes from keyframes, drivers
(pose correctives, DRV- keys, the MCH- pivots' locations) and constraints a user may add;
evaluating the depsgraph at each frame captures all of it as the viewport shows it. Each
exported bone's pose matrix then becomes keys on a copy without the MCH- helpers
(local_transforms), each shape key's evaluated value a key of its own. The scene's frame
and any un-keyed tweak on an animated channel are put back (RigValues).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mathutils import Matrix

from . import export_plan as plan
from .rigdata import continuous_quaternions


@dataclass
class Bake:
    """The rig as Blender evaluates it: T frames, K shape keys (basis excluded), B bones.

    key_values (T,K); bone_matrices (T,B,4,4) armature-space pose matrices; object_matrices
    (T,4,4) the armature object's world matrix; parents (B,) index into bones or -1."""

    frames: np.ndarray
    key_names: list[str]
    key_values: np.ndarray
    bones: list[str]
    parents: list[int]
    bone_matrices: np.ndarray
    object_matrices: np.ndarray
    slider_ranges: dict[str, tuple[float, float]]


# --------------------------------------------------------------------------- sampling


def has_animation(arm, mesh) -> bool:
    """True when the rig has keyframes (an action or NLA strips on the armature object or
    on the shape keys); drivers alone are not animation."""
    ids = [arm, mesh.data.shape_keys] if mesh.data.shape_keys else [arm]
    for id_block in ids:
        ad = id_block.animation_data
        if ad is not None and (ad.action is not None or len(ad.nla_tracks)):
            return True
    return False


def export_bones(arm) -> tuple[list[str], list[int]]:
    """The bones the file gets (all but MCH- helpers), parents first, and each one's
    nearest exported ancestor (-1 for none)."""
    names: list[str] = []
    for b in arm.data.bones:
        if not plan.is_helper_bone(b.name):
            names.append(b.name)
    parents = []
    for name in names:
        p = arm.data.bones[name].parent
        while p is not None and plan.is_helper_bone(p.name):
            p = p.parent
        parents.append(names.index(p.name) if p is not None else -1)
    return names, parents


class RigValues:
    """The values that frame changes overwrite (keyed bone transforms, shape-key values,
    the armature object's transform), put back after sampling: an un-keyed tweak on an
    animated channel survives the export."""

    def __init__(self, arm, mesh) -> None:
        self.arm, self.mesh = arm, mesh
        self.bones = {
            pb.name: (
                pb.location.copy(),
                pb.rotation_quaternion.copy(),
                pb.rotation_euler.copy(),
                tuple(pb.rotation_axis_angle),
                pb.scale.copy(),
            )
            for pb in arm.pose.bones
        }
        key = mesh.data.shape_keys
        self.keys = {kb.name: kb.value for kb in key.key_blocks} if key else {}
        self.obj = (
            arm.location.copy(),
            arm.rotation_quaternion.copy(),
            arm.rotation_euler.copy(),
            tuple(arm.rotation_axis_angle),
            arm.scale.copy(),
        )

    def restore(self, context) -> None:
        """Puts the values back, lets the depsgraph run the animation update that the frame
        and scene changes left pending (it writes keyed values over the originals), and
        puts them back once more."""
        for _ in range(2):
            self._put_back()
            context.view_layer.update()

    def _put_back(self) -> None:
        for name, (loc, quat, eul, aa, scale) in self.bones.items():
            pb = self.arm.pose.bones.get(name)
            if pb is None:
                continue
            pb.location, pb.rotation_quaternion, pb.rotation_euler = loc, quat, eul
            pb.rotation_axis_angle, pb.scale = aa, scale
        key = self.mesh.data.shape_keys
        for name, value in self.keys.items():
            if key and name in key.key_blocks:
                key.key_blocks[name].value = value
        loc, quat, eul, aa, scale = self.obj
        self.arm.location, self.arm.rotation_quaternion, self.arm.rotation_euler = loc, quat, eul
        self.arm.rotation_axis_angle, self.arm.scale = aa, scale


def sample_rig(context, arm, mesh, frames: list[int] | None) -> Bake:
    """Evaluates the rig at each frame (None: as it is now, without changing the frame)
    and returns what it shows. The scene's frame is put back (the rig's un-keyed values:
    RigValues)."""
    key = mesh.data.shape_keys
    if key is not None and not key.use_relative:
        raise plan.ExportError(f"{mesh.name}: absolute shape keys cannot be exported")
    blocks = list(key.key_blocks) if key is not None else []
    basis = key.reference_key if key is not None else None
    key_names = [kb.name for kb in blocks if kb != basis]
    muted = np.array([kb.mute for kb in blocks if kb != basis], dtype=bool)
    bones, parents = export_bones(arm)
    scene = context.scene
    saved = (scene.frame_current, scene.frame_subframe)
    todo = frames if frames is not None else [scene.frame_current]
    k_vals = np.zeros((len(todo), len(key_names)))
    b_mats = np.zeros((len(todo), len(bones), 4, 4))
    o_mats = np.zeros((len(todo), 4, 4))
    try:
        for t, frame in enumerate(todo):
            if frames is not None:
                scene.frame_set(int(frame))
            dg = context.evaluated_depsgraph_get()
            me_eval = mesh.evaluated_get(dg)
            arm_eval = arm.evaluated_get(dg)
            ev_key = me_eval.data.shape_keys
            if ev_key is not None:
                k_vals[t] = [ev_key.key_blocks[n].value for n in key_names]
            for b, name in enumerate(bones):
                b_mats[t, b] = np.array(arm_eval.pose.bones[name].matrix)
            o_mats[t] = np.array(arm_eval.matrix_world)
    finally:
        if frames is not None:
            scene.frame_set(saved[0], subframe=saved[1])
    k_vals[:, muted] = 0.0  # a muted key adds nothing, whatever its value
    ranges = {kb.name: (kb.slider_min, kb.slider_max) for kb in blocks if kb != basis}
    return Bake(
        np.asarray(todo, dtype=np.float64),
        key_names,
        k_vals,
        bones,
        parents,
        b_mats,
        o_mats,
        ranges,
    )


def local_transforms(bake: Bake, rest: np.ndarray) -> np.ndarray:
    """(T,B,4,4) each exported bone's matrix_basis that gives the sampled pose matrix under
    its exported parent: rest (B,4,4) are the bones' matrix_local. For a bone with full
    inheritance, pose = pose_parent @ rest_parent^-1 @ rest @ basis, so
    basis = rest^-1 @ rest_parent @ pose_parent^-1 @ pose."""
    out = np.empty_like(bake.bone_matrices)
    rest_inv = np.linalg.inv(rest)
    for b, p in enumerate(bake.parents):
        pose = bake.bone_matrices[:, b]
        if p < 0:
            out[:, b] = rest_inv[b] @ pose
        else:
            out[:, b] = rest_inv[b] @ rest[p] @ np.linalg.inv(bake.bone_matrices[:, p]) @ pose
    return out


def decompose(mats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T,4,4) -> location (T,3), sign-continuous quaternions (T,4), scale (T,3)."""
    locs, quats, scales = [], [], []
    for m in mats:
        loc, quat, scale = Matrix(m.tolist()).decompose()
        locs.append(tuple(loc))
        quats.append(tuple(quat))
        scales.append(tuple(scale))
    return np.array(locs), continuous_quaternions(np.array(quats)), np.array(scales)
