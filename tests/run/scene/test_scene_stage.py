"""The scene stage between the head and the outbox: messages, session trigger, metrics, heartbeat; the trigger
topic through a real mosquitto."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.publish as mqtt_publish
from prometheus_client import CollectorRegistry

from edge_runtime.profile import DeviceProfile, load_profile
from edge_runtime.run.metrics import sample_value
from edge_runtime.run.mqtt import MqttPublisher
from edge_runtime.run.outbox import Outbox
from edge_runtime.run.regions import FullFrame
from edge_runtime.run.scene.messages import SCENE_TOPICS, SESSION_TOPIC
from edge_runtime.run.scene.proposals import BasketProposals
from edge_runtime.run.scene.stage import SceneStage, make_scene
from edge_runtime.types import Region
from tests.broker import Collector, Mosquitto
from tests.run.scene.conftest import RealHead


def cart_profile(**cart: Any) -> DeviceProfile:
    data = load_profile("dev-cpu").model_dump(mode="json")
    data["scene"] = {"kind": "cart", "cart": {"settle_s": 0.2, **cart}}
    return DeviceProfile.model_validate(data)


class Sink:
    """Where the stage's messages go in these tests: a list, as Stages.send would hand them to the outbox."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], bool]] = []

    def __call__(self, topic: str, payload: Mapping[str, Any], retained: bool) -> bool:
        assert topic in SCENE_TOPICS and json.dumps(payload, allow_nan=False)
        self.sent.append((topic, dict(payload), retained))
        return True


def test_frames_profiles_have_no_scene_and_keep_their_finder(real_head: RealHead) -> None:
    finder = FullFrame()
    stage, kept = make_scene(
        load_profile("dev-cpu"), real_head.head, (640, 480), device_id="d", registry=None, finder=finder
    )
    assert stage is None and kept is finder


def test_cart_stage_sends_events_and_retained_contents_and_takes_the_trigger(real_head: RealHead) -> None:
    registry = CollectorRegistry()
    stage, finder = make_scene(
        cart_profile(), real_head.head, (640, 480), device_id="cart-7", registry=registry, finder=FullFrame()
    )
    assert isinstance(stage, SceneStage) and isinstance(finder, BasketProposals)
    assert stage.needs_features and not stage.frames_published
    sink = Sink()
    stage.bind(sink)
    sku = sorted(real_head.inputs)[0]
    feats = real_head.inputs[sku][None, :]
    view = np.full((150, 120, 3), 90, np.uint8)
    for i in range(5):
        stage.on_frame(
            i, 100.0 + i / 10, [Region(box=(50, 50, 120, 150))], real_head.decisions(feats), feats, [view], None
        )
    kinds = [(t, p.get("type"), r) for t, p, r in sink.sent]
    assert kinds == [
        ("events", "session_start", False),
        ("cart", None, True),
        ("events", "added", False),
        ("cart", None, True),
    ]
    added = sink.sent[2][1]
    assert added["schema"] == "edge.event/1" and added["device_id"] == "cart-7" and added["track_id"] == 1
    assert (
        added["route"] in ("verify", "unknown") and added["crop"]["format"] == "jpeg"
    )  # the tiny head accepts nothing
    cart = sink.sent[3][1]
    assert cart["schema"] == "edge.cart/1" and cart["session_id"] == added["session_id"]
    assert sum(r["count"] for r in cart["items"]) + cart["unknown"] == 1
    beat = stage.heartbeat()
    assert beat["kind"] == "cart" and beat["live_tracks"] == 1 and beat["items"] == 1
    assert beat["events"] == {"session_start": 1, "added": 1}
    text = registry_text(registry)
    assert sample_value(text, "edge_scene_events_total", {"type": "added"}) == 1.0
    assert sample_value(text, "edge_scene_live_tracks") == 1.0

    stage.trigger(b'{"action": "end"}')  # checkout
    assert [(t, p.get("type"), p.get("reason")) for t, p, _ in sink.sent[4:]] == [
        ("events", "session_end", "trigger"),
        ("cart", None, None),
    ]
    assert sink.sent[-1][1]["items"] == [] and sink.sent[-1][1]["session_id"] is None
    for bad in (b"not json", b'{"action": "pause"}', b"[1, 2]", b"\xff\xfe"):
        stage.trigger(bad)
    assert stage.triggers_rejected == 4 and len(sink.sent) == 6


