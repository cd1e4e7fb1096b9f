"""Measure a model's real memory footprint and latency in a separate, fresh process.

Measuring in the build process would count everything the build has loaded
(the catalogue, the quantiser, other variants), and a process never gives
memory back reliably; a fresh child sees what the device process will see:
the interpreter, numpy, OpenCV, the backend, the model, the frame buffers.

The child is ``python -m edge_runtime.run.footprint_probe``: it imports what edge-run imports, so it lives with
the runtime, and this module starts it as a process instead of importing it (the builder never imports ``run/``).
When camera frames are given (``frame_bytes``, as edge-build and edge-check do), the child also holds what
edge-run holds besides the model, and passes a few frames through the runtime's three-thread shape: the bare
model process peaked 135 MiB where edge-run peaked 176 MiB on the demo bundle, and the footprint is meant to
predict edge-run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.errors import ModelError
from edge_runtime.profile import DeviceProfile
from edge_runtime.types import Measurement

# edge-run holds at most this many camera frames at once: its FRAME_QUEUE + TENSOR_QUEUE + PUBLISH_QUEUE
# (run/queues.py; a test keeps the two in step). Each TENSOR_QUEUE item also holds its regions' float tensors.
FRAME_QUEUE_DEPTH = 6
TENSOR_QUEUE_DEPTH = 2
PROBE_MODULE = "edge_runtime.run.footprint_probe"

MIB = 1024 * 1024


def tensor_queue_bytes(regions_per_frame: int, input_size: int) -> int:
    """Bytes of prepared float32 region tensors edge-run's tensor queue can hold at once."""
    return TENSOR_QUEUE_DEPTH * max(1, regions_per_frame) * 3 * input_size * input_size * 4


def regions_per_frame(profile: DeviceProfile) -> int:
    """The most regions edge-run embeds per frame with this profile: what its tensor queue is sized by."""
    if profile.scene.kind == "shelf" and profile.scene.shelf is not None:
        return sum(s.facings for s in profile.scene.shelf.slots)  # a shelf's facings replace [regions]
    r = profile.regions
    if r.mode == "full":
        return 1
    if r.mode == "fixed":
        return min(len(r.fixed), r.max_regions)
    return r.max_regions


def frame_queue_bytes(profile: DeviceProfile) -> int:
    """Bytes of the camera frames edge-run can hold at once: FRAME_QUEUE_DEPTH frames of the first camera."""
    camera = profile.cameras[0]
    return FRAME_QUEUE_DEPTH * camera.width * camera.height * 3


def measure_in_subprocess(
    model: Path,
    *,
    backend: str,
    threads: int,
    batch: int = 1,
    warmup: int = 5,
    runs: int = 30,
    frame_bytes: int = 0,
    embedding_output: str = "embedding",
    timeout_s: float = 600.0,
    tensor_bytes: int = 0,
    precision: str = "fp32",
    budget_mib: float | None = None,
    max_batch: int | None = None,
    image_input: tuple[str, int] | None = None,
) -> Measurement:
    """Run the child (``edge_runtime.run.footprint_probe``) and parse the one JSON line it prints.

    ``precision``, ``budget_mib``, ``max_batch`` and ``image_input`` (name, S) open a GPU backend as edge-run
    does (a TensorRT engine built without them is another engine, with another footprint); the engine cache
    lives in a folder of the child's own, removed with it, so every variant is measured with a cold build as on
    a freshly flashed device."""
    cmd = [
        sys.executable,
        "-m",
        PROBE_MODULE,
        "--model",
        str(model),
        "--backend",
        backend,
        "--threads",
        str(threads),
        "--batch",
        str(batch),
        "--warmup",
        str(warmup),
        "--runs",
        str(runs),
        "--frame-bytes",
        str(frame_bytes),
        "--queued-frames",
        str(FRAME_QUEUE_DEPTH),
        "--tensor-bytes",
        str(tensor_bytes),
        "--embedding-output",
        embedding_output,
        "--precision",
        precision,
    ]
    if budget_mib is not None:
        cmd += ["--budget-mib", str(budget_mib)]
    if max_batch is not None:
        cmd += ["--max-batch", str(max_batch)]
    if image_input is not None:
        cmd += ["--input-name", image_input[0], "--input-size", str(image_input[1])]
    with tempfile.TemporaryDirectory(prefix="edge-footprint-clip-") as tmp:
        # Written here, not in the child: an encoder's buffers in the child would count in its high-water mark.
        clip = write_camera_clip(Path(tmp), frame_bytes // FRAME_QUEUE_DEPTH) if frame_bytes > 0 else None
        if clip is not None:
            cmd += ["--clip", str(clip)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise ModelError(f"{model}: measurement did not finish within {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"{model}: measurement process failed ({tail})")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Measurement(**data)


CLIP_FRAMES = 8


def write_camera_clip(folder: Path, frame_bytes: int) -> Path | None:
    """A short video of 4:3 frames of ``frame_bytes`` BGR bytes each (the footprint child's frame size), MPEG-4
    in MP4 as the demo video, for the child to decode as edge-run decodes a video source; None when this OpenCV
    cannot write video (the child then decodes JPEG stills)."""
    pixels = max(frame_bytes // 3, 64 * 48)
    height = max(48, int((pixels * 3 / 4) ** 0.5)) // 2 * 2  # even sizes: the codec's chroma planes
    width = max(64, pixels // height) // 2 * 2
    path = folder / "camera.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 15.0, (width, height))
    if not writer.isOpened():
        return None
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    try:
        for i in range(CLIP_FRAMES):  # moving texture: the decoder works as on a camera's frames
            base = np.dstack([(xx + 4 * i) % 256, (yy + 2 * i) % 256, (xx + yy) % 256]).astype(np.uint8)
            writer.write(np.clip(base + rng.integers(0, 24, base.shape), 0, 255).astype(np.uint8))
    finally:
        writer.release()
    return path if path.is_file() and path.stat().st_size > 0 else None
