"""The ``[scene] shelf`` table: the planogram (slots), the hysteresis and the emptiness test's settings.

A slot is a box in capture pixels with the SKU the planogram expects there. ``facings`` splits the box into
that many equal columns, one product front each: every column is recognised and tested for emptiness on its
own, so a slot reports how many of its facings are filled. Unknown SKU codes can only be checked against a
bundle: ``ShelfScene`` (edge_runtime/run/scene/shelf.py) does that when edge-run starts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, FiniteFloat, field_validator, model_validator

from edge_runtime.profile.fields import MODEL_CONFIG, NAME_PATTERN, SlotBox

# A facing narrower or lower than this leaves too few pixels for the emptiness test and the backbone.
MIN_FACING_SIDE = 16


class ShelfSlot(BaseModel):
    """One planogram position: where it is, what belongs there and how many fronts it holds."""

    model_config = MODEL_CONFIG

    id: str = Field(pattern=NAME_PATTERN, description="Slot id, unique on the shelf; named in events and state.")
    box: SlotBox = Field(description="Slot box [x, y, w, h] in capture pixels (like [regions] fixed).")
    sku: str = Field(min_length=1, description="SKU code the planogram expects here; must be in the bundle.")
    facings: int = Field(
        default=1,
        ge=1,
        le=32,
        description="Product fronts side by side in the box; each equal column is recognised and tested apart.",
    )

    @model_validator(mode="after")
    def _facings_fit(self) -> ShelfSlot:
        width, height = self.box[2], self.box[3]
        if width // self.facings < MIN_FACING_SIDE or height < MIN_FACING_SIDE:
            raise ValueError(
                f"slot {self.id!r}: {self.facings} facing(s) in a {width}x{height} box leave columns under"
                f" {MIN_FACING_SIDE} px; widen the box or lower facings"
            )
        return self


def _overlap_share(a: list[int], b: list[int]) -> float:
    """Intersection area over the smaller box's area."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return (ix * iy) / min(a[2] * a[3], b[2] * b[3])


class ShelfConfig(BaseModel):
    """A shelf camera's planogram and how slot states are decided (``[scene] kind = "shelf"``)."""

    model_config = MODEL_CONFIG

    slots: list[ShelfSlot] = Field(
        min_length=1, max_length=256, description="The planogram: one entry per slot ([[scene.shelf.slots]])."
    )
    hold_frames: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Processed frames in a row a slot's new state must be seen before it changes (a passing hand).",
    )
    hold_s: FiniteFloat = Field(
        default=2.0,
        ge=0,
        le=3600,
        description="Seconds a slot's new state must also hold before it changes (both hold_frames and hold_s).",
    )
    misplaced_route: Literal["accept", "group", "verify"] = Field(
        default="group",
        description=(
            "When a slot is misplaced: accept = an auto-accepted other SKU only; group = that, or a look that gives"
            " the expected SKU less than expected_min while its best guess is no sibling of it (siblings are what"
            " heads confuse); verify = any accept or verify other SKU. Unsure looks change nothing."
        ),
    )
    expected_min: FiniteFloat = Field(
        default=0.05,
        ge=0,
        lt=1,
        description=(
            'With misplaced_route = "group": a facing whose recognition gives the expected SKU less probability'
            " than this, and names no sibling of it, holds another product (a catalogued one or not); 0 = off."
        ),
    )
    empty_reference: str | None = Field(
        default=None,
        description=(
            "Image of the empty shelf (capture size, taken at install); the slot columns are compared with it."
            " Needed where the shelf back is patterned; unset = the texture test alone."
        ),
    )
    empty_texture_max: FiniteFloat = Field(
        default=0.06,
        gt=0,
        le=1,
        description=(
            "A facing whose brightness-normalised edge energy is at most this is empty (a plain shelf back);"
            " printed packaging measures far above."
        ),
    )
    empty_match_min: FiniteFloat = Field(
        default=0.5,
        gt=0,
        le=1,
        description="With empty_reference: a facing whose edge-image correlation with it is at least this is empty.",
    )

    @field_validator("slots")
    @classmethod
    def _unique_and_apart(cls, slots: list[ShelfSlot]) -> list[ShelfSlot]:
        ids = [s.id for s in slots]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate slot ids: {', '.join(dupes)}")
        for i, a in enumerate(slots):
            for b in slots[i + 1 :]:
                if _overlap_share(a.box, b.box) > 0.5:
                    raise ValueError(
                        f"slots {a.id!r} and {b.id!r} overlap by more than half of the smaller box; one product"
                        " would count twice"
                    )
        return slots

    def boxes_outside(self, width: int, height: int) -> list[str]:
        """One line per slot whose box leaves a ``width`` x ``height`` frame."""
        return [
            f"slot {s.id!r} box {s.box} leaves the {width}x{height} frame"
            for s in self.slots
            if s.box[0] + s.box[2] > width or s.box[1] + s.box[3] > height
        ]
