"""`mfnet reconstruct | demo | track | doctor`: progress bars for people, JSON lines for programs.

Starts fast: `--help`, `--version`, argument errors (out-of-range numbers included),
missing or broken photos and an output folder that cannot or must not be written answer
before torch, OpenCV or dlib are imported (they take seconds to load); the heavy modules
are imported by the command that needs them, after its inputs are checked.

SIGINT, SIGTERM and SIGHUP end a run at any point with exit code 128 + the signal's number
and one line on stderr; the result folder is then either the old one or the new one, whole
(mfnet_core.outputs.result_folder), and the line says which.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
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

INTERRUPT_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT, SIGTERM or SIGHUP (a KeyboardInterrupt, so that
    every clean-up that handles Ctrl-C handles them too)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """The interrupt this run received (None: none) and whether handlers still raise."""

    received: int | None = None
    raising = False


def _on_signal(signum: int, frame: object) -> None:
    if _Signals.received is None:
        _Signals.received = signum
    if _Signals.raising:
        raise Interrupted(signum)


def _install_signal_handlers() -> dict[int, object]:
    """Handlers for SIGINT, SIGTERM, SIGHUP; returns the previous ones.

    Also when the parent ignores SIGINT: Python keeps an inherited SIG_IGN instead of raising
    KeyboardInterrupt (background jobs of a shell, some launchers), and a run cancelled by
    Ctrl-C or the add-on's Cancel would finish anyway. A SIGHUP ignored by `nohup` stays
    ignored."""
    _Signals.received = None
    _Signals.raising = True
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, object] = {}
    for name in INTERRUPT_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        handler = signal.getsignal(signum)
        if name == "SIGHUP" and handler == signal.SIG_IGN:
            continue
        previous[signum] = handler
        signal.signal(signum, _on_signal)
    return previous


def _restore_signal_handlers(previous: dict[int, object]) -> None:
    _Signals.raising = False
    for signum, handler in previous.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # type: ignore[arg-type]


def _raise_if_interrupted() -> None:
    """An interrupt that a library swallowed (pybind11 turns one raised while `import dlib`
    initialises into an ImportError) still ends the run at the next progress report."""
    if _Signals.received is not None and _Signals.raising:
        raise Interrupted(_Signals.received)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class ProgressPrinter:
    """One overall bar (tqdm) on stderr, or JSON lines on stdout, or nothing."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._bar = None

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        _raise_if_interrupted()
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


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    """argparse type: a whole number from lo to hi."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, not {value}")
        return value

    return parse


def _float_in(lo: float, hi: float) -> Callable[[str], float]:
    """argparse type: a finite number from lo to hi."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and lo <= value <= hi):
            raise argparse.ArgumentTypeError(f"must be from {lo:g} to {hi:g}, not {text}")
        return value

    return parse


