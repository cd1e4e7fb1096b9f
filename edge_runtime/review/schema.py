"""The review database: its tables (SQLAlchemy Core), and opening it from a URL.

The same tables run on SQLite (the default: one file, WAL, for a team on one machine) and PostgreSQL (several
collectors, one database). Database URLs are SQLAlchemy's: ``sqlite:////abs/path.db``, ``postgresql://user@host/db``
(``postgresql://`` is served by psycopg 3). Crops are not in the database: they are files named by their sha256
(``crops``), so the database stays small and a crop seen twice is stored once.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from edge_runtime.errors import UsageError

__all__ = ["actions", "counters", "crops", "events", "groups", "metadata", "open_engine", "skus"]

metadata = sa.MetaData()

# One row per unknown/verify object, stored once by its message id.
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.String(256), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # unknown | verify (the device's route)
    sa.Column("device_id", sa.String(256), nullable=False, index=True),
    sa.Column("frame_id", sa.BigInteger, nullable=False),
    sa.Column("source_ref", sa.String(256), nullable=False),
    sa.Column("ts", sa.String(64), nullable=False),
    sa.Column("device_time", sa.Float, nullable=False, index=True),
    sa.Column("received", sa.Float, nullable=False, index=True),
    sa.Column("box", sa.String(128), nullable=False),  # JSON [x, y, w, h]
    sa.Column("sku", sa.String(256)),  # verify: what the device proposed
    sa.Column("score", sa.Float),
    sa.Column("ood_score", sa.Float, nullable=False),
    sa.Column("nearest", sa.Text, nullable=False),  # JSON [[sku, p], ...]
    sa.Column("crop_sha", sa.String(64), index=True),  # None: no crop, or evicted by the quota
    sa.Column("embedding", sa.LargeBinary),  # float32, unit length; None: no crop or no bundle
    sa.Column("group_id", sa.Integer, index=True),
    # The label: kind (confirm | other | new | not_product), SKU, who and when; None while pending.
    sa.Column("label", sa.String(16), index=True),
    sa.Column("label_sku", sa.String(256)),
    sa.Column("labelled_by", sa.String(128)),
    sa.Column("labelled_at", sa.Float),
    sa.Column("skipped_at", sa.Float),  # a skipped event goes to the back of the queue
    sa.Column("action_id", sa.Integer),
)

# Look-alike unknowns: a running centroid per group; a group takes new members while any member is pending.
groups = sa.Table(
    "groups",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("centroid", sa.LargeBinary, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
)

# Crop files: sha256 -> bytes on disk (the quota is counted here).
crops = sa.Table(
    "crops",
    metadata,
    sa.Column("sha", sa.String(64), primary_key=True),
    sa.Column("bytes", sa.Integer, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

# The SKUs a label may name: the bundle's (copied in at every start of the collector) and the products reviewers
# added (``added``), which export writes as new SKUs with a --history row each.
skus = sa.Table(
    "skus",
    metadata,
    sa.Column("code", sa.String(256), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("group_name", sa.String(256), nullable=False),
    sa.Column("added", sa.Boolean, nullable=False),
    sa.Column("created_by", sa.String(128)),
    sa.Column("created_at", sa.Float),
)

# Every reviewer action, for the audit trail and undo: the events' previous label state is kept as JSON.
actions = sa.Table(
    "actions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user", sa.String(128), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("sku", sa.String(256)),
    sa.Column("event_ids", sa.Text, nullable=False),
    sa.Column("previous", sa.Text, nullable=False),
    sa.Column("undone", sa.Boolean, nullable=False, default=False),
)

# Totals that must survive a restart and be shared by several collectors: rejections by reason, evictions.
counters = sa.Table(
    "counters",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL: the web page reads while the collector writes; NORMAL is durable across a crash in WAL mode
    # (a power cut may lose the last commits, which the broker then redelivers: the collector acks after commit).
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def open_engine(url: str) -> Engine:
    """An engine for ``url`` with the tables created; UsageError naming the URL's problem (never its password)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    try:
        parsed = sa.engine.make_url(url)
    except ArgumentError:
        raise UsageError(
            "--db is not a database URL", hint="use sqlite:////abs/path/review.db or postgresql://user@host/db"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise UsageError(f"--db {shown}: unsupported database", hint="use sqlite:/// or postgresql://")
    try:
        engine = sa.create_engine(parsed, pool_pre_ping=True)
    except (NoSuchModuleError, ImportError) as exc:
        raise UsageError(f"--db {shown}: driver missing ({exc})", hint="pip install edge_runtime[review]") from None
    if parsed.get_backend_name() == "sqlite":
        sa_event.listen(engine, "connect", _sqlite_pragmas)
    try:
        metadata.create_all(engine)
    except OperationalError as exc:
        raise UsageError(
            f"--db {shown}: cannot open the database ({str(exc.orig).strip().splitlines()[0]})",
            hint="check the path or the server, the user and its rights",
        ) from None
    return engine
