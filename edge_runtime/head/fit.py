"""Fit the recognition head at build time (numpy only), with every choice made on held-out data.

- projection: shrinkage LDA or none, chosen by cross-validated top-1; for catalogues large enough that a
  smaller output dimension at least halves it, the smallest dimension whose cross-validated top-1 is within one
  standard error of the best (the projection and the prototype table shrink with it);
- temperature: fitted on out-of-fold scores, never on the images the prototypes came from;
- OOD method and threshold: chosen by holding out whole SKUs (simulated new products);
- per-class accept thresholds: set on out-of-fold predictions mixed with simulated new products, so the
  precision target holds with unknowns in the stream; back-off to group, then global.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.head.calibration import (
    NEVER,
    ece,
    fit_accept_rule,
    fit_temperature,
    reliability,
    softmax,
)
from edge_runtime.head.model import HIERARCHICAL_MIN_SKUS, Head, HeadConfig
from edge_runtime.head.ood import METHODS, auroc, detection_at_keep, extra_bytes, fit_ood
from edge_runtime.head.projection import LdaScatter, Projection
from edge_runtime.head.prototypes import PrototypeTable, class_centroids, l2_normalise
from edge_runtime.types import Precision, SkuInfo

log = logging.getLogger(__name__)


# OOD methods from the simplest (no arrays at run time, fewest assumptions) to the most memory-hungry.
SIMPLEST_FIRST = ("max_cosine", "energy", "msp", "mahalanobis", "knn")
# Output dimensions tried for an LDA that would keep at least twice as many (it keeps min(SKUs - 1, D)). Above a few
# hundred SKUs the D x D projection and the SKUs x D table dominate the head's time and memory per region.
PROJECTION_DIMS = (128, 256, 512)


@dataclass(frozen=True)
class FitSettings:
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


@dataclass
class FitReport:
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Views:
    """Catalogue embeddings plus augmented views of them, each view tied to its source image."""

    emb: np.ndarray  # [N, D]
    labels: np.ndarray  # [N]
    aug: np.ndarray  # [M, D]
    source: np.ndarray  # [M] index into emb

    @classmethod
    def of(cls, emb: np.ndarray, labels: np.ndarray, aug: np.ndarray | None, source: np.ndarray | None) -> _Views:
        if aug is None or source is None or len(source) == 0:
            return cls(emb, labels, np.zeros((0, emb.shape[1]), np.float32), np.zeros(0, np.int64))
        aug, source = np.asarray(aug, dtype=np.float32), np.asarray(source, dtype=np.int64)
        if aug.shape != (len(source), emb.shape[1]) or source.min() < 0 or source.max() >= len(emb):
            raise ValueError("augmented views must be [M, D] with one source index in range per row")
        return cls(emb, labels, aug, source)

    def fit_set(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The images selected by ``mask`` and every augmented view of them."""
        extra = mask[self.source]
        return (
            np.concatenate([self.emb[mask], self.aug[extra]]),
            np.concatenate([self.labels[mask], self.labels[self.source[extra]]]),
        )


