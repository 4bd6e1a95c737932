"""Inside Blender: Export for Games, round trip. Builds the rig from a result folder, keys
an animation (expression keys, one of them on a [-1, 2] slider at 1.6 and -0.5, the jaw
bone driving DRV-jawOpen, neck, eye and root bones, the armature object moving), exports
.glb and .fbx with the operator, checks that the user's rig and scene are exactly as
before, then imports each file into an empty scene and compares the evaluated mesh with
the original rig's at several frames.

    blender -b --factory-startup -P tests/blender/check_game_export.py -- RESULT_DIR WORKDIR [--zip ZIP]

Vertices are matched through a second UV map written before the export, whose u is the
vertex index (exact in float32 below 2^24): glTF splits vertices at UV seams, and both
importers may reorder them.

Blender 3.4's glTF importer (Debian's build) calls numpy's `np.bool`, gone since numpy
1.24: this script, and only this script, sets `numpy.bool = bool` before importing a .glb
in Blenders older than 3.6 (the add-on never imports glTF, so it ships no such shim).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bl_common  # noqa: E402
import bpy  # noqa: E402
import numpy as np  # noqa: E402

FRAMES = (1, 3, 5, 8, 10, 12)  # compared frames; the animation runs 1-12
# The take starts at time 0: Blender's FBX importer puts that on frame 1 (its anim_offset),
# its glTF importer on frame 0.
FIRST_FRAME = {"fbx": 1, "glb": 0}
RANGES_PROP = "mfnet_key_ranges"
STILL_FRAME = 5  # the pose exported without animation
ID_UV = "mfnet_vertex_id"
WIDE_KEY = "mouthSmile_L"  # its slider is widened to [-1, 2] and keyed beyond [0, 1]


def world_vertices(obj) -> np.ndarray:
    dg = bpy.context.evaluated_depsgraph_get()
    ob = obj.evaluated_get(dg)
    me = ob.to_mesh()
    try:
        co = np.empty(3 * len(me.vertices), np.float64)
        me.vertices.foreach_get("co", co)
        mw = np.array(ob.matrix_world)
    finally:
        ob.to_mesh_clear()
    co = co.reshape(-1, 3)
    return co @ mw[:3, :3].T + mw[:3, 3]


def add_id_uv(mesh) -> None:
    me = mesh.data
    layer = me.uv_layers.new(name=ID_UV, do_init=False)
    vi = np.empty(len(me.loops), np.int32)
    me.loops.foreach_get("vertex_index", vi)
    uv = np.stack([vi.astype(np.float32), np.zeros(len(vi), np.float32)], 1)
    layer.data.foreach_set("uv", uv.reshape(-1))


def vertex_ids(obj) -> np.ndarray:
    """Imported vertex -> original vertex index, from the id UV map (the layer whose u
    values are whole numbers; importers rename UV maps)."""
    me = obj.data
    vi = np.empty(len(me.loops), np.int32)
    me.loops.foreach_get("vertex_index", vi)
    for layer in me.uv_layers:
        uv = np.empty(2 * len(me.loops), np.float32)
        layer.data.foreach_get("uv", uv)
        u = uv[0::2]
        if u.max() > 2.0 and np.allclose(u, np.round(u)):
            ids = np.full(len(me.vertices), -1, np.int64)
            ids[vi] = np.round(u).astype(np.int64)
            return ids
    raise RuntimeError(f"{obj.name}: no vertex-id UV map among {[x.name for x in me.uv_layers]}")


def animate(arm, mesh) -> None:
    """Keys 1-12: expression keys (WIDE_KEY beyond [0, 1]), bones (the jaw drives
    DRV-jawOpen, the eye DRV-eyeLook*), the armature object's location."""
    keys = mesh.data.shape_keys.key_blocks
    wide = keys[WIDE_KEY]
    wide.slider_min, wide.slider_max = -1.0, 2.0
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, 12

    def q(axis, angle):
        a = np.asarray(axis, float) / np.linalg.norm(axis)
        return [float(np.cos(angle / 2)), *(float(x) for x in np.sin(angle / 2) * a)]

    track = {
        1: dict(wide=0.0, blink=0.0, jaw=0.0, neck=0.0, eye=0.0, root=0.0, x=0.0),
        5: dict(wide=1.6, blink=1.0, jaw=0.35, neck=0.2, eye=0.25, root=0.1, x=0.02),
        9: dict(wide=-0.5, blink=0.3, jaw=0.1, neck=-0.15, eye=-0.2, root=-0.05, x=-0.01),
        12: dict(wide=0.4, blink=0.0, jaw=0.2, neck=0.05, eye=0.1, root=0.0, x=0.0),
    }
    for frame, v in track.items():
        wide.value = v["wide"]
        wide.keyframe_insert("value", frame=frame)
        keys["eyeBlink_L"].value = v["blink"]
        keys["eyeBlink_L"].keyframe_insert("value", frame=frame)
        for name, axis, angle in (
            ("jaw", (1, 0.1, 0), v["jaw"]),
            ("neck", (0.3, 1, 0.1), v["neck"]),
            ("eye_L", (1, 0.5, 0), v["eye"]),
            ("root", (0, 0, 1), v["root"]),
        ):
            pb = arm.pose.bones[name]
            pb.rotation_quaternion = q(axis, angle)
            pb.keyframe_insert("rotation_quaternion", frame=frame, group=name)
        arm.location = (v["x"], 0.0, 0.0)
        arm.keyframe_insert("location", frame=frame)


