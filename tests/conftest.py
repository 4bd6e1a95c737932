"""Shared fixtures: the generated test head (NOT FLAME), built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def test_head_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test head's model file, generated fresh into a session temp folder (so tests
    always exercise the current generator, never a stale cache)."""
    from mfnet_core.head.testhead import write_test_head

    return write_test_head(tmp_path_factory.mktemp("testhead"))


@pytest.fixture(scope="session")
def test_head_assets(test_head_path: Path):
    """`FlameAssets` of the generated test head (kind 'test-head')."""
    from mfnet_core.head.flame import load_flame_assets

    return load_flame_assets(test_head_path)


@pytest.fixture(scope="session")
def test_head(test_head_assets):
    """The test head as a head model (`mfnet_core.head.interface.HeadModel`), keeping the
    default 100 identity and 50 expression components."""
    from mfnet_core.head.flame import FLAME

    return FLAME(test_head_assets, n_shape=100, n_expr=50)
