"""Fit the recognition head at build time (numpy only), with every choice made on held-out data.

- projection: shrinkage LDA or none, chosen by cross-validated top-1; for catalogues large enough that a
  smaller output dimension at least halves it, the smallest dimension whose cross-validated top-1 is within one
  standard error of the best (``selection``);
- temperature: fitted on out-of-fold scores, never on the images the prototypes came from;
- OOD method and threshold: chosen by holding out whole SKUs (simulated new products, ``simulate``);
- per-class accept thresholds: set on out-of-fold predictions mixed with simulated new products, so the
  precision target holds with unknowns in the stream; back-off to group, then global.

With a fine-tuned backbone the shipped model has trained on every catalogue image, so none of them is held out
for it. The build then also trains a *calibration* model without some SKUs and without one look-alike cluster of
every other SKU (``builder.train``), and every choice above is made on what that model never saw
(``Calibration``); only the final projection and prototypes come from the shipped model's embeddings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.head.calibration import NEVER, ece, fit_accept_rule, fit_temperature, reliability, softmax
from edge_runtime.head.folds import NEVER_EVALUATED, Views, catalogue_groups, cluster_folds, cluster_groups
from edge_runtime.head.model import HIERARCHICAL_MIN_SKUS, Head, HeadConfig
from edge_runtime.head.ood import METHODS, extra_bytes, fit_ood
from edge_runtime.head.prototypes import PrototypeTable, class_centroids, l2_normalise
from edge_runtime.head.selection import choose_dim, choose_projection, cosines, fit_projection, projection_from
from edge_runtime.head.simulate import simulate_new_products
from edge_runtime.types import Precision, SkuInfo

__all__ = ["Calibration", "FitSettings", "cluster_folds", "cluster_groups", "fit_head"]

log = logging.getLogger(__name__)


# OOD methods from the simplest (no arrays at run time, fewest assumptions) to the most memory-hungry.
SIMPLEST_FIRST = ("max_cosine", "energy", "msp", "mahalanobis", "knn")
# Output dimensions tried for an LDA that would keep at least twice as many (it keeps min(SKUs - 1, D)). Above a few
# hundred SKUs the D x D projection and the SKUs x D table dominate the head's time and memory per region.
PROJECTION_DIMS = (128, 256, 512)


@dataclass(frozen=True)
class FitSettings:
    """How the head is fitted: the routing targets from the profile and the cross-validation plan."""

    accept_precision: float = 0.98
    ood_keep: float = 0.95
    verify_band: float = 0.15
    table_precision: Precision = "fp32"
    folds: int = 4
    shrinkages: tuple[float, ...] = (0.05, 0.1, 0.2, 0.35, 0.5)
    ood_holdout: float = 0.1  # share of SKUs held out per fold as "new products"; every SKU is held out once
    unknown_share: float = 0.1  # assumed share of never-seen products in the stream, for the accept thresholds
    min_support: int = 10
    ood_memory_limit_bytes: int | None = None
    seed: int = 0
    methods: tuple[str, ...] = METHODS
    # The embeddings given to fit_head already carry the colour descriptor at this weight; the head records it so
    # that edge-run composes the same input.
    colour_weight: float = 0.0
    projection_dims: tuple[int, ...] = PROJECTION_DIMS
    # > 0: the LDA keeps at most this many directions, whatever cross-validation says (a hard memory or time cap).
    max_projection_dim: int = 0
    # The accept rule must reach accept_precision at this one-sided lower confidence bound (0: point estimate).
    accept_confidence: float = 0.95


@dataclass(frozen=True)
class Calibration:
    """What a fine-tuned backbone's calibration model makes of the catalogue, and what it never trained on.

    ``embeddings`` (and ``augmented`` views of ``embeddings[aug_source]``) are the head's input as the
    calibration model computes it, one row per catalogue image in the shipped embeddings' order. ``unseen``
    marks images of trained SKUs it never saw (their look-alike cluster was held out); ``new_classes`` are the
    SKUs it never saw at all, the simulated new products.
    """

    embeddings: np.ndarray
    unseen: np.ndarray
    new_classes: np.ndarray
    augmented: np.ndarray | None = None
    aug_source: np.ndarray | None = None


@dataclass(frozen=True)
class _Problem:
    """The images every choice is made on, with class ids compacted to the classes known in it."""

    views: Views  # compact labels
    fold: np.ndarray  # cluster fold per image; NEVER_EVALUATED = fitting side only
    classes: np.ndarray  # catalogue class id of each compact id
    all_views: Views  # every image (catalogue labels), for the new-product simulation
    known_eval: np.ndarray  # over all_views: the unseen known images the OOD threshold is set on
    candidates: np.ndarray | None  # classes the simulation may hold out (None: every class)


def _problem(emb: np.ndarray, labels: np.ndarray, views: Views, s: FitSettings, cal: Calibration | None) -> _Problem:
    if cal is None:
        fold = cluster_folds(emb, labels, s.folds, s.seed)
        return _Problem(views, fold, np.arange(int(labels.max()) + 1), views, fold == 0, None)
    cal_emb = np.asarray(cal.embeddings, dtype=np.float32)
    all_views = Views.of(cal_emb, labels, cal.augmented, cal.aug_source)
    known = ~np.isin(labels, cal.new_classes)
    classes = np.unique(labels[known])
    compact = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
    compact[classes] = np.arange(len(classes))
    # The calibration model never trained on the unseen images: they are the one held-out fold.
    fold_all = np.where(cal.unseen & known, 0, NEVER_EVALUATED)
    index = np.flatnonzero(known)
    aug_keep = known[all_views.source]
    renumber = np.full(len(labels), -1, dtype=np.int64)
    renumber[index] = np.arange(len(index))
    sub = Views(cal_emb[index], compact[labels[index]], all_views.aug[aug_keep], renumber[all_views.source[aug_keep]])
    return _Problem(sub, fold_all[index], classes, all_views, fold_all == 0, np.asarray(cal.new_classes))


def fit_head(
    embeddings: np.ndarray,
    labels: np.ndarray,
    skus: list[SkuInfo],
    s: FitSettings,
    augmented: np.ndarray | None = None,
    aug_source: np.ndarray | None = None,
    calibration: Calibration | None = None,
) -> tuple[Head, dict[str, Any]]:
    """Fit the head on catalogue embeddings; ``augmented`` rows are extra views of ``embeddings[aug_source]``.

    Augmented views only ever join the fitting side of a split, together with their source image, and are
    never evaluated: a view of a held-out image in the training side would leak it. With ``calibration`` (a
    fine-tuned backbone), every choice is made on the calibration model's embeddings of what it never saw, and
    only the final projection and prototypes on ``embeddings``. Returns the head and its report (the
    manifest's ``head`` section).
    """
    n_classes = len(skus)
    emb = np.asarray(embeddings, dtype=np.float32)
    ship = Views.of(emb, labels, augmented, aug_source)
    raw_centroids = class_centroids(emb, labels, n_classes)
    group_of_class, group_names, group_source = catalogue_groups(skus, raw_centroids)
    p = _problem(emb, labels, ship, s, calibration)
    report: dict[str, Any] = {
        "groups": {"source": group_source, "count": len(group_names)},
        "augmented_views": len(ship.source),
    }
    if calibration is not None:
        report["calibration_model"] = {
            "new_products": len(p.candidates) if p.candidates is not None else 0,
            "unseen_known_images": int((p.fold == 0).sum()),
            "rule": "every choice on what the calibration model never trained on; prototypes from the shipped model",
        }

    # 1. projection: none or shrinkage LDA, by out-of-fold top-1
    n_known = len(p.classes)
    shrink, scatters, report["projection"] = choose_projection(p.views, p.fold, n_known, s.folds, s.shrinkages)
    max_dim, dim_report = choose_dim(
        p.views, p.fold, scatters, shrink, n_known, s.projection_dims, s.max_projection_dim
    )
    if dim_report is not None:
        report["projection"]["output_dim"] = dim_report
        log.info("head: projection keeps %d of %d directions (%s)", dim_report["dim"], dim_report["full_dim"],
                 dim_report["rule"])  # fmt: skip

    # 2. out-of-fold scores with the chosen projection, for calibration and thresholds
    oof = _out_of_fold(p, scatters, shrink, max_dim, n_known, s)
    group_known = group_of_class[p.classes]
    report["accuracy"], report["per_class"], report["calibration"] = _accuracy_reports(oof, p, group_known, n_classes)

    # 3. OOD: hold out whole SKUs, fit on the rest, measure detection at the known-retention point
    ood_table, unknown_pool = simulate_new_products(
        p.all_views, p.known_eval, group_of_class, shrink, max_dim, oof.temperature, s.methods, s.ood_keep,
        s.ood_holdout, s.seed, p.candidates,
    )  # fmt: skip
    method, ood_threshold, report["ood"] = _choose_ood(ood_table, oof, len(emb), n_classes, s)

    # 4. accept thresholds on known (gated) + simulated unknowns that slip through the gate
    rule, report["routing"] = _accept_rule(oof, p, unknown_pool[method], method, ood_threshold, group_of_class, s)

    # 5. final head on every catalogue image, as the shipped model embeds it
    x_fit, y_fit = ship.fit_set(np.ones(len(emb), dtype=bool))
    proj = fit_projection(x_fit, y_fit, shrink, max_dim)
    f_fit = proj.apply(x_fit)
    feats = f_fit[: len(emb)]  # every image, then the views
    cents = class_centroids(f_fit, y_fit, n_classes)
    group_cents = l2_normalise(np.stack([cents[group_of_class == g].mean(0) for g in range(len(group_names))]))
    config = HeadConfig(
        temperature=oof.temperature,
        ood_method=method,
        ood_threshold=ood_threshold,
        accept_ood_threshold=ood_threshold + rule.ood_margin,
        accept_thresholds=rule.thresholds.values,
        threshold_levels=rule.thresholds.levels,
        verify_band=s.verify_band,
        search="hierarchical" if n_classes > HIERARCHICAL_MIN_SKUS else "flat",
        colour_weight=s.colour_weight,
    )
    head = Head(
        skus=list(skus),
        projection=proj,
        table=PrototypeTable.from_float(cents, s.table_precision),
        group_of_class=group_of_class,
        group_names=group_names,
        group_table=PrototypeTable.from_float(group_cents, s.table_precision),
        ood=fit_ood(method, feats, labels, n_classes),
        config=config,
    )
    report["memory_bytes"] = head.nbytes
    return head, report


@dataclass(frozen=True)
class _OutOfFold:
    """Scores of every evaluated image from a head that never saw it (compact class ids)."""

    evaluated: np.ndarray  # bool over the problem's images
    dim: int  # the projected dimension the scores were computed in
    y: np.ndarray  # labels of the evaluated images
    probs_raw: np.ndarray
    temperature: float
    pred: np.ndarray
    conf: np.ndarray
    correct: np.ndarray
    ood: dict[str, np.ndarray]  # per method, over the evaluated images


def _out_of_fold(
    p: _Problem,
    scatters: dict[int, Any],
    shrink: float | None,
    max_dim: int | None,
    n_known: int,
    s: FitSettings,
) -> _OutOfFold:
    views, fold = p.views, p.fold
    labels, n = views.labels, len(views.emb)
    cos_oof = np.zeros((n, n_known), dtype=np.float32)
    feats_oof: np.ndarray | None = None
    per_fold = []
    for f in range(s.folds):
        train, test = fold != f, fold == f
        if not test.any():
            continue
        x_fit, y_fit = views.fit_set(train)
        proj = projection_from(scatters[f], shrink, x_fit.shape[1], max_dim)
        f_fit, ftest = proj.apply(x_fit), proj.apply(views.emb[test])
        ftrain = f_fit[: int(train.sum())]  # fit_set puts the selected images first, their views after
        if feats_oof is None:
            feats_oof = np.zeros((n, ftest.shape[1]), dtype=np.float32)
        cos_oof[test] = cosines(ftest, class_centroids(f_fit, y_fit, n_known))
        feats_oof[test] = ftest
        per_fold.append((train, test, ftrain))
    assert feats_oof is not None, "no fold had held-out images"
    evaluated = fold >= 0
    y_eval = labels[evaluated]
    temperature = fit_temperature(cos_oof[evaluated], y_eval)
    ood_all = {m: np.zeros(n) for m in s.methods}
    for train, test, ftrain in per_fold:
        for m in s.methods:
            model = fit_ood(m, ftrain, labels[train], n_known)
            ood_all[m][test] = model.score(feats_oof[test], cos_oof[test], temperature)
    probs = softmax(cos_oof[evaluated] / temperature)
    pred = probs.argmax(1)
    return _OutOfFold(
        evaluated=evaluated,
        dim=feats_oof.shape[1],
        y=y_eval,
        probs_raw=softmax(cos_oof[evaluated]),
        temperature=temperature,
        pred=pred,
        conf=probs.max(1),
        correct=pred == y_eval,
        ood={m: v[evaluated] for m, v in ood_all.items()},
    )


def _accuracy_reports(
    oof: _OutOfFold, p: _Problem, group_known: np.ndarray, n_classes: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    accuracy = {
        "top1_oof": round(float(oof.correct.mean()), 4),
        "group_top1_oof": round(float((group_known[oof.pred] == group_known[oof.y]).mean()), 4),
        "n_eval": int(oof.evaluated.sum()),
    }
    # Per catalogue class (classes the problem does not know have no support).
    support = np.zeros(n_classes, dtype=np.int64)
    hits = np.zeros(n_classes)
    support[p.classes] = np.bincount(oof.y, minlength=len(p.classes))
    hits[p.classes] = np.bincount(oof.y, weights=oof.correct.astype(np.float64), minlength=len(p.classes))
    per_class = {
        "accuracy": [round(float(h / n), 4) if n else None for h, n in zip(hits, support, strict=True)],
        "support": support.tolist(),
    }
    calibration = {
        "temperature": round(oof.temperature, 6),
        "ece_before": round(ece(oof.probs_raw.max(1), oof.probs_raw.argmax(1) == oof.y), 4),
        "ece_after": round(ece(oof.conf, oof.correct), 4),
        "reliability": reliability(oof.conf, oof.correct),
    }
    return accuracy, per_class, calibration


def _choose_ood(
    ood_table: dict[str, dict[str, Any]], oof: _OutOfFold, n_images: int, n_classes: int, s: FitSettings
) -> tuple[str, float, dict[str, Any]]:
    eligible = []
    for m in s.methods:
        row = ood_table[m]
        # The run-time cost is the shipped head's: every catalogue image and class.
        row["extra_bytes"] = extra_bytes(m, n_images, n_classes, oof.dim)
        row["eligible"] = s.ood_memory_limit_bytes is None or row["extra_bytes"] <= s.ood_memory_limit_bytes
        if row["eligible"]:
            eligible.append(m)
    best = max(eligible, key=lambda m: (ood_table[m]["detection"], ood_table[m]["auroc"]))
    std_error = ood_table[best]["detection_std"] / np.sqrt(max(1, ood_table[best]["folds"]))
    # One-standard-error rule: the simplest method within one standard error of the best. Near-equal scores
    # trade places between simulations by chance (on grocery, four of the five methods each won some fold).
    method = next(
        m
        for m in SIMPLEST_FIRST
        if m in eligible and ood_table[m]["detection"] >= ood_table[best]["detection"] - std_error
    )
    threshold = float(np.quantile(oof.ood[method], s.ood_keep, method="higher"))
    log.info("head: OOD method %s, detection %.1f%% at %.0f%% known kept", method,
             100 * ood_table[method]["detection"], 100 * s.ood_keep)  # fmt: skip
    report = {
        "chosen": method,
        "best_detection": best,
        "rule": "simplest within one standard error of the best",
        "threshold": threshold,
        "keep": s.ood_keep,
        "methods": ood_table,
    }
    return method, threshold, report


def _accept_rule(
    oof: _OutOfFold,
    p: _Problem,
    pool: tuple[np.ndarray, ...],
    method: str,
    ood_threshold: float,
    group_of_class: np.ndarray,
    s: FitSettings,
) -> tuple[Any, dict[str, Any]]:
    n_classes = len(group_of_class)
    scores = oof.ood[method]
    passed = scores <= ood_threshold
    pred = p.classes[oof.pred]  # catalogue class ids from here on
    u_pred, u_conf, u_margin, u_sku = pool
    u_pass = u_margin <= 0  # passed the gate calibrated in its own fold
    n_known = int(oof.evaluated.sum())
    w_unknown = (s.unknown_share / (1 - s.unknown_share)) * n_known / max(1, len(u_pred)) if len(u_pred) else 0.0
    n_unk = int(u_pass.sum())
    t_pred = np.concatenate([pred[passed], u_pred[u_pass]])
    t_conf = np.concatenate([oof.conf[passed], u_conf[u_pass]])
    t_ok = np.concatenate([oof.correct[passed], np.zeros(n_unk, bool)])
    t_margin = np.concatenate([scores[passed] - ood_threshold, u_margin[u_pass]])
    t_w = np.concatenate([np.ones(int(passed.sum())), np.full(n_unk, w_unknown)])
    t_unknown = np.concatenate([np.zeros(int(passed.sum()), bool), np.ones(n_unk, bool)])
    # Independence units for cross-fitting: a look-alike cluster of one SKU, or one simulated new product.
    known_units = (p.classes[p.views.labels] * s.folds + p.fold)[oof.evaluated][passed]
    t_unit = np.concatenate([known_units, n_classes * s.folds + u_sku[u_pass]])
    rule = fit_accept_rule(
        t_pred, t_conf, t_ok, t_margin, t_w, t_unit, t_unknown, group_of_class, s.accept_precision, s.min_support,
        seed=s.seed, confidence=s.accept_confidence,
    )  # fmt: skip
    thr = rule.thresholds
    accept_ood_threshold = ood_threshold + rule.ood_margin
    acc_k = passed & (oof.conf >= thr.values[pred]) & (scores <= accept_ood_threshold)
    acc_u = u_pass & (u_conf >= thr.values[u_pred]) & (u_margin <= rule.ood_margin)
    tp = float((acc_k & oof.correct).sum())
    fp = float((acc_k & ~oof.correct).sum()) + w_unknown * float(acc_u.sum())
    report = {
        "accept_precision_target": s.accept_precision,
        "class_threshold_target": rule.internal_target,
        "accept_ood_threshold": accept_ood_threshold,
        "accept_gate_keep": rule.gate_keep,
        "accepted_precision_crossfit": rule.crossfit_precision,
        "accepted_precision_crossfit_lower": rule.crossfit_precision_lower,
        "accept_confidence": rule.confidence,
        "accept_rule_met": rule.met,
        "known_auto_accepted_crossfit": rule.crossfit_known_accepted,
        "crossfit_table": rule.table,
        "threshold_levels": {lvl: thr.levels.count(lvl) for lvl in ("class", "group", "global")},
        "never_accepted_classes": int((thr.values >= NEVER).sum()),
        "known_auto_accepted": round(float(acc_k.mean()), 4),
        "accepted_precision_with_unknowns": round(tp / (tp + fp), 4) if tp + fp else None,
        "unknowns_accepted": round(float(acc_u.mean()), 4) if len(acc_u) else None,
        "unknown_share_assumed": s.unknown_share,
    }
    log.info(
        "head: accept rule class thresholds at %.4f, OOD accept limit keeps %.0f%%: cross-fitted precision %.3f"
        " (%.0f%% lower bound %.3f) with new products, %.0f%% of known images auto-accepted", rule.internal_target,
        100 * rule.gate_keep, rule.crossfit_precision, 100 * rule.confidence, rule.crossfit_precision_lower,
        100 * rule.crossfit_known_accepted,
    )  # fmt: skip
    return rule, report