def _digest(values) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float64).tobytes()).hexdigest()


def _fcurves_of(id_block) -> list:
    ad = id_block.animation_data
    if ad is None or ad.action is None:
        return []
    act = ad.action
    if hasattr(act, "fcurves") and not hasattr(act, "slots"):
        return list(act.fcurves)
    from bpy_extras import anim_utils

    bag = anim_utils.action_get_channelbag_for_slot(act, ad.action_slot)
    return list(bag.fcurves) if bag else []


def _drivers_of(id_block) -> list:
    ad = id_block.animation_data
    if ad is None:
        return []
    return [
        [
            fc.data_path,
            fc.array_index,
            fc.driver.type,
            fc.driver.expression,
            len(fc.driver.variables),
        ]
        + [
            [t.id.name if t.id else None, t.data_path]
            for v in fc.driver.variables
            for t in v.targets
        ]
        for fc in ad.drivers
    ]


def snapshot(arm, mesh) -> dict:
    """Everything about the user's rig and scene that an export could disturb."""
    key = mesh.data.shape_keys
    blocks = key.key_blocks
    co = np.empty(3 * len(mesh.data.vertices), np.float32)
    shapes = []
    for kb in blocks:
        kb.data.foreach_get("co", co)
        shapes.append(_digest(co))
    state = {
        "data_counts": {
            n: len(getattr(bpy.data, n))
            for n in (
                "objects",
                "meshes",
                "armatures",
                "actions",
                "shape_keys",
                "scenes",
                "collections",
                "materials",
                "images",
                "textures",
                "node_groups",
                "cameras",
                "lights",
                "worlds",
            )
        },
        "objects": sorted(o.name for o in bpy.data.objects),
        "names": [arm.name, mesh.name, arm.data.name, mesh.data.name, key.name],
        "scene": bpy.context.scene.name,
        "window_scene": bpy.context.window.scene.name if bpy.context.window else None,
        "frame": [bpy.context.scene.frame_current, bpy.context.scene.frame_subframe],
        "frame_range": [bpy.context.scene.frame_start, bpy.context.scene.frame_end],
        "active": bpy.context.view_layer.objects.active.name,
        "selected": sorted(o.name for o in bpy.context.view_layer.objects if o.select_get()),
        "mode": bpy.context.mode,
        "keys": [
            [
                kb.name,
                kb.value,
                kb.slider_min,
                kb.slider_max,
                kb.mute,
                kb.relative_key.name,
                kb.vertex_group,
            ]
            for kb in blocks
        ],
        "shapes": shapes,
        "bones": [
            [b.name, b.parent.name if b.parent else None, b.use_deform, _digest(b.matrix_local)]
            for b in arm.data.bones
        ],
        "pose": [
            [pb.name, pb.rotation_mode, [*pb.location, *pb.rotation_quaternion, *pb.scale]]
            for pb in arm.pose.bones
        ],
        "object": [_digest(arm.matrix_world), _digest(mesh.matrix_world), mesh.parent.name],
        "modifiers": [
            [m.name, m.type, getattr(m, "object", None) and m.object.name] for m in mesh.modifiers
        ],
        "vertex_groups": [vg.name for vg in mesh.vertex_groups],
        "uv_layers": [uv.name for uv in mesh.data.uv_layers],
        "drivers": _drivers_of(arm) + _drivers_of(key),
        "actions": [
            [
                fc.data_path,
                fc.array_index,
                _digest([c for kp in fc.keyframe_points for c in kp.co]),
            ]
            for id_block in (arm, key)
            for fc in _fcurves_of(id_block)
        ],
        "props": sorted(arm.keys()) + sorted(mesh.keys()),
    }
    return json.loads(json.dumps(state, default=float))


