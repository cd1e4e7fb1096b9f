"""A shrinkage LDA projection learned from the catalogue on frozen embeddings.

The backbone is ImageNet-trained and never retrained; LDA re-weights its 1280
dimensions towards what separates *these* SKUs (whitening the within-class
scatter, keeping the between-class directions). Shrinkage towards a scaled
identity keeps it stable when classes have few images. Applying it is one
matrix product per region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_runtime.head.prototypes import l2_normalise


@dataclass(frozen=True)
class Projection:
    mean: np.ndarray  # [D] float32, subtracted after L2 normalisation
    matrix: np.ndarray  # [D, d] float32

    @property
    def nbytes(self) -> int:
        return int(self.mean.nbytes + self.matrix.nbytes)

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """Raw backbone embeddings -> L2-normalised projected features."""
        return l2_normalise((l2_normalise(embeddings) - self.mean) @ self.matrix)

    @classmethod
    def identity(cls, dim: int) -> Projection:
        return cls(np.zeros(dim, np.float32), np.eye(dim, dtype=np.float32))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"proj_mean": self.mean, "proj_matrix": self.matrix}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Projection:
        return cls(arrays["proj_mean"].astype(np.float32), arrays["proj_matrix"].astype(np.float32))


def fit_lda(embeddings: np.ndarray, labels: np.ndarray, shrinkage: float, max_dim: int | None = None) -> Projection:
    """Shrinkage LDA on L2-normalised embeddings; keeps at most ``n_classes - 1`` directions.

    With fewer images than dimensions the problem is solved in the span of the centred data, which is
    exact: outside that span the shrunk within-class scatter is a multiple of the identity and the
    between-class scatter is zero, so no discriminant direction lives there.
    """
    x = l2_normalise(embeddings).astype(np.float64)
    classes = np.unique(labels)
    dim = x.shape[1]
    mean = x.mean(axis=0)
    centred_x = x - mean
    basis = None
    if len(x) < dim:
        _, sing, vt = np.linalg.svd(centred_x, full_matrices=False)
        basis = vt[sing > sing[0] * 1e-9]  # [r, D], orthonormal rows
        centred_x = centred_x @ basis.T
    n_cls = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=n_cls).astype(np.float64)
    means = np.zeros((n_cls, centred_x.shape[1]))
    np.add.at(means, labels, centred_x)
    means[counts > 0] /= counts[counts > 0, None]
    within = centred_x - means[labels]
    sw = within.T @ within / len(x)
    # The shrinkage target is scaled by the trace over all D dimensions, as in the full problem.
    sw = (1.0 - shrinkage) * sw + shrinkage * (np.trace(sw) / dim) * np.eye(sw.shape[0])
    class_means = means[classes]
    sb = class_means.T @ (class_means * counts[classes, None]) / len(x)
    evals, evecs = np.linalg.eigh(sw)
    whiten = evecs / np.sqrt(np.maximum(evals, 1e-12))
    bevals, bevecs = np.linalg.eigh(whiten.T @ sb @ whiten)
    order = np.argsort(bevals)[::-1]
    keep = min(len(classes) - 1, sw.shape[0], max_dim or dim)
    matrix = whiten @ bevecs[:, order[: max(1, keep)]]
    if basis is not None:
        matrix = basis.T @ matrix
    return Projection(mean.astype(np.float32), matrix.astype(np.float32))
