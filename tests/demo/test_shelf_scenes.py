"""Shelf scenario videos: deterministic, truth that follows the timeline, files a shelf scene can be run on."""

from __future__ import annotations

import hashlib
import json
from itertools import islice
from pathlib import Path

import cv2
import pytest

from edge_runtime.demo.shelf_scenes import (
    SCENE_SIZE,
    grocery_split,
    scenario_frames,
    shelf_scenarios,
    synthetic_appearances,
    write_shelf_scenario,
)
from edge_runtime.profile.shelf import ShelfConfig

GROCERY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "grocery"


def _digest(frames: list) -> str:
    return hashlib.sha256(b"".join(f.tobytes() for f in frames)).hexdigest()


def test_scenarios_cover_restock_unknowns_lighting_and_pegboard():
    names = [sc.name for sc in shelf_scenarios(0)]
    assert names == ["synthetic-restock", "synthetic-unknown", "synthetic-lighting", "synthetic-pegboard"]


def test_same_seed_same_frames_other_seed_other_shelf():
    a, b = shelf_scenarios(0, frames=40)[0], shelf_scenarios(0, frames=40)[0]
    assert _digest(list(islice(scenario_frames(a), 3))) == _digest(list(islice(scenario_frames(b), 3)))
    other = shelf_scenarios(1, frames=40)[0]
    assert [s["sku"] for s in other.slots] != [s["sku"] for s in a.slots]


def test_truth_follows_the_restock_timeline():
    sc = shelf_scenarios(0, frames=120)[0]
    states = [sc.truth(i) for i in range(sc.frames)]
    assert all(state == ("present", None) for state in states[0].values())
    a3 = [s["A3"][0] for s in states]  # emptied at 15 %, refilled at 55 %
    assert a3[17] == "present" and a3[18:66] == ["empty"] * 48 and a3[66] == "present"
    a2 = [s["A2"] for s in states]  # two facings: one emptied at 30 %, the other at 42 %, refilled wrong at 70 %
    assert a2[40][0] == "present" and a2[55][0] == "empty" and a2[90][0] == "misplaced"
    assert a2[90][1] not in (None, sc.slots[1]["sku"]) and a2[110] == ("present", None)
    kinds = sc.facing_truth(40)
    assert kinds[1:3] == ["empty", "expected"]  # the half-emptied wide slot
    # Hands come with every change and pass by at other times, and they never change the truth.
    assert len(sc.hands) == 6 + 6


def test_unknown_products_are_wrong_products_and_the_light_changes():
    _, unknown, lighting, pegboard = shelf_scenarios(0, frames=120)
    assert unknown.facing_truth(0)[0] == "stranger"
    assert unknown.truth(0)["A1"] == ("misplaced", None)  # the wrong product, which has no SKU code
    assert lighting.gain(0) == (1.0, 0.0) and lighting.gain(50) == (0.55, 0.35)
    assert pegboard.patterned and not lighting.patterned


def test_written_scenario_is_a_readable_video_with_per_frame_truth(tmp_path: Path):
    sc = shelf_scenarios(0, frames=6)[3]
    video = write_shelf_scenario(sc, tmp_path)
    meta = json.loads(video.with_suffix(".labels.json").read_text())
    cap = cv2.VideoCapture(str(video))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert (frame.shape[1], frame.shape[0]) == SCENE_SIZE
        n += 1
    cap.release()
    assert n == meta["frames"] == len(meta["truth"]) == 6
    assert meta["scenario"] == sc.name and meta["appearances"] == "synthetic"
    assert set(meta["truth"][0]) == {s["id"] for s in sc.slots}
    reference = tmp_path / meta["empty_reference"]
    assert cv2.imread(str(reference)).shape == (SCENE_SIZE[1], SCENE_SIZE[0], 3)
    config = ShelfConfig.model_validate({"slots": meta["slots"], "empty_reference": str(reference)})
    assert len(config.slots) == 8 and sum(s.facings for s in config.slots) == 10
    assert set(s.sku for s in config.slots) <= set(synthetic_appearances(0).known)


@pytest.mark.skipif(not (GROCERY / "train.txt").is_file(), reason="needs ../shared/data/grocery")
def test_grocery_scene_photos_and_new_products_stay_out_of_the_catalogue():
    catalogue, scenes, unknown = grocery_split(GROCERY)
    in_catalogue = {p for p, _, _ in catalogue}
    assert not in_catalogue & {p for photos in scenes.values() for p in photos}
    assert not in_catalogue & set(unknown)
    assert {code for _, code, _ in catalogue} == set(scenes)
    assert len(unknown) > 0 and all(len(v) >= 3 for v in scenes.values())
