"""Inside Blender: the add-on's issue-14 checks that need bpy.

    blender -b --factory-startup -P tests/blender/check_safety.py -- WORKDIR RESULT_DIR
    .venv-bpy/bin/python tests/blender/check_safety.py WORKDIR RESULT_DIR

1. operators.photo_path on packed and generated images whose names (and stored paths) a
   .blend could have crafted: `../`, absolute paths, separators. Reports where each file
   landed and every file that appeared anywhere else under WORKDIR (or at the absolute
   targets).
2. operators.result_folder with crafted head names.
3. builder.build_rig on RESULT_DIR, whose joint names are longer than Blender's 63 bytes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bl_common  # noqa: E402
import bpy  # noqa: E402
import numpy as np  # noqa: E402
from make_fixture_result import write_png  # noqa: E402


def files_under(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file()}


def main() -> dict:
    work, result_dir = (Path(a) for a in bl_common.script_args()[:2])
    module = bl_common.install_addon(None)
    addon = bl_common.addon_module(module)
    operators, builder = addon.operators, addon.builder

    # ---- 1. packed and generated images with crafted names
    tmpdir = work / "a" / "b" / "tmp"
    tmpdir.mkdir(parents=True)
    absolute = Path(f"/tmp/mfnet-escape-{os.getpid()}")
    relative = Path(f"/tmp/mfnet-escape-rel-{os.getpid()}")
    names = [
        "../../escape",
        "../../../../../../../.." + str(relative),
        str(absolute),
        "..",
        "sub/dir/photo",
        "a_b",
        "a/b",
        "C:\\evil",
    ]
    source = work / "source.png"
    write_png(source, np.full((4, 4, 3), 128, np.uint8))
    before = files_under(work)
    photos = []
    for i, name in enumerate(names):
        if i % 2 == 0:  # packed: its bytes are written out
            img = bpy.data.images.load(str(source))
            img.pack()
            img.filepath_raw = "//../../stored/path/../evil.png"
        else:  # generated: saved with save_render
            img = bpy.data.images.new("generated", 4, 4)
        img.name = name
        photos.append(
            {
                "name": img.name,
                "packed": img.packed_file is not None,
                "path": operators.photo_path(img, tmpdir),
            }
        )
    after = files_under(work)
    landed = [Path(p["path"]) for p in photos]
    report: dict = {
        "photos": photos,
        "all_inside": all(p.parent == tmpdir and p.is_file() for p in landed),
        "distinct": len(set(landed)) == len(landed),
        "outside": sorted(f for f in after - before if Path(f).parent != tmpdir),
        "absolute_targets": [
            str(p) for p in (absolute, relative) for p in (p, p.with_suffix(".png")) if p.exists()
        ],
        "n_packed": sum(p["packed"] for p in photos),
    }

    # ---- 2. result folders named after crafted head names
    root = work / "results"
    root.mkdir()
    folders = [
        operators.result_folder(root, n) for n in ("../../evil", "/tmp/evil", "..", "x/y", "")
    ]
    report["result_folders"] = [str(f) for f in folders]
    report["result_folders_inside"] = all(f.parent == root for f in folders)

    # ---- 3. a rig whose joint names do not fit Blender's names
    rep = builder.build_rig(str(result_dir), "longnames")
    arm, mesh = rep.armature, rep.mesh
    key = mesh.data.shape_keys
    drivers = list(key.animation_data.drivers) + list(arm.animation_data.drivers)
    report["bones"] = [b.name for b in arm.data.bones]
    report["groups"] = [g.name for g in mesh.vertex_groups]
    report["correctives"] = [k.name for k in key.key_blocks if k.name.startswith("pose_")]
    report["joints"] = list(arm[builder.RIG_TAG]["joints"])
    report["drivers"] = len(drivers)
    report["drivers_valid"] = all(d.driver.is_valid for d in drivers)
    report["warnings"] = rep.warnings
    return report


bl_common.run(main)
