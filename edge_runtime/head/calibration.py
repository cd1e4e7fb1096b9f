"""Confidence calibration (temperature), calibration error, and per-class accept thresholds with back-off."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


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
