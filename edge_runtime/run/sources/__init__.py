"""Frame sources for edge-run: video files, image folders, and live cameras and streams.

This room holds the contract every source keeps (base.py: ``Source``, ``SourceError``, ``redact_uri``), the
finite sources (files.py: a video file, an image folder), the live ones that reconnect with backoff (live.py:
``LiveSource``) and what a source URI means (uri.py: ``open_source``, its table of URI forms, ``csi_pipeline``).

Finite sources return ``None`` from ``read()`` when they end. Live sources never end on their own: when a
stream drops they reconnect with exponential backoff and count it, so a flaky camera costs frames, not the
service. The one fatal live failure is at startup: a camera that never delivers a first frame within
``startup_timeout_s`` raises ``SourceError`` so systemd sees a startup error instead of a silent service.
Connection is lazy: ``open_source`` validates the URI, the first ``read()`` connects.
"""

from edge_runtime.run.sources.base import Source, SourceError, redact_uri
from edge_runtime.run.sources.files import IMAGE_SUFFIXES, ImageFolderSource, VideoFileSource
from edge_runtime.run.sources.live import Capture, LiveSource
from edge_runtime.run.sources.uri import csi_pipeline, gstreamer_available, open_source

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
