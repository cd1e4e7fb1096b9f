"""Confidence calibration (temperature), calibration error, and per-class accept thresholds with back-off."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def nll(cos: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = cos / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(cos: np.ndarray, labels: np.ndarray, lo: float = 1e-3, hi: float = 2.0) -> float:
    """Temperature minimising held-out NLL, by golden-section search on log T (NLL is unimodal in T)."""
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(cos, labels, np.exp(c)), nll(cos, labels, np.exp(d))
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(cos, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(cos, labels, np.exp(d))
    return float(np.exp((a + b) / 2))


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error with equal-width bins (Guo et al., 2017)."""
    if len(confidence) == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += mask.mean() * abs(float(correct[mask].mean()) - float(confidence[mask].mean()))
    return float(total)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) per bin, for the reliability diagram."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = idx == b
        n = int(mask.sum())
        out.append((float(confidence[mask].mean()) if n else 0.0, float(correct[mask].mean()) if n else 0.0, n))
    return out


NEVER = 1.01  # a threshold no probability reaches: the class is never auto-accepted


def wilson_lower(p: float, n: float, confidence: float) -> float:
    """One-sided Wilson score lower bound of a proportion ``p`` seen on ``n`` (effective) trials; ``p`` itself
    when ``confidence`` is 0 or there are no trials."""
    if confidence <= 0 or n <= 0:
        return p
    z = float(NormalDist().inv_cdf(confidence))
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n)))
    return (centre - spread) / (1 + z * z / n)


def precision_threshold(conf: np.ndarray, correct: np.ndarray, weight: np.ndarray, target: float) -> float:
    """Lowest threshold whose accepted set (conf >= t) reaches ``target`` weighted precision; NEVER if none."""
    if len(conf) == 0:
        return NEVER
    order = np.argsort(-conf, kind="mergesort")
    c, ok, w = conf[order], correct[order].astype(np.float64), weight[order]
    precision = np.cumsum(ok * w) / np.cumsum(w)
    # Only cut between distinct confidences: equal scores are accepted or refused together.
    last_of_tie = np.r_[c[1:] != c[:-1], True]
    good = np.flatnonzero((precision >= target) & last_of_tie)
    if len(good) == 0:
        return NEVER
    return float(c[good[-1]])


@dataclass(frozen=True)
class Thresholds:
    values: np.ndarray  # [K] float
    levels: list[str]  # per class: "class", "group" or "global"
    support: np.ndarray  # [K] held-out predictions that informed the class level


def accept_thresholds(
    pred: np.ndarray,
    conf: np.ndarray,
    correct: np.ndarray,
    weight: np.ndarray,
    group_of_class: np.ndarray,
    target: float,
    min_support: int = 10,
) -> Thresholds:
    """Per-class thresholds reaching ``target`` precision, backing off to the group, then the global one.

    A class backs off when fewer than ``min_support`` held-out predictions named it: a precision
    estimated from a handful of images is noise.
    """
    n_classes = len(group_of_class)
    glob = precision_threshold(conf, correct, weight, target)
    group_thr: dict[int, float] = {}
    for g in np.unique(group_of_class):
        mask = np.isin(pred, np.flatnonzero(group_of_class == g))
        group_thr[int(g)] = (
            precision_threshold(conf[mask], correct[mask], weight[mask], target)
            if (mask.sum() >= min_support)
            else np.nan
        )
    values = np.empty(n_classes)
    levels = []
    support = np.bincount(pred, minlength=n_classes)
    for k in range(n_classes):
        mask = pred == k
        g = int(group_of_class[k])
        if support[k] >= min_support:
            values[k] = precision_threshold(conf[mask], correct[mask], weight[mask], target)
            levels.append("class")
        elif not np.isnan(group_thr[g]):
            values[k] = group_thr[g]
            levels.append("group")
        else:
            values[k] = glob
            levels.append("global")
    return Thresholds(values=values, levels=levels, support=support)


@dataclass(frozen=True)
class AcceptRule:
    """Accept = confidence over the class threshold AND OOD margin at most ``ood_margin`` (class-agnostic)."""

    thresholds: Thresholds
    ood_margin: float  # added to the OOD gate's threshold: the stricter limit an accepted region must meet
    internal_target: float  # the precision the class thresholds were fitted at
    gate_keep: float  # share of gated known images the accept limit keeps
    table: list[dict[str, float]]  # every (internal_target, gate_keep) tried, with its cross-fitted figures
    crossfit_precision: float
    crossfit_precision_lower: float  # the one-sided lower confidence bound the choice was made on
    crossfit_known_accepted: float
    confidence: float
    met: bool = True  # False: no rule reached the target at the bound, so nothing is auto-accepted