def diff(a: dict, b: dict) -> list[str]:
    """What changed, item by item for lists (the first few)."""
    out = []
    for k in a:
        if a[k] == b.get(k):
            continue
        if isinstance(a[k], list) and isinstance(b.get(k), list) and len(a[k]) == len(b[k]):
            out += [
                f"{k}: {x!r:.200} -> {y!r:.200}" for x, y in zip(a[k], b[k], strict=True) if x != y
            ][:4]
        else:
            out.append(f"{k}: {a[k]!r:.300} -> {b.get(k)!r:.300}")
    return out


def import_file(path: Path) -> tuple[object, object]:
    """Empties the file and imports `path`; returns (mesh object, armature object)."""
    bpy.ops.wm.read_homefile(use_empty=True)
    if path.suffix == ".glb":
        if bpy.app.version < (3, 6, 0):
            if not hasattr(np, "bool"):
                np.bool = bool  # Blender 3.4's importer uses np.bool (see the docstring)
        bpy.ops.import_scene.gltf(filepath=str(path))
    else:
        bpy.ops.import_scene.fbx(filepath=str(path))
    # skinned meshes with keys (5.0's glTF importer adds an Empty for the mesh node and an
    # Icosphere bone shape)
    meshes = [o for o in bpy.data.objects if o.type == "MESH" and o.data.shape_keys]
    arms = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    if len(meshes) != 1 or len(arms) != 1:
        raise RuntimeError(f"{path.name}: imported {[o.name for o in bpy.data.objects]}")
    return meshes[0], arms[0]


def imported_info(mesh, arm, path: Path) -> dict:
    key = mesh.data.shape_keys
    anims = []
    for id_block in (arm, key, mesh):
        ad = getattr(id_block, "animation_data", None) if id_block else None
        if ad is not None and ad.action is not None:
            anims.append(ad.action.name)
    images = [
        [img.name, img.packed_file is not None, list(img.size)]
        for img in bpy.data.images
        if img.type == "IMAGE"
    ]
    scene = bpy.context.scene
    return {
        "file": path.name,
        "size": path.stat().st_size,
        "objects": [mesh.name, arm.name],
        "bones": [b.name for b in arm.data.bones],
        "deform_bones": [b.name for b in arm.data.bones if b.use_deform],
        "keys": [kb.name for kb in key.key_blocks] if key else [],
        "sliders": {kb.name: [kb.slider_min, kb.slider_max] for kb in key.key_blocks}
        if key
        else {},
        "drivers": len(key.animation_data.drivers) if key and key.animation_data else 0,
        "actions": anims,
        "images": images,
        "mesh_props": {k: str(mesh[k]) for k in mesh.keys() if k.startswith("mfnet")},
        "mesh_data_props": {
            k: str(mesh.data[k]) for k in mesh.data.keys() if k.startswith("mfnet")
        },
        "frame_range": [scene.frame_start, scene.frame_end],
    }


def first_key_frame(obj) -> float | None:
    frames = [kp.co[0] for fc in _fcurves_of(obj) for kp in fc.keyframe_points]
    return min(frames) if frames else None


