"""The pipeline: photos -> landmarks -> multi-view fit -> texture -> result folder."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from mfnet_core import __version__
from mfnet_core.camera import Intrinsics, to_screen
from mfnet_core.errors import MfnetError
from mfnet_core.fit.dense import (
    DenseOptions,
    DenseReport,
    DenseRounds,
    dense_report,
    run_dense_rounds,
)
from mfnet_core.fit.flow import FlowOptions, estimate_flow, face_faces
from mfnet_core.fit.landmark_fit import (
    INIT_ITERATIONS,
    INIT_OUTLIER_ROUNDS,
    FitOptions,
    FitResult,
    MultiViewFitter,
    fit_landmarks,
)
from mfnet_core.fit.metric_scale import MetricScale, metric_scale_from_irises
from mfnet_core.fit.photometric import QUALITY_TEX_SIZE, uv_texels, view_quality
from mfnet_core.fit.plan import check_flow_estimator, plan_losses
from mfnet_core.fit.solver import one_thread
from mfnet_core.head.interface import HeadModel
from mfnet_core.inputs.face_identity import (
    DescriptorJob,
    IdentityCheck,
    check_identity,
    different_people_warnings,
    identity_section,
)
from mfnet_core.inputs.images import Photo
from mfnet_core.inputs.landmarks import detect_landmarks
from mfnet_core.network.checkpoints import load_checkpoint
from mfnet_core.network.predict import predict_init
from mfnet_core.outputs.albedo import head_skin_faces
from mfnet_core.outputs.arkit_keys import arkit_key_arrays, needs_arkit_keys
from mfnet_core.outputs.report import (
    consistency_warnings,
    dense_pictures,
    dense_section,
    expression_disagreement,
    make_overlay,
    params_json,
    rerender_picture,
    view_report,
)
from mfnet_core.outputs.result_folder import (
    BackgroundWrites,
    OutputClaim,
    atomic_folder,
    build_rig,
    claim_destination,
    estimate_result_bytes,
    save_npz,
    save_png,
    write_glb,
    write_json,
    write_obj,
)
from mfnet_core.outputs.texture import BakeView, bake_texture, uv_layout
from mfnet_core.outputs.view_names import (
    label_from_filename,
    name_views,
    view_labels,
    view_warnings,
)
from mfnet_core.render import vertex_normals

StageProgress = Callable[[str, float, str], None]
T = TypeVar("T")

# Fraction of the whole run each stage takes, for one overall progress bar.
STAGE_SPAN = {
    "photos": 0.05,
    "landmarks": 0.10,
    "fit": 0.20,
    "dense": 0.25,
    # these two run in a second thread beside "texture" (the bar follows the texture)
    "identity": 0.0,  # do the photos show one person (face descriptors)
    "quality": 0.0,  # PSNR / SSIM re-render when no dense term ran (else part of "dense")
    "texture": 0.28,
    "export": 0.12,
}
STAGE_ORDER = list(STAGE_SPAN)


@dataclass
class ReconstructOptions:
    device: str = "auto"
    texture_size: int = 1024
    expression_keys: int | None = None  # None: every expression key the model has
    landmark_backend: str = "auto"  # MediaPipe when installed, else dlib
    fit: FitOptions = field(default_factory=FitOptions)
    # the dense stages' knobs (flow estimator, rounds...); which terms run follows fit.losses
    dense: DenseOptions = field(default_factory=DenseOptions)
    overwrite: bool = False
    weights: Path | None = None  # trained MFNet checkpoint: start the fit from its prediction
    # ARKit-named keys (the ICT model's, transferred) for models whose keys are PCA components
    arkit_keys: bool = True
    # the head's real size: "iris" (the photos' irises, 11.7 mm, when the landmark detector
    # sees them; else as "model") or "model" (what the shape model infers from proportions)
    size_from: str = "iris"
    # texture.png: "albedo" (the photos' light divided out: relights), "shaded" (the photos'
    # colours as they are) or "both" (albedo, plus texture_shaded.png: a second blend pass)
    texture: str = "albedo"


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
        self.started = time.perf_counter()

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


def check_flow_options(flow: FlowOptions) -> None:
    """Refuses a flow estimator that cannot run before any work is done."""
    check_flow_estimator(flow.method, flow.raft_weights)


def probe_raft(flow: FlowOptions) -> None:
    """Runs RAFT once on a small blank image with the user's weights, so a wrong file or a
    missing torchvision fails in one line before the fit; flow.py caches the loaded model,
    so the dense stage does not load it again."""
    blank = np.zeros((128, 128), np.uint8)
    try:
        estimate_flow(blank, blank, "raft", raft_weights=flow.raft_weights)
    except MfnetError:
        raise
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        detail = lines[0][:200] if lines else type(exc).__name__
        raise MfnetError(
            f"--raft-weights {flow.raft_weights}: not a usable RAFT-large state dict ({detail})"
        ) from exc


def measure_quality(
    fitter: MultiViewFitter, photos: list[np.ndarray], dense: DenseOptions
) -> list[dict]:
    """Per-view PSNR / SSIM of the re-rendered face against the photo inside the face mask,
    for runs without dense terms: the dense report's own measure (`view_quality`, same
    resolution), so numbers compare across --losses, without its flow estimation."""
    head = fitter.head
    face_tri = face_faces(head.faces.cpu().numpy(), head.face_region)
    return view_quality(fitter, photos, dense.report_size, face_tri)


def _warm_up(head: HeadModel, texture_size: int, arkit_keys: bool) -> None:
    """Loads and makes what later stages need whatever the fit gives: the head's UV layout
    rasterised for the texture and for the report's albedo, the texture's graph library and,
    for models whose keys ICT's ARKit keys replace, ICT's source mesh (1.3 s). Errors are
    left for those stages to raise in their own words. (The identity check's model loads
    in its own process: `DescriptorJob`.)"""
    try:
        uv_layout(head.faces, head.uv.uv_coords, head.uv.uv_faces, texture_size)
        faces = head.faces.detach().cpu().numpy()
        uv_texels(faces, head.uv.uv_coords, head.uv.uv_faces, QUALITY_TEX_SIZE)
        import scipy.sparse.csgraph  # noqa: F401  (the texture's face components)

        if arkit_keys and needs_arkit_keys(head):
            from mfnet_core.head.key_transfer import ict_source

            ict_source()
    except Exception:  # noqa: BLE001 - the stage that needs it reports it
        return


def _timed(work: Callable[..., T], *args: object) -> tuple[T, float]:
    """work(*args) and the seconds it took (work run in a thread: no stage timer there)."""
    start = time.perf_counter()
    return work(*args), time.perf_counter() - start


def _report_and_identity(
    fitter: MultiViewFitter,
    photos: list[np.ndarray],
    rounds: DenseRounds | None,
    dense_options: DenseOptions,
    lmk: np.ndarray,
    yaws: np.ndarray,
    descriptors: DescriptorJob | None,
) -> tuple[DenseReport | None, list[dict], IdentityCheck, dict[str, float]]:
    """The work that needs only the final fit: the dense report (or, without dense terms,
    the PSNR / SSIM re-render) and the same-person check. Returns them and their seconds by
    stage name. Runs beside the texture bake; reports no progress (one bar, one thread)."""
    seconds: dict[str, float] = {}
    dense, quality = None, []
    if rounds is not None:
        dense, seconds["dense"] = _timed(dense_report, fitter, photos, rounds)
    else:
        quality, seconds["quality"] = _timed(measure_quality, fitter, photos, dense_options)
    identity, seconds["identity"] = _timed(check_identity, photos, lmk, yaws, descriptors)
    return dense, quality, identity, seconds


def reconstruct(
    inputs: list[ViewInput],
    head: HeadModel,
    out_dir: Path,
    options: ReconstructOptions | None = None,
    progress: StageProgress | None = None,
) -> Reconstruction:
    """Runs the whole pipeline and writes the result folder atomically.

    `head` is any head model (`head.registry.load_head_model`); it is moved to the run's
    device in place. The components it keeps are the ones the fit frees. `out_dir` is
    claimed (checked, locked) before any work starts and held until the result is in place."""
    options = options or ReconstructOptions()
    for name, value, allowed in (
        ("texture", options.texture, ("albedo", "shaded", "both")),
        ("size_from", options.size_from, ("iris", "model")),
    ):
        if value not in allowed:
            raise MfnetError(f"{name} {value!r}: use one of {', '.join(allowed)}")
    if not inputs:
        raise MfnetError("no photos given")
    sizes = [v.photo.rgb.shape[1::-1] for v in inputs]
    if options.expression_keys is None:
        options = replace(options, expression_keys=head.n_expr)
    needed = estimate_result_bytes(
        head.n_vertices,
        options.expression_keys,
        options.texture_size,
        sizes,
        textures=2 if options.texture == "both" else 1,
    )
    photos = [v.photo.path for v in inputs if v.photo.path is not None]
    with (
        claim_destination(
            Path(out_dir), options.overwrite, protect=photos, needed_bytes=needed
        ) as claim,
        ExitStack() as cleanup,
    ):
        return _reconstruct(inputs, head, out_dir, options, progress, claim, cleanup)


def _reconstruct(
    inputs: list[ViewInput],
    head: HeadModel,
    out_dir: Path,
    options: ReconstructOptions,
    progress: StageProgress | None,
    claim: OutputClaim,
    cleanup: ExitStack,
) -> Reconstruction:
    plan = plan_losses(options.fit.losses, len(inputs))
    losses, skipped = plan.used, plan.skipped
    check_flow_options(options.dense.flow)
    if plan.uses("flow") and options.dense.flow.method == "raft":
        probe_raft(options.dense.flow)
    device = resolve_device(options.device)
    timer = StageTimer(progress)
    warnings = [f"{term} term skipped: {why}" for term, why in skipped.items()]
    files = [v.photo.name for v in inputs]
    photos = [v.photo.rgb for v in inputs]

    warm = threading.Thread(
        target=_warm_up,
        args=(head, options.texture_size, options.arkit_keys),
        name="mfnet-warm-up",
        daemon=True,
    )
    warm.start()  # beside the landmarks and the fit, which keep one core busy

    with timer.stage("photos", "photos loaded"):
        intrinsics = [
            Intrinsics.from_focal(v.photo.rgb.shape[1], v.photo.rgb.shape[0], v.photo.focal_px)
            for v in inputs
        ]

    with timer.stage("landmarks", "detecting landmarks") as sub:
        landmarks, pose_hints, detectors, irises = [], [], [], []
        for i, view in enumerate(inputs):
            if view.landmarks is None:
                res = detect_landmarks(
                    view.photo, backend=options.landmark_backend, source_name=view.photo.name
                )
                warnings.extend(res.warnings)
                landmarks.append(np.asarray(res.landmarks, dtype=np.float32))
                pose_hints.append(res.pose_hint)
                detectors.append(res.detector or res.backend)
                irises.append(res.iris)
            else:
                landmarks.append(np.asarray(view.landmarks, dtype=np.float32))
                pose_hints.append("")
                detectors.append("given")
                irises.append(None)
            sub((i + 1) / len(inputs), f"landmarks {i + 1}/{len(inputs)}")
    lmk = np.stack(landmarks)
    # the same-person check's descriptors, in a process of their own beside the fit
    descriptors = cleanup.enter_context(DescriptorJob(photos, lmk)) if len(inputs) > 1 else None

    head = head.to(device)
    with timer.stage("fit", f"fitting the {head.kind}") as sub:
        fitter, fit_start = _landmark_fit(head, photos, lmk, intrinsics, options, device, sub)
        size = measure_size(fitter, irises, intrinsics)
        size_applied = options.size_from == "iris" and size.factor is not None
        if size_applied:
            sub(0.9, f"metric size from the irises: x{size.factor:.3f}")
            head, fitter = _rescale_fit(head, fitter, size.factor)

    # Views are named from the landmark fit's yaw, before the dense stages, so that their
    # pictures carry the names (the dense stages move the yaws by a few degrees at most).
    names = name_views(fitter.contour_yaw().cpu().numpy())
    labels = view_labels(names, files)
    dense_rounds = None
    dense_terms = plan.dense_terms
    if dense_terms:
        with timer.stage("dense", f"dense refinement ({', '.join(dense_terms)})") as sub:
            dense_opts = replace(options.dense, losses=losses)
            dense_rounds = run_dense_rounds(fitter, photos, dense_opts, sub, view_names=labels)
    fit = fitter.result()
    yaws = fit.yaw_pitch_roll[:, 0]

    # The fit is final: the dense report, the PSNR / SSIM re-render and the same-person check
    # read only it and the photos, so they run in a second thread while this one bakes the
    # texture (both cores busy; their seconds count under their own stages).
    timer.timings.update({"identity": 0.0} if dense_terms else {"quality": 0.0, "identity": 0.0})
    cameras = np.stack([k.as_vector() for k in intrinsics])  # (N,4) at the photos' size
    rig = build_rig(
        head,
        fit.params,
        camera=cameras,
        image_size=np.array([[k.width, k.height] for k in intrinsics]),
        view_names=names,
        n_expression_keys=options.expression_keys,
    )
    warm.join()
    with ThreadPoolExecutor(max_workers=2) as pool, one_thread():
        beside = pool.submit(
            _report_and_identity,
            fitter,
            photos,
            dense_rounds,
            options.dense,
            lmk,
            yaws,
            descriptors,
        )
        # models whose keys are PCA components get ICT's ARKit keys (a non-rigid fit of
        # ICT's face to the rest mesh: 2 s), beside the texture too
        arkit = None
        if options.arkit_keys and needs_arkit_keys(head):
            arkit = pool.submit(_timed, arkit_key_arrays, head, rig.arrays)
        with timer.stage("texture", "baking the texture") as sub:
            faces_t = head.faces
            verts_cam = torch.as_tensor(fit.vertices_cam, device=device)
            camera = torch.as_tensor(cameras, device=device)
            screen = to_screen(verts_cam, camera)
            normals = vertex_normals(verts_cam, faces_t)
            bake_views = [
                BakeView(
                    rgb=v.photo.rgb, verts_screen=screen[i], normals_cam=normals[i], name=names[i]
                )
                for i, v in enumerate(inputs)
            ]
            baked = bake_texture(
                bake_views,
                faces_t,
                torch.as_tensor(head.uv.uv_coords, device=device),
                torch.as_tensor(head.uv.uv_faces, dtype=torch.long, device=device),
                size=options.texture_size,
                progress=sub,
                face_paint=head.parts.face_paint(),
                occluders=head.parts.opaque(min_alpha=1.0),
                strand_faces=head.parts.strand_faces(),
                skin_faces=(
                    None
                    if options.texture == "shaded"
                    else head_skin_faces(head, fit.vertices_model)
                ),
                keep_shaded=options.texture == "both",
            )
        dense, quality, identity, beside_s = beside.result()
        if arkit is not None:
            arkit_arrays, beside_s["arkit_keys"] = arkit.result()
            rig.arrays.update(arkit_arrays)
    for stage, seconds in beside_s.items():
        timer.timings[stage] = round(timer.timings.get(stage, 0.0) + seconds, 4)

    pictures: dict[str, np.ndarray] = {}
    if dense is not None and dense.views:
        quality = dense.views
        if options.dense.images:
            pictures = dense_pictures(dense, labels, names)
    else:
        for i, q in enumerate(quality):
            picture = q.pop("image", None)
            if options.dense.images and picture is not None:
                pictures[f"rerender_{names[i]}"] = rerender_picture(picture, labels[i], q)

    given = [v.label or label_from_filename(v.photo.path) for v in inputs]
    warnings.extend(view_warnings(names, yaws, given, files, pose_hints))
    warnings.extend(consistency_warnings(lmk, fit.residuals_px, names))
    warnings.extend(
        different_people_warnings(
            identity, [f"{f} ({n} view)" for n, f in zip(names, files, strict=True)]
        )
    )
    if len(inputs) == 1:
        warnings.append(
            "one photo: PSNR/SSIM compare the re-render with the photo the texture came from, "
            "so they say little about the head's quality"
        )
    warnings.extend(
        expression_disagreement(fit.params["view_expression"], names, head.expression_space.names)
    )
    warnings.extend(baked.warnings)

    with timer.stage("export", "writing the result folder") as sub:
        export_start = time.perf_counter()
        params = fit.params
        report = {
            "mfnet_version": __version__,
            "model": head.info.kind,
            "model_name": head.info.name,
            "model_sha256": head.info.sha256,
            "device": str(device),
            "views": [
                {
                    **view_report(fit, i, names[i], files[i], intrinsics[i], inputs[i].photo),
                    "landmarks_from": detectors[i],
                    **{k: v for k, v in quality[i].items() if k.startswith(("psnr", "ssim"))},
                }
                for i in range(len(inputs))
            ],
            "losses": {**fit.loss_terms, **(dense.loss_terms if dense else {})},
            "loss_terms_requested": list(options.fit.losses),
            "loss_terms_used": list(losses),
            "loss_terms_skipped": skipped,
            "fit_start": fit_start,
            "same_person_check": identity_section(identity, names),
            "metric_size": {
                **size.to_json(),
                "applied": size_applied,
            },
            # PSNR/SSIM re-render the photos the texture was baked from: a consistency
            # check of the fit, not a measure of quality at views no photo saw
            "quality_measured_on": "the input photos (the texture's own source)",
            "timings_s": timer.timings,
            "warnings": warnings,
            "texture_lighting": [light.as_json() for light in baked.lighting or []],
        }
        if dense is not None:
            report["dense"] = dense_section(dense, labels, names, options.dense.flow)
        if head.kind == "test-head":
            report["warnings"].insert(
                0,
                "made with the generated test head, NOT FLAME: install FLAME for real results (mfnet doctor)",
            )
        with atomic_folder(claim) as tmp, BackgroundWrites() as writes:
            # the PNGs and rig.npz compress on worker threads while this one writes the
            # meshes; texture.png first (head.glb embeds it), then the overlays (their mesh
            # outlines come from the bake's z-buffers)
            rgba = baked.texture if baked.alpha is None else np.dstack([baked.texture, baked.alpha])
            png = writes.submit(save_png, tmp / "texture.png", rgba)

            def overlays() -> None:
                for i, view in enumerate(inputs):
                    overlay = make_overlay(
                        view.photo.rgb, lmk[i], fit.landmarks_px[i], baked.outlines[i], labels[i]
                    )
                    save_png(tmp / f"overlay_{names[i]}.png", overlay)

            writes.submit(overlays)
            writes.submit(save_npz, tmp / "rig.npz", rig.arrays)
            writes.submit(save_png, tmp / "texture_mask.png", baked.mask)
            if baked.texture_shaded is not None:
                shaded = baked.texture_shaded
                alpha = [] if baked.alpha is None else [baked.alpha]
                writes.submit(save_png, tmp / "texture_shaded.png", np.dstack([shaded, *alpha]))
            for key, image in pictures.items():
                writes.submit(save_png, tmp / f"overlay_{key}.png", image)
            write_obj(tmp / "", fit.vertices_model, rig, "texture.png")
            sub(0.3, "head.obj written")
            write_glb(tmp / "head.glb", rig, png.result(), n_targets=rig.expression_basis.shape[0])
            sub(0.6, "head.glb written")
            writes.wait()
            write_json(
                tmp / "params.json",
                {
                    **params_json(
                        head.info, params, names, intrinsics, head.expression_space.names
                    ),
                    # the model's arrays were multiplied by this (report.json "metric_size")
                    "model_scale": head.scale,
                },
            )
            timings = {**timer.timings, "export": round(time.perf_counter() - export_start, 4)}
            # wall time: the dense report and the identity check run beside the texture bake,
            # so the stages' seconds add up to more than this
            timings["total"] = round(time.perf_counter() - timer.started, 4)
            report["timings_s"] = timings
            write_json(tmp / "report.json", report)
    return Reconstruction(Path(out_dir), fit, names, report)


def measure_size(
    fitter: MultiViewFitter, irises: list[np.ndarray | None], intrinsics: list[Intrinsics]
) -> MetricScale:
    """How much bigger the fitted head is in reality, from the views' irises."""
    if all(i is None for i in irises):
        return MetricScale(None, reason="no iris detected (the MediaPipe landmarks see them)")
    fit = fitter.result()
    with torch.no_grad():
        verts = torch.as_tensor(fit.vertices_cam, dtype=torch.float32)
        # the eyes' points are fixed on the surface: any yaw gives the same ones
        lm_cam = fitter.head.landmarks_3d(verts.to(fitter.device), 0.0).cpu().numpy()
    focal = np.array([k.as_vector()[0] for k in intrinsics])
    return metric_scale_from_irises(
        irises, lm_cam, fit.landmarks_px, focal, fit.yaw_pitch_roll[:, 0]
    )


