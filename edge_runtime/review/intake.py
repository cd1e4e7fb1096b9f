"""What the collector accepts from the fleet: ``edge.unknown/1`` and ``edge.verify/1`` messages, checked field by
field before anything is stored.

``parse_event(topic, payload)`` returns an ``IncomingEvent`` or raises ``Rejected`` with a reason, which is the
label of ``edge_review_rejected_total{reason}`` (``REJECT_REASONS``). A device, a broker or an attacker can send
anything on these topics; nothing here raises anything else.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from edge_runtime.run.messages import UNKNOWN_SCHEMA, VERIFY_SCHEMA

__all__ = ["MAX_EVENT_BYTES", "REJECT_REASONS", "IncomingEvent", "Rejected", "parse_event"]

MAX_EVENT_BYTES: Final = 2 * 1024 * 1024  # a crop is capped at crop_max_side (256 px by default): tens of KiB
MAX_FIELD: Final = 256  # ids, device ids, SKU codes and source refs are short
SCHEMAS: Final = {"unknown": UNKNOWN_SCHEMA, "verify": VERIFY_SCHEMA}
REJECT_REASONS: Final = (
    "oversize",
    "invalid_json",
    "not_object",
    "missing_field",
    "unknown_schema",
    "wrong_type",
    "invalid_value",
    "bad_crop",
    "bad_topic",
)


class Rejected(ValueError):
    """A message the collector will not store; ``reason`` is its metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class IncomingEvent:
    """One unknown or verify object from a device, with its decoded crop (JPEG bytes; None when the device
    publishes without crops)."""

    id: str
    kind: str  # "unknown" | "verify"
    device_id: str
    frame_id: int
    source_ref: str
    ts: str  # the device's ISO-8601 time
    device_time: float  # the same as epoch seconds
    box: list[int]
    sku: str | None  # verify: the SKU the device proposes
    score: float | None
    ood_score: float
    nearest: list[tuple[str, float]]
    jpeg: bytes | None


def _text(data: dict[str, Any], field: str, *, optional: bool = False) -> str | None:
    value = data.get(field)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise Rejected("wrong_type", f"{field} is {type(value).__name__}, expected a string")
    if not value or len(value) > MAX_FIELD:
        raise Rejected("invalid_value", f"{field} is empty or longer than {MAX_FIELD} characters")
    return value


def _number(data: dict[str, Any], field: str, *, optional: bool = False) -> float | None:
    value = data.get(field)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected("wrong_type", f"{field} is {type(value).__name__}, expected a number")
    if not math.isfinite(value):
        raise Rejected("invalid_value", f"{field} is not finite")
    return float(value)


def _nearest(value: Any) -> list[tuple[str, float]]:
    if not isinstance(value, list) or len(value) > 64:
        raise Rejected("wrong_type", "nearest is not a list of [sku, probability] pairs")
    out = []
    for pair in value:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not isinstance(pair[0], str)
            or not 0 < len(pair[0]) <= MAX_FIELD
            or isinstance(pair[1], bool)
            or not isinstance(pair[1], int | float)
            or not math.isfinite(pair[1])
        ):
            raise Rejected("wrong_type", "nearest is not a list of [sku, probability] pairs")
        out.append((pair[0], float(pair[1])))
    return out


def _crop(value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("format") != "jpeg" or not isinstance(value.get("data"), str):
        raise Rejected("bad_crop", "crop is not {format: jpeg, data: base64}")
    try:
        jpeg = base64.b64decode(value["data"], validate=True)
    except (binascii.Error, ValueError):
        raise Rejected("bad_crop", "crop data is not base64") from None
    if not jpeg.startswith(b"\xff\xd8"):
        raise Rejected("bad_crop", "crop data is not a JPEG")
    return jpeg


def _epoch(ts: str) -> float:
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise Rejected("invalid_value", f"ts {ts[:40]!r} is not ISO-8601") from None


def device_of(topic: str, prefix: str) -> tuple[str, str]:
    """(device id, topic name) of ``{prefix}/{device}/{name}``; Rejected("bad_topic") otherwise."""
    head, sep, rest = topic.partition(prefix + "/")
    device, _, name = rest.partition("/")
    if head or not sep or not device or name not in SCHEMAS:
        raise Rejected("bad_topic", f"topic {topic[:120]!r} is not {prefix}/DEVICE/unknown or verify")
    return device, name


def parse_event(topic: str, payload: bytes, prefix: str = "edge") -> IncomingEvent:
    """The event in ``payload`` received on ``topic``; Rejected says why when it is not a valid one."""
    device, name = device_of(topic, prefix)
    if len(payload) > MAX_EVENT_BYTES:
        raise Rejected("oversize", f"{len(payload)} bytes > {MAX_EVENT_BYTES}")
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejected("invalid_json", str(exc)[:200]) from None
    if not isinstance(data, dict):
        raise Rejected("not_object", f"top level is {type(data).__name__}")
    missing = [k for k in ("schema", "id", "device_id", "ts", "ood_score", "nearest") if k not in data]
    if missing:
        raise Rejected("missing_field", f"missing {', '.join(missing)}")
    if data["schema"] != SCHEMAS[name]:
        raise Rejected("unknown_schema", f"schema {str(data['schema'])[:64]!r} on a {name} topic")
    event_id, device_id, ts = _text(data, "id"), _text(data, "device_id"), _text(data, "ts")
    assert event_id is not None and device_id is not None and ts is not None
    if device_id != device:
        # A device may only speak for itself: its topic is what the broker's ACL checks.
        raise Rejected("invalid_value", f"device_id {device_id!r} does not match the topic's {device!r}")
    box = data.get("box", [])
    if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, int) for v in box):
        raise Rejected("wrong_type", "box is not [x, y, width, height] in integers")
    frame_id = data.get("frame_id", 0)
    if not isinstance(frame_id, int) or isinstance(frame_id, bool):
        raise Rejected("wrong_type", "frame_id is not an integer")
    ood = _number(data, "ood_score")
    assert ood is not None
    return IncomingEvent(
        id=event_id,
        kind=name,
        device_id=device_id,
        frame_id=frame_id,
        source_ref=(_text(data, "source_ref", optional=True) or "")[:MAX_FIELD],
        ts=ts,
        device_time=_epoch(ts),
        box=[int(v) for v in box],
        sku=_text(data, "sku", optional=True) if name == "verify" else None,
        score=_number(data, "score", optional=True),
        ood_score=ood,
        nearest=_nearest(data["nearest"]),
        jpeg=_crop(data.get("crop")),
    )
