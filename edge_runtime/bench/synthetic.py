"""edge-bench's synthetic camera: deterministic demo products rendered onto store-like backgrounds.

Its own room because it is the one part of the bench that draws (through the demo generator, which only the
bench, the builder and the CLI may import), and it draws in a child process so that drawing never counts in the
memory the bench measures. Everything else in the bench measures the real pipeline.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.run.sources import Source
from edge_runtime.types import Frame

DISTINCT_FRAMES = 8  # synthetic renders cycled through; more only costs start-up time
SYNTHETIC_JPEG_QUALITY = 90


class SyntheticSource(Source):
    """Deterministic camera-sized frames: demo products rendered onto store-like backgrounds.

    The renders are made once, in a child process so that drawing's temporaries do not count in this process's
    peak memory (edge-run does not draw), and kept as JPEG bytes; each read decodes one, so the capture stage
    costs what decoding a camera's MJPEG or a video frame costs instead of nothing. Frames cycle until
    ``close()``.
    """

    live = False

    def __init__(
        self, width: int, height: int, *, distinct: int = DISTINCT_FRAMES, seed: int = 0, camera: str = ""
    ) -> None:
        super().__init__(f"synthetic:{width}x{height}", camera=camera)
        self.width, self.height, self.seed = width, height, seed
        with tempfile.TemporaryDirectory(prefix="edge-bench-frames-") as tmp:
            target = Path(tmp) / "frames.npz"
            code = "import sys; from edge_runtime.bench.synthetic import render_frames; render_frames(*sys.argv[1:])"
            args = [str(target), str(width), str(height), str(max(1, distinct)), str(seed)]
            proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise InputError(f"cannot render synthetic {width}x{height} frames ({tail})")
            with np.load(target, allow_pickle=False) as data:
                self._jpegs = [data[f"frame_{i}"] for i in range(len(data.files))]

    def read(self) -> Frame | None:
        if self.closed:
            return None
        image = cv2.imdecode(self._jpegs[self.frames_read % len(self._jpegs)], cv2.IMREAD_COLOR)
        if image is None:  # the child wrote what it encoded: only a damaged temporary file could do this
            raise InputError(f"cannot decode synthetic frame {self.frames_read}")
        return self._emit(image)

    def describe(self) -> str:
        return (
            f"synthetic {self.width}x{self.height} frames ({len(self._jpegs)} demo renders, seed {self.seed}, "
            "JPEG-decoded per read)"
        )


def render_frames(target: str, width: str, height: str, distinct: str, seed: str) -> None:
    """The child process of SyntheticSource: write ``distinct`` JPEG frames to ``target`` (.npz)."""
    from edge_runtime.demo import demo_skus, demo_unknown_skus, render_product

    w, h, n, s = int(width), int(height), int(distinct), int(seed)
    known, unknown = demo_skus(s), demo_unknown_skus(s)
    frames: dict[str, Any] = {}
    for i in range(n):
        # One in four is a product the catalogue has never seen, as a cart camera meets them.
        sku = unknown[i % len(unknown)] if i % 4 == 3 else known[(i * 7) % len(known)]
        image = render_product(sku, np.random.default_rng([s, 0xBE7C, i]), size=(w, h))
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, SYNTHETIC_JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"cannot encode a synthetic {w}x{h} frame")
        frames[f"frame_{i}"] = data
    np.savez(target, **frames)
