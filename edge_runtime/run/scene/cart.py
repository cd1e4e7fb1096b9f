"""The cart scene: tracks in the basket become ``added``/``removed`` events, sessions and the cart's contents.

Pure logic (no MQTT, no threads): ``CartScene.update`` takes one processed frame (its regions, the head's
decision and head input for each) and returns the events it caused; ``run.scene.stage`` turns them into
messages. Rules:

* an object is **added** once its track has stayed still for ``settle_s`` with its centre in the basket zone;
  the event carries the track's fused decision at that moment;
* an added object is **removed** when its track ends (unseen for ``gone_s``: lifted out, or carried out of
  view under a hand); the event carries the track's final decision;
* a **session** starts at the first activity (a new or moving track) after idle, or on a ``start`` trigger,
  and ends on an ``end`` trigger or after ``idle_timeout_s`` without activity; the contents start empty with
  every session, and objects still lying in the basket when a session ends belong to no later session.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edge_runtime.profile.scene import CartConfig
from edge_runtime.run.scene.evidence import Decide, Evidence, observation_weight
from edge_runtime.run.scene.tracker import Track, Tracker
from edge_runtime.types import Decision, Region

__all__ = ["CartItem", "CartScene", "SceneEvent"]

EventType = Literal["added", "removed", "session_start", "session_end"]


@dataclass(frozen=True)
class SceneEvent:
    """One cart event; ``decision`` and ``crop`` only for added/removed."""

    type: EventType
    ts: float
    frame_id: int
    session_id: str
    track_id: int | None = None
    decision: Decision | None = None
    box: tuple[int, int, int, int] | None = None
    crop: np.ndarray | None = field(default=None, repr=False)
    reason: str | None = None  # session_end: "trigger" | "idle" | "stream ended"


@dataclass
class CartItem:
    """An object counted in the session's contents."""

    track_id: int
    decision: Decision


@dataclass
class _Object:
    track: Track
    evidence: Evidence = field(default_factory=Evidence)
    added: bool = False
    session_id: str | None = None  # the session it was added in


