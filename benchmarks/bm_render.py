"""Rasteriser and texture-bake timings on a FLAME-sized mesh (~10k triangles).

    python benchmarks/bm_render.py [--runs 5] [--device cpu|cuda]

Prints one JSON object: median and min wall-clock seconds over the runs for each case, and
the median CPU seconds of the process (summed over threads), each also as a ratio to the
reference workload timed in the same process (`benchmarks/reference.py`: compare ratios
between machines and runs, not seconds), plus the machine (CPU model, cores) and the load
average at the start and end.
Cases:
- raster_1024: the mesh covering ~500x500 px of a 1024x1024 image (a head in a photo)
- raster_2048: the same view at 2048x2048 (~1000x1000 px)
- raster_uv_2048: the lat-long UV layout rasterised at 2048x2048 (it fills the whole
  square: the worst case for texture baking)
- raster_uv_atlas_2048: an xatlas UV layout of the same mesh (islands, ~60-70% filled, like
  FLAME's) at 2048x2048
- render_textured_1024 / render_textured_1024_backward: textured SH-shaded render at 1024
  (forward; forward + backward to vertices, texture and light, as in a photometric loss)
- bake_3x1024_to_1024 / bake_3x1024_to_2048: three 1024 px photos baked into a texture in
  the xatlas layout
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch
from reference import Reference

from mfnet_core.outputs.texture import BakeView, bake_texture
from mfnet_core.render import rasterize, render_textured, vertex_normals


def head_like_mesh(
    n_lat: int = 50, n_lon: int = 100
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A bumpy ellipsoid, 2 * n_lat * n_lon triangles (10,000 by default), with a lat-long UV
    layout (seam vertices duplicated, so faces index both positions and UVs).
    Returns verts (V,3) metres, faces (F,3), uv (V,2)."""
    lat = torch.linspace(0, math.pi, n_lat + 1, dtype=torch.float64)
    lon = torch.linspace(0, 2 * math.pi, n_lon + 1, dtype=torch.float64)
    la, lo = torch.meshgrid(lat, lon, indexing="ij")
    bump = 1 + 0.03 * torch.sin(5 * lo) * torch.sin(4 * la)
    verts = (
        torch.stack(
            [
                0.08 * torch.sin(la) * torch.sin(lo),
                0.11 * torch.cos(la),
                0.095 * torch.sin(la) * torch.cos(lo),
            ],
            -1,
        )
        * bump[..., None]
    )
    uv = torch.stack([lo / (2 * math.pi), 1 - la / math.pi], -1)
    idx = torch.arange((n_lat + 1) * (n_lon + 1)).view(n_lat + 1, n_lon + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = torch.cat(
        [torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)]
    )
    return verts.reshape(-1, 3).float(), faces, uv.reshape(-1, 2).float()


