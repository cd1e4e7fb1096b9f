"""Every MQTT message edge-run sends or reads: schemas, topics, the builders of each payload, and JPEG crops.

Messages (``DESIGN.md``, *Formats*): ``edge.results/1`` per processed frame, ``edge.unknown/1`` and
``edge.verify/1`` per object with its JPEG crop, ``edge.heartbeat/1`` every ``heartbeat_s``; the retained
``edge.status/1`` comes from the publisher and carries the bundle id, backend and camera. ``edge.feedback/1``
comes in (``run.feedback`` validates and attributes it).

Every payload is a JSON object with ``schema`` and a unique ``id`` (consumers drop redeliveries by it) and is
serialised by ``encode_json``, the one serialisation the outbox stores and a discarding publisher pays for.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Final

import cv2
import numpy as np

from edge_runtime.run.outbox import OutboxStats
from edge_runtime.types import Decision, MessageKind, Region

__all__ = [
    "FEEDBACK_SCHEMA",
    "FEEDBACK_TOPIC",
    "HEARTBEAT_SCHEMA",
    "RESULTS_SCHEMA",
    "STATUS_SCHEMA",
    "TOPICS",
    "UNKNOWN_SCHEMA",
    "VERIFY_SCHEMA",
    "Base64Text",
    "encode_crop",
    "encode_json",
    "heartbeat_message",
    "latency_ms",
    "object_message",
    "object_topic",
    "region_json",
    "results_message",
    "status_payload",
    "top1",
    "utc_iso",
]

RESULTS_SCHEMA: Final = "edge.results/1"
UNKNOWN_SCHEMA: Final = "edge.unknown/1"
VERIFY_SCHEMA: Final = "edge.verify/1"
HEARTBEAT_SCHEMA: Final = "edge.heartbeat/1"
STATUS_SCHEMA: Final = "edge.status/1"
FEEDBACK_SCHEMA: Final = "edge.feedback/1"

# Topic name -> outbox kind (what the byte cap drops first). unknown/verify carry a JPEG crop.
TOPICS: Final[dict[str, MessageKind]] = {
    "results": "result",
    "unknown": "crop",
    "verify": "crop",
    "heartbeat": "heartbeat",
    "status": "status",
}
FEEDBACK_TOPIC: Final = "feedback"


def utc_iso(ts: float) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as every message's ``ts``."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# One encoder for every message: json.dumps with options builds a new one per call.
_JSON: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# Stands in for a crop's base64 text while the rest of the message is encoded (see encode_json); random per
# process, so no value a message carries can be mistaken for it.
_CROP_SLOT: Final = f"crop-{uuid.uuid4().hex}"


class Base64Text(str):
    """Text that is base64 by construction (``encode_crop`` makes it): JSON writes it as it is, unescaped."""

    __slots__ = ()


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """The bytes of a message: compact UTF-8 JSON. ValueError for NaN or Infinity, which are not JSON and would
    break consumers' parsers; TypeError for values JSON cannot hold.

    The bytes are exactly ``json.dumps``'s. A crop's base64 text (``payload["crop"]["data"]``, tens of kB, a
    ``Base64Text``) is spliced in after the rest is encoded: the json module checks a string for characters to
    escape one by one (about 0.3 ms for a 24 kB crop on a 2-core x86 host), and base64 holds none of them.
    """
    body = payload if isinstance(payload, dict) else dict(payload)
    crop = body.get("crop")
    data = crop.get("data") if isinstance(crop, dict) else None
    if not isinstance(data, Base64Text):
        return _JSON.encode(body).encode("utf-8")
    assert isinstance(crop, dict)
    text = _JSON.encode({**body, "crop": {**crop, "data": _CROP_SLOT}})
    return text.replace(_CROP_SLOT, data, 1).encode("utf-8")


def latency_ms(latencies: list[float]) -> dict[str, float]:
    """``{"p50": ..., "p95": ...}`` in milliseconds of latencies in seconds (0.0 when there are none)."""
    return {"p50": _percentile_ms(latencies, 50), "p95": _percentile_ms(latencies, 95)}


def _percentile_ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000.0, 2) if values else 0.0


# --------------------------------------------------------------------------- results, unknown, verify


def top1(d: Decision) -> str:
    """The region's nearest prototype: what feedback and the per-class metrics attribute it to, also when the
    route is ``unknown`` (its ``sku`` is then null)."""
    return d.top_k[0][0] if d.top_k else (d.sku or "")


def object_topic(d: Decision, unknown_loop: bool) -> str | None:
    """The per-object topic a decision is published on (``verify``, ``unknown`` when the profile's
    ``routing.unknown_loop`` is on), or None for an accepted one."""
    if d.route == "verify":
        return "verify"
    if d.route == "unknown" and unknown_loop:
        return "unknown"
    return None


def region_json(region: Region, d: Decision) -> dict[str, Any]:
    """One entry of a results message's ``regions``."""
    return {
        "box": list(region.box),
        "sku": d.sku,
        "name": d.name,
        "group": d.group,
        "score": d.score,
        "ood_score": d.ood_score,
        "route": d.route,
        "top_k": [[code, p] for code, p in d.top_k],
    }