class CartScene:
    """Tracks, track-level decisions, added/removed events and sessions of one basket camera."""

    def __init__(self, config: CartConfig, decide: Decide, frame_size: tuple[int, int]) -> None:
        self.config = config
        self.decide = decide
        width, height = frame_size
        self.zone = tuple(config.basket) if config.basket else (0, 0, width, height)
        self.tracker = Tracker(match_iou=config.match_iou, max_age_s=config.gone_s)
        self.objects: dict[int, _Object] = {}
        self.items: dict[int, CartItem] = {}  # track id -> item, the open session's contents
        self.session_id: str | None = None
        self.last_activity = float("-inf")
        self.events_total: Counter[str] = Counter()
        self.ended: list[tuple[int, Evidence]] = []  # (track id, evidence) of ended tracks, for evaluation

    # ---- per frame

    def update(
        self,
        frame_id: int,
        ts: float,
        regions: Sequence[Region],
        decisions: Sequence[Decision],
        features: np.ndarray | None,
        views: Sequence[np.ndarray] | None = None,
    ) -> list[SceneEvent]:
        """One processed frame: ``decisions[i]`` and ``features[i]`` (the head input) belong to ``regions[i]``;
        ``views[i]`` are its pixels (for event crops). Returns the events in the order they happened."""
        events: list[SceneEvent] = []
        ids, ended = self.tracker.update(ts, [r.box for r in regions])
        active = False
        for i, track_id in enumerate(ids):
            obj = self.objects.get(track_id)
            if obj is None:
                obj = self.objects[track_id] = _Object(self.tracker.tracks[track_id])
                active = True
            track = obj.track
            still = track.still_since is not None and track.hits > 1
            active = active or not still
            partial = not self._inside(track.box, fully=True)
            if features is not None:
                view = views[i] if views is not None and self.config.publish_crops else None
                obj.evidence.add(features[i], observation_weight(still, partial), decisions[i], view)
        if active:
            events += self._activity(ts, frame_id)
        for track_id in ids:
            events += self._settle(self.objects[track_id], ts, frame_id)
        for track in ended:
            events += self._end(track, ts, frame_id)
        if self.session_id is not None and ts - self.last_activity > self.config.idle_timeout_s:
            events += self._end_session(ts, frame_id, "idle")
        return events

    def _inside(self, box: tuple[int, int, int, int], fully: bool) -> bool:
        zx, zy, zw, zh = self.zone
        x, y, w, h = box
        if fully:
            return x > zx and y > zy and x + w < zx + zw and y + h < zy + zh
        cx, cy = x + w / 2, y + h / 2
        return zx <= cx <= zx + zw and zy <= cy <= zy + zh

    def _activity(self, ts: float, frame_id: int) -> list[SceneEvent]:
        self.last_activity = ts
        return [] if self.session_id is not None else self._start_session(ts, frame_id)

    def _settle(self, obj: _Object, ts: float, frame_id: int) -> list[SceneEvent]:
        track, ev = obj.track, obj.evidence
        settled = track.still_since is not None and ts - track.still_since >= self.config.settle_s
        if not settled or not self._inside(track.box, fully=False):
            if obj.added and ev.since_decision >= self.config.revise_every:
                self._revise(obj)
            return []
        if obj.added:
            if ev.since_decision >= self.config.revise_every:
                self._revise(obj)
            return []
        decision = ev.decide(self.decide)
        if decision is None:  # no head input (a caller without features): nothing to count
            return []
        events = self._activity(ts, frame_id)
        obj.added, obj.session_id = True, self.session_id
        self.items[track.id] = CartItem(track.id, decision)
        return [*events, self._event("added", ts, frame_id, obj, decision)]

    def _revise(self, obj: _Object) -> None:
        decision = obj.evidence.decide(self.decide)
        if decision is not None and obj.track.id in self.items:
            self.items[obj.track.id].decision = decision

    def _end(self, track: Track, ts: float, frame_id: int) -> list[SceneEvent]:
        obj = self.objects.pop(track.id, None)
        if obj is None:
            return []
        decision = obj.evidence.decide(self.decide)  # final
        self.ended.append((track.id, obj.evidence))
        if not obj.added or obj.session_id != self.session_id or self.session_id is None or decision is None:
            return []
        self.items.pop(track.id, None)
        self.last_activity = ts
        return [self._event("removed", ts, frame_id, obj, decision)]

    def _event(self, kind: EventType, ts: float, frame_id: int, obj: _Object, decision: Decision) -> SceneEvent:
        assert self.session_id is not None
        self.events_total[kind] += 1
        crop = obj.evidence.crop if decision.route != "accept" else None
        return SceneEvent(kind, ts, frame_id, self.session_id, obj.track.id, decision, obj.track.box, crop)

    # ---- sessions

    def _start_session(self, ts: float, frame_id: int) -> list[SceneEvent]:
        self.session_id = uuid.uuid4().hex
        self.items.clear()
        self.last_activity = ts
        self.events_total["session_start"] += 1
        return [SceneEvent("session_start", ts, frame_id, self.session_id)]

    def _end_session(self, ts: float, frame_id: int, reason: str) -> list[SceneEvent]:
        if self.session_id is None:
            return []
        event = SceneEvent("session_end", ts, frame_id, self.session_id, reason=reason)
        self.events_total["session_end"] += 1
        self.session_id = None
        self.items.clear()
        return [event]

    def trigger(self, action: str, ts: float, frame_id: int) -> list[SceneEvent]:
        """An external session trigger (``{prefix}/{device}/session``): ``start`` ends any open session and starts a
        new one; ``end`` ends the open one (checkout)."""
        events = self._end_session(ts, frame_id, "trigger")
        if action == "start":
            events += self._start_session(ts, frame_id)
        return events

    def finish(self, ts: float, frame_id: int) -> list[SceneEvent]:
        """The stream ended: every track ends with its final decision (no removals: the objects did not leave),
        then the session ends."""
        for track in self.tracker.end_all():
            obj = self.objects.pop(track.id, None)
            if obj is not None:
                obj.evidence.decide(self.decide)
                self.ended.append((track.id, obj.evidence))
                if track.id in self.items and obj.evidence.decision is not None:
                    self.items[track.id].decision = obj.evidence.decision
        return self._end_session(ts, frame_id, "stream ended")

    # ---- state

    @property
    def live_tracks(self) -> int:
        """Tracks alive now."""
        return len(self.tracker.tracks)

    def contents(self) -> dict[str, Any]:
        """The open session's contents: ``items`` (known SKUs with counts and the least sure route among them)
        and ``unknown`` (objects no SKU was decided for)."""
        rows: dict[str, dict[str, Any]] = {}
        unknown = 0
        rank = {"accept": 0, "verify": 1, "unknown": 2}
        for item in self.items.values():
            d = item.decision
            if d.sku is None:
                unknown += 1
                continue
            row = rows.setdefault(d.sku, {"sku": d.sku, "name": d.name, "count": 0, "route": d.route})
            row["count"] += 1
            if rank[d.route] > rank[row["route"]]:
                row["route"] = d.route
        return {"items": sorted(rows.values(), key=lambda r: str(r["sku"])), "unknown": unknown}
