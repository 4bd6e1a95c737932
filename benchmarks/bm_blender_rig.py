"""Benchmark: building the rig for a FLAME-sized result in Blender.

A synthetic result folder with FLAME's counts (5023 vertices, 9976 faces, 100 expression
keys, 36 pose-corrective keys, 5 joints; tests/blender/make_fixture_result.py) is built
into a rig `--runs` times in a fresh scene; the median wall time of builder.build_rig()
(reading rig.npz to a finished, driven rig) is reported, with the time per stage.

    python benchmarks/bm_blender_rig.py            # runs in both Blenders, prints a table
    blender -b --factory-startup -P benchmarks/bm_blender_rig.py -- [--runs 5] [--work DIR]
    .venv-bpy/bin/python benchmarks/bm_blender_rig.py [--runs 5] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "blender"))

try:
    import bpy
except ImportError:
    bpy = None


def in_blender(argv: list[str]) -> dict:
    import numpy as np
    from make_fixture_result import make_result

    sys.path.insert(0, str(REPO))
    from blender_addon import builder

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", default="")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="mfnet-bm-"))
    result = work / "flame_sized"
    if not (result / "rig.npz").is_file():
        make_result(result, flame_sized=True, seed=0)
    times, stages = [], []
    for _ in range(args.runs):
        bpy.ops.wm.read_homefile(use_empty=True)
        t0 = time.perf_counter()
        rep = builder.build_rig(str(result), "bench")
        times.append(time.perf_counter() - t0)
        stages.append(rep.timings)
    me = rep.mesh.data
    keys = [kb.name for kb in me.shape_keys.key_blocks]
    # one evaluation of the posed, expressed mesh (drivers + armature), for reference
    rep.armature.pose.bones["jaw"].rotation_quaternion = (0.99, 0.14, 0.0, 0.0)
    t0 = time.perf_counter()
    bpy.context.view_layer.update()
    builder.evaluated_vertices(rep.mesh)
    eval_s = time.perf_counter() - t0
    return {
        "ok": True,
        "blender": bpy.app.version_string,
        "runs": args.runs,
        "seconds": times,
        "median_seconds": statistics.median(times),
        "stage_median_seconds": {k: statistics.median(s[k] for s in stages) for k in stages[0]},
        "evaluate_seconds": eval_s,
        "n_vertices": len(me.vertices),
        "n_faces": len(me.polygons),
        "n_expression_keys": sum(k.startswith("exp_") for k in keys),
        "n_corrective_keys": sum(k.startswith("pose_") for k in keys),
        "n_drivers": len(me.shape_keys.animation_data.drivers)
        + len(rep.armature.animation_data.drivers),
        "numpy": np.__version__,
    }


def driver() -> int:
    """Outside Blender: run this file in both Blenders and print a markdown table, in
    seconds and as ratios to the reference workload (`benchmarks/reference.py`, timed in
    this process before and after the Blender runs; Blender's Python lacks OpenCV)."""
    import harness
    from reference import Reference

    ref = Reference.start()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in harness.KINDS:
            if (kind == "binary" and not harness.blender_binary()) or (
                kind == "bpy" and not harness.bpy_python()
            ):
                print(f"{kind}: not installed, skipped", file=sys.stderr)
                continue
            res = harness.run(
                kind, Path(__file__), ["--runs", 5, "--work", Path(tmp) / "work"], Path(tmp) / kind
            )
            res.pop("_stdout", None)
            rows.append(res)
            print(json.dumps(res), file=sys.stderr)
    ref.finish()
    print(ref.summary())
    head = (
        "| Blender | median build | runs | read rig.npz | mesh + UVs + material | shape keys "
        "| armature + groups | drivers | one evaluation |"
    )
    for unit, scale in (("seconds", 1.0), ("ratio to the reference", 1.0 / ref.seconds)):
        print(f"\n{unit}:\n{head}\n|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            s = r["stage_median_seconds"]
            cells = [r["median_seconds"], s["read"], s["mesh"], s["shape_keys"]]
            cells += [s["armature"], s["drivers"], r["evaluate_seconds"]]
            v = [f"{x * scale:.3f}" for x in cells]
            print(f"| {r['blender']} | {v[0]} | {r['runs']} | " + " | ".join(v[1:]) + " |")
    return 0


if __name__ == "__main__":
    if bpy is None:
        sys.exit(driver())
    import bl_common

    bl_common.run(lambda: in_blender(bl_common.script_args()))
