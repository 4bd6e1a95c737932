"""Which head model a run uses: `--model auto|flame|test-head`.

`auto` is FLAME when the user has it (never shipped, never fetched), else the generated test
head, which is labelled as not FLAME in every output.
"""

from __future__ import annotations

from pathlib import Path

from mfnet_core.errors import ModelNotFoundError
from mfnet_core.head.flame import FLAME, FlameAssets, load_flame_assets
from mfnet_core.head.interface import HeadModel
from mfnet_core.head.testhead import ensure_test_head
from mfnet_core.inputs.model_files import find_flame_model

__all__ = [
    "MODEL_KINDS",
    "DEFAULT_SHAPE_COMPONENTS",
    "DEFAULT_EXPRESSION_COMPONENTS",
    "load_head_model",
    "load_model_assets",
]

MODEL_KINDS = ("auto", "flame", "test-head")
# Components the fit frees (the rest stay at zero): FLAME's first 100 identity and 50
# expression components carry almost all of its variance.
DEFAULT_SHAPE_COMPONENTS = 100
DEFAULT_EXPRESSION_COMPONENTS = 50


def load_model_assets(kind: str = "auto", flame_path: Path | None = None) -> FlameAssets:
    """The model files for `kind`, read and checked (one clear error for a bad file)."""
    if kind not in MODEL_KINDS:
        raise ModelNotFoundError(f"unknown head model {kind!r}; use {', '.join(MODEL_KINDS)}")
    if kind == "test-head":
        return load_flame_assets(ensure_test_head())
    model = find_flame_model(flame_path)
    if model is not None:
        return load_flame_assets(model)
    if kind == "flame":
        raise ModelNotFoundError(
            "--model flame: no FLAME model found (run `mfnet doctor` to see where to put it)"
        )
    return load_flame_assets(ensure_test_head())


def load_head_model(
    kind: str = "auto",
    flame_path: Path | None = None,
    n_shape: int = DEFAULT_SHAPE_COMPONENTS,
    n_expr: int = DEFAULT_EXPRESSION_COMPONENTS,
) -> HeadModel:
    """The head model for `kind`, keeping `n_shape` identity and `n_expr` expression
    components (fewer when the model has fewer)."""
    return FLAME(load_model_assets(kind, flame_path), n_shape=n_shape, n_expr=n_expr)
