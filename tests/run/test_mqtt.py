"""The MQTT publisher against a real mosquitto: delivery, outages, status and will, feedback, auth, TLS, uplink cap."""

from __future__ import annotations

import json
import logging
import math
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_runtime.errors import EXIT_AUTH, UsageError
from edge_runtime.profile import load_profile
from edge_runtime.run.feedback import MAX_FEEDBACK_BYTES, FeedbackInbox
from edge_runtime.run.mqtt import MqttPublisher
from edge_runtime.run.mqtt_auth import MqttAuthError
from edge_runtime.run.outbox import OUTBOX_FILENAME, Outbox
from edge_runtime.run.startup import instance_device_id
from tests.broker import Collector, Mosquitto, make_tls_files

REPO = Path(__file__).resolve().parents[2]
DEVICE = "cam-1"


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "state" / OUTBOX_FILENAME, max_bytes=16 << 20, ttl_s=3600)
    yield box
    box.close()


@pytest.fixture
def make_publisher(outbox: Outbox) -> Iterator[Callable[..., MqttPublisher]]:
    made: list[MqttPublisher] = []

    def make(broker: Mosquitto, **kwargs: Any) -> MqttPublisher:
        options: dict[str, Any] = {"host": broker.host, "port": broker.port, "device_id": DEVICE, "outbox": outbox}
        options.update(kwargs)
        publisher = MqttPublisher(**options)
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        publisher.close(publish_offline=False, timeout_s=1.0)


def result(i: int) -> dict[str, Any]:
    return {"schema": "edge.results/1", "id": f"res-{i:05d}", "device_id": DEVICE, "frame_id": i, "regions": []}


def send_results(publisher: MqttPublisher, numbers: range) -> set[str]:
    for i in numbers:
        assert publisher.send("results", result(i))
    return {f"res-{i:05d}" for i in numbers}


def test_topics_and_payload_checks(outbox: Outbox) -> None:
    publisher = MqttPublisher(host="127.0.0.1", port=1, device_id=DEVICE, outbox=outbox, prefix="store7")
    assert publisher.topic("results") == "store7/cam-1/results"
    with pytest.raises(ValueError):
        publisher.topic("a/b")
    assert not publisher.send("results", {"schema": "edge.results/1", "score": math.nan})  # NaN is not JSON
    assert publisher.stats().send_rejected == 1
    assert publisher.send("heartbeat", {"schema": "edge.heartbeat/1", "fps": 12.5})  # id added when absent
    (stored,) = outbox.next_batch(5)
    assert stored.kind == "heartbeat" and stored.topic == "store7/cam-1/heartbeat"
    assert json.loads(stored.payload)["id"] == stored.id
    with pytest.raises(UsageError):
        MqttPublisher(host="h", port=1, device_id="bad/id", outbox=outbox)
    publisher.close()  # never started: nothing to do, no error


@pytest.mark.integration
def test_delivers_every_result_and_empties_the_outbox(
    mosquitto: Mosquitto, make_publisher: Callable[..., MqttPublisher], outbox: Outbox
) -> None:
    collector = Collector(mosquitto.host, mosquitto.port, f"edge/{DEVICE}/results")
    publisher = make_publisher(mosquitto)
    publisher.start()
    assert publisher.wait_connected(10), mosquitto.log_tail()
    expected = send_results(publisher, range(300))
    assert publisher.flush(20)
    assert collector.wait_ids(expected, 10)
    ids = collector.ids()
    assert set(ids) == expected  # no strangers; duplicates would be legal but none happen without an outage
    assert outbox.stats().depth == 0 and outbox.stats().bytes == 0
    stats = publisher.stats()
    assert (stats.published, stats.acked, stats.inflight, stats.connects) == (300, 300, 0, 1)
    assert [p["frame_id"] for p in collector.payloads()] == list(range(300))  # sent oldest first
    collector.close()


