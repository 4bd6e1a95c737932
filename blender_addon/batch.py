"""Headless batch: one rigged head per person.

    blender -b -P blender_addon/batch.py -- --input DIR --output DIR [--python PATH] [options]

Options: --flame PATH, --model auto|flame|ict|test-head, --device auto|cpu|cuda,
--texture-size 1024|2048|4096, --expressions K, --export glb|fbx|fbx,glb|none (default
glb), --no-glb (drops glb from --export; kept from before --export), --prefetch N (default
1), --quiet.

The backend runs as its own process, so while Blender builds, exports and saves person n,
the backend already reconstructs person n+1 (--prefetch N: up to N people ahead; 0 = one
person at a time). summary.json gives people_per_minute.

Each subfolder of --input holds one person's photos (jpg/png/tif/bmp/webp; files whose names
contain left/front/right are passed as those views). Per person this writes
OUTPUT/<person>/result/ (the backend's result folder), <person>.glb and/or <person>.fbx
(Export for Games: game_export.py) and <person>.blend (the .blend last: with every asked-for
export beside it, it marks the person done, so a rerun skips finished people and resumes
the rest). One person's failure does not stop the batch. OUTPUT/summary.json lists
who succeeded, was skipped or failed (with the reason); the exit code is 1 when anyone
failed, 2 for bad arguments or no usable backend, else 0.

An OUTPUT inside INPUT is never taken for a person (the subfolder holding it is skipped,
with a note in the summary). Ctrl-C (SIGINT) stops the batch after the current person,
with summary.json written and exit code 130; a second Ctrl-C stops at once (the running
backend is cancelled, nothing half-written is left). SIGTERM stops at once (exit 143).

--python names the backend Python (default: the add-on preference, else auto-detected: the
MFNET_PYTHON variable, then python3/python on PATH where mfnet_core imports).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import bpy

SUMMARY_FORMAT = "mfnet-batch-summary"


def _package():
    """This add-on's package, whether run from the source tree (blender_addon/) or from an
    installed copy (.../mfnet/)."""
    if __package__:
        return importlib.import_module(__package__)
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here.parent))
    return importlib.import_module(here.name)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="blender -b -P batch.py --", description="One rigged FLAME head per photo folder."
    )
    ap.add_argument("--input", required=True, help="folder with one subfolder of photos per person")
    ap.add_argument(
        "--output", required=True, help="folder for results, .blend/.glb files and summary.json"
    )
    ap.add_argument(
        "--python", default="", help="backend Python (default: preference, else auto-detected)"
    )
    ap.add_argument(
        "--flame",
        default="",
        help="FLAME model file (default: preference, else the backend's default)",
    )
    ap.add_argument(
        "--device", default="", choices=["", "auto", "cpu", "cuda"], help="default: preference"
    )
    ap.add_argument(
        "--model",
        default="",
        help="head model passed to the backend (auto, flame, ict, test-head; default: its own)",
    )
    ap.add_argument("--texture-size", type=int, default=1024, choices=[1024, 2048, 4096])
    ap.add_argument("--expressions", type=int, default=50, help="expression shape keys")
    ap.add_argument(
        "--export",
        default="glb",
        help="game files beside the .blend: glb, fbx, fbx,glb or none (default: glb)",
    )
    ap.add_argument("--no-glb", action="store_true", help="no .glb (whatever --export says)")
    ap.add_argument(
        "--prefetch",
        type=int,
        default=1,
        help="people whose backend may run while Blender builds the current one (default 1; "
        "0 = one person at a time)",
    )
    ap.add_argument("--quiet", action="store_true", help="no per-stage progress lines")
    return ap.parse_args(argv)


def _argv() -> list[str]:
    return sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []


def write_summary(path: Path, summary: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, path)


def export_formats(args) -> list[str]:
    """The file suffixes to write beside the .blend (raises export_plan.ExportError)."""
    plan = importlib.import_module(f"{_package().__name__}.export_plan")
    suffixes = plan.parse_formats(args.export)
    return [s for s in suffixes if not (args.no_glb and s == ".glb")]


def export_game_file(pkg, obj, path: Path) -> list[str]:
    """The head `obj` belongs to as a game file (.glb or .fbx by the suffix): the current
    pose as a still, no helper bones, drivers baked, texture embedded. The file is the
    batch's own output, so an earlier one is replaced. Returns warnings."""
    game_export = importlib.import_module(f"{pkg.__name__}.game_export")
    rep = game_export.export_rig(bpy.context, obj, path, animation=False, overwrite=True)
    return rep.warnings


