"""Frame sources on real media: a demo video, a folder of real JPEGs, truncated files, and a live MJPEG stream.

The live-stream tests serve multipart MJPEG over HTTP from a thread on 127.0.0.1 and read it with OpenCV's
FFMPEG backend, exactly as a real IP camera would be read, then stop and restart the server to exercise
reconnection.
"""

from __future__ import annotations

import http.server
import itertools
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.demo import generate_demo_video
from edge_runtime.errors import InputError
from edge_runtime.run import sources
from edge_runtime.run.sources import (
    ImageFolderSource,
    LiveSource,
    SourceError,
    VideoFileSource,
    csi_pipeline,
    open_source,
    redact_uri,
)

# --------------------------------------------------------------------------- media


@pytest.fixture(scope="module")
def demo_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_video(
        tmp_path_factory.mktemp("video") / "demo.mp4", seed=3, seconds=2, fps=10, size=(160, 120)
    )


def decode_all(path: Path) -> list[np.ndarray]:
    """Every frame as OpenCV decodes it directly: the reference a source must match."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames


def mjpg_avi(path: Path, n: int = 20) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    assert writer.isOpened()
    for i in range(n):
        image = np.full((120, 160, 3), 20, np.uint8)
        cv2.putText(image, str(i), (40, 80), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3)
        writer.write(image)
    writer.release()
    return path


def jpeg_bytes(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


# --------------------------------------------------------------------------- video files


def test_video_reads_every_frame_once_in_order(demo_video: Path) -> None:
    reference = decode_all(demo_video)
    assert len(reference) == 20
    source = open_source(str(demo_video), camera="cam0")
    assert isinstance(source, VideoFileSource) and not source.live
    frames = list(source)
    assert [f.index for f in frames] == list(range(20))
    assert [f.source_ref for f in frames] == [str(i) for i in range(20)]
    assert all(f.camera == "cam0" for f in frames)
    assert all(np.array_equal(f.image, ref) for f, ref in zip(frames, reference, strict=True))
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(frames))
    assert source.read() is None and source.read() is None  # ended stays ended
    assert source.frames_read == 20 and source.read_failures == 0
    assert "20 frames" in source.describe()
    source.close()


def test_truncated_video_ends_cleanly(tmp_path: Path) -> None:
    full = mjpg_avi(tmp_path / "full.avi")
    reference = decode_all(full)
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with open_source(str(cut)) as source:
        frames = list(source)
        assert 1 < len(frames) < len(reference)
        assert [f.index for f in frames] == list(range(len(frames)))
        # The frame the cut went through may decode partially (FFMPEG fills what it has); the rest are exact.
        assert all(np.array_equal(f.image, reference[f.index]) for f in frames[:-1])
        assert frames[-1].image.shape == reference[0].shape
        assert source.read() is None
        assert source.read_failures >= 1  # the reads past the cut, before it gave up
        assert source.read() is None


def test_truncated_mp4_without_index_is_a_clear_error(demo_video: Path, tmp_path: Path) -> None:
    # OpenCV writes the mp4 index at the end; without it the container cannot be opened at all.
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(demo_video.read_bytes()[: demo_video.stat().st_size // 2])
    with pytest.raises(SourceError, match=r"cannot open video file .*cut\.mp4"):
        open_source(str(cut))


# --------------------------------------------------------------------------- image folders


def test_folder_reads_readable_images_in_name_order(tmp_path: Path) -> None:
    names = ["img_010.jpg", "img_002.jpg", "img_001.png", "img_003.jpeg", "img_007.JPG"]
    for i, name in enumerate(names):
        if name.endswith(".png"):
            cv2.imwrite(str(tmp_path / name), np.full((30, 40, 3), i * 40, np.uint8))
        else:
            (tmp_path / name).write_bytes(jpeg_bytes(i))
    (tmp_path / "img_004.jpg").write_bytes(jpeg_bytes(99)[:300])  # truncated mid-scan
    (tmp_path / "img_005.jpg").write_bytes(b"this is not a jpeg at all")
    (tmp_path / "img_006.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image, ignored")
    (tmp_path / ".hidden.jpg").write_bytes(jpeg_bytes(5))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "img_000.jpg").write_bytes(jpeg_bytes(6))  # not recursive

    source = open_source(str(tmp_path))
    assert isinstance(source, ImageFolderSource) and not source.live
    frames = list(source)
    expected = ["img_001.png", "img_002.jpg", "img_003.jpeg", "img_007.JPG", "img_010.jpg"]
    assert [f.source_ref for f in frames] == expected
    assert [f.index for f in frames] == list(range(5))
    for frame in frames:
        assert np.array_equal(frame.image, cv2.imread(str(tmp_path / frame.source_ref)))
    assert source.read() is None
    assert source.skipped == 3
    assert [name for name, _ in source.skipped_files] == ["img_004.jpg", "img_005.jpg", "img_006.jpg"]
    assert "truncated" in source.skipped_files[0][1]


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(SourceError, match=str(tmp_path)):
        open_source(str(tmp_path))


# --------------------------------------------------------------------------- URIs


def test_missing_path_names_the_uri_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(SourceError, match=r"nope\.mp4") as info:
        open_source(str(missing))
    assert info.value.hint and "camera.source" in info.value.hint
    assert isinstance(info.value, InputError)


@pytest.mark.parametrize("uri", ["", "   ", "ftp://host/x.mp4", "csi://front", "rtsp:///nohost", "gst:"])
def test_unparseable_uris(uri: str) -> None:
    with pytest.raises(SourceError):
        open_source(uri)


def test_csi_pipeline_string() -> None:
    assert csi_pipeline(0, 1280, 720, 30) == (
        "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=1 max-buffers=2"
    )
    assert "framerate=30000/1001" in csi_pipeline(1, 1920, 1080, 30000 / 1001)
    assert "width=1920,height=1080,framerate=15/1" in csi_pipeline(1, 1920, 1080, 15.0)
    with pytest.raises(SourceError):
        csi_pipeline(0, 0, 720, 30)


def test_gst_and_csi_without_gstreamer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "gstreamer_available", lambda: False)
    for uri in ("gst:videotestsrc ! videoconvert ! appsink", "csi://0"):
        with pytest.raises(SourceError, match="no GStreamer support") as info:
            open_source(uri)
        assert info.value.hint and "Jetson OpenCV build" in info.value.hint


def test_gst_pipeline_must_end_in_appsink() -> None:
    with pytest.raises(SourceError, match="appsink"):
        open_source("gst:videotestsrc ! autovideosink")


@pytest.mark.parametrize(
    ("video_io", "available"),
    [
        ("    GStreamer:                   YES (1.20.3)\n    v4l/v4l2:                    YES", True),
        ("    GStreamer:                   NO\n    v4l/v4l2:                    YES", False),
        ("    GStreamer:                   yes", True),  # the build's own spelling varies
        ("    FFMPEG:                      YES\n      avcodec:                   YES (58.134.100)", False),  # no line
        ("    GStreamer-plugins:           YES\n    GStreamer:                   NO", False),  # the exact key only
        ("  # GStreamer: YES is what Jetson builds print", False),  # not a key at the start of a line
    ],
)
def test_gstreamer_detection_reads_the_build_information(
    monkeypatch: pytest.MonkeyPatch, video_io: str, available: bool
) -> None:
    info = "General configuration for OpenCV 4.10.0\n  Video I/O:\n" + video_io + "\n  Parallel framework: pthreads\n"
    monkeypatch.setattr(sources.cv2, "getBuildInformation", lambda: info)
    assert sources.gstreamer_available() is available


def test_camera_uris_are_live_and_lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing is opened until the first read, so these need no hardware.
    monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", raising=False)  # restored after the test
    for uri, kind in [
        ("/dev/video9", "V4L2 camera"),
        ("0", "V4L2 camera"),
        ("rtsp://user:secret@10.0.0.5:554/stream1", "rtsp stream"),
        ("http://10.0.0.6/video.mjpg", "http stream"),
    ]:
        source = open_source(uri, camera="front")
        assert isinstance(source, LiveSource) and source.live
        assert kind in source.describe()
        assert "secret" not in source.describe()
        source.close()
        assert source.read() is None  # closed before it ever connected
    assert os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] == "rtsp_transport;tcp"


def test_redact_uri() -> None:
    assert redact_uri("rtsp://admin:hunter2@cam.local:554/s") == "rtsp://admin:***@cam.local:554/s"
    assert redact_uri("rtsp://cam.local/s") == "rtsp://cam.local/s"


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
