"""F-Curves in bulk for Blender's legacy actions (< 4.4) and slotted actions (4.4+, the
only kind in 5.0): the sequence importer and the game export both key thousands of values,
which keyframe_insert would do one call at a time."""

from __future__ import annotations

import bpy
import numpy as np


def fcurves_of(id_block, action_name: str = ""):
    """The F-Curve collection of id_block's action, made when missing (named
    `action_name`, else "<id name>Action"). An action already assigned to another ID of a
    different type (5.0) gets a slot of its own for id_block."""
    ad = id_block.animation_data or id_block.animation_data_create()
    if ad.action is None:
        ad.action = bpy.data.actions.new(action_name or f"{id_block.name}Action")
    action = ad.action
    if not hasattr(action, "slots"):
        return action.fcurves
    from bpy_extras import anim_utils

    slot = ad.action_slot
    if slot is None:
        slot = next((s for s in action.slots if s.target_id_type == id_block.id_type), None)
        if slot is None:
            slot = action.slots.new(id_type=id_block.id_type, name=id_block.name)
        ad.action_slot = slot
    return anim_utils.action_ensure_channelbag_for_slot(action, slot).fcurves


def write_keys(
    fcurves, data_path: str, index: int, frames: np.ndarray, values: np.ndarray, group: str = ""
) -> None:
    """Replaces the keys of one F-Curve within [frames.min(), frames.max()] by (frames,
    values), in bulk (foreach_set)."""
    fc = fcurves.find(data_path, index=index)
    if fc is None:
        try:
            fc = fcurves.new(data_path, index=index, action_group=group)
        except TypeError:  # channel bags (4.4+) take no group here
            fc = fcurves.new(data_path, index=index)
    old = np.empty(2 * len(fc.keyframe_points), dtype=np.float32)
    fc.keyframe_points.foreach_get("co", old)
    old = old.reshape(-1, 2)
    keep = old[(old[:, 0] < frames.min()) | (old[:, 0] > frames.max())]
    co = np.concatenate([keep, np.stack([frames, values], 1).astype(np.float32)])
    co = co[np.argsort(co[:, 0], kind="stable")]
    fc.keyframe_points.clear()
    fc.keyframe_points.add(len(co))
    fc.keyframe_points.foreach_set("co", co.reshape(-1))
    fc.update()