def export_glb(path: Path) -> None:
    """The active MFNet head as a game-ready .glb (kept for scripts that called it)."""
    export_game_file(_package(), bpy.context.view_layer.objects.active, path)


class StopNow(BaseException):
    """Raised by the signal handler to stop the batch at once (not an Exception, so that
    no per-person `except Exception` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Stopper:
    """SIGINT: the first stops the batch after the current person, the second at once
    (StopNow); SIGTERM stops at once. Blender's own SIGINT handler in background mode only
    sets a flag nobody reads (the batch ran on), so this one replaces it while the batch
    runs. The handler never prints through Python's buffered streams (a signal can arrive
    in the middle of a print): it writes its one line with os.write."""

    def __init__(self) -> None:
        self.requested = 0
        self.signum: int | None = None
        self.stopping_now = False
        self.finishing = False  # the people loop is over: only the summary is left
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            # None: a handler installed from C (Blender's), which Python cannot put back
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _say(self, text: str) -> None:
        try:
            os.write(sys.stdout.fileno(), f"\nmfnet-batch: {text}\n".encode())
        except (OSError, ValueError, AttributeError):
            pass

    def _handle(self, signum, frame) -> None:
        if self.stopping_now:  # a third signal while stopping: leave at once
            os._exit(128 + signum)
        self.requested += 1
        self.signum = self.signum or signum
        if self.finishing:  # writing the summary takes a moment: let it finish
            return
        if signum == signal.SIGINT and self.requested == 1:
            self._say("Ctrl-C: stopping after the current person (Ctrl-C again to stop now)")
            return
        self.stopping_now = True
        self._say(f"{signal.Signals(signum).name}: stopping now")
        raise StopNow(signum)


@dataclass
class PersonJob:
    """One person between starting their backend and finishing their Blender files: the
    backend runs in its own process, so it can work while Blender builds someone else."""

    folder: Path
    out: Path
    result: Path
    started: float  # perf_counter at start
    started_at: float  # wall clock (summary.json: shows which backends ran ahead)
    job: object | None = None  # backend.BackendJob; None when an earlier result is reused
    error: Exception | None = None  # raised when the person's turn comes

    @property
    def name(self) -> str:
        return self.folder.name

    def cancel(self) -> None:
        """Stops a backend still running (it tidies its own output)."""
        if self.job is not None and not self.job.state.done:
            self.job.cancel(grace=5.0)


def start_person(pkg, folder: Path, out: Path, python: str, args, prefs, log) -> PersonJob:
    """Finds the person's photos and starts their backend (or picks up an earlier result).
    Never raises: a problem is kept in `error` and reported when the person's turn comes."""
    backend, rigdata = pkg.backend, pkg.rigdata
    person = PersonJob(
        folder=folder,
        out=out,
        result=out / "result",
        started=time.perf_counter(),
        started_at=time.time(),
    )
    try:
        photos, views = backend.photos_in_folder(folder)
        if not photos:
            raise RuntimeError(f"no photos ({', '.join(backend.PHOTO_SUFFIXES)}) in {folder}")
        out.mkdir(parents=True, exist_ok=True)
        result = person.result
        if result.is_dir():
            try:
                rigdata.load_result(result)
                log(f"{folder.name}: reusing {result}")
                return person
            except rigdata.ResultError:
                pass
        for p in backend.partial_folders(result):
            shutil.rmtree(p, ignore_errors=True)
        cmd = backend.reconstruct_command(
            python,
            photos,
            str(result),
            views=views,
            flame=args.flame or (bpy.path.abspath(prefs.flame_model) if prefs.flame_model else ""),
            device=args.device or prefs.device,
            texture_size=args.texture_size,
            expressions=args.expressions,
            overwrite=result.exists(),
        )
        if args.model:
            cmd += ["--model", args.model]
        person.job = backend.BackendJob(cmd, result)
    except Exception as e:  # noqa: BLE001 - kept for the person's turn
        person.error = e
    return person


