"""Which head model a run uses."""

from __future__ import annotations

from pathlib import Path

from mfnet_core.head.flame import load_flame_assets
from mfnet_core.head.testhead import ensure_test_head
from mfnet_core.inputs.model_files import find_flame_model


def load_model_or_test_head(explicit: Path | None = None):  # -> FlameAssets
    """The real FLAME when it is found, else the generated test head (kind 'test-head')."""

    model = find_flame_model(explicit)
    if model is not None:
        return load_flame_assets(model)

    return load_flame_assets(ensure_test_head())
