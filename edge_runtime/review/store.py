"""The review store: events in, once each; crops on disk under a quota; the queue the page shows; counters.

Labels and undo live in ``labels``; grouping in ``grouping``. Every write is one transaction, so a collector
that dies between two messages leaves either the whole event (its row, its crop file, its group) or nothing,
and the broker redelivers what was not acknowledged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from edge_runtime.review import schema as t
from edge_runtime.review.crops import CropFiles, DiskFull
from edge_runtime.review.grouping import assign_group
from edge_runtime.review.intake import IncomingEvent
from edge_runtime.types import SkuInfo

__all__ = ["EventView", "QueueItem", "ReviewStore"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventView:
    """One stored event as the page and export see it."""

    id: str
    kind: str
    device_id: str
    ts: str
    device_time: float
    received: float
    source_ref: str
    sku: str | None
    score: float | None
    ood_score: float
    nearest: list[tuple[str, float]]
    crop_sha: str | None
    group_id: int | None
    label: str | None
    label_sku: str | None
    labelled_by: str | None
    labelled_at: float | None


@dataclass
class QueueItem:
    """A group of look-alike pending events (two or more), or a single one."""

    group_id: int | None
    events: list[EventView] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"g{self.group_id}" if self.group_id is not None else f"e{self.events[0].id}"

    @property
    def newest(self) -> float:
        return max(e.received for e in self.events)

    def candidates(self) -> list[tuple[str, float]]:
        """The devices' candidates over every member: mean probability per SKU, best first."""
        totals: dict[str, float] = {}
        for e in self.events:
            for sku, p in e.nearest:
                totals[sku] = totals.get(sku, 0.0) + p
        return sorted(((s, v / len(self.events)) for s, v in totals.items()), key=lambda x: -x[1])


def _view(row: Any) -> EventView:
    return EventView(
        id=row.id,
        kind=row.kind,
        device_id=row.device_id,
        ts=row.ts,
        device_time=row.device_time,
        received=row.received,
        source_ref=row.source_ref,
        sku=row.sku,
        score=row.score,
        ood_score=row.ood_score,
        nearest=[(str(a), float(b)) for a, b in json.loads(row.nearest)],
        crop_sha=row.crop_sha,
        group_id=row.group_id,
        label=row.label,
        label_sku=row.label_sku,
        labelled_by=row.labelled_by,
        labelled_at=row.labelled_at,
    )


