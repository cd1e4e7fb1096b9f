"""What a source URI means, and opening the source it names (``open_source``).

``open_source(uri)`` understands:

==============================  ==================================================================
``/path/video.mp4``             a video file (finite; ``source_ref`` = frame index)
``/path/folder/``               images in a folder, sorted by name (finite; ``source_ref`` = file name)
``rtsp://``, ``rtsps://``       a network stream through OpenCV's FFMPEG backend (live)
``http://``, ``https://``       e.g. an MJPEG-over-HTTP camera (live)
``/dev/videoN`` or ``N``        a V4L2 camera (live)
``gst:PIPELINE``                a GStreamer pipeline ending in ``appsink`` (live; needs GStreamer in OpenCV)
``csi://N``                     a Jetson CSI sensor through nvarguscamerasrc (live; see ``csi_pipeline``)
==============================  ==================================================================

Its own room because this is where the source kinds meet: parsing and checking the URI, expanding ``csi://N``
into a GStreamer pipeline, and choosing the OpenCV backend and its options for each kind. Connection is lazy:
``open_source`` validates the URI, the first ``read()`` of a live source connects.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2

from edge_runtime.run.sources.base import Source, SourceError, redact_uri
from edge_runtime.run.sources.files import ImageFolderSource, VideoFileSource
from edge_runtime.run.sources.live import Capture, LiveSource

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")
DEFAULT_CSI_SIZE = (1280, 720)
DEFAULT_CSI_FPS = 30.0


def gstreamer_available() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines (pip wheels cannot; the Jetson build can)."""
    match = re.search(r"^\s*GStreamer:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return match is not None and match.group(1).upper() == "YES"


def _fps_fraction(fps: float) -> str:
    # GStreamer caps want a fraction; 29.97 must become 30000/1001, not a rounded 30/1.
    frac = Fraction(fps).limit_denominator(1001)
    return f"{frac.numerator}/{frac.denominator}"


def csi_pipeline(sensor_id: int, width: int, height: int, fps: float) -> str:
    """The nvarguscamerasrc pipeline for Jetson CSI sensor ``sensor_id``, delivering BGR to an appsink.

    ``drop=1 max-buffers=2`` keep the appsink from queueing stale frames when inference is slower than the sensor.
    """
    if sensor_id < 0 or width <= 0 or height <= 0 or not fps > 0:
        raise SourceError(
            f"invalid CSI camera settings: sensor {sensor_id}, {width}x{height} @ {fps} fps",
            hint="use a sensor id >= 0 and a positive size and frame rate",
        )
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={width},height={height},framerate={_fps_fraction(fps)} ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=1 max-buffers=2"
    )


def _ffmpeg_opener(uri: str, io_timeout_s: float) -> Callable[[], Capture]:
    ms = int(io_timeout_s * 1000)
    # Without these OpenCV waits ~30 s on a dead host and forever on a stalled stream.
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    return lambda: cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)


def _v4l2_opener(device: int | str, width: int | None, height: int | None, fps: float | None) -> Callable[[], Capture]:
    def open_v4l2() -> Capture:
        cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
        if cap.isOpened():
            # Requests, not guarantees: the driver picks the nearest mode it supports.
            if width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            if height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
            if fps:
                cap.set(cv2.CAP_PROP_FPS, fps)
        return cap

    return open_v4l2


def _gst_opener(pipeline: str) -> Callable[[], Capture]:
    return lambda: cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)


def _require_gstreamer(uri: str) -> None:
    if not gstreamer_available():
        raise SourceError(
            f"cannot open {uri}: this OpenCV build has no GStreamer support",
            hint="install the Jetson OpenCV build with GStreamer (JetPack's python3-opencv, not the pip "
            "opencv-python wheels, which shadow it), or use an rtsp://, /dev/videoN or file source",
        )


