"""The sender thread of ``run.mqtt.MqttPublisher``: reads pending messages from the outbox and publishes them at
QoS 1 while connected, at most ``max_inflight`` awaiting a PUBACK, within the uplink cap; it also expires old
messages and, when idle, deletes the rows of acknowledged ones (``Outbox.sync_acks``).

Its own room because it is the one loop of the publisher: ``run.mqtt_session.BrokerSession`` (inherited) holds
paho's callbacks and the ack path, ``run.mqtt.MqttPublisher`` (which inherits this class) construction and the
public API; the state all three share is declared in ``BrokerSession`` and set in ``MqttPublisher.__init__``.

Uplink cap: while the token bucket (``run.uplink``) holds messages back, results, status and heartbeats overtake
queued crops (``URGENT_KINDS``), and messages are read one at a time; a held-back message stays in the durable
outbox. The sender waits on the publisher's condition variable, so ``close()``, a disconnect, a ``send()`` or an
ack that frees room in the window wakes it at once.
"""

from __future__ import annotations

import logging
import time
from typing import Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from edge_runtime.run.mqtt_session import BrokerSession
from edge_runtime.run.outbox import DROP_REJECTED
from edge_runtime.run.uplink import uplink_cost
from edge_runtime.types import MessageKind, OutMessage

__all__ = ["URGENT_KINDS", "OutboxSender"]

# The publisher's logger: one name for everything the MQTT connection says.
logger = logging.getLogger("edge_runtime.run.mqtt")

# Sent ahead of older crops while the uplink cap holds messages back.
URGENT_KINDS: Final[tuple[MessageKind, ...]] = ("status", "result", "heartbeat")
_EXPIRE_EVERY_S: Final = 60.0
_ACK_SYNC_S: Final = 0.5  # idle time after which the sender deletes acknowledged rows itself


class OutboxSender(BrokerSession):
    """The sender thread's loop and its publish step (see the module docstring)."""

    # Set by MqttPublisher.__init__, beside what BrokerSession declares.
    published: int
    _qos: int
    _restarting: bool

    def _run_sender(self) -> None:
        next_expire = 0.0
        # The uplink budget ran short last time: read one message at a time. A full batch held through
        # budget waits would pin up to max_inflight crops in memory and go stale (the outbox's byte cap
        # may evict them meanwhile, and a message counted as dropped would then still be sent).
        throttled = False
        while True:
            idle = False
            with self._cond:
                while not self._stopping and not self._can_send():
                    wait = next_expire - time.monotonic()
                    if wait <= 0:
                        break
                    # Acked rows are deleted by the next put; when none comes (the source ended, a quiet
                    # camera), delete them after a moment without work, so a crash resends none of them.
                    if not self._outbox.acks_pending:
                        self._cond.wait(min(wait, 5.0))
                    elif not self._cond.wait(min(wait, _ACK_SYNC_S)):
                        idle = True
                        break
                if self._stopping:
                    return
                room = self._max_inflight - len(self._inflight) if self._can_send() else 0
                if room:
                    self._more_pending = False
            if idle:
                self._outbox.sync_acks()
            if time.monotonic() >= next_expire:
                next_expire = time.monotonic() + _EXPIRE_EVERY_S
                try:
                    self._outbox.expire()
                except Exception:
                    logger.exception("MQTT: outbox expiry failed")
            if not room:
                continue
            limit = 1 if throttled else room
            try:
                # While the uplink is the bottleneck, small results, status and heartbeats overtake queued crops:
                # a store acts on results within seconds, a crop can wait. Order within each topic is kept,
                # and MQTT promises no order across topics anyway.
                batch = self._outbox.next_batch(limit, kinds=URGENT_KINDS) if throttled else []
                batch = batch or self._outbox.next_batch(limit)
                if len(batch) == limit:
                    with self._lock:
                        self._more_pending = True  # the batch was capped: there may be more
                throttled = False
                for i, msg in enumerate(batch):
                    # Only the first message of a batch waits for budget; the rest go back to the outbox
                    # untouched (never marked in flight) and are read again, one by one, when it allows.
                    admitted, waited = self._await_uplink(msg, block=i == 0)
                    throttled = throttled or waited or not admitted
                    if not admitted:
                        with self._lock:
                            self._more_pending = True
                        break
                    if not self._publish_one(msg):
                        # paho refused it without queueing it: give the connection state a moment
                        # to settle instead of spinning on the same message.
                        time.sleep(0.2)
                        break
            except Exception:
                # The sender must outlive a bad message or a transient failure; the outbox keeps the data.
                logger.exception("MQTT: sender error; retrying")
                time.sleep(1.0)
                with self._lock:
                    self._more_pending = True

    def _can_send(self) -> bool:
        return (
            self._connected and self._more_pending and not self._restarting and len(self._inflight) < self._max_inflight
        )

    def _await_uplink(self, msg: OutMessage, *, block: bool) -> tuple[bool, bool]:
        """(admitted, waited): whether the uplink budget lets ``msg`` go now, and whether it had to wait for it.

        Without ``block`` it never waits. Blocking, it waits until the budget allows, and gives up (not
        admitted) when stopping or when the connection is lost while waiting.
        """
        if not self._uplink.limited:
            return True, False
        cost = uplink_cost(msg)
        with self._cond:
            try:
                while not self._stopping:
                    wait = self._uplink.wait_needed_s(cost)
                    if wait <= 0:
                        return True, self._uplink.waiting
                    if not block or not self._connected:
                        return False, False
                    self._uplink.begin_wait()
                    # Not a spin: sleeps for the whole deficit unless close(), a disconnect, an ack or a
                    # send() wakes it, and each of those is an event, not a poll.
                    self._cond.wait(wait)
                return False, False
            finally:
                self._uplink.end_wait()

    def _publish_one(self, msg: OutMessage) -> bool:
        """Publish one outbox message; False when paho did not take it (it is pending again)."""
        cost = uplink_cost(msg)
        self._outbox.mark_inflight([msg.id])
        with self._lock:
            self._inflight.add(msg.id, cost)
        try:
            info = self._client.publish(msg.topic, msg.payload, qos=self._qos, retain=msg.retain)
        except ValueError as exc:  # invalid topic or payload: retrying cannot help
            logger.error("MQTT: dropping message %s: %s", msg.id, exc)
            with self._lock:
                self._inflight.discard(msg.id)
            self._outbox.drop(msg.id, DROP_REJECTED)
            return True
        # NO_CONN at QoS >= 1: paho queued it and sends it after the next CONNACK, so it is in flight.
        queued = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
            info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and self._qos > 0
        )
        if not queued:
            logger.warning("MQTT: publish of %s failed (%s); will retry", msg.id, mqtt.error_string(info.rc))
            with self._cond:
                self._inflight.discard(msg.id)
                self._more_pending = True
            self._outbox.release([msg.id])
            return False
        with self._lock:
            self.published += 1
            self._uplink.spend(cost)
            already = self._inflight.register(info.mid, msg.id)
        if already:  # its PUBACK overtook the registration (see run.mqtt_inflight)
            self._complete(msg.id, None)
        return True
