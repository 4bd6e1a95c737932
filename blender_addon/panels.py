"""View3D sidebar tab "MFNet": three photo pickers with thumbnails, options, the
Reconstruct Face button, progress and Cancel, errors."""

from __future__ import annotations

import textwrap

import bpy

from . import strings as S


def _wrapped(layout, text: str, icon: str = "NONE", width: int = 42) -> None:
    lines = [ln for para in text.splitlines() for ln in (textwrap.wrap(para, width) or [""])]
    for i, line in enumerate(lines[:12]):
        layout.label(text=line, icon=icon if i == 0 else "BLANK1")


class MFNET_PT_main(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = S.CATEGORY
    bl_label = S.LABEL_PANEL_MAIN
    bl_order = 0

    def draw(self, context):
        layout = self.layout
        s = context.scene.mfnet
        job = context.window_manager.mfnet_job

        photos = layout.column()
        photos.enabled = not job.running
        grid = photos.grid_flow(row_major=True, columns=3, even_columns=True, align=True)
        for view in ("left", "front", "right"):
            col = grid.column(align=True)
            col.label(text=S.VIEW_LABELS[view])
            col.template_ID_preview(s, view, open="image.open", rows=2, cols=3, hide_buttons=True)
            row = col.row(align=True)
            row.template_ID(s, view, open="image.open")

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
                box.progress(factor=job.fraction, type="BAR", text=f"{stage} {int(round(job.fraction * 100))}%")
            else:
                row = box.row()
                row.enabled = False
                row.prop(job, "fraction", text=stage, slider=True)
            if job.message:
                _wrapped(box, job.message, "INFO")
            box.operator(S.OP_CANCEL, text=S.LABEL_CANCEL, icon="CANCEL")
        else:
            row = layout.row()
            row.scale_y = 1.6
            row.operator(S.OP_RECONSTRUCT, text=S.LABEL_RECONSTRUCT, icon="USER")
            layout.operator(S.OP_IMPORT_RESULT, text=S.LABEL_IMPORT_RESULT, icon="FILE_FOLDER")
        if job.error and not job.running:
            _wrapped(layout.box(), job.error, "ERROR")
        elif job.info and not job.running:
            _wrapped(layout.box(), job.info, "CHECKMARK")


classes = (MFNET_PT_main,)
