"""edge-run with a cart scene end to end: a rendered cart session, the session bundle, a real mosquitto."""

from __future__ import annotations

import base64
import json
from typing import Any

import cv2
import numpy as np
import pytest

from edge_runtime.demo.cart_scenes import CartScenario, write_scenario_video
from tests.broker import Collector, Mosquitto
from tests.faultkit import Assets, rebundle
from tests.run.scene.conftest import run_to_broker

DEVICE = "cart-scene"
CART = {"kind": "cart", "cart": {"learn_frames": 15, "settle_s": 0.5, "gone_s": 0.6}}


@pytest.fixture(scope="module")
def cart_run(
    tiny_assets: Assets,
    cart_session: tuple[CartScenario, list[np.ndarray]],
    tmp_path_factory: pytest.TempPathFactory,
    session_mosquitto: Mosquitto,
) -> dict[str, Any]:
    """One edge-run of the session video with [scene] kind = "cart": what the broker got, live and retained."""
    work = tmp_path_factory.mktemp("cart-run")
    scenario, frames = cart_session
    video = write_scenario_video(scenario, work / "session", frames)
    bundle = rebundle(tiny_assets.bundle, work / "bundle", profile={"scene": CART})
    broker = session_mosquitto
    summary, messages = run_to_broker(bundle, video, work / "state", broker, DEVICE)
    assert summary.drained
    topics = [m.topic for m in messages]
    payloads = [json.loads(m.payload) for m in messages]
    late = Collector(broker.host, broker.port, f"edge/{DEVICE}/cart")  # subscribes after the run: retained only
    try:
        assert late.wait_for(lambda p: len(p) >= 1, timeout=5.0)
        retained = [(m.retain, json.loads(m.payload)) for m in late.messages]
    finally:
        late.close()
    return {"scenario": scenario, "summary": summary, "topics": topics, "payloads": payloads, "retained": retained}


@pytest.mark.integration
def test_a_cart_session_gives_events_and_contents_not_per_frame_results(cart_run: dict[str, Any]) -> None:
    scenario, summary, topics = cart_run["scenario"], cart_run["summary"], cart_run["topics"]
    assert summary.frames_processed == scenario.n_frames
    assert "results" not in summary.messages_by_topic and not any(t.endswith("/results") for t in topics)
    events = [(t, p) for t, p in zip(topics, cart_run["payloads"], strict=True) if t == f"edge/{DEVICE}/events"]
    kinds = [p["type"] for _, p in events]
    truth = [e.type for e in scenario.events]
    assert kinds[0] == "session_start" and kinds[-1] == "session_end"
    assert kinds.count("added") == truth.count("added") and kinds.count("removed") == truth.count("removed")
    session = {p["session_id"] for _, p in events}
    assert len(session) == 1 and None not in session
    for _, p in events:
        assert p["schema"] == "edge.event/1" and p["device_id"] == DEVICE and isinstance(p["frame_id"], int)
        assert set(p) >= {"id", "session_id", "type", "track_id", "sku", "route", "score", "ts"}
        if p["type"] in ("added", "removed"):
            assert isinstance(p["track_id"], int) and p["route"] in ("accept", "verify", "unknown")
            if p["route"] != "accept":  # reviewers get the track's best view
                jpeg = base64.b64decode(p["crop"]["data"])
                assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) is not None
    # Each added event is about the frame the product settled in (the truth's frame, plus settle_s).
    added_frames = [p["frame_id"] for _, p in events if p["type"] == "added"]
    truth_frames = [e.frame for e in scenario.events if e.type == "added"]
    assert all(t <= f <= t + 15 for f, t in zip(added_frames, truth_frames, strict=True))


@pytest.mark.integration
def test_the_cart_contents_are_retained_on_the_broker(cart_run: dict[str, Any]) -> None:
    carts = [p for t, p in zip(cart_run["topics"], cart_run["payloads"], strict=True) if t.endswith("/cart")]
    assert carts and all(p["schema"] == "edge.cart/1" for p in carts)
    during = max(carts[:-1], key=lambda p: sum(r["count"] for r in p["items"]) + p["unknown"])
    assert sum(r["count"] for r in during["items"]) + during["unknown"] == max(
        sum(1 for e in cart_run["scenario"].events[: i + 1] if e.type == "added")
        - sum(1 for e in cart_run["scenario"].events[: i + 1] if e.type == "removed")
        for i in range(len(cart_run["scenario"].events))
    )
    assert all(set(r) == {"sku", "name", "count", "route"} for r in during["items"])
    # The session ended with the stream: the retained state a late subscriber gets is the empty cart.
    (retain, last), *_ = cart_run["retained"]
    assert retain and last["schema"] == "edge.cart/1" and last["session_id"] is None and last["items"] == []
