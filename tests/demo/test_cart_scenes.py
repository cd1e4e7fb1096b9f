"""The cart scenario generator: deterministic sessions whose truth adds up, written videos that read back."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from itertools import islice
from pathlib import Path

import cv2
import pytest

from edge_runtime.demo import demo_skus, demo_unknown_skus
from edge_runtime.demo.cart_scenes import SIZE, cart_scenario, grocery_appearances, write_scenario_video
from tests.conftest import GROCERY


def test_a_seed_gives_the_same_session_and_the_truth_adds_up() -> None:
    a, b = cart_scenario(8, actions=4), cart_scenario(8, actions=4)
    assert a.truth() == b.truth()
    digest = [hashlib.sha256(f.tobytes()).hexdigest() for f in islice(a.frames(), 26, 28)]  # a product coming in
    assert digest == [hashlib.sha256(f.tobytes()).hexdigest() for f in islice(b.frames(), 26, 28)]
    assert cart_scenario(9, actions=4).truth() != a.truth()
    drawn = {s.code for s in demo_skus(0)} | {s.code for s in demo_unknown_skus(0)}
    sessions = [cart_scenario(seed, actions=5) for seed in range(4)]
    for sc in sessions:
        added = Counter(e.sku for e in sc.events if e.type == "added")
        removed = Counter(e.sku for e in sc.events if e.type == "removed")
        assert dict(added - removed) == sc.contents
        assert all(e.frame < sc.n_frames for e in sc.events)
        assert sc.events == sorted(sc.events, key=lambda e: e.frame)
        # Every removal follows its own add; nothing is removed twice.
        items = Counter((e.item, e.type) for e in sc.events)
        assert all(n == 1 for n in items.values())
        assert {e.sku for e in sc.events} <= drawn  # without grocery photos: the demo's packages
    features = {f for sc in sessions for f in sc.features}
    assert {"two at once", "lighting", "occlusion"} <= features


def test_quiet_frames_are_the_ones_without_a_hand(tmp_path: Path) -> None:
    sc = cart_scenario(7, actions=3)
    lying = [sc.lying(i) for i in range(sc.n_frames)]
    assert lying[0] == 0 and lying[-1] == sum(sc.contents.values())
    add = next(e for e in sc.events if e.type == "added")
    assert lying[add.frame - 5] is None  # the hand is still letting go
    assert lying[add.frame + 2] == 1


def test_a_written_session_reads_back_with_its_truth(tmp_path: Path) -> None:
    sc = cart_scenario(7, actions=2)
    frames = list(islice(sc.frames(), 12))
    sc.n_frames = len(frames)  # a short clip of it is enough to check the writer
    video = write_scenario_video(sc, tmp_path / "clip", frames)
    cap = cv2.VideoCapture(str(video))
    read = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert (frame.shape[1], frame.shape[0]) == SIZE
        read += 1
    cap.release()
    truth = json.loads(video.with_suffix(".truth.json").read_text())
    assert read == 12 == truth["frames"] and truth["size"] == list(SIZE) and truth["fps"] == sc.fps


def test_grocery_photos_become_new_products() -> None:
    if not (GROCERY / "iconic-images-and-descriptions").is_dir():
        pytest.skip(f"shared grocery data not present at {GROCERY}")
    photos = grocery_appearances(GROCERY, limit=6)
    assert len(photos) == 6 and all(k.startswith("grocery:") for k in photos)
    assert all(t.shape[2] == 4 and 0 < (t[..., 3] > 0).mean() < 1 for t in photos.values())
    skus = {e.sku for seed in range(8) for e in cart_scenario(seed, photos, unknown_share=0.6).events}
    assert any(s.startswith("grocery:") for s in skus)
