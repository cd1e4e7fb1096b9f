"""The scene tracker: ids that follow boxes, still detection, ended tracks."""

from __future__ import annotations

from edge_runtime.run.scene.tracker import Tracker, iou


def test_iou_of_boxes() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert abs(iou((0, 0, 10, 10), (5, 0, 10, 10)) - 50 / 150) < 1e-9


def test_two_moving_boxes_keep_their_ids_and_a_lost_one_ends_after_max_age() -> None:
    tracker = Tracker(match_iou=0.2, max_age_s=0.5)
    ids, ended = tracker.update(0.0, [(0, 0, 50, 50), (200, 0, 50, 50)])
    assert ids == [1, 2] and not ended
    for k in range(1, 6):  # both move 8 px a frame; the list order swaps, the ids must not
        ids, ended = tracker.update(k * 0.1, [(200 + 8 * k, 0, 50, 50), (8 * k, 0, 50, 50)])
        assert ids == [2, 1] and not ended
    ids, ended = tracker.update(0.7, [(48, 0, 50, 50)])  # box 2 not seen from here on
    assert ids == [1] and not ended
    ids, ended = tracker.update(1.1, [(48, 0, 50, 50)])
    assert ids == [1] and [t.id for t in ended] == [2]
    assert list(tracker.tracks) == [1]
    ids, _ = tracker.update(1.2, [(400, 300, 40, 40)])  # a new object somewhere else: a new id
    assert ids == [3]


def test_a_box_that_stops_is_still_from_the_frame_it_stopped() -> None:
    tracker = Tracker()
    tracker.update(0.0, [(0, 0, 60, 60)])
    for k in range(1, 4):
        tracker.update(k * 0.1, [(15 * k, 0, 60, 60)])
    track = tracker.tracks[1]
    assert track.still_since is None  # moving
    tracker.update(0.4, [(45, 1, 60, 60)])  # it stopped where the frame at 0.3 saw it
    assert track.still_since == 0.4
    tracker.update(0.9, [(46, 0, 61, 60)])  # jitter of a pixel is still still
    assert track.still_since == 0.4
    tracker.update(1.0, [(80, 0, 60, 60)])  # moved on
    assert track.still_since is None
    assert [t.id for t in tracker.end_all()] == [1] and not tracker.tracks
