"""Grouping look-alike unknowns: each crop is embedded with the bundle's own model, and joins the open group whose
centroid is nearest when the cosine reaches the threshold, else starts a group of its own.

The embedding is what the device computes for a region: the same ``preprocess.prepare`` on the same pixels, and
the bundle's model and embedding output on the first backend of its profile that runs here (``run.startup``).
Crops of one new product are near each other in that space (the head's OOD gate flagged them because they are
far from every known SKU, not from each other). ``benchmarks/review_grouping.py`` measures how many groups a new
product splits into and how pure they are, at several thresholds.

A group is *open* while any member is pending: a product labelled as new does not pull next week's crops into a
closed group; they form a new one, which the reviewer labels in one step again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edge_runtime.backends import Backend
from edge_runtime.bundle import Bundle, load_bundle
from edge_runtime.head.model import Head, load_head
from edge_runtime.preprocess import prepare
from edge_runtime.review import schema as t
from edge_runtime.run.startup import bundle_profile, manifest_image_input, open_backend

__all__ = ["DEFAULT_GROUP_THRESHOLD", "Embedder", "assign_group", "open_groups"]

log = logging.getLogger(__name__)

# Chosen with benchmarks/review_grouping.py on grocery SKUs left out of a bundle (RESULTS.md, "edge-review").
DEFAULT_GROUP_THRESHOLD = 0.8


class Embedder:
    """The bundle's model and head, opened once: ``embed(jpeg)`` is a unit-length float32 vector."""

    def __init__(self, bundle_dir: Path) -> None:
        self.bundle: Bundle = load_bundle(Path(bundle_dir))
        self.profile = bundle_profile(self.bundle)
        image_input = manifest_image_input(self.bundle.manifest)
        self.input_size = image_input[1] if image_input else 224
        self.head: Head = load_head(self.bundle)
        self._backend: Backend = open_backend(self.bundle, self.profile)

    def embed_images(self, images_bgr: list[np.ndarray]) -> np.ndarray:
        """Unit-length embeddings [N, D] of BGR images, prepared exactly as edge-run prepares a region."""
        batch = np.stack([prepare(img, self.input_size) for img in images_bgr])
        vectors = np.asarray(self._backend.embed(batch), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def embed(self, jpeg: bytes) -> np.ndarray | None:
        """The embedding of one JPEG crop; None when it does not decode."""
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None or image.size == 0:
            return None
        return self.embed_images([image])[0]

    def close(self) -> None:
        self._backend.close()


def open_groups(conn: Connection) -> tuple[list[int], np.ndarray, list[int]]:
    """(ids, centroids [G, D], sizes) of the groups with a pending member."""
    pending = sa.exists().where((t.events.c.group_id == t.groups.c.id) & t.events.c.label.is_(None))
    rows = conn.execute(sa.select(t.groups.c.id, t.groups.c.centroid, t.groups.c.size).where(pending)).all()
    if not rows:
        return [], np.zeros((0, 0), np.float32), []
    return (
        [int(r.id) for r in rows],
        np.stack([np.frombuffer(r.centroid, np.float32) for r in rows]),
        [int(r.size) for r in rows],
    )


def assign_group(conn: Connection, embedding: np.ndarray, threshold: float, now: float) -> int:
    """The group ``embedding`` joins (its centroid moved) or starts, inside the caller's transaction."""
    vec = np.asarray(embedding, np.float32)
    ids, centroids, sizes = open_groups(conn)
    if ids and centroids.shape[1] == vec.shape[0]:
        cos = centroids @ vec / np.maximum(np.linalg.norm(centroids, axis=1), 1e-12)
        best = int(np.argmax(cos))
        if float(cos[best]) >= threshold:
            # The centroid is the mean of its members' unit vectors: stable as the group grows, and order-free.
            n = sizes[best]
            moved = (centroids[best] * n + vec) / (n + 1)
            conn.execute(
                sa.update(t.groups)
                .where(t.groups.c.id == ids[best])
                .values(centroid=moved.astype(np.float32).tobytes(), size=n + 1)
            )
            return ids[best]
    result = conn.execute(sa.insert(t.groups).values(created=now, centroid=vec.tobytes(), size=1))
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])
