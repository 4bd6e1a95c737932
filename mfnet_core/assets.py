"""Where the FLAME model and its side files are, and what to do when they are missing.

FLAME is the user's own download (never fetched or shipped by this code). Look-up order:
an explicit path (`--flame`), the environment variable MFNET_FLAME_MODEL, then the per-user
data folder's `flame/` (`$MFNET_HOME` or the platform's data folder). Without FLAME, the
generated test head (labelled as not FLAME) keeps every command working.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError

__all__ = [
    "user_data_dir",
    "user_cache_dir",
    "flame_dir",
    "find_flame_model",
    "find_dlib_predictor",
    "find_side_file",
    "SIDE_FILES",
    "doctor_report",
    "load_model_or_test_head",
    "ENV_MODEL",
]

ENV_MODEL = "MFNET_FLAME_MODEL"
ENV_HOME = "MFNET_HOME"
ENV_CACHE = "MFNET_CACHE"
FLAME_URL = "https://flame.is.tue.mpg.de"
DECA_URL = "https://github.com/yfeng95/DECA"
MODEL_NAMES = ("generic_model.pkl", "flame2023.pkl", "flame2023_Open.pkl")
# pickles that live next to the model but are not models
_SIDE_WORDS = ("mask", "embedding", "landmark", "texture", "albedo", "lmk")


def _platform_dir(kind: str) -> Path:
    """The per-user folder for `kind` ('data' or 'cache') without extra dependencies."""
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return base / "mfnet" / ("Cache" if kind == "cache" else "")
    if sys.platform == "darwin":
        sub = "Caches" if kind == "cache" else "Application Support"
        return home / "Library" / sub / "mfnet"
    if kind == "cache":
        return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "mfnet"
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "mfnet"


def user_data_dir() -> Path:
    """`$MFNET_HOME`, else ~/.local/share/mfnet (Linux), ~/Library/Application Support/mfnet
    (macOS), %LOCALAPPDATA%\\mfnet (Windows)."""
    env = os.environ.get(ENV_HOME)
    return Path(env).expanduser() if env else _platform_dir("data")


def user_cache_dir() -> Path:
    """`$MFNET_CACHE`, else ~/.cache/mfnet (Linux), ~/Library/Caches/mfnet (macOS),
    %LOCALAPPDATA%\\mfnet\\Cache (Windows). Things here can be regenerated."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else _platform_dir("cache")


def flame_dir() -> Path:
    return user_data_dir() / "flame"


def _model_in_folder(folder: Path) -> Path | None:
    for name in MODEL_NAMES:
        if (folder / name).is_file():
            return folder / name
    if folder.is_dir():
        others = sorted(
            p
            for p in folder.glob("*.pkl")
            if p.is_file() and not any(w in p.name.lower() for w in _SIDE_WORDS)
        )
        if others:
            return others[0]
    return None


def find_flame_model(explicit: Path | None = None) -> Path | None:
    """The FLAME model file to use, or None when there is none.

    An explicit path or MFNET_FLAME_MODEL that does not exist is an error (the user asked
    for that file), not a silent fall-back. A folder is searched like the data folder.
    """
    for value, origin in ((explicit, "--flame"), (os.environ.get(ENV_MODEL) or None, ENV_MODEL)):
        if value is None:
            continue
        p = Path(value).expanduser()
        if p.is_dir():
            found = _model_in_folder(p)
            if found is None:
                raise ModelNotFoundError(
                    f"{origin}: no FLAME model (.pkl) in {p}; expected one of {', '.join(MODEL_NAMES)}"
                )
            return found
        if not p.is_file():
            raise ModelNotFoundError(f"{origin}: FLAME model file not found: {p}")
        return p
    return _model_in_folder(flame_dir())


# Side files looked for next to a model, in order; `<model stem>_<name>` beats `<name>`.
SIDE_FILES: dict[str, tuple[str, ...]] = {
    "landmarks": ("landmark_embedding.npy", "flame_static_embedding.pkl"),
    "uv": ("texture.npz", "FLAME_texture.npz", "head_template.obj", "head_template_mesh.obj"),
    "masks": ("masks.pkl", "FLAME_masks.pkl"),
}


def find_side_file(model_path: Path, kind: str) -> Path | None:
    """The side file of `kind` ('landmarks', 'uv', 'masks') next to the model, or None."""
    folder, stem = model_path.parent, model_path.stem
    for name in SIDE_FILES[kind]:
        for cand in (folder / f"{stem}_{name}", folder / name):
            if cand.is_file():
                return cand
    return None


