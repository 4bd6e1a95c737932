"""Add-on preferences: backend Python (auto-detect, Check = `mfnet doctor`), FLAME model
path, device, results folder, pose library."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from . import strings as S

ADDON_ID = __package__  # "mfnet" (legacy) or "bl_ext.<repo>.mfnet" (extension)

DEVICE_ITEMS = (
    ("auto", "Auto", "CUDA when the backend sees a GPU, else CPU"),
    ("cpu", "CPU", "Always run on the CPU"),
    ("cuda", "CUDA", "Run on the NVIDIA GPU (fails when the backend sees none)"),
)

# Last `mfnet doctor` answer, shown under the Check button (not saved).
doctor_lines: list[str] = []


class MFNET_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    backend_python: StringProperty(
        name="Backend Python",
        description=(
            "Python executable where mfnet_core is installed (pip install mfnet). Empty: "
            "MFNET_PYTHON, then python3/python on PATH"
        ),
        subtype="FILE_PATH",
        default="",
    )
    flame_model: StringProperty(
        name="FLAME Model",
        description="FLAME model file (.pkl). Empty: the backend's default (MFNET_FLAME_MODEL or its data folder)",
        subtype="FILE_PATH",
        default="",
    )
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="auto")
    output_folder: StringProperty(
        name="Results Folder",
        description="Where result folders are written. Empty: //mfnet_results beside a saved .blend, else ~/mfnet_results",
        subtype="DIR_PATH",
        default="",
    )
    pose_library: StringProperty(
        name="Pose Library",
        description="JSON file with named expression poses. Empty: mfnet/poses.json in Blender's config folder",
        subtype="FILE_PATH",
        default="",
    )
    pack_texture: BoolProperty(
        name="Pack Texture",
        description="Pack the baked texture into the .blend so the file stays complete when moved",
        default=True,
    )

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        row = col.row(align=True)
        row.prop(self, "backend_python")
        row.operator(S.OP_DETECT_BACKEND, text=S.LABEL_DETECT, icon="VIEWZOOM")
        row.operator(S.OP_CHECK_BACKEND, text=S.LABEL_CHECK, icon="CHECKMARK")
        if doctor_lines:
            box = col.box()
            for line in doctor_lines:
                icon = "ERROR" if line.startswith(("MISSING", "Error")) else "NONE"
                box.label(text=line, icon=icon)
        col.prop(self, "flame_model")
        col.prop(self, "device")
        col.prop(self, "output_folder")
        col.prop(self, "pose_library")
        col.prop(self, "pack_texture")


classes = (MFNET_AP_preferences,)


def _defaults() -> SimpleNamespace:
    return SimpleNamespace(
        backend_python="",
        flame_model="",
        device="auto",
        output_folder="",
        pose_library="",
        pack_texture=True,
    )


def get(context=None):
    """The add-on preferences; defaults when the add-on runs unregistered (scripts, batch)."""
    context = context or bpy.context
    addons = context.preferences.addons
    entry = addons.get(ADDON_ID)
    if entry is None:  # batch.py imports the package under another name: find the add-on
        entry = next(
            (a for a in addons.values() if a.module.split(".")[-1] in ("mfnet", "blender_addon")),
            None,
        )
    prefs = getattr(entry, "preferences", None) if entry else None
    return prefs if prefs is not None else _defaults()


def results_root(prefs) -> Path:
    """Folder new results go into."""
    if prefs.output_folder:
        return Path(bpy.path.abspath(prefs.output_folder))
    if bpy.data.filepath:
        return Path(bpy.path.abspath("//mfnet_results"))
    return Path(os.path.expanduser("~")) / "mfnet_results"


def pose_library_path(prefs) -> Path:
    if prefs.pose_library:
        return Path(bpy.path.abspath(prefs.pose_library))
    if ADDON_ID.startswith("bl_ext.") and hasattr(bpy.utils, "extension_path_user"):
        base = bpy.utils.extension_path_user(ADDON_ID, create=True)  # the extension's user folder
    else:
        base = bpy.utils.user_resource("CONFIG", path="mfnet", create=True)
    return Path(base) / "poses.json"