def open_source(
    uri: str,
    *,
    camera: str = "",
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    backoff_initial_s: float = 0.5,
    backoff_max_s: float = 30.0,
    startup_timeout_s: float = 30.0,
    io_timeout_s: float = 10.0,
) -> Source:
    """Open the source ``uri`` names (see the module doc). ``width/height/fps`` apply to cameras only.

    Raises ``SourceError`` for an empty or unparseable URI, a missing file, an empty folder, an unreadable
    video and gst/csi sources without GStreamer. Live sources connect on the first ``read()``.
    """
    text = uri.strip()
    if not text:
        raise SourceError(
            "empty source URI", hint="set camera.source to a file, folder, rtsp://, /dev/videoN or csi://N"
        )
    live_opts: dict[str, Any] = {
        "camera": camera,
        "backoff_initial_s": backoff_initial_s,
        "backoff_max_s": backoff_max_s,
        "startup_timeout_s": startup_timeout_s,
        "nominal_fps": fps,
    }
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""

    if text.startswith("gst:"):
        pipeline = text[4:].strip()
        if not pipeline:
            raise SourceError(f"{text!r}: empty GStreamer pipeline", hint="write gst:<pipeline> ending in appsink")
        if not re.search(r"(^|!)\s*appsink(\s[^!]*)?$", pipeline):
            raise SourceError(
                f"GStreamer pipeline must end in appsink: {pipeline!r}",
                hint="append '! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=2'",
            )
        _require_gstreamer(text)
        return LiveSource(text, _gst_opener(pipeline), kind="gstreamer pipeline", **live_opts)

    if scheme == "csi":
        sensor = text[len("csi://") :].strip("/")
        if not sensor.isdigit():
            raise SourceError(
                f"cannot parse CSI source {text!r}", hint="write csi://N with the sensor id, e.g. csi://0"
            )
        w, h = width or DEFAULT_CSI_SIZE[0], height or DEFAULT_CSI_SIZE[1]
        pipeline = csi_pipeline(int(sensor), w, h, fps or DEFAULT_CSI_FPS)
        _require_gstreamer(text)
        live_opts["nominal_fps"] = fps or DEFAULT_CSI_FPS
        return LiveSource(text, _gst_opener(pipeline), kind="CSI camera", **live_opts)

    if scheme in STREAM_SCHEMES:
        if not urlsplit(text).hostname:
            raise SourceError(f"cannot parse stream URI {redact_uri(text)!r}: no host", hint="write scheme://host/path")
        if scheme.startswith("rtsp"):
            # UDP RTP over Wi-Fi loses packets and smears frames; TCP costs a little latency. An operator's
            # own OPENCV_FFMPEG_CAPTURE_OPTIONS wins.
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
        return LiveSource(text, _ffmpeg_opener(text, io_timeout_s), kind=f"{scheme} stream", **live_opts)

    if re.fullmatch(r"\d+", text):
        return LiveSource(text, _v4l2_opener(int(text), width, height, fps), kind="V4L2 camera", **live_opts)
    if re.fullmatch(r"/dev/video\d+", text):
        if not Path(text).exists():
            log.warning("%s does not exist (yet); waiting up to %g s for it", text, startup_timeout_s)
        return LiveSource(text, _v4l2_opener(text, width, height, fps), kind="V4L2 camera", **live_opts)

    if scheme == "file":
        text = urlsplit(text).path
    elif scheme:
        raise SourceError(
            f"unsupported source URI scheme {scheme!r} in {redact_uri(text)!r}",
            hint="use a file or folder path, rtsp(s)://, http(s)://, /dev/videoN, N, gst:<pipeline> or csi://N",
        )
    path = Path(text).expanduser()
    if path.is_dir():
        return ImageFolderSource(path, camera=camera)
    if path.is_file():
        return VideoFileSource(path, camera=camera)
    raise SourceError(
        f"source {text} does not exist",
        hint="check camera.source in the profile: a video file, an image folder or a camera URI",
    )