def find_dlib_predictor() -> Path | None:
    """dlib's 68-point predictor from face_recognition_models, found without importing it
    (its __init__ imports pkg_resources, which newer setuptools no longer has)."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "models" / "shape_predictor_68_face_landmarks.dat"
        if p.is_file():
            return p
    return None


def _item(
    name: str, ok: bool, detail: str, fix: str = "", optional: bool = False
) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail, "fix": fix, "optional": optional}


def doctor_report(explicit: Path | None = None) -> dict[str, Any]:
    """What is found and what is missing, each with the exact fix. `ok` is False only when
    something required is broken (a missing FLAME is fine: the test head stands in)."""
    items: list[dict[str, Any]] = []
    data = flame_dir()
    flame_fix = (
        f"register at {FLAME_URL}, download FLAME 2020 (generic_model.pkl) or FLAME 2023 / "
        f"2023 Open (flame2023.pkl / flame2023_Open.pkl), and put the .pkl into {data}/ "
        f"or set {ENV_MODEL}=/path/to/model.pkl"
    )
    model: Path | None = None
    try:
        model = find_flame_model(explicit)
    except ModelNotFoundError as e:
        items.append(_item("FLAME model", False, str(e), flame_fix))
    else:
        if model is None:
            items.append(
                _item(
                    "FLAME model",
                    False,
                    "not found; the generated test head (not FLAME) is used",
                    flame_fix,
                    True,
                )
            )
        else:
            items.append(_item("FLAME model", True, str(model)))

    folder = model.parent if model else data
    probe = model if model else data / MODEL_NAMES[0]
    found_lmk = find_side_file(probe, "landmarks")
    if found_lmk is not None and found_lmk.name == "flame_static_embedding.pkl":
        if not (folder / "flame_dynamic_embedding.npy").is_file():
            found_lmk = None
    items.append(
        _item(
            "landmark embedding",
            found_lmk is not None,
            str(found_lmk) if found_lmk else f"no landmark_embedding.npy in {folder}",
            f"download DECA's data/landmark_embedding.npy ({DECA_URL}) into {folder}/, or "
            f"flame_static_embedding.pkl + flame_dynamic_embedding.npy from {FLAME_URL} (or smplx / TF_FLAME)",
            optional=model is None,
        )
    )
    found_uv = find_side_file(probe, "uv")
    items.append(
        _item(
            "UV layout",
            found_uv is not None,
            str(found_uv) if found_uv else "none; one is generated with xatlas (cached)",
            f"download FLAME_texture.npz (FLAME texture space) from {FLAME_URL} into {folder}/",
            optional=True,
        )
    )
    masks = find_side_file(probe, "masks")
    items.append(
        _item(
            "FLAME masks",
            masks is not None,
            str(masks) if masks else "none; the face region is estimated geometrically",
            f"download FLAME_masks.pkl (FLAME vertex masks) from {FLAME_URL} into {folder}/",
            optional=True,
        )
    )
    dat = find_dlib_predictor()
    try:
        dlib_ok = importlib.util.find_spec("dlib") is not None
    except (ImportError, ValueError):
        dlib_ok = False
    items.append(
        _item(
            "dlib landmarks",
            dat is not None and dlib_ok,
            f"dlib {'found' if dlib_ok else 'missing'}; predictor {dat or 'missing'}",
            "pip install dlib-bin face-recognition-models",
        )
    )
    try:
        import torch

        cuda = torch.cuda.is_available()
        detail = f"torch {torch.__version__}; CUDA {'available: ' + torch.cuda.get_device_name(0) if cuda else 'not available (CPU is used)'}"
        items.append(
            _item(
                "torch / CUDA",
                cuda,
                detail,
                "optional: a CUDA build of torch speeds up training; reconstruction gains ~1.2x (docs/BENCHMARKS.md)",
                optional=True,
            )
        )
    except ImportError:
        items.append(_item("torch", False, "torch is not installed", "pip install torch"))
    ok = all(i["ok"] or i["optional"] for i in items)
    return {
        "ok": ok,
        "data_dir": str(user_data_dir()),
        "cache_dir": str(user_cache_dir()),
        "flame_model": str(model) if model else None,
        "items": items,
    }


def load_model_or_test_head(explicit: Path | None = None):  # -> FlameAssets
    """The real FLAME when it is found, else the generated test head (kind 'test-head')."""
    from .flame import load_flame_assets

    model = find_flame_model(explicit)
    if model is not None:
        return load_flame_assets(model)
    from .testhead import ensure_test_head

    return load_flame_assets(ensure_test_head())
