"""What edge-run's stage threads hand each other and report: one frame's timing for edge-bench, the running
counts, the per-frame items between the threads, and the throttled per-frame error log. Kept apart from the
loops themselves (``run.stages``) so that each stays one room."""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.types import Decision, Region

__all__ = ["Counts", "FrameTiming", "Inferred", "Prepared", "StageError", "Throttled"]

log = logging.getLogger("edge_runtime.run.stages")  # the loops' logger: their messages keep their name

ERROR_LOG_INTERVAL_S = 30.0


@dataclass(frozen=True)
class FrameTiming:
    """Where one processed frame's time went, for ``RunOptions.on_frame`` (edge-bench).

    ``stages`` holds seconds per stage that ran for the frame (``metrics.STAGES`` names; a frame without
    regions has no preprocess, inference or head). Their sum is the frame's latency when it waits in no queue;
    ``latency_s`` runs from the start of its read to its messages being stored, queue waits included.
    """

    frame_id: int
    regions: int
    stages: dict[str, float]
    latency_s: float
    done: float  # time.monotonic() when the frame's messages were stored


@dataclass
class Counts:
    """What the stages have done so far (``Stages.snapshot()`` hands out copies)."""

    frames_read: int = 0
    frames_processed: int = 0
    frames_skipped: int = 0
    frames_dropped: int = 0
    frame_errors: int = 0
    regions: int = 0
    routes: Tally[str] = field(default_factory=Tally)
    messages: Tally[str] = field(default_factory=Tally)  # stored messages by topic


class Throttled:
    """Log a recurring per-frame problem once, then at most once per interval with a count."""

    def __init__(self, interval_s: float = ERROR_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last = float("-inf")
        self._pending = 0

    def __call__(self, text: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            more = f" (+{self._pending} more since the last report)" if self._pending else ""
            log.error(text + more, *args, exc_info=self._last == float("-inf"))
            self._last, self._pending = now, 0
        else:
            self._pending += 1


class StageError(Exception):
    """A per-frame failure, tagged with the stage it happened in (the cause is the original exception)."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


@dataclass
class Prepared:
    """What the preprocess thread hands to the inference thread for one frame."""

    frame_id: int
    source_ref: str
    ts: float  # capture wall-clock time
    regions: list[Region]
    # Views into the frame, not copies: which crops get published is known only after the head, and copying
    # every crop here would cost each frame what only unknown/verify objects need.
    views: list[np.ndarray]
    batch: np.ndarray | None  # [regions, 3, S, S] float32; None when the frame has no regions
    colour: np.ndarray | None  # [regions, COLOUR_DIM] when the head reads colour
    spent: dict[str, float] = field(default_factory=dict)  # seconds per stage so far, for on_frame
    image: np.ndarray | None = None  # the frame, for a scene that reads pixels (shelf emptiness)


@dataclass
class Inferred:
    """What the inference thread hands to the publish thread for one frame."""

    frame_id: int
    source_ref: str
    ts: float  # capture wall-clock time
    regions: list[Region]
    decisions: list[Decision]
    crops: list[np.ndarray | None]  # copies for objects that get an unknown/verify message with a crop
    spent: dict[str, float] = field(default_factory=dict)  # seconds per stage so far, for on_frame
    # For a scene (run/scene/): the head input of every region, their pixels and the frame; None otherwise.
    features: np.ndarray | None = None
    views: list[np.ndarray] | None = None
    image: np.ndarray | None = None
