"""Multi-object tracking for scenes: boxes of successive frames joined into tracks with stable ids.

Ours, not a library's: the well-kept trackers were checked first (``pip download --no-deps`` and the wheels'
metadata). ByteTrack ships in ``supervision`` only up to 0.26, which requires ``opencv-python`` (a second OpenCV
next to the device's ``opencv-python-headless``), and its successor ``trackers`` requires it too; ``norfair``
2.3 requires ``numpy < 2`` (edge_runtime runs on numpy 2). A basket camera sees a handful of objects that move
slowly or sit still, so greedy matching on box overlap with a constant-velocity guess for the next box (what
ByteTrack's first association does without its Kalman filter) is enough; ``benchmarks/scene_eval.py`` measures
it on the scenario videos (identity switches, fragments).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Track", "Tracker", "iou"]

Box = tuple[int, int, int, int]  # x, y, w, h


def iou(a: Box | np.ndarray, b: Box | np.ndarray) -> float:
    """Intersection over union of two ``[x, y, w, h]`` boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class Track:
    """One object followed over frames."""

    id: int
    box: Box
    first_ts: float
    last_ts: float
    hits: int = 1
    velocity: tuple[float, float] = (0.0, 0.0)  # centre pixels per second, smoothed
    still_since: float | None = None  # when the box stopped moving; None while it moves
    anchor: Box | None = None  # the box it stopped at
    matched: bool = True  # seen in the latest frame

    def predicted(self, ts: float) -> Box:
        """Where the box should be at ``ts`` when it keeps its velocity (at most 0.5 s ahead)."""
        dt = min(0.5, max(0.0, ts - self.last_ts))
        x, y, w, h = self.box
        return (round(x + self.velocity[0] * dt), round(y + self.velocity[1] * dt), w, h)


class Tracker:
    """Greedy IoU association with a constant-velocity guess; tracks unseen for ``max_age_s`` are ended.

    ``still_iou``: a box that overlaps the box where its track came to rest by at least this much is still.
    """

    def __init__(self, match_iou: float = 0.2, max_age_s: float = 0.6, still_iou: float = 0.8) -> None:
        self.match_iou = match_iou
        self.max_age_s = max_age_s
        self.still_iou = still_iou
        self.tracks: dict[int, Track] = {}
        self._next_id = 1

    def update(self, ts: float, boxes: list[Box]) -> tuple[list[int], list[Track]]:
        """Assign each box of a frame at ``ts`` to a track. Returns the track id of every box (in order) and the
        tracks that ended (unseen for longer than ``max_age_s``)."""
        live = list(self.tracks.values())
        pairs: list[tuple[float, int, int]] = []
        for ti, track in enumerate(live):
            guess = track.predicted(ts)
            for bi, box in enumerate(boxes):
                score = max(iou(guess, box), iou(track.box, box))
                if score >= self.match_iou:
                    pairs.append((score, ti, bi))
        pairs.sort(reverse=True)
        ids = [0] * len(boxes)
        used_t: set[int] = set()
        for _score, ti, bi in pairs:
            if ti in used_t or ids[bi]:
                continue
            used_t.add(ti)
            ids[bi] = live[ti].id
            self._move(live[ti], boxes[bi], ts)
        for track in live:
            track.matched = track.id in ids
        for bi, box in enumerate(boxes):
            if not ids[bi]:
                track = Track(id=self._next_id, box=box, first_ts=ts, last_ts=ts, still_since=ts, anchor=box)
                self._next_id += 1
                self.tracks[track.id] = track
                ids[bi] = track.id
        ended = [t for t in self.tracks.values() if ts - t.last_ts > self.max_age_s]
        for track in ended:
            del self.tracks[track.id]
        return ids, ended

    def _move(self, track: Track, box: Box, ts: float) -> None:
        dt = ts - track.last_ts
        if dt > 0:
            cx = (box[0] + box[2] / 2) - (track.box[0] + track.box[2] / 2)
            cy = (box[1] + box[3] / 2) - (track.box[1] + track.box[3] / 2)
            vx, vy = track.velocity
            track.velocity = (0.5 * vx + 0.5 * cx / dt, 0.5 * vy + 0.5 * cy / dt)
        track.box = box
        track.last_ts = ts
        track.hits += 1
        if track.anchor is not None and iou(track.anchor, box) >= self.still_iou:
            if track.still_since is None:
                track.still_since = ts
        else:
            track.anchor, track.still_since = box, None

    def end_all(self) -> list[Track]:
        """End every live track (end of the stream or of a session)."""
        ended = list(self.tracks.values())
        self.tracks.clear()
        return ended
