"""What every frame source shares: the ``Source`` contract, ``SourceError``, and how a URI is shown in logs.

Its own room because the finite sources (``files``), the live ones (``live``) and the URI parser (``uri``) all
build on it and on nothing of each other; edge-bench's synthetic source subclasses ``Source`` too.
"""

from __future__ import annotations

import abc
import os
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.types import Frame

# FFmpeg writes its own complaints ("moov atom not found", "Connection refused") straight to stderr, bypassing
# logging; the sources report every failure themselves, in one line, naming the URI. Only FFmpeg's fatal
# messages remain (AV_LOG_FATAL); set OPENCV_FFMPEG_LOGLEVEL=16 (errors) or 32 (info) to see them while debugging.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")


class SourceError(InputError):
    """A source that cannot be opened or never delivered a frame: a startup error (exit code EXIT_INPUT)."""


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