class ReviewStore:
    """The database (``schema.open_engine``) plus the crop folder under ``data_dir``.

    ``quota_bytes`` caps the crop files: past it, the oldest reviewed crops are deleted first (counted as
    ``evicted_reviewed``); when only pending crops are left, a new crop is not kept (``quota_full``) and its event
    is stored without it. ``group_threshold`` is the cosine at which an unknown joins a group (``grouping``).
    """

    def __init__(
        self,
        engine: Engine,
        data_dir: Path,
        *,
        quota_bytes: int | None = None,
        group_threshold: float = 0.8,
        clock: Any = time.time,
    ) -> None:
        self.engine = engine
        self.crops = CropFiles(data_dir)
        self.quota_bytes = quota_bytes
        self.group_threshold = group_threshold
        self._clock = clock

    # ------------------------------------------------------------------ SKUs

    def set_bundle_skus(self, skus: Iterable[SkuInfo]) -> None:
        """Make the bundle's SKUs labelable (insert the missing, refresh names and groups of the rest)."""
        with self.engine.begin() as conn:
            known = {r.code for r in conn.execute(sa.select(t.skus.c.code))}
            for s in skus:
                values = {"name": s.name, "group_name": s.group}
                if s.code in known:
                    conn.execute(sa.update(t.skus).where(t.skus.c.code == s.code).values(**values))
                else:
                    conn.execute(sa.insert(t.skus).values(code=s.code, added=False, **values))

    def all_skus(self) -> list[tuple[str, str, str, bool]]:
        """(code, name, group, added by a reviewer) of every SKU a label may name."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.skus).order_by(t.skus.c.code)).all()
        return [(r.code, r.name, r.group_name, bool(r.added)) for r in rows]

    # ------------------------------------------------------------------ intake

    def has(self, event_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(t.events.c.id).where(t.events.c.id == event_id)).first() is not None

    def add_event(self, ev: IncomingEvent, embedding: np.ndarray | None) -> bool:
        """Store ``ev`` once: True when stored now, False when it was already there (a redelivery)."""
        if self.has(ev.id):
            return False
        now = float(self._clock())
        crop_sha = self._keep_crop(ev.jpeg) if ev.jpeg is not None else None
        try:
            with self.engine.begin() as conn:
                group_id = None
                if embedding is not None:
                    group_id = assign_group(conn, embedding, self.group_threshold, now)
                conn.execute(
                    sa.insert(t.events).values(
                        id=ev.id,
                        kind=ev.kind,
                        device_id=ev.device_id,
                        frame_id=ev.frame_id,
                        source_ref=ev.source_ref,
                        ts=ev.ts,
                        device_time=ev.device_time,
                        received=now,
                        box=json.dumps(ev.box),
                        sku=ev.sku,
                        score=ev.score,
                        ood_score=ev.ood_score,
                        nearest=json.dumps(ev.nearest),
                        crop_sha=crop_sha,
                        embedding=embedding.astype(np.float32).tobytes() if embedding is not None else None,
                        group_id=group_id,
                    )
                )
        except IntegrityError:
            return False  # another collector stored it between our check and our insert
        return True

    def _keep_crop(self, jpeg: bytes) -> str | None:
        sha = self.crops.digest(jpeg)
        with self.engine.begin() as conn:
            if conn.execute(sa.select(t.crops.c.sha).where(t.crops.c.sha == sha)).first():
                return sha
            if self.quota_bytes is not None and not self._make_room(conn, len(jpeg)):
                self._count(conn, "quota_full")
                log.warning("crop quota of %d bytes is full of pending crops: event stored without its crop",
                            self.quota_bytes)  # fmt: skip
                return None
        try:
            self.crops.write(jpeg)
        except DiskFull as exc:
            with self.engine.begin() as conn:
                self._count(conn, "disk_full")
            log.error("%s: event stored without its crop (fix: free space or lower --quota-mib)", exc)
            return None
        try:
            with self.engine.begin() as conn:
                if not conn.execute(sa.select(t.crops.c.sha).where(t.crops.c.sha == sha)).first():
                    conn.execute(sa.insert(t.crops).values(sha=sha, bytes=len(jpeg), created=float(self._clock())))
        except IntegrityError:
            pass  # another collector recorded the same crop (same bytes, same file) first
        return sha

    def _make_room(self, conn: Connection, size: int) -> bool:
        """Delete the oldest reviewed crops until ``size`` more bytes fit the quota; False when they cannot."""
        assert self.quota_bytes is not None
        used = int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(t.crops.c.bytes), 0))).scalar_one())
        if used + size <= self.quota_bytes:
            return True
        reviewed = (
            sa.select(t.crops.c.sha, t.crops.c.bytes)
            .where(~sa.exists().where((t.events.c.crop_sha == t.crops.c.sha) & t.events.c.label.is_(None)))
            .order_by(t.crops.c.created)
        )
        for sha, nbytes in conn.execute(reviewed).all():
            conn.execute(sa.update(t.events).where(t.events.c.crop_sha == sha).values(crop_sha=None))
            conn.execute(sa.delete(t.crops).where(t.crops.c.sha == sha))
            self.crops.remove(sha)
            self._count(conn, "evicted_reviewed")
            used -= nbytes
            if used + size <= self.quota_bytes:
                return True
        return False

    # ------------------------------------------------------------------ counters

    @staticmethod
    def _count(conn: Connection, name: str, n: int = 1) -> None:
        updated = conn.execute(
            sa.update(t.counters).where(t.counters.c.name == name).values(value=t.counters.c.value + n)
        )
        if updated.rowcount == 0:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(t.counters).values(name=name, value=n))
            except IntegrityError:  # another collector inserted it first
                conn.execute(
                    sa.update(t.counters).where(t.counters.c.name == name).values(value=t.counters.c.value + n)
                )

    def count(self, name: str, n: int = 1) -> None:
        with self.engine.begin() as conn:
            self._count(conn, name, n)

    def counters(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {r.name: int(r.value) for r in conn.execute(sa.select(t.counters))}

    # ------------------------------------------------------------------ reading

    def events(self, ids: Iterable[str]) -> list[EventView]:
        wanted = list(ids)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.events).where(t.events.c.id.in_(wanted))).all() if wanted else []
        return [_view(r) for r in rows]

    def labelled(self) -> list[EventView]:
        """Every event with a product label (confirm, other, new), oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.events)
                .where(t.events.c.label.in_(["confirm", "other", "new"]))
                .order_by(t.events.c.labelled_at, t.events.c.id)
            ).all()
        return [_view(r) for r in rows]

    def pending_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(t.events.c.label.is_(None))).scalar_one())

    def queue(
        self,
        *,
        device: str | None = None,
        route: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        scan: int = 5000,
    ) -> list[QueueItem]:
        """Pending work, newest first (skipped items last): groups of two or more look-alikes, and single events.

        ``device``, ``route`` (unknown/verify) and the device-time window filter the events; ``scan`` caps how
        many pending events one page load reads.
        """
        q = sa.select(t.events).where(t.events.c.label.is_(None))
        if device:
            q = q.where(t.events.c.device_id == device)
        if route:
            q = q.where(t.events.c.kind == route)
        if since is not None:
            q = q.where(t.events.c.device_time >= since)
        if until is not None:
            q = q.where(t.events.c.device_time <= until)
        skipped_last = sa.case((t.events.c.skipped_at.is_(None), 0), else_=1)
        q = q.order_by(skipped_last, t.events.c.received.desc(), t.events.c.id).limit(scan)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        items: dict[str, QueueItem] = {}
        for row in rows:
            view = _view(row)
            key = f"g{view.group_id}" if view.group_id is not None else f"e{view.id}"
            items.setdefault(key, QueueItem(group_id=view.group_id)).events.append(view)
        out: list[QueueItem] = []
        for item in items.values():
            if item.group_id is not None and len(item.events) == 1:
                item.group_id = None  # a group of one is shown as the single event it is
            out.append(item)
        return out[:limit]

    def devices(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(t.events.c.device_id).distinct().order_by("device_id"))]

    def stats(self) -> dict[str, Any]:
        """Events stored, pending, labelled by kind, groups, per-device unknown rate, counters."""
        e = t.events
        with self.engine.connect() as conn:
            total = int(conn.execute(sa.select(sa.func.count()).select_from(e)).scalar_one())
            pending = int(conn.execute(sa.select(sa.func.count()).where(e.c.label.is_(None))).scalar_one())
            by_label = {
                str(k): int(v)
                for k, v in conn.execute(
                    sa.select(e.c.label, sa.func.count()).where(e.c.label.is_not(None)).group_by(e.c.label)
                )
            }
            group_sizes = conn.execute(
                sa.select(e.c.group_id, sa.func.count()).where(e.c.group_id.is_not(None)).group_by(e.c.group_id)
            ).all()
            per_device = conn.execute(
                sa.select(
                    e.c.device_id,
                    sa.func.count(),
                    sa.func.sum(sa.case((e.c.kind == "unknown", 1), else_=0)),
                    sa.func.min(e.c.device_time),
                    sa.func.max(e.c.device_time),
                ).group_by(e.c.device_id)
            ).all()
            added = int(conn.execute(sa.select(sa.func.count()).where(t.skus.c.added.is_(True))).scalar_one())
        devices = {}
        for device, n, unknown, first, last in per_device:
            hours = max((float(last) - float(first)) / 3600.0, 1.0 / 60.0)  # at least a minute
            devices[device] = {
                "events": int(n),
                "unknown": int(unknown or 0),
                "unknown_share": round(float(unknown or 0) / int(n), 4),
                "unknown_per_hour": round(float(unknown or 0) / hours, 2),
            }
        return {
            "events": total,
            "pending": pending,
            "labelled": by_label,
            "groups": sum(1 for _, n in group_sizes if n >= 2),
            "grouped_events": sum(int(n) for _, n in group_sizes if n >= 2),
            "new_skus": added,
            "devices": devices,
            "counters": self.counters(),
        }
