"""The one image -> tensor function, shared by edge-build and edge-run.

A prototype table is only as good as the agreement between the pixels it was
built from and the pixels seen on the device, so build and run must call the
same code. The backbone contract: RGB, raw 0..255 float32, NCHW; the model
normalises inside its graph.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

# EfficientNet evaluation crop ratio: shorter side to 256 for a 224 crop.
CROP_RATIO = 224 / 256


def resize_short_side(image: np.ndarray, short: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = short / min(h, w)
    new_w, new_h = max(short, round(w * scale)), max(short, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interp)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def shrink_square(image: np.ndarray, size: int) -> np.ndarray:
    """A square image shrunk to ``size`` x ``size`` by area averaging.

    OpenCV's INTER_AREA is fast only for whole-number ratios: a 420-px window to 224 cost 0.83 ms, 1040 to 224
    3.7 ms. A bilinear step to a whole multiple of ``size`` (at least 2x, and less than 2x away from the image,
    so it does not alias) and then a whole-number area step land within 0.6 grey levels on average of the
    one-step result on busy real photos, with embeddings at cosine 0.9989 or closer, for a quarter to a half of
    the cost (``benchmarks/preprocess_cost.py``).
    """
    side = image.shape[0]
    if side <= size:
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    target = size * max(2, side // size)
    if side != target:
        image = cv2.resize(image, (target, target), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def prepare(
    image_bgr: np.ndarray, size: int, shrink: Callable[[np.ndarray, int], np.ndarray] = shrink_square
) -> np.ndarray:
    """One BGR uint8 image (as OpenCV decodes it) -> float32 [3, size, size] RGB 0..255.

    The EfficientNet evaluation crop: shorter side to ``size / CROP_RATIO``, then the centre ``size`` square.
    When that shrinks the image, the centre window is cut from the source first and shrunk once: the same
    pixels up to resampling (embeddings agree to cosine 0.999 on grocery photos), at a third of the cost for a
    1280x720 frame, because the discarded margins are never resampled. ``shrink`` does that step (benchmarks
    compare others against ``shrink_square``).
    """
    if image_bgr.ndim == 2:
        image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    elif image_bgr.shape[2] == 4:
        image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_BGRA2BGR)
    short = round(size / CROP_RATIO)
    h, w = image_bgr.shape[:2]
    scale = short / min(h, w)
    if scale < 1.0:
        window = min(h, w, round(size / scale))
        top, left = (h - window) // 2, (w - window) // 2
        crop = shrink(image_bgr[top : top + window, left : left + window], size)
    else:
        crop = center_crop(resize_short_side(image_bgr, short), size)
    # Planar first, then one cast: BGR -> RGB planes without an interleaved copy.
    blue, green, red = cv2.split(crop)
    return np.stack([red, green, blue]).astype(np.float32)


def prepare_batch(images_bgr: list[np.ndarray], size: int) -> np.ndarray:
    """Several images -> float32 [N, 3, size, size]."""
    out = np.empty((len(images_bgr), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images_bgr):
        out[i] = prepare(image, size)
    return out


def read_image(path: str) -> np.ndarray | None:
    """Decode an image file to BGR uint8, or None when it is unreadable or corrupt."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return image
