"""How right are the training flow term's targets? Synthetic people, where the truth is known.

    python benchmarks/bm_flow_target_accuracy.py [--people 16] [--crop 224]
        [--checkpoint CKPT] [--presets ultrafast,fast,medium] [--flow-sizes 0,96,64]

The flow term (eq. 6) turns optical flow between I_{a->b} and I_b into correspondences:
"photo-a point `anchor_a` shows the same skin as photo-b point `target_b`". On a synthetic
batch the true partner of every anchor is known: the true mesh under the anchor in view a,
carried into view b with the true poses. This benchmark compares three partners with it,
in crop pixels, over the anchors whose true surface point is seen in both views:

- `geometry_px`: what the predicted mesh alone says (the anchor carried through it), i.e.
  the correspondence error the term has to correct;
- `target_px`: the flow-corrected target the loss pulls toward;
- `target_consistent_px`: the same over the samples that pass the forward-backward check
  (the others have weight 0 in the loss).

It does this for each DIS preset and working resolution (`loss.flow_size`), with the time
per person, at three meshes: an untrained
network's prediction (what early training sees), a trained checkpoint's (--checkpoint), and
the true mesh (the estimator's noise floor: there the flow should be zero). Prints one JSON
object; the times also as ratios to the reference workload timed in this process
(`benchmarks/reference.py`), with the machine's CPU model, cores and load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bm_flow_targets import cpu_offer, make_batch  # noqa: E402
from reference import Reference  # noqa: E402


def true_vertices_cam(flame, batch: dict[str, Tensor]) -> Tensor:  # noqa: ANN001
    """(B,N,V,3) the true meshes in each view's camera space (float64)."""
    from mfnet_core.camera import axis_angle_to_matrix
    from mfnet_core.fit.landmark_fit import pose_points
    from mfnet_core.network.mfnet import root_joint

    out = []
    for i in range(batch["gt_vertices"].shape[0]):
        verts = batch["gt_vertices"][i].double()
        n = batch["gt_head_rot"].shape[1]
        rot = axis_angle_to_matrix(batch["gt_head_rot"][i].double())
        pivot = root_joint(
            flame, batch["gt_shape"][i][None].float(), batch["gt_expression"][i][None].float()
        ).double()
        trans = batch["gt_head_trans"][i].double()
        out.append(pose_points(verts[None].expand(n, -1, -1), rot, pivot, trans))
    return torch.stack(out)


def true_views(verts_true: Tensor, camera: Tensor, faces: Tensor, size: int) -> list[tuple]:
    """Per view of one person: the true mesh's fragments and its depth buffer with each
    pixel's farthest 3x3 neighbour (lenient at silhouettes, as `flow.warp_to_view`).
    verts_true (N,V,3) float64, camera (N,4). Made once, used by every pair and setting."""
    from mfnet_core.camera import to_screen
    from mfnet_core.render import rasterize

    out = []
    for v in range(verts_true.shape[0]):
        scr = to_screen(verts_true[v][None], camera[v][None])[0]
        frags = rasterize(scr, faces, size, size, perspective_correct=True)
        depth = frags.depth.double()[None, None]
        zmax = torch.nn.functional.max_pool2d(depth, 3, stride=1, padding=1)[0, 0]
        out.append((frags, zmax))
    return out


def true_partners(
    verts_true: Tensor,
    camera: Tensor,
    faces: Tensor,
    views: list[tuple],
    a: int,
    b: int,
    q_a: Tensor,
) -> tuple[Tensor, Tensor]:
    """The true view-b pixel of each view-a anchor, and whether the true surface point under
    it is seen in view b (depth test against the true mesh). verts_true (N,V,3) float64;
    views: `true_views` of the same person."""
    from mfnet_core.fit.flow import project_depth, surface_bary

    size = views[a][1].shape[0]
    xi = q_a[:, 0].floor().long().clamp(0, size - 1)
    yi = q_a[:, 1].floor().long().clamp(0, size - 1)
    face = views[a][0].face_index[yi, xi]
    ok = face >= 0
    tri = faces[face.clamp_min(0)]
    bary = surface_bary(verts_true[a][tri], camera[a], q_a)
    x_b = (verts_true[b][tri] * bary[..., None]).sum(-2)
    p_b = project_depth(x_b, camera[b])
    xb = p_b[:, 0].floor().long()
    yb = p_b[:, 1].floor().long()
    inside = (xb >= 0) & (xb < size) & (yb >= 0) & (yb < size)
    zmax = views[b][1]
    seen = inside & (p_b[:, 2] <= zmax[yb.clamp(0, size - 1), xb.clamp(0, size - 1)] * 1.005)
    return p_b[:, :2], ok & seen


