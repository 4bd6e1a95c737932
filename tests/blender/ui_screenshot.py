"""In the real Blender window (under Xvfb): open the MFNet sidebar tab, run Reconstruct Face
modally on a photo, cancel a first run with Esc and a second with the Cancel button, let a
third one finish, and take a screenshot of the result.

    xvfb-run -a -s "-screen 0 1600x1000x24" blender --factory-startup --enable-event-simulate \
        -P tests/blender/ui_screenshot.py -- PHOTO OUT.png WORKDIR [--zip ZIP]

Blender 3.4 has no Python access to the sidebar's active tab, so the script sends
Ctrl+Wheel over the sidebar (as a user would) until the MFNet panel draws. While the
backend runs, a 0.1 s timer measures that the UI stays responsive (gaps between ticks).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bl_common  # noqa: E402
import bpy  # noqa: E402

args = None
addon = None
out: dict = {"steps": []}
state: dict = {
    "ticks": [],
    "stages": set(),
    "t0": 0.0,
    "phase": "setup",
    "wheel": 0,
    "shots": [],
    "cancel_methods": ["esc", "button"],
}


def view3d():
    win = bpy.context.window_manager.windows[0]
    area = next(a for a in win.screen.areas if a.type == "VIEW_3D")
    region = next(r for r in area.regions if r.type == "WINDOW")
    sidebar = next(r for r in area.regions if r.type == "UI")
    return win, area, region, sidebar


def finish(error: str | None = None) -> None:
    out["ok"] = error is None
    if error:
        out["error"] = error
    out["stages"] = sorted(state["stages"])
    out["blender"] = bpy.app.version_string
    bl_common.emit(out)
    sys.stdout.flush()
    win = bpy.context.window_manager.windows[0]
    with bpy.context.temp_override(window=win):
        bpy.ops.wm.quit_blender()


def screenshot(path: Path) -> None:
    win, area, region, sidebar = view3d()
    with bpy.context.temp_override(window=win, area=area, region=region):
        bpy.ops.screen.screenshot(filepath=str(path))
    state["shots"].append(str(path))


def step():
    """The state machine, run by a timer every 0.1 s (returns the next delay or None)."""
    try:
        return _step()
    except Exception as e:
        finish(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        return None


def _open_tab() -> bool:
    """Click down the sidebar's tab strip until the MFNet panel has drawn; True when it shows."""
    win, area, region, sidebar = view3d()
    if "active_panel_category" in bpy.types.Region.bl_rna.properties:  # Blender 4.x+
        sidebar.active_panel_category = "MFNet"
        return True
    if addon.panels.last_draw() > state.get("click_t", 0.0) > 0.0:
        return True
    # tabs run down the right edge of the sidebar region, from its top
    x = sidebar.x + sidebar.width - 10
    y = sidebar.y + sidebar.height - 12 - 14 * state["wheel"]
    win.event_simulate(type="MOUSEMOVE", value="NOTHING", x=x, y=y)
    win.event_simulate(type="LEFTMOUSE", value="PRESS", x=x, y=y)
    win.event_simulate(type="LEFTMOUSE", value="RELEASE", x=x, y=y)
    state["wheel"] += 1
    state["click_t"] = time.time()
    sidebar.tag_redraw()
    return False


