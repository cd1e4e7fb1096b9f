"""The durable outbox: every outgoing MQTT message is stored here before it is published.

A message leaves the outbox only when the broker acknowledged it (``ack``), when the byte cap
forces it out, or when it outlives the TTL. Either way the drop is counted by reason and kind and
logged, never silent.

Durability: ``put`` returns True only after the row is fsynced (``synchronous=FULL``), so an
acknowledged put survives a power cut. Deletes (acks) are not fsynced on their own: losing one to a
power cut resends a message the broker already has, which consumers drop by id.

In flight: which messages await a PUBACK is held in memory only, never written: after a restart
every stored message is pending again and is resent (at-least-once), and marking costs no disk
write (flash wear, latency).

Drop counters are in memory and restart from zero with the process; the Prometheus counters built on
them are process counters anyway.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final

from edge_runtime.errors import TemporaryError
from edge_runtime.types import MessageKind, OutMessage

if TYPE_CHECKING:
    from edge_runtime.profile import DeviceProfile

__all__ = [
    "DROP_CLOSED",
    "DROP_DB_ERROR",
    "DROP_DISK_FULL",
    "DROP_FULL",
    "DROP_OVERSIZE",
    "DROP_REJECTED",
    "DROP_TTL",
    "KINDS",
    "OUTBOX_FILENAME",
    "Outbox",
    "OutboxError",
    "OutboxStats",
    "message_size",
]

logger = logging.getLogger(__name__)

OUTBOX_FILENAME: Final = "outbox.sqlite3"
SCHEMA_VERSION: Final = 1
KINDS: Final[tuple[MessageKind, ...]] = ("result", "crop", "status", "heartbeat")

# Drop reasons (the `reason` label of the drop counters).
DROP_FULL: Final = "full"  # evicted, or refused, to keep the outbox under its byte cap
DROP_OVERSIZE: Final = "oversize"  # one message larger than the whole cap
DROP_TTL: Final = "ttl"  # older than the TTL
DROP_DISK_FULL: Final = "disk_full"  # SQLite could not write: disk full or I/O error
DROP_DB_ERROR: Final = "db_error"  # any other SQLite failure on put
DROP_REJECTED: Final = "rejected"  # the publisher gave up on it (the broker refused it, invalid topic)
DROP_CLOSED: Final = "closed"  # put after close(), e.g. a pipeline thread still running at shutdown

# Under the byte cap the lowest rank goes first, and a new message may only push out messages of its
# own rank or lower: a crop never evicts a result. Status is never evicted; it is rare and tiny.
_RANK: Final[dict[str, int]] = {"crop": 0, "heartbeat": 1, "result": 2, "status": 3}
_EVICTABLE: Final = ("crop", "heartbeat", "result")

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF, Python >= 3.11).
_SQLITE_IOERR: Final = 10
_SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_NOTADB: Final = 26

_KEEP_CORRUPT_COPIES: Final = 2  # moved-aside databases kept for forensics; older ones are deleted
_WAL_SIZE_LIMIT: Final = 4 * 1024 * 1024  # truncate the WAL back to this after checkpoints
_DROP_LOG_INTERVAL_S: Final = 30.0

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,  -- send order; AUTOINCREMENT never reuses a seq
    id      TEXT    NOT NULL UNIQUE,            -- message id, the consumers' dedupe key
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    kind    TEXT    NOT NULL CHECK (kind IN ('result', 'crop', 'status', 'heartbeat')),
    created REAL    NOT NULL,
    retain  INTEGER NOT NULL,
    size    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_kind_seq ON messages (kind, seq);
CREATE INDEX IF NOT EXISTS messages_created ON messages (created);
"""


class OutboxError(TemporaryError):
    """The outbox cannot be opened at all (disk full, state directory missing or not writable): exit 75."""


@dataclass(frozen=True)
class OutboxStats:
    """A snapshot for metrics and heartbeats. ``drops`` is keyed by (reason, kind)."""

    depth: int  # stored messages, in flight included
    bytes: int  # their accounted size (see message_size), what the byte cap limits
    inflight: int = 0
    drops: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def dropped(self) -> dict[str, int]:
        """Drops by reason: full, oversize, ttl, disk_full, db_error, rejected, closed."""
        out: dict[str, int] = {}
        for (reason, _), n in self.drops.items():
            out[reason] = out.get(reason, 0) + n
        return out

    @property
    def dropped_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_, kind), n in self.drops.items():
            out[kind] = out.get(kind, 0) + n
        return out


def message_size(msg: OutMessage) -> int:
    """Bytes a message counts against the cap: payload, topic and id (SQLite's own overhead is not counted)."""
    return len(msg.payload) + len(msg.topic.encode("utf-8")) + len(msg.id.encode("utf-8"))


