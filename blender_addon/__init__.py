"""MFNet Face: photos -> fitted, rigged and textured FLAME head, in Blender.

One package that installs as a Blender extension (blender_manifest.toml, Blender 4.2+) and
as a legacy add-on (bl_info, Blender 3.4 to 4.1). It never imports torch or mfnet_core: it
runs the backend (`<python> -m mfnet_core reconstruct ...`) as a child process and builds
the rig from the result folder (docs/RESULT_FOLDER.md).

The bpy-free modules (rigdata, drivers_math, poses, backend, strings) import without
Blender, for unit tests.
"""

# Read by legacy Blender (3.4 - 4.1) without running this file; the version is stamped from
# pyproject.toml by build.py (and checked there).
bl_info = {
    "name": "MFNet Face",
    "author": "mfnet contributors",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "View3D > Sidebar > MFNet",
    "description": "Photos to a rigged, textured FLAME head with expression keys",
    "category": "Rigging",
}

try:
    import bpy
except ImportError:  # imported outside Blender (unit tests of the bpy-free modules)
    bpy = None

if bpy is not None:
    from . import builder, export_ops, expressions, operators, panels, preferences

    _modules = (preferences, operators, expressions, export_ops, panels)
    classes = tuple(cls for m in _modules for cls in m.classes)

    def register() -> None:
        for cls in classes:
            bpy.utils.register_class(cls)
        for m in _modules:
            if hasattr(m, "register_properties"):
                m.register_properties()

    def unregister() -> None:
        for m in reversed(_modules):
            if hasattr(m, "unregister_properties"):
                m.unregister_properties()
        for cls in reversed(classes):
            bpy.utils.unregister_class(cls)

    __all__ = ["builder", "classes", "register", "unregister"]
