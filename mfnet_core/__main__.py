"""`python -m mfnet_core ...` is the same as the `mfnet` command (the Blender add-on uses it)."""

import sys

from mfnet_core.cli import main

sys.exit(main())