def _error_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    return code & 0xFF if isinstance(code, int) else None


def _is_disk_error(exc: sqlite3.Error) -> bool:
    code = _error_code(exc)
    if code is not None:
        return code in (_SQLITE_FULL, _SQLITE_IOERR)
    text = str(exc).lower()
    return "disk is full" in text or "disk i/o error" in text


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = _error_code(exc)
    if code is not None:
        return code in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


class _Unusable(Exception):
    """The database file exists but cannot be used (corrupt, or written by a newer schema)."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what}: {detail}")
        self.what = what
        self.detail = detail


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
        self._max_file_bytes = max_file_bytes
        self._lock = threading.RLock()
        self._inflight: set[str] = set()
        # Acked, but the DELETE failed (disk full): hidden from next_batch, deleted on a later write.
        self._acked_unsaved: set[str] = set()
        self._drops: dict[tuple[str, str], int] = {}
        self._drop_log: dict[str, tuple[float, int]] = {}  # reason -> (last logged, drops not yet logged)
        self._write_failing = False
        self._write_failures = 0
        self._depth = 0
        self._bytes = 0
        self._closed = False
        self._conn = self._open()
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

    def _open(self) -> sqlite3.Connection:
        state_dir = self._path.parent
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(
                f"cannot create the outbox state directory {state_dir}: {exc.strerror or exc}",
                hint="create it writable by the service user (systemd: StateDirectory=)",
            ) from exc
        try:
            return self._connect()
        except _Unusable as exc:
            # Refusing to start would crash-loop the service on every restart, and nothing in the
            # file can be trusted: keep it for forensics, start empty.
            aside = self._move_aside(exc.what)
            logger.error(
                "outbox %s is %s (%s); moved it to %s and started an empty outbox: messages stored in it are not sent",
                self._path,
                exc.what,
                exc.detail,
                aside,
            )
        try:
            return self._connect()
        except (_Unusable, sqlite3.Error) as exc:
            raise OutboxError(
                f"cannot create a fresh outbox at {self._path}: {exc}",
                hint=f"check free space and permissions in {state_dir}",
            ) from exc

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) so eviction,
            # insert and the counters move together.
            conn = sqlite3.connect(str(self._path), check_same_thread=False, isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise OutboxError(
                f"cannot open the outbox {self._path}: {exc}", hint=f"check permissions of {self._path.parent}"
            ) from exc
        try:
            self._prepare(conn)
        except _Unusable:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _is_corruption(exc):
                raise _Unusable("corrupt", str(exc)) from exc
            raise OutboxError(
                f"cannot open the outbox {self._path}: {exc}",
                hint=f"check free space and permissions in {self._path.parent}",
            ) from exc
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # quick_check reads every page (bounded by the byte cap): corruption found now is handled by
        # moving the file aside, found later it would fail puts one by one.
        rows = conn.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            raise _Unusable("corrupt", "; ".join(str(r[0]) for r in rows[:3]))
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise _Unusable("from an unknown schema version", f"user_version {version}, expected {SCHEMA_VERSION}")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            logger.warning("outbox %s: WAL mode unavailable on this filesystem, using %s", self._path, mode)
        # In WAL mode synchronous=NORMAL does not fsync the WAL at commit: a put that returned True could
        # vanish on a power cut (only a checkpoint syncs). FULL fsyncs the WAL at every commit, which is
        # what "stored" must mean here. ack() relaxes it for deletes (see there).
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
        if self._max_file_bytes is not None:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={max(8, self._max_file_bytes // page_size)}")
        conn.executescript(_SCHEMA)
        if version == 0:
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _move_aside(self, what: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        tag = "corrupt" if what == "corrupt" else "incompatible"
        base = self._path.with_name(f"{self._path.name}.{tag}-{stamp}")
        n = 1
        while base.exists():
            n += 1
            base = self._path.with_name(f"{self._path.name}.{tag}-{stamp}-{n}")
        self._path.rename(base)
        # Keep the -wal/-shm next to the moved file under SQLite's own naming, so `sqlite3 <copy>` sees
        # the same content; left in place they would be replayed into the fresh database.
        for suffix in ("-wal", "-shm"):
            side = self._path.with_name(self._path.name + suffix)
            if side.exists():
                side.rename(base.with_name(base.name + suffix))
        copies = sorted(
            (p for p in self._path.parent.glob(f"{self._path.name}.*-*") if not p.name.endswith(("-wal", "-shm"))),
            key=lambda p: p.stat().st_mtime,
        )
        for old in copies[:-_KEEP_CORRUPT_COPIES]:
            for p in (old, old.with_name(old.name + "-wal"), old.with_name(old.name + "-shm")):
                p.unlink(missing_ok=True)
        return base

    # ------------------------------------------------------------------ writing

    def put(self, msg: OutMessage) -> bool:
        """Store ``msg`` durably; True once it is on disk (or already was: ids are unique).

        Over the byte cap, older messages of the same or lower rank are dropped first (crops, then
        heartbeats, then results; status never). False when the message itself is dropped: it cannot
        fit, the outbox is closed, or the disk is full. Never raises for a full disk.
        """
        if msg.kind not in _RANK:
            raise ValueError(f"unknown message kind {msg.kind!r}; expected one of {', '.join(KINDS)}")
        size = message_size(msg)
        with self._lock:
            if self._closed:
                self._count_drop(DROP_CLOSED, msg.kind, f"{msg.id} arrived after close()")
                return False
            if size > self._max_bytes:
                self._count_drop(DROP_OVERSIZE, msg.kind, f"{msg.id} is {size} bytes, the cap is {self._max_bytes}")
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
                    found = self._choose_victims(need, _RANK[msg.kind])
                    if found is None:
                        conn.execute("ROLLBACK")
                        self._count_drop(DROP_FULL, msg.kind, f"no room for {msg.id} ({size} bytes)")
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
                self._count_drop(DROP_FULL, kind, f"evicted to make room for a {msg.kind}")
            self._write_ok()
            return True

    def _choose_victims(self, need: int, rank: int) -> list[tuple[str, str, int]] | None:
        """Oldest first among kinds of rank <= ``rank``; None if even all of them would not free ``need``."""
        victims: list[tuple[str, str, int]] = []
        freed = 0
        for kind in _EVICTABLE:
            if _RANK[kind] > rank:
                break
            # Lazily iterated: usually a few rows free enough and the rest is never read.
            for msg_id, size in self._conn.execute(
                "SELECT id, size FROM messages WHERE kind = ? ORDER BY seq", (kind,)
            ):
                # In flight ones are about to be acked; dropping them would free bytes and still deliver them,
                # but count a loss that did not happen.
                if msg_id in self._inflight:
                    continue
                victims.append((msg_id, kind, size))
                freed += size
                if freed >= need:
                    return victims
        return None

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            logger.debug("outbox: rollback failed", exc_info=True)

    def _write_failed(self, exc: sqlite3.Error, kind: str, msg_id: str) -> None:
        self._write_failures += 1
        if _is_disk_error(exc):
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
            self._count_drop(DROP_DISK_FULL, kind, "", log=False)
        else:
            self._count_drop(DROP_DB_ERROR, kind, f"{msg_id}: {exc}")

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
                self._count_drop_log_only("read_error", f"cannot read {self._path}: {exc}")
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
                self._count_drop_log_only("ack_error", f"cannot delete acked message from {self._path}: {exc}")
                return
            finally:
                self._full_sync()  # after the rollback: SQLite refuses to change it inside a transaction
            for kind, size in freed:
                self._depth -= 1
                self._bytes -= size
                if reason is not None:
                    self._count_drop(reason, kind, msg_id)

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
                self._count_drop_log_only("expire_error", f"cannot expire messages in {self._path}: {exc}")
                return 0
            for msg_id, kind, size in rows:
                self._inflight.discard(msg_id)
                self._acked_unsaved.discard(msg_id)
                self._depth -= 1
                self._bytes -= size
                self._count_drop(DROP_TTL, kind, f"older than {self._ttl_s:.0f} s")
            return len(rows)

    # ------------------------------------------------------------------ reporting

    @property
    def depth(self) -> int:
        with self._lock:
            return self._depth

    def stats(self) -> OutboxStats:
        with self._lock:
            return OutboxStats(
                depth=self._depth, bytes=self._bytes, inflight=len(self._inflight), drops=dict(self._drops)
            )

    def _count_drop(self, reason: str, kind: str, detail: str, *, log: bool = True) -> None:
        key = (reason, kind)
        self._drops[key] = self._drops.get(key, 0) + 1
        if log:
            self._count_drop_log_only(reason, f"dropped a {kind} message ({reason}): {detail}")

    def _count_drop_log_only(self, reason: str, text: str) -> None:
        # A full outbox drops on every frame; one line per reason per interval is enough to see it.
        now = time.monotonic()
        last, pending = self._drop_log.get(reason, (float("-inf"), 0))
        if now - last >= _DROP_LOG_INTERVAL_S:
            more = f" (+{pending} more like it in the last {_DROP_LOG_INTERVAL_S:.0f} s)" if pending else ""
            logger.warning("outbox %s: %s%s", self._path, text, more)
            self._drop_log[reason] = (now, 0)
        else:
            self._drop_log[reason] = (last, pending + 1)

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
