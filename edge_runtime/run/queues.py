"""The bounded queues between edge-run's stage threads, their depths, and the end marker.

``FRAME_QUEUE + TENSOR_QUEUE + PUBLISH_QUEUE`` frames at the camera resolution is what edge-build counts in the
footprint as the frame queue (``builder.footprint.FRAME_QUEUE_DEPTH``; a test keeps them in step), plus the tensor
queue's float tensors: ``TENSOR_QUEUE`` x regions per frame x 3 x S x S x 4 bytes at the variant's input size
(1.2 MiB for full-frame regions at 224 px; 18 MiB with 16 detector regions). Crops are views into their frame,
copied only once the head says they will be published.

Each queue carries the end marker (``END``) on to the next, so a stop or the end of a file processes and stores
every frame already read.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Final

__all__ = ["END", "FRAME_QUEUE", "POLL_S", "PUBLISH_QUEUE", "TENSOR_QUEUE", "StageQueue"]

FRAME_QUEUE: Final = 2  # frames waiting for preprocessing
# Prepared frames waiting for the backend. Enough to double-buffer (one being embedded, the next ready, one
# more to absorb jitter); not more, because a frame that got this far is never dropped, so on a live camera
# each slot is one more frame of delay when inference is the bottleneck.
TENSOR_QUEUE: Final = 2
PUBLISH_QUEUE: Final = 2  # inferred frames waiting to be encoded and stored
POLL_S: Final = 0.2  # how often a blocked put or get looks at the abort flag
END: Final = None  # queue sentinel: the producer is done


class StageQueue(queue.Queue[Any]):
    """A bounded queue between two stages. ``None`` (``END``) tells the consumer that the producer is done.

    ``abort`` is set when a stage died: a producer must not wait forever for a consumer that is gone, and a
    consumer must not wait forever for an end marker that will never come.
    """

    def put_or_abort(self, item: Any, abort: threading.Event) -> bool:
        """Block until there is room (never drops); False only when ``abort`` is set meanwhile."""
        while True:
            try:
                self.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                if abort.is_set():
                    return False

    def put_drop_oldest(self, item: Any) -> int:
        """Never block: while full, drop the oldest item (a stale frame is worth less than a fresh one).

        Returns how many were dropped.
        """
        dropped = 0
        while True:
            try:
                self.put_nowait(item)
                return dropped
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self.get_nowait()
                    dropped += 1

    def get_or_end(self, abort: threading.Event) -> Any:
        """The next item; ``END`` when ``abort`` is set while the queue is empty."""
        while True:
            try:
                return self.get(timeout=POLL_S)
            except queue.Empty:
                if abort.is_set():
                    return END
