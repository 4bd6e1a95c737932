"""Renders a result folder as the add-on builds it, in Blender (headless, Cycles on the CPU):
the head from the front and turned, beside each other, for the README and for looking at
what a 3D artist gets.

    blender -b --factory-startup -P tools/render_result_blender.py -- RESULT_DIR OUT.png \
        [--yaws 0,45] [--size 512] [--samples 48]

Why Cycles: Eevee and Workbench need an OpenGL context that a headless machine lacks;
Cycles renders on the CPU anywhere Blender runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import bpy
from mathutils import Vector

REPO = Path(__file__).resolve().parents[1]


def args_after_dashes() -> argparse.Namespace:
    argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    ap = argparse.ArgumentParser(prog="render_result_blender.py")
    ap.add_argument("result", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--yaws", default="0,45", help="camera yaws in degrees, one image each")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--samples", type=int, default=48)
    return ap.parse_args(argv)


def head_bounds(obj: bpy.types.Object) -> tuple[Vector, float]:
    """World-space centre of the head's bounding box and its height."""
    corners = [obj.matrix_world @ Vector(c) for c in obj.bound_box]
    lo = Vector(min(c[i] for c in corners) for i in range(3))
    hi = Vector(max(c[i] for c in corners) for i in range(3))
    return (lo + hi) / 2, hi.z - lo.z


def setup_scene(size: int, samples: int) -> bpy.types.Scene:
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False  # Debian's Blender 3.4 is built without OIDN
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.film_transparent = False
    scene.view_settings.exposure = -0.4  # the baked photo light is already in the texture
    world = bpy.data.worlds.new("studio")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.35, 0.36, 0.38, 1)
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.6
    scene.world = world
    return scene


def add_lights(centre: Vector, height: float) -> None:
    """A soft key light above-left of the camera and a weaker fill from the right."""
    for name, offset, power in (("key", (-0.5, -0.8, 0.5), 60.0), ("fill", (0.7, -0.6, 0.1), 20.0)):
        data = bpy.data.lights.new(name, "AREA")
        data.energy = power
        data.size = 0.6
        light = bpy.data.objects.new(name, data)
        light.location = centre + Vector(offset) * (height * 3)
        light.rotation_euler = (centre - light.location).to_track_quat("-Z", "Y").to_euler()
        bpy.context.scene.collection.objects.link(light)


def main() -> None:
    args = args_after_dashes()
    sys.path.insert(0, str(REPO))
    import blender_addon
    from blender_addon import builder

    blender_addon.register()
    bpy.ops.wm.read_homefile(use_empty=True)
    builder.build_rig(str(args.result), "head", pack_texture=False)
    mesh = next(o for o in bpy.context.scene.objects if o.type == "MESH")
    scene = setup_scene(args.size, args.samples)
    centre, height = head_bounds(mesh)
    centre.z += 0.12 * height  # frame the face, not the shoulders
    add_lights(centre, height)
    cam_data = bpy.data.cameras.new("camera")
    cam_data.lens = 85
    camera = bpy.data.objects.new("camera", cam_data)
    scene.collection.objects.link(camera)
    scene.camera = camera
    distance = height * 3.4
    frames = []
    for i, yaw in enumerate(float(y) for y in args.yaws.split(",")):
        a = math.radians(yaw)
        camera.location = centre + Vector((math.sin(a), -math.cos(a), 0.05)) * distance
        camera.rotation_euler = (centre - camera.location).to_track_quat("-Z", "Y").to_euler()
        path = args.out.with_name(f"{args.out.stem}.{i}.png")
        scene.render.filepath = str(path)
        bpy.ops.render.render(write_still=True)
        frames.append(path)
    side_by_side(frames, args.out)


def side_by_side(frames: list[Path], out: Path) -> None:
    """Joins the frames left to right into `out` (Blender's own image API, no extra
    packages), and removes the single frames."""
    images = [bpy.data.images.load(str(p)) for p in frames]
    w, h = images[0].size
    joined = bpy.data.images.new("joined", w * len(images), h)
    rows = []
    pixels = [list(im.pixels) for im in images]
    for y in range(h):
        for px in pixels:
            rows.extend(px[y * w * 4 : (y + 1) * w * 4])
    joined.pixels = rows
    joined.filepath_raw = str(out)
    joined.file_format = "PNG"
    joined.save()
    for p in frames:
        p.unlink()


if __name__ == "__main__":
    main()
