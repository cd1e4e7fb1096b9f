"""The ``[scene]`` profile table: what edge-run makes of its frames (issue 18).

``kind = "frames"`` (the default) is one ``edge.results/1`` message per processed frame, as before. ``"cart"``
turns the regions of a basket camera into tracks, one decision per track, ``added``/``removed`` events, sessions
and the retained cart contents. ``"shelf"`` compares fixed slots with a planogram (``[scene.shelf]``, defined in
``profile/shelf.py``). The checks that need other tables (the shelf needs slots; a cart that takes its proposals
from ``[regions]`` needs a detector there) run in ``check_scene``, called by ``DeviceProfile`` while it validates,
so they come out as the same one-line ``FILE: scene...: reason`` problems as the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, FiniteFloat, field_validator

from edge_runtime.profile.fields import MODEL_CONFIG, Zone
from edge_runtime.profile.shelf import ShelfConfig

__all__ = ["CartConfig", "Scene", "SceneKind", "check_scene"]


SceneKind = Literal["frames", "cart", "shelf"]


class CartConfig(BaseModel):
    """A basket camera: region proposals, tracking, when an item counts as added or removed, sessions."""

    model_config = MODEL_CONFIG

    proposals: Literal["background", "regions"] = Field(
        default="background",
        description=(
            "Where the objects come from. background = change against the learned empty basket (OpenCV MOG2,"
            " connected components, size and shape filters), no detector needed; regions = the [regions] table"
            ' (mode = "detector" with a trained detector)'
        ),
    )
    basket: Zone | None = Field(
        default=None,
        description="The basket zone [x, y, w, h] in capture pixels; items settle only inside it. Unset = the frame.",
    )
    learn_frames: int = Field(
        default=15,
        ge=2,
        le=1000,
        description="Frames of the empty basket learned at start (and after a relearn) before anything is proposed.",
    )
    min_area: FiniteFloat = Field(
        default=0.006, gt=0, lt=1, description="Smallest object as a share of the basket zone's area."
    )
    max_area: FiniteFloat = Field(
        default=0.45, gt=0, le=1, validate_default=True, description="Largest object as a share of the zone's area."
    )
    max_aspect: FiniteFloat = Field(
        default=5.0, ge=1, description="Longest to shortest side of a box above which a blob is not an object."
    )
    change_threshold: FiniteFloat = Field(
        default=24.0,
        gt=0,
        le=255,
        description="MOG2 variance threshold: how far (squared, in grey levels) a pixel must move to be change.",
    )
    settle_s: FiniteFloat = Field(
        default=0.5,
        ge=0,
        le=30,
        description="An object counts as added once it has stayed still in the basket this long (seconds).",
    )
    gone_s: FiniteFloat = Field(
        default=0.6,
        gt=0,
        le=30,
        description="An added object counts as removed once it has not been seen for this long (occlusion grace).",
    )
    match_iou: FiniteFloat = Field(
        default=0.2, gt=0, lt=1, description="Least box overlap (IoU) for a detection to continue a track."
    )
    idle_timeout_s: FiniteFloat = Field(
        default=120.0,
        gt=0,
        description="A session ends after this long without activity; the next activity starts a new one.",
    )
    revise_every: int = Field(
        default=4,
        ge=1,
        le=100,
        description="A live track's decision is revised after this many new observations (and when it ends).",
    )
    publish_crops: bool = Field(
        default=True,
        description="Attach the JPEG crop to added/removed events of unknown and verify items (reviewers need it).",
    )

    @field_validator("max_area")
    @classmethod
    def _max_above_min(cls, value: float, info: Any) -> float:
        low = info.data.get("min_area")
        if low is not None and value <= low:
            raise ValueError(f"max_area ({value:g}) must be larger than min_area ({low:g})")
        return value


class Scene(BaseModel):
    """What edge-run publishes: per-frame results, cart events and contents, or shelf slot states."""

    model_config = MODEL_CONFIG

    kind: SceneKind = Field(
        default="frames",
        description=(
            "frames = one edge.results/1 per processed frame; cart = tracks, added/removed events, sessions and the"
            " retained cart contents; shelf = planogram slots, slot_changed events and the retained shelf state."
        ),
    )
    publish_frames: Literal["auto"] | bool = Field(
        default="auto",
        description=(
            "Also publish the per-frame edge.results/1 messages. auto = only for kind = frames (a cart or shelf"
            " sends events and state instead; per-frame results cost a store's uplink what it cannot give)."
        ),
    )
    cart: CartConfig = Field(default_factory=CartConfig, description="The cart scene (kind = cart).")
    shelf: ShelfConfig | None = Field(
        default=None, description="The shelf scene (kind = shelf): the planogram's slots and the slot-state rules."
    )

    @property
    def frames_published(self) -> bool:
        """Whether per-frame results go out (``publish_frames`` with ``auto`` resolved)."""
        return self.kind == "frames" if self.publish_frames == "auto" else bool(self.publish_frames)


def check_scene(scene: Scene, tables: Mapping[str, Any]) -> Scene:
    """Checks across tables; ``tables`` are the already validated tables of the profile (pydantic's
    ``info.data``). Raises ValueError with one line naming the problem and the fix."""
    regions = tables.get("regions")
    if scene.kind == "shelf" and scene.shelf is None:
        raise ValueError('kind = "shelf" needs slots: add [[scene.shelf.slots]] tables (id, box and expected sku)')
    if scene.kind == "shelf" and scene.shelf is not None:
        facings = sum(slot.facings for slot in scene.shelf.slots)
        limit = getattr(regions, "max_regions", None)
        if limit is not None and facings > limit:
            # Every facing is a region of every frame; the GPU engine's batch profile stops at max_regions.
            raise ValueError(
                f"the planogram has {facings} facings but [regions] max_regions is {limit}: set max_regions"
                f" = {facings} (the GPU engine's batch is sized by it)"
            )
        for camera in tables.get("cameras") or []:
            outside = scene.shelf.boxes_outside(camera.width, camera.height)
            if outside:
                raise ValueError(f"{outside[0]} of camera {camera.name!r}: give slot boxes in that camera's pixels")
    if scene.kind == "cart" and scene.cart.proposals == "regions":
        mode = getattr(regions, "mode", "full")
        if mode != "detector":
            raise ValueError(
                f'cart.proposals = "regions" takes its objects from [regions], whose mode is "{mode}": set'
                ' [regions] mode = "detector" with detector_model, or cart.proposals = "background"'
            )
    cameras = tables.get("cameras") or []
    basket = scene.cart.basket
    if scene.kind == "cart" and basket is not None:
        for camera in cameras:
            if basket[0] + basket[2] > camera.width or basket[1] + basket[3] > camera.height:
                raise ValueError(
                    f"cart.basket {basket} does not fit camera {camera.name!r} ({camera.width}x{camera.height}):"
                    " give the zone in that camera's pixels"
                )
    return scene
