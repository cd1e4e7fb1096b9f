"""The outbox's SQLite file: schema, pragmas, integrity check at open, and what to do with a file that is unusable.

Its own room because opening is a job of its own with its own failure modes (state directory missing, file
corrupt, written by a newer schema, filesystem without WAL), all settled before the first message is stored;
``store.Outbox`` only ever sees a connection it can trust. It also classifies SQLite errors (disk full,
corruption) for the store's drop accounting.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Final

from edge_runtime.errors import TemporaryError

logger = logging.getLogger(__name__)

OUTBOX_FILENAME: Final = "outbox.sqlite3"
SCHEMA_VERSION: Final = 1

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF, Python >= 3.11).
_SQLITE_IOERR: Final = 10
_SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_NOTADB: Final = 26

_KEEP_CORRUPT_COPIES: Final = 2  # moved-aside databases kept for forensics; older ones are deleted
_WAL_SIZE_LIMIT: Final = 4 * 1024 * 1024  # truncate the WAL back to this after checkpoints

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


def _error_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    return code & 0xFF if isinstance(code, int) else None


def is_disk_error(exc: sqlite3.Error) -> bool:
    """Whether SQLite failed for lack of space or an I/O error (the disk, not the data)."""
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


def open_database(path: Path, max_file_bytes: int | None = None) -> sqlite3.Connection:
    """A checked connection to the outbox at ``path`` (created, with its state directory, when missing).

    A corrupt file, or one from an unknown schema version, is moved aside and replaced by an empty outbox.
    ``max_file_bytes`` caps the file (SQLite ``max_page_count``). Raises ``OutboxError`` when no usable
    database can be had at all.
    """
    state_dir = path.parent
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutboxError(
            f"cannot create the outbox state directory {state_dir}: {exc.strerror or exc}",
            hint="create it writable by the service user (systemd: StateDirectory=)",
        ) from exc
    try:
        return _connect(path, max_file_bytes)
    except _Unusable as exc:
        # Refusing to start would crash-loop the service on every restart, and nothing in the
        # file can be trusted: keep it for forensics, start empty.
        aside = _move_aside(path, exc.what)
        logger.error(
            "outbox %s is %s (%s); moved it to %s and started an empty outbox: messages stored in it are not sent",
            path,
            exc.what,
            exc.detail,
            aside,
        )
    try:
        return _connect(path, max_file_bytes)
    except (_Unusable, sqlite3.Error) as exc:
        raise OutboxError(
            f"cannot create a fresh outbox at {path}: {exc}",
            hint=f"check free space and permissions in {state_dir}",
        ) from exc


def _connect(path: Path, max_file_bytes: int | None) -> sqlite3.Connection:
    try:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) so eviction,
        # insert and the counters move together.
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot open the outbox {path}: {exc}", hint=f"check permissions of {path.parent}") from exc
    try:
        _prepare(conn, path, max_file_bytes)
    except _Unusable:
        conn.close()
        raise
    except sqlite3.DatabaseError as exc:
        conn.close()
        if _is_corruption(exc):
            raise _Unusable("corrupt", str(exc)) from exc
        raise OutboxError(
            f"cannot open the outbox {path}: {exc}",
            hint=f"check free space and permissions in {path.parent}",
        ) from exc
    return conn


def _prepare(conn: sqlite3.Connection, path: Path, max_file_bytes: int | None) -> None:
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
        logger.warning("outbox %s: WAL mode unavailable on this filesystem, using %s", path, mode)
    # In WAL mode synchronous=NORMAL does not fsync the WAL at commit: a put that returned True could
    # vanish on a power cut (only a checkpoint syncs). FULL fsyncs the WAL at every commit, which is
    # what "stored" must mean here. Outbox.ack() relaxes it for deletes (see there).
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
    if max_file_bytes is not None:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={max(8, max_file_bytes // page_size)}")
    conn.executescript(_SCHEMA)
    if version == 0:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _move_aside(path: Path, what: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    tag = "corrupt" if what == "corrupt" else "incompatible"
    base = path.with_name(f"{path.name}.{tag}-{stamp}")
    n = 1
    while base.exists():
        n += 1
        base = path.with_name(f"{path.name}.{tag}-{stamp}-{n}")
    path.rename(base)
    # Keep the -wal/-shm next to the moved file under SQLite's own naming, so `sqlite3 <copy>` sees
    # the same content; left in place they would be replayed into the fresh database.
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(base.with_name(base.name + suffix))
    copies = sorted(
        (p for p in path.parent.glob(f"{path.name}.*-*") if not p.name.endswith(("-wal", "-shm"))),
        key=lambda p: p.stat().st_mtime,
    )
    for old in copies[:-_KEEP_CORRUPT_COPIES]:
        for p in (old, old.with_name(old.name + "-wal"), old.with_name(old.name + "-shm")):
            p.unlink(missing_ok=True)
    return base
