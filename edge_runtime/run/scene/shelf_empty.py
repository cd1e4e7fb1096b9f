"""Is a facing empty? Image structure on a small grey frame, block by block, from integral images.

The head cannot answer it: an empty facing shows the shelf's back panel, out of distribution like a product
the catalogue lacks, and its route does not follow emptiness (on the demo bundle every empty facing went to
``verify``); the OOD score ranks empty facings apart (benchmarks/scene_shelf.py), but its scale is the bundle's
and changes with every build, while a profile's threshold has to hold across builds. Image structure does not
depend on the bundle:

- each facing's inner 80 % (the shelf lip and the neighbours' edges stay out) is cut into a 3 x 3 grid of
  blocks. A facing is empty only when **every** block looks empty, so a narrow bottle standing in a wide
  facing, or a product pushed to one side, still fills it;
- **texture**: a block looks empty when its mean gradient magnitude divided by its mean brightness is at most
  ``empty_texture_max``. Printed packaging is full of edges, a plain back panel has none, and the ratio is
  blind to a lighting change (a gain);
- **reference** (``empty_reference``, a photo of the empty shelf, for patterned backs such as pegboard, where
  texture alone would call every block full): a block whose reference has texture looks empty when the
  normalised correlation of its live gradient image with the reference's is at least ``empty_match_min``
  (correlation ignores gain and offset). Blocks whose reference is flat keep the texture test: correlating
  two flat patches measures only noise. While a facing is stably empty its part of the reference follows the
  live image slowly, so drift in the light does not wear the match down.

Cost per frame: halvings to about 160 px wide, grey, two Sobel passes, two integral images (four with a
reference), then O(1) numpy work per block, all blocks at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["GRID", "WORK_WIDTH", "EmptinessTest", "work_scale"]

WORK_WIDTH = 160  # the grey working image is about this wide
GRID = 3  # blocks per facing side
_INNER = 0.1  # share of each side left out of a facing's window
_REFRESH = 0.05  # weight of the live frame in a stably empty facing's reference
_EPS = 1e-6


def work_scale(frame_width: int, smallest_side: int) -> int:
    """The down-scale of the working image, a power of two: about WORK_WIDTH wide, blocks kept >= 4 px a side."""
    scale = 1
    while frame_width // (scale * 2) >= WORK_WIDTH and smallest_side // (scale * 2) >= 4 * GRID:
        scale *= 2
    return scale


class EmptinessTest:
    """Measures every facing of a frame at once; ``boxes`` are the facings ``[x, y, w, h]`` in frame pixels."""

    def __init__(
        self,
        boxes: Sequence[tuple[int, int, int, int]],
        frame_size: tuple[int, int],
        texture_max: float,
        match_min: float,
        reference: np.ndarray | None = None,
    ) -> None:
        width, height = frame_size
        self.scale = work_scale(width, min(min(b[2], b[3]) for b in boxes))
        self.size = (width // self.scale, height // self.scale)
        self.texture_max = texture_max
        self.match_min = match_min
        self.n = len(boxes)
        self._windows: list[tuple[int, int, int, int]] = []  # per facing x0, y0, x1, y1 in working pixels
        corners = []  # per block x0, y0, x1, y1
        for x, y, w, h in boxes:
            mx, my = w * _INNER, h * _INNER
            x0, y0 = int((x + mx) / self.scale), int((y + my) / self.scale)
            x1 = min(self.size[0], max(x0 + GRID, int((x + w - mx) / self.scale)))
            y1 = min(self.size[1], max(y0 + GRID, int((y + h - my) / self.scale)))
            self._windows.append((x0, y0, x1, y1))
            xs = np.linspace(x0, x1, GRID + 1).round().astype(int)
            ys = np.linspace(y0, y1, GRID + 1).round().astype(int)
            corners += [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(GRID) for i in range(GRID)]
        c = np.array(corners, dtype=np.intp)
        self._x0, self._y0, self._x1, self._y1 = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
        self._area = ((self._x1 - self._x0) * (self._y1 - self._y0)).astype(np.float64)
        self._ref: np.ndarray | None = None  # the reference's gradient image (working size)
        self._structured = np.zeros(len(c), dtype=bool)  # blocks whose reference has texture
        if reference is not None:
            grey, grad = self._grey_and_gradient(reference)
            self._ref = grad
            self._structured = self._block_texture(grey, grad) > texture_max
            self._ref_stats()

    @property
    def has_reference(self) -> bool:
        """Whether any block is judged against the empty-shelf photo."""
        return bool(self._structured.any())

    def _grey_and_gradient(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        small = frame
        for _ in range(self.scale.bit_length() - 1):
            # An exact halving with INTER_LINEAR averages 2x2 pixels: the area average, at a tenth of the cost
            # of INTER_AREA in one step (measured on 640x480).
            small = cv2.resize(small, (small.shape[1] // 2, small.shape[0] // 2), interpolation=cv2.INTER_LINEAR)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
        grey = grey.astype(np.float32)
        gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
        return grey, cv2.magnitude(gx, gy)

    def _sums(self, integral: np.ndarray) -> np.ndarray:
        """Per block, the sum of the image whose integral image is ``integral``."""
        top = integral[self._y0, self._x1] - integral[self._y0, self._x0]
        sums: np.ndarray = integral[self._y1, self._x1] - integral[self._y1, self._x0] - top
        return sums

    def _block_texture(self, grey: np.ndarray, grad: np.ndarray) -> np.ndarray:
        # Sobel's 3x3 kernel reads a step of one grey level as 4; /4 makes the ratio gradient per brightness.
        g = self._sums(cv2.integral(grey, sdepth=cv2.CV_64F))
        e = self._sums(cv2.integral(grad, sdepth=cv2.CV_64F))
        return np.asarray(e / 4.0 / np.maximum(g, _EPS))

    def _ref_stats(self) -> None:
        assert self._ref is not None
        s, sq = cv2.integral2(self._ref, sdepth=cv2.CV_64F, sqdepth=cv2.CV_64F)
        self._ref_sum = self._sums(s)
        self._ref_var = np.maximum(self._sums(sq) - self._ref_sum**2 / self._area, _EPS)

    def measure(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(texture per block, correlation with the reference per block (nan where none), the gradient image);
        blocks are facing-major, ``GRID * GRID`` per facing."""
        if frame.shape[1] // self.scale != self.size[0] or frame.shape[0] // self.scale != self.size[1]:
            raise ValueError(
                f"frame is {frame.shape[1]}x{frame.shape[0]}, the shelf's facings are laid out for"
                f" {self.size[0] * self.scale}x{self.size[1] * self.scale}"
            )
        grey, grad = self._grey_and_gradient(frame)
        texture = self._block_texture(grey, grad)
        match = np.full(len(texture), np.nan)
        if self._ref is not None and self._structured.any():
            s, sq = cv2.integral2(grad, sdepth=cv2.CV_64F, sqdepth=cv2.CV_64F)
            cross = self._sums(cv2.integral(grad * self._ref, sdepth=cv2.CV_64F))
            a_sum = self._sums(s)
            a_var = np.maximum(self._sums(sq) - a_sum**2 / self._area, _EPS)
            ncc = (cross - a_sum * self._ref_sum / self._area) / np.sqrt(a_var * self._ref_var)
            match[self._structured] = ncc[self._structured]
        return texture, match, grad

    def empty(self, texture: np.ndarray, match: np.ndarray) -> list[bool]:
        """Per facing: every block looks empty (by its reference where it has one, else by its texture)."""
        looks_empty = np.where(self._structured, match >= self.match_min, texture <= self.texture_max)
        per_facing = np.asarray(looks_empty).reshape(self.n, GRID * GRID).all(axis=1)
        return [bool(v) for v in np.atleast_1d(per_facing)]

    def facing_scores(self, texture: np.ndarray, match: np.ndarray) -> tuple[list[float], list[float | None]]:
        """Per facing, the block values that decide it: the largest texture and the smallest reference match."""
        t = texture.reshape(self.n, GRID * GRID).max(axis=1)
        m = match.reshape(self.n, GRID * GRID)
        has = ~np.isnan(m)
        lowest = np.where(has, m, np.inf).min(axis=1)
        any_ref = [bool(v) for v in has.any(axis=1)]
        return [float(v) for v in t], [float(v) if h else None for v, h in zip(lowest, any_ref, strict=True)]

    def refresh(self, grad: np.ndarray, stably_empty: Sequence[bool]) -> None:
        """Move the reference of facings that are stably and currently empty towards the live image."""
        if self._ref is None or not self._structured.any() or not any(stably_empty):
            return
        for (x0, y0, x1, y1), empty in zip(self._windows, stably_empty, strict=True):
            if empty:
                window = self._ref[y0:y1, x0:x1]
                window *= 1.0 - _REFRESH
                window += _REFRESH * grad[y0:y1, x0:x1]
        self._ref_stats()
