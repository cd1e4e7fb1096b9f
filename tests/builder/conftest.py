"""Fixtures of the builder tests: the small generated catalogue edge-build and edge-check tests build from."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.demo import generate_demo_catalogue


@pytest.fixture(scope="session")
def small_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quarter-size demo catalogue (31 SKUs), generated once per session; tests must not change it."""
    return generate_demo_catalogue(tmp_path_factory.mktemp("cat") / "demo", seed=3, scale=0.25)
