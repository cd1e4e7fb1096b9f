"""What every profile table shares: the model settings, the name pattern and the [x, y, w, h] box check.

Its own module so that the tables kept apart from ``schema.py`` (``scene.py``, ``shelf.py``, which ``schema.py``
imports) use the same rules without importing it back."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, ConfigDict

MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True)
NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


def check_box(box: list[int], what: str) -> list[int]:
    """``box`` when it is [x, y, w, h] with x, y >= 0 and w, h > 0; else ValueError naming the ``what`` box."""
    if len(box) != 4:
        raise ValueError(f"a {what} box is [x, y, w, h] (4 integers); got {len(box)}")
    x, y, w, h = box
    if x < 0 or y < 0:
        raise ValueError(f"{what} box x and y must be >= 0; got x={x}, y={y}")
    if w <= 0 or h <= 0:
        raise ValueError(f"{what} box w and h must be > 0 (a box of zero size); got w={w}, h={h}")
    return box


Box = Annotated[list[int], AfterValidator(lambda box: check_box(box, "region"))]
SlotBox = Annotated[list[int], AfterValidator(lambda box: check_box(box, "slot"))]
Zone = Annotated[list[int], AfterValidator(lambda box: check_box(box, "zone"))]
