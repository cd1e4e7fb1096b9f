"""Reviewer feedback, from the wire to the per-class counters: validation, redelivery, attribution, counting.

``edge.feedback/1`` messages (``{"schema": "edge.feedback/1", "event_id": ..., "sku": ...}``) arrive on the
device's ``feedback`` topic. The publisher hands each payload over as bytes; ``FeedbackInbox`` validates it
(size, JSON, schema, field types and lengths), drops QoS 1 redeliveries, and passes the rest to ``FeedbackBook``,
which knows what was predicted for every event id it may name and counts the review. Every rejection, wherever it
happens, is counted once by reason in ``edge_feedback_rejected_total{reason}`` (``REJECT_REASONS``); nothing a
reviewer or an attacker sends can crash anything.

Feedback event ids
------------------
``event_id`` names what was reviewed:

* the ``id`` of an ``edge.unknown/1`` or ``edge.verify/1`` message: that object;
* ``"<results id>:<region index>"`` (``event_id_for_region``): region ``index`` (0-based, the order of
  ``regions``) of that results message; a bare ``"<results id>"`` is accepted when the frame had exactly one
  region (full-frame mode).

The prediction is the region's top-1 SKU (the nearest prototype, also for ``unknown``). The reviewer's ``sku``
equal to it counts ``edge_feedback_total{sku=<predicted>, outcome="correct"}``, any other catalogue SKU
``outcome="incorrect"``. Feedback is rejected when the event id is not known here (``unknown_event``: never
published by this process, or older than the last ``FEEDBACK_MEMORY`` events of its kind), when a bare results id
names a frame with several regions (``ambiguous_event``), or when the reviewer's SKU is not in the bundle's
catalogue (``unknown_sku``: label sets are fixed at build time; a new product goes into the catalogue and the next
bundle).

Threads: both classes are called from paho's network thread (dictionary lookups only) while the publish thread
remembers new events; each guards its state with its own lock.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from edge_runtime.run.messages import FEEDBACK_SCHEMA

__all__ = [
    "FEEDBACK_MEMORY",
    "MAX_FEEDBACK_BYTES",
    "REJECT_REASONS",
    "FeedbackBook",
    "FeedbackCounters",
    "FeedbackInbox",
    "FeedbackStats",
    "InvalidFeedback",
    "event_id_for_region",
    "parse_feedback",
]

log = logging.getLogger(__name__)

FEEDBACK_MEMORY: Final = 10_000  # results messages, and separately unknown/verify objects, that feedback can refer to
MAX_FEEDBACK_BYTES: Final = 64 * 1024
MAX_FEEDBACK_FIELD: Final = 256  # event ids and SKU codes are short; a megabyte "sku" is an attack or a bug
FEEDBACK_DEDUPE: Final = 4096  # recent feedback keys remembered to drop redeliveries
# What FeedbackBook rejects for (the event or the SKU is not one this device knows) ...
ATTRIBUTION_REASONS: Final = ("unknown_event", "unknown_sku", "ambiguous_event")
# ... and what FeedbackInbox rejects for (the message itself is malformed, or handing it on failed).
VALIDATION_REASONS: Final = (
    "oversize",
    "invalid_json",
    "not_object",
    "missing_field",
    "wrong_schema",
    "wrong_type",
    "invalid_value",
    "callback_error",
)
REJECT_REASONS: Final = ATTRIBUTION_REASONS + VALIDATION_REASONS  # the metric's label set, declared at start


def event_id_for_region(results_id: str, index: int) -> str:
    """The feedback ``event_id`` of region ``index`` of a results message."""
    return f"{results_id}:{index}"


class FeedbackCounters(Protocol):
    """Where feedback is counted for Prometheus (``RunMetrics`` is one)."""

    def count_feedback(self, predicted_sku: str, correct: bool) -> None: ...

    def reject_feedback(self, reason: str) -> None: ...


class InvalidFeedback(ValueError):
    """A feedback payload that is not a valid ``edge.feedback/1`` message; ``reason`` is its metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_feedback(payload: bytes | bytearray) -> dict[str, Any]:
    """The feedback object in ``payload``; InvalidFeedback says why when it is not a valid one."""
    if len(payload) > MAX_FEEDBACK_BYTES:
        raise InvalidFeedback("oversize", f"{len(payload)} bytes > {MAX_FEEDBACK_BYTES}")
    try:
        data = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidFeedback("invalid_json", str(exc)[:200]) from None
    if not isinstance(data, dict):
        raise InvalidFeedback("not_object", f"top level is {type(data).__name__}")
    missing = [k for k in ("schema", "event_id", "sku") if k not in data]
    if missing:
        raise InvalidFeedback("missing_field", f"missing {', '.join(missing)}")
    if data["schema"] != FEEDBACK_SCHEMA:
        raise InvalidFeedback("wrong_schema", f"schema {str(data['schema'])[:64]!r}, expected {FEEDBACK_SCHEMA!r}")
    for field in ("event_id", "sku"):
        value = data[field]
        if not isinstance(value, str):
            raise InvalidFeedback("wrong_type", f"{field} is {type(value).__name__}, expected a string")
        if not value or len(value) > MAX_FEEDBACK_FIELD:
            raise InvalidFeedback("invalid_value", f"{field} is empty or longer than {MAX_FEEDBACK_FIELD} chars")
    return data


