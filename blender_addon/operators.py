"""Operators: Reconstruct Face (modal; blocking when run from scripts or headless),
Cancel, backend detection and `mfnet doctor`, importing a result folder; the scene and
window-manager properties they use."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path

import bpy
from bpy.props import (
    BoolProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from . import backend, builder, preferences
from . import strings as S
from .rigdata import ResultError

TEXTURE_ITEMS = (
    ("1024", "1K", "1024 x 1024 texture"),
    ("2048", "2K", "2048 x 2048 texture"),
    ("4096", "4K", "4096 x 4096 texture"),
)
DEVICE_ITEMS = (
    ("PREFS", "Default", "The device set in the add-on preferences"),
) + preferences.DEVICE_ITEMS
VIEWS = backend.VIEW_ORDER

_active_job: backend.BackendJob | None = None


def _cancel_active_job() -> None:
    global _active_job
    if _active_job is not None:
        _active_job.cancel(grace=3.0)
        _active_job = None


atexit.register(_cancel_active_job)


# --------------------------------------------------------------------------- properties


class MFNET_PG_settings(bpy.types.PropertyGroup):
    """Per-scene inputs of the Reconstruct Face panel."""

    left: PointerProperty(
        name="Left", type=bpy.types.Image, description="Photo of the face turned to its left"
    )
    front: PointerProperty(
        name="Front", type=bpy.types.Image, description="Photo of the face from the front"
    )
    right: PointerProperty(
        name="Right", type=bpy.types.Image, description="Photo of the face turned to its right"
    )
    texture_size: EnumProperty(name="Texture", items=TEXTURE_ITEMS, default="1024")
    expression_keys: IntProperty(
        name="Expression Keys",
        description="How many FLAME expression components become shape keys",
        default=50,
        min=1,
        max=300,
    )
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="PREFS")
    name: StringProperty(
        name="Name", description="Name of the new head (empty: from the photo)", default=""
    )
    expression_index: IntProperty(default=0)  # active row of the expressions list
    pose_name: StringProperty(name="Pose", default="")


class MFNET_PG_job(bpy.types.PropertyGroup):
    """State of the running reconstruction, shown in the panel (not saved)."""

    running: BoolProperty(default=False)
    cancel_requested: BoolProperty(default=False)
    stage: StringProperty(default="")
    message: StringProperty(default="")
    fraction: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    error: StringProperty(default="")
    info: StringProperty(default="")
    warnings: StringProperty(default="")


def _settings(context) -> MFNET_PG_settings:
    return context.scene.mfnet


def _job(context) -> MFNET_PG_job:
    return context.window_manager.mfnet_job


def _redraw(context, sidebar_only: bool = False) -> None:
    """Redraws the sidebars (cheap: progress ticks) or the whole 3D views and preferences."""
    wm = context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type not in ("VIEW_3D", "PREFERENCES"):
                continue
            if sidebar_only:
                for region in area.regions:
                    if region.type == "UI":
                        region.tag_redraw()
            else:
                area.tag_redraw()


def _status(context, text: str | None) -> None:
    ws = getattr(context, "workspace", None)
    if ws is not None:
        ws.status_text_set(text)


# --------------------------------------------------------------------------- helpers


def photo_path(image: bpy.types.Image, tmpdir: Path) -> str:
    """A file path the backend can read for this image (writes packed or generated images
    to tmpdir).

    The file name comes from the image's name and stored path, which a .blend can set to
    anything (`../x`, `/abs/path`): it goes through strings.safe_file_name, and the file
    is created new (never through an existing file or link) directly inside tmpdir.
    """
    path = bpy.path.abspath(image.filepath, library=image.library) if image.filepath else ""
    if path and os.path.isfile(path) and not image.is_dirty:
        return path
    suffix = Path(path).suffix.lower() if path else ""
    if image.packed_file is not None:
        out = _new_file_in(tmpdir, image.name, suffix if S.plain_suffix(suffix) else ".png")
        with open(out, "xb") as f:
            f.write(image.packed_file.data)
    else:
        out = _new_file_in(tmpdir, image.name, ".png")
        image.save_render(str(out))
    return str(out)


def _new_file_in(folder: Path, name: str, suffix: str) -> Path:
    """folder/<safe name><suffix>, numbered when taken; always directly inside folder."""
    stem = S.safe_file_name(name, default="photo")
    for n in range(1, 1000):
        candidate = folder / S.safe_file_name(stem if n == 1 else f"{stem}_{n}", suffix)
        if candidate.parent != folder:  # safe_file_name makes this impossible
            raise OSError(f"refusing to write outside {folder}: {candidate}")
        if not os.path.lexists(candidate):
            return candidate
    raise OSError(f"{folder}: no free file name for {stem!r}")


def result_folder(root: Path, name: str) -> Path:
    """A new folder for the backend's result inside root, named after the head (the
    panel's Name, which a .blend can set to anything, or the front photo's name)."""
    return backend.unique_folder(root, S.safe_file_name(name, default="head"))


def reconstruct_inputs(context, tmpdir: Path) -> tuple[list[str], list[str]]:
    s = _settings(context)
    photos = {}
    for view in VIEWS:
        img = getattr(s, view)
        if img is not None:
            photos[view] = photo_path(img, tmpdir)
    paths, views = backend.order_photos(photos)
    if not paths:
        raise backend.BackendError(S.MSG_NO_PHOTOS)
    return paths, views


def head_name(context, paths: list[str], views: list[str]) -> str:
    s = _settings(context)
    if s.name.strip():
        return s.name.strip()
    main = paths[views.index("front")] if "front" in views else paths[0]
    return Path(main).stem or "head"


def build_from_result(context, result_dir: str, name: str) -> builder.BuildReport:
    prefs = preferences.get(context)
    return builder.build_rig(
        result_dir, name, context=context, pack_texture=bool(prefs.pack_texture)
    )


# --------------------------------------------------------------------------- operators


class MFNET_OT_reconstruct(bpy.types.Operator):
    bl_idname = S.OP_RECONSTRUCT
    bl_label = S.LABEL_RECONSTRUCT
    bl_description = S.TIP_RECONSTRUCT
    bl_options = {"REGISTER"}

    _timer = None
    _job: backend.BackendJob | None = None
    _name = ""
    _start = 0.0

    @classmethod
    def poll(cls, context):
        return not _job(context).running

    def _start_job(self, context) -> None:
        global _active_job
        prefs = preferences.get(context)
        s = _settings(context)
        self._tmp = Path(tempfile.mkdtemp(prefix="mfnet-photos-"))
        paths, views = reconstruct_inputs(context, self._tmp)
        python = backend.find_backend_python(prefs.backend_python).path
        self._name = head_name(context, paths, views)
        root = preferences.results_root(prefs)
        root.mkdir(parents=True, exist_ok=True)
        out = result_folder(root, self._name)
        device = prefs.device if s.device == "PREFS" else s.device
        cmd = backend.reconstruct_command(
            python,
            paths,
            str(out),
            views=views,
            flame=bpy.path.abspath(prefs.flame_model) if prefs.flame_model else "",
            device=device,
            texture_size=int(s.texture_size),
            expressions=s.expression_keys,
        )
        self._job = backend.BackendJob(cmd, out)
        _active_job = self._job
        self._start = time.perf_counter()
        job = _job(context)
        job.running, job.cancel_requested = True, False
        job.stage, job.message, job.fraction, job.error, job.info = "starting", "", 0.0, "", ""
        job.warnings = ""

    def _start_failed(self, context, error: Exception) -> None:
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        job = _job(context)
        job.error, job.info, job.warnings = str(error), "", ""
        self.report({"ERROR"}, str(error))
        _redraw(context)

    def _update(self, context, st: backend.JobState) -> None:
        job = _job(context)
        if (job.stage, job.message, job.fraction) == (st.stage, st.message, st.fraction):
            return  # nothing new: no redraw, the UI stays light
        job.stage, job.message, job.fraction = st.stage, st.message, st.fraction
        pct = int(round(100 * st.fraction))
        _status(context, f"MFNet: {st.stage} {pct}%  {st.message}   (Esc: cancel)")
        _redraw(context, sidebar_only=True)

    def _finish(self, context) -> set[str]:
        global _active_job
        st = self._job.state
        job = _job(context)
        job.running = False
        _active_job = None
        shutil.rmtree(self._tmp, ignore_errors=True)
        _status(context, None)
        if st.error:
            job.error = (
                S.MSG_CANCELLED
                if self._job.cancelled
                else S.MSG_BACKEND_FAILED.format(error=st.error)
            )
            self.report({"WARNING"} if self._job.cancelled else {"ERROR"}, job.error)
            _redraw(context)
            return {"CANCELLED"}
        job.stage, job.message, job.fraction = "building rig", st.result_dir, 1.0
        try:
            rep = build_from_result(context, st.result_dir, self._name)
        except (ResultError, RuntimeError, OSError) as e:
            job.error = S.MSG_BUILD_FAILED.format(error=e)
            self.report({"ERROR"}, job.error)
            _redraw(context)
            return {"CANCELLED"}
        job.stage = "done"
        seconds = time.perf_counter() - self._start
        name, folder = rep.mesh.name, st.result_dir
        job.info = S.MSG_DONE.format(name=name, folder=Path(folder).name, seconds=seconds)
        job.warnings = "\n".join(rep.warnings)
        for w in rep.warnings:
            self.report({"WARNING"}, w)
        self.report({"INFO"}, S.MSG_DONE.format(name=name, folder=folder, seconds=seconds))
        _redraw(context)
        return {"FINISHED"}

    def execute(self, context):
        """Blocking run (scripts, `blender -b`): progress goes to the console."""
        try:
            self._start_job(context)
        except (backend.BackendError, OSError, RuntimeError) as e:
            self._start_failed(context, e)
            return {"CANCELLED"}

        def show(st):
            print(f"mfnet: {st.stage} {int(round(100 * st.fraction))}% {st.message}", flush=True)

        self._job.wait(on_progress=show, should_cancel=lambda: _job(context).cancel_requested)
        return self._finish(context)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        try:
            self._start_job(context)
        except (backend.BackendError, OSError, RuntimeError) as e:
            self._start_failed(context, e)
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        self._update(context, self._job.state)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        job = _job(context)
        if event.type == "ESC" or job.cancel_requested:
            job.stage, job.message = "cancelling", ""
            _redraw(context)
            self._job.cancel()
            return self._end(context)
        if event.type == "TIMER":
            st = self._job.poll()
            if st.done:
                return self._end(context)
            self._update(context, st)
        return {"PASS_THROUGH"}

    def _end(self, context):
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        return self._finish(context)

    def cancel(self, context):  # Blender calls this when the window closes mid-run
        if self._job is not None:
            self._job.cancel(grace=3.0)
        _job(context).running = False


class MFNET_OT_cancel(bpy.types.Operator):
    bl_idname = S.OP_CANCEL
    bl_label = S.LABEL_CANCEL
    bl_description = S.TIP_CANCEL

    @classmethod
    def poll(cls, context):
        return _job(context).running

    def execute(self, context):
        _job(context).cancel_requested = True
        return {"FINISHED"}


class MFNET_OT_detect_backend(bpy.types.Operator):
    bl_idname = S.OP_DETECT_BACKEND
    bl_label = S.LABEL_DETECT
    bl_description = S.TIP_DETECT

    def execute(self, context):
        prefs = preferences.get(context)
        try:
            found = backend.find_backend_python("")
        except backend.BackendError as e:
            preferences.doctor_lines[:] = [f"Error: {e}"]
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        if hasattr(prefs, "bl_rna"):
            prefs.backend_python = found.path
        preferences.doctor_lines[:] = [
            f"Found mfnet_core {found.version} in {found.path} ({found.source})"
        ]
        self.report({"INFO"}, preferences.doctor_lines[0])
        return {"FINISHED"}


class MFNET_OT_check_backend(bpy.types.Operator):
    bl_idname = S.OP_CHECK_BACKEND
    bl_label = S.LABEL_CHECK
    bl_description = S.TIP_CHECK

    def execute(self, context):
        prefs = preferences.get(context)
        try:
            found = backend.find_backend_python(prefs.backend_python)
            report = backend.doctor(
                found.path, bpy.path.abspath(prefs.flame_model) if prefs.flame_model else ""
            )
        except backend.BackendError as e:
            preferences.doctor_lines[:] = [f"Error: {e}"]
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        lines = [f"Backend: {found.path} (mfnet_core {found.version}, from {found.source})"]
        lines += backend.summarize_doctor(report)
        preferences.doctor_lines[:] = lines
        ok = report.get("ok", True)
        self.report(
            {"INFO"} if ok else {"WARNING"},
            "mfnet doctor: "
            + ("all required parts found" if ok else "something is missing (see preferences)"),
        )
        for line in lines:
            print(line)
        if not bpy.app.background:

            def draw(menu, _context):
                for line in lines:
                    menu.layout.label(text=line)

            context.window_manager.popup_menu(
                draw, title="mfnet doctor", icon="INFO" if ok else "ERROR"
            )
        return {"FINISHED"}


class MFNET_OT_import_result(bpy.types.Operator):
    bl_idname = S.OP_IMPORT_RESULT
    bl_label = S.LABEL_IMPORT_RESULT
    bl_description = S.TIP_IMPORT_RESULT
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Result Folder", subtype="DIR_PATH")
    filter_folder: BoolProperty(default=True, options={"HIDDEN"})
    name: StringProperty(name="Name", default="")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        folder = Path(bpy.path.abspath(self.directory))
        try:
            rep = build_from_result(context, str(folder), self.name or folder.name)
        except ResultError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        for w in rep.warnings:
            self.report({"WARNING"}, w)
        self.report({"INFO"}, f"Built {rep.mesh.name} in {rep.seconds:.2f} s")
        return {"FINISHED"}


VIEW_ENUM = tuple((v, S.VIEW_LABELS[v], f"The {v} photo") for v in VIEWS)


class MFNET_OT_pick_photo(bpy.types.Operator):
    bl_idname = S.OP_PICK_PHOTO
    bl_label = S.LABEL_PICK_PHOTO
    bl_description = S.TIP_PICK_PHOTO

    view: EnumProperty(name="View", items=VIEW_ENUM)
    filepath: StringProperty(subtype="FILE_PATH")
    filter_image: BoolProperty(default=True, options={"HIDDEN"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN"})

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        path = bpy.path.abspath(self.filepath)
        try:
            img = bpy.data.images.load(path, check_existing=True)
        except RuntimeError as e:
            self.report({"ERROR"}, f"{path}: {e}")
            return {"CANCELLED"}
        setattr(_settings(context), self.view, img)
        return {"FINISHED"}


class MFNET_OT_clear_photos(bpy.types.Operator):
    bl_idname = S.OP_CLEAR_PHOTOS
    bl_label = S.LABEL_CLEAR_PHOTO
    bl_description = S.TIP_CLEAR_PHOTO

    view: EnumProperty(
        name="View", items=(("ALL", "All", "All three slots"),) + VIEW_ENUM, default="ALL"
    )

    def execute(self, context):
        s = _settings(context)
        for view in VIEWS if self.view == "ALL" else (self.view,):
            setattr(s, view, None)
        return {"FINISHED"}


classes = (
    MFNET_PG_settings,
    MFNET_PG_job,
    MFNET_OT_reconstruct,
    MFNET_OT_cancel,
    MFNET_OT_detect_backend,
    MFNET_OT_check_backend,
    MFNET_OT_import_result,
    MFNET_OT_pick_photo,
    MFNET_OT_clear_photos,
)


def register_properties() -> None:
    bpy.types.Scene.mfnet = PointerProperty(type=MFNET_PG_settings)
    bpy.types.WindowManager.mfnet_job = PointerProperty(type=MFNET_PG_job)


def unregister_properties() -> None:
    _cancel_active_job()
    del bpy.types.WindowManager.mfnet_job
    del bpy.types.Scene.mfnet
