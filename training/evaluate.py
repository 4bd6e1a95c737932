"""Evaluation: ``python -m training.evaluate``.

Two benchmarks:

- ``--dataset synthetic``: the synthetic multi-view set (ground-truth FLAME meshes). Per
  subject, the mean per-vertex error (mm) over the face region after a rigid alignment on
  that region (``mfnet_core.metrics.vertex_error_mm``); reported as the median and mean
  over subjects, next to the same for the mean head (all coefficients zero). With
  ``--facescape-metrics``, also CD / MNE / CR as the FaceScape benchmark defines them
  (``training.metrics``), on the face region, after the same rigid alignment.
- ``--dataset facescape-lab``: the FaceScape benchmark's FS-Lab protocol with the
  benchmark's own data (``--root`` = the benchmark folder with ``data/`` and
  ``code/predef/``). The prediction is put in the camera of the evaluated photo and aligned
  by the benchmark's depth shift only.

Methods (``--methods``, comma separated): ``mean`` (mean head), ``network`` (MFNet from
``--checkpoint``), ``fit`` (mfnet_core's landmark fit from its PnP start), ``network+fit``
(the same fit started from the network's prediction), ``network+fit-short`` (from the
network, one fine round of 8 iterations). Writes ``results.json`` and a
Markdown table like the paper's Table 2 (``table.md``) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mfnet_core.camera import axis_angle_to_matrix_np
from mfnet_core.errors import MfnetError
from mfnet_core.metrics import similarity_transform, vertex_error_mm
from mfnet_core.network.mfnet import MFNet, decode

from .head_model import load_head
from .metrics import STD_PUPIL_DIST_MM, align_depth, facescape_scores

# FLAME axes (face toward +z) -> the benchmark's cylinder frame (face toward -z, y up).
FLAME_TO_CYLINDER = np.diag([-1.0, 1.0, -1.0])


def face_faces(faces: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Faces whose three vertices are all in the (V,) bool region."""
    return faces[region[faces].all(1)]


@torch.no_grad()
def predict_vertices(
    model: MFNet, flame: nn.Module, batch: dict[str, torch.Tensor], device: torch.device
) -> np.ndarray:
    """(B,V,3) predicted model-space vertices (metres, no head pose) for a batch."""
    model.eval()
    out = model(batch["images"].to(device))
    dec = decode(
        out, flame, batch["camera"].to(device), model.config.input_size, with_vertices=True
    )
    assert dec.vertices is not None
    return dec.vertices.cpu().numpy()


def mean_head_vertices(flame: nn.Module) -> np.ndarray:
    with torch.no_grad():
        dev = next(flame.buffers()).device
        return flame(shape=torch.zeros(1, 1, device=dev)).vertices[0].cpu().numpy()