def fit_accept_rule(
    pred: np.ndarray,
    conf: np.ndarray,
    correct: np.ndarray,
    margin: np.ndarray,
    weight: np.ndarray,
    unit: np.ndarray,
    is_unknown: np.ndarray,
    group_of_class: np.ndarray,
    target: float,
    min_support: int = 10,
    repeats: int = 3,
    seed: int = 0,
    confidence: float = 0.95,
) -> AcceptRule:
    """Fit the accept rule so that accepted precision, new products included, reaches ``target`` on rows it
    never saw.

    Rows are held-out catalogue images (``is_unknown`` False) and images of simulated new products (True),
    all of which passed the OOD gate; ``margin`` is each row's OOD score minus the gate threshold of its own
    simulation, ``weight`` sets the new products' share of the stream.

    Per-class thresholds only see which known SKUs get confused with which: fitted on new-product images too,
    a class threshold learns to stop the look-alikes that happened to be held out and nothing else (on the
    grocery catalogue, thresholds fitted that way reached 1.00 precision on their own rows and 0.91 on the
    other half at any internal target). A new product can look like any SKU, so it is stopped by one limit
    for all classes, on the OOD margin. Both knobs (the internal precision of the class thresholds and the
    share of known images the margin limit keeps) are chosen by cross-fitting: rows are split by ``unit``
    (one look-alike cluster of a SKU, or one simulated new product) into halves, fitted on one and measured
    on the other; the pair that auto-accepts the most known images at ``target`` wins, else the most precise.

    "At ``target``" means the one-sided ``confidence`` lower bound (Wilson) of the cross-fitted precision, not
    the estimate itself: catalogue photos flatter the head, and on grocery store photos the build's point
    estimate (0.988-0.994) fell to 0.971 on an independent check. The bound counts the accepted rows by their
    effective number (new products weigh less than one row each) and once per repeat, since every row is
    measured once in each repeat. ``confidence`` 0 chooses on the point estimate. When no rule reaches the target,
    the rule auto-accepts nothing (``met`` False): the figures of the best candidate are still reported.
    """
    slack = 1.0 - target
    # The class thresholds' own target: at or above the promise, since a threshold fitted at exactly the target
    # lands under it on unseen rows (the cross-fit measures by how much).
    internals = [1.0 - slack * f for f in (1.0, 0.5, 0.25, 0.1)]
    keeps = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1)
    units = np.unique(unit)
    rng = np.random.default_rng(seed)
    splits = []
    for _ in range(repeats):
        half = np.isin(unit, rng.permutation(units)[: len(units) // 2])
        splits += [(half, ~half), (~half, half)]

    def fit(rows: np.ndarray, internal: float, keep: float, support: int) -> tuple[Thresholds, float]:
        known = rows & ~is_unknown
        thr = accept_thresholds(
            pred[known], conf[known], correct[known], weight[known], group_of_class, internal, support
        )
        limit = float(np.quantile(margin[known], keep, method="higher")) if known.any() else 0.0
        return thr, limit

    table, best = [], None
    for internal in internals:
        for keep in keeps:
            tp = fp = accepted = known_rows = sum_w = sum_w2 = 0.0
            for fit_rows, test_rows in splits:
                thr, limit = fit(fit_rows, internal, keep, max(2, min_support // 2))
                acc = test_rows & (conf >= thr.values[pred]) & (margin <= limit)
                tp += float((weight * (acc & correct)).sum())
                fp += float((weight * (acc & ~correct)).sum())
                sum_w += float(weight[acc].sum())
                sum_w2 += float((weight[acc] ** 2).sum())
                accepted += float((acc & ~is_unknown).sum())
                known_rows += float((test_rows & ~is_unknown).sum())
            precision = tp / (tp + fp) if tp + fp else 1.0
            n_eff = sum_w * sum_w / sum_w2 / repeats if sum_w2 else 0.0
            lower = wilson_lower(precision, n_eff, confidence)
            row = {
                "internal_target": round(internal, 5),
                "gate_keep": keep,
                "crossfit_precision": round(precision, 4),
                "crossfit_precision_lower": round(lower, 4),
                "crossfit_known_accepted": round(accepted / max(1.0, known_rows), 4),
            }
            table.append(row)
            meets = row["crossfit_precision_lower"] >= target
            key = (meets, row["crossfit_known_accepted"] if meets else row["crossfit_precision_lower"])
            if best is None or key > best[0]:
                best = (key, row)
    assert best is not None
    met, chosen = best[0][0], best[1]
    thr, limit = fit(np.ones(len(pred), dtype=bool), chosen["internal_target"], chosen["gate_keep"], min_support)
    if not met:
        # No rule keeps the promise on rows it never saw: nothing is auto-accepted (everything confident goes to
        # verify) rather than accepting at a precision the profile did not ask for. The report says so.
        thr = Thresholds(values=np.full(len(thr.values), NEVER), levels=thr.levels, support=thr.support)
    return AcceptRule(
        thresholds=thr,
        ood_margin=limit,
        internal_target=chosen["internal_target"],
        gate_keep=chosen["gate_keep"],
        table=table,
        crossfit_precision=chosen["crossfit_precision"],
        crossfit_precision_lower=chosen["crossfit_precision_lower"],
        crossfit_known_accepted=chosen["crossfit_known_accepted"] if met else 0.0,
        confidence=confidence,
        met=met,
    )
