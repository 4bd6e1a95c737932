"""The pipeline: photos -> landmarks -> multi-view fit -> texture -> result folder."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from . import __version__
from .camera import Intrinsics, to_screen
from .errors import MfnetError
from .export import (
    atomic_folder,
    build_rig,
    check_destination,
    save_png,
    write_glb,
    write_json,
    write_obj,
)
from .fitting import FitOptions, FitResult, fit_landmarks
from .flame import FLAME, FlameAssets
from .images import Photo, load_photo
from .render import rasterize, vertex_normals
from .texture import BakeView, bake_texture

StageProgress = Callable[[str, float, str], None]

# Fraction of the whole run each stage takes, for one overall progress bar.
STAGE_SPAN = {
    "photos": 0.05,
    "landmarks": 0.10,
    "fit": 0.20,
    "dense": 0.35,
    "texture": 0.20,
    "export": 0.10,
}
DENSE_TERMS = ("flow", "photo")
STAGE_ORDER = list(STAGE_SPAN)


@dataclass
class ReconstructOptions:
    device: str = "auto"
    texture_size: int = 1024
    expression_keys: int = 50
    landmark_backend: str = "dlib"
    fit: FitOptions = field(default_factory=FitOptions)
    overwrite: bool = False
    weights: Path | None = None  # trained MFNet checkpoint: start the fit from its prediction


@dataclass
class ViewInput:
    """One photo and, when already known (synthetic data, tests), its landmarks."""

    photo: Photo
    landmarks: np.ndarray | None = None  # (68,2) pixels
    label: str | None = None  # what the user called it (left/front/right)


@dataclass
class Reconstruction:
    result_dir: Path
    fit: FitResult
    view_names: list[str]
    report: dict


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MfnetError("--device cuda was asked for but PyTorch sees no CUDA GPU")
    if name not in ("cpu", "cuda"):
        raise MfnetError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


class StageTimer:
    """Timings per stage plus the overall fraction for progress reporting."""

    def __init__(self, progress: StageProgress | None) -> None:
        self.progress = progress or (lambda s, f, m: None)
        self.timings: dict[str, float] = {}
        self._done = 0.0

    @contextmanager
    def stage(self, name: str, message: str) -> Iterator[Callable[[float, str], None]]:
        start = time.perf_counter()
        base, span = self._done, STAGE_SPAN[name]
        self.progress(name, base, message)

        def sub(frac: float, msg: str) -> None:
            self.progress(name, base + span * min(max(frac, 0.0), 1.0), msg)

        yield sub
        self.timings[name] = round(time.perf_counter() - start, 4)
        self._done = base + span


def label_from_filename(path: Path | None) -> str | None:
    if path is None:
        return None
    m = re.search(r"(left|front|right|center|centre)", path.stem.lower())
    if not m:
        return None
    return {"center": "front", "centre": "front"}.get(m.group(1), m.group(1))


def name_views(yaws: np.ndarray) -> list[str]:
    """Left/front/right from fitted yaw (negative yaw: the camera sees the left cheek)."""
    n = len(yaws)
    if n == 1:
        return ["front"]
    if n == 3:
        order = np.argsort(yaws)
        names = [""] * 3
        for name, idx in zip(("left", "front", "right"), order, strict=True):
            names[idx] = name
        return names
    return [f"view{i}" for i in range(n)]


def view_warnings(
    names: list[str], yaws: np.ndarray, labels: list[str | None], files: list[str]
) -> list[str]:
    warnings = []
    for name, yaw, label, file in zip(names, yaws, labels, files, strict=True):
        if label and label != name and len(names) == 3:
            warnings.append(
                f"{file}: named '{label}' but the fitted pose says '{name}' (yaw {yaw:+.0f}°); using '{name}'"
            )
        if name in ("left", "right") and abs(yaw) < 12:
            warnings.append(
                f"{name} view ({file}): face turned only {abs(yaw):.0f}°; side views of 25-45° constrain the profile best"
            )
        if abs(yaw) > 60:
            warnings.append(
                f"{file}: face turned {abs(yaw):.0f}°; landmarks are unreliable beyond ~60°"
            )
    return warnings


def reconstruct(
    inputs: list[ViewInput],
    assets: FlameAssets,
    out_dir: Path,
    options: ReconstructOptions | None = None,
    progress: StageProgress | None = None,
) -> Reconstruction:
    """Runs the whole pipeline and writes the result folder atomically."""
    options = options or ReconstructOptions()
    if not inputs:
        raise MfnetError("no photos given")
    check_destination(Path(out_dir), options.overwrite)
    device = resolve_device(options.device)
    timer = StageTimer(progress)
    warnings: list[str] = []
    files = [v.photo.name for v in inputs]

    with timer.stage("photos", "photos loaded"):
        intrinsics = [
            Intrinsics.from_focal(v.photo.rgb.shape[1], v.photo.rgb.shape[0], v.photo.focal_px)
            for v in inputs
        ]

    with timer.stage("landmarks", "detecting landmarks") as sub:
        landmarks = []
        for i, view in enumerate(inputs):
            if view.landmarks is None:
                from .landmarks import detect_landmarks

                res = detect_landmarks(
                    view.photo, backend=options.landmark_backend, source_name=view.photo.name
                )
                warnings.extend(res.warnings)
                landmarks.append(np.asarray(res.landmarks, dtype=np.float32))
            else:
                landmarks.append(np.asarray(view.landmarks, dtype=np.float32))
            sub((i + 1) / len(inputs), f"landmarks {i + 1}/{len(inputs)}")
    lmk = np.stack(landmarks)

    flame = FLAME(assets, n_shape=options.fit.n_shape, n_expr=options.fit.n_expr).to(device)
    with timer.stage("fit", "fitting FLAME") as sub:
        init = None
        fit_options = options.fit
        if options.weights is not None:
            from dataclasses import replace

            from .fitting import INIT_ITERATIONS, INIT_OUTLIER_ROUNDS
            from .model import predict_init

            sub(0.0, "network prediction")
            init = predict_init(
                options.weights, [v.photo.rgb for v in inputs], list(lmk), flame, intrinsics, device
            )
            fit_options = replace(
                fit_options, iterations=INIT_ITERATIONS, outlier_rounds=INIT_OUTLIER_ROUNDS
            )
        fitter = fit_landmarks(flame, lmk, intrinsics, fit_options, device, progress=sub, init=init)

    dense = None
    wants_dense = [t for t in DENSE_TERMS if t in options.fit.losses]
    if "flow" in wants_dense and len(inputs) < 2:
        warnings.append("the flow term needs two or more photos; skipped for one photo")
    if wants_dense:
        from .dense_fit import DenseOptions, refine_dense

        with timer.stage("dense", "multi-view flow and photometric refinement") as sub:
            dense = refine_dense(
                fitter,
                [v.photo.rgb for v in inputs],
                DenseOptions(losses=options.fit.losses),
                progress=sub,
                view_names=[f"view{i}" for i in range(len(inputs))],
            )
    fit = fitter.result()

    yaws = fit.yaw_pitch_roll[:, 0]
    names = name_views(yaws)
    labels = [v.label or label_from_filename(v.photo.path) for v in inputs]
    warnings.extend(view_warnings(names, yaws, labels, files))

    with timer.stage("texture", "baking the texture") as sub:
        faces_t = torch.as_tensor(assets.faces, dtype=torch.long, device=device)
        verts_cam = torch.as_tensor(fit.vertices_cam, device=device)
        camera = torch.as_tensor(np.stack([k.as_vector() for k in intrinsics]), device=device)
        screen = to_screen(verts_cam, camera)
        normals = vertex_normals(verts_cam, faces_t)
        bake_views = [
            BakeView(rgb=v.photo.rgb, verts_screen=screen[i], normals_cam=normals[i], name=names[i])
            for i, v in enumerate(inputs)
        ]
        baked = bake_texture(
            bake_views,
            faces_t,
            torch.as_tensor(assets.uv.uv_coords, device=device),
            torch.as_tensor(assets.uv.uv_faces, dtype=torch.long, device=device),
            size=options.texture_size,
            progress=sub,
        )
        warnings.extend(baked.warnings)

    with timer.stage("export", "writing the result folder") as sub:
        export_start = time.perf_counter()
        params = fit.params
        rig = build_rig(
            assets,
            params,
            camera=np.stack([k.as_vector() for k in intrinsics]),
            image_size=np.array([[k.width, k.height] for k in intrinsics]),
            view_names=names,
            n_expression_keys=options.expression_keys,
        )
        report = {
            "mfnet_version": __version__,
            "model": assets.kind,
            "model_name": assets.name,
            "model_sha256": assets.sha256,
            "device": str(device),
            "views": [
                {
                    "name": names[i],
                    "file": files[i],
                    "yaw_deg": float(fit.yaw_pitch_roll[i, 0]),
                    "pitch_deg": float(fit.yaw_pitch_roll[i, 1]),
                    "roll_deg": float(fit.yaw_pitch_roll[i, 2]),
                    "focal_px": intrinsics[i].fx,
                    "focal_source": "exif" if inputs[i].photo.focal_px else "default",
                    "image_size": [intrinsics[i].width, intrinsics[i].height],
                    "landmark_residual_px": {
                        "median": float(np.median(fit.residuals_px[i])),
                        "mean": float(fit.residuals_px[i].mean()),
                        "max": float(fit.residuals_px[i].max()),
                        "per_landmark": fit.residuals_px[i].round(3).tolist(),
                    },
                    "landmarks_downweighted": int((fit.landmark_weights[i] < 0.5).sum()),
                }
                for i in range(len(inputs))
            ],
            "losses": {**fit.loss_terms, **(dense.loss_terms if dense else {})},
            "loss_terms_used": list(options.fit.losses),
            "timings_s": timer.timings,
            "warnings": warnings,
        }
        if assets.kind != "flame":
            report["warnings"].insert(
                0,
                "made with the generated test head, NOT FLAME: install FLAME for real results (mfnet doctor)",
            )
        with atomic_folder(Path(out_dir), options.overwrite) as tmp:
            np.savez_compressed(tmp / "rig.npz", **rig.arrays)
            png = save_png(tmp / "texture.png", baked.texture)
            save_png(tmp / "texture_mask.png", baked.mask)
            sub(0.3, "texture written")
            write_obj(tmp / "", fit.vertices_model, rig, "texture.png")
            write_glb(tmp / "head.glb", rig, png, n_targets=rig.expression_basis.shape[0])
            sub(0.6, "meshes written")
            for i, view in enumerate(inputs):
                overlay = make_overlay(
                    view.photo.rgb, lmk[i], fit.landmarks_px[i], screen[i], faces_t, names[i]
                )
                save_png(tmp / f"overlay_{names[i]}.png", overlay)
            if dense is not None:
                report["dense"] = {
                    "views": dense.views,
                    "pairs": dense.pairs,
                    "timings_s": dense.timings_s,
                }
                for i, view in enumerate(report["views"]):
                    view.update(
                        {k: v for k, v in dense.views[i].items() if k.startswith(("psnr", "ssim"))}
                    )
                for key, image in dense.images.items():
                    save_png(tmp / f"overlay_{_rename_views(key, names)}.png", image)
            write_json(tmp / "params.json", params_json(assets, params, names, intrinsics))
            timings = {**timer.timings, "export": round(time.perf_counter() - export_start, 4)}
            timings["total"] = round(sum(timings.values()), 4)
            report["timings_s"] = timings
            write_json(tmp / "report.json", report)
    return Reconstruction(Path(out_dir), fit, names, report)


def _rename_views(key: str, names: list[str]) -> str:
    """Dense overlays are keyed by view0..N-1 until the views are named; use the names."""
    for i in sorted(range(len(names)), reverse=True):
        key = key.replace(f"view{i}", names[i])
    return key


def params_json(
    assets: FlameAssets,
    params: dict[str, np.ndarray],
    names: list[str],
    intrinsics: list[Intrinsics],
) -> dict:
    return {
        "model": {"kind": assets.kind, "file": assets.name, "sha256": assets.sha256},
        "shape": params["shape"],
        "expression": params["expression"],
        "jaw_pose": params["jaw_pose"],
        "neck_pose": params["neck_pose"],
        "eye_pose": params["eye_pose"],
        "views": [
            {
                "name": names[i],
                "head_pose": params["head_pose"][i],
                "head_translation": params["head_translation"][i],
                "camera": {
                    "fx": k.fx,
                    "fy": k.fy,
                    "cx": k.cx,
                    "cy": k.cy,
                    "width": k.width,
                    "height": k.height,
                },
            }
            for i, k in enumerate(intrinsics)
        ],
        "units": "metres, FLAME axes (y up, face toward +z); rotations axis-angle in radians",
    }


def make_overlay(
    rgb: np.ndarray,
    detected: np.ndarray,
    fitted: np.ndarray,
    screen: torch.Tensor,
    faces: torch.Tensor,
    name: str,
) -> np.ndarray:
    """Detected vs fitted landmarks and the fitted mesh's outline over the photo."""
    from .overlay import draw_overlay

    h, w = rgb.shape[:2]
    frags = rasterize(screen, faces, h, w)
    mask = (frags.face_index >= 0).cpu().numpy().astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outline = [c[:, 0, :].astype(np.float32) for c in contours]
    res = np.linalg.norm(fitted - detected, axis=1)
    title = f"{name}: median landmark error {np.median(res):.1f} px"
    return draw_overlay(rgb, detected, fitted, outline_px=outline, title=title)


def load_inputs(paths: list[Path], labels: list[str] | None = None) -> list[ViewInput]:
    """Reads the photos (clear errors per file) and attaches user labels."""
    if labels is not None and len(labels) != len(paths):
        raise MfnetError(f"--views names {len(labels)} views but {len(paths)} photos were given")
    return [
        ViewInput(photo=load_photo(p), label=(labels[i] if labels else None))
        for i, p in enumerate(paths)
    ]