def _rescale_fit(
    head: HeadModel, fitter: MultiViewFitter, factor: float
) -> tuple[HeadModel, MultiViewFitter]:
    """The model made `factor` times bigger and the fit carried over to it (the same
    projections: `MultiViewFitter.rescaled`)."""
    scaled = head.rescaled(factor)
    return scaled, fitter.rescaled(scaled, factor)


def _landmark_fit(
    head: HeadModel,
    photos: list[np.ndarray],
    lmk: np.ndarray,
    intrinsics: list[Intrinsics],
    options: ReconstructOptions,
    device: torch.device,
    sub: Callable[[float, str], None],
) -> tuple[MultiViewFitter, dict]:
    """The landmark fit, started from the trained network's prediction when weights are given
    (a shorter schedule then: the start is already close). Also returns report.json's
    "fit_start": where the fit began, so a result says whether a network was used."""
    if options.weights is None:
        fitter = fit_landmarks(head, lmk, intrinsics, options.fit, device, progress=sub)
        return fitter, {"from": "pnp"}
    sub(0.0, "network prediction")
    model, meta = load_checkpoint(options.weights, device)
    init = predict_init(model, photos, list(lmk), head, intrinsics, device)
    fit_options = replace(
        options.fit, iterations=INIT_ITERATIONS, outlier_rounds=INIT_OUTLIER_ROUNDS
    )
    fitter = fit_landmarks(head, lmk, intrinsics, fit_options, device, progress=sub, init=init)
    c = model.config
    start = {
        "from": "network",
        "weights": str(options.weights),
        "network": {"backbone": c.backbone, "n_views": c.n_views, "input_size": c.input_size},
        "trained_steps": meta.get("step"),
        "iterations": list(INIT_ITERATIONS),
    }
    return fitter, start