def per_subject_error(pred: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """Mean per-vertex error (mm) over the region after rigid alignment on it."""
    return float(vertex_error_mm(pred, truth, region).mean())


def synthetic_scores(
    pred: np.ndarray, truth: np.ndarray, faces: np.ndarray, region: np.ndarray
) -> dict[str, float]:
    """FaceScape CD/MNE/CR (mm, rad) of a prediction against the ground truth's face region,
    after a rigid alignment on the region (same topology)."""
    s, rot, t = similarity_transform(pred[region], truth[region], with_scale=False)
    aligned = (s * pred @ rot.T + t) * 1000.0
    gt = truth * 1000.0
    centre = gt.mean(0)
    ff = face_faces(faces, region)
    return facescape_scores(gt, ff, aligned, faces, centre, FLAME_TO_CYLINDER).as_dict()


def summarise(errors: Sequence[float]) -> dict[str, float]:
    e = np.asarray(errors, dtype=np.float64)
    return {
        "median_vertex_error_mm": float(np.median(e)),
        "mean_vertex_error_mm": float(e.mean()),
        "p90_vertex_error_mm": float(np.quantile(e, 0.9)),
    }


@torch.no_grad()
def evaluate_network_synthetic(
    model: MFNet,
    flame: nn.Module,
    dataset: Any,
    device: torch.device,
    batch_size: int = 8,
    limit: int | None = None,
) -> dict[str, Any]:
    """Network vs mean head on a ``SyntheticDataset`` split (validation during training)."""
    from .datasets import collate

    region = np.asarray(flame.face_region, bool)
    mean = mean_head_vertices(flame)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    errs, mean_errs = [], []
    was_training = model.training
    for s in range(0, n, batch_size):
        batch = collate([dataset[i] for i in range(s, min(n, s + batch_size))])
        pred = predict_vertices(model, flame, batch, device)
        gt = batch["gt_vertices"].numpy()
        for p, g in zip(pred, gt, strict=True):
            errs.append(per_subject_error(p, g, region))
            mean_errs.append(per_subject_error(mean, g, region))
    model.train(was_training)
    res: dict[str, Any] = {"n_subjects": n, **summarise(errs)}
    res.update({f"mean_head_{k}": v for k, v in summarise(mean_errs).items()})
    return res


# --------------------------------------------------------------------------------------
# The comparison on the synthetic set: network, fitting, network + fitting
# --------------------------------------------------------------------------------------
def _photo_space(subject: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], list]:
    from mfnet_core.camera import Intrinsics

    photos = list(subject["images"])
    lmks = list(subject["landmarks"].astype(np.float64))
    intr = []
    for k, img in zip(subject["intrinsics"], photos, strict=True):
        intr.append(
            Intrinsics(
                float(k[0]), float(k[1]), float(k[2]), float(k[3]), img.shape[1], img.shape[0]
            )
        )
    return photos, lmks, intr