def finish_person(pkg, person: PersonJob, args, log, on_backend_done=None) -> dict:
    """Waits for the person's backend, then builds, exports and saves their Blender files;
    returns their summary entry (raises on failure). `on_backend_done` runs once the
    backend has finished, before the build (the batch starts the next person there)."""
    builder, rigdata = pkg.builder, pkg.rigdata
    name = person.name
    entry: dict = {"name": name, "warnings": [], "started_at": round(person.started_at, 3)}
    if person.error is not None:
        raise person.error
    result, out = person.result, person.out
    if person.job is not None:
        job = person.job

        def show(st):
            ev = st.events[-1] if st.events else {}
            if not args.quiet and ev.get("stage") not in (None, "error", "done"):
                log(f"{name}: {ev['stage']} {int(round(100 * ev['fraction']))}% {ev['message']}")

        try:
            st = job.wait(on_progress=show)
        except BaseException:  # StopNow: the backend stops too and tidies its output
            job.cancel(grace=5.0)
            raise
        if st.error:
            raise RuntimeError(st.error)
        result = Path(st.result_dir or result)
        entry["backend_seconds"] = round(time.perf_counter() - person.started, 3)
    entry["result_dir"] = str(result)
    if on_backend_done is not None:
        on_backend_done()
    if not args.quiet:
        log(f"{name}: building the rig in Blender")
    bpy.ops.wm.read_homefile(use_empty=True)
    rep = builder.build_rig(str(result), name, pack_texture=True)
    entry["warnings"] += rep.warnings
    entry["build_seconds"] = round(rep.seconds, 3)
    t_export = time.perf_counter()
    for suffix in export_formats(args):
        target = out / f"{name}{suffix}"
        try:
            entry["warnings"] += export_game_file(pkg, rep.armature, target)
        except Exception as e:  # exporter add-on missing or broken in this Blender
            fallback = result / rigdata.GLB_FILE
            if suffix != ".glb":
                raise RuntimeError(f"{suffix[1:].upper()} export failed: {e}") from e
            if not fallback.is_file():
                raise RuntimeError(
                    f"glTF export failed ({e}) and the result has no {rigdata.GLB_FILE}"
                ) from e
            shutil.copyfile(fallback, target)
            entry["warnings"].append(
                f"glTF export failed ({e}); copied the backend's {rigdata.GLB_FILE} (mesh and morph targets, no armature)"
            )
        entry[suffix[1:]] = str(target)
    entry["export_seconds"] = round(time.perf_counter() - t_export, 3)
    t_save = time.perf_counter()
    blend = out / f"{name}.blend"
    tmp_blend = out / f".{name}.partial.blend"
    try:
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp_blend), check_existing=False, compress=True)
        os.replace(tmp_blend, blend)
    finally:
        for partial in (tmp_blend, out / f".{name}.partial.blend1"):
            partial.unlink(missing_ok=True)
    entry["blend"] = str(blend)
    entry["save_seconds"] = round(time.perf_counter() - t_save, 3)
    entry["seconds"] = round(time.perf_counter() - person.started, 3)
    entry["finished_at"] = round(time.time(), 3)
    return entry


def people_in(src: Path, dst: Path) -> tuple[list[Path], list[str]]:
    """The person folders of src (its visible subfolders), and notes on the subfolders that
    are left out because they are, or hold, the output folder dst (or would have their
    output written over src)."""
    people: list[Path] = []
    notes: list[str] = []
    for p in sorted(src.iterdir()):
        if p.name.startswith(".") or not p.is_dir():
            continue
        real = p.resolve()
        if real == dst or dst.is_relative_to(real):
            what = "is" if real == dst else "holds"
            notes.append(f"{p} {what} the output folder: skipped, not a person")
            continue
        out = dst / p.name
        if src == out or src.is_relative_to(out):
            notes.append(f"{p}: its output {out} would be the input folder: skipped")
            continue
        people.append(p)
    return people, notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(_argv() if argv is None else argv)
    pkg = _package()
    prefs = pkg.preferences.get(bpy.context)

    def log(msg: str) -> None:
        print(f"mfnet-batch: {msg}", flush=True)

    stopper = Stopper()
    stopper.install()
    try:
        return run_batch(args, pkg, prefs, log, stopper)
    except StopNow as e:  # before the people loop (while finding the backend)
        log(f"stopped by {e.args[0]} before any person was started")
        return 128 + e.signum
    finally:
        stopper.restore()


