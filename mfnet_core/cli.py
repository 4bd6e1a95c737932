"""`mfnet reconstruct | demo | doctor`: progress bars for people, JSON lines for programs.

Starts fast: `--help`, `--version`, argument errors and missing or broken photos answer
before torch, OpenCV or dlib are imported (they take seconds to load); the heavy modules
are imported by the command that needs them, after its inputs are checked.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mfnet_core import __version__
from mfnet_core.errors import MfnetError
from mfnet_core.fit.plan import DEFAULT_LOSSES, LOSS_TERMS, check_flow_estimator, parse_losses

if TYPE_CHECKING:
    from mfnet_core.fit.dense import DenseOptions
    from mfnet_core.fit.landmark_fit import FitOptions
    from mfnet_core.head.interface import HeadModel
    from mfnet_core.reconstruct import ViewInput

MODEL_CHOICES = ("auto", "ict", "flame", "test-head")  # mfnet_core.head.registry.MODEL_KINDS

ProgressFn = Callable[[str, float, str], None]


class ProgressPrinter:
    """One overall bar (tqdm) on stderr, or JSON lines on stdout, or nothing."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._bar = None

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        if self.mode == "jsonl":
            line = {"stage": stage, "fraction": round(float(fraction), 4), "message": message}
            print(json.dumps(line), flush=True)
        elif self.mode == "bar":
            from tqdm import tqdm

            if self._bar is None:
                self._bar = tqdm(
                    total=100, unit="%", file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed}"
                )
            self._bar.set_description(f"{stage}: {message}"[:60].ljust(60))
            self._bar.n = int(round(fraction * 100))
            self._bar.refresh()

    def done(self, **fields: object) -> None:
        if self._bar is not None:
            self._bar.n = 100
            self._bar.refresh()
            self._bar.close()
            self._bar = None
        if self.mode == "jsonl":
            print(json.dumps({"stage": "done", "fraction": 1.0, **fields}, default=str), flush=True)

    def error(self, message: str) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.mode == "jsonl":
            print(json.dumps({"stage": "error", "message": message}), flush=True)


def _check_arguments(args: argparse.Namespace) -> None:
    """Every argument check that needs no heavy import, so mistakes answer at once."""
    parse_losses(args.losses)
    check_flow_estimator(args.flow_method, args.raft_weights)


def _fit_options(args: argparse.Namespace) -> FitOptions:
    from mfnet_core.fit.landmark_fit import FitOptions

    return FitOptions(losses=parse_losses(args.losses))


def _dense_options(args: argparse.Namespace) -> DenseOptions:
    from mfnet_core.fit.dense import DenseOptions
    from mfnet_core.fit.flow import FlowOptions

    return DenseOptions(flow=FlowOptions(method=args.flow_method, raft_weights=args.raft_weights))


def _load_head(args: argparse.Namespace) -> HeadModel:
    from mfnet_core.head.registry import load_head_model

    return load_head_model(args.model, Path(args.flame) if args.flame else None)


def _load_photos(args: argparse.Namespace) -> list[ViewInput]:
    """Photos are read (and refused with one line) before torch is imported."""
    from mfnet_core.inputs.images import load_photo

    labels = args.views.split(",") if args.views else None
    if labels is not None and len(labels) != len(args.photos):
        raise MfnetError(
            f"--views names {len(labels)} views but {len(args.photos)} photos were given"
        )
    photos = [load_photo(p) for p in args.photos]
    from mfnet_core.reconstruct import ViewInput

    return [ViewInput(photo=ph, label=labels[i] if labels else None) for i, ph in enumerate(photos)]


def cmd_reconstruct(args: argparse.Namespace, progress: ProgressPrinter) -> dict:
    _check_arguments(args)
    inputs = _load_photos(args)
    from mfnet_core.reconstruct import ReconstructOptions, reconstruct

    head = _load_head(args)
    options = ReconstructOptions(
        device=args.device,
        texture_size=args.texture_size,
        expression_keys=args.expressions,
        landmark_backend=args.landmarks,
        fit=_fit_options(args),
        dense=_dense_options(args),
        overwrite=args.overwrite,
        weights=Path(args.weights) if args.weights else None,
    )
    rec = reconstruct(inputs, head, Path(args.output), options, progress=progress)
    return {
        "result_dir": str(rec.result_dir),
        "model": head.kind,
        "views": rec.view_names,
        "seconds": rec.report["timings_s"]["total"],
        "loss_terms_used": rec.report["loss_terms_used"],
        "warnings": rec.report["warnings"],
    }


def cmd_demo(args: argparse.Namespace, progress: ProgressPrinter) -> dict:
    start = time.perf_counter()
    _check_arguments(args)
    import numpy as np

    from mfnet_core.metrics import vertex_error_mm
    from mfnet_core.reconstruct import ReconstructOptions, ViewInput, reconstruct
    from mfnet_core.synthetic import make_subject, procedural_texture

    head = _load_head(args)
    progress("demo", 0.0, f"rendering 3 synthetic photos of the {head.kind}")
    options = ReconstructOptions(
        device=args.device,
        texture_size=args.texture_size,
        overwrite=args.overwrite,
        fit=_fit_options(args),
        dense=_dense_options(args),
    )
    texture = procedural_texture(head, size=512, seed=args.seed)
    subject = make_subject(
        head, texture, seed=args.seed, image_size=args.image_size, landmark_noise_px=args.noise_px
    )
    inputs = [
        ViewInput(photo=v.photo, landmarks=v.landmarks_noisy, label=name)
        for v, name in zip(subject.views, ("left", "front", "right"), strict=True)
    ]
    out = (
        Path(args.output)
        if args.output
        else Path(tempfile.mkdtemp(prefix="mfnet-demo-")) / "result"
    )
    rec = reconstruct(inputs, head, out, options, progress=progress)
    err = vertex_error_mm(rec.fit.vertices_model, subject.vertices_true, head.face_region)
    return {
        "model": head.kind,
        "views": rec.view_names,
        "seconds": round(time.perf_counter() - start, 3),
        "reconstruct_seconds": rec.report["timings_s"]["total"],
        "median_vertex_error_mm": round(float(np.median(err)), 4),
        "landmark_noise_px": args.noise_px,
        "landmarks": "ground-truth projections plus noise (the demo skips the detector)",
        "result_dir": str(rec.result_dir),
    }


