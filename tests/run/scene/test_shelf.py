"""The shelf scene: facings, emptiness, hysteresis, misplaced, state body, and bad configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_runtime.demo import demo_skus
from edge_runtime.demo.packages import package_template
from edge_runtime.errors import InputError, ProfileError
from edge_runtime.profile.shelf import ShelfConfig
from edge_runtime.run.scene.shelf import SLOT_STATES, ShelfScene, SlotChange, facing_boxes
from edge_runtime.types import Decision, SkuInfo

SIZE = (320, 240)  # (width, height)
SLOTS: list[dict[str, Any]] = [
    {"id": "s1", "box": [10, 20, 90, 140], "sku": "a"},
    {"id": "s2", "box": [120, 20, 180, 140], "sku": "b", "facings": 2},
]
SKUS = [SkuInfo("a", "A", "dairy"), SkuInfo("b", "B", "dairy"), SkuInfo("c", "C", "snacks")]
FACINGS = [(10, 20, 90, 140), (120, 20, 90, 140), (210, 20, 90, 140)]  # regions() order


def _templates() -> list[np.ndarray]:
    skus = demo_skus(0)
    return [package_template(skus[i]) for i in (0, 12, 20, 4)]


TEMPLATES = _templates()


def shelf_frame(
    filled: list[np.ndarray | None], gain: float = 1.0, pegboard: bool = False, seed: int = 0, narrow: bool = False
) -> np.ndarray:
    """A shelf with one item per facing (None: empty), plain or pegboard back, sensor noise, a light gain."""
    w, h = SIZE
    img = np.empty((h, w, 3), np.float32)
    img[:] = (175.0, 182.0, 188.0)
    if pegboard:
        for y in range(6, h, 12):
            for x in range(6, w, 12):
                cv2.circle(img, (x, y), 2, (60.0, 62.0, 66.0), -1, cv2.LINE_AA)
    cv2.rectangle(img, (0, 162), (w, 175), (95.0, 100.0, 105.0), -1)  # the shelf lip
    for (x, y, fw, fh), item in zip(FACINGS, filled, strict=True):
        if item is None:
            continue
        s = min(fw * (0.35 if narrow else 0.9) / item.shape[1], fh * 0.9 / item.shape[0])
        pw, ph = int(item.shape[1] * s), int(item.shape[0] * s)
        patch = cv2.resize(item, (pw, ph), interpolation=cv2.INTER_AREA).astype(np.float32)
        px, py = x + (fw - pw) // 2, y + fh - ph
        alpha = patch[..., 3:] / 255.0
        region = img[py : py + ph, px : px + pw]
        region[:] = region * (1 - alpha) + patch[..., :3] * alpha
    img *= gain
    img += np.random.default_rng(seed).normal(0, 2.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


GROUP = {s.code: s.group for s in SKUS}


def dec(
    sku: str | None, route: str = "verify", score: float = 0.8, top: tuple[tuple[str, float], ...] | None = None
) -> Decision:
    """A head decision; ``top`` (its candidates) defaults to the named SKU alone."""
    group = GROUP[sku] if sku is not None else None
    top_k = top if top is not None else (((sku, score),) if sku is not None else ())
    return Decision(sku=sku, name=sku, group=group, score=score, ood_score=0.5, route=route, top_k=top_k)  # type: ignore[arg-type]


def config(**overrides: Any) -> ShelfConfig:
    return ShelfConfig.model_validate({"slots": SLOTS, "hold_frames": 3, "hold_s": 1.0, **overrides})


FULL = [TEMPLATES[0], TEMPLATES[1], TEMPLATES[1]]
EXPECTED = [dec("a"), dec("b"), dec("b")]


def run(scene: ShelfScene, frames: list[tuple[np.ndarray, list[Decision]]], start: int = 0) -> list[list[SlotChange]]:
    """Feed frames two per second; the changes of each."""
    return [scene.update(start + i, (start + i) * 0.5, f, d) for i, (f, d) in enumerate(frames)]


def settled(scene: ShelfScene, frame: np.ndarray, decisions: list[Decision], n: int = 3) -> list[list[SlotChange]]:
    return run(scene, [(frame, decisions)] * n)


def test_regions_are_the_facings_in_planogram_order():
    scene = ShelfScene(config(), SKUS, SIZE)
    assert [r.box for r in scene.regions()] == FACINGS
    assert scene.facing_slots() == ["s1", "s2", "s2"]
    assert facing_boxes([0, 0, 100, 10], 3) == [(0, 0, 33, 10), (33, 0, 33, 10), (66, 0, 34, 10)]


def test_states_change_only_after_hold_frames_and_hold_seconds():
    scene = ShelfScene(config(), SKUS, SIZE)
    assert scene.slot_counts() == {"present": 0, "empty": 0, "misplaced": 0, "unknown": 2}
    first = settled(scene, shelf_frame(FULL), EXPECTED)
    # The first look is taken at once (nothing to protect yet), then states hold.
    assert {(c.slot_id, c.previous, c.state) for c in first[0]} == {
        ("s1", "unknown", "present"),
        ("s2", "unknown", "present"),
    }
    assert first[1] == first[2] == []
    emptied = shelf_frame([None, TEMPLATES[1], TEMPLATES[1]], seed=1)
    changes = run(scene, [(emptied, [dec(None, "unknown"), dec("b"), dec("b")])] * 3, start=3)
    assert changes[0] == changes[1] == []
    (change,) = changes[2]
    assert (change.slot_id, change.previous, change.state, change.sku, change.route, change.score) == (
        "s1", "present", "empty", None, None, None,
    )  # fmt: skip
    assert (change.frame_id, change.ts, change.expected_sku) == (5, 2.5, "a")
    # hold_s counts too: six frames in 2.5 s do not make a change that must hold 5 s.
    scene2 = ShelfScene(config(hold_s=5.0), SKUS, SIZE)
    settled(scene2, shelf_frame(FULL), EXPECTED, n=1)
    assert all(c == [] for c in run(scene2, [(emptied, [dec(None, "unknown"), dec("b"), dec("b")])] * 6, start=1))
    assert scene2.slot_states()["s1"] == "present"


def test_a_hand_passing_or_a_flicker_does_not_flap():
    scene = ShelfScene(config(), SKUS, SIZE)
    settled(scene, shelf_frame(FULL), EXPECTED)
    hand = shelf_frame([None, TEMPLATES[1], TEMPLATES[1]])
    flicker = [
        (hand, [dec("c", "accept", 0.99), dec("b"), dec("b")]),
        (shelf_frame(FULL), [dec("c", "accept", 0.99), dec("b"), dec("b")]),
        (shelf_frame(FULL), EXPECTED),
        (hand, EXPECTED),
        (hand, EXPECTED),
        (shelf_frame(FULL), EXPECTED),
    ]
    assert all(c == [] for c in run(scene, flicker, start=3))
    assert scene.slot_states() == {"s1": "present", "s2": "present"}


def test_a_product_the_head_does_not_know_is_not_an_empty_slot():
    stranger = shelf_frame([TEMPLATES[3], None, None])
    # Route unknown, and the expected SKU is not among the head's candidates: another product, unnamed.
    foreign = [dec(None, "unknown", 0.1, top=(("c", 0.1),)), dec(None, "unknown"), dec(None, "unknown")]
    scene = ShelfScene(config(), SKUS, SIZE)
    settled(scene, stranger, foreign)
    assert scene.slot_states() == {"s1": "misplaced", "s2": "empty"}
    body = scene.state()
    assert body["slots"][0]["sku"] is None and body["facings"] == {"": 1}  # "": a product the head cannot name
    assert body["slots"][1]["facings"] == {"filled": 0, "planned": 2}
    # The head unsure but the expected SKU among its candidates: something is there, not known to be wrong.
    unsure = [dec(None, "unknown", 0.1, top=(("c", 0.2), ("a", 0.1))), dec(None, "unknown"), dec(None, "unknown")]
    scene = ShelfScene(config(), SKUS, SIZE)
    settled(scene, stranger, unsure)
    assert scene.slot_states() == {"s1": "present", "s2": "empty"}
    assert scene.state()["slots"][0]["sku"] is None  # present, but nothing recognised
    # expected_min = 0 turns the planogram check off: an unknown look never makes a slot misplaced.
    scene = ShelfScene(config(expected_min=0.0), SKUS, SIZE)
    settled(scene, stranger, foreign)
    assert scene.slot_states()["s1"] == "present"


def test_a_narrow_product_in_a_wide_facing_fills_it():
    scene = ShelfScene(config(), SKUS, SIZE)
    settled(
        scene, shelf_frame([TEMPLATES[2], TEMPLATES[2], None], narrow=True), [dec("a"), dec("b"), dec(None, "unknown")]
    )
    assert [s for s, _ in scene.facing_states()] == ["present", "present", "empty"]


def test_misplaced_needs_a_confident_other_sku():
    wrong = shelf_frame([TEMPLATES[2], TEMPLATES[1], TEMPLATES[1]])
    sibling = [dec("b", "verify", 0.9), dec("b"), dec("b")]  # b is in a's group: heads confuse siblings
    other_group = [dec("c", "verify", 0.9), dec("b"), dec("b")]
    sure = [dec("b", "accept", 0.97), dec("b"), dec("b")]
    scene = ShelfScene(config(), SKUS, SIZE)  # misplaced_route = "group"
    settled(scene, wrong, sibling)
    assert scene.slot_states()["s1"] == "present"
    changes = run(scene, [(wrong, sure)] * 3, start=3)
    (change,) = changes[2]
    assert (change.slot_id, change.previous, change.state, change.sku, change.route, change.score) == (
        "s1", "present", "misplaced", "b", "accept", 0.97,
    )  # fmt: skip
    # Which wrong SKU stands there is the one named most often (revised without an event); putting the right
    # one back ends it.
    assert all(c == [] for c in run(scene, [(wrong, other_group)] * 2, start=6))
    assert scene.state()["slots"][0]["sku"] == "b"
    assert all(c == [] for c in run(scene, [(wrong, other_group)] * 3, start=8))
    assert scene.state()["slots"][0]["sku"] == "c"
    back = run(scene, [(shelf_frame(FULL), EXPECTED)] * 3, start=11)
    assert [(c.previous, c.state, c.sku) for c in back[2]] == [("misplaced", "present", "a")]
    strict = ShelfScene(config(misplaced_route="accept"), SKUS, SIZE)
    settled(strict, wrong, other_group)
    assert strict.slot_states()["s1"] == "present"
    lenient = ShelfScene(config(misplaced_route="verify"), SKUS, SIZE)
    settled(lenient, wrong, sibling)
    assert lenient.slot_states()["s1"] == "misplaced"
    for rule in ("accept", "group", "verify"):  # an unknown route is never misplaced
        unsure = ShelfScene(config(misplaced_route=rule), SKUS, SIZE)
        settled(unsure, wrong, [dec(None, "unknown", 0.3, top=(("c", 0.3), ("a", 0.2))), dec("b"), dec("b")])
        assert unsure.slot_states()["s1"] == "present"


def test_a_wide_slot_is_empty_only_when_every_facing_is_and_misplaced_when_one_is():
    scene = ShelfScene(config(), SKUS, SIZE)
    settled(scene, shelf_frame([TEMPLATES[0], None, TEMPLATES[1]]), [dec("a"), dec(None, "unknown"), dec("b")])
    assert scene.slot_states() == {"s1": "present", "s2": "present"}
    assert scene.state()["slots"][1]["facings"] == {"filled": 1, "planned": 2}
    run(
        scene,
        [(shelf_frame([TEMPLATES[0], None, TEMPLATES[2]]), [dec("a"), dec(None, "unknown"), dec("c", "accept")])] * 3,
    )
    assert scene.slot_states() == {"s1": "present", "s2": "misplaced"}
    run(scene, [(shelf_frame([TEMPLATES[0], None, None]), [dec("a"), dec(None, "unknown"), dec(None, "unknown")])] * 3)
    assert scene.slot_states() == {"s1": "present", "s2": "empty"}


@pytest.mark.parametrize("gain", [0.4, 1.7])
def test_a_lighting_change_does_not_flip_states(gain: float):
    scene = ShelfScene(config(), SKUS, SIZE)
    layout = [TEMPLATES[0], None, TEMPLATES[1]]
    decisions = [dec("a"), dec(None, "unknown"), dec("b")]
    settled(scene, shelf_frame(layout), decisions)
    before = scene.facing_states()
    assert all(c == [] for c in run(scene, [(shelf_frame(layout, gain=gain, seed=2), decisions)] * 4, start=3))
    assert scene.facing_states() == before


def test_a_patterned_back_needs_the_empty_shelf_photo(tmp_path: Path):
    layout = [TEMPLATES[0], None, TEMPLATES[1]]
    decisions = [dec("a"), dec(None, "unknown"), dec("b")]
    plain = ShelfScene(config(), SKUS, SIZE)
    settled(plain, shelf_frame(layout, pegboard=True), decisions)
    assert all(s != "empty" for s, _ in plain.facing_states())  # the holes read as print
    ref = tmp_path / "empty.png"
    cv2.imwrite(str(ref), shelf_frame([None, None, None], pegboard=True, seed=9))
    scene = ShelfScene(config(empty_reference=str(ref)), SKUS, SIZE)
    assert scene.emptiness.has_reference
    settled(scene, shelf_frame(layout, pegboard=True, seed=3), decisions)
    assert [s for s, _ in scene.facing_states()] == ["present", "empty", "present"]
    textures, matches = scene.emptiness_cues()
    assert len(textures) == 3 and all(m is not None for m in matches)
    assert matches[1] is not None and matches[0] is not None and matches[1] > 0.5 > matches[0]
    # Dimmer light on the empty shelf: the match ignores the gain, and the reference follows it.
    run(scene, [(shelf_frame(layout, pegboard=True, gain=0.6, seed=4), decisions)] * 4, start=3)
    assert [s for s, _ in scene.facing_states()] == ["present", "empty", "present"]


def test_state_body_counts_facings_and_share_by_count_and_area():
    scene = ShelfScene(config(), SKUS, SIZE)
    settled(
        scene, shelf_frame([TEMPLATES[2], TEMPLATES[1], None]), [dec("c", "accept"), dec("b"), dec(None, "unknown")]
    )
    body = scene.state()
    assert body["counts"] == {"present": 1, "empty": 0, "misplaced": 1, "unknown": 0}
    assert scene.slot_counts() == body["counts"] and tuple(body["counts"]) == SLOT_STATES
    s1, s2 = body["slots"]
    assert (s1["id"], s1["expected_sku"], s1["state"], s1["sku"], s1["since"]) == ("s1", "a", "misplaced", "c", 0.0)
    assert s2["facings"] == {"filled": 1, "planned": 2} and s2["sku"] == "b"
    assert body["facings"] == {"b": 1, "c": 1}
    assert body["share"]["sku"] == {"b": {"count": 0.5, "area": 0.5}, "c": {"count": 0.5, "area": 0.5}}
    assert body["share"]["group"] == {"dairy": {"count": 0.5, "area": 0.5}, "snacks": {"count": 0.5, "area": 0.5}}


def test_share_by_area_follows_facing_sizes():
    slots = [{"id": "big", "box": [0, 0, 200, 100], "sku": "a"}, {"id": "small", "box": [200, 0, 100, 100], "sku": "c"}]
    scene = ShelfScene(ShelfConfig.model_validate({"slots": slots, "hold_frames": 1, "hold_s": 0}), SKUS, SIZE)
    frame = np.full((SIZE[1], SIZE[0], 3), 180, np.uint8)
    frame[10:90, 20:180] = np.random.default_rng(0).integers(0, 255, (80, 160, 3), dtype=np.uint8)
    frame[10:90, 220:280] = np.random.default_rng(1).integers(0, 255, (80, 60, 3), dtype=np.uint8)
    scene.update(0, 0.0, frame, [dec("a"), dec("c")])
    share = scene.state()["share"]
    assert share["sku"] == {"a": {"count": 0.5, "area": 0.6667}, "c": {"count": 0.5, "area": 0.3333}}


def test_planogram_problems_are_reported_at_once():
    bad = [*SLOTS, {"id": "s3", "box": [300, 100, 60, 100], "sku": "zz"}]
    with pytest.raises(ProfileError) as info:
        ShelfScene(ShelfConfig.model_validate({"slots": bad}), SKUS, SIZE)
    text = str(info.value)
    assert "slot 's3' expects SKU 'zz', which the bundle does not know" in text
    assert "slot 's3' box [300, 100, 60, 100] leaves the 320x240 frame" in text
    assert info.value.exit_code == 2


def test_an_unusable_empty_shelf_photo_is_one_clear_error(tmp_path: Path):
    with pytest.raises(InputError, match="not a readable image"):
        ShelfScene(config(empty_reference=str(tmp_path / "missing.png")), SKUS, SIZE)
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(InputError, match="is 10x10, the camera captures 320x240"):
        ShelfScene(config(empty_reference=str(small)), SKUS, SIZE)


def test_frames_and_decisions_that_do_not_fit_are_refused():
    scene = ShelfScene(config(), SKUS, SIZE)
    with pytest.raises(ValueError, match="2 decisions for the shelf's 3 regions"):
        scene.update(0, 0.0, shelf_frame(FULL), EXPECTED[:2])
    with pytest.raises(ValueError, match="frame is 640x480"):
        scene.update(0, 0.0, np.zeros((480, 640, 3), np.uint8), EXPECTED)


def test_a_wrong_first_look_is_corrected_after_the_hold():
    scene = ShelfScene(config(), SKUS, SIZE)
    hand_at_start = shelf_frame([TEMPLATES[3], TEMPLATES[1], TEMPLATES[1]])  # something in front of s1
    (first,) = [
        c for c in scene.update(0, 0.0, hand_at_start, [dec("c", "accept"), dec("b"), dec("b")]) if c.slot_id == "s1"
    ]
    assert (first.previous, first.state, first.sku) == ("unknown", "misplaced", "c")
    changes = run(scene, [(shelf_frame(FULL), EXPECTED)] * 3, start=1)
    assert [(c.slot_id, c.previous, c.state) for c in changes[2]] == [("s1", "misplaced", "present")]
    assert scene.state()["slots"][0]["since"] == 0.5  # when the right state was first seen