@dataclass(frozen=True)
class FeedbackStats:
    """Totals since start: valid messages handed on, redeliveries dropped, rejections by reason."""

    received: int
    duplicates: int
    rejected: dict[str, int]


class FeedbackInbox:
    """Validates raw feedback payloads, drops redeliveries and hands each valid message to ``deliver``.

    ``receive`` is the publisher's feedback callback. A rejected message, or one whose ``deliver`` raised
    (``callback_error``), is counted by reason here and in ``counters`` when given, and logged.
    """

    def __init__(
        self,
        deliver: Callable[[dict[str, Any]], None] | None = None,
        counters: FeedbackCounters | None = None,
    ) -> None:
        self._deliver = deliver
        self._counters = counters
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self._received = 0
        self._duplicates = 0
        self._rejected: dict[str, int] = {}

    def receive(self, payload: bytes | bytearray) -> None:
        """Handle one payload from the feedback topic; never raises."""
        try:
            data = parse_feedback(payload)
        except InvalidFeedback as exc:
            self._reject(exc.reason)
            log.warning("rejected feedback message (%s): %s", exc.reason, exc.detail)
            return
        # QoS 1 redelivers after a reconnect; counting one review twice would skew per-class accuracy.
        key: tuple[str, ...] = (data["id"],) if isinstance(data.get("id"), str) else (data["event_id"], data["sku"])
        with self._lock:
            if key in self._seen:
                self._duplicates += 1
                return
            self._seen[key] = None
            if len(self._seen) > FEEDBACK_DEDUPE:
                self._seen.popitem(last=False)
            self._received += 1
        if self._deliver is None:
            return
        try:
            self._deliver(data)
        except Exception:
            self._reject("callback_error")
            log.exception("feedback handling failed for event %s", data["event_id"])

    def _reject(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1
        if self._counters is not None:
            self._counters.reject_feedback(reason)

    def stats(self) -> FeedbackStats:
        with self._lock:
            return FeedbackStats(received=self._received, duplicates=self._duplicates, rejected=dict(self._rejected))


class FeedbackBook:
    """Which SKU was predicted for each event id feedback may name (bounded; oldest forgotten first), and the
    count of every review: ``__call__`` takes a valid feedback message (FeedbackInbox's ``deliver``)."""

    def __init__(self, skus: list[str], counters: FeedbackCounters, memory: int = FEEDBACK_MEMORY) -> None:
        self._skus = frozenset(skus)
        self._counters = counters
        self._memory = memory
        self._lock = threading.Lock()
        self._frames: OrderedDict[str, tuple[str, ...]] = OrderedDict()  # results id -> top-1 SKU per region
        self._objects: OrderedDict[str, str] = OrderedDict()  # unknown/verify id -> top-1 SKU
        self.counted = Tally[str]()

    def remember_frame(self, results_id: str, top1: tuple[str, ...]) -> None:
        """Remember the top-1 SKU of each region of a results message (before it is sent)."""
        with self._lock:
            self._frames[results_id] = top1
            if len(self._frames) > self._memory:
                self._frames.popitem(last=False)

    def remember_object(self, message_id: str, top1: str) -> None:
        """Remember the top-1 SKU of an unknown or verify message (before it is sent)."""
        with self._lock:
            self._objects[message_id] = top1
            if len(self._objects) > self._memory:
                self._objects.popitem(last=False)

    def predicted(self, event_id: str) -> tuple[str | None, str]:
        """(predicted SKU, "") or (None, rejection reason)."""
        with self._lock:
            if event_id in self._objects:
                return self._objects[event_id], ""
            base, sep, index = event_id.rpartition(":")
            if sep and base in self._frames and index.isdigit():
                regions = self._frames[base]
                return (regions[int(index)], "") if int(index) < len(regions) else (None, "unknown_event")
            if event_id in self._frames:
                regions = self._frames[event_id]
                return (regions[0], "") if len(regions) == 1 else (None, "ambiguous_event")
        return None, "unknown_event"

    def __call__(self, feedback: dict[str, Any]) -> None:
        """Count one valid feedback message as correct or incorrect, or reject it (dictionary lookups only)."""
        event_id, sku = str(feedback["event_id"]), str(feedback["sku"])
        predicted, reason = self.predicted(event_id)
        if predicted is not None and sku not in self._skus:
            predicted, reason = None, "unknown_sku"
        if predicted is None:
            self._counters.reject_feedback(reason)
            self.counted[reason] += 1
            log.info("feedback for %s rejected: %s", event_id[:80], reason)
            return
        correct = sku == predicted
        self._counters.count_feedback(predicted, correct)
        self.counted["correct" if correct else "incorrect"] += 1
