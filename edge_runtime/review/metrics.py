"""The collector's Prometheus metrics, on ``/metrics`` of the review server: queue depth, events in (stored,
duplicates, rejected by reason), feedback out, labels by kind, collector lag, crops evicted.

Label sets are fixed at start (every reason and kind declared at zero), as on the device, so a dashboard never
sees a series appear from nowhere.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from edge_runtime.review.intake import REJECT_REASONS
from edge_runtime.review.labels import LABEL_KINDS

__all__ = ["ReviewMetrics"]

STORE_REASONS = ("disk_full", "quota_full", "evicted_reviewed", "store_error")
LABEL_REJECT_REASONS = ("unknown_event", "already_labelled", "invalid_sku", "invalid_label", "bad_request")


class ReviewMetrics:
    def __init__(self, pending: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("edge_review_queue_depth", "Events waiting for a label", registry=r)
        self.queue_depth.set_function(pending)
        self.events_in = Counter("edge_review_events", "Events stored, by device route", ["kind"], registry=r)
        self.duplicates = Counter("edge_review_duplicates", "Redelivered events dropped by id", registry=r)
        self.rejected = Counter("edge_review_rejected", "Messages refused, by reason", ["reason"], registry=r)
        self.store_events = Counter("edge_review_store", "Crop storage events, by kind", ["kind"], registry=r)
        self.labels = Counter("edge_review_labels", "Events labelled, by action", ["kind"], registry=r)
        self.label_rejected = Counter(
            "edge_review_label_rejected", "Label requests refused, by reason", ["reason"], registry=r
        )
        self.feedback_out = Counter("edge_review_feedback", "edge.feedback/1 messages queued to devices", registry=r)
        self.lag = Histogram(
            "edge_review_lag_seconds",
            "Device time of an event to its storage by the collector",
            buckets=(0.1, 0.5, 1, 2, 5, 15, 60, 300, 1800, 3600, 6 * 3600, 24 * 3600),
            registry=r,
        )
        self.connected = Gauge("edge_review_mqtt_connected", "1 while the collector is connected", registry=r)
        for kind in ("unknown", "verify"):
            self.events_in.labels(kind)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for kind in STORE_REASONS:
            self.store_events.labels(kind)
        for kind in LABEL_KINDS:
            self.labels.labels(kind)
        for reason in LABEL_REJECT_REASONS:
            self.label_rejected.labels(reason)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
