"""Cart scenario videos with ground truth: products put into a basket and taken out, seen from above.

One scenario is one shopping session: the empty basket first (edge-run learns it), then a hand carries
products in (one at a time or two at once), lets go and leaves; later a hand comes back for one and carries it
out; idle stretches between; in some sessions the light changes (a gain and tint step) in the middle. Product
appearances are the synthetic demo packages (catalogue SKUs and never-seen ones) and, where a folder of the
grocery data set is given (``../shared/data/grocery``), its iconic product photos, which no demo bundle knows:
new products. The ground truth lists each added/removed event with the frame the object settled in the basket
or left it, and the session's final contents.

``cart_scenario`` renders frames in memory (``benchmarks/scene_eval.py``); ``write_cart_video`` writes one to
a video file with ``<video>.truth.json`` beside it (``make demo``).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.demo.designs import demo_skus, demo_unknown_skus
from edge_runtime.demo.packages import package_template
from edge_runtime.demo.scene import composite, place
from edge_runtime.demo.sku import DemoSku

__all__ = [
    "CartScenario",
    "GroundTruthEvent",
    "cart_scenario",
    "grocery_appearances",
    "write_cart_video",
    "write_scenario_video",
]

SIZE = (640, 480)  # (width, height)
FPS = 10
LEARN_S = 2.0  # empty basket at the start: edge-run's [scene.cart] learn_frames must fit in it
_CARRY_S = 0.9  # a hand carries a product from the edge to its place
_LEAVE_S = 0.5  # the empty hand leaves
_SLOTS = [(0.2, 0.3), (0.5, 0.3), (0.8, 0.3), (0.2, 0.72), (0.5, 0.72), (0.8, 0.72)]  # rest centres, frame shares
_SKIN = [(140, 170, 220), (100, 140, 200), (60, 90, 140), (170, 195, 235)]


@dataclass(frozen=True)
class GroundTruthEvent:
    """``added`` at the frame the product lies still in the basket, ``removed`` at the frame it is out of view."""

    type: str
    frame: int
    sku: str
    item: int  # which object of the scenario (several may share a SKU)


@dataclass
class CartScenario:
    """One session: frames (rendered on iteration), events, final contents, what made it hard."""

    name: str
    seed: int
    fps: int
    n_frames: int
    events: list[GroundTruthEvent]
    contents: dict[str, int]  # sku -> count at the end
    features: list[str]  # "two at once", "lighting", "occlusion", ...
    _plan: list[_Move] = field(default_factory=list, repr=False)
    _templates: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _lighting: tuple[int, float, tuple[float, float, float]] | None = field(default=None, repr=False)

    def truth(self) -> dict[str, object]:
        """The ground truth as JSON-ready data."""
        return {
            "name": self.name,
            "seed": self.seed,
            "fps": self.fps,
            "frames": self.n_frames,
            "size": list(SIZE),
            "events": [asdict(e) for e in self.events],
            "contents": self.contents,
            "features": self.features,
        }

    def lying(self, i: int) -> int | None:
        """Objects lying in the basket at frame ``i``; None while a hand or a moving object is in view."""
        n = 0
        for move in self._plan:
            centre = move.centre(i, self.fps)
            if move.hand_at(i, self.fps) is not None or (centre is not None and centre != move.rest):
                return None
            n += centre is not None
        return n

    def frames(self) -> Iterator[np.ndarray]:
        """The BGR uint8 frames, in order (deterministic for the seed)."""
        w, h = SIZE
        rng = np.random.default_rng([self.seed, 0xCA27])
        basket = _basket(np.random.default_rng([self.seed, 0xBA5]), w, h)
        for i in range(self.n_frames):
            frame = basket.copy()
            for move in self._plan:
                move.draw(frame, i, self._templates[move.sku])
            if self._lighting is not None and i >= self._lighting[0]:
                ramp = min(1.0, (i - self._lighting[0] + 1) / 3)
                gain = 1.0 + (self._lighting[1] - 1.0) * ramp
                frame *= np.array(self._lighting[2], np.float32) * np.float32(gain)
            frame += rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(2.0)
            yield np.clip(frame, 0, 255).astype(np.uint8)


@dataclass
class _Move:
    """One product's life in the scene: carried in, lying, maybe carried out."""

    item: int
    sku: str
    rest: tuple[float, float]  # centre in pixels
    t_in: int  # frame the carry starts
    t_out: int | None  # frame the hand comes back for it; None = stays
    enter_from: tuple[float, float]
    exit_to: tuple[float, float]
    pose_seed: int
    skin: tuple[int, int, int]

    def centre(self, i: int, fps: int) -> tuple[float, float] | None:
        carry, leave = round(_CARRY_S * fps), round(_LEAVE_S * fps)
        if i < self.t_in:
            return None
        if i < self.t_in + carry:
            return _lerp(self.enter_from, self.rest, _ease((i - self.t_in) / carry))
        if self.t_out is None or i < self.t_out + leave:
            return self.rest
        k = i - self.t_out - leave
        if k < carry:
            return _lerp(self.rest, self.exit_to, _ease(k / carry))
        return None

    def hand_at(self, i: int, fps: int) -> tuple[float, float] | None:
        """Where the hand holding (or reaching for) it is, None when no hand is near."""
        carry, leave = round(_CARRY_S * fps), round(_LEAVE_S * fps)
        if self.t_in <= i < self.t_in + carry:
            return self.centre(i, fps)
        if self.t_in + carry <= i < self.t_in + carry + leave:  # let go, the hand goes back out
            return _lerp(self.rest, self.enter_from, _ease((i - self.t_in - carry) / leave))
        if self.t_out is not None and self.t_out <= i < self.t_out + leave:  # reaching for it
            return _lerp(self.exit_to, self.rest, _ease((i - self.t_out) / leave))
        if self.t_out is not None and self.t_out + leave <= i < self.t_out + leave + carry:
            return self.centre(i, fps)
        return None

    def draw(self, frame: np.ndarray, i: int, template: np.ndarray) -> None:
        h, w = frame.shape[:2]
        c = self.centre(i, FPS)
        if c is not None:
            rng = np.random.default_rng(self.pose_seed)
            m, quad = place(template, rng, w, h, (0.28, 0.34), c, 0.02)
            # Warped into the product's bounding box only: a whole-frame warp per product costs ten times more.
            x0, y0 = (max(0, int(v) - 16) for v in quad.min(0))
            x1, y1 = min(w, int(quad[:, 0].max()) + 16), min(h, int(quad[:, 1].max()) + 16)
            if x1 > x0 and y1 > y0:
                shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
                composite(frame[y0:y1, x0:x1], template, shift @ m, (5.0, 7.0, 0.35))
        hand = self.hand_at(i, FPS)
        if hand is not None:
            _draw_hand(frame, hand, self.enter_from if i < self.t_in + 20 else self.exit_to, self.skin)


