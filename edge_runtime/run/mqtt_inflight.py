"""The MQTT publisher's in-flight ledger: which outbox messages await a PUBACK, under which mid, at what cost.

Its own room because it is pure bookkeeping with one subtle case, and can be tested without a broker: paho's
network thread may process a PUBACK before ``publish()`` has returned the mid to the sender thread, so an ack for
a mid not yet registered is kept until the registration arrives. It holds no lock: ``run.mqtt.MqttPublisher``
makes every call under its own lock, next to the connection state and uplink budget those calls change with.
"""

from __future__ import annotations

__all__ = ["InflightLedger"]


class InflightLedger:
    """Outbox messages published and not yet acknowledged, and the mids their PUBACKs will name.

    ``len()`` is the number of outbox messages in flight (direct publishes such as the status are registered by
    mid only and not counted). Not thread-safe on its own: the caller holds its lock around every call.
    """

    def __init__(self) -> None:
        self._mid_to_id: dict[int, str | None] = {}  # None: a direct publish (status), not in the outbox
        self._early_acks: set[int] = set()  # PUBACKs that overtook the registration of their mid
        # id -> uplink bytes: paho retransmits these after a reconnect, which the uplink budget pays for.
        self._cost: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._cost)

    def add(self, msg_id: str, cost: int) -> None:
        """``msg_id`` is being published; resending it would cost ``cost`` uplink bytes."""
        self._cost[msg_id] = cost

    def discard(self, msg_id: str) -> None:
        """``msg_id`` is no longer in flight (acknowledged, dropped, or handed back to the outbox)."""
        self._cost.pop(msg_id, None)

    def resend_bytes(self) -> int:
        """The uplink bytes of every message in flight: what paho's retransmission after a reconnect sends."""
        return sum(self._cost.values())

    def take_all(self) -> list[str]:
        """Every message id in flight, forgetting them (at shutdown: they go back to the outbox)."""
        ids = list(self._cost)
        self._cost.clear()
        return ids

    def register(self, mid: int, msg_id: str | None) -> bool:
        """Remember that ``mid`` carries ``msg_id`` (None: a direct publish). True when its PUBACK already arrived,
        in which case nothing is remembered and the caller completes the message now."""
        if mid in self._early_acks:
            self._early_acks.discard(mid)
            return True
        self._mid_to_id[mid] = msg_id
        return False

    def acked(self, mid: int) -> str | None:
        """The PUBACK for ``mid`` arrived: the outbox message id to complete, or None.

        None for a direct publish, and for a mid not registered yet: that ack is kept for ``register``.
        """
        if mid in self._mid_to_id:
            return self._mid_to_id.pop(mid)
        self._early_acks.add(mid)
        return None
