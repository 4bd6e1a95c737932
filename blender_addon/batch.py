"""Headless batch: one rigged head per person.

    blender -b -P blender_addon/batch.py -- --input DIR --output DIR [--python PATH] [options]

Each subfolder of --input holds one person's photos (jpg/png/tif/bmp/webp; files whose names
contain left/front/right are passed as those views). Per person this writes
OUTPUT/<person>/result/ (the backend's result folder), <person>.glb and <person>.blend (the
.blend last: its presence marks the person done, so a rerun skips finished people and
resumes the rest). One person's failure does not stop the batch. OUTPUT/summary.json lists
who succeeded, was skipped or failed (with the reason); the exit code is 1 when anyone
failed, 2 for bad arguments or no usable backend, else 0.

--python names the backend Python (default: the add-on preference, else auto-detected: the
MFNET_PYTHON variable, then python3/python on PATH where mfnet_core imports).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import time
import traceback
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
    ap.add_argument("--texture-size", type=int, default=1024, choices=[1024, 2048, 4096])
    ap.add_argument("--expressions", type=int, default=50, help="expression shape keys")
    ap.add_argument("--no-glb", action="store_true", help="write only the .blend")
    ap.add_argument("--quiet", action="store_true", help="no per-stage progress lines")
    return ap.parse_args(argv)


def _argv() -> list[str]:
    return sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []


def write_summary(path: Path, summary: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, path)


def export_glb(path: Path) -> None:
    bpy.ops.export_scene.gltf(
        filepath=str(path),
        export_format="GLB",
        export_morph=True,
        export_skins=True,
        export_animations=False,
        export_apply=False,
    )


def process_person(pkg, folder: Path, out: Path, python: str, args, prefs, log) -> dict:
    """Reconstructs and builds one person; returns their summary entry (raises on failure)."""
    backend, builder, rigdata = pkg.backend, pkg.builder, pkg.rigdata
    name = folder.name
    entry: dict = {"name": name, "warnings": []}
    t0 = time.perf_counter()
    photos, views = backend.photos_in_folder(folder)
    if not photos:
        raise RuntimeError(f"no photos ({', '.join(backend.PHOTO_SUFFIXES)}) in {folder}")
    out.mkdir(parents=True, exist_ok=True)
    result = out / "result"
    reuse = False
    if result.is_dir():
        try:
            rigdata.load_result(result)
            reuse = True
            log(f"{name}: reusing {result}")
        except rigdata.ResultError:
            reuse = False
    if not reuse:
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
        job = backend.BackendJob(cmd, result)

        def show(st):
            ev = st.events[-1] if st.events else {}
            if not args.quiet and ev.get("stage") not in (None, "error", "done"):
                log(f"{name}: {ev['stage']} {int(round(100 * ev['fraction']))}% {ev['message']}")

        st = job.wait(on_progress=show)
        if st.error:
            raise RuntimeError(st.error)
        result = Path(st.result_dir or result)
    entry["result_dir"] = str(result)

    bpy.ops.wm.read_homefile(use_empty=True)
    rep = builder.build_rig(str(result), name, pack_texture=True)
    entry["warnings"] += rep.warnings
    entry["build_seconds"] = round(rep.seconds, 3)
    if not args.no_glb:
        glb = out / f"{name}.glb"
        try:
            export_glb(glb)
        except Exception as e:  # exporter add-on missing or broken in this Blender
            fallback = result / rigdata.GLB_FILE
            if not fallback.is_file():
                raise RuntimeError(
                    f"glTF export failed ({e}) and the result has no {rigdata.GLB_FILE}"
                ) from e
            shutil.copyfile(fallback, glb)
            entry["warnings"].append(
                f"glTF export failed ({e}); copied the backend's {rigdata.GLB_FILE} (mesh and morph targets, no armature)"
            )
        entry["glb"] = str(glb)
    blend = out / f"{name}.blend"
    tmp_blend = out / f".{name}.partial.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_blend), check_existing=False, compress=True)
    os.replace(tmp_blend, blend)
    for backup in out.glob(f".{name}.partial.blend1"):
        backup.unlink(missing_ok=True)
    entry["blend"] = str(blend)
    entry["seconds"] = round(time.perf_counter() - t0, 3)
    return entry


def main(argv: list[str] | None = None) -> int:
    args = parse_args(_argv() if argv is None else argv)
    pkg = _package()
    backend = pkg.backend
    prefs = pkg.preferences.get(bpy.context)

    def log(msg: str) -> None:
        print(f"mfnet-batch: {msg}", flush=True)

    src, dst = Path(args.input).resolve(), Path(args.output).resolve()
    if not src.is_dir():
        log(f"error: --input {src} is not a folder")
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

    people = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    started = time.time()
    summary: dict = {
        "format": SUMMARY_FORMAT,
        "version": 1,
        "input": str(src),
        "output": str(dst),
        "backend_python": python.path,
        "blender": bpy.app.version_string,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "people": [],
    }
    for i, folder in enumerate(people, 1):
        out = dst / folder.name
        blend = out / f"{folder.name}.blend"
        glb = out / f"{folder.name}.glb"
        if blend.is_file() and (args.no_glb or glb.is_file()):
            log(f"[{i}/{len(people)}] {folder.name}: already done, skipped")
            summary["people"].append(
                {
                    "name": folder.name,
                    "status": "skipped",
                    "reason": "already done",
                    "blend": str(blend),
                }
            )
            continue
        log(f"[{i}/{len(people)}] {folder.name}")
        try:
            entry = process_person(pkg, folder, out, python.path, args, prefs, log)
            entry["status"] = "succeeded"
            log(f"{folder.name}: done in {entry['seconds']:.1f} s")
        except Exception as e:  # one person's failure never stops the batch
            reason = str(e) or type(e).__name__
            entry = {"name": folder.name, "status": "failed", "reason": reason}
            if not isinstance(e, (RuntimeError, pkg.rigdata.ResultError, backend.BackendError)):
                entry["traceback"] = traceback.format_exc()
            log(f"{folder.name}: FAILED: {reason}")
        summary["people"].append(entry)
        write_summary(dst / "summary.json", summary | _totals(summary, started))
    summary |= _totals(summary, started)
    write_summary(dst / "summary.json", summary)
    log(
        f"{len(summary['succeeded'])} succeeded, {len(summary['skipped'])} skipped, "
        f"{len(summary['failed'])} failed; summary: {dst / 'summary.json'}"
    )
    return 1 if summary["failed"] else 0


def _totals(summary: dict, started: float) -> dict:
    people = summary["people"]
    return {
        "succeeded": [p["name"] for p in people if p["status"] == "succeeded"],
        "skipped": [p["name"] for p in people if p["status"] == "skipped"],
        "failed": [
            {"name": p["name"], "reason": p["reason"]} for p in people if p["status"] == "failed"
        ],
        "seconds": round(time.time() - started, 3),
    }


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.exit(code)
