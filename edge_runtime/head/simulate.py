"""New products, simulated: hold whole SKUs out of the head, score their images against the rest.

Every OOD score is judged by how many held-out-SKU images it flags at the threshold that keeps
``ood_keep`` of unseen known images; the held-out images' predictions also feed the accept rule, so its
thresholds know what a new product that slips through the gate looks like.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_runtime.head.calibration import softmax
from edge_runtime.head.folds import Views
from edge_runtime.head.ood import auroc, detection_at_keep, fit_ood
from edge_runtime.head.prototypes import class_centroids
from edge_runtime.head.selection import cosines, fit_projection

# Per method: (predicted class, confidence, OOD margin over its fold's threshold, true SKU) of every held-out image.
UnknownPool = dict[str, tuple[np.ndarray, ...]]


def simulate_new_products(
    views: Views,
    known_eval: np.ndarray,
    group_of_class: np.ndarray,
    shrink: float | None,
    max_dim: int | None,
    temperature: float,
    methods: tuple[str, ...],
    ood_keep: float,
    ood_holdout: float,
    seed: int,
    candidates: np.ndarray | None = None,
) -> tuple[dict[str, dict[str, Any]], UnknownPool]:
    """Per method: detection rate and AUROC over folds of held-out SKUs; and the held-out SKUs' predictions.

    ``known_eval`` marks the unseen known images the threshold is set on (never on the fitting side).
    ``candidates``: the classes that may be held out (default: every class, each held out exactly once). When
    given, the candidates not held out in a fold are left out of that fold altogether, so that the known side
    only holds classes that are known for real (a fine-tuned backbone's calibration model trained on every class
    but the candidates).
    """
    emb, labels = views.emb, views.labels
    rng = np.random.default_rng(seed + 1)
    classes = np.unique(labels)
    n_hold = max(1, round(len(classes) * ood_holdout))
    pool_classes = classes if candidates is None else np.intersect1d(classes, candidates)
    if candidates is not None:
        n_hold = max(1, min(n_hold, len(pool_classes) // 2))
    sizes = np.bincount(group_of_class[classes])
    det: dict[str, list[float]] = {m: [] for m in methods}
    auc: dict[str, list[float]] = {m: [] for m in methods}
    sib: dict[str, list[float]] = {m: [] for m in methods}
    pool: dict[str, list[tuple[np.ndarray, ...]]] = {m: [] for m in methods}
    # Every SKU is held out exactly once: each class's accept threshold then knows what happens when a
    # look-alike of it is a new product. (A few random folds protect only the classes they happen to hit.)
    order = rng.permutation(pool_classes)
    n_folds = max(2, int(np.ceil(len(pool_classes) / n_hold)))
    for f in range(n_folds):
        held = set(order[f::n_folds].tolist())
        if not held:
            continue
        is_unknown = np.isin(labels, list(held))
        usable = np.ones(len(labels), dtype=bool)
        if candidates is not None:
            usable = ~np.isin(labels, pool_classes) | is_unknown
        known = usable & ~is_unknown & known_eval
        train = usable & ~is_unknown & ~known_eval
        known_classes = np.unique(labels[train])
        remap = {c: i for i, c in enumerate(known_classes)}
        y_train = np.array([remap[c] for c in labels[train]])
        x_fit, y_fit = views.fit_set(train)
        y_fit = np.array([remap[c] for c in y_fit])
        proj = fit_projection(x_fit, y_fit, shrink, max_dim)
        f_fit = proj.apply(x_fit)
        ftrain = f_fit[: int(train.sum())]  # fit_set puts the selected images first, their views after
        cents = class_centroids(f_fit, y_fit, len(known_classes))
        fk, fu = proj.apply(emb[known]), proj.apply(emb[is_unknown])
        ck, cu = cosines(fk, cents), cosines(fu, cents)
        sibling_of_known = np.array([sizes[group_of_class[c]] > 1 for c in labels[is_unknown]])
        pu = softmax(cu / temperature)
        for m in methods:
            model = fit_ood(m, ftrain, y_train, len(known_classes))
            sk, su = model.score(fk, ck, temperature), model.score(fu, cu, temperature)
            rate, threshold = detection_at_keep(sk, su, ood_keep)
            det[m].append(rate)
            auc[m].append(auroc(sk, su))
            if sibling_of_known.any():
                sib[m].append(float((su[sibling_of_known] > threshold).mean()))
            # Map predictions back to catalogue class ids for the threshold calibration.
            pool[m].append((known_classes[pu.argmax(1)], pu.max(1), su - threshold, labels[is_unknown]))
    table = {
        m: {
            "detection": round(float(np.mean(det[m])), 4),
            "detection_std": round(float(np.std(det[m])), 4),
            "auroc": round(float(np.nanmean(auc[m])), 4),
            "detection_siblings": round(float(np.mean(sib[m])), 4) if sib[m] else None,
            "folds": n_folds,
            "held_out_per_fold": n_hold,
        }
        for m in methods
    }
    # OOD scores in the pool are stored as margins over their own fold's threshold.
    merged = {}
    for m in methods:
        columns = zip(*pool[m], strict=True) if pool[m] else ([np.zeros(0, np.int64)], [np.zeros(0)]) * 2
        merged[m] = tuple(np.concatenate(list(c)) for c in columns)
    return table, merged
