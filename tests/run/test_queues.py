"""The bounded queues between the stage threads: a live camera's drops the oldest frame, a file's blocks."""

from __future__ import annotations

import threading
import time

from edge_runtime.run.queues import END, StageQueue


def test_live_queue_drops_the_oldest_and_file_queue_blocks() -> None:
    live = StageQueue(2)
    assert [live.put_drop_oldest(i) for i in range(5)] == [0, 0, 1, 1, 1]
    assert [live.get_nowait(), live.get_nowait()] == [3, 4]  # the freshest frames survive
    files = StageQueue(1)
    abort = threading.Event()
    assert files.put_or_abort("a", abort)
    threading.Timer(0.3, files.get_nowait).start()
    t0 = time.monotonic()
    assert files.put_or_abort("b", abort) and time.monotonic() - t0 >= 0.25  # waited for room, dropped nothing
    assert files.get_nowait() == "b"
    files.put_nowait("c")
    threading.Timer(0.3, abort.set).start()
    assert not files.put_or_abort("d", abort)  # the consumer died: give up instead of hanging
    assert StageQueue(1).get_or_end(abort) is END  # an empty queue after an abort ends the consumer
