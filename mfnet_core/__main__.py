"""`python -m mfnet_core ...` is the same as the `mfnet` command (the Blender add-on uses it)."""

from mfnet_core.cli import entry

entry()
