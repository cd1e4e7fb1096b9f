"""The MQTT publisher of edge-run: drains the durable outbox to the broker at QoS 1, receives feedback.

Flow: ``send()`` stores a message in the outbox (``send_many()`` a frame's messages in one transaction) and
wakes the sender thread (``run.mqtt_sender``); the sender publishes pending messages while connected, at most
``max_inflight`` awaiting a PUBACK; ``on_publish`` (the PUBACK) is the only place a message is acked and leaves
the outbox. Delivery is at-least-once: consumers drop duplicates by the ``id`` inside every JSON payload.

Reconnects: paho retries a lost connection after a wait that doubles from ``reconnect_min_s`` up to
``reconnect_max_s`` (1 and 5 s: a LAN broker). ``retry_promptly()`` (edge-run's drain) switches to a retry
every ``DRAIN_RETRY_S``, restarting paho's network thread when it is asleep in a longer wait.

Across a broker outage, paho keeps every unacknowledged QoS 1 publish in memory and retransmits it
(DUP flag, same mid) right after the next CONNACK, so in-flight messages stay in flight under their
mids instead of being released and published a second time (which would double the traffic after
every outage and the in-flight count with it). Across a process restart the in-flight marks are gone
and the outbox makes every stored message pending again.

Status: ``{prefix}/{device}/status`` holds a retained ``online`` published on every connect (directly,
not through the outbox: it describes the connection, so replaying an old one would be wrong), a
retained ``offline`` last will set before every connect with a fresh id, and a retained ``offline``
published by ``close()``.

Uplink cap: with ``uplink_bytes_per_s`` set, a token bucket (``run.uplink``) holds the sender back
so that payload plus topic bytes stay at the cap on average. A held-back message simply stays in the
durable outbox: the cap delays, it never drops.

Feedback: every message on ``{prefix}/{device}/feedback`` is handed, as bytes, to the callback given to
``on_feedback()`` (``run.feedback`` validates, deduplicates and counts it). paho's callbacks (connect,
refusals, disconnects, PUBACKs, feedback) and the ack path live in ``run.mqtt_session``; TLS, the credentials
file and which CONNACK refusals are fatal in ``run.mqtt_auth``; which messages are in flight under which mid,
in ``run.mqtt_inflight``.

Threads: paho's network thread runs every callback; the sender thread publishes. Every callback
catches its own exceptions: an exception escaping into paho would end its network thread.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_runtime.errors import UsageError
from edge_runtime.run.messages import TOPICS, encode_json
from edge_runtime.run.mqtt_auth import MqttAuthError, read_credentials, tls_context
from edge_runtime.run.mqtt_inflight import InflightLedger
from edge_runtime.run.mqtt_sender import URGENT_KINDS, OutboxSender
from edge_runtime.run.outbox import Outbox, OutboxStats
from edge_runtime.run.publisher import PublisherStats
from edge_runtime.run.uplink import Uplink
from edge_runtime.types import MessageKind, OutMessage

if TYPE_CHECKING:
    from edge_runtime.profile import DeviceProfile

__all__ = ["DRAIN_RETRY_S", "RECONNECT_MAX_S", "RECONNECT_MIN_S", "URGENT_KINDS", "MqttPublisher"]

logger = logging.getLogger(__name__)

# paho doubles the wait after each failed connection attempt, from the minimum up to the maximum. A device talks
# to a broker on its own LAN: 5 s at most puts it back within seconds of a broker restart, and even a hundred
# devices retrying every 5 s are 20 connection attempts a second, nothing for a broker that is up again.
RECONNECT_MIN_S: Final = 1.0
RECONNECT_MAX_S: Final = 5.0
# While edge-run drains (the run is over, only the outbox is left), a lost connection is retried this often.
DRAIN_RETRY_S: Final = 0.5


class MqttPublisher(OutboxSender):
    """Publishes the outbox to ``{prefix}/{device_id}/...`` at QoS 1 and hands feedback to a callback: the
    ``run.publisher.Publisher`` edge-run uses.

    Use: ``start()``, then ``wait_connected()`` (False with ``fatal_error`` set means the broker refused
    us for good: exit; False without it means the broker is not reachable yet, which is fine: messages
    wait in the outbox), ``send()`` from the pipeline, ``close()`` at shutdown. The outbox is the caller's:
    it is neither opened nor closed here.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        device_id: str,
        outbox: Outbox,
        prefix: str = "edge",
        keepalive_s: int = 30,
        qos: int = 1,
        client_id: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        credentials_file: str | None = None,
        max_inflight: int = 64,
        reconnect_min_s: float = RECONNECT_MIN_S,
        reconnect_max_s: float = RECONNECT_MAX_S,
        status_fields: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        uplink_bytes_per_s: int | None = None,
        uplink_burst_bytes: int | None = None,
    ) -> None:
        if not device_id or any(c in device_id for c in "/+#"):
            raise UsageError(f"invalid MQTT device id {device_id!r}", hint="use letters, digits, '.', '_' and '-'")
        if not prefix or any(c in prefix for c in "+#") or prefix.startswith("/") or prefix.endswith("/"):
            raise UsageError(f"invalid MQTT topic prefix {prefix!r}", hint="no '+', '#', nor a leading or trailing '/'")
        if qos not in (0, 1, 2):
            raise UsageError(f"invalid MQTT QoS {qos}", hint="use 1")
        if qos == 0:
            logger.warning("MQTT qos=0: a message is forgotten once written to the socket; an outage can lose it")
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        if uplink_bytes_per_s is not None and uplink_bytes_per_s <= 0:
            raise UsageError(f"invalid uplink cap {uplink_bytes_per_s} bytes/s", hint="use a positive number")
        if uplink_burst_bytes is not None and uplink_burst_bytes <= 0:
            raise ValueError("uplink_burst_bytes must be > 0")
        self._host = host
        self._port = port
        self._device_id = device_id
        self._prefix = prefix
        self._outbox = outbox
        self._qos = qos
        self._keepalive = keepalive_s
        self._max_inflight = max_inflight
        self._clock = clock
        self._status_fields = dict(status_fields or {})
        self.client_id = client_id or f"{prefix}-{device_id}"
        self._topics: dict[str, str] = {}  # name -> full topic, built once per name
        self._uplink = Uplink(uplink_bytes_per_s, uplink_burst_bytes)  # guarded by self._lock

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._inflight = InflightLedger()  # guarded by self._lock
        self._more_pending = True  # the outbox may hold messages not yet published
        self._connected = False
        self._ready = threading.Event()  # CONNACK ok and the feedback SUBACK arrived, or fatal
        self._fatal_error: str | None = None
        self._ever_connected = False
        self._stopping = False
        self._started = False
        self._closed = False
        self._feedback_mid: int | None = None
        self._feedback_cb: Callable[[bytes], None] | None = None
        self._topic_cbs: dict[str, Callable[[bytes], None]] = {}
        self._connect_fail_logged = float("-inf")
        self._flush_waiters = 0
        self._prompt_retry = False  # retry_promptly() was called
        self._restarting = False  # retry_promptly() is restarting paho's network thread: publish nothing
        self._connect_fails = 0

        self.connects = 0
        self.disconnects = 0
        self.published = 0
        self.acked = 0
        self.resent = 0
        self.send_rejected = 0

        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            # A persistent session: feedback published while we are offline is queued by the broker.
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        # Belt and braces: our callbacks catch everything, but an escaping exception must never end
        # paho's network thread.
        self._client.suppress_exceptions = True
        # Above our own cap so paho never queues behind its limit (plus the status publishes).
        self._client.max_inflight_messages_set(max_inflight + 8)
        # paho annotates the delays as int, but it sleeps on them as given; tests need sub-second ones.
        self._client.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)  # type: ignore[arg-type]
        context = tls_context(tls_ca_file, tls_cert_file, tls_key_file)
        if context is not None:
            self._client.tls_set_context(context)
            self._client.tls_insecure_set(False)  # the broker's host name is checked against its certificate
        if credentials_file:
            self._client.username_pw_set(*read_credentials(Path(credentials_file)))
        self._client.on_pre_connect = self._on_pre_connect
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._arm_will()
        self._sender = threading.Thread(target=self._run_sender, name=f"mqtt-sender-{device_id}", daemon=True)

    @classmethod
    def from_profile(
        cls,
        profile: DeviceProfile,
        outbox: Outbox,
        host: str | None = None,
        port: int | None = None,
        device_id: str | None = None,
        **kwargs: Any,
    ) -> MqttPublisher:
        """A publisher for the profile's ``[mqtt]`` section.

        Host, port and device id may be overridden, and so may ``uplink_bytes_per_s`` (None: unlimited).
        """
        m = profile.mqtt
        kwargs.setdefault("uplink_bytes_per_s", m.uplink_bytes_per_s)  # a caller may pass None: unlimited
        return cls(
            host=host or m.host,
            port=port or m.port,
            device_id=device_id or profile.mqtt_device_id,
            outbox=outbox,
            prefix=m.topic_prefix,
            keepalive_s=m.keepalive_s,
            qos=m.qos,
            tls_ca_file=m.tls_ca_file,
            tls_cert_file=m.tls_cert_file,
            tls_key_file=m.tls_key_file,
            credentials_file=m.credentials_file,
            **kwargs,
        )

    # ------------------------------------------------------------------ topics and sending

    def send(
        self,
        name: str,
        payload: Mapping[str, Any],
        kind: MessageKind | None = None,
        *,
        retain: bool = False,
    ) -> bool:
        """Store a JSON message for ``topic(name)`` in the outbox; True once it is durable.

        The message id is ``payload["id"]`` (a fresh uuid4 hex is inserted when absent); ``kind``
        defaults from the topic name (results -> result, unknown/verify -> crop, ...). False means it
        was dropped (counted by the outbox or in ``send_rejected``); it never raises for bad data.
        """
        msg = self._message(name, payload, kind, retain)
        return msg is not None and self.send_message(msg)

    def send_many(self, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> list[bool]:
        """``send`` for several ``(name, payload)`` messages (a frame's results and crops): stored in one outbox
        transaction, so one fsync makes them all durable. Per message, what ``send`` would return."""
        built = [self._message(name, payload, None, False) for name, payload in messages]
        ready = [m for m in built if m is not None]
        stored = iter(self._store(ready))
        return [m is not None and next(stored) for m in built]

    def send_message(self, msg: OutMessage) -> bool:
        """Store a ready-made message in the outbox and wake the sender."""
        return self._store([msg])[0]

    def _store(self, msgs: list[OutMessage]) -> list[bool]:
        if not msgs:
            return []
        stored = self._outbox.put_many(msgs)
        if any(stored):
            with self._cond:
                self._more_pending = True
                self._cond.notify_all()
        return stored

    def _message(
        self, name: str, payload: Mapping[str, Any], kind: MessageKind | None, retain: bool
    ) -> OutMessage | None:
        """The outbox message for ``payload`` on ``topic(name)``; None (counted, logged) when it is not JSON."""
        kind = kind or TOPICS.get(name)
        if kind is None:
            raise ValueError(f"no default kind for topic {name!r}; pass kind=")
        topic = self._topics.get(name) or self._topics.setdefault(name, self.topic(name))
        msg_id = payload.get("id")
        if not isinstance(msg_id, str) or not msg_id:
            msg_id = uuid.uuid4().hex
            payload = {**payload, "id": msg_id}
        try:
            data = encode_json(payload)
        except (TypeError, ValueError) as exc:
            with self._lock:
                self.send_rejected += 1
            logger.warning("not sending %s message %s: payload is not valid JSON (%s)", name, msg_id, exc)
            return None
        return OutMessage(id=msg_id, topic=topic, payload=data, kind=kind, created=self._clock(), retain=retain)

    # ------------------------------------------------------------------ lifetime

    def start(self) -> None:
        """Connect in the background; a broker that is not there yet is retried with backoff."""
        if self._started:
            return
        self._started = True
        logger.info(
            "MQTT: connecting to %s:%d as %s (topics %s/%s/...)",
            self._host,
            self._port,
            self.client_id,
            self._prefix,
            self._device_id,
        )
        self._client.connect_async(self._host, self._port, keepalive=self._keepalive)
        self._client.loop_start()
        self._sender.start()

    def wait_connected(self, timeout: float) -> bool:
        """True once connected and subscribed to feedback; False on timeout or a fatal refusal (see fatal_error)."""
        self._ready.wait(timeout)
        with self._lock:
            return self._connected and self._fatal_error is None and self._ready.is_set()

    @property
    def fatal_error(self) -> str | None:
        """Why the broker refused this client for good (bad credentials, not authorized); None otherwise."""
        with self._lock:
            return self._fatal_error

    def raise_if_fatal(self) -> None:
        """Raise MqttAuthError (exit code 7) when the broker refused this client for good."""
        error = self.fatal_error
        if error is not None:
            raise MqttAuthError(
                error, hint="check mqtt.credentials_file, the client certificate and the broker's ACL for this device"
            )

    @property
    def connected(self) -> bool:
        """Whether the broker has accepted the connection (CONNACK) and has not dropped it since."""
        with self._lock:
            return self._connected

    @property
    def inflight(self) -> int:
        """Outbox messages published and not yet acknowledged."""
        with self._lock:
            return len(self._inflight)

    def stats(self) -> PublisherStats:
        """A consistent snapshot of the delivery and uplink counters."""
        with self._lock:
            return PublisherStats(
                connected=self._connected,
                connects=self.connects,
                disconnects=self.disconnects,
                published=self.published,
                acked=self.acked,
                resent=self.resent,
                inflight=len(self._inflight),
                send_rejected=self.send_rejected,
                uplink_bytes_per_s=self._uplink.cap,
                uplink_bytes=self._uplink.bytes_sent,
                uplink_wait_s=self._uplink.wait_s(),
                uplink_waits=self._uplink.waits,
                uplink_throttled=self._uplink.waiting,
            )

    def outbox_stats(self) -> OutboxStats:
        """The outbox's depth, bytes and drops."""
        return self._outbox.stats()

    @property
    def outbox_path(self) -> Path:
        """The outbox's database file."""
        return self._outbox.path

    def on_feedback(self, callback: Callable[[bytes], None]) -> None:
        """Call ``callback(payload)`` for each message on the feedback topic (in paho's network thread: keep it
        quick, and validate it: ``run.feedback.FeedbackInbox.receive`` does both)."""
        self._feedback_cb = callback

    def on_topic(self, name: str, callback: Callable[[bytes], None]) -> None:
        """Subscribe to ``topic(name)`` from the next connect on and call ``callback(payload)`` for each message
        (a cart's session trigger); call before ``start()``. Same thread rules as ``on_feedback``."""
        self.topic(name)  # refuses wildcards and slashes
        self._topic_cbs[name] = callback

    def flush(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty and nothing is in flight; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._flush_waiters += 1  # acks wake us only while someone waits here
            try:
                while True:
                    if not self._inflight and self._outbox.depth == 0:
                        return True
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(min(remaining, 0.25))
            finally:
                self._flush_waiters -= 1

    def retry_promptly(self, every_s: float = DRAIN_RETRY_S) -> None:
        """From now on, retry a lost connection every ``every_s`` instead of after paho's doubling backoff.

        For the drain at shutdown: a broker that comes back within the drain timeout must find us at once, not
        after a wait that doubled through the outage. paho's network thread sleeps towards a target fixed when
        its wait began, so when the connection is down now the thread is restarted (it then retries within
        ``every_s``); a connection that is up keeps going, and its next loss is retried every ``every_s``.
        """
        with self._lock:
            if not self._started or self._closed or self._fatal_error is not None or self._prompt_retry:
                return
            self._prompt_retry = True
            connected = self._connected
            # Should the connection come back meanwhile, nothing new goes out: stopping paho's loop waits for
            # what is in flight on an open socket.
            self._restarting = not connected
        # paho annotates the delays as int, but it sleeps on them as given.
        self._client.reconnect_delay_set(min_delay=every_s, max_delay=every_s)  # type: ignore[arg-type]
        if connected:
            return
        logger.info("MQTT: draining; retrying the broker connection every %g s", every_s)
        try:
            self._client.loop_stop()  # within a second: paho's wait sleeps in steps of at most 1 s
            self._client.loop_start()
        finally:
            with self._cond:
                self._restarting = False
                self._cond.notify_all()

    def close(self, publish_offline: bool = True, timeout_s: float = 2.0) -> None:
        """Publish the retained offline status (when connected), disconnect and stop the threads.

        Unsent messages stay in the outbox for the next start; the outbox is not closed here (the caller owns it).
        """
        if self._closed:
            return
        self._closed = True
        with self._cond:
            throttled = self._uplink.waiting
            self._stopping = True
            self._cond.notify_all()  # ends a wait for uplink budget too
        if self._sender.is_alive():
            self._sender.join(timeout=timeout_s)
        if self._started and publish_offline and self.connected:
            try:
                info = self._client.publish(
                    self.topic("status"), self._status_payload("offline", reason="shutdown"), qos=1, retain=True
                )
                self._register(info.mid, None)
                info.wait_for_publish(timeout=timeout_s)
            except (RuntimeError, ValueError) as exc:
                logger.warning("MQTT: could not publish the offline status: %s", exc)
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
        with self._lock:
            unacked = self._inflight.take_all()
        # paho's copies of these die with this client: let a later publisher on the same outbox send them.
        self._outbox.release(unacked)
        left = self._outbox.depth
        if throttled and left:
            # Otherwise a drain timeout reads like a broker problem.
            logger.warning(
                "MQTT: the uplink cap (%d bytes/s) was holding messages back at shutdown; %d message(s) stay "
                "in the outbox %s and are sent first at the next start",
                self._uplink.cap,
                left,
                self._outbox.path,
            )
        logger.info("MQTT: closed (%d messages left in the outbox)", left)

    def __enter__(self) -> MqttPublisher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