def cmd_doctor(args: argparse.Namespace, progress: ProgressPrinter) -> dict:
    from mfnet_core.doctor import doctor_report

    return doctor_report(Path(args.flame) if args.flame else None)


def _print_doctor(report: dict) -> None:
    for item in report.get("items", []):
        mark = "ok " if item.get("ok") else ("-- " if item.get("optional") else "!! ")
        print(f"{mark}{item['name']}: {item['detail']}")
        if not item.get("ok") and item.get("fix"):
            print(f"    -> {item['fix']}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mfnet", description="Photos in, a fitted, rigged head out.")
    p.add_argument("--version", action="version", version=f"mfnet {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--model",
            default="auto",
            choices=MODEL_CHOICES,
            help="head model: auto (FLAME when installed, else the shipped ICT Face Model), ict, flame, test-head (fast, not human)",
        )
        sp.add_argument(
            "--flame", help="FLAME model file (.pkl); default: MFNET_FLAME_MODEL or the data folder"
        )
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        sp.add_argument("--progress", default="bar", choices=["bar", "jsonl", "none"])
        sp.add_argument("--texture-size", type=int, default=1024, choices=[512, 1024, 2048, 4096])
        sp.add_argument(
            "--losses",
            default=",".join(DEFAULT_LOSSES),
            help=f"comma list from {','.join(LOSS_TERMS)} (flow needs 2+ photos; photo is opt-in)",
        )
        sp.add_argument(
            "--flow-method",
            default="dis",
            choices=["dis", "raft"],
            help="optical flow for the flow term: dis (OpenCV, default) or raft (needs --raft-weights)",
        )
        sp.add_argument(
            "--raft-weights",
            metavar="PATH",
            help="local RAFT-large state dict (torchvision layout) for --flow-method raft; never downloaded",
        )
        sp.add_argument(
            "--overwrite", action="store_true", help="replace an existing result folder"
        )
        sp.add_argument("--json", action="store_true", help="print one JSON summary at the end")

    r = sub.add_parser("reconstruct", help="photos -> result folder")
    r.add_argument("photos", nargs="+", help="1 to N photos of one person (left, front, right)")
    r.add_argument("-o", "--output", required=True, help="result folder to create")
    r.add_argument(
        "--views",
        help="names for the photos in order, e.g. left,front,right (checked against the fit)",
    )
    r.add_argument("--expressions", type=int, default=50, help="expression shape keys to export")
    r.add_argument("--landmarks", default="dlib", choices=["dlib", "face-alignment"])
    r.add_argument(
        "--weights", help="trained MFNet checkpoint (training/): start the fit from the network"
    )
    common(r)

    d = sub.add_parser(
        "demo", help="reconstruct 3 synthetic photos of the available head and report the error"
    )
    d.add_argument("-o", "--output", help="result folder (default: a new temp folder)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--image-size", type=int, default=1024)
    d.add_argument("--noise-px", type=float, default=1.0, help="landmark noise in pixels")
    common(d)

    doc = sub.add_parser("doctor", help="what is installed, what is missing, where to get it")
    doc.add_argument("--flame")
    doc.add_argument("--json", action="store_true")
    return p


def _cancel_on_sigint() -> None:
    """Ctrl-C / the add-on's Cancel (SIGINT) must stop a run even when the parent process
    ignores SIGINT: Python keeps an inherited SIG_IGN instead of raising KeyboardInterrupt
    (background jobs of a shell, some launchers), and the run would finish anyway."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    _cancel_on_sigint()
    args = build_parser().parse_args(argv)
    mode = getattr(args, "progress", "none")
    if getattr(args, "json", False) and mode == "bar":
        mode = "none"
    progress = ProgressPrinter(mode)
    handlers = {"reconstruct": cmd_reconstruct, "demo": cmd_demo, "doctor": cmd_doctor}
    try:
        summary = handlers[args.command](args, progress)
    except MfnetError as e:
        progress.error(str(e))
        print(f"mfnet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.error("cancelled")
        print("mfnet: cancelled; nothing was written", file=sys.stderr)
        return 130
    if args.command == "doctor":
        if args.json:
            print(json.dumps(summary, indent=2, default=str))
        else:
            _print_doctor(summary)
        return 0 if summary.get("ok", True) else 1
    progress.done(**summary)
    if args.json:
        print(json.dumps(summary, default=str))
    elif mode != "jsonl":
        for w in summary.get("warnings", []):
            print(f"warning: {w}", file=sys.stderr)
        print(f"result: {summary['result_dir']}  (model: {summary['model']})")
        if "median_vertex_error_mm" in summary:
            print(f"median face vertex error: {summary['median_vertex_error_mm']:.3f} mm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
