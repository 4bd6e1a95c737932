"""View3D sidebar tab "MFNet": three photo pickers with thumbnails, options, the
Reconstruct Face button, progress and Cancel, errors."""

from __future__ import annotations

import textwrap
import time

import bpy

from . import strings as S


def _chars(context) -> int:
    """About how many characters fit on a line of the sidebar."""
    scale = context.preferences.view.ui_scale
    return max(18, int(context.region.width / (8.5 * scale)) - 4) if context.region else 40


def _wrapped(layout, text: str, icon: str = "NONE", width: int = 40) -> None:
    lines = [ln for para in text.splitlines() for ln in (textwrap.wrap(para, width) or [""])]
    for i, line in enumerate(lines[:12]):
        layout.label(text=line, icon=icon if i == 0 else "BLANK1")


_last_draw = 0.0


def last_draw() -> float:
    """time.time() of the main panel's last draw (lets UI tests see that the tab is open)."""
    return _last_draw


class MFNET_PT_main(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = S.CATEGORY
    bl_label = S.LABEL_PANEL_MAIN
    bl_order = 0

    def draw(self, context):
        global _last_draw
        _last_draw = time.time()
        layout = self.layout
        s = context.scene.mfnet
        job = context.window_manager.mfnet_job

        photos = layout.column()
        photos.enabled = not job.running
        grid = photos.grid_flow(row_major=True, columns=3, even_columns=True, align=False)
        for view in ("left", "front", "right"):
            col = grid.column(align=True)
            col.label(text=S.VIEW_LABELS[view])
            img = getattr(s, view)
            if img is None:
                big = col.column(align=True)
                big.scale_y = 4.2
                big.operator(S.OP_PICK_PHOTO, text="", icon="IMAGE_DATA").view = view
                col.label(text="(empty)")
            else:
                col.template_icon(icon_value=layout.icon(img), scale=4.6)
                col.label(text=img.name)
            row = col.row(align=True)
            row.operator(S.OP_PICK_PHOTO, text="", icon="FILEBROWSER").view = view
            sub = row.row(align=True)
            sub.enabled = img is not None
            sub.operator(S.OP_CLEAR_PHOTOS, text="", icon="X").view = view

        opts = layout.column(align=True)
        opts.enabled = not job.running
        opts.row(align=True).prop(s, "texture_size", expand=True)
        opts.prop(s, "expression_keys")
        opts.prop(s, "device")
        opts.prop(s, "name")

        if job.running:
            box = layout.box()
            stage = job.stage or "starting"
            if bpy.app.version >= (4, 0, 0):
                box.progress(
                    factor=job.fraction,
                    type="BAR",
                    text=f"{stage} {int(round(job.fraction * 100))}%",
                )
            else:
                row = box.row()
                row.enabled = False
                row.prop(job, "fraction", text=stage, slider=True)
            if job.message:
                _wrapped(box, job.message, "INFO", _chars(context))
            box.operator(S.OP_CANCEL, text=S.LABEL_CANCEL, icon="CANCEL")
        else:
            row = layout.row()
            row.scale_y = 1.6
            row.operator(S.OP_RECONSTRUCT, text=S.LABEL_RECONSTRUCT, icon="USER")
            layout.operator(S.OP_IMPORT_RESULT, text=S.LABEL_IMPORT_RESULT, icon="FILE_FOLDER")
            layout.operator(S.OP_EXPORT_GAME, text=S.LABEL_EXPORT_GAME, icon="EXPORT")
        if job.error and not job.running:
            _wrapped(layout.box(), job.error, "ERROR", _chars(context))
        elif job.info and not job.running:
            _wrapped(layout.box(), job.info, "CHECKMARK", _chars(context))
            if job.warnings:
                box = layout.box()
                for w in job.warnings.splitlines():
                    _wrapped(box, w, "INFO", _chars(context))


classes = (MFNET_PT_main,)
