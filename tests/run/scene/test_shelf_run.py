"""edge-run with a shelf scene end to end (the wiring: facings as regions, slot_changed events, the retained
edge.shelf/1): a rendered restock scenario, the session bundle, a real mosquitto."""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from typing import Any

import pytest

from edge_runtime.demo.shelf_scenes import SCENE_SIZE, shelf_scenarios, write_shelf_scenario
from edge_runtime.run.scene.stage import SHELF_STATE_MIN_S
from tests.broker import Collector, Mosquitto
from tests.faultkit import Assets, rebundle
from tests.run.scene.conftest import run_to_broker

DEVICE = "shelf-scene"


@pytest.mark.integration
def test_a_restock_gives_slot_events_and_a_retained_shelf(
    tiny_assets: Assets, tmp_path_factory: pytest.TempPathFactory, session_mosquitto: Mosquitto
) -> None:
    work = tmp_path_factory.mktemp("shelf-run")
    scenario = shelf_scenarios(seed=0, frames=40)[0]  # restock: slots emptied, refilled, refilled wrong
    video = write_shelf_scenario(scenario, work / "video")
    labels = json.loads(video.with_suffix(".labels.json").read_text())
    width, height = SCENE_SIZE
    shelf = {"slots": labels["slots"], "hold_frames": 2, "hold_s": 0.0}
    profile: dict[str, Any] = {
        "scene": {"kind": "shelf", "shelf": shelf},
        "cameras": [{"name": "shelf", "source": "", "width": width, "height": height, "fps": 10.0}],
    }
    bundle = rebundle(tiny_assets.bundle, work / "bundle", profile=profile)
    broker = session_mosquitto
    summary, messages = run_to_broker(bundle, video, work / "state", broker, DEVICE)
    topics = [m.topic.rsplit("/", 1)[-1] for m in messages]
    payloads = [json.loads(m.payload) for m in messages]
    assert summary.drained and summary.frames_processed == labels["frames"]
    facings = sum(slot.get("facings", 1) for slot in labels["slots"])
    assert summary.regions == facings * labels["frames"]  # every facing recognised every frame
    assert "results" not in topics
    events = [p for t, p in zip(topics, payloads, strict=True) if t == "events"]
    assert events and all(p["type"] == "slot_changed" and p["schema"] == "edge.event/1" for p in events)
    slot_ids = {s["id"] for s in labels["slots"]}
    for p in events:
        assert p["slot_id"] in slot_ids and p["state"] in ("present", "empty", "misplaced")
        assert set(p) >= {"id", "device_id", "session_id", "type", "track_id", "previous", "expected_sku", "ts"}
    shelves = [p for t, p in zip(topics, payloads, strict=True) if t == "shelf"]
    assert shelves and all(p["schema"] == "edge.shelf/1" and p["device_id"] == DEVICE for p in shelves)
    # At the start (where every slot's first state is an event too), once per changing frame, and when the body
    # changed without a slot event (a facing filled or emptied), at most once a SHELF_STATE_MIN_S of the video.
    changing = {p["ts"] for p in events}
    assert {p["ts"] for p in shelves} >= changing
    quiet = [datetime.fromisoformat(p["ts"].replace("Z", "+00:00")) for p in shelves if p["ts"] not in changing]
    assert all((b - a).total_seconds() >= SHELF_STATE_MIN_S - 1e-3 for a, b in itertools.pairwise(quiet))
    assert {s["id"] for s in shelves[-1]["slots"]} == slot_ids
    late = Collector(broker.host, broker.port, f"edge/{DEVICE}/shelf")
    try:
        assert late.wait_for(lambda p: len(p) == 1, timeout=5.0)
        assert late.messages[0].retain and late.payloads()[0]["id"] == shelves[-1]["id"]
    finally:
        late.close()
