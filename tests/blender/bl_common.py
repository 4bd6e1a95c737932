"""Helpers for the scripts that tests run inside Blender (binary or bpy module).

Each script prints exactly one line `MFNET_RESULT {json}` that the pytest side parses.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import bpy

RESULT_MARK = "MFNET_RESULT "
REPO = Path(__file__).resolve().parents[2]
ADDON_ID = "mfnet"


def script_args() -> list[str]:
    """Arguments after `--` (blender binary) or after the script (bpy module)."""
    argv = sys.argv
    if "--" in argv:
        return argv[argv.index("--") + 1 :]
    return argv[1:]


def emit(obj: dict) -> None:
    print(RESULT_MARK + json.dumps(obj, default=_default), flush=True)


def _default(o):
    try:
        import numpy as np

        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
    except ImportError:
        pass
    return str(o)


def run(main) -> None:
    """Runs main() -> dict, emits it (or the exception), and exits with 0/1."""
    try:
        out = main()
        out.setdefault("ok", True)
    except Exception as e:  # report everything to pytest
        out = {
            "ok": False,
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
        }
    out["blender"] = bpy.app.version_string
    emit(out)
    sys.stdout.flush()
    if bpy.app.background and not _is_module():
        # a -P script: leave Blender with our status
        sys.exit(0 if out.get("ok") else 1)


def _is_module() -> bool:
    return not bpy.app.binary_path or "python" in Path(bpy.app.binary_path).name.lower()


def install_addon(zip_path: str | None) -> str:
    """Installs and enables the add-on; returns its module name.

    zip_path None: import the source tree's blender_addon package directly (development).
    Blender >= 4.2 installs the zip as an extension (repo user_default); older Blenders as a
    legacy add-on.
    """
    if zip_path is None:
        sys.path.insert(0, str(REPO))
        import blender_addon

        blender_addon.register()
        return "blender_addon"
    if bpy.app.version >= (4, 2, 0):
        res = bpy.ops.extensions.package_install_files(
            filepath=zip_path, repo="user_default", enable_on_install=True
        )
        if "FINISHED" not in res:
            raise RuntimeError(f"extension install failed: {res}")
        module = f"bl_ext.user_default.{ADDON_ID}"
    else:
        bpy.ops.preferences.addon_install(filepath=zip_path, overwrite=True)
        module = ADDON_ID
        bpy.ops.preferences.addon_enable(module=module)
    if module not in bpy.context.preferences.addons:
        raise RuntimeError(f"add-on {module} is not enabled after install")
    return module


def addon_module(module: str):
    import importlib

    return importlib.import_module(module)
