"""Choosing the head's projection out of fold: none or a shrinkage LDA, and how many directions it keeps."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edge_runtime.head.folds import Views
from edge_runtime.head.projection import LdaScatter, Projection
from edge_runtime.head.prototypes import class_centroids, l2_normalise

log = logging.getLogger(__name__)


def cosines(feats: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cosine of every (already normalised) row to every centroid."""
    return np.asarray(feats @ centroids.T)


def scatter(emb: np.ndarray, labels: np.ndarray) -> LdaScatter | None:
    """The LDA scatter of ``emb``, or None when there are too few classes for a projection."""
    return LdaScatter.fit(emb, labels) if len(np.unique(labels)) >= 3 else None


def projection_from(
    lda: LdaScatter | None, shrinkage: float | None, dim: int, max_dim: int | None = None
) -> Projection:
    """The projection at ``shrinkage`` (None: no projection) from a fitted scatter."""
    if shrinkage is None or lda is None:
        return Projection.identity(dim)
    return lda.projection(shrinkage, max_dim)


def fit_projection(
    emb: np.ndarray, labels: np.ndarray, shrinkage: float | None, max_dim: int | None = None
) -> Projection:
    """Fit the projection at ``shrinkage`` (None: no projection) on ``emb``."""
    if shrinkage is None:
        return Projection.identity(emb.shape[1])
    return projection_from(scatter(emb, labels), shrinkage, emb.shape[1], max_dim)


def choose_projection(
    views: Views, fold: np.ndarray, n_classes: int, folds: int, shrinkages: tuple[float, ...]
) -> tuple[float | None, dict[int, LdaScatter | None], dict[str, Any]]:
    """Out-of-fold top-1 of no projection and of every shrinkage: (best shrinkage or None, the per-fold
    scatters, reused by later steps, and the report)."""
    candidates: list[float | None] = [None, *shrinkages]
    correct = dict.fromkeys(candidates, 0)
    scatters: dict[int, LdaScatter | None] = {}
    evaluated = 0
    for f in range(folds):
        train, test = fold != f, fold == f
        if not test.any():
            continue
        evaluated += int(test.sum())
        x_fit, y_fit = views.fit_set(train)
        scatters[f] = scatter(x_fit, y_fit)
        for shrink in candidates:
            proj = projection_from(scatters[f], shrink, x_fit.shape[1])
            cents = class_centroids(proj.apply(x_fit), y_fit, n_classes)
            correct[shrink] += int((cosines(proj.apply(views.emb[test]), cents).argmax(1) == views.labels[test]).sum())
    cv = {("none" if k is None else f"lda-{k}"): v / max(1, evaluated) for k, v in correct.items()}
    best_name = max(cv, key=lambda k: (cv[k], k == "none"))
    shrink = None if best_name == "none" else float(best_name.split("-")[1])
    report = {"chosen": best_name, "cv_top1": {k: round(v, 4) for k, v in cv.items()}}
    log.info("head: projection %s (cross-validated top-1 %s)", best_name, report["cv_top1"])
    return shrink, scatters, report


def choose_dim(
    views: Views,
    fold: np.ndarray,
    scatters: dict[int, LdaScatter | None],
    shrink: float | None,
    n_classes: int,
    projection_dims: tuple[int, ...],
    max_projection_dim: int,
) -> tuple[int | None, dict[str, Any] | None]:
    """The LDA output dimension: None (all it keeps) unless a smaller one is as accurate out of fold.

    The discriminant directions come sorted by between-class spread, so a smaller projection is the leading
    columns of the full one: every candidate is scored from one projection per fold.
    """
    if shrink is None:
        return None, None
    full = min(n_classes - 1, views.emb.shape[1])
    if max_projection_dim > 0:
        if max_projection_dim >= full:
            return None, None
        return max_projection_dim, {"dim": max_projection_dim, "full_dim": full, "rule": "profile cap"}
    # Only where it at least halves the projection: a smaller saving is not worth up to a standard error of top-1.
    dims = sorted(d for d in projection_dims if 2 * d <= full)
    if not dims:
        return None, None
    correct = dict.fromkeys([*dims, full], 0)
    n_eval = 0
    for f, lda in scatters.items():
        train, test = fold != f, fold == f
        x_fit, y_fit = views.fit_set(train)
        proj = projection_from(lda, shrink, x_fit.shape[1])
        z_fit = (l2_normalise(x_fit) - proj.mean) @ proj.matrix
        z_test = (l2_normalise(views.emb[test]) - proj.mean) @ proj.matrix
        for d in correct:
            cents = class_centroids(l2_normalise(z_fit[:, :d]), y_fit, n_classes)
            hits = cosines(l2_normalise(z_test[:, :d]), cents).argmax(1) == views.labels[test]
            correct[d] += int(hits.sum())
        n_eval += int(test.sum())
    top1 = {d: c / max(1, n_eval) for d, c in correct.items()}
    # One-standard-error rule, as for the OOD method: the smallest projection not measurably less accurate than
    # the best (in noisy catalogues the trailing directions carry noise, and dropping them can even help).
    best = max(top1.values())
    std_error = float(np.sqrt(best * (1.0 - best) / max(1, n_eval)))
    chosen = next(d for d in [*dims, full] if top1[d] >= best - std_error)
    report = {
        "dim": chosen,
        "full_dim": full,
        "rule": "smallest within one standard error of the best cross-validated top-1",
        "cv_top1": {str(d): round(v, 4) for d, v in top1.items()},
    }
    log.info("head: projection keeps %d of %d directions (%s)", chosen, full, report["rule"])
    return (None if chosen == full else chosen), report
