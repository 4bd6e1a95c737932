"""Which head model a run uses: `--model auto|ict|flame|test-head`.

`auto` is FLAME when the user has it (never shipped, never fetched), else the ICT Face Model
that ships with mfnet. The generated test head (not a human shape space, labelled so in every
output) stays for fast tests.
"""

from __future__ import annotations

from pathlib import Path

from mfnet_core.errors import ModelNotFoundError
from mfnet_core.head.flame import FLAME, FlameAssets, load_flame_assets
from mfnet_core.head.ict import ICTAssets, ICTFaceModel, load_ict_assets
from mfnet_core.head.interface import HeadModel
from mfnet_core.inputs.model_files import find_flame_model

__all__ = [
    "MODEL_KINDS",
    "DEFAULT_SHAPE_COMPONENTS",
    "DEFAULT_EXPRESSION_COMPONENTS",
    "load_head_model",
    "load_model_assets",
    "resolve_kind",
]

MODEL_KINDS = ("auto", "ict", "flame", "test-head")
# Components the fit frees (the rest stay at zero): FLAME's first 100 identity and 50
# expression components carry almost all of its variance. The ICT model keeps all of its
# own (100 identity, 53 ARKit expressions).
DEFAULT_SHAPE_COMPONENTS = 100
DEFAULT_EXPRESSION_COMPONENTS = 50


def resolve_kind(kind: str = "auto", flame_path: Path | None = None) -> str:
    """`auto` -> "flame" when a FLAME model is found, else "ict"; other kinds unchanged."""
    if kind not in MODEL_KINDS:
        raise ModelNotFoundError(f"unknown head model {kind!r}; use {', '.join(MODEL_KINDS)}")
    if kind == "auto":
        return "flame" if find_flame_model(flame_path) is not None else "ict"
    return kind


def load_model_assets(kind: str = "auto", flame_path: Path | None = None) -> FlameAssets:
    """The model files for `kind`, read and checked (one clear error for a bad file)."""
    kind = resolve_kind(kind, flame_path)
    if kind == "test-head":
        # imported here: the test head's generator pulls in scipy.interpolate (~0.3 s of a
        # cold start) that the other models never need
        from mfnet_core.head.testhead import ensure_test_head

        return load_flame_assets(ensure_test_head())
    if kind == "ict":
        return load_ict_assets()
    model = find_flame_model(flame_path)
    if model is None:
        raise ModelNotFoundError(
            "--model flame: no FLAME model found (run `mfnet doctor` to see where to put it)"
        )
    return load_flame_assets(model)


def load_head_model(
    kind: str = "auto",
    flame_path: Path | None = None,
    n_shape: int | None = None,
    n_expr: int | None = None,
) -> HeadModel:
    """The head model for `kind`, keeping `n_shape` identity and `n_expr` expression
    components (None: the model's default; fewer when the model has fewer)."""
    assets = load_model_assets(kind, flame_path)
    if isinstance(assets, ICTAssets):
        return ICTFaceModel(assets, n_shape=n_shape, n_expr=n_expr)
    return FLAME(
        assets,
        n_shape=DEFAULT_SHAPE_COMPONENTS if n_shape is None else n_shape,
        n_expr=DEFAULT_EXPRESSION_COMPONENTS if n_expr is None else n_expr,
    )
