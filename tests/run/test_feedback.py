"""Reviewer feedback without a broker: validation, redelivery, attribution and counting (the metrics they move are
checked end to end in test_pipeline.py, the wire in test_mqtt.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge_runtime.run.feedback import (
    MAX_FEEDBACK_BYTES,
    REJECT_REASONS,
    FeedbackBook,
    FeedbackInbox,
    InvalidFeedback,
    event_id_for_region,
    parse_feedback,
)
from edge_runtime.run.metrics import RunMetrics, sample_value


class Counters:
    """Records what would move the Prometheus counters."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[str, bool]] = []
        self.rejected: list[str] = []

    def count_feedback(self, predicted_sku: str, correct: bool) -> None:
        self.outcomes.append((predicted_sku, correct))

    def reject_feedback(self, reason: str) -> None:
        self.rejected.append(reason)


def fb(**fields: Any) -> bytes:
    return json.dumps({"schema": "edge.feedback/1", **fields}).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe\x00", "invalid_json"),
        (b"[1, 2, 3]", "not_object"),
        (json.dumps({"schema": "edge.feedback/1", "sku": "s"}).encode(), "missing_field"),
        (json.dumps({"schema": "edge.results/1", "event_id": "e", "sku": "s"}).encode(), "wrong_schema"),
        (fb(event_id="e", sku=5), "wrong_type"),
        (fb(event_id="", sku="s"), "invalid_value"),
        (fb(event_id="e" * 257, sku="s"), "invalid_value"),
        (fb(event_id="e", sku="s", note="n" * MAX_FEEDBACK_BYTES), "oversize"),
    ],
)
def test_parse_feedback_names_the_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidFeedback) as info:
        parse_feedback(payload)
    assert info.value.reason == reason and reason in REJECT_REASONS


def test_parse_feedback_keeps_extra_fields() -> None:
    data = parse_feedback(bytearray(fb(event_id="e" * 256, sku="milk", reviewer="ana")))  # 256: the longest allowed
    assert data == {"schema": "edge.feedback/1", "event_id": "e" * 256, "sku": "milk", "reviewer": "ana"}


def test_inbox_drops_redeliveries_counts_rejections_and_survives_its_consumer() -> None:
    counters = Counters()
    delivered: list[str] = []

    def deliver(feedback: dict[str, Any]) -> None:
        if feedback["sku"] == "boom":
            raise RuntimeError("broken consumer")
        delivered.append(feedback["event_id"])

    inbox = FeedbackInbox(deliver, counters)
    for payload in [
        fb(event_id="a", sku="milk"),
        fb(event_id="a", sku="milk"),  # the same review again, no id: a redelivery by (event_id, sku)
        fb(event_id="a", sku="juice"),  # another answer for the same event: not a duplicate
        fb(id="r1", event_id="b", sku="milk"),
        fb(id="r1", event_id="c", sku="juice"),  # the same message id: a redelivery whatever it says
        fb(event_id="d", sku="boom"),
        b"nope",
    ]:
        inbox.receive(payload)
    stats = inbox.stats()
    assert delivered == ["a", "a", "b"]
    assert (stats.received, stats.duplicates) == (4, 2)  # "d" was received; its consumer failed
    assert stats.rejected == {"callback_error": 1, "invalid_json": 1}
    assert counters.rejected == ["callback_error", "invalid_json"] and counters.outcomes == []


def test_book_attributes_regions_objects_and_counts_each_outcome() -> None:
    counters = Counters()
    book = FeedbackBook(["milk", "juice", "tea"], counters)
    book.remember_frame("two", ("milk", "juice"))
    book.remember_frame("one", ("tea",))
    book.remember_object("obj", "juice")

    assert book.predicted(event_id_for_region("two", 1)) == ("juice", "")
    assert book.predicted("two:2") == (None, "unknown_event")  # no third region
    assert book.predicted("two") == (None, "ambiguous_event")  # a bare id names a frame with two regions
    assert book.predicted("one") == ("tea", "")  # ... and is fine for a frame with one
    assert book.predicted("obj") == ("juice", "")
    assert book.predicted("never-published") == (None, "unknown_event")

    for event_id, sku in [("two:0", "milk"), ("two:1", "tea"), ("obj", "juice"), ("obj", "cola"), ("x", "milk")]:
        book({"event_id": event_id, "sku": sku})
    assert counters.outcomes == [("milk", True), ("juice", False), ("juice", True)]
    assert counters.rejected == ["unknown_sku", "unknown_event"]
    assert book.counted == {"correct": 2, "incorrect": 1, "unknown_sku": 1, "unknown_event": 1}


def test_book_forgets_the_oldest_events_of_each_kind() -> None:
    book = FeedbackBook(["milk"], Counters(), memory=2)
    for name in ("f1", "f2", "f3"):
        book.remember_frame(name, ("milk",))
    book.remember_object("o1", "milk")
    assert book.predicted("f1") == (None, "unknown_event")
    assert book.predicted("f2") == book.predicted("f3") == ("milk", "")
    assert book.predicted("o1") == ("milk", "")  # objects have their own memory


def test_every_reason_is_a_metric_series_from_the_start() -> None:
    metrics = RunMetrics(["milk"], memory_budget_mib=100)
    inbox = FeedbackInbox(FeedbackBook(["milk"], metrics), metrics)
    inbox.receive(b"[]")
    inbox.receive(fb(event_id="nothing", sku="milk"))
    text = metrics.render().decode()
    values = {r: sample_value(text, "edge_feedback_rejected_total", {"reason": r}) for r in REJECT_REASONS}
    assert values == {r: (1.0 if r in ("not_object", "unknown_event") else 0.0) for r in REJECT_REASONS}
