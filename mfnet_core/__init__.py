"""mfnet_core: photos in, a fitted FLAME head and a result folder out (no bpy)."""

__version__ = "0.1.0"
