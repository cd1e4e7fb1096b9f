"""edge-review's bad-input cases, for ``tests/integration/test_robustness.py`` (which runs them and tabulates them in
``docs/robustness.md``): a bad message, a full crop quota, a broker outage, a label for an event that does not
exist. Each case records a row through ``record(case, given, outcome, message)``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_runtime.review.auth import add_reviewer
from edge_runtime.review.collector import BrokerOptions
from edge_runtime.review.intake import parse_event
from edge_runtime.review.labels import apply_label
from edge_runtime.review.schema import open_engine
from edge_runtime.review.service import ServeOptions, start_server
from edge_runtime.review.store import ReviewStore
from tests.broker import Mosquitto

Record = Callable[[str, str, str, str], None]
USER, PASSWORD = "rob", "robustness-pass"


def _event(device: str, n: int, *, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed + n)
    ok, jpeg = cv2.imencode(".jpg", rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    assert ok
    return json.dumps(
        {
            "schema": "edge.unknown/1",
            "id": f"ev-{seed}-{n}",
            "device_id": device,
            "frame_id": n,
            "source_ref": f"{n}.jpg",
            "ts": "2026-12-01T10:00:00.000Z",
            "box": [0, 0, 48, 48],
            "ood_score": 0.9,
            "nearest": [["a", 0.5], ["b", 0.3]],
            "crop": {"format": "jpeg", "width": 48, "height": 48, "data": base64.b64encode(jpeg.tobytes()).decode()},
        }
    ).encode()


def _publish(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect(broker.host, broker.port)
    client.loop_start()
    for topic, payload in messages:
        client.publish(topic, payload, qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def check_review_robustness(work: Path, broker: Mosquitto, record: Record) -> None:
    """Run every case against a real collector (no bundle: no grouping needed here) and record what it did."""
    reviewers = work / "reviewers"
    add_reviewer(reviewers, USER, PASSWORD)
    crop_size = len(base64.b64decode(json.loads(_event("d", 0))["crop"]["data"]))
    opts = ServeOptions(
        db=f"sqlite:///{work / 'review.db'}",
        data=work / "data",
        reviewers=reviewers,
        broker=BrokerOptions(host=broker.host, port=broker.port, name="robust"),
        port=0,
        quota_mib=(2.5 * crop_size) / (1024 * 1024),  # room for two crops
    )
    # --- broker outage: the collector starts while the broker is down, and catches up once it is back.
    broker.stop()
    server = start_server(opts)
    try:
        page_up = _wait(lambda: server.store.pending_count() == 0, 1)
        broker.start()
        assert server.collector.wait_connected(20), "the collector never reconnected"
        _publish(broker, [("edge/rob-1/unknown", _event("rob-1", 1))])
        stored = _wait(lambda: server.store.has("ev-0-1"), 10)
        assert page_up and stored
        record(
            "broker down at start",
            "edge-review serve before mosquitto runs",
            "reconnects, then stores",
            "the page serves meanwhile; the collector retries with backoff and takes the queued messages after",
        )
        # --- bad messages: counted by reason, never fatal.
        bad = [
            ("invalid JSON", "{not json", "edge/rob-1/unknown", b"{not json", "invalid_json"),
            ("unknown schema", '"schema": "edge.results/1"', "edge/rob-1/unknown",
             _event("rob-1", 2).replace(b"edge.unknown/1", b"edge.results/1"), "unknown_schema"),
            ("oversized", "3 MiB payload", "edge/rob-1/unknown", b"x" * (3 * 1024 * 1024), "oversize"),
            ("crop not base64", '"crop": {"data": garbage + the JPEG\'s base64}', "edge/rob-1/unknown",
             _event("rob-1", 3).replace(b'"data": "', b'"data": "aGVsbG8', 1), "bad_crop"),
            ("device id not the topic's", '"device_id": "rob-1" on edge/rob-2/unknown', "edge/rob-2/unknown",
             _event("rob-1", 4), "invalid_value"),
            ("missing field", "no ood_score", "edge/rob-1/unknown",
             _event("rob-1", 5).replace(b'"ood_score"', b'"ood"'), "missing_field"),
        ]  # fmt: skip
        _publish(broker, [(topic, payload) for _, _, topic, payload, _ in bad])
        expected: dict[str, int] = {}
        for *_, reason in bad:
            expected[f"rejected_{reason}"] = expected.get(f"rejected_{reason}", 0) + 1

        def seen() -> dict[str, int]:
            counters = server.store.counters()
            return {k: counters.get(k, 0) for k in expected}

        _wait(lambda: seen() == expected, 10)
        counted = seen()
        for case, given, _, _, reason in bad:
            ok = counted[f"rejected_{reason}"] == expected[f"rejected_{reason}"]
            record(case, given, f"counted: {reason}" if ok else "not counted",
                   f'edge_review_rejected_total{{reason="{reason}"}} +1; the collector goes on')  # fmt: skip
        assert counted == expected
        # --- full crop quota: a reviewed crop is evicted first; with only pending ones left, the crop is not kept.
        _publish(broker, [("edge/rob-1/unknown", _event("rob-1", n)) for n in (10, 11)])
        assert _wait(lambda: server.store.has("ev-0-11"), 10)
        kept = {e.id: e.crop_sha for e in server.store.events(["ev-0-1", "ev-0-10", "ev-0-11"])}
        full_before = server.store.counters().get("quota_full", 0)
        assert full_before >= 1 and kept["ev-0-11"] is None  # two pending crops fill the quota
        record("crop quota full of pending crops", "--quota-mib for two crops, a third pending",
               "stored without its crop", "counted as quota_full; the event is kept and can be labelled")  # fmt: skip
        apply_label(server.store, ["ev-0-1"], "not_product", USER)
        _publish(broker, [("edge/rob-1/unknown", _event("rob-1", 12))])
        assert _wait(lambda: server.store.has("ev-0-12"), 10)
        evicted = server.store.counters().get("evicted_reviewed", 0)
        assert evicted == 1 and server.store.events(["ev-0-12"])[0].crop_sha is not None
        assert server.store.events(["ev-0-1"])[0].crop_sha is None
        record("crop quota full, a reviewed crop exists", "one crop labelled, then a new event",
               "oldest reviewed crop evicted", "counted as evicted_reviewed; the new crop is kept")  # fmt: skip
        # --- a label for an event the store never saw (a stale page, a forged form).
        client = server.app.test_client()
        client.post("/login", data={"user": USER, "password": PASSWORD})
        with client.session_transaction() as session:
            csrf = session["csrf"]
        answer = client.post("/label", data={"csrf": csrf, "event_ids": "no-such-event", "kind": "confirm", "sku": "a"})
        forged = client.post("/label", data={"csrf": "forged", "event_ids": "ev-0-10", "kind": "confirm", "sku": "a"})
        assert answer.status_code == 404 and b"no such event" in answer.data
        assert forged.status_code == 400 and server.store.events(["ev-0-10"])[0].label is None
        record("label for an unknown event", "POST /label event_ids=no-such-event", "refused: 404",
               'edge_review_label_rejected_total{reason="unknown_event"} +1; nothing changes')  # fmt: skip
        record("label without the page's token", "POST /label with a forged csrf field", "refused: 400",
               "stale or missing form token: reload the page; nothing changes")  # fmt: skip
    finally:
        server.stop()


def check_full_disk(work: Path, record: Record) -> bool:
    """The crop folder on a 1 MiB tmpfs that really fills up (root only; False when it cannot be mounted here)."""
    if os.geteuid() != 0:
        return False
    disk = work / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        return False
    try:
        store = ReviewStore(open_engine(f"sqlite:///{work / 'disk.db'}"), disk)  # the database is elsewhere
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 4096)
        stored = store.add_event(parse_event("edge/rob-1/unknown", _event("rob-1", 20)), None)
        lost = store.events(["ev-0-20"])[0].crop_sha is None and store.counters().get("disk_full") == 1
        filler.unlink()
        store.add_event(parse_event("edge/rob-1/unknown", _event("rob-1", 21)), None)
        recovered = store.events(["ev-0-21"])[0].crop_sha is not None
        store.engine.dispose()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    assert stored and lost and recovered
    record("crop disk full", "the --data folder on a full 1 MiB tmpfs", "stored without its crop",
           "one log line naming the fix; counted as disk_full; crops are kept again once there is room")  # fmt: skip
    return True
