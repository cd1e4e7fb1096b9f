"""The scene stage of edge-run: between the head and the outbox, in the publish thread.

``make_scene`` builds it from the profile's ``[scene]`` table (None for ``kind = "frames"``, where nothing
changes) together with the region finder the scene needs (the learned-basket proposals of a cart without a
detector, the planogram's facings of a shelf). ``SceneStage.on_frame`` feeds a processed frame to the cart or
shelf logic and sends what it produced: ``edge.event/1`` on ``events``, the retained ``edge.cart/1`` or
``edge.shelf/1`` whenever it changed. The session trigger (``{prefix}/{device}/session``, ``{"action":
"start"|"end"}``) arrives on the MQTT network thread; a lock keeps it and the frames apart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from edge_runtime.head.model import Head
from edge_runtime.profile import DeviceProfile
from edge_runtime.run.regions import RegionFinder
from edge_runtime.run.scene.cart import CartScene, SceneEvent
from edge_runtime.run.scene.messages import (
    cart_message,
    event_message,
    shelf_message,
    slot_event_message,
)
from edge_runtime.run.scene.proposals import BasketProposals
from edge_runtime.run.scene.shelf import SLOT_STATES, ShelfScene
from edge_runtime.types import Decision, Region

__all__ = ["EVENT_TYPES", "SceneMetrics", "SceneStage", "make_scene"]

log = logging.getLogger(__name__)

EVENT_TYPES = ("added", "removed", "session_start", "session_end", "slot_changed")
Send = Callable[[str, Mapping[str, Any], bool], bool]  # (topic, payload, retained) -> stored


def _not_bound(topic: str, payload: Mapping[str, Any], retained: bool) -> bool:
    raise RuntimeError("SceneStage.bind() was not called")


class SceneMetrics:
    """The scene's Prometheus series, on edge-run's registry: events by type, live tracks, slots per state."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("edge_scene_events", "Scene events sent, by type.", ["type"], registry=registry)
        self.live_tracks = Gauge("edge_scene_live_tracks", "Objects tracked in the basket now.", registry=registry)
        self.slots = Gauge("edge_scene_slots", "Shelf slots per state.", ["state"], registry=registry)
        for kind in EVENT_TYPES:
            self.events.labels(type=kind)
        for state in SLOT_STATES:
            self.slots.labels(state=state)


SHELF_STATE_MIN_S = 1.0  # the retained shelf state is refreshed at most this often when no slot changed state