def _neutral_arg(text: str) -> str | int:
    """argparse type of `track --neutral`: auto, none or a frame number."""
    if text in ("auto", "none"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give auto, none or a frame number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a frame number is 0 or more, not {value}")
    return value


def _check_arguments(args: argparse.Namespace) -> None:
    """Every argument check that needs no heavy import, so mistakes answer at once."""
    parse_losses(args.losses)
    check_flow_estimator(args.flow_method, args.raft_weights)


def _check_output(
    args: argparse.Namespace, photos: list[Path], sizes: list[tuple[int, int]]
) -> None:
    """The output folder, before torch loads: not a symlink, not taken (or an mfnet result
    with --overwrite), not the photos' or the current folder, in a writable place. The run
    claims (locks) it when it starts, with the same checks and a free-space estimate."""
    if not getattr(args, "output", None):
        return
    from mfnet_core.outputs.result_folder import check_destination, estimate_result_bytes

    needed = estimate_result_bytes(0, 0, args.texture_size, sizes)
    check_destination(Path(args.output), args.overwrite, protect=photos, needed_bytes=needed)


def _fit_options(args: argparse.Namespace) -> FitOptions:
    from mfnet_core.fit.landmark_fit import FitOptions

    return FitOptions(
        losses=parse_losses(args.losses),
        shared_expression=bool(getattr(args, "shared_expression", False)),
    )


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
    _check_output(args, [Path(p) for p in args.photos], [ph.rgb.shape[1::-1] for ph in photos])
    from mfnet_core.reconstruct import ViewInput

    return [ViewInput(photo=ph, label=labels[i] if labels else None) for i, ph in enumerate(photos)]


@contextlib.contextmanager
def _no_collection_while_loading() -> Iterator[None]:
    """No garbage collection while the heavy modules and the model load, then every object
    alive at that point moved out of the collector's reach (`gc.freeze`). Why: importing
    torch and the rest makes a few hundred thousand objects that live until the process
    ends, and the collections they trigger (three full ones) scan all of them: ~0.2 s of a
    cold reconstruction on the 2-core VM, for nothing (docs/BENCHMARKS.md)."""
    import gc

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def cmd_reconstruct(args: argparse.Namespace, progress: ProgressPrinter) -> dict:
    _check_arguments(args)
    with _no_collection_while_loading():
        inputs = _load_photos(args)
        from mfnet_core.reconstruct import ReconstructOptions, reconstruct

        head = _load_head(args)
    options = ReconstructOptions(
        device=args.device,
        texture_size=args.texture_size,
        expression_keys=args.expressions,
        landmark_backend=args.landmarks,
        size_from=args.size_from,
        texture=args.texture,
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
    _check_output(args, [], [])
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


def cmd_track(args: argparse.Namespace, progress: ProgressPrinter) -> dict:
    """A video or a folder of frames of the person in `--identity` -> track.csv (Live Link
    Face style), track.npz, track.json in the output folder. Inputs, the identity's model
    kind and the output folder are checked before torch loads. Ctrl-C keeps the frames done
    so far (written whole, `complete: false`) and exits 130."""
    from mfnet_core.track.files import check_output_folder
    from mfnet_core.track.identity import read_identity
    from mfnet_core.track.video import check_source

    check_source(args.source)
    identity = read_identity(args.identity)
    kind = identity.model_kind if args.model == "auto" else args.model
    if kind != identity.model_kind:
        raise MfnetError(
            f"--identity {identity.folder} was made with the {identity.model_kind} head model, "
            f"not {kind}; track with --model {identity.model_kind} (or leave --model out)"
        )
    if kind not in MODEL_CHOICES[1:]:
        raise MfnetError(f"--identity {identity.folder}: unknown head model {kind!r} in rig.npz")
    out = Path(args.output)
    check_output_folder(out, args.overwrite)

    with _no_collection_while_loading():
        from mfnet_core.head.registry import load_head_model
        from mfnet_core.track.run import ClipOptions, TrackInterrupted, track_clip, write_track
        from mfnet_core.track.tracker import TrackOptions
        from mfnet_core.track.video import open_frames

        progress("track", 0.0, f"loading the {kind} head model")
        head = load_head_model(kind, Path(args.flame) if args.flame else None)
    source = open_frames(args.source, fps=args.fps, max_side=args.max_side)
    options = ClipOptions(
        focal_px=args.focal_px,
        max_frames=args.max_frames,
        smoothing=args.smoothing,
        neutral=args.neutral,
        track=TrackOptions(iterations=args.iterations, landmarks=args.landmarks),
    )
    try:
        result = track_clip(source, head, identity, options, progress=progress)
    except TrackInterrupted as e:
        _Signals.raising = False  # a second Ctrl-C must not cut the frames done in half
        if e.tracker.frames:
            partial = e.tracker.result(complete=False)
            check_output_folder(out, True)
            write_track(out, partial)
            e.result_written = f"{out} ({partial.n_frames} frames, those tracked before it)"  # type: ignore[attr-defined]
        raise
    progress("track", 0.995, "writing track.csv, track.npz, track.json")
    check_output_folder(out, args.overwrite)
    _Signals.raising = False  # the three files are written whole, then an interrupt counts
    try:
        files = write_track(out, result)
    finally:
        _Signals.raising = True
    if _Signals.received is not None:
        late = Interrupted(_Signals.received)
        late.result_written = f"{out} (all {result.n_frames} frames)"  # type: ignore[attr-defined]
        raise late
    s = result.summary
    return {
        "result_dir": str(out),
        "files": [str(f) for f in files],
        "model": head.kind,
        "frames": s["frames"],
        "fps": s["fps"],
        "frames_with_face": s["frames_with_face"],
        "frames_bridged": s["frames_bridged"],
        "frames_per_second": s["frames_per_second"],
        "seconds": s["timings_s"]["total"],
        "warnings": s["warnings"],
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
            "--shared-expression",
            action="store_true",
            help="one expression for all photos (the paper's same-moment assumption); "
            "default: an expression per photo",
        )
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
    r.add_argument(
        "--expressions",
        type=_int_in(0, 400),
        default=None,
        help="expression shape keys to export (0 to 400; default: all the model has)",
    )
    r.add_argument(
        "--landmarks",
        default="auto",
        choices=["auto", "mediapipe", "dlib", "face-alignment"],
        help="landmark detector: auto = MediaPipe when installed (follows turned faces far "
        "better), else dlib",
    )
    r.add_argument(
        "--size-from",
        default="iris",
        choices=["iris", "model"],
        help="the head's real size: iris = from the irises in the photos (11.7 mm across in "
        "adults; needs the MediaPipe landmarks and a view within 25 degrees of frontal, else "
        "as model), model = what the shape model infers from the face's proportions",
    )
    r.add_argument(
        "--texture",
        default="albedo",
        choices=["albedo", "shaded", "both"],
        help="texture.png: albedo = the photos' light divided out (relights in Blender), "
        "shaded = the photos' colours as they are, both = albedo plus texture_shaded.png",
    )
    r.add_argument(
        "--weights", help="trained MFNet checkpoint (training/): start the fit from the network"
    )
    common(r)

    d = sub.add_parser(
        "demo", help="reconstruct 3 synthetic photos of the available head and report the error"
    )
    d.add_argument("-o", "--output", help="result folder (default: a new temp folder)")
    d.add_argument("--seed", type=_int_in(0, 2**32 - 1), default=0)
    d.add_argument("--image-size", type=_int_in(128, 8192), default=1024)
    d.add_argument(
        "--noise-px", type=_float_in(0.0, 100.0), default=1.0, help="landmark noise in pixels"
    )
    common(d)

    t = sub.add_parser(
        "track",
        help="video or frames of a reconstructed person -> per-frame ARKit weights, head and "
        "eye angles (Live Link Face CSV) and an npz",
    )
    t.add_argument("source", help="a video file (anything OpenCV reads) or a folder of frames")
    t.add_argument(
        "--identity",
        required=True,
        metavar="RESULT_DIR",
        help="the person's result folder from `mfnet reconstruct` (its rig.npz: identity held fixed)",
    )
    t.add_argument(
        "-o", "--output", required=True, help="folder for track.csv, track.npz, track.json"
    )
    t.add_argument(
        "--model",
        default="auto",
        choices=MODEL_CHOICES,
        help="head model; auto (default): the one the identity was made with",
    )
    t.add_argument("--flame", help="FLAME model file (.pkl), for an identity made with FLAME")
    t.add_argument(
        "--fps",
        type=_float_in(0.1, 1000.0),
        help="frame rate of a folder of frames (default 30), or one that overrides the video's",
    )
    t.add_argument(
        "--max-side",
        type=_int_in(64, 16384),
        help="scale frames down to this longer side first (default: as they are)",
    )
    t.add_argument(
        "--focal-px",
        type=_float_in(1.0, 1e6),
        help="the camera's focal length in pixels (default: a 40 degree field of view)",
    )
    t.add_argument("--max-frames", type=_int_in(1, 10**9), help="track at most this many frames")
    t.add_argument(
        "--smoothing",
        type=_float_in(0.0, 10.0),
        default=1.0,
        help="temporal smoothing strength (0 off, 1 default, more is smoother; blinks survive 1)",
    )
    t.add_argument(
        "--neutral",
        type=_neutral_arg,
        default="auto",
        metavar="auto|none|FRAME",
        help="the actor's rest weights taken off every frame: auto (default: each weight's "
        "quietest level in the take), none, or the number of a frame with a neutral face",
    )
    t.add_argument(
        "--iterations",
        type=_int_in(1, 50),
        default=4,
        help="Levenberg-Marquardt iterations per frame (default 4)",
    )
    t.add_argument(
        "--landmarks",
        default="auto",
        choices=["auto", "mediapipe", "dlib"],
        help="the frames' landmark detector: auto = MediaPipe when installed (tracks the face, "
        "3x faster than dlib, catches blinks dlib misses), else dlib",
    )
    t.add_argument("--progress", default="bar", choices=["bar", "jsonl", "none"])
    t.add_argument("--overwrite", action="store_true", help="replace a track in the folder")
    t.add_argument("--json", action="store_true", help="print one JSON summary at the end")

    doc = sub.add_parser("doctor", help="what is installed, what is missing, where to get it")
    doc.add_argument("--flame")
    doc.add_argument("--json", action="store_true")
    return p


def keep_freed_memory() -> None:
    """Asks glibc's malloc to serve blocks up to 32 MB from its heap and to keep what is
    freed, in one arena for all threads (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_,
    MALLOC_ARENA_MAX, set from inside the process).
    Why: the pipeline allocates and frees arrays of a few MB to tens of MB all the time;
    by default each comes fresh from the kernel, zeroed page by page: half the page faults
    of a reconstruction, 0.3-0.6 s of system time on the 2-core VM (docs/BENCHMARKS.md). A
    command-line process gives its memory back when it ends; elsewhere (glibc missing, other
    platforms) this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # glibc's mallopt
        libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
        libc.mallopt(m_trim_threshold, 2**31 - 1)
        # one arena: what one thread frees another reuses (per-thread arenas kept the dense
        # stage's worker memory apart: 9 photos of 4032 px peaked at 2.3 GB, 1.9 GB with one)
        libc.mallopt(m_arena_max, 1)
    except (OSError, AttributeError):
        return


def entry() -> None:
    """The `mfnet` command (and `python -m mfnet_core`): `main`, then the process ends at
    once. By then every result is written, closed and renamed into place; what a normal
    interpreter exit would add is teardown of torch, MediaPipe and dlib, 0.6 s measured
    after a reconstruction on the 2-core VM (docs/BENCHMARKS.md), that nobody waits for."""
    keep_freed_memory()
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    previous = _install_signal_handlers()
    try:
        return _main(argv)
    finally:
        _restore_signal_handlers(previous)


def _main(argv: list[str] | None) -> int:
    progress: ProgressPrinter | None = None
    summary: dict | None = None
    results_before = len(_results_written())
    try:
        args = build_parser().parse_args(argv)
        mode = getattr(args, "progress", "none")
        if getattr(args, "json", False) and mode == "bar":
            mode = "none"
        progress = ProgressPrinter(mode)
        handlers = {
            "reconstruct": cmd_reconstruct,
            "demo": cmd_demo,
            "track": cmd_track,
            "doctor": cmd_doctor,
        }
        summary = handlers[args.command](args, progress)
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
    except BaseException as e:
        # Whatever an interrupt turned into on its way up (an ImportError from a pybind11
        # module initialising, an MfnetError wrapping it), the run was interrupted.
        signum = getattr(e, "signum", None) or _Signals.received
        if signum is None and isinstance(e, KeyboardInterrupt):
            signum = signal.SIGINT
        if signum is None:
            if isinstance(e, MfnetError):
                if progress is not None:
                    progress.error(str(e))
                print(f"mfnet: error: {e}", file=sys.stderr)
                return 2
            raise
        _Signals.raising = False  # a second Ctrl-C must not cut the lines below
        name = _signal_name(signum)
        written = getattr(e, "result_written", None)
        if not written and len(_results_written()) > results_before:
            written = _results_written()[-1]
        if written:
            what = f"the new result in {written} is complete"
        else:
            what = "nothing was written (an existing result is unchanged)"
        with contextlib.suppress(OSError, ValueError):  # the terminal may be gone (SIGHUP)
            if progress is not None:
                progress.error(f"cancelled by {name}")
            print(f"mfnet: cancelled by {name}; {what}", file=sys.stderr)
        return 128 + int(signum)


def _results_written() -> list[Path]:
    """The result folders this process has put in place (result_folder keeps the list; not
    imported yet: none)."""
    rf = sys.modules.get("mfnet_core.outputs.result_folder")
    return rf.committed_results() if rf is not None else []


if __name__ == "__main__":
    sys.exit(main())
