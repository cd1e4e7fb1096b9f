"""Frame sources for edge-run: video files, image folders, and live cameras and streams.

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

Finite sources return ``None`` from ``read()`` when they end. Live sources never end on their own: when a
stream drops they reconnect with exponential backoff and count it, so a flaky camera costs frames, not the
service. The one fatal live failure is at startup: a camera that never delivers a first frame within
``startup_timeout_s`` raises ``SourceError`` so systemd sees a startup error instead of a silent service.
Connection is lazy: ``open_source`` validates the URI, the first ``read()`` connects.
"""

from __future__ import annotations

import abc
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.types import Frame

__all__ = [
    "IMAGE_SUFFIXES",
    "Capture",
    "ImageFolderSource",
    "LiveSource",
    "Source",
    "SourceError",
    "VideoFileSource",
    "csi_pipeline",
    "gstreamer_available",
    "open_source",
    "redact_uri",
]

log = logging.getLogger(__name__)

# FFmpeg writes its own complaints ("moov atom not found", "Connection refused") straight to stderr, bypassing
# logging; the sources report every failure themselves, in one line, naming the URI. Only FFmpeg's fatal
# messages remain (AV_LOG_FATAL); set OPENCV_FFMPEG_LOGLEVEL=16 (errors) or 32 (info) to see them while debugging.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")
DEFAULT_CSI_SIZE = (1280, 720)
DEFAULT_CSI_FPS = 30.0
# A decoder that reports failure before the container's last frame may be hiccuping on one damaged packet;
# a few retries skip it, more would spin on a truncated file.
VIDEO_READ_RETRIES = 2


class SourceError(InputError):
    """A source that cannot be opened or never delivered a frame: a startup error (exit code EXIT_INPUT)."""


class Capture(Protocol):
    """The subset of ``cv2.VideoCapture`` a live source uses; anything with it can stand in for a camera."""

    def isOpened(self) -> bool: ...  # OpenCV's spelling, so cv2.VideoCapture fits as is

    def read(self) -> tuple[bool, Any]: ...

    def release(self) -> None: ...


def redact_uri(uri: str) -> str:
    """``uri`` with any password replaced by ``***``, safe for logs and error messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


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


class Source(abc.ABC):
    """A stream of frames with strictly increasing ``index`` from 0.

    ``read()`` returns the next frame, or ``None`` once a finite source has ended (or any source was closed).
    Counters: ``frames_read`` frames delivered, ``read_failures`` failed reads/opens, ``reconnects``
    reconnection attempts of a live source, ``skipped`` unreadable images in a folder.
    """

    live: bool = False

    def __init__(self, uri: str, *, camera: str = "") -> None:
        self.uri = uri
        self.camera = camera
        self.frames_read = 0
        self.read_failures = 0
        self.reconnects = 0
        self.skipped = 0
        self.nominal_fps: float | None = None  # container or requested rate, when known
        self._closed = threading.Event()

    @abc.abstractmethod
    def read(self) -> Frame | None: ...

    @abc.abstractmethod
    def describe(self) -> str: ...

    def close(self) -> None:
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _emit(self, image: np.ndarray, source_ref: str | None = None) -> Frame:
        index = self.frames_read
        self.frames_read += 1
        ref = str(index) if source_ref is None else source_ref
        return Frame(index=index, image=image, ts=time.time(), source_ref=ref, camera=self.camera)

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def __enter__(self) -> Source:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class VideoFileSource(Source):
    """Every decodable frame of a video file, once, in order; a truncated file simply ends early."""

    live = False

    def __init__(self, path: Path, *, camera: str = "") -> None:
        super().__init__(str(path), camera=camera)
        self.path = path
        self._lock = threading.Lock()
        self._cap: Any = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(
                f"cannot open video file {path}: OpenCV could not read its container or codec",
                hint="check that the file is complete (an interrupted .mp4 has no index) and uses a codec "
                "this OpenCV build decodes, e.g. re-encode with `ffmpeg -i in -c:v mjpeg out.avi`",
            )
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.nominal_fps = fps if fps > 0 else None
        self.frame_count = max(0, int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))  # header claim, may lie
        self._ended = False

    def read(self) -> Frame | None:
        with self._lock:
            if self._ended or self.closed:
                return None
            for _ in range(VIDEO_READ_RETRIES + 1):
                ok, image = self._cap.read()
                if ok and image is not None:
                    return self._emit(image)
                if self.frames_read >= self.frame_count:
                    break  # the normal end of the file
                self.read_failures += 1
            else:
                log.warning(
                    "video %s ended after %d of the %d frames its header announces (truncated or damaged)",
                    self.path,
                    self.frames_read,
                    self.frame_count,
                )
            self._ended = True
            self._cap.release()
            return None

    def close(self) -> None:
        super().close()
        with self._lock:
            self._cap.release()

    def describe(self) -> str:
        fps = f" @ {self.nominal_fps:g} fps" if self.nominal_fps else ""
        return f"video file {self.path} ({self.frame_count} frames{fps})"


def _jpeg_complete(data: bytes) -> bool:
    """A JPEG whose last scan is followed by an end-of-image marker.

    libjpeg decodes a truncated file into a half-grey image with only a warning, so truncation has to be
    checked on the bytes. Entropy-coded data byte-stuffs 0xFF, so FFDA/FFD9 there are always real markers.
    """
    sos = data.rfind(b"\xff\xda")
    return sos >= 0 and data.rfind(b"\xff\xd9") > sos


def _decode_image(path: Path) -> tuple[np.ndarray | None, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot read file ({exc.strerror or exc})"
    if not data:
        return None, "empty file"
    if data[:2] == b"\xff\xd8" and not _jpeg_complete(data):
        return None, "truncated JPEG (no end-of-image marker)"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None, "not a decodable image"
    return image, ""


class ImageFolderSource(Source):
    """Images in one folder (not recursive), sorted by name, one frame each.

    Files without an image suffix and hidden files are ignored. Unreadable images are skipped, counted in
    ``skipped`` and logged; ``source_ref`` is the file name.
    """

    live = False

    def __init__(self, folder: Path, *, camera: str = "") -> None:
        super().__init__(str(folder), camera=camera)
        self.folder = folder
        try:
            entries = list(folder.iterdir())
        except OSError as exc:
            raise SourceError(
                f"cannot list image folder {folder}: {exc.strerror or exc}", hint="check permissions"
            ) from None
        self.files = sorted(
            (p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
            key=lambda p: p.name,
        )
        if not self.files:
            raise SourceError(
                f"image folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
                hint="point the source at a folder of images, or at a video file",
            )
        self._next = 0
        self.skipped_files: list[tuple[str, str]] = []  # (file name, reason)

    def read(self) -> Frame | None:
        while not self.closed and self._next < len(self.files):
            path = self.files[self._next]
            self._next += 1
            image, reason = _decode_image(path)
            if image is None:
                self.skipped += 1
                self.skipped_files.append((path.name, reason))
                log.warning("skipping image %s: %s", path, reason)
                continue
            return self._emit(image, path.name)
        return None

    def describe(self) -> str:
        return f"image folder {self.folder} ({len(self.files)} images)"


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


# --------------------------------------------------------------------------- opening by URI


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
