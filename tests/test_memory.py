"""The peak samplers edge-build's footprint child and edge-bench measure with."""

from __future__ import annotations

import time

import numpy as np
import psutil

from edge_runtime.memory import PeakSampler, RssPeakSampler


def test_peak_sampler_keeps_the_largest_reading_and_skips_failures() -> None:
    values = iter([3.0, None, 9.0, 4.0])

    def reader() -> float | None:
        value = next(values, 1.0)
        if value == 4.0:
            raise RuntimeError("the GPU library went away")
        return value

    sampler = PeakSampler(reader, 0.001, "test-peak")
    sampler.start()
    deadline = time.monotonic() + 5
    while sampler.peak != 9.0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sampler.halt() == 9.0 and not sampler.is_alive()
    assert PeakSampler(lambda: None, 0.01, "never").halt() is None  # never started, nothing read


def test_rss_peak_sampler_sees_a_transient_allocation() -> None:
    sampler = RssPeakSampler(0.001)
    sampler.start()
    before = psutil.Process().memory_info().rss
    block = np.ones(64 * 1024 * 1024, np.uint8)  # touched: resident
    time.sleep(0.05)
    del block
    peak = sampler.stop()
    assert peak >= before + 0.8 * 64 * 1024 * 1024
