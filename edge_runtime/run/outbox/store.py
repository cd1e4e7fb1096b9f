"""The outbox itself: a durable, byte-capped FIFO of outgoing MQTT messages in SQLite, shared by two threads.

Every outgoing MQTT message is stored here before it is published. A message leaves the outbox only when the
broker acknowledged it (``ack``), when the byte cap forces it out, or when it outlives the TTL. Either way the
drop is counted by reason and kind and logged, never silent (``policy``).

Durability: ``put`` returns True only after the row is fsynced (``synchronous=FULL`` in WAL mode: the commit
returns after the WAL is on disk), so an acknowledged put survives a power cut. ``put_many`` stores several
messages (a frame's results and crops) in one transaction: one fsync for all of them, each of them durable
before it is handed to MQTT. Deletes (acks) need no fsync of their own: losing one to a power cut resends a
message the broker already has, which consumers drop by id. So an ack only hides the message and frees its
bytes in memory; the rows are deleted in the next put's transaction (riding on its fsync), or in one
transaction without fsync when ``ACK_BATCH`` acks are pending or the publisher is idle (``sync_acks``), and at
``close``. A crash before that resends those messages once.

In flight: which messages await a PUBACK is held in memory only, never written: after a restart every stored
message is pending again and is resent (at-least-once), and marking costs no disk write (flash wear, latency).

Reading: the last few messages stored (``FRESH_MAX``) are also kept in memory; while every pending message is
among them, ``next_batch`` hands them over without a query. Otherwise (a backlog, a restart, a failed send) it
reads the file in send order.

Its own room because this is the one place the lock, the connection and the in-memory counters change
together; opening the file is ``database``'s job, deciding what to drop is ``policy``'s.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final

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

# Acks held in memory before their rows are deleted in a transaction of their own. A frame's put deletes the
# pending ones anyway; this bounds how many a crash could resend when no put comes (a drain).
ACK_BATCH: Final = 256
# Messages just stored are also kept in memory, up to this many, so that next_batch hands them to the sender
# without reading them back (two queries and a copy of every payload per batch). Beyond it (a broker outage's
# backlog) the rest is read from the file; the bound keeps the memory to a few frames' crops.
FRESH_MAX: Final = 32


class Outbox:
    """A durable, byte-capped FIFO of OutMessages in SQLite (WAL). Thread-safe.

    The pipeline thread calls ``put``/``put_many``; the publisher's threads call ``next_batch``,
    ``mark_inflight``, ``ack``, ``release``, ``sync_acks`` and ``expire``. One connection guarded by one lock:
    SQLite serialises writers anyway, and a single connection keeps the in-memory counters exact.
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
        # In flight: id -> accounted size when known (saves ack() a read), else None.
        self._inflight: dict[str, int | None] = {}
        # Pending messages stored by this process, oldest first, at most FRESH_MAX (see there). Whenever every
        # pending message is here (_cold() == 0) next_batch reads no row; else it reads the file, in order.
        self._fresh: dict[str, OutMessage] = {}
        self._batch_sizes: dict[str, int] = {}  # sizes of the messages the last next_batch read from the file
        # Acknowledged, row not deleted yet (see the module docstring; also when the DELETE failed on a full
        # disk): hidden from next_batch, not counted in depth and bytes, deleted by a later write.
        self._acked: set[str] = set()
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
        return self.put_many([msg])[0]

    def put_many(self, msgs: Sequence[OutMessage]) -> list[bool]:
        """Store ``msgs`` durably in one transaction (one fsync); per message, what ``put`` would return.

        Later messages of the batch may evict earlier ones under the byte cap, exactly as separate puts would.
        A failed transaction (disk full) drops the whole batch, each message counted.
        """
        for msg in msgs:
            if msg.kind not in RANK:
                raise ValueError(f"unknown message kind {msg.kind!r}; expected one of {', '.join(KINDS)}")
        with self._lock:
            if self._closed:
                for msg in msgs:
                    self._drops.count(DROP_CLOSED, msg.kind, f"{msg.id} arrived after close()")
                return [False] * len(msgs)
            stored = [False] * len(msgs)
            pending = [i for i, msg in enumerate(msgs) if self._fits(msg)]
            if not pending:
                return stored
            conn = self._conn
            acked = list(self._acked)
            depth, nbytes = self._depth, self._bytes
            warm = self._cold() == 0  # every pending message is in _fresh: new ones may join it
            added: list[OutMessage] = []
            gone: list[str] = []  # ids evicted
            evicted: list[tuple[str, str]] = []  # (kind, for kind) of the messages evicted
            no_room: list[tuple[str, str]] = []  # (kind, detail) of the messages refused under the cap
            try:
                conn.execute("BEGIN IMMEDIATE")
                if acked:
                    conn.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in acked])
                for i in pending:
                    msg = msgs[i]
                    size = message_size(msg)
                    need = nbytes + size - self._max_bytes
                    victims: list[tuple[str, str, int]] = []
                    if need > 0 and not conn.execute("SELECT 1 FROM messages WHERE id = ?", (msg.id,)).fetchone():
                        found = choose_victims(need, RANK[msg.kind], self._oldest_of_kind, self._inflight)
                        if found is None:
                            no_room.append((msg.kind, f"no room for {msg.id} ({size} bytes)"))
                            continue
                        victims = found
                        conn.executemany("DELETE FROM messages WHERE id = ?", [(v[0],) for v in victims])
                    # OR IGNORE: an id already stored (a resend of the same message) is stored once.
                    cur = conn.execute(
                        "INSERT OR IGNORE INTO messages (id, topic, payload, kind, created, retain, size)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (msg.id, msg.topic, msg.payload, msg.kind, float(msg.created), int(msg.retain), size),
                    )
                    stored[i] = True
                    if cur.rowcount:
                        depth += 1 - len(victims)
                        nbytes += size - sum(v[2] for v in victims)
                        evicted.extend((v[1], msg.kind) for v in victims)
                        gone.extend(v[0] for v in victims)
                        added.append(msg)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                for i in pending:
                    self._write_failed(exc, msgs[i].kind, msgs[i].id)
                return [False] * len(msgs)
            self._acked.difference_update(acked)
            self._depth, self._bytes = depth, nbytes
            for msg_id in gone:
                self._fresh.pop(msg_id, None)
            if warm:
                for msg in added:
                    if len(self._fresh) >= FRESH_MAX:
                        break
                    if msg.id not in gone:
                        self._fresh[msg.id] = msg
            for kind, detail in no_room:
                self._drops.count(DROP_FULL, kind, detail)
            for kind, for_kind in evicted:
                self._drops.count(DROP_FULL, kind, f"evicted to make room for a {for_kind}")
            self._write_ok()
            return stored

    def _cold(self) -> int:
        """Pending messages (stored, not in flight, not acknowledged) that are not in _fresh: read from the file."""
        return self._depth - len(self._inflight) - len(self._fresh)

    def _fits(self, msg: OutMessage) -> bool:
        size = message_size(msg)
        if size > self._max_bytes:
            self._drops.count(DROP_OVERSIZE, msg.kind, f"{msg.id} is {size} bytes, the cap is {self._max_bytes}")
            return False
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

    def sync_acks(self) -> None:
        """Delete the rows of acknowledged messages now, in one transaction without an fsync of its own (see the
        module docstring). On failure they stay hidden and pending deletion. Never raises for SQLite errors."""
        with self._lock:
            if self._closed or not self._acked:
                return
            ids = list(self._acked)
            conn = self._conn
            try:
                # A delete lost to a power cut only resends messages the broker already has (consumers dedupe
                # by id), so it need not wait for an fsync; the next put's fsync covers it.
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._drops.log("ack_error", f"cannot delete acked messages from {self._path}: {exc}")
                return
            finally:
                self._full_sync()  # after the rollback: SQLite refuses to change it inside a transaction
            self._acked.difference_update(ids)

    @property
    def acks_pending(self) -> int:
        """Acknowledged messages whose rows are not deleted yet."""
        with self._lock:
            return len(self._acked)

    # ------------------------------------------------------------------ the publisher's side

    def next_batch(self, limit: int, kinds: Iterable[MessageKind] | None = None) -> list[OutMessage]:
        """Up to ``limit`` stored messages (of ``kinds`` only, when given), oldest first, that are not in flight."""
        if limit <= 0:
            return []
        wanted = tuple(kinds) if kinds is not None else KINDS
        with self._lock:
            if self._closed:
                return []
            if self._cold() == 0:  # every pending message is in memory: no read
                return list(itertools.islice((m for m in self._fresh.values() if m.kind in wanted), limit))
            skip = self._inflight.keys() | self._acked
            where = "" if kinds is None else f"WHERE kind IN ({','.join('?' * len(wanted))}) "
            try:
                # Ids first: messages in flight or acknowledged are skipped without reading their payloads (a
                # row's id is in its first page; a crop's JPEG is in overflow pages only read when asked for).
                ids = self._conn.execute(
                    f"SELECT seq, id FROM messages {where}ORDER BY seq LIMIT ?",
                    (*(wanted if where else ()), limit + len(skip)),
                ).fetchall()
                seqs = [seq for seq, msg_id in ids if msg_id not in skip][:limit]
                rows = (
                    self._conn.execute(
                        "SELECT id, topic, payload, kind, created, retain FROM messages "
                        f"WHERE seq IN ({','.join('?' * len(seqs))}) ORDER BY seq",
                        seqs,
                    ).fetchall()
                    if seqs
                    else []
                )
            except sqlite3.Error as exc:
                self._drops.log("read_error", f"cannot read {self._path}: {exc}")
                return []
            out = [
                OutMessage(id=r[0], topic=r[1], payload=bytes(r[2]), kind=r[3], created=r[4], retain=bool(r[5]))
                for r in rows
            ]
            self._batch_sizes = {m.id: message_size(m) for m in out}
            return out

    def mark_inflight(self, ids: Iterable[str]) -> None:
        """Hide ``ids`` from next_batch until ack() or release(): they await a PUBACK."""
        with self._lock:
            for msg_id in ids:
                msg = self._fresh.pop(msg_id, None)
                self._inflight[msg_id] = message_size(msg) if msg is not None else self._batch_sizes.get(msg_id)

    def release(self, ids: Iterable[str]) -> None:
        """Make in-flight messages pending again (their publish failed before reaching the wire)."""
        with self._lock:
            for msg_id in ids:
                self._inflight.pop(msg_id, None)  # pending again, read from the file next time

    def release_all(self) -> None:
        with self._lock:
            self._inflight.clear()

    @property
    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def ack(self, msg_id: str) -> None:
        """The broker has the message: it leaves the outbox (its row is deleted by a later write, see the module
        docstring). Never raises for SQLite errors (it runs in paho's thread)."""
        with self._lock:
            size = self._inflight.pop(msg_id, None)
            if self._closed or msg_id in self._acked:
                return
            fresh = self._fresh.pop(msg_id, None)
            if fresh is not None:
                size = message_size(fresh)
            if size is None:
                try:
                    row = self._conn.execute("SELECT size FROM messages WHERE id = ?", (msg_id,)).fetchone()
                except sqlite3.Error as exc:
                    self._drops.log("ack_error", f"cannot read acked message {msg_id} from {self._path}: {exc}")
                    return
                if row is None:  # a duplicate PUBACK, or the message was evicted or expired meanwhile
                    return
                size = int(row[0])
            self._acked.add(msg_id)
            self._depth -= 1
            self._bytes -= size
            full = len(self._acked) >= ACK_BATCH
        if full:
            self.sync_acks()

    def drop(self, msg_id: str, reason: str = DROP_REJECTED) -> None:
        """Delete a message that will never be delivered and count it as a drop for ``reason``."""
        with self._lock:
            self._inflight.pop(msg_id, None)
            self._fresh.pop(msg_id, None)
            if self._closed or msg_id in self._acked:
                return
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                row = conn.execute("SELECT kind, size FROM messages WHERE id = ?", (msg_id,)).fetchone()
                conn.execute("DELETE FROM messages WHERE id = ?", (msg_id,))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._drops.log("drop_error", f"cannot delete message {msg_id} from {self._path}: {exc}")
                return
            if row is not None:
                self._depth -= 1
                self._bytes -= row[1]
                self._drops.count(reason, row[0], msg_id)

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
            expired = 0
            for msg_id, kind, size in rows:
                self._inflight.pop(msg_id, None)
                self._fresh.pop(msg_id, None)
                if msg_id in self._acked:  # delivered: no longer counted, not a loss
                    self._acked.discard(msg_id)
                    continue
                expired += 1
                self._depth -= 1
                self._bytes -= size
                self._drops.count(DROP_TTL, kind, f"older than {self._ttl_s:.0f} s")
            return expired

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
            self.sync_acks()
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
