"""The shelf scene: planogram slots, per-slot state with hysteresis, facings and share-of-shelf.

A shelf camera does not move, so its regions are fixed: each slot of the planogram (``[[scene.shelf.slots]]``:
id, box, expected SKU, facings) is split into ``facings`` equal columns, and every column (a *facing*) is one
region the head recognises each processed frame. Each facing is observed as

- **empty** when the emptiness test says so (shelf_empty.py: every block of the facing shows no edges for its
  brightness, or matches a photo of the empty shelf where the back is patterned). The head's verdict is not
  used for this: its route does not follow emptiness (on the demo bundle every empty facing went to
  ``verify``), and although its OOD score ranks empty facings apart (AUROC 0.98 in benchmarks/scene_shelf.py),
  that score's scale is each bundle's own, while a profile threshold must hold across builds. The image test
  separated them completely there, with one fixed threshold, under a lighting change too;
- **present** when the head names the expected SKU;
- **misplaced** when the product is not the expected SKU (``misplaced_route``): ``accept`` = an auto-accepted
  other SKU; ``group`` (default) = that, or, asking the planogram's narrower question "is this the expected
  SKU?", a look whose candidates give the expected SKU less than ``expected_min`` probability while its best
  guess is not a sibling of it (siblings are what a head confuses at low resolution): the SKU it names, or none
  for a product no catalogue holds; ``verify`` = any accept or verify other SKU;
- **unsure** otherwise (the head unsure, or naming a sibling): neither confirms nor contradicts a present or
  misplaced facing; after an empty one it means something is there (present).

A facing changes state only after the new observation has held for ``hold_frames`` processed frames in a row
and ``hold_s`` seconds, so a hand reaching past, a shopper in front or a flicker does not flap it (its first
state is taken from the first frame: there is nothing yet to protect, and a wrong first look is corrected like
any other change). A slot is misplaced when any of its facings is, empty when all are, present otherwise.
Each change of a slot's state is one ``SlotChange``, the ``slot_changed`` event (``previous`` is
``"unknown"`` for the first), stamped with the frame that confirmed it (``state()``'s ``since`` is when the new
state was first seen). A misplaced slot names the SKU the head named most often since; revising it is no event,
so a product the head cannot pin down does not flap between the SKUs it resembles.

``state()`` is the body of the retained ``edge.shelf/1`` message: per slot its state, the SKU seen, since when
and how many facings are filled; filled facings per SKU; and share-of-shelf per SKU and per group, by count of
facings and by their area in pixels (a present facing counts for the planogram's SKU, a misplaced one for the
SKU the head named).

Per-frame cost without inference: one resize to a small grey image, two Sobel passes and integral images,
then O(1) per block of each facing (``benchmarks/scene_shelf.py`` reports it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import cv2
import numpy as np

from edge_runtime.errors import InputError, ProfileError
from edge_runtime.profile.shelf import ShelfConfig
from edge_runtime.run.scene.shelf_empty import EmptinessTest
from edge_runtime.types import Decision, Region, SkuInfo

__all__ = ["SLOT_STATES", "ShelfScene", "SlotChange", "facing_boxes"]

SlotState = Literal["present", "empty", "misplaced", "unknown"]
SLOT_STATES: tuple[SlotState, ...] = ("present", "empty", "misplaced", "unknown")
_PROFILE_HINT = "fix [scene.shelf] in the device profile and rebuild the bundle"


@dataclass(frozen=True)
class SlotChange:
    """One ``slot_changed`` event."""

    slot_id: str
    previous: str  # "unknown" before a slot's first state
    state: str  # present | empty | misplaced
    expected_sku: str
    sku: str | None  # the misplaced SKU, or the expected one when present and the head names it; else None
    route: str | None  # the head's route for the facing that decided; None for empty
    score: float | None
    ts: float  # capture time of the frame that confirmed the change
    frame_id: int


@dataclass
class _Facing:
    """One column of a slot and its hysteresis."""

    slot: int
    box: tuple[int, int, int, int]
    state: SlotState = "unknown"
    sku: str | None = None  # misplaced: the SKU seen; present: the expected SKU when the head names it
    decision: Decision | None = None  # the latest decision that agreed with the stable state
    skus: Counter[str] = field(default_factory=Counter)  # misplaced: how often each other SKU was named
    candidate: str | None = None  # the new state being held
    candidate_frames: int = 0
    candidate_since: float = 0.0
    candidate_skus: Counter[str] = field(default_factory=Counter)
    since: float = 0.0


@dataclass
class _Slot:
    state: SlotState = "unknown"
    sku: str | None = None
    since: float = 0.0


def facing_boxes(box: Sequence[int], facings: int) -> list[tuple[int, int, int, int]]:
    """``box`` split into ``facings`` equal columns (the last takes the remainder)."""
    x, y, w, h = (int(v) for v in box)
    step = w // facings
    return [(x + k * step, y, step if k < facings - 1 else w - step * (facings - 1), h) for k in range(facings)]


def _read_reference(path: str, frame_size: tuple[int, int]) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(
            f"scene.shelf.empty_reference {path}: not a readable image",
            hint="photograph the empty shelf with this camera (PNG or JPEG) or unset empty_reference",
        )
    if (image.shape[1], image.shape[0]) != frame_size:
        raise InputError(
            f"scene.shelf.empty_reference {path} is {image.shape[1]}x{image.shape[0]},"
            f" the camera captures {frame_size[0]}x{frame_size[1]}",
            hint="take the reference with the camera at its capture size",
        )
    return image


class ShelfScene:
    """Slot states from each frame's decisions; pure logic (numpy and OpenCV), no I/O besides the reference."""

    def __init__(self, config: ShelfConfig, skus: Sequence[SkuInfo], frame_size: tuple[int, int]) -> None:
        self.config = config
        self._skus = {s.code: s for s in skus}
        problems = [
            f"slot {s.id!r} expects SKU {s.sku!r}, which the bundle does not know"
            for s in config.slots
            if s.sku not in self._skus
        ]
        problems += config.boxes_outside(*frame_size)
        if problems:
            raise ProfileError(
                f"the shelf planogram does not fit the bundle and camera ({len(problems)} problems)",
                problems=problems,
                hint=f"{_PROFILE_HINT}; SKU codes are the bundle's labels.json codes",
            )
        self._facings = [
            _Facing(slot=i, box=b) for i, s in enumerate(config.slots) for b in facing_boxes(s.box, s.facings)
        ]
        self._slots = [_Slot() for _ in config.slots]
        self._by_slot: list[list[_Facing]] = [
            [f for f in self._facings if f.slot == i] for i in range(len(self._slots))
        ]
        reference = _read_reference(config.empty_reference, frame_size) if config.empty_reference else None
        self.emptiness = EmptinessTest(
            [f.box for f in self._facings], frame_size, config.empty_texture_max, config.empty_match_min, reference
        )
        self._misplaced_route = config.misplaced_route
        self._regions = [Region(box=f.box) for f in self._facings]
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # the last frame's block measurements

    def regions(self) -> list[Region]:
        """One region per facing, slot by slot in planogram order; fixed for the run."""
        return list(self._regions)

    def facing_slots(self) -> list[str]:
        """The slot id of each region of ``regions()``."""
        return [self.config.slots[f.slot].id for f in self._facings]

    def update(self, frame_id: int, ts: float, frame: np.ndarray, decisions: Sequence[Decision]) -> list[SlotChange]:
        """Observe one processed frame; ``decisions[i]`` is the head's decision for ``regions()[i]``."""
        if len(decisions) != len(self._facings):
            raise ValueError(f"{len(decisions)} decisions for the shelf's {len(self._facings)} regions")
        texture, match, grad = self.emptiness.measure(frame)
        empty = self.emptiness.empty(texture, match)
        self._last = (texture, match)
        for facing, is_empty, decision in zip(self._facings, empty, decisions, strict=True):
            self._observe(facing, self._classify(facing, is_empty, decision), decision, ts)
        self.emptiness.refresh(grad, [f.state == "empty" and e for f, e in zip(self._facings, empty, strict=True)])
        return self._slot_changes(frame_id, ts)

    def _classify(self, facing: _Facing, is_empty: bool, decision: Decision) -> tuple[str, str | None]:
        """What one frame says about a facing: empty, present (the head names the expected SKU), misplaced
        (a confident other SKU) or occupied (something the head cannot name with confidence)."""
        if is_empty:
            return "empty", None
        expected = self.config.slots[facing.slot].sku
        named = decision.sku if decision.route != "unknown" else None
        if named == expected:
            return "present", None
        if named is not None and (decision.route == "accept" or self._misplaced_route == "verify"):
            return "misplaced", named
        # The head's best guess, named or not: a sibling of the expected SKU is what a low-resolution view of
        # the expected product gets confused with.
        best = decision.top_k[0][0] if decision.top_k else decision.sku
        best_sku = self._skus.get(best) if best is not None else None
        sibling = best_sku is not None and best_sku.group == self._skus[expected].group
        # The planogram asks a narrower question than the head answers: not "which SKU is this?" but "is this
        # the expected one?". When the head gives the expected SKU almost no probability (not among its top
        # candidates) and does not name a sibling of it (siblings are what it confuses at low resolution), the
        # facing holds another product, named or not (a product no catalogue holds is usually not).
        if (
            self._misplaced_route == "group"
            and not sibling
            and dict(decision.top_k).get(expected, 0.0) < self.config.expected_min
        ):
            return "misplaced", named
        return "occupied", None

    def _observe(self, facing: _Facing, seen: tuple[str, str | None], decision: Decision, ts: float) -> None:
        state, sku = seen
        if state == "occupied":
            if facing.state in ("present", "misplaced"):
                # An unsure look neither confirms nor contradicts what stands there: a product the head cannot
                # pin down would otherwise flap between present and misplaced. It leaves any change being held
                # as it is.
                return
            state = "present"  # after empty (or at start), something is there that is not confidently wrong
        # A present facing names its SKU only when the head names the expected one (a less sure other SKU is
        # not evidence enough to name it, as it was not to call the slot misplaced).
        named = decision.sku if decision.sku == self.config.slots[facing.slot].sku else None
        if state == facing.state:
            facing.candidate, facing.candidate_frames = None, 0
            if state == "misplaced" and sku is not None:
                # The hold is on the state; which SKU a misplaced facing holds is the one named most often, so a
                # product the head cannot pin down does not flap between the SKUs it resembles.
                facing.skus[sku] += 1
                facing.sku = facing.skus.most_common(1)[0][0]
                if sku == facing.sku:
                    facing.decision = decision
            else:
                facing.decision = decision
                facing.sku = named if state == "present" else None
            return
        if state != facing.candidate:
            facing.candidate, facing.candidate_frames, facing.candidate_since = state, 0, ts
            facing.candidate_skus.clear()
        facing.candidate_frames += 1
        if sku is not None:
            facing.candidate_skus[sku] += 1
        held = facing.candidate_frames >= self.config.hold_frames and ts - facing.candidate_since >= self.config.hold_s
        # The first observation is taken at once: there is no state yet to protect from flapping, and a retained
        # state from the first frame beats "unknown" for the hold; a wrong first look is corrected like any change.
        if held or facing.state == "unknown":
            facing.state, facing.since, facing.decision = cast(SlotState, state), facing.candidate_since, decision
            facing.skus = Counter(facing.candidate_skus)
            if state == "misplaced":
                top = facing.skus.most_common(1)
                facing.sku = top[0][0] if top else None  # None: a product the head cannot name
            else:
                facing.sku = named if state == "present" else None
            facing.candidate, facing.candidate_frames = None, 0

    def _slot_state(self, members: list[_Facing]) -> tuple[SlotState, _Facing]:
        for f in members:
            if f.state == "misplaced":
                return "misplaced", f
        if any(f.state == "unknown" for f in members):
            return "unknown", members[0]
        if all(f.state == "empty" for f in members):
            return "empty", members[0]
        return "present", next(f for f in members if f.state == "present")

    def _members(self) -> list[list[_Facing]]:
        return self._by_slot

    def _slot_changes(self, frame_id: int, ts: float) -> list[SlotChange]:
        changes = []
        for i, members in enumerate(self._members()):
            slot, spec = self._slots[i], self.config.slots[i]
            state, deciding = self._slot_state(members)
            sku = deciding.sku if state in ("misplaced", "present") else None
            if state == slot.state:  # the SKU of a misplaced slot may be revised without an event
                slot.sku = sku
                continue
            previous = slot.state
            slot.state, slot.sku = state, sku
            slot.since = max(f.since for f in members) if state != "misplaced" else deciding.since
            if state == "unknown":
                continue
            d = deciding.decision if state != "empty" else None
            changes.append(
                SlotChange(
                    slot_id=spec.id,
                    previous=previous,
                    state=state,
                    expected_sku=spec.sku,
                    sku=sku,
                    route=d.route if d is not None else None,
                    score=round(float(d.score), 4) if d is not None and math.isfinite(d.score) else None,
                    ts=ts,
                    frame_id=frame_id,
                )
            )
        return changes

    def emptiness_cues(self) -> tuple[list[float], list[float | None]]:
        """Per facing, in ``regions()`` order, what the last frame's emptiness test read: its largest block
        texture and its smallest block match with the empty shelf (None without a reference)."""
        if self._last is None:
            return [], []
        return self.emptiness.facing_scores(*self._last)

    def facing_states(self) -> list[tuple[str, str | None]]:
        """(state, SKU) of every facing, in ``regions()`` order."""
        return [(f.state, f.sku) for f in self._facings]

    def slot_states(self) -> dict[str, str]:
        """Slot id -> its current state."""
        return {spec.id: slot.state for spec, slot in zip(self.config.slots, self._slots, strict=True)}

    def slot_counts(self) -> dict[str, int]:
        """Slots per state (every state named, zeros included), for metrics and the heartbeat."""
        counts: dict[str, int] = dict.fromkeys(SLOT_STATES, 0)
        for slot in self._slots:
            counts[slot.state] += 1
        return counts

    def state(self) -> dict[str, Any]:
        """The body of the retained ``edge.shelf/1`` message (the caller adds schema, device and time)."""
        slots = []
        facings: dict[str, int] = {}
        area: dict[str, int] = {}
        for i, members in enumerate(self._members()):
            spec, slot = self.config.slots[i], self._slots[i]
            filled = 0
            for f in members:
                if f.state not in ("present", "misplaced"):
                    continue
                code = (f.sku or "") if f.state == "misplaced" else spec.sku  # "": a product the head cannot name
                facings[code] = facings.get(code, 0) + 1
                area[code] = area.get(code, 0) + f.box[2] * f.box[3]
                filled += f.state == "present"
            slots.append(
                {
                    "id": spec.id,
                    "expected_sku": spec.sku,
                    "state": slot.state,
                    "sku": slot.sku,
                    "since": round(slot.since, 3),
                    "facings": {"filled": filled, "planned": spec.facings},
                }
            )
        groups_count: dict[str, int] = {}
        groups_area: dict[str, int] = {}
        for code, n in facings.items():
            group = self._skus[code].group if code in self._skus else ""
            groups_count[group] = groups_count.get(group, 0) + n
            groups_area[group] = groups_area.get(group, 0) + area[code]
        return {
            "slots": slots,
            "counts": self.slot_counts(),
            "facings": dict(sorted(facings.items())),
            "share": {
                "sku": _shares(facings, area),
                "group": _shares(groups_count, groups_area),
            },
        }


def _shares(count: dict[str, int], area: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per key its share of all filled facings, by count and by area (empty shelf: nothing)."""
    total_n, total_a = sum(count.values()), sum(area.values())
    return {
        key: {"count": round(count[key] / total_n, 4), "area": round(area[key] / total_a, 4)}
        for key in sorted(count)
        if total_n and total_a
    }
