"""Source URIs: what each form opens (lazily), what is refused and how, CSI pipelines, GStreamer detection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_runtime.errors import InputError
from edge_runtime.run.sources import LiveSource, SourceError, csi_pipeline, open_source, redact_uri
from edge_runtime.run.sources import uri as source_uri

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
    monkeypatch.setattr(source_uri, "gstreamer_available", lambda: False)
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
    monkeypatch.setattr(source_uri.cv2, "getBuildInformation", lambda: info)
    assert source_uri.gstreamer_available() is available


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
