"""Prototype tables: one L2-normalised row per SKU, stored at fp32, fp16 or int8 with per-row scales."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_runtime.types import Precision

# Rows converted to float32 per block when scoring an int8/fp16 table: small enough for the block to stay in the
# CPU cache between the conversion and the product (4096-row blocks ran 1.7x slower at 10k SKUs), and to bound the
# temporary at 100k SKUs; large enough to keep BLAS calls few.
_BLOCK_ROWS = 256


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.asarray(x / np.maximum(norms, 1e-12))


def class_sums(x: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """[n_classes, D] float64 sums of the rows of ``x`` per label (zero rows for absent labels).

    One slice sum per class over a stable sort: ``np.add.at`` on rows took 1.5 s per call for 30k rows of a
    1,936-d catalogue (71 s of a 1,000-SKU head fit); this takes a few tens of milliseconds.
    """
    sums = np.zeros((n_classes, x.shape[1]), dtype=np.float64)
    if len(labels) == 0:
        return sums
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    for start, stop in zip(starts, [*starts[1:], len(order)], strict=True):
        sums[ordered[start]] = x[order[start:stop]].sum(axis=0, dtype=np.float64)
    return sums


def class_centroids(embeddings: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean of the normalised embeddings per class, normalised again (cosine nearest-centroid)."""
    sums = class_sums(l2_normalise(embeddings), labels, n_classes)
    counts = np.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"classes without embeddings: {missing[:10]}")
    return l2_normalise((sums / counts[:, None]).astype(np.float32))


@dataclass(frozen=True)
class PrototypeTable:
    """Rows in storage precision; ``scales`` is only used for int8."""

    rows: np.ndarray  # [K, D] float32 | float16 | int8
    scales: np.ndarray  # [K] float32 (ones unless int8)
    precision: Precision

    @classmethod
    def from_float(cls, rows: np.ndarray, precision: Precision) -> PrototypeTable:
        rows = np.asarray(rows, dtype=np.float32)
        if precision == "fp32":
            return cls(rows.copy(), np.ones(len(rows), np.float32), "fp32")
        if precision == "fp16":
            return cls(rows.astype(np.float16), np.ones(len(rows), np.float32), "fp16")
        scales = np.maximum(np.abs(rows).max(axis=1), 1e-12) / 127.0
        q = np.clip(np.rint(rows / scales[:, None]), -127, 127).astype(np.int8)
        return cls(q, scales.astype(np.float32), "int8")

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + (self.scales.nbytes if self.precision == "int8" else 0))

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def dequantised(self) -> np.ndarray:
        return np.asarray(self.rows.astype(np.float32) * self.scales[:, None])

    def dequantised_rows(self, index: np.ndarray) -> np.ndarray:
        """``dequantised()[index]`` without converting the rest of the table (group-first search needs a few)."""
        if self.precision == "int8":
            # One pass from int8 to scaled float32; the same values as converting, then scaling.
            return np.asarray(np.multiply(self.rows[index], self.scales[index, None], dtype=np.float32))
        return np.asarray(self.rows[index].astype(np.float32, copy=False))  # the gather already copied

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """Cosine similarity of L2-normalised queries [N, D] to every row: [N, K] float32."""
        q = np.asarray(queries, dtype=np.float32)
        if self.precision == "fp32":
            return np.asarray(q @ self.rows.T)
        out = np.empty((q.shape[0], len(self)), dtype=np.float32)
        block = np.empty((min(_BLOCK_ROWS, len(self)), self.rows.shape[1]), dtype=np.float32)  # reused
        for start in range(0, len(self), _BLOCK_ROWS):
            part = self.rows[start : start + _BLOCK_ROWS]
            converted = block[: len(part)]
            np.copyto(converted, part)
            np.matmul(q, converted.T, out=out[:, start : start + len(part)])
        if self.precision == "int8":
            out *= self.scales[None, :]
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"rows": self.rows, "scales": self.scales, "precision": np.array(self.precision)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> PrototypeTable:
        precision = str(arrays["precision"])
        expected = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}
        if precision not in expected or arrays["rows"].dtype != expected[precision]:
            raise ValueError(f"prototype table precision {precision!r} does not match dtype {arrays['rows'].dtype}")
        if arrays["rows"].ndim != 2 or arrays["scales"].shape != (arrays["rows"].shape[0],):
            raise ValueError("prototype table rows and scales have inconsistent shapes")
        return cls(arrays["rows"], arrays["scales"].astype(np.float32), precision)  # type: ignore[arg-type]


def nearest(table: PrototypeTable, embeddings: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Top-k row indices and cosine scores for each embedding, best first."""
    sims = table.scores(l2_normalise(embeddings))
    k = min(k, sims.shape[1])
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-part_scores, axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)