def score(
    per_person: list[list],
    pred_cam: Tensor,
    true_cam: Tensor,
    camera: Tensor,
    faces: Tensor,
    truth_views: list[list[tuple]],
) -> dict[str, float]:
    """Median errors (crop px) of the predicted-geometry partner and the flow targets."""
    from mfnet_core.fit.flow import transfer_points

    geo, tgt, tgt_ok, consistent = [], [], [], []
    people = []
    n_all = n_used = 0
    for i, pairs in enumerate(per_person):
        start = len(geo)
        for pf in pairs:
            q_a = torch.as_tensor(pf.anchor_a, dtype=torch.float64)
            truth, ok = true_partners(
                true_cam[i], camera[i].double(), faces, truth_views[i], pf.a, pf.b, q_a
            )
            tri = faces[torch.as_tensor(pf.faces)]
            q_geo = transfer_points(
                pred_cam[i, pf.a][tri][None],
                pred_cam[i, pf.b][tri][None],
                camera[i, pf.a].double(),
                camera[i, pf.b].double(),
                q_a,
            )[0]
            n_all += len(ok)
            n_used += int(ok.sum())
            target = torch.as_tensor(pf.target_b, dtype=torch.float64)
            w = torch.as_tensor(pf.weight) > 0
            geo.append((q_geo - truth).norm(dim=-1)[ok])
            tgt.append((target - truth).norm(dim=-1)[ok])
            tgt_ok.append((target - truth).norm(dim=-1)[ok & w])
            consistent.append(w[ok].float())
        g, t = (
            torch.cat(geo[start:] or [torch.zeros(0)]),
            torch.cat(tgt[start:] or [torch.zeros(0)]),
        )
        if len(g):
            people.append([round(float(g.median()), 2), round(float(t.median()), 2)])

    def med(xs: list[Tensor]) -> float:
        x = torch.cat(xs) if xs else torch.zeros(0)
        return round(float(x.median()), 3) if len(x) else float("nan")

    return {
        "geometry_px": med(geo),
        "target_px": med(tgt),
        "target_consistent_px": med(tgt_ok),
        "consistent_frac": round(float(torch.cat(consistent).mean()), 3) if consistent else 0.0,
        "samples": n_all,
        "samples_seen_in_both_frac": round(n_used / max(n_all, 1), 3),
        "per_person_geometry_target_px": people,
    }


def landmark_errors(dec, batch: dict[str, Tensor]) -> list[float]:  # noqa: ANN001
    """Per person: the median distance (crop px) between the predicted landmarks and the
    detected ones, over its views (what the training step knows before the flow term)."""
    d = (dec.landmarks_px.float() - batch["landmarks"].float()).norm(dim=-1)  # (B,N,68)
    return [round(float(x), 2) for x in d.flatten(1).median(1).values]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--people", type=int, default=16)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--checkpoint", default=None, help="also score a trained network's meshes")
    ap.add_argument("--presets", default="ultrafast,fast,medium")
    ap.add_argument(
        "--flow-sizes", default="0", help="working resolutions to compare (0: the crop's)"
    )
    args = ap.parse_args(argv)
    from training.losses import flow_context, flow_tasks, person_flow_targets

    ref = Reference.start()
    torch.set_num_threads(1)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer, batch, dec = make_batch(args.people, args.crop, Path(tmp), args.checkpoint)
        flame = trainer.flame
        crop = trainer.cfg.model.input_size
        a = flame.assets
        faces = torch.as_tensor(a.faces, dtype=torch.long)
        sizes = [int(x) for x in args.flow_sizes.split(",")]
        true_cam = true_vertices_cam(flame, batch)
        states = {"untrained" if args.checkpoint is None else "checkpoint": dec}
        # The true mesh, with the detected landmarks for the masks.
        states["truth"] = replace(
            dec, vertices_cam=true_cam.float(), landmarks_px=batch["landmarks"].float()
        )
        trainer.close()
        camera = batch["camera"]
        truth_views = [
            true_views(true_cam[i], camera[i].double(), faces, crop) for i in range(len(true_cam))
        ]
        for state, d in states.items():
            tasks = flow_tasks(batch, d, step=0)
            pred_cam = d.vertices_cam.double()
            for size, preset in [(z, p) for z in sizes for p in presets]:
                context = flow_context(
                    a.faces, a.face_region, crop, trainer.cfg.loss.flow_samples, size
                )
                ctx = dict(context, opts=replace(context["opts"], dis_preset=preset))
                person_flow_targets(tasks[0], ctx)  # warm-up
                times, per_person = [], []
                for task in tasks:
                    t = time.perf_counter()
                    per_person.append(person_flow_targets(task, ctx))
                    times.append(time.perf_counter() - t)
                row = score(per_person, pred_cam, true_cam, camera, faces, truth_views)
                row["per_person_ms"] = round(1000 * statistics.median(times), 1)
                row["per_person_landmark_px"] = landmark_errors(d, batch)
                key = preset if size == 0 else f"{preset}@{context['size']}px"
                results.setdefault(state, {})[key] = row
    ref.finish()
    per_person_s = {
        state: {key: row["per_person_ms"] / 1000 for key, row in rows.items()}
        for state, rows in results.items()
    }
    print(
        json.dumps(
            {
                **ref.to_json(),
                "people": args.people,
                "crop_px": crop,
                "checkpoint": args.checkpoint,
                "results": results,
                "ratio_to_reference": {"per_person": ref.ratios(per_person_s)},
                "cpu_offer": cpu_offer(),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
