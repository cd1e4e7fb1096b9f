"""The outbox itself: a durable, byte-capped FIFO of outgoing MQTT messages in SQLite, shared by two threads.

Every outgoing MQTT message is stored here before it is published. A message leaves the outbox only when the
broker acknowledged it (``ack``), when the byte cap forces it out, or when it outlives the TTL. Either way the
drop is counted by reason and kind and logged, never silent (``policy``).

Durability: ``put`` returns True only after the row is fsynced (``synchronous=FULL``), so an acknowledged put
survives a power cut. Deletes (acks) are not fsynced on their own: losing one to a power cut resends a message
the broker already has, which consumers drop by id.

In flight: which messages await a PUBACK is held in memory only, never written: after a restart every stored
message is pending again and is resent (at-least-once), and marking costs no disk write (flash wear, latency).

Its own room because this is the one place the lock, the connection and the in-memory counters change
together; opening the file is ``database``'s job, deciding what to drop is ``policy``'s.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from edge_runtime.run.outbox.database import OUTBOX_FILENAME, is_disk_error, open_database
from edge_runtime.run.outbox.policy import (
    DROP_CLOSED,
    DROP_DB_ERROR,
    DROP_DISK_FULL,
    DROP_FULL,
    DROP_OVERSIZE,
    DROP_REJECTED,
    DROP_TTL,
    KINDS,
    RANK,
    DropBook,
    OutboxStats,
    choose_victims,
    message_size,
)
from edge_runtime.types import MessageKind, OutMessage

if TYPE_CHECKING:
    from edge_runtime.profile import DeviceProfile

logger = logging.getLogger(__name__)


class Outbox:
    """A durable, byte-capped FIFO of OutMessages in SQLite (WAL). Thread-safe.

    The pipeline thread calls ``put``; the publisher's threads call ``next_batch``, ``mark_inflight``,
    ``ack``, ``release`` and ``expire``. One connection guarded by one lock: SQLite serialises writers
    anyway, and a single connection keeps the in-memory counters exact.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
        *,
        max_file_bytes: int | None = None,
    ) -> None:
        """Open (or create) the outbox database at ``path``.

        ``max_file_bytes`` optionally caps the database file itself (SQLite ``max_page_count``); a write
        past it behaves exactly like a full disk. ``None`` leaves the file bounded by the byte cap only.
        """
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self._path = Path(path)
        self._max_bytes = int(max_bytes)
        self._ttl_s = float(ttl_s)
        self._clock = clock
        self._lock = threading.RLock()
        self._inflight: set[str] = set()
        # Acked, but the DELETE failed (disk full): hidden from next_batch, deleted on a later write.
        self._acked_unsaved: set[str] = set()
        self._drops = DropBook(self._path)
        self._write_failing = False
        self._write_failures = 0
        self._depth = 0
        self._bytes = 0
        self._closed = False
        self._conn = open_database(self._path, max_file_bytes)
        self._depth, self._bytes = self._conn.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM messages"
        ).fetchone()
        if self._depth:
            logger.info("outbox %s: %d messages (%d bytes) pending from before", self._path, self._depth, self._bytes)

    # ------------------------------------------------------------------ construction

    @classmethod
    def in_state_dir(
        cls, state_dir: Path, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.time
    ) -> Outbox:
        return cls(Path(state_dir) / OUTBOX_FILENAME, max_bytes, ttl_s, clock)

    @classmethod
    def from_profile(cls, profile: DeviceProfile, state_dir: Path, clock: Callable[[], float] = time.time) -> Outbox:
        """``state_dir/outbox.sqlite3`` with the profile's ``[outbox]`` cap (MiB) and TTL (hours)."""
        return cls.in_state_dir(
            state_dir,
            max_bytes=int(profile.outbox.max_mib * 1024 * 1024),
            ttl_s=profile.outbox.ttl_hours * 3600.0,
            clock=clock,
        )

    @property
    def path(self) -> Path:
        return self._path

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    # ------------------------------------------------------------------ writing

    def put(self, msg: OutMessage) -> bool:
        """Store ``msg`` durably; True once it is on disk (or already was: ids are unique).

        Over the byte cap, older messages of the same or lower rank are dropped first (crops, then
        heartbeats, then results; status never). False when the message itself is dropped: it cannot
        fit, the outbox is closed, or the disk is full. Never raises for a full disk.
        """
        if msg.kind not in RANK:
            raise ValueError(f"unknown message kind {msg.kind!r}; expected one of {', '.join(KINDS)}")
        size = message_size(msg)
        with self._lock:
            if self._closed:
                self._drops.count(DROP_CLOSED, msg.kind, f"{msg.id} arrived after close()")
                return False
            if size > self._max_bytes:
                self._drops.count(DROP_OVERSIZE, msg.kind, f"{msg.id} is {size} bytes, the cap is {self._max_bytes}")
                return False
            conn = self._conn
            victims: list[tuple[str, str, int]] = []
            try:
                self._delete_acked_unsaved()
                conn.execute("BEGIN IMMEDIATE")
                if conn.execute("SELECT 1 FROM messages WHERE id = ?", (msg.id,)).fetchone():
                    conn.execute("COMMIT")
                    return True
                need = self._bytes + size - self._max_bytes
                if need > 0:
                    found = choose_victims(need, RANK[msg.kind], self._oldest_of_kind, self._inflight)
                    if found is None:
                        conn.execute("ROLLBACK")
                        self._drops.count(DROP_FULL, msg.kind, f"no room for {msg.id} ({size} bytes)")
                        return False
                    victims = found
                    conn.executemany("DELETE FROM messages WHERE id = ?", [(v[0],) for v in victims])
                conn.execute(
                    "INSERT INTO messages (id, topic, payload, kind, created, retain, size)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (msg.id, msg.topic, msg.payload, msg.kind, float(msg.created), int(msg.retain), size),
                )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._write_failed(exc, msg.kind, msg.id)
                return False
            self._depth += 1 - len(victims)
            self._bytes += size - sum(v[2] for v in victims)
            for _, kind, _ in victims:
                self._drops.count(DROP_FULL, kind, f"evicted to make room for a {msg.kind}")
            self._write_ok()
            return True

    def _oldest_of_kind(self, kind: str) -> Iterable[tuple[str, int]]:
        # A cursor, iterated lazily: usually a few rows free enough and the rest is never read.
        return self._conn.execute("SELECT id, size FROM messages WHERE kind = ? ORDER BY seq", (kind,))

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            logger.debug("outbox: rollback failed", exc_info=True)

    def _write_failed(self, exc: sqlite3.Error, kind: str, msg_id: str) -> None:
        self._write_failures += 1
        if is_disk_error(exc):
            if not self._write_failing:
                self._write_failing = True
                logger.error(
                    "outbox %s: cannot write (%s); outgoing messages are dropped until it can. "
                    "Fix: free space in %s (the outbox itself is capped at %d bytes)",
                    self._path,
                    exc,
                    self._path.parent,
                    self._max_bytes,
                )
            self._drops.count(DROP_DISK_FULL, kind, "", log=False)
        else:
            self._drops.count(DROP_DB_ERROR, kind, f"{msg_id}: {exc}")

    def _write_ok(self) -> None:
        if self._write_failing:
            self._write_failing = False
            logger.warning("outbox %s: writes work again after %d failed writes", self._path, self._write_failures)
            self._write_failures = 0

    def _delete_acked_unsaved(self) -> None:
        if not self._acked_unsaved:
            return
        ids = list(self._acked_unsaved)
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            freed = self._delete_ids(ids)
            self._conn.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()
            raise
        self._acked_unsaved.difference_update(ids)
        self._depth -= len(freed)
        self._bytes -= sum(s for _, s in freed)

    def _delete_ids(self, ids: Iterable[str]) -> list[tuple[str, int]]:
        """Delete inside the caller's transaction; returns (kind, size) of the rows that existed."""
        # SELECT then DELETE rather than DELETE ... RETURNING: RETURNING needs SQLite >= 3.35, and
        # JetPack 5 (Ubuntu 20.04) ships 3.31.
        freed: list[tuple[str, int]] = []
        for msg_id in ids:
            row = self._conn.execute("SELECT kind, size FROM messages WHERE id = ?", (msg_id,)).fetchone()
            if row is not None:
                self._conn.execute("DELETE FROM messages WHERE id = ?", (msg_id,))
                freed.append((row[0], row[1]))
        return freed

    # ------------------------------------------------------------------ the publisher's side

    def next_batch(self, limit: int, kinds: Iterable[MessageKind] | None = None) -> list[OutMessage]:
        """Up to ``limit`` stored messages (of ``kinds`` only, when given), oldest first, that are not in flight."""
        if limit <= 0:
            return []
        with self._lock:
            if self._closed:
                return []
            skip = self._inflight | self._acked_unsaved
            wanted = tuple(kinds) if kinds is not None else KINDS
            marks = ",".join("?" * len(wanted))
            try:
                rows = self._conn.execute(
                    "SELECT id, topic, payload, kind, created, retain FROM messages "
                    f"WHERE kind IN ({marks}) ORDER BY seq LIMIT ?",
                    (*wanted, limit + len(skip)),
                ).fetchall()
            except sqlite3.Error as exc:
                self._drops.log("read_error", f"cannot read {self._path}: {exc}")
                return []
        out = [
            OutMessage(id=r[0], topic=r[1], payload=bytes(r[2]), kind=r[3], created=r[4], retain=bool(r[5]))
            for r in rows
            if r[0] not in skip
        ]
        return out[:limit]

    def mark_inflight(self, ids: Iterable[str]) -> None:
        """Hide ``ids`` from next_batch until ack() or release(): they await a PUBACK."""
        with self._lock:
            self._inflight.update(ids)

    def release(self, ids: Iterable[str]) -> None:
        """Make in-flight messages pending again (their publish failed before reaching the wire)."""
        with self._lock:
            self._inflight.difference_update(ids)

    def release_all(self) -> None:
        with self._lock:
            self._inflight.clear()

    @property
    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def ack(self, msg_id: str) -> None:
        """The broker has the message: delete it. Never raises for SQLite errors (it runs in paho's thread)."""
        self._remove(msg_id, None)

    def drop(self, msg_id: str, reason: str = DROP_REJECTED) -> None:
        """Delete a message that will never be delivered and count it as a drop for ``reason``."""
        self._remove(msg_id, reason)

    def _remove(self, msg_id: str, reason: str | None) -> None:
        with self._lock:
            self._inflight.discard(msg_id)
            if self._closed:
                return
            conn = self._conn
            try:
                # A delete lost to a power cut only resends a message the broker already has (consumers
                # dedupe by id), so it need not wait for an fsync; the next put's fsync covers it.
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("BEGIN IMMEDIATE")
                freed = self._delete_ids([msg_id])
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._acked_unsaved.add(msg_id)
                self._drops.log("ack_error", f"cannot delete acked message from {self._path}: {exc}")
                return
            finally:
                self._full_sync()  # after the rollback: SQLite refuses to change it inside a transaction
            for kind, size in freed:
                self._depth -= 1
                self._bytes -= size
                if reason is not None:
                    self._drops.count(reason, kind, msg_id)

    def _full_sync(self) -> None:
        try:
            self._conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error:
            # Not expected (no I/O involved); if it happens puts lose their power-cut guarantee, so say so.
            logger.error("outbox %s: cannot restore synchronous=FULL", self._path, exc_info=True)

    def expire(self) -> int:
        """Drop messages older than the TTL (reason 'ttl'); returns how many."""
        with self._lock:
            if self._closed:
                return 0
            cutoff = self._clock() - self._ttl_s
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                rows = conn.execute("SELECT id, kind, size FROM messages WHERE created < ?", (cutoff,)).fetchall()
                conn.execute("DELETE FROM messages WHERE created < ?", (cutoff,))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._drops.log("expire_error", f"cannot expire messages in {self._path}: {exc}")
                return 0
            for msg_id, kind, size in rows:
                self._inflight.discard(msg_id)
                self._acked_unsaved.discard(msg_id)
                self._depth -= 1
                self._bytes -= size
                self._drops.count(DROP_TTL, kind, f"older than {self._ttl_s:.0f} s")
            return len(rows)

    # ------------------------------------------------------------------ reporting

    @property
    def depth(self) -> int:
        with self._lock:
            return self._depth

    def stats(self) -> OutboxStats:
        with self._lock:
            return OutboxStats(
                depth=self._depth, bytes=self._bytes, inflight=len(self._inflight), drops=dict(self._drops.counts)
            )

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.close()
            except sqlite3.Error:
                logger.warning("outbox %s: error while closing", self._path, exc_info=True)

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
