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

from mfnet_core.errors import ModelNotFoundError
from mfnet_core.inputs.files import regular_file

__all__ = [
    "user_data_dir",
    "user_cache_dir",
    "flame_dir",
    "find_flame_model",
    "find_dlib_predictor",
    "find_side_file",
    "SIDE_FILES",
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
        if not p.exists():
            raise ModelNotFoundError(f"{origin}: FLAME model file not found: {p}")
        try:  # a FIFO or device named as the model: said as such, never opened
            regular_file(p, what="FLAME model file", error=ModelNotFoundError)
        except ModelNotFoundError as e:
            raise ModelNotFoundError(f"{origin}: {e}") from None
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
