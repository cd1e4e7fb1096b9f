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

from edge_runtime.head.prototypes import class_sums, l2_normalise


@dataclass(frozen=True)
class Projection:
    mean: np.ndarray  # [D] float32, subtracted after L2 normalisation
    # [D, d] float32. [D, 0] stands for no projection (the build chose "none"): applying it is then a
    # normalisation only. The D x D identity it replaces cost 0.5 ms per region at 1,936 dimensions, a third
    # of a 1,000-SKU head fit, and 15 MB in the bundle and in memory.
    matrix: np.ndarray

    @property
    def is_identity(self) -> bool:
        return bool(self.matrix.shape[1] == 0)

    @property
    def in_dim(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def out_dim(self) -> int:
        return self.in_dim if self.is_identity else int(self.matrix.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.mean.nbytes + self.matrix.nbytes)

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """Raw backbone embeddings -> L2-normalised projected features."""
        if self.is_identity:
            return l2_normalise(embeddings)
        return l2_normalise((l2_normalise(embeddings) - self.mean) @ self.matrix)

    @classmethod
    def identity(cls, dim: int) -> Projection:
        return cls(np.zeros(dim, np.float32), np.zeros((dim, 0), np.float32))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"proj_mean": self.mean, "proj_matrix": self.matrix}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Projection:
        mean, matrix = arrays["proj_mean"].astype(np.float32), arrays["proj_matrix"].astype(np.float32)
        if mean.ndim != 1 or matrix.ndim != 2 or matrix.shape[0] != mean.shape[0]:
            raise ValueError(f"projection arrays do not fit: mean {mean.shape}, matrix {matrix.shape}")
        # Bundles written before the [D, 0] marker store the identity itself.
        square = matrix.shape[0] == matrix.shape[1]
        if square and not mean.any() and np.array_equal(matrix, np.eye(len(mean), dtype=np.float32)):
            return cls.identity(len(mean))
        return cls(mean, matrix)


@dataclass(frozen=True)
class LdaScatter:
    """The shrinkage-independent part of an LDA fit: eigenvectors of the within-class scatter and the
    weighted class means. Shrinking towards a scaled identity keeps the eigenvectors and shifts the
    eigenvalues, so one eigendecomposition serves every shrinkage tried in cross-validation.
    """

    mean: np.ndarray  # [D] mean of the L2-normalised embeddings
    basis: np.ndarray | None  # [r, D] data span when N < D, else None
    evals: np.ndarray  # [D'] within-class scatter eigenvalues
    evecs: np.ndarray  # [D', D']
    weighted_means: np.ndarray  # [K, D'] sqrt(n_k / N) * (class mean - mean)
    trace_scale: float  # trace(Sw) / D: the shrinkage target's scale, over all D dimensions
    n_classes: int

    @classmethod
    def fit(cls, embeddings: np.ndarray, labels: np.ndarray) -> LdaScatter:
        x = l2_normalise(embeddings).astype(np.float64)
        dim = x.shape[1]
        mean = x.mean(axis=0)
        centred_x = x - mean
        basis = None
        if len(x) < dim:
            _, sing, vt = np.linalg.svd(centred_x, full_matrices=False)
            basis = vt[sing > sing[0] * 1e-9]  # [r, D], orthonormal rows
            centred_x = centred_x @ basis.T
        classes = np.unique(labels)
        n_cls = int(labels.max()) + 1
        counts = np.bincount(labels, minlength=n_cls).astype(np.float64)
        means = class_sums(centred_x, labels, n_cls)
        means[counts > 0] /= counts[counts > 0, None]
        within = (centred_x - means[labels]).astype(np.float32)
        # float32 product (half the time of float64), accumulated scatter then kept in float64.
        sw = (within.T @ within).astype(np.float64) / len(x)
        evals, evecs = np.linalg.eigh(sw)
        weighted = means[classes] * np.sqrt(counts[classes] / len(x))[:, None]
        return cls(mean, basis, evals, evecs, weighted, float(np.trace(sw) / dim), len(classes))

    def projection(self, shrinkage: float, max_dim: int | None = None) -> Projection:
        shrunk = (1.0 - shrinkage) * self.evals + shrinkage * self.trace_scale
        whiten = self.evecs / np.sqrt(np.maximum(shrunk, 1e-12))
        # The between-class scatter is weighted_means.T @ weighted_means (rank < K): its whitened
        # eigenvectors are the right singular vectors of weighted_means @ whiten, a K x D' problem.
        _, _, vt = np.linalg.svd(self.weighted_means @ whiten, full_matrices=False)
        keep = min(self.n_classes - 1, len(self.evals), max_dim or len(self.mean), len(vt))
        matrix = whiten @ vt[: max(1, keep)].T
        if self.basis is not None:
            matrix = self.basis.T @ matrix
        return Projection(self.mean.astype(np.float32), matrix.astype(np.float32))


def fit_lda(embeddings: np.ndarray, labels: np.ndarray, shrinkage: float, max_dim: int | None = None) -> Projection:
    """Shrinkage LDA on L2-normalised embeddings; keeps at most ``n_classes - 1`` directions.

    With fewer images than dimensions the problem is solved in the span of the centred data, which is
    exact: outside that span the shrunk within-class scatter is a multiple of the identity and the
    between-class scatter is zero, so no discriminant direction lives there.
    """
    return LdaScatter.fit(embeddings, labels).projection(shrinkage, max_dim)
