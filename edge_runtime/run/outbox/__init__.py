"""The durable outbox: every outgoing MQTT message is stored here before it is published.

This room holds the outbox itself (store.py: ``Outbox``: put, next batch, in-flight marks, ack, expiry, stats),
its SQLite file (database.py: schema, pragmas, integrity check at open, a corrupt or newer file moved aside) and
what it gives up under pressure (policy.py: message ranks, eviction under the byte cap, drop reasons and
counters, ``OutboxStats``).

A message leaves the outbox only when the broker acknowledged it (``ack``), when the byte cap forces it out, or
when it outlives the TTL. Either way the drop is counted by reason and kind and logged, never silent.
"""

from edge_runtime.run.outbox.database import OUTBOX_FILENAME, OutboxError
from edge_runtime.run.outbox.policy import (
    DROP_CLOSED,
    DROP_DB_ERROR,
    DROP_DISK_FULL,
    DROP_FULL,
    DROP_OVERSIZE,
    DROP_REJECTED,
    DROP_TTL,
    KINDS,
    OutboxStats,
    message_size,
)
from edge_runtime.run.outbox.store import Outbox

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