@pytest.mark.integration
def test_broker_absent_at_start_then_everything_is_delivered(
    mosquitto_factory: Callable[..., Mosquitto], make_publisher: Callable[..., MqttPublisher], outbox: Outbox
) -> None:
    broker = mosquitto_factory(persistence=True)
    broker.start()
    # A persistent subscriber: the broker keeps its subscription across the restart and queues for it.
    collector = Collector(broker.host, broker.port, f"edge/{DEVICE}/results", client_id="sub-a", clean_session=False)
    broker.stop()

    publisher = make_publisher(broker, reconnect_min_s=0.25)  # paho's first retry waits 3x the minimum
    publisher.start()
    expected = send_results(publisher, range(50))
    assert not publisher.wait_connected(0.3)
    assert publisher.fatal_error is None  # absent is not fatal: keep trying
    assert outbox.depth == 50

    broker.start()
    assert publisher.flush(20), broker.log_tail()
    assert collector.wait_ids(expected, 10)
    assert publisher.stats().connects == 1
    collector.close()


@pytest.mark.integration
def test_broker_restart_mid_stream_loses_nothing(
    mosquitto_factory: Callable[..., Mosquitto], make_publisher: Callable[..., MqttPublisher], outbox: Outbox
) -> None:
    broker = mosquitto_factory(persistence=True)
    broker.start()
    collector = Collector(broker.host, broker.port, f"edge/{DEVICE}/results", client_id="sub-b", clean_session=False)
    publisher = make_publisher(broker, reconnect_min_s=0.25)  # paho's first retry waits 3x the minimum
    publisher.start()
    assert publisher.wait_connected(10)

    expected = send_results(publisher, range(0, 150))
    broker.stop()  # while the first batch is still streaming out
    expected |= send_results(publisher, range(150, 250))
    broker.start()
    expected |= send_results(publisher, range(250, 400))

    assert publisher.flush(30), broker.log_tail()
    assert collector.wait_ids(expected, 15)
    ids = collector.ids()
    assert set(ids) == expected
    stats = publisher.stats()
    assert stats.disconnects >= 1 and stats.connects >= 2
    assert stats.acked == 400
    assert outbox.depth == 0
    collector.close()