def run_batch(args, pkg, prefs, log, stopper: Stopper) -> int:
    backend = pkg.backend
    src, dst = Path(args.input).resolve(), Path(args.output).resolve()
    if not src.is_dir():
        log(f"error: --input {src} is not a folder")
        return 2
    if dst == src:
        log(f"error: --output {dst} is the --input folder; give a separate folder")
        return 2
    try:
        suffixes = export_formats(args)
    except ValueError as e:  # export_plan.ExportError
        log(f"error: {e}")
        return 2
    if args.prefetch < 0:
        log(f"error: --prefetch {args.prefetch}: give 0 (one person at a time) or more")
        return 2
    dst.mkdir(parents=True, exist_ok=True)
    try:
        python = backend.find_backend_python(args.python or prefs.backend_python)
    except backend.BackendError as e:
        log(f"error: {e}")
        write_summary(
            dst / "summary.json",
            {"format": SUMMARY_FORMAT, "version": 1, "error": str(e), "people": []},
        )
        return 2
    log(f"backend: {python.path} (mfnet_core {python.version}, from {python.source})")

    people, notes = people_in(src, dst)
    for note in notes:
        log(note)
    started = time.time()
    summary: dict = {
        "format": SUMMARY_FORMAT,
        "version": 1,
        "input": str(src),
        "output": str(dst),
        "backend_python": python.path,
        "blender": bpy.app.version_string,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "notes": notes,
        "prefetch": args.prefetch,
        "people": [],
    }

    def done_already(folder: Path) -> bool:
        out = dst / folder.name
        return (out / f"{folder.name}.blend").is_file() and all(
            (out / f"{folder.name}{s}").is_file() for s in suffixes
        )

    todo = [f for f in people if not done_already(f)]
    launched: dict[str, PersonJob] = {}  # backends started for people after the current one
    next_up = 0  # todo[next_up] is the next person whose backend has not been started

    def launch(limit: int) -> None:
        """Starts backends in order until `limit` people are waiting ahead."""
        nonlocal next_up
        while next_up < len(todo) and len(launched) < limit and not stopper.requested:
            f = todo[next_up]
            next_up += 1
            launched[f.name] = start_person(pkg, f, dst / f.name, python.path, args, prefs, log)

    current = ""
    try:
        for i, folder in enumerate(people, 1):
            if stopper.requested:
                break
            current = folder.name
            out = dst / folder.name
            if folder.name not in launched and done_already(folder):
                log(f"[{i}/{len(people)}] {folder.name}: already done, skipped")
                summary["people"].append(
                    {
                        "name": folder.name,
                        "status": "skipped",
                        "reason": "already done",
                        "blend": str(out / f"{folder.name}.blend"),
                    }
                )
                current = ""
                continue
            log(f"[{i}/{len(people)}] {folder.name}")
            if folder.name not in launched:
                launch(len(launched) + 1)
            person = launched.pop(folder.name)
            try:
                entry = finish_person(
                    pkg, person, args, log, on_backend_done=lambda: launch(args.prefetch)
                )
                entry["status"] = "succeeded"
                log(f"{folder.name}: done in {entry['seconds']:.1f} s")
            except Exception as e:  # one person's failure never stops the batch
                reason = str(e) or type(e).__name__
                entry = {"name": folder.name, "status": "failed", "reason": reason}
                if not isinstance(e, (RuntimeError, pkg.rigdata.ResultError, backend.BackendError)):
                    entry["traceback"] = traceback.format_exc()
                log(f"{folder.name}: FAILED: {reason}")
            summary["people"].append(entry)
            current = ""
            write_summary(dst / "summary.json", summary | _totals(summary, started))
    except StopNow as e:
        if current:
            summary["people"].append(
                {"name": current, "status": "failed", "reason": f"interrupted ({e.args[0]})"}
            )
    finally:
        for person in launched.values():  # started ahead, never built: nothing of theirs stays
            person.cancel()
            try:
                person.out.rmdir()
            except OSError:  # not empty (an earlier result) or already gone
                pass
    stopper.finishing = True
    summary |= _totals(summary, started)
    if stopper.requested:
        seen = {p["name"] for p in summary["people"]}
        summary["interrupted"] = True
        summary["signal"] = signal.Signals(stopper.signum or signal.SIGINT).name
        summary["not_started"] = [p.name for p in people if p.name not in seen]
    else:
        summary["interrupted"] = False
    write_summary(dst / "summary.json", summary)
    log(
        f"{len(summary['succeeded'])} succeeded, {len(summary['skipped'])} skipped, "
        f"{len(summary['failed'])} failed; summary: {dst / 'summary.json'}"
    )
    if stopper.requested:
        left = ", ".join(summary["not_started"]) or "nobody"
        log(f"stopped by {summary['signal']}; not started: {left}")
        return 128 + (stopper.signum or signal.SIGINT)
    return 1 if summary["failed"] else 0


def _totals(summary: dict, started: float) -> dict:
    people = summary["people"]
    succeeded = [p["name"] for p in people if p["status"] == "succeeded"]
    seconds = time.time() - started
    return {
        "succeeded": succeeded,
        "skipped": [p["name"] for p in people if p["status"] == "skipped"],
        "failed": [
            {"name": p["name"], "reason": p["reason"]} for p in people if p["status"] == "failed"
        ],
        "seconds": round(seconds, 3),
        "people_per_minute": round(60.0 * len(succeeded) / max(seconds, 1e-9), 3),
    }


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.exit(code)