def evaluate_synthetic(
    methods: Sequence[str],
    dataset: Any,
    flame: nn.Module,
    model: MFNet | None,
    device: torch.device,
    limit: int | None = None,
    facescape_metrics: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Per-method accuracy and time per subject on the synthetic set."""
    from .fit_init import fit_from_init, fit_from_scratch

    region = np.asarray(flame.face_region, bool)
    faces = flame.faces.cpu().numpy()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    mean = mean_head_vertices(flame)
    rows: dict[str, dict[str, list[float]]] = {
        m: {"err": [], "time": [], "cd": [], "mne": [], "cr": []} for m in methods
    }
    it = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="evaluating", file=sys.stderr)
    for i in it:
        subj = dataset.subject(i)
        truth = subj["vertices"].astype(np.float64)
        photos, lmks, intr = _photo_space(subj)
        for m in methods:
            t0 = time.perf_counter()
            if m == "mean":
                pred = mean
            elif m == "network":
                if model is None:
                    raise MfnetError("method 'network' needs --checkpoint")
                from mfnet_core.network.predict import predict_init

                init = predict_init(model, photos, lmks, flame, intr, device)
                pred = _vertices_from_params(flame, init)
            elif m == "fit":
                pred = fit_from_scratch(flame, lmks, intr)
            elif m in ("network+fit", "network+fit-short"):
                if model is None:
                    raise MfnetError(f"method {m!r} needs --checkpoint")
                pred = fit_from_init(
                    flame, model, photos, lmks, intr, device, short=m.endswith("short")
                )
            else:
                raise MfnetError(
                    f"unknown method {m!r}; use mean, network, fit, network+fit, network+fit-short"
                )
            dt = time.perf_counter() - t0
            r = rows[m]
            r["time"].append(dt)
            r["err"].append(per_subject_error(pred, truth, region))
            if facescape_metrics:
                sc = synthetic_scores(pred, truth, faces, region)
                r["cd"].append(sc["cd"])
                r["mne"].append(sc["mne"])
                r["cr"].append(sc["cr"])
    out: dict[str, Any] = {"n_subjects": n, "methods": {}}
    for m, r in rows.items():
        entry: dict[str, Any] = {
            **summarise(r["err"]),
            "seconds_per_subject": float(np.mean(r["time"])),
        }
        if facescape_metrics:
            entry.update(
                {
                    "cd_mm": float(np.nanmean(r["cd"])),
                    "mne_rad": float(np.nanmean(r["mne"])),
                    "cr": float(np.nanmean(r["cr"])),
                }
            )
        out["methods"][m] = entry
    return out


def _vertices_from_params(flame: nn.Module, p: dict[str, np.ndarray]) -> np.ndarray:
    dev = next(flame.buffers()).device
    t = {
        k: torch.as_tensor(np.asarray(p[k], np.float32), device=dev)[None]
        for k in ("shape", "expression", "jaw_pose", "eye_pose", "neck_pose")
    }
    with torch.no_grad():
        out = flame(
            shape=t["shape"],
            expression=t["expression"],
            global_pose=torch.zeros(1, 3, device=dev),
            neck_pose=t["neck_pose"],
            jaw_pose=t["jaw_pose"],
            eye_pose=t["eye_pose"],
        )
    return out.vertices[0].cpu().numpy().astype(np.float64)


# --------------------------------------------------------------------------------------
# FaceScape FS-Lab (the benchmark's own data)
# --------------------------------------------------------------------------------------
FSLAB_HINT = (
    "Expected the FaceScape benchmark folder (github.com/zhuhao-nju/facescape, benchmark/) with "
    "data/lab_gt_mesh/NN.obj, data/lab_cam/NN_F_VV.json, the FS-Lab photos NN_F_VV.(jpg|png) "
    "somewhere under data/, and code/predef/lab_rotations.npy + lab_head_centers.npy"
)
LAB_SUBJECTS, LAB_FOCALS, LAB_VIEWS = 20, 3, 11


def _read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    verts, faces = [], []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("v "):
            verts.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("f "):
            idx = [int(tok.split("/")[0]) for tok in line.split()[1:]]
            idx = [i - 1 if i > 0 else len(verts) + i for i in idx]
            for k in range(1, len(idx) - 1):
                faces.append([idx[0], idx[k], idx[k + 1]])
    if not verts or not faces:
        raise MfnetError(f"{path}: no vertices/faces found in this OBJ")
    return np.asarray(verts, np.float64), np.asarray(faces, np.int64)


def evaluate_facescape_lab(
    root: Path,
    model: MFNet,
    flame: nn.Module,
    device: torch.device,
    cache_dir: Path,
    landmark_backend: str = "dlib",
    limit: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """FS-Lab CD/MNE/CR for MFNet fed the evaluated view plus its two neighbours."""
    from mfnet_core.inputs.images import load_photo

    from .datasets import LandmarkCache, _cache_folder, _require_dir

    _require_dir(root, "FaceScape benchmark", FSLAB_HINT)
    data = root / "data"
    _require_dir(data / "lab_gt_mesh", "FaceScape benchmark", FSLAB_HINT)
    _require_dir(data / "lab_cam", "FaceScape benchmark", FSLAB_HINT)
    predef = root / "code" / "predef"
    for f in ("lab_rotations.npy", "lab_head_centers.npy"):
        if not (predef / f).is_file():
            raise MfnetError(f"FaceScape benchmark: {predef / f} is missing. {FSLAB_HINT}")
    rotations = np.load(predef / "lab_rotations.npy")
    centres = np.load(predef / "lab_head_centers.npy")
    images = {
        p.stem: p
        for p in data.rglob("*")
        if p.suffix.lower() in (".jpg", ".png") and p.stem.count("_") == 2
    }
    if not images:
        raise MfnetError(f"FaceScape benchmark: no NN_F_VV.jpg photos under {data}. {FSLAB_HINT}")
    cache = LandmarkCache(_cache_folder(str(cache_dir), "fslab", root), landmark_backend, 100_000)
    tuples = [
        (s, f, v) for s in range(LAB_SUBJECTS) for f in range(LAB_FOCALS) for v in range(LAB_VIEWS)
    ]
    if limit:
        tuples = tuples[:limit]
    scores: list[dict[str, float]] = []
    missing = 0
    it = tuples
    if progress:
        from tqdm import tqdm

        it = tqdm(tuples, desc="FS-Lab", file=sys.stderr)
    for s, f, v in it:
        name = f"{s:02d}_{f:01d}_{v:02d}"
        group = [f"{s:02d}_{f:01d}_{w:02d}" for w in (v - 1, v, v + 1) if 0 <= w < LAB_VIEWS]
        if len(group) < 3:  # first/last view: two on one side
            group = [
                f"{s:02d}_{f:01d}_{w:02d}" for w in ((0, 1, 2) if v == 0 else (v - 2, v - 1, v))
            ]
        if any(g not in images for g in group):
            missing += 1
            continue
        photos, lmks, ks, intr = [], [], [], []
        ok = True
        for g in group:
            e = cache.get(root, str(images[g].relative_to(root)))
            cam = json.loads((data / "lab_cam" / f"{g}.json").read_text())
            if e is None:
                ok = False
                break
            photos.append(load_photo(images[g], max_side=100_000).rgb)
            lmks.append(np.asarray(e["landmarks"], np.float64))
            k = np.asarray(cam[0], np.float64)
            ks.append(k)
            from mfnet_core.camera import Intrinsics

            h, w = photos[-1].shape[:2]
            intr.append(Intrinsics(k[0, 0], k[1, 1], k[0, 2], k[1, 2], w, h))
        if not ok:
            missing += 1
            continue
        from mfnet_core.network.predict import predict_init

        init = predict_init(model, photos, lmks, flame, intr, device)
        j = group.index(name)
        verts = _vertices_from_params(flame, init)
        pivot = _pivot(flame, init)
        rot = axis_angle_to_matrix_np(init["head_pose"][j])
        v_cam = (verts - pivot) @ rot.T + pivot + init["head_translation"][j]
        pred_cv = v_cam * [1.0, -1.0, -1.0] * 1000.0  # OpenGL metres -> OpenCV mm
        gt_v, gt_f = _read_obj(data / "lab_gt_mesh" / f"{s:02d}.obj")
        gt_v = gt_v * STD_PUPIL_DIST_MM
        cam = json.loads((data / "lab_cam" / f"{name}.json").read_text())
        k, rt = np.asarray(cam[0], np.float64), np.asarray(cam[1], np.float64)
        rt[:, 3] *= STD_PUPIL_DIST_MM
        gt_v = gt_v @ rt[:3, :3].T + rt[:, 3]
        h, w = photos[j].shape[:2]
        faces = flame.faces.cpu().numpy()
        pred_al, _ = align_depth(gt_v, gt_f, pred_cv, faces, k, h, w)
        sc = facescape_scores(gt_v, gt_f, pred_al, faces, centres[f], rotations[v])
        scores.append(sc.as_dict())
    if not scores:
        raise MfnetError(
            f"FaceScape benchmark: no tuple could be evaluated ({missing} missing photos/landmarks)"
        )
    return {
        "n_evaluated": len(scores),
        "n_missing": missing,
        "cd_mm": float(np.nanmean([x["cd"] for x in scores])),
        "mne_rad": float(np.nanmean([x["mne"] for x in scores])),
        "cr": float(np.nanmean([x["cr"] for x in scores])),
    }


def _pivot(flame: nn.Module, p: dict[str, np.ndarray]) -> np.ndarray:
    dev = next(flame.buffers()).device
    with torch.no_grad():
        out = flame(
            shape=torch.as_tensor(p["shape"], device=dev)[None],
            expression=torch.as_tensor(p["expression"], device=dev)[None],
            jaw_pose=torch.as_tensor(p["jaw_pose"], device=dev)[None],
        )
    return out.joints[0, 0].cpu().numpy().astype(np.float64)


# --------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------
METHOD_NAMES = {
    "mean": "mean head",
    "network": "MFNet (network only)",
    "fit": "fitting (landmarks, PnP start)",
    "network+fit": "fitting started from MFNet",
    "network+fit-short": "fitting started from MFNet, one short round",
}


def markdown_table(results: dict[str, Any], title: str) -> str:
    """A table like the paper's Table 2 (CD / MNE / CR) plus vertex error and time."""
    methods = results["methods"]
    has_fs = any("cd_mm" in r for r in methods.values())
    head = "| method | median vertex error (mm) | mean vertex error (mm) |"
    sep = "|---|---:|---:|"
    if has_fs:
        head += " CD (mm) | MNE (rad) | CR |"
        sep += "---:|---:|---:|"
    head += " time / subject (s) |"
    sep += "---:|"
    lines = [f"### {title}", "", head, sep]
    for m, r in methods.items():
        row = f"| {METHOD_NAMES.get(m, m)} | {r['median_vertex_error_mm']:.2f} | {r['mean_vertex_error_mm']:.2f} |"
        if has_fs:
            row += f" {r.get('cd_mm', float('nan')):.2f} | {r.get('mne_rad', float('nan')):.3f} | {r.get('cr', float('nan')):.3f} |"
        row += f" {r['seconds_per_subject']:.3f} |"
        lines.append(row)
    lines.append("")
    lines.append(f"{results['n_subjects']} subjects.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--checkpoint", help="MFNet checkpoint (loaded with weights_only=True)")
    ap.add_argument("--config", help="config for the data (default: the checkpoint's)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--dataset", default="synthetic", choices=["synthetic", "facescape-lab"])
    ap.add_argument("--root", help="facescape-lab: the FaceScape benchmark folder")
    ap.add_argument("--split", default="val", choices=["train", "val"])
    ap.add_argument("--methods", default="mean,network", help="mean,network,fit,network+fit")
    ap.add_argument(
        "--limit", type=int, default=None, help="evaluate only the first N subjects/tuples"
    )
    ap.add_argument("--facescape-metrics", action="store_true", help="synthetic: also CD/MNE/CR")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="folder for results.json, table.md and preview.png")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        from mfnet_core.network.checkpoints import load_checkpoint

        from .config import Config, load_config

        device = torch.device(args.device)
        model, meta = (None, {})
        if args.checkpoint:
            model, meta = load_checkpoint(args.checkpoint, device)
        if args.config or args.set:
            cfg = load_config(args.config, args.set)
        elif meta.get("config"):
            cfg = Config.from_dict(meta["config"])
        else:
            cfg = load_config(None)
        if model is not None:
            # Crops, crop size and head model must be the network's, whatever the data config.
            cfg.model = model.config
        flame = load_head(cfg, device)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if args.dataset == "synthetic":
            from .datasets import SyntheticDataset
            from .synthetic_set import ensure_synthetic_set

            s = cfg.data.synthetic
            folder = ensure_synthetic_set(s, flame)
            n = s.n_val if args.split == "val" else s.n_train
            ds = SyntheticDataset(
                folder, args.split, n, cfg.model.input_size, cfg.model.crop_scale, 0, False, (0, 0)
            )
            results = evaluate_synthetic(
                methods,
                ds,
                flame,
                model,
                device,
                args.limit,
                args.facescape_metrics,
                progress=not args.json,
            )
            title = f"Synthetic set ({args.split}, {results['n_subjects']} subjects)"
        else:
            if model is None or not args.root:
                raise MfnetError("--dataset facescape-lab needs --checkpoint and --root")
            r = evaluate_facescape_lab(
                Path(args.root),
                model,
                flame,
                device,
                Path(cfg.data.cache_dir),
                cfg.data.landmark_backend,
                args.limit,
                progress=not args.json,
            )
            results = {"n_subjects": r["n_evaluated"], "methods": {"network": r}}
            title = "FaceScape FS-Lab"
        results["checkpoint"] = args.checkpoint
        if model is not None:
            results["network"] = {
                "backbone": model.config.backbone,
                "width": model.config.width,
                "input_size": model.config.input_size,
                "trained_steps": meta.get("step"),
            }
        text = (
            markdown_table(results, title) if args.dataset == "synthetic" else _fslab_table(results)
        )
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(results, indent=2))
            (out / "table.md").write_text(text)
            if model is not None and args.dataset == "synthetic":
                from .preview import preview_picture, write_preview

                people = [ds[i] for i in range(min(4, len(ds)))]
                write_preview(preview_picture(model, flame, people, device), out / "preview.png")
        print(json.dumps(results) if args.json else text)
        return 0
    except MfnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _fslab_table(results: dict[str, Any]) -> str:
    r = results["methods"]["network"]
    return (
        "### FaceScape FS-Lab (MFNet, three views)\n\n| method | CD (mm) | MNE (rad) | CR |\n|---|---:|---:|---:|\n"
        f"| MFNet | {r['cd_mm']:.2f} | {r['mne_rad']:.3f} | {r['cr']:.3f} |\n\n{r['n_evaluated']} tuples evaluated, {r['n_missing']} missing.\n"
    )


if __name__ == "__main__":
    sys.exit(main())
