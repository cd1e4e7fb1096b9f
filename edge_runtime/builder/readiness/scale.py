"""The scale curve: what the checklist cannot see on its own. Top-1 and OOD detection on random subsets of the
catalogue's SKUs, extrapolated to the profile's planned catalogue size, and the head's memory at that size."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_runtime.head.fit import cluster_folds
from edge_runtime.head.model import Head
from edge_runtime.head.ood import detection_at_keep
from edge_runtime.head.projection import Projection, fit_lda
from edge_runtime.head.prototypes import class_centroids

log = logging.getLogger(__name__)

SCALE_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
SCALE_REPEATS = 3
SCALE_HOLDOUT = 0.10  # share of classes held out as new products per fold, as in the head's simulation
SCALE_FOLDS = 4
MIN_SCALE_CLASSES = 4


def head_shrinkage(head_report: dict[str, Any]) -> float | None:
    """The LDA shrinkage the head chose (``lda-0.1`` -> 0.1), None when it uses no projection."""
    chosen = str(head_report.get("projection", {}).get("chosen", "none"))
    return None if chosen == "none" else float(chosen.split("-", 1)[1])


def head_projection_dim(head_report: dict[str, Any]) -> int | None:
    """The head's cap on the LDA's output dimension, when it keeps fewer directions than the LDA would."""
    out = head_report.get("projection", {}).get("output_dim")
    if not out or out["dim"] >= out["full_dim"]:
        return None
    return int(out["dim"])


def _holdout_run(
    emb: np.ndarray,
    labels: np.ndarray,
    fold: np.ndarray,
    classes: np.ndarray,
    held: np.ndarray,
    test_fold: int,
    shrinkage: float | None,
    keep: float,
    max_dim: int | None = None,
) -> dict[str, Any] | None:
    """One simulation: fit on the known classes' training folds; top-1 on their test fold; max-cosine
    detection of every image of the held-out classes."""
    known = np.setdiff1d(classes, held)
    in_known = np.isin(labels, known)
    train = in_known & (fold != test_fold)
    test = in_known & (fold == test_fold)
    unknown = np.isin(labels, held)
    if len(known) < 2 or not test.any() or not unknown.any():
        return None
    remap = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
    remap[known] = np.arange(len(known))
    y_train = remap[labels[train]]
    if shrinkage is None or len(known) < 3:
        proj = Projection.identity(emb.shape[1])
    else:
        proj = fit_lda(emb[train], y_train, shrinkage, max_dim)
    cents = class_centroids(proj.apply(emb[train]), y_train, len(known))
    cos_k = proj.apply(emb[test]) @ cents.T
    cos_u = proj.apply(emb[unknown]) @ cents.T
    detection, threshold = detection_at_keep(1.0 - cos_k.max(1), 1.0 - cos_u.max(1), keep)
    caught = (1.0 - cos_u.max(1)) > threshold
    per_class = {}
    for c in held:
        mask = labels[unknown] == c
        taken = np.bincount(cos_u[mask].argmax(1), minlength=len(known)).argmax()
        per_class[int(c)] = (float(caught[mask].mean()), int(known[taken]))
    return {
        "n_known": len(known),
        "top1": float((cos_k.argmax(1) == remap[labels[test]]).mean()),
        "detection": float(detection),
        "per_class": per_class,
    }


# Two-sided 95 % Student t quantiles by degrees of freedom: with 4 sizes a slope has 2 degrees of freedom.
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45}


def _fit_log(n: np.ndarray, y: np.ndarray) -> dict[str, Any] | None:
    """Least squares y = a + b ln(n), with the slope's standard error; None with fewer than two sizes.

    ``resolved`` says whether the slope is distinguishable from zero at 95 %: a few held-out classes per run
    make detection noisy, and extrapolating noise by an order of magnitude would read as a finding.
    """
    if len(np.unique(n)) < 2:
        return None
    x = np.log(n)
    b, a = np.polyfit(x, y, 1)
    dof = len(x) - 2
    sxx = float(((x - x.mean()) ** 2).sum())
    se = math.sqrt(float(((y - (a + b * x)) ** 2).sum()) / dof / sxx) if dof > 0 else float("nan")
    resolved = dof > 0 and abs(b) > _T95.get(dof, 2.0) * se
    return {"a": float(a), "b_per_ln_class": float(b), "slope_se": se, "resolved": bool(resolved)}


def compute_scale_curve(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    shrinkage: float | None,
    keep: float,
    planned: int,
    seed: int = 0,
    fractions: Sequence[float] = SCALE_FRACTIONS,
    repeats: int = SCALE_REPEATS,
    max_dim: int | None = None,
) -> tuple[dict[str, Any], dict[int, tuple[float, int]]]:
    """Top-1 and OOD detection on random subsets of the classes, extrapolated to ``planned`` SKUs.

    Each run holds out 10 % of the subset's classes as new products and one cluster fold of the rest as test
    images; the projection is the head's LDA at the head's shrinkage and output dimension cap, matching is
    nearest centroid, the gate is max cosine. At 100 % every class is held out once, which also gives each SKU's
    own detection rate (second return value: class -> (share of its images caught, class it is taken for)).
    """
    rng = np.random.default_rng(seed)
    emb = np.asarray(embeddings, dtype=np.float32)
    fold = cluster_folds(emb, labels, SCALE_FOLDS, seed)
    all_classes = np.unique(labels)
    k = len(all_classes)
    levels = []
    per_class: dict[int, tuple[float, int]] = {}
    for frac in fractions:
        size = max(MIN_SCALE_CLASSES, round(frac * k)) if frac < 1 else k
        if size > k or (frac < 1 and size >= k) or size < MIN_SCALE_CLASSES:
            continue
        n_hold = max(1, round(size * SCALE_HOLDOUT))
        runs = []
        if frac >= 1:
            order = rng.permutation(all_classes)
            n_folds = max(2, math.ceil(k / n_hold))
            for f in range(n_folds):
                held = order[f::n_folds]
                run = _holdout_run(emb, labels, fold, all_classes, held, f % SCALE_FOLDS, shrinkage, keep, max_dim)
                if run:
                    runs.append(run)
                    per_class.update(run["per_class"])
        else:
            for r in range(repeats):
                subset = np.sort(rng.choice(all_classes, size=size, replace=False))
                held = rng.choice(subset, size=n_hold, replace=False)
                run = _holdout_run(emb, labels, fold, subset, held, r % SCALE_FOLDS, shrinkage, keep, max_dim)
                if run:
                    runs.append(run)
        if not runs:
            continue
        levels.append(
            {
                "fraction": frac,
                "classes": size,
                "known_classes": float(np.mean([r["n_known"] for r in runs])),
                "top1": float(np.mean([r["top1"] for r in runs])),
                "top1_std": float(np.std([r["top1"] for r in runs])),
                "detection": float(np.mean([r["detection"] for r in runs])),
                "detection_std": float(np.std([r["detection"] for r in runs])),
                "runs": len(runs),
            }
        )
        log.info(
            "scale curve: %d classes, top-1 %.3f, detection %.3f", size, levels[-1]["top1"], levels[-1]["detection"]
        )
    n = np.array([lv["known_classes"] for lv in levels])
    fits: dict[str, dict[str, Any] | None] = {}
    predicted: dict[str, float | None] = {}
    for key in ("top1", "detection"):
        fit = _fit_log(n, np.array([lv[key] for lv in levels])) if len(levels) >= 2 else None
        fits[key] = fit
        predicted[key] = float(np.clip(fit["a"] + fit["b_per_ln_class"] * math.log(planned), 0, 1)) if fit else None
    largest = float(n.max()) if len(n) else 0.0
    factor = planned / largest if largest else float("nan")
    note = (
        f"extrapolated {factor:.1f}x beyond the largest measured catalogue ({largest:.0f} known SKUs): a trend, "
        "not a guarantee (new SKUs may be harder or easier than these)"
        if largest and factor > 1
        else "the planned size is within the measured range"
    )
    curve = {
        "method": "random class subsets; 10 % of each held out as new products; LDA at the head's shrinkage, "
        "nearest centroid (top-1) and max-cosine gate (detection at the profile's keep); fit y = a + b ln(SKUs)",
        "shrinkage": shrinkage,
        "keep": keep,
        "levels": levels,
        "fit": fits,
        "planned_catalogue_size": planned,
        "predicted": predicted,
        "note": note,
    }
    return curve, per_class


def head_bytes_at(head: Head, planned: int) -> int:
    """Bytes the prototype table and projection would take at ``planned`` SKUs, same precision: rows grow with
    the SKU count, and an LDA's width grows with the number of classes (up to the embedding size)."""
    width = head.table.rows.shape[1]
    full_dim = head.projection.in_dim
    if head.projection.is_identity:
        return int(planned * width * head.table.rows.dtype.itemsize + head.projection.nbytes)
    width_at = max(1, min(planned - 1, full_dim))
    table = planned * width_at * head.table.rows.dtype.itemsize
    return int(table + full_dim * width_at * 4 + full_dim * 4)
