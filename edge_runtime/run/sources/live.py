"""The live sources: a camera or stream that reconnects with exponential backoff once it has delivered a frame.

Its own room because a live source never ends on its own: when a stream drops it reconnects and counts it, so a
flaky camera costs frames, not the service. The one fatal live failure is at startup: a camera that never
delivers a first frame within ``startup_timeout_s`` raises ``SourceError`` so systemd sees a startup error
instead of a silent service. How a capture is opened (FFMPEG, V4L2, GStreamer) is the opener's business
(``run.sources.uri``); this module only drives it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from edge_runtime.run.sources.base import Source, SourceError, redact_uri
from edge_runtime.types import Frame

log = logging.getLogger(__name__)


class Capture(Protocol):
    """The subset of ``cv2.VideoCapture`` a live source uses; anything with it can stand in for a camera."""

    def isOpened(self) -> bool: ...  # OpenCV's spelling, so cv2.VideoCapture fits as is

    def read(self) -> tuple[bool, Any]: ...

    def release(self) -> None: ...


class LiveSource(Source):
    """A camera or stream that reconnects forever once it has delivered a first frame.

    ``opener`` returns a fresh capture (``cv2.VideoCapture`` or anything with its ``isOpened/read/release``);
    it is called for the first connection and for every reconnection. Waits between attempts start at
    ``backoff_initial_s`` and double up to ``backoff_max_s``; a delivered frame resets them. Until the first
    frame, the source gives up after ``startup_timeout_s`` with ``SourceError``. ``close()`` may be called from
    another thread and ends a blocked ``read()`` with ``None`` at the next attempt or wait.
    """

    live = True

    def __init__(
        self,
        uri: str,
        opener: Callable[[], Capture],
        *,
        kind: str,
        camera: str = "",
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        startup_timeout_s: float = 30.0,
        nominal_fps: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(uri, camera=camera)
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        if not startup_timeout_s > 0:
            raise ValueError("startup_timeout_s must be positive")
        self.kind = kind
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.startup_timeout_s = startup_timeout_s
        self.nominal_fps = nominal_fps
        self._opener = opener
        self._clock = clock
        self._lock = threading.Lock()
        self._cap: Capture | None = None
        self._backoff = backoff_initial_s
        self._attempts = 0  # open attempts in total, the first connection included
        self._started_at: float | None = None
        self._outage_since: float | None = None
        self._outage_attempts = 0
        self._last_error = ""

    def _connect(self) -> bool:
        if self._attempts:
            self.reconnects += 1
            self._outage_attempts += 1
        self._attempts += 1
        try:
            cap = self._opener()
        except Exception as exc:  # backends raise cv2.error, OSError, ...; all of them mean "not now"
            self._last_error = f"open failed: {exc}"
            return False
        if not cap.isOpened():
            cap.release()
            self._last_error = "open failed (unreachable, refused or not a stream OpenCV can decode)"
            return False
        self._cap = cap
        return True

    def _drop_capture(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _failed(self, now: float) -> None:
        self.read_failures += 1
        if self._outage_since is None:
            self._outage_since = now
            self._outage_attempts = 0
            if self.frames_read:
                log.warning("%s: %s; reconnecting", self.describe(), self._last_error)
            else:
                log.info(
                    "%s: not delivering yet (%s); retrying for up to %g s",
                    self.describe(),
                    self._last_error,
                    self.startup_timeout_s,
                )

    def _wait_before_retry(self) -> None:
        now = self._clock()
        delay = self._backoff
        if not self.frames_read:
            assert self._started_at is not None
            remaining = self._started_at + self.startup_timeout_s - now
            if remaining <= 0:
                raise SourceError(
                    f"{self.describe()} delivered no frame within {self.startup_timeout_s:g} s "
                    f"after {self._attempts} attempt(s); last error: {self._last_error}",
                    hint="check the camera's cable/power, the URI, the network path and credentials",
                )
            delay = min(delay, remaining)
        log.debug("%s: retrying in %.2f s (%s)", self.describe(), delay, self._last_error)
        self._closed.wait(delay)
        self._backoff = min(self._backoff * 2, self.backoff_max_s)

    def read(self) -> Frame | None:
        if self._started_at is None:
            self._started_at = self._clock()
        while not self.closed:
            with self._lock:
                if self.closed:
                    break
                image = None
                if self._cap is not None or self._connect():
                    assert self._cap is not None
                    ok, image = self._cap.read()
                    if not ok or image is None:
                        image = None
                        self._last_error = "read failed (stream ended or stalled)"
                        self._drop_capture()
                if image is not None:
                    if self._outage_since is not None and self.frames_read:
                        log.info(
                            "%s: frames resumed after %.1f s and %d reconnect attempt(s)",
                            self.describe(),
                            self._clock() - self._outage_since,
                            self._outage_attempts,
                        )
                    self._outage_since = None
                    self._backoff = self.backoff_initial_s
                    return self._emit(image)
                self._failed(self._clock())
            self._wait_before_retry()
        return None

    def close(self) -> None:
        super().close()
        with self._lock:
            self._drop_capture()

    def describe(self) -> str:
        name = f"camera {self.camera!r} " if self.camera else ""
        return f"{name}{self.kind} {redact_uri(self.uri)}"
