"""The finite sources: a video file read once in order, and a folder of images read in name order.

Their own room because they end (``read()`` returns ``None``), never reconnect, and fail per file rather than
per connection: a truncated video simply ends early, an unreadable image is skipped and counted.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.run.sources.base import Source, SourceError
from edge_runtime.types import Frame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
# A decoder that reports failure before the container's last frame may be hiccuping on one damaged packet;
# a few retries skip it, more would spin on a truncated file.
VIDEO_READ_RETRIES = 2


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