def results_message(
    *,
    device_id: str,
    bundle_id: str,
    frame_id: int,
    source_ref: str,
    ts: str,
    regions: list[Region],
    decisions: list[Decision],
) -> dict[str, Any]:
    """The ``edge.results/1`` message of one processed frame (a fresh ``id``)."""
    return {
        "schema": RESULTS_SCHEMA,
        "id": uuid.uuid4().hex,
        "device_id": device_id,
        "bundle_id": bundle_id,
        "frame_id": frame_id,
        "source_ref": source_ref,
        "ts": ts,
        "regions": [region_json(r, d) for r, d in zip(regions, decisions, strict=True)],
    }


def object_message(
    topic: str,
    *,
    device_id: str,
    frame_id: int,
    source_ref: str,
    ts: str,
    region: Region,
    decision: Decision,
    crop: dict[str, Any] | None,
) -> dict[str, Any]:
    """The ``edge.unknown/1`` or ``edge.verify/1`` message (``topic``) of one object, with its encoded crop."""
    d = decision
    message: dict[str, Any] = {
        "schema": VERIFY_SCHEMA if topic == "verify" else UNKNOWN_SCHEMA,
        "id": uuid.uuid4().hex,
        "device_id": device_id,
        "frame_id": frame_id,
        "source_ref": source_ref,
        "ts": ts,
        "box": list(region.box),
    }
    if topic == "verify":
        # What the reviewer is asked to confirm or correct.
        message.update(sku=d.sku, name=d.name, group=d.group, score=d.score)
    message["ood_score"] = d.ood_score
    message["nearest"] = [[code, p] for code, p in d.top_k]
    message["crop"] = crop
    return message


def encode_crop(image: np.ndarray, max_side: int, quality: int) -> dict[str, Any]:
    """A crop as the ``crop`` field: JPEG at ``quality``, shrunk (area averaging) so no side exceeds ``max_side``."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding of a {w}x{h} crop failed")
    return {
        "format": "jpeg",
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "data": Base64Text(base64.b64encode(jpeg.tobytes()).decode("ascii")),
    }


# --------------------------------------------------------------------------- heartbeat and status


def heartbeat_message(
    *,
    device_id: str,
    bundle_id: str,
    ts: str,
    final: bool,
    uptime_s: float,
    fps: float,
    latencies: list[float],
    memory: Mapping[str, Any],
    headroom: float,
    outbox: OutboxStats,
    uplink: Mapping[str, Any],
    frames: Mapping[str, int],
    backend: str,
    source: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``edge.heartbeat/1`` message; ``memory``, ``uplink``, ``frames`` and ``source`` are its nested objects
    as given (``memory``: ``run.metrics.MemoryFigures.as_dict``, whose ``peak_mib`` is the budget's quantity and
    what ``headroom`` is computed from)."""
    return {
        "schema": HEARTBEAT_SCHEMA,
        "id": uuid.uuid4().hex,
        "device_id": device_id,
        "bundle_id": bundle_id,
        "ts": ts,
        "state": "stopping" if final else "running",
        "uptime_s": round(uptime_s, 1),
        "fps": round(fps, 2),
        "latency_ms": latency_ms(latencies),
        "rss_mib": memory.get("rss_mib"),  # kept at the top level for consumers of the first heartbeats
        "headroom": round(headroom, 4),
        "memory": dict(memory),
        "outbox_depth": outbox.depth,
        "outbox_bytes": outbox.bytes,
        # A growing outbox with throttled=true is the profile's uplink cap at work, not a broker problem.
        "uplink": dict(uplink),
        "frames": dict(frames),
        "backend": backend,
        "source": dict(source),
    }


def status_payload(fields: Mapping[str, Any], *, device_id: str, state: str, ts: float | None, **extra: Any) -> bytes:
    """The retained ``edge.status/1`` payload: ``fields`` (bundle id, backend, camera, ...) then the protocol
    fields, which the caller's fields can never overwrite; ``ts`` None leaves the time out (a last will is sent
    by the broker later, so a time set now would be wrong)."""
    body: dict[str, Any] = dict(fields)
    body.update(schema=STATUS_SCHEMA, id=uuid.uuid4().hex, device_id=device_id, state=state, **extra)
    if ts is not None:
        body["ts"] = utc_iso(ts)
    return encode_json(body)