def apply_ranges(obj) -> int:
    """Sets the imported keys' sliders from the file's mfnet_key_ranges record. Blender's
    glTF importer (3.4 and 5.0) widens a slider only to a key's first keyframe weight
    (`min(coords[1:2])` in io_scene_gltf2's weight-animation import), so weights beyond
    [0, 1] later in the take would clamp; the file holds them (the pytest side reads them
    with pygltflib). Returns how many keys it set."""
    text = obj.get(RANGES_PROP) or obj.data.get(RANGES_PROP)
    if not text:
        raise RuntimeError(f"{obj.name}: the imported file has no {RANGES_PROP}")
    keys = obj.data.shape_keys.key_blocks
    n = 0
    for name, (lo, hi) in json.loads(str(text)).items():
        if name in keys:
            keys[name].slider_min, keys[name].slider_max = lo, hi
            n += 1
    return n


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("result_dir")
    ap.add_argument("workdir")
    ap.add_argument("--zip", default=None)
    args = ap.parse_args(bl_common.script_args())
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    module = bl_common.install_addon(args.zip)
    addon = bl_common.addon_module(module)
    rep = addon.builder.build_rig(args.result_dir, "face")
    arm, mesh = rep.armature, rep.mesh
    add_id_uv(mesh)
    animate(arm, mesh)
    scene = bpy.context.scene
    scene.frame_set(7)
    arm.pose.bones["neck"].rotation_quaternion = (0.99, 0.0, 0.141, 0.0)  # an un-keyed tweak
    bpy.context.view_layer.objects.active = arm
    out: dict = {"module": module, "n_vertices": len(mesh.data.vertices)}
    out["rig_keys"] = [kb.name for kb in mesh.data.shape_keys.key_blocks]
    out["rig_bones"] = [b.name for b in arm.data.bones]

    want = {}
    driven = {}
    for f in FRAMES:
        scene.frame_set(f)
        want[f] = world_vertices(mesh)
        ev = mesh.evaluated_get(bpy.context.evaluated_depsgraph_get()).data.shape_keys
        driven[f] = {n: ev.key_blocks[n].value for n in ("DRV-jawOpen", WIDE_KEY)}
    out["driven_values"] = driven
    scene.frame_set(7)
    arm.pose.bones["neck"].rotation_quaternion = (0.99, 0.0, 0.141, 0.0)
    bpy.context.view_layer.update()  # the drivers follow the tweak
    bpy.ops.object.mode_set(mode="POSE")  # animators export from Pose Mode
    before = snapshot(arm, mesh)

    paths = {fmt: work / f"face.{fmt}" for fmt in ("glb", "fbx")}
    results = {}
    for fmt, path in paths.items():
        results[fmt] = sorted(bpy.ops.mfnet.export_game(filepath=str(path)))
    out["export_results"] = results
    after = snapshot(arm, mesh)
    out["state_changes"] = diff(before, after)
    out["mode"] = after["mode"]
    out["state_keys"] = len(before)
    # an existing file is kept unless overwriting is asked for
    stamp = paths["glb"].stat().st_mtime_ns
    try:
        refused = sorted(bpy.ops.mfnet.export_game(filepath=str(paths["glb"]), overwrite=False))
    except RuntimeError as e:  # an operator that reports an error raises from scripts
        refused = str(e)
    out["refused_overwrite"] = refused
    out["kept_file"] = paths["glb"].stat().st_mtime_ns == stamp
    out["leftovers"] = sorted(p.name for p in work.iterdir() if "partial" in p.name)
    # a name without a suffix gets the chosen format's
    bare = work / "bare"
    bare.mkdir()
    res = bpy.ops.mfnet.export_game(filepath=str(bare / "bare"), file_format="FBX")
    out["no_suffix"] = {"result": sorted(res), "files": sorted(p.name for p in bare.iterdir())}

    # stills: the pose at frame 5, without animation
    scene.frame_set(STILL_FRAME)
    stills = {fmt: work / f"still.{fmt}" for fmt in ("glb", "fbx")}
    for path in stills.values():
        bpy.ops.mfnet.export_game(filepath=str(path), animation=False)
    scene.frame_set(7)

    for fmt, path in stills.items():
        imesh, iarm = import_file(path)
        if fmt == "glb":
            apply_ranges(imesh)
        ids = vertex_ids(imesh)
        out[f"still_{fmt}"] = {
            "actions": imported_info(imesh, iarm, path)["actions"],
            "error": float(
                np.linalg.norm(world_vertices(imesh) - want[STILL_FRAME][ids], axis=1).max()
            ),
        }

    for fmt, path in paths.items():
        imesh, iarm = import_file(path)
        info = imported_info(imesh, iarm, path)
        ids = vertex_ids(imesh)
        info["covered"] = bool(np.array_equal(np.unique(ids), np.arange(out["n_vertices"])))
        info["first_frame"] = first_key_frame(iarm)
        if fmt == "glb":  # see apply_ranges
            info["sliders_from_record"] = apply_ranges(imesh)
        errs = {}
        for f in FRAMES:
            bpy.context.scene.frame_set(f - 1 + FIRST_FRAME[fmt])
            got = world_vertices(imesh)
            errs[str(f)] = float(np.linalg.norm(got - want[f][ids], axis=1).max())
        info["errors"] = errs
        out[fmt] = info
    return out


if __name__ == "__main__":
    bl_common.run(main)
