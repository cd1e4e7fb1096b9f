"""The demo video: products sliding through or held up in front of a fixed background, with idle gaps.

Per-frame ground truth (the SKU codes visible in each frame) is written next to the video as
``<video>.labels.json``, so tests and benchmarks can score what edge-run reports.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.demo.designs import demo_skus, demo_unknown_skus
from edge_runtime.demo.packages import package_template
from edge_runtime.demo.scene import background, composite, place
from edge_runtime.demo.sku import DemoSku


def _video_frames(seed: int, n: int, fps: int, size: tuple[int, int]) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Frames plus the SKU codes visible in each: products sliding through or held up, and idle gaps."""
    w, h = size
    rng = np.random.default_rng([seed, 0xF11E])
    known, unknown = demo_skus(seed), demo_unknown_skus(seed)
    scene = background(rng, w, h)
    events: list[tuple[int, int, DemoSku, np.ndarray, np.ndarray]] = []
    f = 0
    while f < n:
        r = rng.random()
        if r < 0.2:  # nothing happening: the detector must stay quiet here
            f += int(rng.uniform(0.6, 1.5) * fps)
            continue
        sku = unknown[int(rng.integers(len(unknown)))] if r < 0.35 else known[int(rng.integers(len(known)))]
        length = max(2, int(rng.uniform(1.5, 3.0) * fps))
        # Start and end centres: enter from one side and leave on the other, or (most often, as a shopper
        # does in front of a cart camera) be held still near the middle.
        if rng.random() < 0.3:
            y0, y1 = rng.uniform(0.35, 0.65, 2) * h
            xs = (-0.25 * w, 1.25 * w) if rng.random() < 0.5 else (1.25 * w, -0.25 * w)
            start, end = np.array([xs[0], y0]), np.array([xs[1], y1])
        else:
            start = np.array([rng.uniform(0.35, 0.65) * w, rng.uniform(0.4, 0.6) * h])
            end = start + rng.uniform(-0.05, 0.05, 2) * np.array([w, h])
        events.append((f, f + length, sku, start, end))
        f += length
    for i in range(n):
        frame = scene.copy()
        visible: list[str] = []
        for f0, f1, sku, start, end in events:
            if not f0 <= i < f1:
                continue
            t = (i - f0) / max(1, f1 - f0 - 1)
            centre = start + (end - start) * t
            # Reseed per event so the pose is smooth: only angle drifts with t.
            ev_rng = np.random.default_rng([seed, f0])
            template = package_template(sku)
            m, quad = place(template, ev_rng, w, h, (0.5, 0.7), (float(centre[0]), float(centre[1])), 0.03)
            rot = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), 12.0 * (t - 0.5), 1.0)
            m = np.vstack([rot, [0, 0, 1]]) @ m
            composite(frame, template, m, (6.0, 8.0, 0.35))
            inside = (quad[:, 0].max() > 0) and (quad[:, 0].min() < w)
            if inside:
                visible.append(sku.code)
        frame *= np.float32(1.0 + 0.02 * math.sin(i * 0.9))  # mains flicker
        frame += rng.normal(0, 2.0, frame.shape).astype(np.float32)
        yield np.clip(frame, 0, 255).astype(np.uint8), visible


def _count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return -1
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def generate_demo_video(
    out_path: Path, seed: int = 0, seconds: float = 10.0, fps: int = 10, size: tuple[int, int] = (640, 480)
) -> Path:
    """Write the demo video and return the path actually written.

    Tries mp4v in ``.mp4`` first and falls back to MJPG in ``.avi`` when the
    OpenCV build cannot write or read back mp4v. ``size`` is (width, height).
    Per-frame ground truth (visible SKU codes) goes to ``<video>.labels.json``.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, round(seconds * fps))
    for fourcc, suffix in (("mp4v", ".mp4"), ("MJPG", ".avi")):
        final = out_path.with_suffix(suffix)
        tmp = final.with_name(f".{final.stem}.tmp{suffix}")  # the suffix picks the container
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*fourcc), float(fps), size)
        if not writer.isOpened():
            writer.release()
            tmp.unlink(missing_ok=True)
            continue
        labels = []
        for i, (frame, visible) in enumerate(_video_frames(seed, n, fps, size)):
            writer.write(frame)
            labels.append({"frame": i, "skus": visible})
        writer.release()
        if _count_frames(tmp) != n:
            tmp.unlink(missing_ok=True)
            continue
        os.replace(tmp, final)
        meta = {
            "video": final.name,
            "codec": fourcc,
            "fps": fps,
            "frames": n,
            "size": list(size),
            "seed": seed,
            "unknown_codes": [s.code for s in demo_unknown_skus(seed)],
            "labels": labels,
        }
        final.with_suffix(".labels.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")
        return final
    raise OSError(f"no working video codec (tried mp4v/.mp4 and MJPG/.avi) for {out_path}")