def registry_text(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def test_the_session_topic_reaches_the_subscriber_callback(tmp_path: Path, mosquitto: Mosquitto) -> None:
    got: list[bytes] = []
    arrived = threading.Event()

    def on_session(payload: bytes) -> None:
        got.append(payload)
        arrived.set()

    outbox = Outbox(tmp_path / "outbox.sqlite3", max_bytes=1 << 20, ttl_s=3600)
    publisher = MqttPublisher(host=mosquitto.host, port=mosquitto.port, device_id="cart-9", outbox=outbox)
    publisher.on_topic(SESSION_TOPIC, on_session)
    try:
        publisher.start()
        assert publisher.wait_connected(10)
        for _ in range(50):  # the subscription is made right after the connect: retry until it is in place
            mqtt_publish.single(
                "edge/cart-9/session", b'{"action": "start"}', hostname=mosquitto.host, port=mosquitto.port
            )
            if arrived.wait(0.1):
                break
        assert got and got[0] == b'{"action": "start"}'
        assert publisher.send("cart", {"schema": "edge.cart/1", "items": []}, "result", retain=True)
        assert publisher.flush(10)
    finally:
        publisher.close(publish_offline=False, timeout_s=1.0)
        outbox.close()
    late = Collector(mosquitto.host, mosquitto.port, "edge/cart-9/cart")
    try:
        assert late.wait_for(lambda p: len(p) == 1, timeout=5)
        assert late.messages[0].retain and late.payloads()[0]["schema"] == "edge.cart/1"
    finally:
        late.close()


def test_the_retained_shelf_state_follows_changes_no_slot_event_announces() -> None:
    """A facing emptying in a slot that stays present changes the shelf's body (filled facings, share) without a
    slot_changed event: the retained state must still follow, at most once a second, never every frame."""
    from edge_runtime.run.scene.shelf import ShelfScene
    from edge_runtime.run.scene.stage import SHELF_STATE_MIN_S
    from tests.run.scene.test_shelf import EXPECTED, FULL, SIZE, SKUS, config, shelf_frame

    sink = Sink()
    scene = ShelfScene(config(), SKUS, SIZE)
    stage = SceneStage(load_profile("dev-cpu"), cart=None, shelf=scene, device_id="shelf-1", metrics=None, send=sink)
    frames = [(shelf_frame(FULL, seed=i), EXPECTED) for i in range(6)]
    one_gone = [FULL[0], FULL[1], None]  # slot s2 keeps one of its two facings: still present
    frames += [(shelf_frame(one_gone, seed=10 + i), EXPECTED) for i in range(12)]
    for i, (image, decisions) in enumerate(frames):
        stage.on_frame(i, i * 0.25, [], decisions, None, None, image)
    shelf = [(payload, retained) for topic, payload, retained in sink.sent if topic == "shelf"]
    events = [payload for topic, payload, _ in sink.sent if topic == "events"]
    assert all(retained for _, retained in shelf)
    assert all(e["previous"] == "unknown" for e in events)  # only the first look; no slot changed state later
    first, last = shelf[0][0], shelf[-1][0]
    assert [s["facings"]["filled"] for s in first["slots"]] == [1, 2]
    assert [s["facings"]["filled"] for s in last["slots"]] == [1, 1] and last["slots"][1]["state"] == "present"
    # Sent at the start and when the body changed, with at least SHELF_STATE_MIN_S between refreshes.
    assert 2 <= len(shelf) <= 1 + len(frames) * 0.25 / SHELF_STATE_MIN_S
