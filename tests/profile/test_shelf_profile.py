"""The [scene.shelf] table: the planogram's checks, one line per problem, and the shipped shelf camera."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge_runtime.errors import ProfileError
from edge_runtime.profile import load_profile
from edge_runtime.profile.shelf import ShelfConfig

REPO_PROFILES = Path(__file__).resolve().parents[2] / "device_profiles"
SLOT = {"id": "a", "box": [0, 0, 100, 100], "sku": "milk"}


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        ShelfConfig.model_validate(data)
    return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in info.value.errors()]


def test_defaults_and_a_minimal_planogram():
    config = ShelfConfig.model_validate({"slots": [SLOT]})
    assert (config.hold_frames, config.hold_s, config.misplaced_route, config.empty_reference) == (
        3,
        2.0,
        "group",
        None,
    )
    assert config.slots[0].facings == 1
    assert config.boxes_outside(100, 100) == [] and config.boxes_outside(99, 100) == [
        "slot 'a' box [0, 0, 100, 100] leaves the 99x100 frame"
    ]


@pytest.mark.parametrize(
    ("slots", "expected"),
    [
        ([SLOT, {**SLOT, "box": [200, 0, 50, 50]}], "slots: Value error, duplicate slot ids: a"),
        (
            [{**SLOT, "box": [0, 0, 0, 100]}],
            "slots.0.box: Value error, slot box w and h must be > 0 (a box of zero size)",
        ),
        ([{**SLOT, "box": [0, 0, 100]}], "slots.0.box: Value error, a slot box is [x, y, w, h] (4 integers); got 3"),
        ([{**SLOT, "box": [-1, 0, 10, 10]}], "slots.0.box: Value error, slot box x and y must be >= 0"),
        (
            [{**SLOT, "facings": 7}],
            "slots.0: Value error, slot 'a': 7 facing(s) in a 100x100 box leave columns under 16 px",
        ),
        ([{**SLOT, "sku": ""}], "slots.0.sku: String should have at least 1 character"),
        ([{**SLOT, "id": "a b"}], "slots.0.id: String should match pattern"),
        (
            [SLOT, {**SLOT, "id": "b", "box": [10, 10, 100, 100]}],
            "slots: Value error, slots 'a' and 'b' overlap by more",
        ),
        ([{**SLOT, "facing": 2}], "slots.0.facing: Extra inputs are not permitted"),
        ([], "slots: List should have at least 1 item"),
    ],
)
def test_planogram_mistakes_are_one_line_each(slots: list[dict[str, Any]], expected: str):
    found = problems({"slots": slots})
    assert len(found) == 1 and found[0].startswith(expected), found


@pytest.mark.parametrize(
    ("key", "value"),
    [("hold_frames", 0), ("hold_s", -1.0), ("hold_s", float("inf")), ("misplaced_route", "unknown"),
     ("empty_texture_max", 0.0), ("empty_match_min", 1.5)],
)  # fmt: skip
def test_rule_settings_are_checked(key: str, value: Any):
    assert [p.split(":")[0] for p in problems({"slots": [SLOT], key: value})] == [key]


def write(directory: Path, text: str) -> Path:
    path = directory / "shelf-test.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


BASE = f"""
extends = "{(REPO_PROFILES / "dev-cpu.toml").as_posix()}"
[scene]
kind = "shelf"
"""


def test_a_profile_with_a_shelf_scene_loads(tmp_path: Path):
    path = write(
        tmp_path,
        BASE
        + """
        [scene.shelf]
        hold_frames = 2
        [[scene.shelf.slots]]
        id = "left"
        box = [0, 0, 320, 480]
        sku = "milk-alpine-whole"
        facings = 2
        """,
    )
    profile = load_profile(path)
    assert profile.scene.kind == "shelf" and profile.scene.shelf is not None
    assert profile.scene.shelf.hold_frames == 2 and profile.scene.shelf.slots[0].facings == 2


def test_profile_problems_name_the_file_and_key(tmp_path: Path):
    path = write(
        tmp_path,
        BASE
        + """
        [[scene.shelf.slots]]
        id = "left"
        box = [0, 0, 320, 0]
        sku = "milk-alpine-whole"
        [[scene.shelf.slots]]
        id = "right"
        box = [320, 0, 400, 480]
        sku = "milk-alpine-semi"
        holdframes = 3
        """,
    )
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    text = str(info.value)
    assert "shelf-test.toml: scene.shelf.slots[0].box: slot box w and h must be > 0 (a box of zero size)" in text
    assert "shelf-test.toml: scene.shelf.slots[1].holdframes: unknown key" in text


def test_slots_outside_the_camera_are_refused(tmp_path: Path):
    path = write(
        tmp_path,
        BASE
        + """
        [[scene.shelf.slots]]
        id = "wide"
        box = [400, 0, 320, 480]
        sku = "milk-alpine-whole"
        """,
    )
    with pytest.raises(ProfileError, match=r"slot 'wide' box \[400, 0, 320, 480\] leaves the 640x480 frame"):
        load_profile(path)


def test_more_facings_than_regions_max_is_refused(tmp_path: Path):
    # Every facing is a region of every frame, and the GPU engine's batch stops at [regions] max_regions.
    path = write(
        tmp_path,
        BASE
        + """
        [regions]
        max_regions = 2

        [[scene.shelf.slots]]
        id = "long"
        box = [0, 0, 600, 200]
        sku = "milk-alpine-whole"
        facings = 3
        """,
    )
    with pytest.raises(ProfileError, match=r"3 facings but \[regions\] max_regions is 2: set max_regions = 3"):
        load_profile(path)


def test_shelf_cam_v1_ships_a_planogram_that_fits_its_camera():
    profile = load_profile(REPO_PROFILES / "shelf-cam-v1.toml")
    assert profile.scene.kind == "shelf" and profile.scene.shelf is not None
    shelf = profile.scene.shelf
    camera = profile.cameras[0]
    assert shelf.boxes_outside(camera.width, camera.height) == []
    assert sum(s.facings for s in shelf.slots) <= profile.regions.max_regions
    assert not profile.scene.frames_published
