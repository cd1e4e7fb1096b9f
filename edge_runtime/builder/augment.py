"""Augmented views of catalogue images, embedded at build time to fit the head on more than the photos.

Catalogue photos come in near-duplicate runs (one pack, one session, one angle), so the within-class
scatter that LDA whitens is underestimated and the prototypes sit on the studio view. Views with a
different framing, a small tilt, other lighting and the mirror image fill that in. On the grocery data
(224 px, multi-layer embedding, LDA + nearest class mean) two views per image raised val top-1 from
80.1 % to 83.1 % at no run-time cost.
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_SCALE = 0.65  # smallest crop side, as a share of the prepared image side
MAX_TILT_DEG = 12.0
GAIN = (0.75, 1.25)
OFFSET = 20.0  # brightness shift in 0..255 pixel units


def augment_view(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One prepared image (uint8 [3, S, S], RGB) -> one random view, float32 [3, S, S]."""
    size = pixels.shape[1]
    image = np.ascontiguousarray(pixels.transpose(1, 2, 0))
    side = max(8, round(size * rng.uniform(MIN_SCALE, 1.0)))
    top, left = (int(rng.integers(0, size - side + 1)) for _ in range(2))
    image = image[top : top + side, left : left + side]
    tilt = cv2.getRotationMatrix2D((side / 2, side / 2), float(rng.uniform(-MAX_TILT_DEG, MAX_TILT_DEG)), 1.0)
    image = cv2.warpAffine(image, tilt, (side, side), borderMode=cv2.BORDER_REFLECT)
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    out = image.astype(np.float32) * rng.uniform(*GAIN) + rng.uniform(-OFFSET, OFFSET)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(np.clip(out, 0.0, 255.0).transpose(2, 0, 1))


def augment_batch(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [N, 3, S, S] -> float32 [N, 3, S, S], one random view per image."""
    return np.stack([augment_view(p, rng) for p in pixels]) if len(pixels) else pixels.astype(np.float32)
