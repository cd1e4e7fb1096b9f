"""Training views of catalogue photos: what fine-tuning sees instead of the same studio crop every epoch.

Only changes that keep what separates products: framing (random resized crop with a mild aspect change, a small
tilt, the mirror image), light (gain, contrast, offset) and a hue shift near zero. Sibling SKUs often differ
mostly in colour (flavours, fruit varieties), so hue moves at most a few degrees and saturation a little.

The crops come from a *canvas*: the whole photo's centre square at ``CANVAS_RATIO`` times the input size, wider
than the evaluation crop (``preprocess.prepare`` keeps the centre 87.5 %), so a random crop can show more or less
of the product than the device's view does. Numpy and OpenCV only: views are made before torch is involved and
their early stages computed by onnxruntime (``builder.train.views``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

CANVAS_RATIO = 1.25  # canvas side / input size


@dataclass(frozen=True)
class Augment:
    """The view distribution; the defaults are the recipe's (``builder.train.recipe``)."""

    scale: tuple[float, float] = (0.30, 1.0)  # crop area as a share of the canvas
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio
    tilt_deg: float = 12.0
    gain: tuple[float, float] = (0.75, 1.25)
    contrast: tuple[float, float] = (0.8, 1.2)
    offset: float = 20.0  # brightness shift in 0..255 units
    hue_deg: float = 3.0  # OpenCV hue is 0..180 for 0..360 degrees: kept small on purpose
    saturation: tuple[float, float] = (0.9, 1.1)
    flip: float = 0.5


def canvas(image_bgr: np.ndarray, size: int) -> np.ndarray:
    """The photo's centre square (the whole shorter side) resized to ``CANVAS_RATIO * size``, RGB uint8 HWC."""
    h, w = image_bgr.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    target = round(size * CANVAS_RATIO)
    square = image_bgr[top : top + side, left : left + side]
    interp = cv2.INTER_AREA if side > target else cv2.INTER_LINEAR
    return cv2.cvtColor(cv2.resize(square, (target, target), interpolation=interp), cv2.COLOR_BGR2RGB)


def random_view(canvas_rgb: np.ndarray, size: int, rng: np.random.Generator, aug: Augment) -> np.ndarray:
    """One random view of a canvas (uint8 HWC RGB) -> float32 [3, size, size], raw 0..255 like ``prepare``."""
    side = canvas_rgb.shape[0]
    area = side * side * rng.uniform(*aug.scale)
    ratio = math.exp(rng.uniform(math.log(aug.ratio[0]), math.log(aug.ratio[1])))
    w = int(min(side, round(math.sqrt(area * ratio))))
    h = int(min(side, round(math.sqrt(area / ratio))))
    top, left = int(rng.integers(0, side - h + 1)), int(rng.integers(0, side - w + 1))
    crop = canvas_rgb[top : top + h, left : left + w]
    if aug.tilt_deg > 0:
        tilt = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-aug.tilt_deg, aug.tilt_deg)), 1.0)
        crop = cv2.warpAffine(crop, tilt, (w, h), borderMode=cv2.BORDER_REFLECT)
    view = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR)
    if aug.hue_deg > 0 or aug.saturation != (1.0, 1.0):
        hsv = cv2.cvtColor(view, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-aug.hue_deg, aug.hue_deg) / 2.0) % 180.0
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*aug.saturation), 0, 255)
        view = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    out = view.astype(np.float32)
    mean = float(out.mean())
    out = (out - mean) * rng.uniform(*aug.contrast) + mean
    out = out * rng.uniform(*aug.gain) + rng.uniform(-aug.offset, aug.offset)
    if rng.random() < aug.flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(np.clip(out, 0.0, 255.0).transpose(2, 0, 1))