def _step():
    now = time.time()
    job = bpy.context.window_manager.mfnet_job
    phase = state["phase"]
    if phase == "setup":
        win, area, region, sidebar = view3d()
        # close the splash screen like a user: Esc with the mouse over the viewport
        cx, cy = region.x + region.width // 2, region.y + region.height // 2
        win.event_simulate(type="MOUSEMOVE", value="NOTHING", x=cx, y=cy)
        win.event_simulate(type="ESC", value="PRESS", x=cx, y=cy)
        win.event_simulate(type="ESC", value="RELEASE", x=cx, y=cy)
        area.spaces.active.show_region_ui = True
        state["phase"] = "scene"
        return 0.5
    if phase == "scene":
        win, area, region, sidebar = view3d()
        for ob in list(bpy.data.objects):
            if ob.type == "MESH":
                bpy.data.objects.remove(ob)
        s = bpy.context.scene.mfnet
        s.front = bpy.data.images.load(args.photo)
        s.expression_keys = 20
        prefs = addon.preferences.get(bpy.context)
        prefs.output_folder = str(Path(args.workdir) / "results")
        prefs.device = "cpu"
        state["phase"] = "tab"
        return 0.5
    if phase == "tab":
        if _open_tab():
            out["tab_opened_after_clicks"] = state["wheel"]
            state["phase"] = "start_cancel_run"
            return 0.3
        if state["wheel"] > 40:
            screenshot(Path(args.workdir) / "no_tab.png")
            raise RuntimeError("the MFNet sidebar tab never showed")
        return 0.3
    if phase in ("start_cancel_run", "start_run"):
        win, area, region, sidebar = view3d()
        with bpy.context.temp_override(window=win, area=area, region=sidebar):
            res = bpy.ops.mfnet.reconstruct("INVOKE_DEFAULT")
        if phase == "start_cancel_run":
            state["cancel_method"] = state["cancel_methods"].pop(0)
            out["steps"].append({f"{phase}_{state['cancel_method']}": list(res)})
        else:
            out["steps"].append({phase: list(res)})
        state["ticks"] = [now]
        state["t0"] = now
        state["phase"] = "cancel_wait" if phase == "start_cancel_run" else "run_wait"
        return 0.1
    if phase == "cancel_wait":
        state["ticks"].append(now)
        state["stages"].add(job.stage)
        if job.running and job.stage in ("fit", "landmarks") and now - state["t0"] > 1.0:
            method = state["cancel_method"]
            if method == "button":
                screenshot(Path(args.workdir) / "progress.png")
                out["progress_seen"] = {
                    "stage": job.stage,
                    "fraction": job.fraction,
                    "message": job.message,
                }
                bpy.ops.mfnet.cancel()  # what the panel's Cancel button runs
            else:  # Esc, typed with the mouse over the viewport
                win, area, region, sidebar = view3d()
                cx, cy = region.x + region.width // 2, region.y + region.height // 2
                win.event_simulate(type="MOUSEMOVE", value="NOTHING", x=cx, y=cy)
                win.event_simulate(type="ESC", value="PRESS", x=cx, y=cy)
                win.event_simulate(type="ESC", value="RELEASE", x=cx, y=cy)
            state["phase"] = "cancelled"
            state["cancel_t"] = now
            state["backend_job"] = addon.operators._active_job  # its exit code, once ended
        elif not job.running:
            raise RuntimeError(f"a run ended before it could be cancelled: {job.error or job.info}")
        return 0.1
    if phase == "cancelled":
        if job.running:
            if now - state["cancel_t"] > 60:  # hang protection only (cancel takes ~1 s)
                raise RuntimeError(f"cancel ({state['cancel_method']}) did not end the run in 60 s")
            return 0.1
        results = Path(args.workdir) / "results"
        backend_job = state.pop("backend_job", None)
        out[f"after_cancel_{state['cancel_method']}"] = {
            "error": job.error,
            "returncode": backend_job.proc.returncode if backend_job is not None else None,
            "seconds": now - state["cancel_t"],
            "result_folders": sorted(p.name for p in results.iterdir()) if results.exists() else [],
        }
        state["phase"] = "start_cancel_run" if state["cancel_methods"] else "start_run"
        return 0.3
    if phase == "run_wait":
        state["ticks"].append(now)
        state["stages"].add(job.stage)
        if job.running:
            if now - state["t0"] > 400:
                raise RuntimeError("the run did not finish in 400 s")
            return 0.1
        gaps = [b - a for a, b in zip(state["ticks"], state["ticks"][1:], strict=False)]
        out["responsive"] = {
            "ticks": len(gaps),
            "max_gap_s": max(gaps) if gaps else None,
            "run_s": now - state["t0"],
        }
        out["after_run"] = {"error": job.error, "info": job.info}
        if job.error:
            raise RuntimeError(f"the run failed: {job.error}")
        win, area, region, sidebar = view3d()
        space = area.spaces.active
        space.shading.type = "SOLID"
        space.shading.color_type = "TEXTURE"
        space.overlay.show_floor = True
        mesh = next(o for o in bpy.data.objects if o.type == "MESH")
        out["mesh"] = mesh.name
        arm = mesh.parent
        for o in bpy.context.view_layer.objects:
            o.select_set(o == mesh)
        bpy.context.view_layer.objects.active = arm
        with bpy.context.temp_override(window=win, area=area, region=region):
            bpy.ops.view3d.view_axis(type="FRONT")
            bpy.ops.view3d.view_selected()
        space.region_3d.view_distance *= 1.25
        # a touch of rotation so the rig reads as 3D
        from mathutils import Euler

        space.region_3d.view_rotation = Euler((1.45, 0.0, 0.45)).to_quaternion()
        state["phase"] = "shoot"
        return 1.0
    if phase == "shoot":
        screenshot(Path(args.out))
        out["screenshot"] = args.out
        out["shots"] = state["shots"]
        finish()
        return None
    raise RuntimeError(f"unknown phase {phase}")


def main():
    global args, addon
    ap = argparse.ArgumentParser()
    ap.add_argument("photo")
    ap.add_argument("out")
    ap.add_argument("workdir")
    ap.add_argument("--zip", default=None)
    args = ap.parse_args(bl_common.script_args())
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    module = bl_common.install_addon(args.zip)
    addon = bl_common.addon_module(module)
    out["module"] = module
    bpy.app.timers.register(step, first_interval=1.0)


try:
    main()
except Exception as e:
    out["ok"] = False
    out["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    bl_common.emit(out)
    sys.exit(1)