@pytest.mark.integration
def test_retained_status_online_then_offline_on_close(
    mosquitto: Mosquitto, make_publisher: Callable[..., MqttPublisher]
) -> None:
    publisher = make_publisher(mosquitto, status_fields={"bundle_id": "sha256:abc"})
    publisher.start()
    assert publisher.wait_connected(10)
    status = publisher.topic("status")
    collector = Collector(mosquitto.host, mosquitto.port, status)  # subscribes after the fact: sees the retained one
    assert collector.wait_for(lambda ps: len(ps) >= 1, 5)
    online = collector.messages[0]
    assert online.retain
    body = json.loads(online.payload)
    assert (body["schema"], body["state"], body["device_id"], body["bundle_id"]) == (
        "edge.status/1",
        "online",
        DEVICE,
        "sha256:abc",
    )
    assert body["ts"].endswith("Z") and body["id"]

    publisher.close()
    assert collector.wait_for(lambda ps: ps[-1]["state"] == "offline", 5)
    assert collector.payloads()[-1]["reason"] == "shutdown"
    collector.close()
    late = Collector(mosquitto.host, mosquitto.port, status)  # a newcomer learns the device is offline
    assert late.wait_for(lambda ps: len(ps) >= 1 and ps[0]["state"] == "offline", 5)
    late.close()


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from edge_runtime.run.mqtt import MqttPublisher
    from edge_runtime.run.outbox import Outbox

    port, state = int(sys.argv[1]), Path(sys.argv[2])
    publisher = MqttPublisher(host="127.0.0.1", port=port, device_id="cam-lwt",
                              outbox=Outbox(state / "outbox.sqlite3", 1 << 20, 3600), keepalive_s=5)
    publisher.start()
    if not publisher.wait_connected(10):
        sys.exit("not connected")
    time.sleep(60)
    """
)


@pytest.mark.integration
def test_last_will_marks_a_killed_process_offline(mosquitto: Mosquitto, tmp_path: Path) -> None:
    collector = Collector(mosquitto.host, mosquitto.port, "edge/cam-lwt/status")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(mosquitto.port), str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        online = collector.wait_for(lambda ps: any(p["state"] == "online" for p in ps), 15)
        if not online:
            child.kill()
            pytest.fail(f"child never came online: {child.communicate(timeout=5)[1].decode(errors='replace')}")
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        assert collector.wait_for(lambda ps: ps[-1]["state"] == "offline", 5), mosquitto.log_tail()
        will = collector.payloads()[-1]
        assert (will["schema"], will["reason"], will["device_id"]) == ("edge.status/1", "connection_lost", "cam-lwt")
        assert collector.messages[-1].topic == "edge/cam-lwt/status"
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=5)
        collector.close()


@pytest.mark.integration
def test_feedback_is_validated_counted_and_delivered(
    mosquitto: Mosquitto, make_publisher: Callable[..., MqttPublisher]
) -> None:
    publisher = make_publisher(mosquitto)
    received: list[dict[str, Any]] = []

    def on_feedback(feedback: dict[str, Any]) -> None:
        if feedback["sku"] == "boom":
            raise RuntimeError("a broken callback must not take the network thread down")
        received.append(feedback)

    # What edge-run wires: the publisher hands every payload over, the inbox validates, dedupes and counts.
    inbox = FeedbackInbox(on_feedback)
    publisher.on_feedback(inbox.receive)
    publisher.start()
    assert publisher.wait_connected(10)

    def fb(**fields: Any) -> bytes:
        return json.dumps({"schema": "edge.feedback/1", **fields}).encode()

    good = fb(event_id="evt-1", sku="arla-standard-milk")
    messages = [
        good,
        good,  # a redelivery: dropped as a duplicate, not counted twice
        b"{not json",
        b"\xff\xfe\x00",
        b"[1, 2, 3]",
        json.dumps({"schema": "edge.results/1", "event_id": "e", "sku": "s"}).encode(),
        fb(event_id="evt-2"),
        fb(event_id="evt-3", sku=5),
        fb(event_id="", sku="x"),
        fb(event_id="evt-4", sku="x", note="n" * MAX_FEEDBACK_BYTES),
        fb(event_id="evt-5", sku="boom"),
        fb(event_id="evt-6", sku="oatly-oat-milk", reviewer="ana"),
    ]
    sender = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    sender.connect(mosquitto.host, mosquitto.port)
    sender.loop_start()
    for payload in messages:
        sender.publish(publisher.topic("feedback"), payload, qos=1).wait_for_publish(5)
    sender.disconnect()
    sender.loop_stop()

    expected_rejected = {
        "invalid_json": 2,
        "not_object": 1,
        "wrong_schema": 1,
        "missing_field": 1,
        "wrong_type": 1,
        "invalid_value": 1,
        "oversize": 1,
        "callback_error": 1,
    }
    deadline = time.monotonic() + 10
    # evt-6 arrives after the last rejected message: wait for both, not just the counters.
    while time.monotonic() < deadline and (inbox.stats().rejected != expected_rejected or len(received) < 2):
        time.sleep(0.02)
    stats = inbox.stats()
    assert stats.rejected == expected_rejected
    assert [(f["event_id"], f["sku"]) for f in received] == [
        ("evt-1", "arla-standard-milk"),
        ("evt-6", "oatly-oat-milk"),
    ]
    assert stats.duplicates == 1
    assert stats.received == 3  # evt-1, evt-5 (its callback failed), evt-6
    assert publisher.connected  # the network thread survived all of it


@pytest.mark.integration
def test_refused_credentials_are_fatal_not_retried(
    mosquitto_factory: Callable[..., Mosquitto], make_publisher: Callable[..., MqttPublisher], tmp_path: Path
) -> None:
    broker = mosquitto_factory(passwords={"edge": "s3cret:with colon"})
    broker.start()
    bad = tmp_path / "bad.cred"
    bad.write_text("edge:wrong\n")
    bad.chmod(0o600)
    publisher = make_publisher(broker, credentials_file=str(bad), reconnect_min_s=0.1, reconnect_max_s=0.2)
    started = time.monotonic()
    publisher.start()
    assert not publisher.wait_connected(10)
    assert time.monotonic() - started < 3
    assert publisher.fatal_error is not None and "Not authorized" in publisher.fatal_error
    assert "wrong" not in publisher.fatal_error
    with pytest.raises(MqttAuthError) as info:
        publisher.raise_if_fatal()
    assert info.value.exit_code == EXIT_AUTH
    time.sleep(0.6)  # several reconnect delays: a retrying client would have knocked again by now
    assert broker.log_tail(200).count("not authorised") == 1, broker.log_tail()

    good = tmp_path / "good.cred"
    good.write_text("edge\ns3cret:with colon\n")  # the two-line form keeps a ':' in the password
    good.chmod(0o600)
    publisher.close(publish_offline=False)
    ok = make_publisher(broker, credentials_file=str(good), client_id="edge-cam-1-ok")
    ok.start()
    assert ok.wait_connected(10), broker.log_tail()
    assert ok.fatal_error is None


@pytest.mark.integration
def test_tls_with_a_private_ca(
    mosquitto_factory: Callable[..., Mosquitto], make_publisher: Callable[..., MqttPublisher], tmp_path: Path
) -> None:
    tls = make_tls_files(tmp_path / "pki")
    broker = mosquitto_factory(tls=tls)
    broker.start()
    collector = Collector(broker.host, broker.port, f"edge/{DEVICE}/results", tls_ca=tls.ca)
    publisher = make_publisher(broker, tls_ca_file=str(tls.ca))
    publisher.start()
    assert publisher.wait_connected(10), broker.log_tail()
    expected = send_results(publisher, range(5))
    assert publisher.flush(10)
    assert collector.wait_ids(expected, 5)
    collector.close()
    with pytest.raises(UsageError, match="tls_ca_file"):
        make_publisher(broker, tls_ca_file=str(tmp_path / "missing-ca.pem"))


# ---------------------------------------------------------------------------- uplink cap


def crop_message(i: int, size: int) -> dict[str, Any]:
    return {"schema": "edge.unknown/1", "id": f"crop-{i:04d}", "frame_id": i, "crop": {"data": "A" * size}}


@pytest.mark.integration
def test_uplink_cap_paces_crops_through_a_real_broker_and_loses_none(
    mosquitto: Mosquitto, make_publisher: Callable[..., MqttPublisher], outbox: Outbox
) -> None:
    rate, n = 100_000, 30
    topic = f"edge/{DEVICE}/unknown"
    collector = Collector(mosquitto.host, mosquitto.port, topic)
    publisher = make_publisher(mosquitto, uplink_bytes_per_s=rate)  # default burst: one second's worth
    publisher.start()
    assert publisher.wait_connected(10), mosquitto.log_tail()
    expected: set[str] = set()
    total = 0
    started = time.monotonic()
    for i in range(n):
        body = crop_message(i, 10_000)
        assert publisher.send("unknown", body)
        expected.add(body["id"])
        total += len(json.dumps(body, separators=(",", ":")).encode()) + len(topic)
    assert publisher.flush(30), mosquitto.log_tail()
    assert collector.wait_ids(expected, 10)
    elapsed = time.monotonic() - started

    assert set(collector.ids()) == expected and outbox.depth == 0  # delayed, never dropped
    assert [p["frame_id"] for p in collector.payloads()] == list(range(n))  # still oldest first
    ideal = (total - rate) / rate  # the first burst is free, the rest goes at the cap (about 2 s here)
    assert ideal > 1.5
    assert elapsed >= 0.7 * ideal, f"{total} bytes in {elapsed:.2f} s at a cap of {rate} B/s"
    stats = publisher.stats()
    assert stats.uplink_bytes_per_s == rate and stats.uplink_bytes == total
    assert stats.uplink_waits > 0 and stats.uplink_wait_s >= 0.5 * ideal
    assert not stats.uplink_throttled
    collector.close()


@pytest.mark.integration
def test_results_overtake_queued_crops_while_the_uplink_is_throttled(
    mosquitto: Mosquitto, make_publisher: Callable[..., MqttPublisher], outbox: Outbox
) -> None:
    collector = Collector(mosquitto.host, mosquitto.port, f"edge/{DEVICE}/+")
    # 8 crops of 10 kB at 20 kB/s: about 3 s of backlog after the first second's burst.
    publisher = make_publisher(mosquitto, uplink_bytes_per_s=20_000)
    publisher.start()
    assert publisher.wait_connected(10), mosquitto.log_tail()
    crops = [crop_message(i, 10_000) for i in range(8)]
    for body in crops:
        assert publisher.send("unknown", body)
    assert collector.wait_for(lambda ps: len(ps) >= 1, 5)  # throttling has begun
    results = [{"schema": "edge.results/1", "id": f"res-{i}", "frame_id": 100 + i, "regions": []} for i in range(2)]
    for body in results:
        assert publisher.send("results", body)
    assert publisher.flush(20), mosquitto.log_tail()
    assert collector.wait_ids({b["id"] for b in crops + results}, 10)
    order = [p["id"] for p in collector.payloads()]
    # Both results went out before the crops that were still waiting; each topic kept its own order.
    assert order.index("res-1") < order.index(crops[-2]["id"])
    assert [i for i in order if i.startswith("res-")] == ["res-0", "res-1"]
    assert [i for i in order if i.startswith("crop-")] == [b["id"] for b in crops]
    collector.close()


@pytest.mark.integration
def test_close_while_throttled_is_prompt_and_keeps_the_rest_in_the_outbox(
    mosquitto: Mosquitto,
    make_publisher: Callable[..., MqttPublisher],
    outbox: Outbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = Collector(mosquitto.host, mosquitto.port, f"edge/{DEVICE}/unknown")
    # 10 kB messages at 1 kB/s: the first goes in debt, the next would wait about 10 s.
    slow = make_publisher(mosquitto, uplink_bytes_per_s=1_000)
    slow.start()
    assert slow.wait_connected(10), mosquitto.log_tail()
    expected = set()
    for i in range(5):
        body = crop_message(i, 10_000)
        assert slow.send("unknown", body)
        expected.add(body["id"])
    assert collector.wait_for(lambda ps: len(ps) >= 1, 5)
    assert not slow.flush(0.5)  # what a drain that runs out of time sees
    assert slow.stats().uplink_throttled
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="edge_runtime.run.mqtt"):
        slow.close(publish_offline=False)
    closing = time.monotonic() - started
    assert closing < 3.0, f"close() took {closing:.2f} s"  # not the 10 s the budget wait had left
    assert outbox.depth == 4
    assert any("uplink cap" in r.getMessage() and "stay in the outbox" in r.getMessage() for r in caplog.records)

    # The next start sends what the cap held back.
    fast = make_publisher(mosquitto, client_id="edge-cam-1-next")
    fast.start()
    assert fast.flush(10), mosquitto.log_tail()
    assert collector.wait_ids(expected, 5)
    collector.close()


def test_from_profile_passes_the_uplink_cap(outbox: Outbox) -> None:
    profile = load_profile("dev-cpu")
    capped = MqttPublisher.from_profile(profile, outbox)
    assert capped.stats().uplink_bytes_per_s == profile.mqtt.uplink_bytes_per_s == 250_000
    unlimited = MqttPublisher.from_profile(profile, outbox, uplink_bytes_per_s=None)
    assert unlimited.stats().uplink_bytes_per_s is None
    with pytest.raises(UsageError):
        MqttPublisher(host="h", port=1, device_id=DEVICE, outbox=outbox, uplink_bytes_per_s=0)


@pytest.mark.integration
def test_each_camera_of_a_multi_camera_profile_is_its_own_mqtt_client(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cart = load_profile("cart-v2")  # two cameras: systemd runs one edge-run per camera
    ids = [instance_device_id(cart, camera) for camera in cart.cameras]
    assert ids == [f"{cart.mqtt_device_id}-{camera.name}" for camera in cart.cameras]
    assert instance_device_id(cart, cart.cameras[0], "unit-7") == "unit-7"  # an explicit --device-id wins
    single = load_profile("dev-cpu")
    assert instance_device_id(single, single.cameras[0]) == single.mqtt_device_id

    def side_by_side(device_ids: list[str]) -> list[int]:
        """Disconnects each publisher suffered in 3 s next to the other."""
        boxes = [
            Outbox(tmp_path / f"{i}-{d}" / OUTBOX_FILENAME, max_bytes=1 << 20, ttl_s=60)
            for i, d in enumerate(device_ids)
        ]
        pubs = [
            MqttPublisher(host=mosquitto.host, port=mosquitto.port, device_id=d, outbox=b, reconnect_min_s=0.2)
            for d, b in zip(device_ids, boxes, strict=True)
        ]
        try:
            for p in pubs:
                p.start()
                assert p.wait_connected(10), mosquitto.log_tail()
            time.sleep(3.0)
            return [p.stats().disconnects for p in pubs]
        finally:
            for p in pubs:
                p.close(publish_offline=False, timeout_s=1.0)
            for b in boxes:
                b.close()

    # One id for both cameras: the broker drops whichever connected first each time the other (re)connects.
    assert sum(side_by_side([cart.mqtt_device_id] * 2)) >= 2
    assert side_by_side(ids) == [0, 0]
    statuses = Collector(mosquitto.host, mosquitto.port, "edge/+/status")
    assert statuses.wait_for(lambda ps: {p.get("device_id") for p in ps} >= set(ids), 5)
    statuses.close()


@pytest.mark.integration
def test_retry_promptly_reconnects_at_once_instead_of_after_the_doubled_backoff(
    mosquitto_factory: Callable[..., Mosquitto], make_publisher: Callable[..., MqttPublisher], outbox: Outbox
) -> None:
    # What edge-run's drain calls: the broker returns while paho sleeps through a backoff that doubled during the
    # outage. Delays here: 0.25, 0.5, 1, 2, 4 s, so attempts at about 0.25, 0.75, 1.75, 3.75, then 7.75 s.
    broker = mosquitto_factory(persistence=True)
    broker.start()
    collector = Collector(broker.host, broker.port, f"edge/{DEVICE}/results", client_id="sub-p", clean_session=False)
    publisher = make_publisher(broker, reconnect_min_s=0.25, reconnect_max_s=8.0)
    publisher.start()
    assert publisher.wait_connected(10)
    broker.stop()
    expected = send_results(publisher, range(40))
    time.sleep(4.0)  # after the attempt at ~3.75 s: paho's next one is ~4 s away
    broker.start()
    t0 = time.monotonic()
    publisher.retry_promptly(0.2)
    assert publisher.flush(2.5), "still waiting for paho's backoff"
    assert time.monotonic() - t0 < 2.5
    assert collector.wait_ids(expected, 10)
    assert publisher.stats().connects == 2 and outbox.depth == 0
    publisher.retry_promptly(0.2)  # once is enough: a second call changes nothing
    collector.close()
