"""The collector: a persistent MQTT session on the fleet's unknown and verify topics, and the feedback outbox.

Intake: ``$share/review/{prefix}/+/unknown`` and ``.../verify`` at QoS 1 with ``clean_session`` off, so the
broker keeps what arrives while the collector is down, and several collectors with the same share name split a
fleet's load (each message goes to one of them). Acknowledgements are manual: a message is PUBACKed only after
its event is committed (or refused and counted), so a collector killed mid-message gets it again, and the store
drops the redelivery by id.

Work happens on one worker thread, never on paho's network thread: parsing, embedding (tens of ms) and the
database write would otherwise stall keepalives.

Feedback: ``FeedbackSender`` wraps edge-run's own ``MqttPublisher`` (durable SQLite outbox, QoS 1, resend after
an outage) under a client id of its own, and addresses each message to ``{prefix}/{device}/feedback``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.exc import SQLAlchemyError

from edge_runtime.errors import UsageError
from edge_runtime.review.grouping import Embedder
from edge_runtime.review.intake import Rejected, parse_event
from edge_runtime.review.metrics import ReviewMetrics
from edge_runtime.review.store import ReviewStore
from edge_runtime.run.messages import FEEDBACK_SCHEMA, FEEDBACK_TOPIC, encode_json
from edge_runtime.run.mqtt import MqttPublisher
from edge_runtime.run.mqtt_auth import read_credentials, tls_context
from edge_runtime.run.outbox import Outbox
from edge_runtime.types import OutMessage

__all__ = ["SHARE_GROUP", "BrokerOptions", "Collector", "FeedbackSender"]

log = logging.getLogger(__name__)

SHARE_GROUP: Final = "review"
_QUEUE_MAX: Final = 1000  # messages received, not yet stored; paho's in-flight window is far smaller


@dataclass(frozen=True)
class BrokerOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "edge"
    name: str = "review"  # this collector's name: its client ids and its feedback outbox
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    credentials_file: str | None = None
    keepalive_s: int = 30


class Collector:
    """Subscribes, stores, acknowledges. ``start()``, ``close()``; ``processed`` counts messages handled."""

    def __init__(
        self, store: ReviewStore, embedder: Embedder | None, metrics: ReviewMetrics, broker: BrokerOptions
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.metrics = metrics
        self.broker = broker
        self.processed = 0
        self._queue: queue.Queue[tuple[str, bytes, int, int] | None] = queue.Queue(_QUEUE_MAX)
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"edge-review-{broker.name}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        self._client.suppress_exceptions = True
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        context = tls_context(broker.tls_ca_file, broker.tls_cert_file, broker.tls_key_file)
        if context is not None:
            self._client.tls_set_context(context)
            self._client.tls_insecure_set(False)
        if broker.credentials_file:
            self._client.username_pw_set(*read_credentials(Path(broker.credentials_file)))
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._worker = threading.Thread(target=self._work, name="review-collector", daemon=True)

    @property
    def topics(self) -> list[str]:
        return [f"$share/{SHARE_GROUP}/{self.broker.prefix}/+/{name}" for name in ("unknown", "verify")]

    def start(self) -> None:
        self._worker.start()
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking messages, finish the ones queued (their acks go out), disconnect."""
        self._stopping.set()
        self._queue.put(None)
        self._worker.join(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()

    # ------------------------------------------------------------------ paho's thread

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        try:
            if reason.is_failure:
                log.error("MQTT: the broker refused the collector: %s", reason)
                return
            # Connected means subscribed (on_subscribe): a redelivery from the broker needs the subscription, and
            # a collector that has never connected has no session on the broker yet.
            client.subscribe([(topic, 1) for topic in self.topics])
        except Exception:
            log.exception("MQTT: connect handling failed")

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any = None) -> None:
        refused = [str(r) for r in reasons if getattr(r, "is_failure", False)]
        if refused:
            log.error("MQTT: the broker refused the collector's subscriptions: %s", ", ".join(refused))
            return
        self._connected.set()
        self.metrics.connected.set(1)
        log.info("MQTT: collecting %s from %s:%d", ", ".join(self.topics), self.broker.host, self.broker.port)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        self._connected.clear()
        self.metrics.connected.set(0)
        if not self._stopping.is_set():
            log.warning("MQTT: collector disconnected (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        # A full queue blocks paho's thread: the broker then holds the rest, which is what we want.
        self._queue.put((message.topic, bytes(message.payload), message.mid, message.qos))

    # ------------------------------------------------------------------ the worker

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            topic, payload, mid, qos = item
            delay = 1.0
            while True:
                try:
                    self.handle(topic, payload)
                except SQLAlchemyError as exc:
                    # The database is down or its disk full: keep the message unacknowledged and retry. Meanwhile
                    # the queue fills, paho's thread blocks on it and the broker holds the rest: nothing is lost.
                    self.metrics.store_events.labels("store_error").inc()
                    log.error("cannot store a message from %s (%s); retrying in %.0f s", topic, exc, delay)
                    if self._stopping.wait(delay):
                        return  # unacknowledged: the broker redelivers it to the next collector
                    delay = min(delay * 2, 30.0)
                    continue
                except Exception:
                    log.exception("collector error on a message from %s", topic)
                    self.metrics.rejected.labels("invalid_value").inc()
                break
            if qos > 0:
                self._client.ack(mid, qos)
            self.processed += 1

    def handle(self, topic: str, payload: bytes) -> str:
        """Parse, embed and store one message: ``stored``, ``duplicate`` or the rejection reason."""
        try:
            event = parse_event(topic, payload, self.broker.prefix)
        except Rejected as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            self.store.count(f"rejected_{exc.reason}")
            log.warning("refused a message on %s (%s): %s", topic[:120], exc.reason, exc.detail)
            return exc.reason
        if self.store.has(event.id):
            self.metrics.duplicates.inc()
            return "duplicate"
        embedding = None
        if event.jpeg is not None and self.embedder is not None:
            embedding = self.embedder.embed(event.jpeg)
            if embedding is None:
                self.metrics.rejected.labels("bad_crop").inc()
                self.store.count("rejected_bad_crop")
                log.warning("event %s: its crop is not a decodable JPEG", event.id[:40])
                return "bad_crop"
        before = self.store.counters()
        stored = self.store.add_event(event, embedding)
        for name, value in self.store.counters().items():
            if name in ("disk_full", "quota_full", "evicted_reviewed") and value > before.get(name, 0):
                self.metrics.store_events.labels(name).inc(value - before.get(name, 0))
        if not stored:
            self.metrics.duplicates.inc()
            return "duplicate"
        self.metrics.events_in.labels(event.kind).inc()
        self.metrics.lag.observe(max(0.0, time.time() - event.device_time))
        return "stored"


class FeedbackSender:
    """Labels to devices: ``edge.feedback/1`` on ``{prefix}/{device}/feedback``, through a durable outbox."""

    def __init__(self, data_dir: Path, broker: BrokerOptions, metrics: ReviewMetrics | None = None) -> None:
        self.prefix = broker.prefix
        self.metrics = metrics
        # One outbox per collector name: collectors sharing a --data folder must not share one SQLite outbox.
        path = Path(data_dir) / f"feedback-outbox-{broker.name}.sqlite3"
        self.outbox = Outbox(path, max_bytes=64 * 1024 * 1024, ttl_s=7 * 86400)
        try:
            self.publisher = MqttPublisher(
                host=broker.host,
                port=broker.port,
                device_id=f"{broker.name}-feedback",
                outbox=self.outbox,
                prefix=broker.prefix,
                keepalive_s=broker.keepalive_s,
                client_id=f"edge-review-{broker.name}-feedback",
                tls_ca_file=broker.tls_ca_file,
                tls_cert_file=broker.tls_cert_file,
                tls_key_file=broker.tls_key_file,
                credentials_file=broker.credentials_file,
                reconnect_min_s=1.0,
                status_fields={"role": "edge-review"},
            )
        except UsageError:
            self.outbox.close()
            raise

    def start(self) -> None:
        self.publisher.start()

    def send(self, device_id: str, event_id: str, sku: str) -> bool:
        """Queue one feedback message durably; True once it is stored."""
        if not device_id or any(c in device_id for c in "/+#"):
            return False
        body = {"schema": FEEDBACK_SCHEMA, "id": uuid.uuid4().hex, "event_id": event_id, "sku": sku}
        msg = OutMessage(
            id=body["id"],
            topic=f"{self.prefix}/{device_id}/{FEEDBACK_TOPIC}",
            payload=encode_json(body),
            kind="result",  # ranks above crops in the outbox: a label is small and worth keeping
            created=time.time(),
        )
        stored = self.publisher.send_message(msg)
        if stored and self.metrics is not None:
            self.metrics.feedback_out.inc()
        return stored

    def flush(self, timeout_s: float) -> bool:
        return self.publisher.flush(timeout_s)

    def close(self) -> None:
        self.publisher.close(publish_offline=True)
        self.outbox.close()