def camera_view(
    verts: torch.Tensor, yaw_deg: float, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Screen vertices (u, v, depth) and camera-space normals of the mesh seen from `yaw_deg`,
    0.6 m away, the head ~size/2 px tall."""
    a = math.radians(yaw_deg)
    rot = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    vc = verts @ rot.T - torch.tensor([0.0, 0.0, 0.6])
    f = size * 0.6 * 0.5 / 0.22
    scr = torch.stack(
        [size / 2 + f * vc[:, 0] / -vc[:, 2], size / 2 - f * vc[:, 1] / -vc[:, 2], -vc[:, 2]], -1
    )
    faces = HEAD[1]
    return scr, vertex_normals(vc, faces)


HEAD = head_like_mesh()


def xatlas_layout(
    verts: torch.Tensor, faces: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An xatlas UV layout: faces (F,3) into verts, uv (T,2), uv_faces (F,3) into uv."""
    import xatlas

    vmap, idx, uvs = xatlas.parametrize(verts.numpy(), faces.numpy())
    return (
        torch.as_tensor(vmap[idx].astype(np.int64)),
        torch.as_tensor(uvs, dtype=torch.float32),
        torch.as_tensor(idx.astype(np.int64)),
    )


def timeit(fn, runs: int, sync) -> dict[str, float]:
    """Wall-clock median / min over `runs` calls after a warm-up, and the median process CPU
    time (all threads; less sensitive than wall time when other jobs share the cores)."""
    fn()  # warm-up
    sync()
    times, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fn()
        sync()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "cpu_median_s": round(statistics.median(cpu), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-bake", action="store_true")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    verts, faces, uv = HEAD
    faces_d = faces.to(dev)
    ref = Reference.start()
    out: dict[str, object] = {
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "triangles": int(len(faces)),
        "vertices": int(len(verts)),
    }
    cases: dict[str, dict[str, float]] = {}

    scr1024, n1024 = camera_view(verts, 20.0, 1024)
    scr2048, _ = camera_view(verts, 20.0, 2048)
    s1, s2 = scr1024.to(dev), scr2048.to(dev)
    fr = rasterize(s1, faces_d, 1024, 1024)
    ys, xs = torch.nonzero(fr.face_index >= 0, as_tuple=True)
    out["covered_px_1024"] = int(len(xs))
    out["bbox_px_1024"] = [int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    cases["raster_1024"] = timeit(lambda: rasterize(s1, faces_d, 1024, 1024), args.runs, sync)
    cases["raster_2048"] = timeit(lambda: rasterize(s2, faces_d, 2048, 2048), args.runs, sync)
    suv = torch.stack([uv[:, 0] * 2048, (1 - uv[:, 1]) * 2048, torch.ones(len(uv))], -1).to(dev)
    cases["raster_uv_2048"] = timeit(lambda: rasterize(suv, faces_d, 2048, 2048), args.runs, sync)
    atlas_faces, atlas_uv, atlas_uv_faces = xatlas_layout(verts, faces)
    sat = torch.stack(
        [atlas_uv[:, 0] * 2048, (1 - atlas_uv[:, 1]) * 2048, torch.ones(len(atlas_uv))], -1
    ).to(dev)
    fat = atlas_uv_faces.to(dev)
    fr = rasterize(sat, fat, 2048, 2048)
    out["atlas_fill"] = round(float((fr.face_index >= 0).float().mean()), 3)
    cases["raster_uv_atlas_2048"] = timeit(lambda: rasterize(sat, fat, 2048, 2048), args.runs, sync)

    rng = np.random.default_rng(0)
    tex = torch.tensor(rng.uniform(0.2, 0.8, size=(512, 512, 3)), dtype=torch.float32, device=dev)
    sh = torch.zeros(9, 3, device=dev)
    sh[0] = 3.0
    sh[3] = 0.5
    n_d, uv_d = n1024.to(dev), uv.to(dev)

    def render(backward: bool = False) -> None:
        v = s1.clone().requires_grad_(backward)
        t = tex.clone().requires_grad_(backward)
        light = sh.clone().requires_grad_(backward)
        img, _, _ = render_textured(
            v, n_d, faces_d, uv_d, faces_d, t, 1024, 1024, light, normals_kind="normals"
        )
        if backward:
            img.square().sum().backward()

    cases["render_textured_1024"] = timeit(render, args.runs, sync)
    cases["render_textured_1024_backward"] = timeit(lambda: render(True), args.runs, sync)

    if not args.skip_bake:
        photos = []
        for name, yaw in (("left", -35.0), ("front", 0.0), ("right", 35.0)):
            s, n = camera_view(verts, yaw, 1024)
            img, mask, _ = render_textured(s, None, faces, uv, faces, tex.cpu(), 1024, 1024)
            rgb = (img.numpy() * 255).astype(np.uint8)
            photos.append(BakeView(rgb, s, n, name))
        for size in (1024, 2048):
            cases[f"bake_3x1024_to_{size}"] = timeit(
                lambda size=size: bake_texture(
                    photos, atlas_faces, atlas_uv, atlas_uv_faces, size=size
                ),
                args.runs,
                sync,
            )
    ref.finish()
    out["cases"] = cases
    out["ratio_to_reference"] = ref.ratios(cases)
    print(json.dumps({**ref.to_json(), **out}, indent=1))


if __name__ == "__main__":
    main()
