"""The broker side of ``run.mqtt.MqttPublisher``: what runs on paho's network thread (connect, refusals,
disconnects, PUBACKs, the feedback subscription and its messages), the topic names, and how an acknowledged
message leaves the outbox.

``MqttPublisher`` (construction, the public API and the sender thread) inherits this class; the state both sides
share is declared here and set in ``MqttPublisher.__init__``. ``_lock`` guards it (``_cond`` is a condition on
the same lock, notified whenever the sender may have something to do). Every callback catches its own
exceptions: an exception escaping into paho would end its network thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_runtime.run.messages import FEEDBACK_TOPIC, status_payload
from edge_runtime.run.mqtt_auth import is_fatal_connack
from edge_runtime.run.mqtt_inflight import InflightLedger
from edge_runtime.run.outbox import DROP_REJECTED, Outbox
from edge_runtime.run.uplink import Uplink

__all__ = ["BrokerSession"]

# The publisher's logger: one name for everything the MQTT connection says.
logger = logging.getLogger("edge_runtime.run.mqtt")

_CONNECT_FAIL_LOG_INTERVAL_S: Final = 60.0


class BrokerSession:
    """paho's callbacks and the acknowledgement path of the MQTT publisher (see the module docstring)."""

    # Set by MqttPublisher.__init__.
    client_id: str
    connects: int
    disconnects: int
    acked: int
    resent: int
    _client: mqtt.Client
    _host: str
    _port: int
    _device_id: str
    _prefix: str
    _outbox: Outbox
    _clock: Callable[[], float]
    _status_fields: Mapping[str, Any]
    _uplink: Uplink
    _lock: threading.Lock
    _cond: threading.Condition
    _ready: threading.Event
    _inflight: InflightLedger
    _more_pending: bool
    _connected: bool
    _fatal_error: str | None
    _ever_connected: bool
    _stopping: bool
    _feedback_mid: int | None
    _feedback_cb: Callable[[bytes], None] | None
    _topic_cbs: dict[str, Callable[[bytes], None]]  # more subscribed topic names (a cart's session trigger)
    _connect_fail_logged: float
    _connect_fails: int
    _max_inflight: int
    _flush_waiters: int

    def topic(self, name: str) -> str:
        """``{prefix}/{device_id}/{name}``, e.g. topic('results')."""
        if not name or any(c in name for c in "/+#"):
            raise ValueError(f"invalid topic name {name!r}")
        return f"{self._prefix}/{self._device_id}/{name}"

    # ------------------------------------------------------------------ acknowledgements

    def _register(self, mid: int, msg_id: str | None) -> None:
        """Remember what ``mid`` is; if its PUBACK already arrived, complete it now."""
        with self._lock:
            already = self._inflight.register(mid, msg_id)
        if already and msg_id is not None:
            self._complete(msg_id, None)

    def _complete(self, msg_id: str, failure: ReasonCode | None) -> None:
        if failure is None:
            self._outbox.ack(msg_id)
        else:
            # Only MQTT v5 brokers refuse a publish in its PUBACK; resending would be refused again.
            logger.error("MQTT: broker refused message %s (%s); dropped", msg_id, failure)
            self._outbox.drop(msg_id, DROP_REJECTED)
        with self._cond:
            was_full = len(self._inflight) >= self._max_inflight
            self._inflight.discard(msg_id)
            self.acked += 1
            # Wake the sender only when it waits for room in the window, flush() only when it waits: a wake-up
            # per PUBACK costs both threads a GIL hand-over for nothing.
            if was_full or (self._flush_waiters and not self._inflight):
                self._cond.notify_all()

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _status_payload(self, state: str, **extra: Any) -> bytes:
        # Not in the will: the broker sends it later, so a time set now would be wrong.
        timed = state == "online" or extra.get("reason") == "shutdown"
        return status_payload(
            self._status_fields, device_id=self._device_id, state=state, ts=self._clock() if timed else None, **extra
        )

    def _arm_will(self) -> None:
        # A fresh id per connection: the broker fires a will once per lost connection, and consumers
        # that dedupe by id would drop the second outage's "offline" if the id were reused.
        self._client.will_set(
            self.topic("status"), self._status_payload("offline", reason="connection_lost"), qos=1, retain=True
        )

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        try:
            self._arm_will()
        except Exception:
            logger.exception("MQTT: could not set the last will")

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            self._handle_connect(flags, reason_code)
        except Exception:
            logger.exception("MQTT: error in on_connect")

    def _handle_connect(self, flags: mqtt.ConnectFlags, reason_code: ReasonCode) -> None:
        if reason_code.is_failure:
            name = str(reason_code)
            with self._lock:
                fatal = is_fatal_connack(reason_code) and not self._ever_connected
                if fatal:
                    self._fatal_error = f"MQTT broker {self._host}:{self._port} refused client {self.client_id}: {name}"
            if fatal:
                logger.error("%s; not retrying", self._fatal_error)
                self._ready.set()
                # Ends paho's retry loop: a refused login does not fix itself, and hammering the
                # broker with it can get the device banned.
                self._client.disconnect()
            else:
                # After a successful connection a refusal may be a broker-side change in progress:
                # keep retrying with backoff while the outbox holds the messages.
                logger.error("MQTT: broker %s:%d refused the connection: %s; retrying", self._host, self._port, name)
            return
        with self._cond:
            reconnect = self._ever_connected
            self._connected = True
            self._ever_connected = True
            self.connects += 1
            self._connect_fails = 0
            if reconnect:
                # paho retransmits these itself right after this callback (see the module docstring).
                self.resent += len(self._inflight)
                # Outside our control, but on the same link: new messages wait until it is paid for.
                self._uplink.spend(self._inflight.resend_bytes())
            self._more_pending = True
            self._cond.notify_all()
        logger.info("MQTT: connected to %s:%d (session present: %s)", self._host, self._port, flags.session_present)
        result, mid = self._client.subscribe(self.topic(FEEDBACK_TOPIC), qos=1)
        with self._lock:
            self._feedback_mid = mid if result == MQTTErrorCode.MQTT_ERR_SUCCESS else None
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            # Lost the connection again already; on_disconnect follows. Do not leave waiters hanging.
            logger.warning("MQTT: could not subscribe to feedback: %s", mqtt.error_string(result))
            self._ready.set()
        for name in list(self._topic_cbs):
            self._client.subscribe(self.topic(name), qos=1)
        info = self._client.publish(self.topic("status"), self._status_payload("online"), qos=1, retain=True)
        self._register(info.mid, None)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        try:
            self._connect_fails += 1
            now = time.monotonic()
            if now - self._connect_fail_logged >= _CONNECT_FAIL_LOG_INTERVAL_S:
                self._connect_fail_logged = now
                logger.warning(
                    "MQTT: cannot reach broker %s:%d (%d attempts so far); retrying with backoff, "
                    "messages wait in the outbox",
                    self._host,
                    self._port,
                    self._connect_fails,
                )
        except Exception:
            logger.exception("MQTT: error in on_connect_fail")

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            with self._cond:
                was_connected = self._connected
                self._connected = False
                if was_connected:
                    self.disconnects += 1
                if self._fatal_error is None:
                    self._ready.clear()
                self._cond.notify_all()
            if was_connected and not self._stopping:
                logger.warning(
                    "MQTT: disconnected from %s:%d (%s); %d messages in flight will be retransmitted on reconnect",
                    self._host,
                    self._port,
                    reason_code,
                    len(self._inflight),
                )
        except Exception:
            logger.exception("MQTT: error in on_disconnect")

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            with self._lock:
                # None also when the PUBACK overtook _register (publish() returned in the sender thread, the
                # ack was processed here first): the ledger keeps it and _register completes the message.
                msg_id = self._inflight.acked(mid)
            if msg_id is not None:
                self._complete(msg_id, reason_code if reason_code.is_failure else None)
        except Exception:
            logger.exception("MQTT: error in on_publish")

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        try:
            with self._lock:
                ours = mid == self._feedback_mid
            if not ours:
                return
            if any(rc.is_failure for rc in reason_codes):
                logger.error(
                    "MQTT: subscription to %s refused (%s); no feedback will arrive",
                    self.topic(FEEDBACK_TOPIC),
                    reason_codes,
                )
            self._ready.set()
        except Exception:
            logger.exception("MQTT: error in on_subscribe")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            callback = self._feedback_cb
            if message.topic == self.topic(FEEDBACK_TOPIC) and callback is not None:
                callback(bytes(message.payload))
            other = self._topic_cbs.get(message.topic.rsplit("/", 1)[-1])
            if other is not None and message.topic == self.topic(message.topic.rsplit("/", 1)[-1]):
                other(bytes(message.payload))
        except Exception:
            logger.exception("MQTT: error handling a message on %s", message.topic)
