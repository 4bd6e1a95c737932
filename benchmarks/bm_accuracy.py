"""Loss ablation of the test-time fit (paper section 4.4, done at test time with known truth).

    python benchmarks/bm_accuracy.py [--subjects 10] [--json] [--no-scan] [--yaw 35]
                                     [--yaw-sets 20,50] [--repeats 1] [--size 1024]

For each of --subjects synthetic people (`synthetic.make_realistic_subject`: detailed
procedural skin, shared lighting with per-view exposure and white balance, expression and
camera jitter between the views, cluttered backgrounds, detector-like structured landmark
errors; 3 views at -yaw/0/+yaw; seeds 1..n, deterministic) the fit runs with each loss set:

- "landmarks": eq. 7 + eq. 10 (landmarks, reg)
- "landmarks+eye+lip": + eq. 8-9
- "landmarks+eye+lip+flow": + the multi-view flow term (eq. 6, `dense_fit.refine_dense`)
- "all": + the photometric stage

and the median vertex error (mm, face region, after a rigid alignment) against the true mesh
is recorded, with the seconds each configuration takes per subject. Paired differences per
subject, with a bootstrap 95% interval of their median, say whether a term helps beyond the
subject-to-subject spread; --repeats N re-draws the landmark errors N times per subject
(run-to-run spread of the whole ablation).

The same ablation runs on a real capture with known geometry, ../shared/assets/
headscan-james-menpo3d (BSD-3, see its SOURCES.md), rendered with its own photo texture at
-yaw/0/+yaw, with dlib landmarks on the renders: `scan_median_mm` is the median distance from
the capture's face region to the fitted mesh after a similarity alignment (the 68 3D
landmarks give the start, ICP refines), as the FaceScape protocol does.

Prints one JSON object with --json (else a table). Seconds are also given as ratios to the
reference workload timed in the same process (`benchmarks/reference.py`), with the machine's
CPU model, cores and load.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
from reference import Reference

from mfnet_core.camera import axis_angle_to_matrix, yaw_pitch_roll_deg
from mfnet_core.errors import MfnetError
from mfnet_core.fit.dense import DenseOptions, refine_dense
from mfnet_core.fit.landmark_fit import FitOptions, fit_landmarks
from mfnet_core.head.flame import FLAME
from mfnet_core.metrics import similarity_transform, vertex_error_mm
from mfnet_core.synthetic import (
    HeadScan,
    RealisticOptions,
    load_headscan,
    make_realistic_subject,
    render_scan,
)

SCAN_DIR = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "assets" / "headscan-james-menpo3d"
)

CONFIGS: dict[str, tuple[str, ...]] = {
    "landmarks": ("landmarks", "reg"),
    "landmarks+eye+lip": ("landmarks", "eye", "lip", "reg"),
    "landmarks+eye+lip+flow": ("landmarks", "eye", "lip", "flow", "reg"),
    "all": ("landmarks", "eye", "lip", "flow", "photo", "reg"),
}


def load_model(which: str) -> tuple[FLAME, str]:
    """The test head (default), the shipped ICT Face Model (--model ict) or the user's FLAME
    (--model flame: found as `mfnet doctor` says, e.g. MFNET_FLAME_MODEL)."""
    from mfnet_core.head.registry import load_head_model

    try:
        head = load_head_model(which)
    except MfnetError as e:
        raise SystemExit(f"--model {which}: {e}") from None
    return head, head.info.kind


def run_config(flame: FLAME, losses: tuple[str, ...], photos, landmarks, intrinsics, cache: dict):
    """One fit; the landmark stage is shared by the configurations that add dense terms."""
    lm_losses = tuple(t for t in losses if t not in ("flow", "photo"))
    t0 = time.perf_counter()
    if lm_losses not in cache:
        fitter = fit_landmarks(flame, landmarks, intrinsics, FitOptions(losses=lm_losses))
        cache[lm_losses] = (
            fitter,
            [t.detach().clone() for t in fitter.params.tensors()],
            time.perf_counter() - t0,
        )
    fitter, saved, t_lm = cache[lm_losses]
    with torch.no_grad():
        for dst, src in zip(fitter.params.tensors(), saved, strict=True):
            dst.copy_(src)
    t1 = time.perf_counter()
    if "flow" in losses or "photo" in losses:
        refine_dense(fitter, photos, DenseOptions(losses=losses, images=False, report=False))
    seconds = t_lm + time.perf_counter() - t1
    return fitter, seconds


def subject_errors(flame, seed: int, yaw: float, size: int, configs, repeat: int) -> dict:
    opts = RealisticOptions(yaws_deg=(-yaw, 0.0, yaw), image_size=size)
    subj = make_realistic_subject(flame, seed=seed, options=opts)
    if repeat:  # re-draw only the landmark errors
        rng = np.random.default_rng([seed, repeat, 99])
        person = opts.landmarks.person_bias(rng)
        for v in subj.views:
            rot = axis_angle_to_matrix(torch.as_tensor(v.head_rot, dtype=torch.float64)[None])
            yaw_v = float(yaw_pitch_roll_deg(rot)[0, 0])
            v.landmarks_noisy = opts.landmarks.apply(v.landmarks_true, yaw_v, person, rng)
    photos = [v.photo.rgb for v in subj.views]
    intr = [v.intrinsics for v in subj.views]
    lmk = np.stack([v.landmarks_noisy for v in subj.views])
    region = flame.face_region
    out, cache = {}, {}
    for name, losses in configs.items():
        fitter, sec = run_config(flame, losses, photos, lmk, intr, cache)
        err = vertex_error_mm(fitter.result().vertices_model, subj.vertices_true, region)
        out[name] = (float(np.median(err)), sec)
    return out


# -- the real capture ------------------------------------------------------------------------


class MeshQuery:
    """Closest points on a triangle mesh: the exact closest point on each of the k triangles
    whose centroids are nearest (k=12 is exact for meshes of evenly sized triangles)."""

    def __init__(self, verts: np.ndarray, faces: np.ndarray, k: int = 12) -> None:
        from scipy.spatial import cKDTree

        self.tri = verts[faces]  # (F,3,3)
        self.tree = cKDTree(self.tri.mean(1))
        self.k = k

    def on_surface(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, idx = self.tree.query(pts, k=self.k)  # (P,k)
        p = np.repeat(pts, self.k, axis=0)
        t = self.tri[idx.reshape(-1)]
        cand = trimesh.triangles.closest_point(t, p).reshape(len(pts), self.k, 3)
        d = np.linalg.norm(cand - pts[:, None], axis=-1)
        best = d.argmin(1)
        return cand[np.arange(len(pts)), best], d[np.arange(len(pts)), best]


def align_to_scan(
    scan: HeadScan,
    verts: np.ndarray,
    faces: np.ndarray,
    lmk68: np.ndarray,
    iterations: int = 20,
    with_scale: bool = True,
) -> tuple[float, np.ndarray, np.ndarray, MeshQuery]:
    """(s, R, t) taking the fitted mesh onto the capture (x -> s R x + t), and the fitted
    surface's MeshQuery: start from the 51 inner 3D landmarks (17-67; the contour's
    semantics differ between the two), then ICP with closest points on the fitted surface,
    trimming pairs beyond 3x the median distance. with_scale=False: rigid."""
    pts = scan.vertices[scan.face_region()].astype(np.float64)
    query = MeshQuery(verts.astype(np.float64), np.asarray(faces))
    s, rot, t = similarity_transform(
        lmk68[17:].astype(np.float64), scan.landmarks[17:].astype(np.float64), with_scale
    )
    rng = np.random.default_rng(0)
    sub = pts[rng.choice(len(pts), min(1500, len(pts)), replace=False)]
    for _ in range(iterations):
        back = (sub - t) @ rot / s  # capture points in the fitted mesh's frame
        closest, dist = query.on_surface(back)
        keep = dist <= 3 * np.median(dist) + 1e-9
        s, rot, t = similarity_transform(closest[keep], sub[keep], with_scale)
    return s, rot, t, query


def scan_distance_mm(
    scan: HeadScan, verts: np.ndarray, faces: np.ndarray, lmk68: np.ndarray, iterations: int = 20
) -> tuple[float, float]:
    """Median distance (mm) from the capture's face region to the fitted mesh after the
    similarity alignment of `align_to_scan`, and the similarity's scale (fitted mesh ->
    capture, both in metres: 1 when the fit is metric)."""
    pts = scan.vertices[scan.face_region()].astype(np.float64)
    s, rot, t, query = align_to_scan(scan, verts, faces, lmk68, iterations)
    _closest, dist = query.on_surface((pts - t) @ rot / s)
    return float(np.median(dist) * s * 1000.0), float(s)


def scan_errors(
    flame, scan: HeadScan, yaw: float, size: int, configs, landmarks: str = "dlib"
) -> tuple[dict, str]:
    views = render_scan(scan, (-yaw, 0.0, yaw), image_size=size, seed=0, landmarks=landmarks)
    photos = [v.photo.rgb for v in views.views]
    intr = [v.intrinsics for v in views.views]
    lmk = np.stack([v.landmarks_noisy for v in views.views])
    faces = flame.faces.cpu().numpy()
    out, cache = {}, {}
    for name, losses in configs.items():
        fitter, sec = run_config(flame, losses, photos, lmk, intr, cache)
        res = fitter.result()
        with torch.no_grad():
            v = torch.as_tensor(res.vertices_model)[None]
            lm3 = flame.landmarks_frontal(v)[0].numpy()
        dist, scale = scan_distance_mm(scan, res.vertices_model, faces, lm3)
        out[name] = (dist, sec, scale)
    return out, views.landmark_source


# -- statistics ---------------------------------------------------------------------------------


def bootstrap_median_ci(d: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(d, size=(n, len(d)), replace=True), axis=1)
    return float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


def paired(per: dict[str, list[float]], a: str, b: str) -> dict:
    """b minus a per subject (negative: b is better)."""
    d = np.array(per[b]) - np.array(per[a])
    lo, hi = bootstrap_median_ci(d)
    return {
        "median_diff_mm": round(float(np.median(d)), 4),
        "mean_diff_mm": round(float(d.mean()), 4),
        "ci95_median_diff_mm": [round(lo, 4), round(hi, 4)],
        "improved": f"{int((d < 0).sum())}/{len(d)}",
        "significant": bool(hi < 0 or lo > 0),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--subjects", type=int, default=10)
    ap.add_argument("--yaw", type=float, default=35.0)
    ap.add_argument("--yaw-sets", default="", help="extra yaw angles, e.g. 20,50 (same subjects)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=1, help="landmark-error draws per subject")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--model", choices=("test-head", "ict", "flame"), default="test-head")
    ap.add_argument("--no-scan", action="store_true")
    ap.add_argument(
        "--scan-landmarks",
        default="dlib",
        choices=("dlib", "mediapipe", "auto"),
        help="landmark detector on the capture's renders",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    configs = {k: CONFIGS[k] for k in args.configs.split(",")}
    flame, kind = load_model(args.model)
    ref = Reference.start()
    start = time.perf_counter()

    def ablation(yaw: float) -> tuple[dict, dict]:
        per = {k: [] for k in configs}
        secs = {k: [] for k in configs}
        for r in range(args.repeats):
            for seed in range(1, args.subjects + 1):
                res = subject_errors(flame, seed, yaw, args.size, configs, r)
                for k, (e, s) in res.items():
                    per[k].append(e)
                    secs[k].append(s)
                if not args.json:
                    print(
                        f"yaw {yaw:g} repeat {r} subject {seed}: "
                        + ", ".join(f"{k} {v[0]:.3f}" for k, v in res.items()),
                        file=sys.stderr,
                    )
        return per, secs

    per, secs = ablation(args.yaw)
    result: dict = {
        "subjects": args.subjects,
        "repeats": args.repeats,
        "yaw_deg": args.yaw,
        "image_size": args.size,
        "model": kind,
        "configs": {
            k: {
                "losses": list(configs[k]),
                "median_vertex_error_mm": round(float(np.median(per[k])), 4),
                "mean_vertex_error_mm": round(float(np.mean(per[k])), 4),
                "per_subject_mm": [round(x, 4) for x in per[k]],
                "seconds": round(float(np.mean(secs[k])), 3),
            }
            for k in configs
        },
    }
    names = list(configs)
    result["paired"] = {
        f"{b} vs {a}": paired(per, a, b) for a, b in zip(names[:-1], names[1:], strict=True)
    }
    if "landmarks+eye+lip+flow" in per and "landmarks" in per:
        result["paired"]["landmarks+eye+lip+flow vs landmarks"] = paired(
            per, "landmarks", "landmarks+eye+lip+flow"
        )
    if args.repeats > 1:
        result["run_to_run_sd_of_median_mm"] = {
            k: round(
                float(
                    np.std(
                        [
                            np.median(per[k][r * args.subjects : (r + 1) * args.subjects])
                            for r in range(args.repeats)
                        ]
                    )
                ),
                4,
            )
            for k in configs
        }
    for y in [float(v) for v in args.yaw_sets.split(",") if v]:
        p2, s2 = ablation(y)
        result.setdefault("other_yaws", {})[f"{y:g}"] = {
            "configs": {
                k: {
                    "median_vertex_error_mm": round(float(np.median(p2[k])), 4),
                    "seconds": round(float(np.mean(s2[k])), 3),
                }
                for k in configs
            },
            "paired": {
                f"{b} vs {a}": paired(p2, a, b) for a, b in zip(names[:-1], names[1:], strict=True)
            },
        }
    scan_dir = SCAN_DIR.resolve()
    if not args.no_scan and (scan_dir / "james.obj").is_file():
        scan = load_headscan(scan_dir)
        res, source = scan_errors(flame, scan, args.yaw, args.size, configs, args.scan_landmarks)
        for k, (d, s, scale) in res.items():
            result["configs"][k]["scan_median_mm"] = round(d, 4)
            result["configs"][k]["scan_scale"] = round(scale, 4)
            result["configs"][k]["scan_seconds"] = round(s, 3)
        result["scan"] = {
            "name": scan.name,
            "landmarks": source,
            "face_vertices": int(scan.face_region().sum()),
        }
    elif not args.no_scan:
        result["scan"] = {"skipped": f"not found: {scan_dir}"}
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    ref.finish()
    result.update(ref.to_json())
    times: dict = {"total_seconds": result["total_seconds"], "configs": {}}
    for k, v in result["configs"].items():
        times["configs"][k] = {n: v[n] for n in ("seconds", "scan_seconds") if n in v}
    for y, other in result.get("other_yaws", {}).items():
        times.setdefault("other_yaws", {})[y] = {
            k: {"seconds": v["seconds"]} for k, v in other["configs"].items()
        }
    result["ratio_to_reference"] = ref.ratios(times)
    if args.json:
        print(json.dumps(result))
    else:
        print(ref.summary())
        print(
            f"{'loss set':26s} {'median mm':>10s} {'mean mm':>9s} {'s/subject':>10s} "
            f"{'x ref':>7s} {'scan mm':>8s} {'scale':>6s}"
        )
        for k, v in result["configs"].items():
            print(
                f"{k:26s} {v['median_vertex_error_mm']:10.3f} {v['mean_vertex_error_mm']:9.3f} "
                f"{v['seconds']:10.2f} {ref.ratio(v['seconds'], 1):7.1f} "
                f"{v.get('scan_median_mm', float('nan')):8.3f} {v.get('scan_scale', float('nan')):6.3f}"
            )
        total = result["total_seconds"]
        print(f"total {total:.1f} s ({ref.ratio(total, 1):.1f} x reference)")
        print(json.dumps(result["paired"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
