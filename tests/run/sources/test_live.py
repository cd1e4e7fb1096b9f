"""Live sources on a real stream: multipart MJPEG served over HTTP from a thread on 127.0.0.1, read with OpenCV's
FFMPEG backend exactly as a real IP camera would be read, then stopped and restarted to exercise reconnection.
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from edge_runtime.run.sources import SourceError, open_source

# --------------------------------------------------------------------------- live MJPEG over HTTP


class MjpegServer:
    """A minimal IP camera: multipart MJPEG over HTTP; each frame's grey level encodes the server generation."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.generation = 0
        self._server: socketserver.ThreadingTCPServer | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        self.generation += 1
        self._stop = threading.Event()
        level, stop = 40 * self.generation, self._stop

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                image = np.full((48, 64, 3), level, np.uint8)
                payload = cv2.imencode(".jpg", image)[1].tobytes()
                part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(payload)
                try:
                    while not stop.is_set():
                        self.wfile.write(part + payload + b"\r\n")
                        self.wfile.flush()
                        time.sleep(0.02)
                except OSError:
                    pass  # the client went away

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()  # ends the open streams, like a camera losing power
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"


@pytest.fixture
def mjpeg_server() -> Iterator[MjpegServer]:
    server = MjpegServer()
    server.start()
    yield server
    server.stop()


def generation(frame_image: np.ndarray) -> int:
    return round(float(frame_image.mean()) / 40)


FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "startup_timeout_s": 5.0, "io_timeout_s": 2.0}


def test_live_stream_reconnects_and_resumes(mjpeg_server: MjpegServer) -> None:
    source = open_source(mjpeg_server.url, camera="ipcam", **FAST)
    assert source.live
    first = [source.read() for _ in range(5)]
    assert all(f is not None and generation(f.image) == 1 for f in first)
    assert source.reconnects == 0 and source.read_failures == 0

    mjpeg_server.stop()
    # The camera is back after ~0.8 s: several backoff periods (0.05, 0.1, 0.2, 0.2, ...).
    restart = threading.Timer(0.8, mjpeg_server.start)
    restart.start()
    try:
        started = time.monotonic()
        frames = []
        while time.monotonic() - started < 10:
            frame = source.read()
            assert frame is not None
            frames.append(frame)
            if generation(frame.image) == 2:
                break
    finally:
        restart.join()
    assert generation(frames[-1].image) == 2, "frames from the restarted server never arrived"
    assert source.reconnects >= 3
    assert source.read_failures >= 3
    indices = [f.index for f in first + frames]
    assert indices == list(range(len(indices)))  # strictly increasing across the outage
    assert [f.source_ref for f in first + frames] == [str(i) for i in indices]
    source.close()
    assert source.read() is None


def test_live_stream_close_unblocks_a_waiting_read(mjpeg_server: MjpegServer) -> None:
    source = open_source(mjpeg_server.url, **FAST)
    assert source.read() is not None
    mjpeg_server.stop()
    drained: list[int] = []
    reader = threading.Thread(target=lambda: drained.extend(f.index for f in source))  # runs until None
    reader.start()
    time.sleep(0.5)
    assert reader.is_alive()  # retrying, not raising: the outage is transient
    source.close()
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert source.read_failures >= 1 and source.reconnects >= 1
    assert len(drained) <= 5  # at most what FFMPEG had buffered before the stop


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_live_stream_that_never_starts_is_a_startup_error() -> None:
    url = f"http://user:pw@127.0.0.1:{free_port()}/stream.mjpg"
    source = open_source(url, camera="door", **(FAST | {"startup_timeout_s": 0.5}))
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"delivered no frame within 0\.5 s") as info:
        source.read()
    assert time.monotonic() - started < 3
    assert "pw" not in str(info.value)
    assert source.reconnects >= 2 and source.read_failures >= 3
