"""The Export for Games operator: a file browser for .glb or .fbx, then game_export."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from . import builder, game_export
from . import strings as S
from .export_plan import ExportError

FORMAT_ITEMS = (
    ("GLB", "glTF Binary (.glb)", "One file: mesh, skeleton, morph targets, texture, animation"),
    ("FBX", "FBX (.fbx)", "Blend-shape weights outside [0, 1] are split into [0, 1] keys"),
)


class MFNET_OT_export_game(bpy.types.Operator):
    bl_idname = S.OP_EXPORT_GAME
    bl_label = S.LABEL_EXPORT_GAME
    bl_description = S.TIP_EXPORT_GAME
    bl_options = {"REGISTER"}

    filepath: StringProperty(name="File Path", subtype="FILE_PATH")  # type: ignore[valid-type]
    filter_glob: StringProperty(default="*.glb;*.fbx", options={"HIDDEN"})  # type: ignore[valid-type]
    check_existing: BoolProperty(default=True, options={"HIDDEN"})  # type: ignore[valid-type]
    file_format: EnumProperty(name="Format", items=FORMAT_ITEMS, default="GLB")  # type: ignore[valid-type]
    animation: BoolProperty(  # type: ignore[valid-type]
        name="Animation",
        default=True,
        description="Bake the scene's frame range when the rig has keyframes (else the current pose)",
    )
    overwrite: BoolProperty(  # type: ignore[valid-type]
        name="Overwrite",
        default=False,
        options={"SKIP_SAVE"},
        description="Replace an existing file (the file browser sets this: picking a name there is the choice)",
    )

    @classmethod
    def poll(cls, context):
        return builder.rig_of(getattr(context, "active_object", None)) is not None

    def _suffix(self) -> str:
        return "." + self.file_format.lower()

    def check(self, context):
        """File browser: the file name's suffix follows the chosen format."""
        path = Path(self.filepath)
        if self.filepath and path.suffix.lower() != self._suffix():
            self.filepath = str(path.with_suffix(self._suffix()))
            return True
        return False

    def invoke(self, context, event):
        _arm, mesh = builder.rig_of(context.active_object)
        if not self.filepath:
            folder = Path(bpy.path.abspath("//")) if bpy.data.filepath else Path.home()
            self.filepath = str(folder / S.safe_file_name(mesh.name, self._suffix(), "head"))
        # the browser marks an existing name in red before the user confirms it
        self.overwrite = True
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        path = Path(bpy.path.abspath(self.filepath))
        if path.suffix.lower() not in (".glb", ".fbx"):
            path = path.with_name(path.name + self._suffix())
        try:
            rep = game_export.export_rig(
                context,
                context.active_object,
                path,
                animation=self.animation,
                overwrite=self.overwrite,
            )
        except (ExportError, OSError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        for w in rep.warnings:
            self.report({"WARNING"}, w)
        what = f"frames {rep.frames[0]}-{rep.frames[1]}" if rep.frames else "still"
        self.report({"INFO"}, S.MSG_EXPORTED.format(path=rep.path, what=what, seconds=rep.seconds))
        return {"FINISHED"}


classes = (MFNET_OT_export_game,)
