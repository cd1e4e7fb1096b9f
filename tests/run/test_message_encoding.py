"""The bytes every message is stored and sent as: exactly json.dumps's, with a crop's base64 spliced in."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edge_runtime.run.messages import Base64Text, encode_crop, encode_json


def reference(payload: dict[str, object]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def test_a_real_crop_message_encodes_to_json_dumps_bytes() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    crop = encode_crop(image, max_side=160, quality=80)
    assert isinstance(crop["data"], Base64Text) and (crop["width"], crop["height"]) == (160, 120)
    message = {"schema": "edge.verify/1", "id": "a1", "name": 'Crème brûlée "fine"', "crop": crop, "score": 0.5}
    assert encode_json(message) == reference(message)
    assert json.loads(encode_json(message))["crop"]["data"] == crop["data"]


def test_plain_text_in_the_crop_slot_is_escaped_as_usual() -> None:
    # Only Base64Text is spliced unescaped; any other string goes through the json module.
    message = {"id": "b", "crop": {"data": 'a"b\\c\n' * 300}}
    assert encode_json(message) == reference(message)
    assert json.loads(encode_json(message)) == message


def test_nan_is_refused_with_a_crop_too() -> None:
    crop = encode_crop(np.zeros((8, 8, 3), np.uint8), 32, 80)
    with pytest.raises(ValueError):
        encode_json({"id": "c", "crop": crop, "score": math.nan})
    with pytest.raises(TypeError):
        encode_json({"id": "d", "crop": crop, "when": object()})
