"""What the recognition head reads: the backbone embedding, optionally followed by a colour descriptor.

Sibling products (flavours of one brand, varieties of one fruit) often differ mostly in colour, and pooled
ImageNet features are trained to be largely colour-invariant. A hue-saturation histogram of the very pixels the
backbone saw is a cheap second opinion: on the grocery data it moved val top-1 from 83 to 85-87 % (see
benchmarks/RESULTS.md). It is computed here, outside the numpy-only head, because it needs OpenCV; build and run
both call this module, so the head is fitted on exactly what the device computes.
"""

from __future__ import annotations

import cv2
import numpy as np

# Hue (OpenCV's 0..179) x saturation bins; value is left out on purpose: it follows exposure, not the product.
COLOUR_BINS = (18, 8)
COLOUR_DIM = COLOUR_BINS[0] * COLOUR_BINS[1]
# Weight of the (unit-length) colour part beside a unit-length embedding; 0.4-0.9 measured alike on the grocery
# data, the middle of that range is kept.
COLOUR_WEIGHT = 0.6


def colour_descriptor(batch: np.ndarray) -> np.ndarray:
    """Backbone input [N, 3, S, S] (RGB, 0..255) -> [N, COLOUR_DIM] square-rooted hue-saturation histograms.

    The square root of a distribution has unit length, so cosine between two descriptors is the Bhattacharyya
    coefficient of their histograms.
    """
    out = np.zeros((len(batch), COLOUR_DIM), dtype=np.float32)
    for i, chw in enumerate(batch):
        # Convert while still planar, then interleave: casting the transposed view cost 4x as much.
        rgb = cv2.merge(list(np.clip(chw, 0, 255).astype(np.uint8)))
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1], None, list(COLOUR_BINS), [0, 180, 0, 256]).ravel()
        total = float(hist.sum())
        if total > 0:
            out[i] = np.sqrt(hist / total)
    return out


def compose(embeddings: np.ndarray, colour: np.ndarray | None, weight: float) -> np.ndarray:
    """The head's input: embeddings, with ``weight`` x colour descriptors appended when the weight is positive."""
    if weight <= 0:
        return embeddings
    if colour is None or len(colour) != len(embeddings):
        raise ValueError("the head reads colour descriptors, but none (or the wrong number) were given")
    return np.hstack([embeddings, np.float32(weight) * colour]).astype(np.float32, copy=False)


def head_input(embeddings: np.ndarray, batch: np.ndarray, weight: float) -> np.ndarray:
    """``compose`` for a batch of backbone inputs, computing their colour only when the head reads it."""
    return compose(embeddings, colour_descriptor(batch) if weight > 0 else None, weight)


def looks_monochrome(image_bgr: np.ndarray, tolerance: int = 2) -> bool:
    """True when every (sampled) pixel has equal channels: a monochrome or IR camera delivered as BGR.

    A head fitted with colour on colour catalogue photos sees only zero saturation from such a camera.
    ``tolerance`` absorbs the +-1 rounding of a YUV -> BGR conversion of a luma-only stream.
    """
    if image_bgr.ndim == 2 or image_bgr.shape[2] == 1:
        return True
    sample = image_bgr[::8, ::8, :3].astype(np.int16)
    return bool(np.abs(sample - sample[..., :1]).max() <= tolerance)
