"""Where the pipeline's messages go: the ``Publisher`` protocol, its statistics, and the null publisher.

``MqttPublisher`` (``run.mqtt``) is the one edge-run uses: every message is stored in the durable outbox and
published at QoS 1. ``NullPublisher`` is what edge-bench uses without ``--publish``: it serialises every message
exactly as the MQTT publisher does before its outbox write (``messages.encode_json``), so the publish stage
still costs what building the bytes costs, then drops them; nothing needs a broker and nothing is left behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_runtime.run.messages import encode_json
from edge_runtime.run.outbox import OutboxStats
from edge_runtime.types import MessageKind

__all__ = ["NullPublisher", "Publisher", "PublisherStats"]


@dataclass(frozen=True)
class PublisherStats:
    """Counters for metrics; all are totals since start except ``inflight`` and ``connected``."""

    connected: bool
    connects: int
    disconnects: int
    published: int  # PUBLISH calls for outbox messages (first sends)
    acked: int  # PUBACKs for outbox messages
    resent: int  # in-flight messages paho retransmitted after a reconnect
    inflight: int
    send_rejected: int  # send() calls refused before the outbox (payload not JSON-serialisable)
    # Uplink cap (defaults keep publishers that do not publish valid).
    uplink_bytes_per_s: int | None = None  # the cap; None: unlimited
    uplink_bytes: int = 0  # payload + topic bytes of outbox messages published, retransmits included
    uplink_wait_s: float = 0.0  # total time a ready message waited for uplink budget (the wait in progress too)
    uplink_waits: int = 0  # messages that had to wait for budget
    uplink_throttled: bool = False  # a message is waiting for budget right now


class Publisher(Protocol):
    """What the pipeline needs from its message sink.

    Use: ``on_feedback()``, ``start()``, then ``wait_connected()`` (False with ``fatal_error`` set means the
    broker refused us for good: exit; False without it means it is not reachable yet, which is fine: messages
    wait in the outbox), ``send()`` from the pipeline's threads, ``flush()`` to drain, ``close()`` at shutdown.
    """

    @property
    def fatal_error(self) -> str | None:
        """Why the broker refused this client for good (bad credentials, not authorised); None otherwise."""
        ...

    @property
    def outbox_path(self) -> Path:
        """Where unsent messages are kept, for log lines."""
        ...

    def send(
        self, name: str, payload: Mapping[str, Any], kind: MessageKind | None = None, *, retain: bool = False
    ) -> bool:
        """Hand over a JSON message for topic ``name`` (results, unknown, verify, heartbeat; a scene's events,
        cart, shelf with their ``kind`` and ``retain``); True once it is stored (durable), False when it was
        dropped (and counted); never raises for bad data."""
        ...

    def send_many(self, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> list[bool]:
        """``send`` for several ``(name, payload)`` messages with their topics' default kinds, stored together
        (one outbox transaction for a frame's results and crops); per message, what ``send`` would return."""
        ...

    def on_feedback(self, callback: Callable[[bytes], None]) -> None:
        """Call ``callback(payload)`` for each message on the device's feedback topic."""
        ...

    def on_topic(self, name: str, callback: Callable[[bytes], None]) -> None:
        """Call ``callback(payload)`` for each message on the device's topic ``name`` (subscribed at connect)."""
        ...

    def start(self) -> None:
        """Start delivering in the background."""
        ...

    def wait_connected(self, timeout: float) -> bool:
        """True once ready to deliver; False on timeout or a fatal refusal (see ``fatal_error``)."""
        ...

    def raise_if_fatal(self) -> None:
        """Raise MqttAuthError when the broker refused this client for good."""
        ...

    def flush(self, timeout_s: float) -> bool:
        """Wait until every stored message is acknowledged; False on timeout."""
        ...

    def retry_promptly(self) -> None:
        """From now on, retry a lost broker connection at once and often (the drain at shutdown)."""
        ...

    def close(self, publish_offline: bool = True, timeout_s: float = 2.0) -> None:
        """Stop delivering; unsent messages stay stored for the next start."""
        ...

    def stats(self) -> PublisherStats:
        """Delivery counters, for metrics and heartbeats."""
        ...

    def outbox_stats(self) -> OutboxStats:
        """What is stored and not yet acknowledged, and what was dropped."""
        ...


class NullPublisher:
    """A ``Publisher`` that serialises every message, then discards it (edge-bench without ``--publish``).

    It never connects, stores nothing and acknowledges nothing: its outbox is always empty and ``stats()``
    counts no delivery. ``sent`` counts the messages it was given.
    """

    fatal_error: str | None = None
    outbox_path = Path(os.devnull)

    def __init__(self) -> None:
        self.sent = 0

    def send(
        self, name: str, payload: Mapping[str, Any], kind: MessageKind | None = None, *, retain: bool = False
    ) -> bool:
        """Serialise ``payload`` as the MQTT publisher would, then drop it; always True."""
        encode_json(payload)
        self.sent += 1
        return True

    def send_many(self, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> list[bool]:
        """``send`` for each message."""
        return [self.send(name, payload) for name, payload in messages]

    def on_feedback(self, callback: Callable[[bytes], None]) -> None:
        """No feedback ever arrives."""

    def on_topic(self, name: str, callback: Callable[[bytes], None]) -> None:
        """Nothing ever arrives."""

    def start(self) -> None:
        """Nothing to start."""

    def wait_connected(self, timeout: float) -> bool:
        """Always ready."""
        return True

    def raise_if_fatal(self) -> None:
        """Nothing can refuse it."""

    def flush(self, timeout_s: float) -> bool:
        """Nothing is ever pending."""
        return True

    def retry_promptly(self) -> None:
        """No connection to retry."""

    def close(self, publish_offline: bool = True, timeout_s: float = 2.0) -> None:
        """Nothing to stop."""

    def stats(self) -> PublisherStats:
        """Nothing reaches a broker, so nothing is published or acknowledged."""
        return PublisherStats(
            connected=False, connects=0, disconnects=0, published=0, acked=0, resent=0, inflight=0, send_rejected=0
        )

    def outbox_stats(self) -> OutboxStats:
        """Always empty."""
        return OutboxStats(depth=0, bytes=0)
