"""Builds the Blender add-on zip (dist/mfnet-<version>.zip) and checks it.

    python build.py            build and check
    python build.py --check    check an existing zip (default: the one for this version)
    python build.py --sync     also write the version into the source tree's manifest and bl_info

One zip serves both install paths: a top-level folder `mfnet/` holding blender_manifest.toml
(Blender 4.2+ installs it as the extension `bl_ext.<repo>.mfnet`) and __init__.py with
bl_info (Blender 3.4 to 4.1 install it as the legacy add-on `mfnet`). The version comes from
one place, pyproject.toml's [project] version; build.py stamps it into the zipped manifest
and bl_info and the check refuses a zip where they differ.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SRC = ROOT / "blender_addon"
DIST = ROOT / "dist"
PKG = "mfnet"  # folder name inside the zip = legacy module name = extension id
ALLOWED_SUFFIXES = {".py", ".toml"}
DOC_SUFFIXES = {".md"}
REQUIRED_MANIFEST = (
    "schema_version", "id", "version", "name", "tagline", "maintainer", "type", "blender_version_min", "license",
)  # fmt: skip
ADDON_TAGS = {
    "3D View", "Add Curve", "Add Mesh", "Animation", "Bake", "Camera", "Compositing", "Development",
    "Game Engine", "Geometry Nodes", "Grease Pencil", "Import-Export", "Lighting", "Material", "Modeling",
    "Mesh", "Node", "Object", "Paint", "Pipeline", "Physics", "Render", "Rigging", "Scene", "Sculpt",
    "Sequencer", "System", "Text Editor", "Tracking", "User Interface", "UV",
}  # fmt: skip
FORBIDDEN_IMPORTS = ("torch", "mfnet_core", "blender_addon")


class BuildError(Exception):
    pass


def project_version() -> str:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    version = data["project"]["version"]
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise BuildError(
            f"pyproject.toml version {version!r} is not X.Y.Z (Blender needs semantic versions)"
        )
    return version


def stamp_manifest(text: str, version: str) -> str:
    new, n = re.subn(r'(?m)^version\s*=\s*"[^"]*"', f'version = "{version}"', text)
    if n != 1:
        raise BuildError(
            "blender_manifest.toml: expected exactly one top-level `version = ...` line"
        )
    return new


def stamp_bl_info(text: str, version: str) -> str:
    parts = ", ".join(version.split("."))
    new, n = re.subn(r'("version"\s*:\s*)\([^)]*\)', rf"\g<1>({parts})", text, count=1)
    if n != 1:
        raise BuildError('__init__.py: bl_info has no "version": (...) entry')
    return new


def source_files() -> list[Path]:
    files = []
    for p in sorted(SRC.rglob("*")):
        rel = p.relative_to(SRC)
        if p.is_dir() or any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if p.suffix in DOC_SUFFIXES:  # documentation stays in the repository
            continue
        if p.suffix not in ALLOWED_SUFFIXES:
            raise BuildError(
                f"stray file in blender_addon/: {rel} (only .py and the manifest are shipped)"
            )
        files.append(p)
    return files


def build(version: str) -> Path:
    DIST.mkdir(exist_ok=True)
    out = DIST / f"{PKG}-{version}.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in source_files():
            rel = p.relative_to(SRC).as_posix()
            text = p.read_text(encoding="utf-8")
            if rel == "blender_manifest.toml":
                text = stamp_manifest(text, version)
            elif rel == "__init__.py":
                text = stamp_bl_info(text, version)
            info = zipfile.ZipInfo(f"{PKG}/{rel}", date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, text.encode("utf-8"))
    out.write_bytes(buf.getvalue())
    return out


def _bl_info(source: str) -> dict:
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "bl_info" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise BuildError(
        "__init__.py has no bl_info literal (legacy Blender reads it without running the file)"
    )


def check(zip_path: Path, version: str) -> list[str]:
    """Checks the zip; returns notes (raises BuildError on a problem)."""
    notes = []
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
        if not names or any(not n.startswith(f"{PKG}/") for n in names):
            raise BuildError(f"every file must sit under {PKG}/ in the zip")
        for n in names:
            rel = n[len(PKG) + 1 :]
            if any(part.startswith(".") or part == "__pycache__" for part in rel.split("/")):
                raise BuildError(f"stray file in zip: {n}")
            if Path(n).suffix not in ALLOWED_SUFFIXES:
                raise BuildError(f"stray file in zip: {n}")
        for must in ("__init__.py", "blender_manifest.toml", "builder.py", "batch.py"):
            if f"{PKG}/{must}" not in names:
                raise BuildError(f"{must} missing from the zip")
        manifest = tomllib.loads(z.read(f"{PKG}/blender_manifest.toml").decode())
        missing = [k for k in REQUIRED_MANIFEST if k not in manifest]
        if missing:
            raise BuildError(f"manifest lacks {missing}")
        if manifest["id"] != PKG:
            raise BuildError(f"manifest id {manifest['id']!r} must equal the zip folder {PKG!r}")
        if manifest["version"] != version:
            raise BuildError(f"manifest version {manifest['version']} != pyproject {version}")
        if manifest["type"] != "add-on" or manifest["schema_version"] != "1.0.0":
            raise BuildError("manifest type must be add-on, schema_version 1.0.0")
        tagline = manifest["tagline"]
        if len(tagline) > 64 or tagline.endswith((".", "!", "?")):
            raise BuildError("tagline: at most 64 characters, no closing punctuation")
        if tuple(int(x) for x in manifest["blender_version_min"].split(".")) < (4, 2, 0):
            raise BuildError("blender_version_min must be >= 4.2.0 (extensions exist from 4.2)")
        if not all(lic.startswith("SPDX:") for lic in manifest["license"]):
            raise BuildError("license entries must be SPDX:<id>")
        bad_tags = [t for t in manifest.get("tags", []) if t not in ADDON_TAGS]
        if bad_tags:
            raise BuildError(f"tags not allowed for add-ons: {bad_tags}")
        init = z.read(f"{PKG}/__init__.py").decode()
        info = _bl_info(init)
        want = tuple(int(x) for x in version.split("."))
        if tuple(info["version"]) != want:
            raise BuildError(f"bl_info version {info['version']} != {want}")
        if tuple(info["blender"]) > (3, 4, 0):
            raise BuildError("bl_info blender must allow 3.4")
        for n in names:
            if not n.endswith(".py"):
                continue
            src = z.read(n).decode()
            tree = ast.parse(src, filename=n)  # syntax check
            for node in ast.walk(tree):
                mods = []
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    mods = [node.module or ""]
                for m in mods:
                    if m.split(".")[0] in FORBIDDEN_IMPORTS:
                        raise BuildError(
                            f"{n} imports {m}: the add-on uses relative imports and never torch/mfnet_core"
                        )
        if "classes" not in init or "def register" not in init or "def unregister" not in init:
            raise BuildError("__init__.py must define classes, register and unregister")
        notes.append(
            f"{len(names)} files, version {version}, Blender >= {'.'.join(map(str, info['blender']))} (legacy) / {manifest['blender_version_min']} (extension)"
        )
    return notes


def sync_sources(version: str) -> list[str]:
    changed = []
    for rel, stamp in (("blender_manifest.toml", stamp_manifest), ("__init__.py", stamp_bl_info)):
        p = SRC / rel
        old = p.read_text(encoding="utf-8")
        new = stamp(old, version)
        if new != old:
            p.write_text(new, encoding="utf-8")
            changed.append(rel)
    return changed


def sources_in_sync(version: str) -> bool:
    m = tomllib.loads((SRC / "blender_manifest.toml").read_text())
    info = _bl_info((SRC / "__init__.py").read_text())
    return m["version"] == version and tuple(info["version"]) == tuple(
        int(x) for x in version.split(".")
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--check", nargs="?", const="", default=None, metavar="ZIP", help="only check a zip"
    )
    ap.add_argument(
        "--sync", action="store_true", help="write the version into the source manifest and bl_info"
    )
    args = ap.parse_args(argv)
    try:
        version = project_version()
        if args.sync:
            changed = sync_sources(version)
            print(f"synced version {version} into {changed or 'nothing (already in sync)'}")
        elif not sources_in_sync(version):
            print(f"note: blender_addon/ sources carry another version than pyproject ({version}); "
                  "the zip is stamped anyway (run `python build.py --sync` to update them)")  # fmt: skip
        if args.check is not None:
            zip_path = Path(args.check) if args.check else DIST / f"{PKG}-{version}.zip"
        else:
            zip_path = build(version)
        for note in check(zip_path, version):
            print(note)
    except BuildError as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 1
    print(zip_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
