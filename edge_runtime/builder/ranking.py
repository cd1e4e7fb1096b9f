"""The quick accuracy measure that ranks variants (and decides the colour descriptor): nearest class centroid
in a fixed-shrinkage LDA, fitted on the held-in images and scored on the held-out ones.

The head that ships chooses its own projection by cross-validation, which is too slow to repeat for every
variant; this ranking only has to order variants (and colour on or off) the way the full head would.
"""

from __future__ import annotations

import numpy as np

from edge_runtime.head.projection import Projection, fit_lda
from edge_runtime.head.prototypes import PrototypeTable, class_centroids, nearest

RANKING_SHRINKAGE = 0.2


def ranking_projection(feats: np.ndarray, labels: np.ndarray) -> Projection:
    """The projection used to rank variants: the head's LDA at a fixed, middle shrinkage (the full head
    chooses its own by cross-validation, which is too slow to repeat for every variant)."""
    if len(np.unique(labels)) < 3:
        return Projection.identity(feats.shape[1])
    return fit_lda(feats, labels, RANKING_SHRINKAGE)


def fit_ranking(
    feats: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, n_classes: int
) -> tuple[Projection, np.ndarray]:
    """The ranking projection and the class centroids in it, both from the held-in images ``train_idx``."""
    proj = ranking_projection(feats[train_idx], labels[train_idx])
    return proj, class_centroids(proj.apply(feats[train_idx]), labels[train_idx], n_classes)


def heldout_top1(table: PrototypeTable, feats: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Nearest-prototype top-1 of ``feats`` (already projected) against ``labels``, and the predictions."""
    if len(labels) == 0:
        return float("nan"), np.zeros(0, dtype=np.int64)
    idx, _ = nearest(table, feats, k=1)
    pred = idx[:, 0]
    return float((pred == labels).mean()), pred
