"""Which catalogue photos a build holds out, and why: the split variants are ranked on, and what a fine-tuned
backbone's calibration model never trains on.

Catalogue photos come in near-duplicate runs (one pack, one session, one angle), so a photo is held out with its
whole cluster of look-alikes (``head.folds.cluster_folds``); a random split would put a sibling of every held-out
photo on the training side.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import onnx

from edge_runtime.head.folds import cluster_folds

HOLDOUT_FOLDS = 4


def heldout_split(feats: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-in, held-out) image indices: held-out images are whole clusters of look-alikes, not random
    siblings of training images."""
    fold = cluster_folds(feats, labels, HOLDOUT_FOLDS, seed)
    return np.flatnonzero(fold != 0), np.flatnonzero(fold == 0)


@dataclass(frozen=True)
class HoldoutPlan:
    """What a fine-tuned build's calibration model never trains on: photos of kept SKUs and whole SKUs."""

    unseen: np.ndarray  # bool [N]: photos of kept SKUs (one look-alike cluster of each)
    new_classes: np.ndarray  # int SKU indices: the simulated new products

    def digest(self) -> str:
        """sha256 of the plan (part of the fine-tune cache key)."""
        data = np.packbits(self.unseen.astype(np.uint8)).tobytes() + np.asarray(self.new_classes, np.int64).tobytes()
        return hashlib.sha256(data).hexdigest()

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """(fitting side, held-out side) for ranking variants on the calibration model: every photo it did not
        hold out (new products included, as SKUs it was not trained on) against the unseen photos."""
        return np.flatnonzero(~self.unseen), np.flatnonzero(self.unseen)


def holdout_plan(frozen: np.ndarray, labels: np.ndarray, n_classes: int, share: float, seed: int) -> HoldoutPlan:
    """Hold ``share`` of the SKUs (at least 2, leaving at least 2) and one look-alike cluster of every other
    SKU with two or more photos out of the calibration model's training, chosen on the frozen embeddings."""
    rng = np.random.default_rng(seed + 4242)
    n_new = int(min(max(2, round(share * n_classes)), max(0, n_classes - 2)))
    new_classes = np.sort(rng.choice(n_classes, size=n_new, replace=False)) if n_new else np.zeros(0, np.int64)
    fold = cluster_folds(frozen, labels, HOLDOUT_FOLDS, seed)
    unseen = (fold == 0) & ~np.isin(labels, new_classes)
    return HoldoutPlan(unseen=unseen, new_classes=new_classes.astype(np.int64))


@dataclass(frozen=True)
class CalibrationTwin:
    """A fine-tuned build's calibration model (clipped like the shipped one) and what it never trained on: every
    variant is also made from it, and every choice (variant ranking, colour, the head's calibration) is made on
    its embeddings of the photos it never saw."""

    model: onnx.ModelProto
    plan: HoldoutPlan
