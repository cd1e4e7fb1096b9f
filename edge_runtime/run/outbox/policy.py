"""What the outbox gives up under pressure, and how every loss is counted: ranks, eviction, drop reasons, stats.

Its own room because the policy is the part people ask about ("which messages go first when the disk fills?"),
and it holds no connection and no lock: ``choose_victims`` decides over rows the store hands it, ``DropBook``
counts and logs under the store's lock. The byte cap and TTL themselves are enforced by ``store.Outbox``.

Drop counters are in memory and restart from zero with the process; the Prometheus counters built on them are
process counters anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from edge_runtime.types import MessageKind, OutMessage

logger = logging.getLogger(__name__)

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
RANK: Final[dict[str, int]] = {"crop": 0, "heartbeat": 1, "result": 2, "status": 3}
_EVICTABLE: Final = ("crop", "heartbeat", "result")

_DROP_LOG_INTERVAL_S: Final = 30.0


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


def choose_victims(
    need: int,
    rank: int,
    oldest_first: Callable[[str], Iterable[tuple[str, int]]],
    inflight: Container[str],
) -> list[tuple[str, str, int]] | None:
    """(id, kind, size) of the messages to evict to free ``need`` bytes for a message of rank ``rank``.

    Oldest first among kinds of rank <= ``rank``, lowest rank first; ``oldest_first(kind)`` yields that kind's
    stored (id, size) in send order and is read only as far as needed. None if even all of them would not free
    ``need``.
    """
    victims: list[tuple[str, str, int]] = []
    freed = 0
    for kind in _EVICTABLE:
        if RANK[kind] > rank:
            break
        for msg_id, size in oldest_first(kind):
            # In flight ones are about to be acked; dropping them would free bytes and still deliver them,
            # but count a loss that did not happen.
            if msg_id in inflight:
                continue
            victims.append((msg_id, kind, size))
            freed += size
            if freed >= need:
                return victims
    return None


class DropBook:
    """The drop counters by (reason, kind) and their rate-limited log lines, for the outbox at ``path``.

    No lock of its own: the outbox calls it under its lock.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self.counts: dict[tuple[str, str], int] = {}
        self._log: dict[str, tuple[float, int]] = {}  # reason -> (last logged, drops not yet logged)

    def count(self, reason: str, kind: str, detail: str, *, log: bool = True) -> None:
        """Count one dropped ``kind`` message for ``reason`` and, unless ``log`` is False, log it (rate-limited)."""
        key = (reason, kind)
        self.counts[key] = self.counts.get(key, 0) + 1
        if log:
            self.log(reason, f"dropped a {kind} message ({reason}): {detail}")

    def log(self, reason: str, text: str) -> None:
        """Warn ``text``, at most once per reason and interval; the lines held back are counted in the next one."""
        # A full outbox drops on every frame; one line per reason per interval is enough to see it.
        now = time.monotonic()
        last, pending = self._log.get(reason, (float("-inf"), 0))
        if now - last >= _DROP_LOG_INTERVAL_S:
            more = f" (+{pending} more like it in the last {_DROP_LOG_INTERVAL_S:.0f} s)" if pending else ""
            logger.warning("outbox %s: %s%s", self._path, text, more)
            self._log[reason] = (now, 0)
        else:
            self._log[reason] = (last, pending + 1)