def cluster_folds(embeddings: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold id per image: within each class, k-means clusters of look-alike images form the folds.

    Catalogue photos come in near-duplicate runs (same pack, same session). A random split puts
    siblings of every test image in the training folds and overstates accuracy badly: on the grocery
    data, random 4-fold CV said 97 % top-1 where the separate val split gives 78 %; holding out clusters
    said 80 %. Classes with a single image get -1 (always used for prototypes, never evaluated).
    """
    rng = np.random.default_rng(seed)
    feats = l2_normalise(embeddings)
    fold = np.full(len(labels), -1, dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            continue
        k = min(folds, len(idx))
        z = feats[idx]
        centres = z[rng.choice(len(z), size=k, replace=False)]
        assign = np.zeros(len(z), dtype=np.int64)
        for _ in range(15):
            assign = (z @ centres.T).argmax(1)
            for j in range(k):
                if (assign == j).any():
                    centres[j] = l2_normalise(z[assign == j].mean(0, keepdims=True))[0]
        # Relabel clusters so fold ids rotate between classes and every fold gets test images.
        offset = int(rng.integers(folds))
        fold[idx] = (assign + offset) % folds
    return fold


def cluster_groups(centroids: np.ndarray, target_size: int = 4) -> np.ndarray:
    """Average-linkage clustering of SKU centroids by cosine distance, for catalogues without groups."""
    k = len(centroids)
    n_groups = max(1, int(np.ceil(k / target_size)))
    sims = centroids @ centroids.T
    clusters: list[list[int]] = [[i] for i in range(k)]
    while len(clusters) > n_groups:
        best, pair = -np.inf, (0, 1)
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                s = float(sims[np.ix_(clusters[a], clusters[b])].mean())
                if s > best:
                    best, pair = s, (a, b)
        a, b = pair
        clusters[a] = clusters[a] + clusters[b]
        del clusters[b]
    out = np.empty(k, dtype=np.int64)
    for g, members in enumerate(sorted(clusters, key=min)):
        out[members] = g
    return out


def _groups(skus: list[SkuInfo], raw_centroids: np.ndarray) -> tuple[np.ndarray, list[str], str]:
    names = [s.group for s in skus]
    if all(names):
        ordered = sorted(set(names))
        return np.array([ordered.index(n) for n in names]), ordered, "catalogue"
    labels = cluster_groups(raw_centroids)
    return labels, [f"cluster-{g:03d}" for g in range(labels.max() + 1)], "clustered"


def _scatter(emb: np.ndarray, labels: np.ndarray) -> LdaScatter | None:
    return LdaScatter.fit(emb, labels) if len(np.unique(labels)) >= 3 else None


def _projection(
    scatter: LdaScatter | None, shrinkage: float | None, dim: int, max_dim: int | None = None
) -> Projection:
    if shrinkage is None or scatter is None:
        return Projection.identity(dim)
    return scatter.projection(shrinkage, max_dim)


def _project(emb: np.ndarray, labels: np.ndarray, shrinkage: float | None, max_dim: int | None = None) -> Projection:
    if shrinkage is None:
        return Projection.identity(emb.shape[1])
    return _projection(_scatter(emb, labels), shrinkage, emb.shape[1], max_dim)


def _choose_dim(
    views: _Views,
    fold: np.ndarray,
    scatters: dict[int, LdaScatter | None],
    shrink: float | None,
    n_classes: int,
    s: FitSettings,
) -> tuple[int | None, dict[str, Any] | None]:
    """The LDA output dimension: None (all it keeps) unless a smaller one is as accurate out of fold.

    The discriminant directions come sorted by between-class spread, so a smaller projection is the leading
    columns of the full one: every candidate is scored from one projection per fold.
    """
    if shrink is None:
        return None, None
    full = min(n_classes - 1, views.emb.shape[1])
    if s.max_projection_dim > 0:
        if s.max_projection_dim >= full:
            return None, None
        return s.max_projection_dim, {"dim": s.max_projection_dim, "full_dim": full, "rule": "profile cap"}
    # Only where it at least halves the projection: a smaller saving is not worth up to a standard error of top-1.
    dims = sorted(d for d in s.projection_dims if 2 * d <= full)
    if not dims:
        return None, None
    correct = dict.fromkeys([*dims, full], 0)
    n_eval = 0
    for f, scatter in scatters.items():
        train, test = fold != f, fold == f
        x_fit, y_fit = views.fit_set(train)
        proj = _projection(scatter, shrink, x_fit.shape[1])
        z_fit = (l2_normalise(x_fit) - proj.mean) @ proj.matrix
        z_test = (l2_normalise(views.emb[test]) - proj.mean) @ proj.matrix
        for d in correct:
            cents = class_centroids(l2_normalise(z_fit[:, :d]), y_fit, n_classes)
            correct[d] += int((_cos(l2_normalise(z_test[:, :d]), cents).argmax(1) == views.labels[test]).sum())
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
    return (None if chosen == full else chosen), report


def _cos(feats: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.asarray(feats @ centroids.T)


def fit_head(
    embeddings: np.ndarray,
    labels: np.ndarray,
    skus: list[SkuInfo],
    s: FitSettings,
    augmented: np.ndarray | None = None,
    aug_source: np.ndarray | None = None,
) -> tuple[Head, dict[str, Any]]:
    """Fit the head on catalogue embeddings; ``augmented`` rows are extra views of ``embeddings[aug_source]``.

    Augmented views only ever join the fitting side of a split, together with their source image, and are
    never evaluated: a view of a held-out image in the training side would leak it.
    """
    n_classes = len(skus)
    emb = np.asarray(embeddings, dtype=np.float32)
    views = _Views.of(emb, labels, augmented, aug_source)
    raw_centroids = class_centroids(emb, labels, n_classes)
    group_of_class, group_names, group_source = _groups(skus, raw_centroids)
    fold = cluster_folds(emb, labels, s.folds, s.seed)
    evaluated = fold >= 0
    report: dict[str, Any] = {
        "groups": {"source": group_source, "count": len(group_names)},
        "augmented_views": len(views.source),
    }

    # 1. projection: none or shrinkage LDA, by out-of-fold top-1
    candidates: list[float | None] = [None, *s.shrinkages]
    correct = dict.fromkeys(candidates, 0)
    scatters: dict[int, LdaScatter | None] = {}  # per fold, reused for every shrinkage and in step 2
    for f in range(s.folds):
        train, test = fold != f, fold == f
        if not test.any():
            continue
        x_fit, y_fit = views.fit_set(train)
        scatters[f] = _scatter(x_fit, y_fit)
        for shrink in candidates:
            proj = _projection(scatters[f], shrink, x_fit.shape[1])
            cents = class_centroids(proj.apply(x_fit), y_fit, n_classes)
            correct[shrink] += int((_cos(proj.apply(emb[test]), cents).argmax(1) == labels[test]).sum())
    cv = {("none" if k is None else f"lda-{k}"): v / max(1, int(evaluated.sum())) for k, v in correct.items()}
    best_name = max(cv, key=lambda k: (cv[k], k == "none"))
    shrink = None if best_name == "none" else float(best_name.split("-")[1])
    report["projection"] = {"chosen": best_name, "cv_top1": {k: round(v, 4) for k, v in cv.items()}}
    log.info("head: projection %s (cross-validated top-1 %s)", best_name, report["projection"]["cv_top1"])
    max_dim, dim_report = _choose_dim(views, fold, scatters, shrink, n_classes, s)
    if dim_report is not None:
        report["projection"]["output_dim"] = dim_report
        log.info("head: projection keeps %d of %d directions (%s)", dim_report["dim"], dim_report["full_dim"],
                 dim_report["rule"])  # fmt: skip

    # 2. out-of-fold scores with the chosen projection, for calibration and thresholds
    n = len(emb)
    cos_oof = np.zeros((n, n_classes), dtype=np.float32)
    feats_oof: np.ndarray | None = None
    per_fold = []
    for f in range(s.folds):
        train, test = fold != f, fold == f
        if not test.any():
            continue
        x_fit, y_fit = views.fit_set(train)
        proj = _projection(scatters[f], shrink, x_fit.shape[1], max_dim)
        f_fit, ftest = proj.apply(x_fit), proj.apply(emb[test])
        ftrain = f_fit[: int(train.sum())]  # fit_set puts the selected images first, their views after
        if feats_oof is None:
            feats_oof = np.zeros((n, ftest.shape[1]), dtype=np.float32)
        cos_oof[test] = _cos(ftest, class_centroids(f_fit, y_fit, n_classes))
        feats_oof[test] = ftest
        per_fold.append((train, test, ftrain))
    assert feats_oof is not None, "no fold had held-out images"
    y_eval = labels[evaluated]
    temperature = fit_temperature(cos_oof[evaluated], y_eval)
    ood_oof = {m: np.zeros(n) for m in s.methods}
    for train, test, ftrain in per_fold:
        for m in s.methods:
            model = fit_ood(m, ftrain, labels[train], n_classes)
            ood_oof[m][test] = model.score(feats_oof[test], cos_oof[test], temperature)
    probs_raw = softmax(cos_oof[evaluated])
    probs = softmax(cos_oof[evaluated] / temperature)
    pred = probs.argmax(1)
    conf = probs.max(1)
    correct = pred == y_eval
    report["accuracy"] = {
        "top1_oof": round(float(correct.mean()), 4),
        "group_top1_oof": round(float((group_of_class[pred] == group_of_class[y_eval]).mean()), 4),
        "n_eval": int(evaluated.sum()),
    }
    support = np.bincount(y_eval, minlength=n_classes)
    hits = np.bincount(y_eval, weights=correct.astype(np.float64), minlength=n_classes)
    report["per_class"] = {
        "accuracy": [round(float(h / n), 4) if n else None for h, n in zip(hits, support, strict=True)],
        "support": support.tolist(),
    }
    report["calibration"] = {
        "temperature": round(temperature, 6),
        "ece_before": round(ece(probs_raw.max(1), probs_raw.argmax(1) == y_eval), 4),
        "ece_after": round(ece(conf, correct), 4),
        "reliability": reliability(conf, correct),
    }

    # 3. OOD: hold out whole SKUs, fit on the rest, measure detection at the known-retention point
    ood_table, unknown_pool = _simulate_new_products(views, fold, group_of_class, shrink, max_dim, temperature, s)
    dim = feats_oof.shape[1]
    eligible = []
    for m in s.methods:
        row = ood_table[m]
        row["extra_bytes"] = extra_bytes(m, n, n_classes, dim)
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
    ood_threshold = float(np.quantile(ood_oof[method][evaluated], s.ood_keep, method="higher"))
    report["ood"] = {
        "chosen": method,
        "best_detection": best,
        "rule": "simplest within one standard error of the best",
        "threshold": ood_threshold,
        "keep": s.ood_keep,
        "methods": ood_table,
    }
    log.info("head: OOD method %s, detection %.1f%% at %.0f%% known kept", method,
             100 * ood_table[method]["detection"], 100 * s.ood_keep)  # fmt: skip

    # 4. accept thresholds on known (gated) + simulated unknowns that slip through the gate
    passed = ood_oof[method][evaluated] <= ood_threshold
    u_pred, u_conf, u_margin, u_sku = unknown_pool[method]
    u_pass = u_margin <= 0  # passed the gate calibrated in its own fold
    n_known = int(evaluated.sum())
    w_unknown = (s.unknown_share / (1 - s.unknown_share)) * n_known / max(1, len(u_pred)) if len(u_pred) else 0.0
    n_unk = int(u_pass.sum())
    t_pred = np.concatenate([pred[passed], u_pred[u_pass]])
    t_conf = np.concatenate([conf[passed], u_conf[u_pass]])
    t_ok = np.concatenate([correct[passed], np.zeros(n_unk, bool)])
    t_margin = np.concatenate([ood_oof[method][evaluated][passed] - ood_threshold, u_margin[u_pass]])
    t_w = np.concatenate([np.ones(int(passed.sum())), np.full(n_unk, w_unknown)])
    t_unknown = np.concatenate([np.zeros(int(passed.sum()), bool), np.ones(n_unk, bool)])
    # Independence units for cross-fitting: a look-alike cluster of one SKU, or one simulated new product.
    t_unit = np.concatenate([(labels * s.folds + fold)[evaluated][passed], n_classes * s.folds + u_sku[u_pass]])
    rule = fit_accept_rule(
        t_pred, t_conf, t_ok, t_margin, t_w, t_unit, t_unknown, group_of_class, s.accept_precision, s.min_support,
        seed=s.seed,
    )  # fmt: skip
    thr = rule.thresholds
    accept_ood_threshold = ood_threshold + rule.ood_margin
    acc_k = passed & (conf >= thr.values[pred]) & (ood_oof[method][evaluated] <= accept_ood_threshold)
    acc_u = u_pass & (u_conf >= thr.values[u_pred]) & (u_margin <= rule.ood_margin)
    tp = float((acc_k & correct).sum())
    fp = float((acc_k & ~correct).sum()) + w_unknown * float(acc_u.sum())
    report["routing"] = {
        "accept_precision_target": s.accept_precision,
        "class_threshold_target": rule.internal_target,
        "accept_ood_threshold": accept_ood_threshold,
        "accept_gate_keep": rule.gate_keep,
        "accepted_precision_crossfit": rule.crossfit_precision,
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
        "head: accept rule class thresholds at %.4f, OOD accept limit keeps %.0f%%: cross-fitted precision %.3f with"
        " new products, %.0f%% of known images auto-accepted", rule.internal_target, 100 * rule.gate_keep,
        rule.crossfit_precision, 100 * rule.crossfit_known_accepted,
    )  # fmt: skip

    # 5. final head on every catalogue image
    x_fit, y_fit = views.fit_set(np.ones(n, dtype=bool))
    proj = _project(x_fit, y_fit, shrink, max_dim)
    f_fit = proj.apply(x_fit)
    feats = f_fit[:n]  # every image, then the views
    cents = class_centroids(f_fit, y_fit, n_classes)
    group_cents = l2_normalise(np.stack([cents[group_of_class == g].mean(0) for g in range(len(group_names))]))
    config = HeadConfig(
        temperature=temperature,
        ood_method=method,
        ood_threshold=ood_threshold,
        accept_ood_threshold=accept_ood_threshold,
        accept_thresholds=thr.values,
        threshold_levels=thr.levels,
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


def _simulate_new_products(
    views: _Views,
    fold: np.ndarray,
    group_of_class: np.ndarray,
    shrink: float | None,
    max_dim: int | None,
    temperature: float,
    s: FitSettings,
) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[np.ndarray, ...]]]:
    """Per method: detection rate and AUROC over folds of held-out SKUs; and the held-out SKUs' predictions."""
    emb, labels = views.emb, views.labels
    rng = np.random.default_rng(s.seed + 1)
    classes = np.unique(labels)
    n_hold = max(1, round(len(classes) * s.ood_holdout))
    sizes = np.bincount(group_of_class[classes])
    det: dict[str, list[float]] = {m: [] for m in s.methods}
    auc: dict[str, list[float]] = {m: [] for m in s.methods}
    sib: dict[str, list[float]] = {m: [] for m in s.methods}
    pool: dict[str, list[tuple[np.ndarray, ...]]] = {m: [] for m in s.methods}
    # Every SKU is held out exactly once: each class's accept threshold then knows what happens when a
    # look-alike of it is a new product. (A few random folds protect only the classes they happen to hit.)
    order = rng.permutation(classes)
    n_folds = max(2, int(np.ceil(len(classes) / n_hold)))
    for f in range(n_folds):
        held = set(order[f::n_folds].tolist())
        if not held:
            continue
        is_unknown = np.isin(labels, list(held))
        known_eval = ~is_unknown & (fold == 0)
        train = ~is_unknown & ~known_eval
        known_classes = np.unique(labels[train])
        remap = {c: i for i, c in enumerate(known_classes)}
        y_train = np.array([remap[c] for c in labels[train]])
        x_fit, y_fit = views.fit_set(train)
        y_fit = np.array([remap[c] for c in y_fit])
        proj = _project(x_fit, y_fit, shrink, max_dim)
        f_fit = proj.apply(x_fit)
        ftrain = f_fit[: int(train.sum())]  # fit_set puts the selected images first, their views after
        cents = class_centroids(f_fit, y_fit, len(known_classes))
        fk, fu = proj.apply(emb[known_eval]), proj.apply(emb[is_unknown])
        ck, cu = _cos(fk, cents), _cos(fu, cents)
        sibling_of_known = np.array([sizes[group_of_class[c]] > 1 for c in labels[is_unknown]])
        pu = softmax(cu / temperature)
        for m in s.methods:
            model = fit_ood(m, ftrain, y_train, len(known_classes))
            sk, su = model.score(fk, ck, temperature), model.score(fu, cu, temperature)
            rate, threshold = detection_at_keep(sk, su, s.ood_keep)
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
        for m in s.methods
    }
    # OOD scores in the pool are stored as margins over their own fold's threshold.
    merged = {}
    for m in s.methods:
        columns = zip(*pool[m], strict=True) if pool[m] else ([np.zeros(0, np.int64)], [np.zeros(0)]) * 2
        merged[m] = tuple(np.concatenate(list(c)) for c in columns)
    return table, merged