class SceneStage:
    """Cart or shelf logic plus the messages it sends."""

    def __init__(
        self,
        profile: DeviceProfile,
        *,
        cart: CartScene | None,
        shelf: ShelfScene | None,
        device_id: str,
        metrics: SceneMetrics | None,
        send: Send | None = None,
    ) -> None:
        self.kind = profile.scene.kind
        self.frames_published = profile.scene.frames_published
        self.cart, self.shelf = cart, shelf
        self._send: Send = send or _not_bound
        self.device_id = device_id
        self.metrics = metrics
        self.crop_max_side = profile.mqtt.crop_max_side
        self.jpeg_quality = profile.mqtt.jpeg_quality
        self.with_crops = profile.mqtt.publish_crops and profile.scene.cart.publish_crops
        self.lock = threading.Lock()
        self.last_frame = (0, 0.0)  # (frame id, capture time) of the latest frame, for triggers between frames
        self.triggers_rejected = 0
        self.seconds = 0.0  # time spent in on_frame, for the scene-cost figures
        self._shelf_last: dict[str, Any] | None = None  # the body of the last edge.shelf/1 sent
        self._shelf_checked_ts = 0.0  # when the shelf's state body was last built and compared

    def bind(self, send: Send) -> None:
        """Where messages go (``Stages.send``, which counts them by topic); set once, before the first frame."""
        self._send = send

    @property
    def needs_features(self) -> bool:
        """Whether on_frame wants the head input of every region (track-level decisions)."""
        return self.cart is not None

    def on_frame(
        self,
        frame_id: int,
        ts: float,
        regions: Sequence[Region],
        decisions: Sequence[Decision],
        features: np.ndarray | None,
        views: Sequence[np.ndarray] | None,
        image: np.ndarray | None,
    ) -> None:
        """One processed frame; sends the events and the state it changed."""
        t0 = time.perf_counter()
        with self.lock:
            self.last_frame = (frame_id, ts)
            if self.cart is not None:
                before = self.cart.contents(), self.cart.session_id
                events = self.cart.update(frame_id, ts, regions, decisions, features, views)
                self._cart_events(events, before, ts, frame_id)
            elif self.shelf is not None and image is not None:
                changes = self.shelf.update(frame_id, ts, image, decisions)
                for change in changes:
                    self._event(slot_event_message(change, device_id=self.device_id), "slot_changed")
                # The retained state goes out at the start too, so a dashboard sees the planogram before a change;
                # and whenever its body changed without a slot changing state (a facing filled, another wrong
                # product in a misplaced slot), at most once a SHELF_STATE_MIN_S, so the retained copy is never
                # stale for longer than that and a flickering facing cannot flood the uplink.
                if changes or self._shelf_last is None or ts - self._shelf_checked_ts >= SHELF_STATE_MIN_S:
                    state = self.shelf.state()  # built at most once a SHELF_STATE_MIN_S unless a slot changed
                    self._shelf_checked_ts = ts
                    if changes or state != self._shelf_last:
                        self._send("shelf", shelf_message(state, device_id=self.device_id, ts=ts), True)
                        self._shelf_last = state
            self._refresh_gauges()
        self.seconds += time.perf_counter() - t0

    def _cart_events(
        self, events: list[SceneEvent], before: tuple[dict[str, Any], str | None], ts: float, frame_id: int
    ) -> None:
        assert self.cart is not None
        for event in events:
            self._event(
                event_message(
                    event,
                    device_id=self.device_id,
                    crop_max_side=self.crop_max_side,
                    jpeg_quality=self.jpeg_quality,
                    with_crop=self.with_crops,
                ),
                event.type,
            )
        if (self.cart.contents(), self.cart.session_id) != before:
            contents, session_id = self.cart.contents(), self.cart.session_id
            message = cart_message(contents, device_id=self.device_id, session_id=session_id, ts=ts, frame_id=frame_id)
            self._send("cart", message, True)

    def _event(self, message: dict[str, Any], kind: str) -> None:
        if self._send("events", message, False) and self.metrics is not None:
            self.metrics.events.labels(type=kind).inc()

    def _refresh_gauges(self) -> None:
        if self.metrics is None:
            return
        if self.cart is not None:
            self.metrics.live_tracks.set(self.cart.live_tracks)
        if self.shelf is not None:
            for state, n in self.shelf.slot_counts().items():
                self.metrics.slots.labels(state=state).set(n)

    def trigger(self, payload: bytes) -> None:
        """A message on the session topic: ``{"action": "start"}`` or ``{"action": "end"}``. Anything else is
        counted and logged, never fatal."""
        try:
            action = json.loads(payload.decode("utf-8")).get("action")
        except (ValueError, UnicodeDecodeError, AttributeError):
            action = None
        if action not in ("start", "end") or self.cart is None:
            self.triggers_rejected += 1
            log.warning('session trigger ignored: expected {"action": "start"|"end"} on a cart; got %.80r', payload)
            return
        with self.lock:
            frame_id, ts = self.last_frame
            before = self.cart.contents(), self.cart.session_id
            self._cart_events(self.cart.trigger(action, time.time(), frame_id), before, ts, frame_id)

    def finish(self) -> None:
        """The stream ended: final decisions, the session's end, the last state."""
        with self.lock:
            frame_id, ts = self.last_frame
            if self.cart is not None:
                before = self.cart.contents(), self.cart.session_id
                self._cart_events(self.cart.finish(ts, frame_id), before, ts, frame_id)
            self._refresh_gauges()

    def heartbeat(self) -> dict[str, Any]:
        """The heartbeat's ``scene`` block."""
        with self.lock:
            block: dict[str, Any] = {"kind": self.kind}
            if self.cart is not None:
                contents = self.cart.contents()
                block.update(
                    session_id=self.cart.session_id,
                    live_tracks=self.cart.live_tracks,
                    items=sum(int(r["count"]) for r in contents["items"]) + int(contents["unknown"]),
                    events=dict(self.cart.events_total),
                )
            if self.shelf is not None:
                block["slots"] = self.shelf.slot_counts()
            return block


def make_scene(
    profile: DeviceProfile,
    head: Head,
    frame_size: tuple[int, int],
    *,
    device_id: str,
    registry: CollectorRegistry | None,
    finder: RegionFinder,
) -> tuple[SceneStage | None, RegionFinder]:
    """The scene stage for the profile's ``[scene]`` (None for frames) and the region finder to use with it
    (``finder``, the one from ``[regions]``, unless the scene brings its own)."""
    scene = profile.scene
    if scene.kind == "frames":
        return None, finder
    metrics = SceneMetrics(registry) if registry is not None else None
    if scene.kind == "cart":

        def decide(fused: np.ndarray) -> Decision:
            return head.decide(fused[None, :])[0]

        cart = CartScene(scene.cart, decide, frame_size)
        if scene.cart.proposals == "background":
            finder = BasketProposals(scene.cart)
        stage = SceneStage(profile, cart=cart, shelf=None, device_id=device_id, metrics=metrics)
        return stage, finder
    assert scene.shelf is not None  # the profile's own validation
    shelf = ShelfScene(scene.shelf, head.skus, frame_size)
    stage = SceneStage(profile, cart=None, shelf=shelf, device_id=device_id, metrics=metrics)
    return stage, _FixedList(shelf.regions())


class _FixedList:
    """The shelf's facings as a region finder (the same boxes every frame; ShelfScene checked they fit)."""

    def __init__(self, regions: list[Region]) -> None:
        self.regions = regions

    def find(self, image: np.ndarray) -> list[Region]:
        return list(self.regions)
