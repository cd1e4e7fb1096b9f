"""Cost of the image -> tensor step (``preprocess.prepare``) per region, against a single INTER_AREA shrink.

    python benchmarks/preprocess_cost.py [--repeats 300]

For camera-sized frames (the whole frame as one region) and the input sizes the profiles use, side by side in one
run: milliseconds per call of ``prepare`` and of ``prepare`` with one ``cv2.resize(INTER_AREA)`` as its shrink
step (what it did before ``shrink_square``), their ratio, and how far the two tensors are apart: mean absolute
difference in grey levels and the default backbone's embedding cosine. Frames are mosaics of real grocery photos
at their own resolution (busy content, where a careless shrink aliases) when the shared data is there, otherwise
synthetic texture (cosine then not measured).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import cv2
import numpy as np
from _common import GROCERY, machine_line

from edge_runtime.backends import create_backend
from edge_runtime.builder.backbone import EMBEDDING_OUTPUT, export_default_backbone
from edge_runtime.preprocess import prepare, read_image

CASES = ((348, 348, 224), (640, 480, 192), (640, 480, 224), (1280, 720, 224), (1920, 1080, 224), (1920, 1080, 288))


def _area_shrink(image: np.ndarray, size: int) -> np.ndarray:
    """The shrink ``prepare`` used before ``shrink_square``: one INTER_AREA resize."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def _frame(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    paths = sorted(GROCERY.glob("val/**/*.jpg")) if GROCERY.is_dir() else []
    if not paths:
        noise = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    tile = 348  # the photos' own size: no resampling inside the mosaic
    cols, rows = -(-width // tile), -(-height // tile)
    photos = [read_image(str(paths[i])) for i in rng.choice(len(paths), cols * rows, replace=False)]
    photos = [cv2.resize(p, (tile, tile), interpolation=cv2.INTER_AREA) for p in photos if p is not None]
    grid = np.vstack([np.hstack(photos[r * cols : (r + 1) * cols]) for r in range(rows)])
    return np.ascontiguousarray(grid[:height, :width])


def _ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    print(machine_line())
    print(f"OpenCV {cv2.__version__}, {cv2.getNumThreads()} threads")
    rng = np.random.default_rng(0)
    embedders: dict[int, Callable[[np.ndarray], np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as backends:
        header = ("frame", "input", "prepare ms", "INTER_AREA ms", "ratio", "mean |diff|")
        print("{:>11} {:>5}  {:>10}  {:>13}  {:>5}  {:>11}  cosine".format(*header))
        for width, height, size in CASES:
            frames = [_frame(width, height, rng) for _ in range(4)]
            ours = _ms(lambda f=frames[0], s=size: prepare(f, s), args.repeats)
            area = _ms(lambda f=frames[0], s=size: prepare(f, s, _area_shrink), args.repeats)
            a = np.stack([prepare(f, size) for f in frames])
            b = np.stack([prepare(f, size, _area_shrink) for f in frames])
            diff = float(np.abs(a - b).mean())
            cosine = "-"
            if GROCERY.is_dir():
                if size not in embedders:
                    model = export_default_backbone(Path(tmp) / f"backbone-{size}.onnx", size)
                    backend = create_backend("onnxruntime-cpu", model, threads=0, embedding_output=EMBEDDING_OUTPUT)
                    backends.callback(backend.close)
                    embedders[size] = backend.embed
                ea, eb = embedders[size](a), embedders[size](b)
                ea /= np.linalg.norm(ea, axis=1, keepdims=True)
                eb /= np.linalg.norm(eb, axis=1, keepdims=True)
                cosine = f"{float((ea * eb).sum(axis=1).min()):.5f} (min of {len(frames)})"
            frame = f"{width}x{height}"
            print(f"{frame:>11} {size:>5}  {ours:>10.3f}  {area:>13.3f}  {area / ours:>4.1f}x  {diff:>11.2f}  {cosine}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
