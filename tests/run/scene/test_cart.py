"""The cart scene's rules with the session bundle's real head: added, removed, sessions, contents, decisions."""

from __future__ import annotations

import numpy as np

from edge_runtime.profile.scene import CartConfig
from edge_runtime.run.scene.cart import CartScene, SceneEvent
from edge_runtime.run.scene.evidence import Evidence, observation_weight
from edge_runtime.types import Region
from tests.run.scene.conftest import RealHead

FPS = 10


class Feed:
    """Frames at 10 fps of hand-placed boxes, each carrying one SKU's real head input."""

    def __init__(self, real: RealHead, config: CartConfig) -> None:
        self.real = real
        self.scene = CartScene(config, real.decide, (640, 480))
        self.frame = 0
        self.events: list[SceneEvent] = []

    def step(self, objects: list[tuple[tuple[int, int, int, int], str]], frames: int = 1) -> list[SceneEvent]:
        new: list[SceneEvent] = []
        for _ in range(frames):
            regions = [Region(box=box) for box, _ in objects]
            feats = np.stack([self.real.inputs[sku] for _, sku in objects]) if objects else None
            decisions = self.real.decisions(feats) if feats is not None else []
            new += self.scene.update(self.frame, self.frame / FPS, regions, decisions, feats)
            self.frame += 1
        self.events += new
        return new

    @property
    def ts(self) -> float:
        return self.frame / FPS


def carried(x0: int, y: int, sku: str, frames: int) -> list[list[tuple[tuple[int, int, int, int], str]]]:
    """A product moved 25 px per frame: what a hand carrying it looks like."""
    return [[((x0 + 25 * k, y, 120, 150), sku)] for k in range(frames)]


def test_a_product_put_down_is_added_once_and_removed_when_it_is_gone(real_head: RealHead) -> None:
    a, b = sorted(real_head.inputs)[:2]
    feed = Feed(real_head, CartConfig(settle_s=0.5, gone_s=0.6, idle_timeout_s=60))
    for objs in carried(0, 50, a, 4):
        feed.step(objs)
    assert [e.type for e in feed.events] == ["session_start"]
    rest_a = ((100, 50, 120, 150), a)
    assert feed.step([rest_a], 5) == []  # still for 0.4 s: not yet
    added = feed.step([rest_a], 2)
    assert [e.type for e in added] == ["added"]
    event = added[0]
    assert event.decision is not None and event.track_id == 1
    own = real_head.decide(real_head.inputs[a])  # one SKU's inputs fused: its own decision
    assert (event.decision.sku, event.decision.route) == (own.sku, own.route)
    assert abs(event.decision.score - own.score) < 1e-4 and abs(event.decision.ood_score - own.ood_score) < 1e-4
    assert feed.step([rest_a], 20) == []  # lying there: no second event
    rest_b = ((400, 250, 120, 150), b)
    feed.step([rest_a, rest_b], 7)
    assert [e.type for e in feed.events].count("added") == 2
    contents = feed.scene.contents()
    assert sum(r["count"] for r in contents["items"]) + contents["unknown"] == 2
    feed.step([rest_b], 5)  # a is gone 0.5 s: occlusion grace
    assert [e.type for e in feed.events].count("removed") == 0
    removed = feed.step([rest_b], 3)
    assert [e.type for e in removed] == ["removed"] and removed[0].track_id == 1
    assert removed[0].session_id == event.session_id
    after = feed.scene.contents()
    assert sum(r["count"] for r in after["items"]) + after["unknown"] == 1


def test_a_hand_passing_through_adds_nothing(real_head: RealHead) -> None:
    a = sorted(real_head.inputs)[0]
    feed = Feed(real_head, CartConfig())
    for objs in carried(0, 100, a, 20):
        feed.step(objs)
    feed.step([], 10)
    assert [e.type for e in feed.events] == ["session_start"]


def test_sessions_by_trigger_and_by_idle_timeout(real_head: RealHead) -> None:
    a = sorted(real_head.inputs)[0]
    feed = Feed(real_head, CartConfig(settle_s=0.3, idle_timeout_s=2.0))
    rest = ((100, 50, 120, 150), a)
    feed.step([rest], 6)
    assert [e.type for e in feed.events] == ["session_start", "added"]
    first = feed.events[0].session_id
    ended = feed.scene.trigger("end", feed.ts, feed.frame)  # checkout
    assert [(e.type, e.reason, e.session_id) for e in ended] == [("session_end", "trigger", first)]
    assert feed.scene.contents() == {"items": [], "unknown": 0} and feed.scene.session_id is None
    started = feed.scene.trigger("start", feed.ts, feed.frame)
    assert [e.type for e in started] == ["session_start"] and started[0].session_id != first
    # The item left in the basket belongs to the ended session: taking it out is no removal in this one.
    out = feed.step([], 8)
    assert [e.type for e in out] == []
    idle = feed.step([], 15)  # 2 s without activity since the trigger
    assert [(e.type, e.reason) for e in idle] == [("session_end", "idle")]
    again = feed.step([((300, 300, 100, 100), a)])
    assert [e.type for e in again] == ["session_start"]


def test_finish_ends_the_session_with_final_decisions(real_head: RealHead) -> None:
    a = sorted(real_head.inputs)[0]
    feed = Feed(real_head, CartConfig(settle_s=0.2))
    feed.step([((100, 50, 120, 150), a)], 5)
    final = feed.scene.finish(feed.ts, feed.frame)
    assert [(e.type, e.reason) for e in final] == [("session_end", "stream ended")]
    assert len(feed.scene.ended) == 1 and feed.scene.ended[0][1].decision is not None


def test_evidence_is_the_quality_weighted_mean_and_keeps_the_best_single_frame(real_head: RealHead) -> None:
    a, b = sorted(real_head.inputs)[:2]
    fa, fb = real_head.inputs[a], real_head.inputs[b]
    ev = Evidence()
    da, db = real_head.decide(fa), real_head.decide(fb)
    ev.add(fa, observation_weight(still=True, partial=False), da, None)
    ev.add(fb, observation_weight(still=False, partial=True), db, np.zeros((4, 4, 3), np.uint8))
    w_still, w_poor = 1.0, observation_weight(still=False, partial=True)
    assert w_poor < w_still
    fused = ev.fused()
    assert fused is not None
    np.testing.assert_allclose(fused, (fa * w_still + fb * w_poor) / (w_still + w_poor), rtol=1e-5)
    assert ev.best_single == max((da, db), key=lambda d: d.score)
    decided = ev.decide(real_head.decide)
    assert decided is not None and decided == real_head.decide(fused) == ev.decision
    assert ev.since_decision == 0 and ev.crop is not None
