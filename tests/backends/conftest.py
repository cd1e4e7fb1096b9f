"""Shared by the backend tests: TensorRT must never be imported into the test process."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="module")
def _tensorrt_stays_out_of_this_process() -> Iterator[None]:
    yield
    assert "tensorrt" not in sys.modules, "tensorrt was imported into the test process"
