"""Motion-gated frame sampling: a slow idle rate while nothing moves, a fast rate while something does.

Most of a cart camera's day is an empty basket or a still shelf; inferring on every frame of that burns
power and heat for nothing. The sampler looks at every frame cheaply (a 64x48 colour thumbnail) and lets
through at most ``idle_fps`` frames per second when the scene is still and up to ``active_fps`` while it
changes, staying active for ``hold_s`` after the last motion so a product held still for a moment is not
sampled at the idle rate.

Motion is the fraction of thumbnail pixels where some channel changed by more than ``pixel_delta`` against the
last *processed* frame, 0..1, the meaning the profile's ``sampler.motion_threshold`` documents. Comparing
with the last processed frame, not the previous captured one, lets slow changes accumulate until they count,
and the per-pixel delta keeps sensor noise (averaged away by the downscale) from reading as motion.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import cv2
import numpy as np

from edge_runtime.profile import Sampler
from edge_runtime.types import Frame

__all__ = ["THUMB_SIZE", "AdaptiveSampler", "motion_thumbnail"]

THUMB_SIZE = (64, 48)  # (width, height)
# Rates are compared against timestamps that are sums of float intervals; a frame due "exactly now" must not
# lose to rounding and wait a whole extra frame.
_EPSILON_S = 1e-6

Mode = Literal["idle", "active"]


def motion_thumbnail(image: np.ndarray, size: tuple[int, int] = THUMB_SIZE) -> np.ndarray:
    """A small copy (int16, so differences do not wrap) used to measure motion.

    Colour is kept: a red can over a grey shelf of the same brightness is invisible in greyscale, and at
    64x48x3 the extra channels cost nothing worth saving.
    """
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)  # area averaging also suppresses noise
    if small.ndim == 3 and small.shape[2] == 4:
        small = cv2.cvtColor(small, cv2.COLOR_BGRA2BGR)
    return small.astype(np.int16)


class AdaptiveSampler:
    """Decides per frame whether it goes to inference.

    ``should_process(frame)`` measures motion against the reference (last processed) thumbnail, switches to
    ``"active"`` when it exceeds ``motion_threshold`` and back to ``"idle"`` ``hold_s`` after the last motion,
    and lets a frame through when the current mode's interval has elapsed since the previous one. Frame times
    come from ``clock`` unless the caller passes ``now`` (e.g. ``index / fps`` to sample a video file that
    is read faster than real time). Disabled, it passes every frame and measures nothing.
    """

    def __init__(
        self,
        idle_fps: float,
        active_fps: float,
        motion_threshold: float,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        *,
        hold_s: float = 2.0,
        pixel_delta: int = 25,
    ) -> None:
        if not (idle_fps > 0 and active_fps > 0):
            raise ValueError(f"idle_fps and active_fps must be positive, got {idle_fps} and {active_fps}")
        if active_fps < idle_fps:
            raise ValueError(f"active_fps ({active_fps}) must be >= idle_fps ({idle_fps})")
        if not 0 <= motion_threshold <= 1:
            raise ValueError(f"motion_threshold must be in 0..1, got {motion_threshold}")
        if hold_s < 0 or not 0 <= pixel_delta <= 255:
            raise ValueError("hold_s must be >= 0 and pixel_delta in 0..255")
        self.idle_fps = float(idle_fps)
        self.active_fps = float(active_fps)
        self.motion_threshold = float(motion_threshold)
        self.enabled = enabled
        self.hold_s = float(hold_s)
        self.pixel_delta = int(pixel_delta)
        self._clock = clock
        self.mode: Mode = "idle" if enabled else "active"
        self.last_motion = 0.0  # motion measure of the latest frame, 0..1
        self.processed = 0
        self.skipped = 0
        self._reference: np.ndarray | None = None
        self._last_motion_at: float | None = None
        self._due_base: float | None = None  # scheduled time of the last processed frame

    @classmethod
    def from_profile(
        cls, section: Sampler, *, enabled: bool | None = None, clock: Callable[[], float] = time.monotonic
    ) -> AdaptiveSampler:
        """From the profile's ``[sampler]``; ``enabled=False`` overrides it (image folders: every image counts)."""
        return cls(
            section.idle_fps,
            section.active_fps,
            section.motion_threshold,
            enabled=section.enabled if enabled is None else enabled,
            clock=clock,
        )

    def motion(self, thumb: np.ndarray) -> float:
        """Fraction of pixels that changed against the reference thumbnail, 0..1.

        With no reference yet (the first frame, which is always processed) there is nothing to compare, and
        starting every run in active mode would spend the first ``hold_s`` at the fast rate for nothing.
        """
        if self._reference is None or self._reference.shape != thumb.shape:
            return 0.0
        diff = np.abs(thumb - self._reference)
        if diff.ndim == 3:
            diff = diff.max(axis=2)
        return float(np.count_nonzero(diff > self.pixel_delta) / diff.size)

    def should_process(self, frame: Frame | np.ndarray, now: float | None = None) -> bool:
        if not self.enabled:
            self.processed += 1
            return True
        now = self._clock() if now is None else now
        image = frame.image if isinstance(frame, Frame) else frame
        thumb = motion_thumbnail(image)
        self.last_motion = self.motion(thumb)

        if self.last_motion > self.motion_threshold:
            self.mode = "active"
            self._last_motion_at = now
        elif self.mode == "active" and self._last_motion_at is not None and now - self._last_motion_at > self.hold_s:
            self.mode = "idle"

        interval = 1.0 / (self.active_fps if self.mode == "active" else self.idle_fps)
        if self._due_base is not None:
            due = self._due_base + interval
            if now + _EPSILON_S < due:
                self.skipped += 1
                return False
            # Keep the schedule's phase so a 30 fps camera sampled at 20 fps averages 20, not 15; after a gap
            # longer than an interval start a fresh schedule instead of bursting to catch up.
            self._due_base = due if now - due < interval else now
        else:
            self._due_base = now
        self._reference = thumb
        self.processed += 1
        return True

    def reset(self) -> None:
        """Forget the reference frame and schedule (e.g. after a camera reconnect changed the scene)."""
        self._reference = None
        self._due_base = None
        self._last_motion_at = None
        self.mode = "idle" if self.enabled else "active"
        self.last_motion = 0.0
