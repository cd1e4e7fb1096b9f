"""The scene messages: ``edge.event/1`` on ``{prefix}/{device}/events`` and the retained states ``edge.cart/1``
(``{prefix}/{device}/cart``) and ``edge.shelf/1`` (``{prefix}/{device}/shelf``).

Events go through the durable outbox like results (kind ``result``: kept before crops and heartbeats when the
outbox is full); the states are retained, so a cart screen or a store dashboard that connects later gets the
current contents at once. Every payload has ``schema`` and a fresh ``id``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Final

from edge_runtime.run.messages import encode_crop, utc_iso
from edge_runtime.run.scene.cart import SceneEvent
from edge_runtime.types import MessageKind

__all__ = [
    "CART_SCHEMA",
    "EVENT_SCHEMA",
    "SCENE_TOPICS",
    "SESSION_TOPIC",
    "SHELF_SCHEMA",
    "cart_message",
    "event_message",
    "shelf_message",
    "slot_event_message",
]

EVENT_SCHEMA: Final = "edge.event/1"
CART_SCHEMA: Final = "edge.cart/1"
SHELF_SCHEMA: Final = "edge.shelf/1"
SESSION_TOPIC: Final = "session"  # subscribed: {"action": "start" | "end"} from the cart's firmware
# Topic -> (outbox kind, retained).
SCENE_TOPICS: Final[dict[str, tuple[MessageKind, bool]]] = {
    "events": ("result", False),
    "cart": ("result", True),
    "shelf": ("result", True),
}


def event_message(
    event: SceneEvent, *, device_id: str, crop_max_side: int, jpeg_quality: int, with_crop: bool
) -> dict[str, Any]:
    """The ``edge.event/1`` of a cart event; added/removed of unknown and verify items carry their best crop."""
    d = event.decision
    message: dict[str, Any] = {
        "schema": EVENT_SCHEMA,
        "id": uuid.uuid4().hex,
        "device_id": device_id,
        "session_id": event.session_id,
        "type": event.type,
        "track_id": event.track_id,
        "sku": d.sku if d else None,
        "name": d.name if d else None,
        "route": d.route if d else None,
        "score": d.score if d else None,
        "ts": utc_iso(event.ts),
        "frame_id": event.frame_id,
    }
    if d is not None:
        message["ood_score"] = d.ood_score
        message["box"] = list(event.box) if event.box else None
        message["nearest"] = [[code, p] for code, p in d.top_k[:3]]
        crop = event.crop if with_crop else None
        message["crop"] = None if crop is None else encode_crop(crop, crop_max_side, jpeg_quality)
    if event.reason is not None:
        message["reason"] = event.reason
    return message


def slot_event_message(change: Any, *, device_id: str) -> dict[str, Any]:
    """The ``edge.event/1`` of a shelf slot change (``run.scene.shelf.SlotChange``)."""
    return {
        "schema": EVENT_SCHEMA,
        "id": uuid.uuid4().hex,
        "device_id": device_id,
        "session_id": None,
        "type": "slot_changed",
        "track_id": None,
        "slot_id": change.slot_id,
        "previous": change.previous,
        "state": change.state,
        "expected_sku": change.expected_sku,
        "sku": change.sku,
        "route": change.route,
        "score": change.score,
        "ts": utc_iso(change.ts),
        "frame_id": change.frame_id,
    }


def cart_message(
    contents: Mapping[str, Any], *, device_id: str, session_id: str | None, ts: float, frame_id: int
) -> dict[str, Any]:
    """The retained ``edge.cart/1``: the open session's items (``[{sku, name, count, route}]``) and the count of
    unknown objects; ``session_id`` null and no items between sessions."""
    return {
        "schema": CART_SCHEMA,
        "id": uuid.uuid4().hex,
        "device_id": device_id,
        "session_id": session_id,
        "ts": utc_iso(ts),
        "frame_id": frame_id,
        "items": list(contents.get("items", [])),
        "unknown": int(contents.get("unknown", 0)),
    }


def shelf_message(state: Mapping[str, Any], *, device_id: str, ts: float) -> dict[str, Any]:
    """The retained ``edge.shelf/1``: the shelf scene's state with the protocol fields (which it cannot
    overwrite)."""
    body = dict(state)
    body.update(schema=SHELF_SCHEMA, id=uuid.uuid4().hex, device_id=device_id, ts=utc_iso(ts))
    return body
