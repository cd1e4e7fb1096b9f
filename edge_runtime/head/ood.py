"""Out-of-distribution scores: how strange a region looks to the catalogue. Higher is stranger.

Several scores are implemented because which one separates new products best
depends on the catalogue; edge-build picks one by simulating new products
(holding out whole SKUs) and stores it with its threshold in the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_runtime.head.prototypes import class_sums

METHODS = ("msp", "energy", "max_cosine", "knn", "mahalanobis")
KNN_K = 5
_KNN_BLOCK = 8192


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return np.asarray((m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0])


@dataclass(frozen=True)
class OodModel:
    """One fitted method; ``arrays`` holds what it needs at run time (empty for the score-only methods)."""

    method: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))

    def score(self, feats: np.ndarray, cos: np.ndarray, temperature: float) -> np.ndarray:
        """``feats``: projected, L2-normalised features [N,d]; ``cos``: cosine to every SKU prototype [N,K]."""
        if self.method == "msp":
            logits = cos / temperature
            return np.asarray(1.0 - np.exp(logits.max(axis=1) - _logsumexp(logits)))
        if self.method == "energy":
            return -temperature * _logsumexp(cos / temperature)
        if self.method == "max_cosine":
            return np.asarray(1.0 - cos.max(axis=1))
        if self.method == "knn":
            return _knn_score(feats, self.arrays["ood_bank"])
        if self.method == "mahalanobis":
            return _mahalanobis_score(feats, self.arrays["ood_precision"], self.arrays["ood_means"])
        raise ValueError(f"unknown OOD method {self.method!r}")

    def to_arrays(self) -> dict[str, np.ndarray]:
        return dict(self.arrays)

    @classmethod
    def from_arrays(cls, method: str, arrays: dict[str, np.ndarray]) -> OodModel:
        if method not in METHODS:
            raise ValueError(f"unknown OOD method {method!r}")
        needed = {"knn": ("ood_bank",), "mahalanobis": ("ood_precision", "ood_means")}.get(method, ())
        missing = [k for k in needed if k not in arrays]
        if missing:
            raise ValueError(f"OOD method {method} needs arrays {missing}")
        return cls(method, {k: arrays[k] for k in needed})


def _knn_score(feats: np.ndarray, bank: np.ndarray) -> np.ndarray:
    k = min(KNN_K, len(bank))
    best = np.full((len(feats), k), -np.inf, dtype=np.float32)
    for start in range(0, len(bank), _KNN_BLOCK):
        sims = feats @ bank[start : start + _KNN_BLOCK].astype(np.float32).T
        both = np.concatenate([best, sims], axis=1)
        best = -np.partition(-both, k - 1, axis=1)[:, :k]
    return np.asarray(1.0 - best.min(axis=1))


def _mahalanobis_score(feats: np.ndarray, precision: np.ndarray, means: np.ndarray) -> np.ndarray:
    pm = means @ precision  # [K, d]
    # Products first, then row-wise dots: a three-operand einsum here ran as one unblocked loop and took 146 s of
    # a 1,000-SKU head fit.
    quad_x = np.einsum("nd,nd->n", feats @ precision, feats)
    quad_m = np.einsum("kd,kd->k", pm, means)
    d2 = quad_x[:, None] - 2.0 * feats @ pm.T + quad_m[None, :]
    return np.asarray(np.maximum(d2.min(axis=1), 0.0))


def fit_ood(method: str, feats: np.ndarray, labels: np.ndarray, n_classes: int, shrinkage: float = 0.2) -> OodModel:
    """Fit ``method`` on projected, normalised catalogue features."""
    if method in ("msp", "energy", "max_cosine"):
        return OodModel(method)
    if method == "knn":
        return OodModel(method, {"ood_bank": feats.astype(np.float16)})
    if method == "mahalanobis":
        dim = feats.shape[1]
        means = class_sums(feats, labels, n_classes)
        counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
        means /= np.maximum(counts, 1)[:, None]
        resid = feats - means[labels]
        cov = resid.T @ resid / max(1, len(feats) - n_classes)
        cov = (1.0 - shrinkage) * cov + shrinkage * (np.trace(cov) / dim) * np.eye(dim)
        precision = np.linalg.inv(cov)
        return OodModel(method, {"ood_precision": precision.astype(np.float32), "ood_means": means.astype(np.float32)})
    raise ValueError(f"unknown OOD method {method!r}")


def extra_bytes(method: str, n_images: int, n_classes: int, dim: int) -> int:
    """Memory a method adds at run time, known before fitting it (for the budget check)."""
    if method == "knn":
        return n_images * dim * 2
    if method == "mahalanobis":
        return (dim * dim + n_classes * dim) * 4
    return 0


def detection_at_keep(known: np.ndarray, unknown: np.ndarray, keep: float) -> tuple[float, float]:
    """Share of unknown scores above the threshold that keeps ``keep`` of known scores; and that threshold."""
    threshold = float(np.quantile(known, keep, method="higher"))  # a real score: keeps >= keep
    return float((unknown > threshold).mean()) if len(unknown) else float("nan"), threshold


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Probability that an unknown scores higher than a known (ties count half)."""
    if len(known) == 0 or len(unknown) == 0:
        return float("nan")
    both = np.concatenate([known, unknown])
    ranks = np.empty(len(both))
    order = np.argsort(both, kind="mergesort")
    ranks[order] = np.arange(1, len(both) + 1)
    # average ranks over ties
    _, inv, counts = np.unique(both, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    r_unknown = ranks[len(known) :].sum()
    return float((r_unknown - len(unknown) * (len(unknown) + 1) / 2) / (len(known) * len(unknown)))
