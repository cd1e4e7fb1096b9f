"""The quick accuracy measure that ranks variants (and decides the colour descriptor): nearest class centroid
in a fixed-shrinkage LDA, fitted on the held-in images and scored on the held-out ones.

The head that ships chooses its own projection by cross-validation, which is too slow to repeat for every
variant; this ranking only has to order variants (and colour on or off) the way the full head would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_runtime.head.projection import Projection, fit_lda
from edge_runtime.head.prototypes import PrototypeTable, class_centroids, nearest
from edge_runtime.types import Precision

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


# A quantised variant may lose this much of the fp32 model's new-product detection (at the same input size)
# before it stops being a candidate: top-1 alone can hide a flatter score distribution, which moves the OOD gate.
OOD_DROP_LIMIT = 0.03
OOD_KEEP = 0.95  # the known-image retention the readiness checklist judges detection at


def stand_in_new_classes(n_classes: int) -> np.ndarray:
    """SKUs that play new products for a frozen build's variant check (a fine-tuned build uses the calibration
    model's held-out SKUs): every seventh, about the 15 % the calibration model holds out, none under 6 SKUs."""
    if n_classes < 6:
        return np.zeros(0, dtype=np.int64)
    return np.arange(3, n_classes, 7, dtype=np.int64)


def heldout_ood(
    feats: np.ndarray,
    labels: np.ndarray,
    split: tuple[np.ndarray, np.ndarray],
    new_classes: np.ndarray,
    n_classes: int,
    table_precisions: Sequence[Precision],
) -> tuple[dict[Precision, float], int]:
    """New-product detection at ``OOD_KEEP`` retention of held-out known images, by max cosine to the known SKUs'
    centroids (the ranking projection fitted once, without the new SKUs), for each table precision; and the
    number of new-product images it is measured on. nan when there are no new SKUs."""
    nothing: tuple[dict[Precision, float], int] = ({tp: float("nan") for tp in table_precisions}, 0)
    if len(new_classes) == 0 or n_classes - len(new_classes) < 2:
        return nothing
    train_idx, eval_idx = split
    is_new = np.isin(labels, new_classes)
    fit = train_idx[~is_new[train_idx]]
    known = eval_idx[~is_new[eval_idx]]
    if len(known) == 0 or len(fit) == 0:
        return nothing
    # Centroids of the known SKUs with photos on the fitting side, renumbered 0..K-1.
    kept = np.unique(labels[fit])
    renumber = np.full(n_classes, -1, dtype=np.int64)
    renumber[kept] = np.arange(len(kept))
    proj, centroids = fit_ranking(feats[fit], renumber[labels[fit]], np.arange(len(fit)), len(kept))
    known_feats, new_feats = proj.apply(feats[known]), proj.apply(feats[is_new])
    out: dict[Precision, float] = {}
    for tp in table_precisions:
        table = PrototypeTable.from_float(centroids, tp)
        _, known_score = nearest(table, known_feats, k=1)
        _, new_score = nearest(table, new_feats, k=1)
        # Lower cosine = stranger; the threshold keeps OOD_KEEP of the known images.
        threshold = float(np.quantile(known_score[:, 0], 1.0 - OOD_KEEP, method="lower"))
        out[tp] = float(np.mean(new_score[:, 0] < threshold))
    return out, int(is_new.sum())
