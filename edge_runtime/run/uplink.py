"""The uplink cap of the MQTT publisher: a token bucket and the accounting the metrics and heartbeats show.

With ``mqtt.uplink_bytes_per_s`` set, ``TokenBucket`` holds the sender back so that payload plus topic bytes
stay at the cap on average. A held-back message simply stays in the durable outbox: the cap delays, it never
drops. ``Uplink`` keeps the bucket together with the totals (bytes sent, messages that waited, seconds waited);
the publisher owns one and guards it with its own lock, so neither class here is thread-safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from edge_runtime.types import OutMessage

__all__ = ["UPLINK_BURST_S", "TokenBucket", "Uplink", "uplink_cost"]

# Burst of the uplink bucket, in seconds of the cap. One second lets a frame's results and a crop or two
# go out together at the default 250 kB/s, yet never pushes more than about a second of link time into
# the modem's buffer at once, where it would delay PUBACKs, PINGREQs and everything else on a cellular
# link. The burst need not cover the largest message: the bucket lets a bigger one go when full and runs
# into debt (see TokenBucket). Sizing it to the largest message the outbox accepts would not work: that
# is the outbox's whole byte cap (64 MiB by default; the pipeline bounds crops by pixels, not bytes),
# which would let a backlog out at line rate after every outage, exactly when the cap matters.
UPLINK_BURST_S: Final = 1.0


def uplink_cost(msg: OutMessage) -> int:
    """The bytes a message counts against the cap: what we choose to send, payload and topic. MQTT/TCP/TLS
    framing is a few dozen bytes per message, small next to a crop, and not ours to shape."""
    return len(msg.payload) + len(msg.topic.encode("utf-8"))


class TokenBucket:
    """A byte budget refilled at ``rate`` bytes/s up to ``burst``; it starts full.

    A message of ``n`` bytes may go once the bucket holds ``min(n, burst)``; sending takes all ``n``, which
    may leave the bucket in debt. The debt is repaid before anything else goes, so the average stays at
    ``rate`` however large a message is, and a message larger than the burst still goes out (when the
    bucket is full) instead of waiting forever. Not thread-safe: the publisher guards it with its lock.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0 bytes/s, got {rate}")
        if not burst > 0:
            raise ValueError(f"burst must be > 0 bytes, got {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        # max(): a clock that steps back must not drain the bucket.
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = now

    @property
    def tokens(self) -> float:
        """Bytes available now; negative while in debt."""
        self._refill()
        return self._tokens

    def wait_s(self, n: int) -> float:
        """Seconds until ``n`` bytes may go; 0.0 when they may go now."""
        self._refill()
        missing = min(float(n), self.burst) - self._tokens
        # Half a byte of slack: float rounding must not turn an exact wait into a second tiny one.
        return 0.0 if missing <= 0.5 else missing / self.rate

    def take(self, n: int) -> None:
        """Spend ``n`` bytes (sent, or about to be): the bucket may go into debt."""
        self._refill()
        self._tokens -= n


class Uplink:
    """The cap (``None``: unlimited) with its bucket, and the running totals of what went out and what waited.

    ``bytes_sent`` counts payload and topic bytes of outbox messages published, retransmissions included;
    ``waits`` the messages that had to wait for budget; ``wait_s()`` the seconds they waited, the wait in
    progress included (a counter must grow during a long wait too).
    """

    def __init__(self, cap: int | None, burst: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.cap = cap
        self._bucket: TokenBucket | None = None
        if cap is not None:
            self._bucket = TokenBucket(cap, burst or max(1, round(cap * UPLINK_BURST_S)), clock)
        self._clock = clock
        self.bytes_sent = 0
        self.waits = 0
        self._waited_s = 0.0
        self._wait_since: float | None = None  # clock() at the start of the budget wait in progress

    @property
    def limited(self) -> bool:
        return self._bucket is not None

    @property
    def waiting(self) -> bool:
        """A message is waiting for budget right now."""
        return self._wait_since is not None

    def wait_needed_s(self, n: int) -> float:
        """Seconds until ``n`` bytes may go; 0.0 when they may go now (always, without a cap)."""
        return self._bucket.wait_s(n) if self._bucket is not None else 0.0

    def spend(self, n: int) -> None:
        """Count ``n`` bytes as sent and take them from the budget (which may go into debt)."""
        self.bytes_sent += n
        if self._bucket is not None:
            self._bucket.take(n)

    def begin_wait(self) -> None:
        """A message starts waiting for budget (a wait already in progress goes on)."""
        if self._wait_since is None:
            self._wait_since = self._clock()
            self.waits += 1

    def end_wait(self) -> None:
        """The wait in progress, if any, is over: add it to the total."""
        if self._wait_since is not None:
            self._waited_s += self._clock() - self._wait_since
            self._wait_since = None

    def wait_s(self) -> float:
        """Total seconds messages waited for budget, the wait in progress included."""
        if self._wait_since is None:
            return self._waited_s
        return self._waited_s + self._clock() - self._wait_since