def _lerp(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def _ease(t: float) -> float:
    t = min(1.0, max(0.0, t))
    return 0.5 - 0.5 * math.cos(math.pi * t)


def _draw_hand(frame: np.ndarray, at: tuple[float, float], towards: tuple[float, float], skin: tuple[int, ...]) -> None:
    """A hand (palm and fingers) over the top of ``at`` with the arm running off towards ``towards``."""
    col = tuple(float(v) for v in skin)
    ax, ay = at[0], at[1] - 45
    dx, dy = towards[0] - ax, towards[1] - ay
    norm = math.hypot(dx, dy) or 1.0
    far = (ax + dx / norm * 900, ay + dy / norm * 900)
    cv2.line(frame, (round(ax), round(ay)), (round(far[0]), round(far[1])), col, 46, cv2.LINE_AA)
    cv2.ellipse(frame, (round(ax), round(ay)), (38, 30), 0, 0, 360, col, -1, cv2.LINE_AA)
    for k in range(4):
        fx = ax - 27 + 18 * k
        cv2.line(frame, (round(fx), round(ay)), (round(fx), round(ay + 40)), col, 11, cv2.LINE_AA)


def _basket(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """The empty basket floor: a coloured plastic grid under soft light."""
    base = rng.uniform(60, 120, 3)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    line = tuple(float(v) for v in base * 0.6)
    step = int(rng.integers(22, 34))
    for x in range(step // 2, w, step):
        cv2.line(img, (x, 0), (x, h), line, 4)
    for y in range(step // 2, h, step):
        cv2.line(img, (0, y), (w, y), line, 4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fall = 1.0 - 0.25 * (((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) * 2)
    return img * fall[..., None]


def grocery_appearances(root: Path, limit: int = 40) -> dict[str, np.ndarray]:
    """Iconic product photos of the grocery data set as BGRA templates (white backdrop made transparent),
    keyed ``grocery:<class>``; empty when ``root`` has none."""
    out: dict[str, np.ndarray] = {}
    for path in sorted(Path(root).glob("iconic-images-and-descriptions/**/*_Iconic.jpg"))[:limit]:
        photo = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if photo is None:
            continue
        scale = 300 / max(photo.shape[:2])
        image = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        backdrop = np.where(image.min(axis=2) > 235, 0, 255).astype(np.uint8)
        alpha = cv2.morphologyEx(backdrop, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
        template = np.dstack([image, alpha])
        template.setflags(write=False)
        out["grocery:" + path.name.removesuffix("_Iconic.jpg")] = template
    return out


def cart_scenario(
    seed: int, grocery: dict[str, np.ndarray] | None = None, unknown_share: float = 0.15, actions: int = 5
) -> CartScenario:
    """One session, deterministic for ``seed``: ``actions`` adds or removals (at least one add first), with
    unknown products at ``unknown_share`` (never-seen demo packages, or grocery photos when given)."""
    rng = np.random.default_rng([seed, 0x5CE])
    known, unknown = demo_skus(0), demo_unknown_skus(0)
    templates: dict[str, np.ndarray] = {}
    w, h = SIZE
    carry, leave = round(_CARRY_S * FPS), round(_LEAVE_S * FPS)
    t = round(LEARN_S * FPS) + 3
    plan: list[_Move] = []
    present: list[_Move] = []
    features: set[str] = {"occlusion"}
    lighting = None
    if rng.random() < 0.5:
        features.add("lighting")
    for a in range(actions):
        free = [s for s in _SLOTS if all(_dist(s, m.rest, w, h) > 1 for m in present)]
        remove = present and ((a > 1 and rng.random() < 0.3) or not free)
        if remove:
            move = present.pop(int(rng.integers(len(present))))
            move.t_out = t
            t += leave + carry + 2
        else:
            n = 2 if len(free) >= 2 and rng.random() < 0.25 else 1
            if n == 2:
                features.add("two at once")
            picks = rng.choice(len(free), n, replace=False)
            for k in picks:
                sku = _pick(rng, known, unknown, grocery, unknown_share, templates)
                slot = free[int(k)]
                rest = (slot[0] * w + rng.uniform(-20, 20), slot[1] * h + rng.uniform(-15, 15))
                edge = _edge_point(rng, rest, w, h)
                move = _Move(
                    len(plan), sku, rest, t, None, edge, _edge_point(rng, rest, w, h), int(rng.integers(1 << 30)),
                    _SKIN[int(rng.integers(len(_SKIN)))],
                )  # fmt: skip
                plan.append(move)
                present.append(move)
            t += carry + leave + 2
        t += int(rng.uniform(0.8, 2.5) * FPS)  # idle stretch
        if "lighting" in features and lighting is None and a == actions // 2:
            lighting = (t - 5, float(rng.choice([0.8, 1.25])), tuple(float(v) for v in rng.uniform(0.94, 1.06, 3)))
    n_frames = t + 2 * FPS
    events: list[GroundTruthEvent] = []
    for m in plan:
        events.append(GroundTruthEvent("added", m.t_in + carry + leave, m.sku, m.item))
        if m.t_out is not None:
            events.append(GroundTruthEvent("removed", m.t_out + leave + carry, m.sku, m.item))
    events.sort(key=lambda e: e.frame)
    contents = dict(Counter(m.sku for m in plan if m.t_out is None))
    for m in plan:
        if m.sku not in templates:
            templates[m.sku] = _template(m.sku, known + unknown, grocery)
    return CartScenario(
        name=f"cart-{seed}",
        seed=seed,
        fps=FPS,
        n_frames=n_frames,
        events=events,
        contents=contents,
        features=sorted(features),
        _plan=plan,
        _templates=templates,
        _lighting=lighting,  # type: ignore[arg-type]
    )


def _dist(a: tuple[float, float], b: tuple[float, float], w: int, h: int) -> float:
    """Distance between a slot (frame shares) and a rest centre (pixels), in slot widths."""
    return math.hypot(a[0] * w - b[0], a[1] * h - b[1]) / (0.3 * w)


def _edge_point(rng: np.random.Generator, rest: tuple[float, float], w: int, h: int) -> tuple[float, float]:
    """A point beyond the nearest side edge or the top, where a hand comes from."""
    side = int(rng.integers(3))
    if side == 0:
        return (-0.3 * w, rest[1] + rng.uniform(-60, 60))
    if side == 1:
        return (1.3 * w, rest[1] + rng.uniform(-60, 60))
    return (rest[0] + rng.uniform(-80, 80), -0.4 * h)


def _pick(
    rng: np.random.Generator,
    known: list[DemoSku],
    unknown: list[DemoSku],
    grocery: dict[str, np.ndarray] | None,
    unknown_share: float,
    templates: dict[str, np.ndarray],
) -> str:
    if rng.random() >= unknown_share:
        return str(known[int(rng.integers(len(known)))].code)
    if grocery and rng.random() < 0.5:
        names = sorted(grocery)
        return names[int(rng.integers(len(names)))]
    return str(unknown[int(rng.integers(len(unknown)))].code)


def _template(code: str, skus: list[DemoSku], grocery: dict[str, np.ndarray] | None) -> np.ndarray:
    if code.startswith("grocery:"):
        assert grocery is not None
        return grocery[code]
    return package_template(next(s for s in skus if s.code == code))


def write_cart_video(out_path: Path, seed: int = 0, actions: int = 5, grocery: Path | None = None) -> Path:
    """Write one scenario (``cart_scenario``) to a video and its ground truth beside it; returns the video."""
    scenario = cart_scenario(seed, grocery_appearances(grocery) if grocery else None, actions=actions)
    return write_scenario_video(scenario, out_path)


def write_scenario_video(scenario: CartScenario, out_path: Path, frames: Iterable[np.ndarray] | None = None) -> Path:
    """Write ``scenario`` (or its already rendered ``frames``) to a video (MJPG ``.avi``, which every OpenCV build
    reads back) and its ground truth to ``<video>.truth.json``; returns the video's path."""
    final = Path(out_path).with_suffix(".avi")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"MJPG"), float(scenario.fps), SIZE)
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write MJPG video to {tmp}")
    try:
        for frame in frames if frames is not None else scenario.frames():
            writer.write(frame)
    finally:
        writer.release()
    os.replace(tmp, final)
    final.with_suffix(".truth.json").write_text(json.dumps(scenario.truth(), indent=1) + "\n", encoding="utf-8")
    return final
