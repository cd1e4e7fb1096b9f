"""Adaptive sampler: idle vs active rates on synthetic static and moving frames, with an injected clock."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.profile import Sampler
from edge_runtime.run.sampler import AdaptiveSampler
from edge_runtime.types import Frame

CAMERA_FPS = 30.0
W, H = 320, 240


class FakeClock:
    """Manual time, advanced by the test the way a 30 fps camera would."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def background(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((H, W, 3), 90, np.uint8)
    image[:, :, 1] = np.linspace(40, 200, W, dtype=np.uint8)[np.newaxis, :]
    return np.clip(image.astype(np.int16) + rng.integers(-3, 4, image.shape), 0, 255).astype(np.uint8)


def static_frame(i: int) -> np.ndarray:
    # Sensor-like noise differs frame to frame; it must not read as motion.
    return background(seed=i)


def moving_frame(i: int) -> np.ndarray:
    image = background(seed=i)
    x = (i * 20) % (W - 100)
    image[60:180, x : x + 100] = (20, 20, 230)  # a product sliding through the view
    return image


def run(sampler: AdaptiveSampler, clock: FakeClock, frames: list[np.ndarray], start: int = 0) -> list[bool]:
    decisions = []
    for i, image in enumerate(frames):
        decisions.append(sampler.should_process(Frame(index=start + i, image=image, ts=0.0, source_ref=str(i))))
        clock.now += 1.0 / CAMERA_FPS
    return decisions


def make(clock: FakeClock, **kwargs: object) -> AdaptiveSampler:
    options: dict = {"idle_fps": 2.0, "active_fps": 15.0, "motion_threshold": 0.02, "clock": clock} | kwargs
    return AdaptiveSampler(**options)


def test_static_scene_samples_at_idle_rate() -> None:
    clock = FakeClock()
    sampler = make(clock)
    decisions = run(sampler, clock, [static_frame(i) for i in range(300)])  # 10 s
    assert sampler.mode == "idle"
    assert sampler.last_motion < 0.02
    assert sum(decisions) == sampler.processed == 20  # 2 fps over 10 s
    assert sampler.skipped == 280
    assert decisions[0]  # the first frame always goes through


def test_moving_scene_samples_at_active_rate() -> None:
    clock = FakeClock()
    sampler = make(clock)
    decisions = run(sampler, clock, [moving_frame(i) for i in range(120)])  # 4 s
    assert sampler.mode == "active"
    assert sampler.last_motion > 0.02
    # 15 fps for 4 s; the first processed frame has no reference, motion starts one frame later.
    assert 59 <= sum(decisions) <= 61


def test_active_rate_keeps_phase_when_camera_rate_is_not_a_multiple() -> None:
    clock = FakeClock()
    sampler = make(clock, active_fps=20.0)
    decisions = run(sampler, clock, [moving_frame(i) for i in range(300)])  # 10 s
    assert 198 <= sum(decisions) <= 201  # 20 fps, not 15 (every other frame)


def test_active_holds_then_returns_to_idle() -> None:
    clock = FakeClock()
    sampler = make(clock, hold_s=2.0)
    run(sampler, clock, [moving_frame(i) for i in range(30)])
    assert sampler.mode == "active"
    still = moving_frame(29)  # the product stops in view: no more change
    held = run(sampler, clock, [still.copy() for _ in range(54)])  # 1.8 s
    assert sampler.mode == "active"
    assert sum(held) >= 25  # still sampled near 15 fps while held
    after = run(sampler, clock, [still.copy() for _ in range(300)])  # 10 s more
    assert sampler.mode == "idle"
    assert sum(after) <= 2 * 10 + 4  # idle rate, plus the tail of the hold


def test_motion_switches_to_active_immediately() -> None:
    clock = FakeClock()
    sampler = make(clock)
    run(sampler, clock, [static_frame(i) for i in range(20)])  # idle; last processed at ~0.5 s
    assert sampler.mode == "idle"
    # The first changed frame is processed at once, not at the next idle tick.
    assert run(sampler, clock, [moving_frame(100)], start=20) == [True]
    assert sampler.mode == "active"


def test_disabled_passes_every_frame() -> None:
    clock = FakeClock()
    sampler = make(clock, enabled=False)
    assert all(run(sampler, clock, [static_frame(i) for i in range(50)]))
    assert sampler.processed == 50 and sampler.skipped == 0
    assert sampler.mode == "active"


def test_explicit_time_and_plain_arrays() -> None:
    sampler = AdaptiveSampler(1.0, 10.0, 0.02, clock=lambda: pytest.fail("clock must not be used"))
    image = static_frame(0)
    decisions = [sampler.should_process(image, now=i / 30.0) for i in range(90)]  # 3 s of video time
    assert sum(decisions) == 3


def test_from_profile() -> None:
    section = Sampler(idle_fps=1.0, active_fps=5.0, motion_threshold=0.1)
    sampler = AdaptiveSampler.from_profile(section)
    assert (sampler.idle_fps, sampler.active_fps, sampler.motion_threshold, sampler.enabled) == (1.0, 5.0, 0.1, True)
    assert AdaptiveSampler.from_profile(section, enabled=False).enabled is False


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        AdaptiveSampler(5.0, 1.0, 0.02)
    with pytest.raises(ValueError):
        AdaptiveSampler(0.0, 1.0, 0.02)
    with pytest.raises(ValueError):
        AdaptiveSampler(1.0, 2.0, 1.5)
