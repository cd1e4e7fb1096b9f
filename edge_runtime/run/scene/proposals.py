"""Region proposals for a basket camera without a trained detector: change against the learned empty basket.

The first ``learn_frames`` frames teach OpenCV's MOG2 background subtractor what the empty basket looks like;
after that its model is frozen (learning rate 0), so an item that lies still in the basket stays foreground for
as long as it is there, which is exactly what a cart must count. Each frame is worked on at a fixed small
width (160 px, subsampled and smoothed: well under a millisecond on one core for 640x480), gain-compensated
first (the median ratio of the background's brightness to the frame's, so a light switched on over the cart is
not a basket full of change), then the foreground mask is cleaned (opening, closing), split into connected
components, and components are kept by area share and side ratio. Boxes come back in capture pixels, padded a
little so the crop holds the whole product. A frame whose change covers most of the zone (a hand over the
lens, the camera bumped) proposes nothing.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_runtime.profile.scene import CartConfig
from edge_runtime.types import Region

__all__ = ["WORK_WIDTH", "BasketProposals"]

WORK_WIDTH = 160  # pixels across the zone that the subtractor works on
_PAD = 0.06  # share of a box's side added around it
_FLOOD = 0.7  # a mask covering more of the zone than this is not objects


class BasketProposals:
    """A ``RegionFinder``: the objects that differ from the learned empty basket, in capture pixels."""

    def __init__(self, config: CartConfig) -> None:
        self.config = config
        self.learned = 0
        self._mog = self._new_subtractor()
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._bg_grey: np.ndarray | None = None  # the learned background, grey, at the work size
        self._zone: tuple[int, int, int, int] | None = None
        self._work: tuple[int, int] = (0, 0)

    def _new_subtractor(self) -> cv2.BackgroundSubtractorMOG2:
        return cv2.createBackgroundSubtractorMOG2(
            history=self.config.learn_frames, varThreshold=self.config.change_threshold, detectShadows=False
        )

    @property
    def ready(self) -> bool:
        """Whether the empty basket has been learned."""
        return self.learned >= self.config.learn_frames

    def relearn(self) -> None:
        """Forget the background and learn it again from the next frames (an emptied cart, a moved camera)."""
        self.learned = 0
        self._mog = self._new_subtractor()
        self._bg_grey = None

    def _setup(self, width: int, height: int) -> None:
        zone = self.config.basket or [0, 0, width, height]
        x, y = min(zone[0], width - 1), min(zone[1], height - 1)
        w, h = min(zone[2], width - x), min(zone[3], height - y)
        self._zone = (x, y, w, h)
        scale = WORK_WIDTH / w
        self._work = (WORK_WIDTH, max(8, round(h * scale)))

    def find(self, image: np.ndarray) -> list[Region]:
        height, width = image.shape[:2]
        if self._zone is None:
            self._setup(width, height)
        assert self._zone is not None
        zx, zy, zw, zh = self._zone
        # Subsampled, then smoothed: area averaging of a full frame costs ten times more for the same mask.
        small = cv2.resize(image[zy : zy + zh, zx : zx + zw], self._work, interpolation=cv2.INTER_NEAREST)
        small = cv2.GaussianBlur(small, (3, 3), 0)
        if not self.ready:
            # A running average over the learning frames (rate 1/n) rather than MOG2's default schedule.
            self._mog.apply(small, learningRate=1.0 / (self.learned + 1))
            self.learned += 1
            if self.ready:
                self._bg_grey = cv2.cvtColor(self._mog.getBackgroundImage(), cv2.COLOR_BGR2GRAY).astype(np.float32)
            return []
        small = self._compensate(small)
        mask = self._mog.apply(small, learningRate=0.0)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._kernel)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._kernel, iterations=2)
        area = mask.shape[0] * mask.shape[1]
        if cv2.countNonZero(mask) > _FLOOD * area:
            return []
        n, _labels, stats, _centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
        sx, sy = zw / self._work[0], zh / self._work[1]
        regions: list[Region] = []
        for i in range(1, n):
            x, y, w, h, pixels = (int(v) for v in stats[i])
            share = pixels / area
            if not self.config.min_area <= share <= self.config.max_area:
                continue
            if max(w, h) > self.config.max_aspect * min(w, h):
                continue
            px, py = w * _PAD, h * _PAD
            x1 = max(0, int(zx + (x - px) * sx))
            y1 = max(0, int(zy + (y - py) * sy))
            x2 = min(width, round(zx + (x + w + px) * sx))
            y2 = min(height, round(zy + (y + h + py) * sy))
            if x2 > x1 and y2 > y1:
                regions.append(Region(box=(x1, y1, x2 - x1, y2 - y1), detector_score=round(min(1.0, share * 10), 4)))
        return regions

    def _compensate(self, small: np.ndarray) -> np.ndarray:
        """The frame scaled so its brightness matches the learned background's (a lighting change is no object).

        The median of per-pixel ratios: objects cover a minority of the zone, so the median comes from the
        basket itself."""
        assert self._bg_grey is not None
        # Every fourth pixel each way is plenty for a median, and costs a tenth of the whole image.
        grey = cv2.cvtColor(np.ascontiguousarray(small[::4, ::4]), cv2.COLOR_BGR2GRAY).astype(np.float32)
        ratio = float(np.median(self._bg_grey[::4, ::4] / np.maximum(grey, 1.0)))
        if abs(ratio - 1.0) < 0.04:
            return small
        return cv2.convertScaleAbs(small, alpha=ratio)
