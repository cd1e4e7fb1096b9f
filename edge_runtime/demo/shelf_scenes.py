"""Shelf scenario videos with per-frame ground truth: slots emptied, refilled, refilled wrong, hands, lighting.

A shelf of two rows of four slots (two of them two facings wide) is filled with product appearances: the
synthetic demo packages (``synthetic_appearances``) or grocery photos (``grocery_appearances``, from
``../shared/data/grocery`` when present; ``grocery_split`` keeps the photos the scenes use, and a few whole
products, out of the catalogue a bundle is built from). Each scenario is a timeline of what stands on every
facing (the planogram's product, a wrong known product, a product no catalogue holds, nothing), hands and
shoppers passing in front, and the light. The truth per frame is the physical slot state, with the rule the
shelf scene uses for facings: misplaced when a facing holds a product other than the planogram's (a known one,
with its SKU, or one no catalogue holds, without: it is not an empty slot, nor the right product), empty when
every facing is empty, present otherwise.

``shelf_scenarios`` lists them; ``write_shelf_scenario`` writes the video, ``<video>.labels.json`` (planogram,
truth per frame, the changes) and, where the back is patterned, the photo of the empty shelf an installer would
take. Output is deterministic for a seed.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.demo.designs import demo_skus, demo_unknown_skus
from edge_runtime.demo.draw import put_text
from edge_runtime.demo.packages import package_template

__all__ = [
    "SCENE_SIZE",
    "Appearances",
    "ShelfScenario",
    "grocery_appearances",
    "grocery_split",
    "shelf_scenarios",
    "synthetic_appearances",
    "write_shelf_scenario",
]

SCENE_SIZE = (640, 480)  # (width, height)
FPS = 2.0  # a shelf camera's active rate is about 1 fps; 2 keeps the videos short
_WIDE = (1, 6)  # slots two facings wide
_GROCERY_SCENE_EVERY = 4  # every 4th photo of a grocery product goes to the scenes, never to the catalogue
_GROCERY_HELD_OUT = 7  # grocery classes with id % 10 == 7 stay out of the catalogue: products nobody catalogued

Item = np.ndarray | Path  # an appearance: BGRA template, or a photo read on first use


@dataclass(frozen=True)
class Appearances:
    """What products look like: per catalogue SKU code its appearances, and products no catalogue holds."""

    known: dict[str, list[Item]]
    unknown: list[Item]
    source: str  # "synthetic" | "grocery"


def synthetic_appearances(seed: int = 0) -> Appearances:
    """The demo packages: the demo catalogue's SKUs (``edge-build`` without ``--catalogue``) and its unknowns."""
    known: dict[str, list[Item]] = {s.code: [package_template(s)] for s in demo_skus(seed)}
    return Appearances(known, [package_template(s) for s in demo_unknown_skus(seed)], "synthetic")


def grocery_split(root: Path) -> tuple[list[tuple[Path, str, str]], dict[str, list[Path]], list[Path]]:
    """The grocery train split divided for shelf scenes: (catalogue rows (photo, SKU, group), scene photos per
    SKU, photos of the held-out products). The SKU code is the class name, the group its coarse class."""
    names: dict[int, tuple[str, str]] = {}
    with open(root / "classes.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            names[int(row["Class ID (int)"])] = (row["Class Name (str)"], row["Coarse Class Name (str)"])
    per_class: dict[int, list[Path]] = {}
    for line in (root / "train.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            path, fine_id, _ = (p.strip() for p in line.split(","))
            per_class.setdefault(int(fine_id), []).append(root / path)
    catalogue: list[tuple[Path, str, str]] = []
    scenes: dict[str, list[Path]] = {}
    unknown: list[Path] = []
    for fine in sorted(per_class):
        photos = sorted(per_class[fine])
        code, group = names[fine]
        if fine % 10 == _GROCERY_HELD_OUT:
            unknown += photos[::_GROCERY_SCENE_EVERY]
            continue
        scenes[code] = photos[::_GROCERY_SCENE_EVERY]
        catalogue += [(p, code, group) for i, p in enumerate(photos) if i % _GROCERY_SCENE_EVERY]
    return catalogue, scenes, unknown


def grocery_appearances(root: Path) -> Appearances:
    """Grocery photos the catalogue of ``grocery_split`` does not hold, read when a scene first draws them."""
    _, scenes, unknown = grocery_split(root)
    return Appearances({k: list(v) for k, v in scenes.items()}, list(unknown), "grocery")


@functools.lru_cache(maxsize=64)
def _read_photo(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"{path}: not a readable image")
    return np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])


def _bgra(item: Item) -> np.ndarray:
    return _read_photo(item) if isinstance(item, Path) else item


# ---- the scenario: layout, timeline, truth ----------------------------------------------------------------------


@dataclass
class ShelfScenario:
    """One scenario: planogram, what stands on each facing from which frame, hands, light, and the truth."""

    name: str
    seed: int
    frames: int
    appearances: Appearances
    slots: list[dict[str, Any]]  # planogram entries: id (str), box ([x, y, w, h]), sku (str), facings (int)
    patterned: bool = False  # pegboard back: the scene needs the empty-shelf photo
    # Per facing (slot order, left to right): [(from frame, (SKU code or "", appearance) or None)].
    contents: list[list[tuple[int, tuple[str, Item] | None]]] = field(default_factory=list)
    hands: list[tuple[int, int, tuple[float, float], int]] = field(default_factory=list)  # (first, last, target, kind)
    light: list[tuple[int, int, float, float]] = field(default_factory=list)  # (first, last, gain, gradient)

    def facing_boxes(self) -> list[tuple[int, tuple[int, int, int, int]]]:
        """(slot index, box) per facing."""
        out = []
        for i, s in enumerate(self.slots):
            x, y, w, h = s["box"]
            step = w // s["facings"]
            for k in range(s["facings"]):
                out.append((i, (x + k * step, y, step if k < s["facings"] - 1 else w - step * (s["facings"] - 1), h)))
        return out

    def content_at(self, facing: int, frame: int) -> tuple[str, Item] | None:
        current: tuple[str, Item] | None = None
        for start, what in self.contents[facing]:
            if start <= frame:
                current = what
        return current

    def facing_truth(self, frame: int) -> list[str]:
        """Per facing at ``frame``: empty, expected, wrong (a known product of another SKU) or stranger (a
        product no catalogue holds)."""
        out = []
        for f, (slot, _) in enumerate(self.facing_boxes()):
            what = self.content_at(f, frame)
            expected = self.slots[slot]["sku"]
            out.append(
                "empty"
                if what is None
                else "stranger"
                if not what[0]
                else "expected"
                if what[0] == expected
                else "wrong"
            )
        return out

    def truth(self, frame: int) -> dict[str, tuple[str, str | None]]:
        """Slot id -> (physical state, the wrong SKU when misplaced by a known product) at ``frame``."""
        per_slot: dict[int, list[tuple[str, str | None]]] = {}
        for f, ((slot, _), kind) in enumerate(zip(self.facing_boxes(), self.facing_truth(frame), strict=True)):
            what = self.content_at(f, frame)
            state = {"empty": "empty", "wrong": "misplaced", "stranger": "misplaced"}.get(kind, "present")
            per_slot.setdefault(slot, []).append((state, what[0] if what is not None and kind == "wrong" else None))
        out: dict[str, tuple[str, str | None]] = {}
        for slot, states in per_slot.items():
            wrong = [s for s in states if s[0] == "misplaced"]
            empty = all(s[0] == "empty" for s in states)
            out[self.slots[slot]["id"]] = wrong[0] if wrong else ("empty", None) if empty else ("present", None)
        return out

    def gain(self, frame: int) -> tuple[float, float]:
        """(gain, left-to-right gradient) of the light at ``frame``; ramps over the first/last two frames."""
        gain, grad = 1.0, 0.0
        for first, last, g, d in self.light:
            if first <= frame <= last:
                t = min(1.0, (frame - first + 1) / 3, (last - frame + 1) / 3)
                gain, grad = 1.0 + (g - 1.0) * t, d * t
        return gain, grad


def _layout(w: int, h: int) -> list[tuple[int, int, int, int]]:
    """Two rows of four slot boxes in a (w, h) frame."""
    row_h = int(h * 0.41)
    slot_w = (w - 16) // 4
    return [(8 + k * slot_w, int(h * 0.05) + r * int(h * 0.475), slot_w - 4, row_h) for r in range(2) for k in range(4)]


def _new(name: str, seed: int, index: int, frames: int, looks: Appearances, patterned: bool = False) -> ShelfScenario:
    rng = _rng(seed, index)
    codes = sorted(looks.known)
    chosen = [codes[int(i)] for i in rng.choice(len(codes), 8, replace=False)]
    slots: list[dict[str, Any]] = [
        {"id": f"{'AB'[i // 4]}{i % 4 + 1}", "box": list(box), "sku": chosen[i], "facings": 2 if i in _WIDE else 1}
        for i, box in enumerate(_layout(*SCENE_SIZE))
    ]
    sc = ShelfScenario(name, seed, frames, looks, slots, patterned)
    sc.contents = [[(0, _look(looks, rng, slots[s]["sku"]))] for s, _ in sc.facing_boxes()]
    return sc


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, 0x5E1F])


def _look(looks: Appearances, rng: np.random.Generator, code: str) -> tuple[str, Item]:
    items = looks.known[code]
    return code, items[int(rng.integers(len(items)))]


def _stranger(looks: Appearances, rng: np.random.Generator) -> tuple[str, Item]:
    return "", looks.unknown[int(rng.integers(len(looks.unknown)))]


def _set(sc: ShelfScenario, slot: int, frame: int, what: list[tuple[str, Item] | None], hand: bool = True) -> None:
    """From ``frame`` on, slot ``slot``'s facings hold ``what`` (one entry per facing); a hand does it."""
    facings = [f for f, (s, _) in enumerate(sc.facing_boxes()) if s == slot]
    for f, item in zip(facings, what, strict=True):
        sc.contents[f].append((frame, item))
    if hand:
        x, y, w, h = sc.slots[slot]["box"]
        sc.hands.append((frame - 1, frame, (x + w / 2, y + h * 0.6), 0))


def _passers(sc: ShelfScenario, rng: np.random.Generator, n: int) -> None:
    """Hands reaching past and shoppers walking by, one or two frames each, changing nothing."""
    for _ in range(n):
        lo, hi = (3, sc.frames - 3) if sc.frames > 8 else (1, max(2, sc.frames - 1))  # short test scenes
        first = int(rng.integers(lo, hi))
        box = sc.slots[int(rng.integers(len(sc.slots)))]["box"]
        target = (box[0] + box[2] * rng.uniform(0.2, 0.8), box[1] + box[3] * rng.uniform(0.3, 0.9))
        sc.hands.append((first, first + int(rng.integers(0, 2)), target, int(rng.integers(0, 2))))


def shelf_scenarios(seed: int = 0, looks: Appearances | None = None, frames: int = 120) -> list[ShelfScenario]:
    """The scenarios on ``looks`` (default: the synthetic packages): restock and unknown products for any
    appearances, and with the synthetic ones also lighting and a pegboard back."""
    looks = looks or synthetic_appearances(seed)
    n = frames
    at = [round(n * t) for t in (0.15, 0.3, 0.42, 0.55, 0.7, 0.85)]
    out = []
    # Restock: a slot emptied and refilled, a wide slot emptied one facing at a time, refilled wrong, corrected.
    sc = _new(f"{looks.source}-restock", seed, 1, n, looks)
    rng = _rng(seed, 101)
    a, b = 2, 1  # slot 1 is two facings wide
    wrong = _look(looks, rng, _other(looks, rng, sc.slots[b]["sku"]))
    _set(sc, a, at[0], [None])
    _set(sc, b, at[1], [None, sc.content_at(_facing_of(sc, b, 1), 0)])
    _set(sc, b, at[2], [None, None])
    _set(sc, a, at[3], [_look(looks, rng, sc.slots[a]["sku"])])
    _set(sc, b, at[4], [wrong, wrong])
    _set(sc, b, at[5], [_look(looks, rng, sc.slots[b]["sku"])] * 2)
    _passers(sc, rng, 6)
    out.append(sc)
    # Products no catalogue holds stand in three slots; one is emptied and refilled with another one.
    sc = _new(f"{looks.source}-unknown", seed, 2, n, looks)
    rng = _rng(seed, 102)
    for slot in (0, 3, 5):
        _set(sc, slot, 0, [_stranger(looks, rng)], hand=False)
    _set(sc, 3, at[1], [None])
    _set(sc, 3, at[3], [_stranger(looks, rng)])
    _set(sc, 7, at[2], [None])
    _set(sc, 7, at[4], [_stranger(looks, rng)])
    _passers(sc, rng, 4)
    out.append(sc)
    if looks.source != "synthetic":
        return out
    # Lighting: the lights dim with a fall-off across the shelf, a slot empties in the dim, the light returns.
    sc = _new("synthetic-lighting", seed, 3, n, looks)
    rng = _rng(seed, 103)
    _set(sc, 4, 0, [None], hand=False)
    _set(sc, 6, 0, [None, None], hand=False)
    sc.light.append((at[0], at[4], 0.55, 0.35))
    _set(sc, 2, at[2], [None])
    _set(sc, 4, at[5], [_look(looks, rng, sc.slots[4]["sku"])])
    _passers(sc, rng, 3)
    out.append(sc)
    # Pegboard back (the texture test alone would call it full): emptied, refilled, emptied, refilled wrong.
    sc = _new("synthetic-pegboard", seed, 4, n, looks, patterned=True)
    rng = _rng(seed, 104)
    _set(sc, 0, at[0], [None])
    _set(sc, 0, at[2], [_look(looks, rng, sc.slots[0]["sku"])])
    _set(sc, 6, at[1], [None, None])
    wrong = _look(looks, rng, _other(looks, rng, sc.slots[6]["sku"]))
    _set(sc, 6, at[4], [wrong, wrong])
    _passers(sc, rng, 4)
    out.append(sc)
    return out


def _facing_of(sc: ShelfScenario, slot: int, k: int) -> int:
    """Index of the ``k``-th facing of ``slot``."""
    return [f for f, (s, _) in enumerate(sc.facing_boxes()) if s == slot][k]


def _other(looks: Appearances, rng: np.random.Generator, code: str) -> str:
    """A known SKU other than ``code``: the wrong product a restocker puts in its slot."""
    others = [c for c in sorted(looks.known) if c != code]
    return others[int(rng.integers(len(others)))]


# ---- drawing ------------------------------------------------------------------------------------------------------


def _back(sc: ShelfScenario) -> np.ndarray:
    """The empty shelf (float32 BGR): back panel, plain or pegboard, and the shelf lips with price labels."""
    w, h = SCENE_SIZE
    rng = _rng(sc.seed, 900 + int(sc.patterned))
    base = rng.uniform(150, 215) * np.array([1.0, rng.uniform(0.95, 1.05), rng.uniform(0.92, 1.08)], np.float32)
    yy = np.linspace(0.92, 1.04, h, dtype=np.float32)[:, None, None]
    low = cv2.resize(rng.uniform(-0.03, 0.03, (4, 5)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img = base[None, None] * yy * (1.0 + low[..., None])
    if sc.patterned:
        hole = tuple(float(v) for v in base * 0.35)
        for y in range(7, h, 14):
            for x in range(7, w, 14):
                cv2.circle(img, (x, y), 3, hole, -1, cv2.LINE_AA)
    for lip in sorted({s["box"][1] + s["box"][3] + 2 for s in sc.slots}):
        cv2.rectangle(img, (0, lip), (w - 1, lip + int(h * 0.045)), (95.0, 100.0, 105.0), -1)
    for x, y, bw, bh in (s["box"] for s in sc.slots):
        lip = y + bh + 2
        tag = np.full((int(h * 0.03), int(bw * 0.3), 3), 235, np.uint8)
        put_text(tag, f"{int(rng.integers(1, 9))}.{int(rng.integers(0, 99)):02d}", (0, 0, tag.shape[1], tag.shape[0]),
                 (30, 30, 30), "duplex")  # fmt: skip
        img[lip + 3 : lip + 3 + tag.shape[0], x + 6 : x + 6 + tag.shape[1]] = tag
    return img


def _put(img: np.ndarray, item: Item, box: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    """Stand ``item`` on the shelf inside ``box``: bottom on the lip, centred, a few pixels of play."""
    x, y, w, h = box
    src = _bgra(item)
    ih, iw = src.shape[:2]
    room_w, room_h = w * rng.uniform(0.86, 0.95), h * rng.uniform(0.84, 0.95)
    if isinstance(item, Path):  # a photo fills its facing (cropped to the facing's shape)
        aspect = room_w / room_h
        cw, ch = (iw, int(iw / aspect)) if iw / ih < aspect else (int(ih * aspect), ih)
        src = src[(ih - ch) // 2 : (ih - ch) // 2 + ch, (iw - cw) // 2 : (iw - cw) // 2 + cw]
        pw, ph = int(room_w), int(room_h)
    else:  # a package keeps its shape
        s = min(room_w / iw, room_h / ih)
        pw, ph = max(2, int(iw * s)), max(2, int(ih * s))
    patch = cv2.resize(src, (pw, ph), interpolation=cv2.INTER_AREA).astype(np.float32)
    px = int(x + (w - pw) / 2 + rng.uniform(-3, 3))
    py = y + h - ph - int(rng.integers(0, 3))
    px, py = max(0, px), max(0, py)
    region = img[py : py + ph, px : px + pw]
    patch = patch[: region.shape[0], : region.shape[1]]
    alpha = patch[..., 3:] * (1.0 / 255.0)
    region[:] = region * (1.0 - alpha) + patch[..., :3] * alpha


def _hand(img: np.ndarray, target: tuple[float, float], kind: int, rng: np.random.Generator) -> None:
    """An arm reaching up to ``target`` (kind 0) or a shopper walking past in front of it (kind 1)."""
    w, h = SCENE_SIZE
    tx, ty = target
    if kind == 1:
        coat = tuple(float(v) for v in rng.uniform(30, 120, 3))
        cv2.ellipse(img, (int(tx), int(ty + h * 0.35)), (int(w * 0.16), int(h * 0.45)), 0, 0, 360, coat, -1)
        cv2.circle(img, (int(tx), int(ty - h * 0.12)), int(h * 0.09), (90.0, 120.0, 170.0), -1, cv2.LINE_AA)
        return
    skin = tuple(float(v) for v in (rng.uniform(80, 150), rng.uniform(110, 175), rng.uniform(160, 225)))
    sleeve = tuple(float(v) for v in rng.uniform(40, 200, 3))
    start = (int(tx + rng.uniform(-80, 80)), h + 30)
    elbow = (int((start[0] + tx) / 2), int((start[1] + ty) / 2 + 20))
    cv2.line(img, start, elbow, sleeve, int(w * 0.08), cv2.LINE_AA)
    cv2.line(img, elbow, (int(tx), int(ty)), skin, int(w * 0.055), cv2.LINE_AA)
    cv2.ellipse(img, (int(tx), int(ty)), (int(w * 0.045), int(w * 0.035)), float(rng.uniform(0, 180)), 0, 360, skin,
                -1, cv2.LINE_AA)  # fmt: skip


def scenario_frames(sc: ShelfScenario) -> Iterator[np.ndarray]:
    """The scenario's frames, BGR uint8 at ``SCENE_SIZE``."""
    back = _back(sc)
    boxes = sc.facing_boxes()
    static: dict[tuple[int, ...], np.ndarray] = {}
    w = SCENE_SIZE[0]
    ramp = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :, None]
    noise = _rng(sc.seed, 950)
    for i in range(sc.frames):
        # Each facing's latest change decides what stands there; the drawing is cached per combination.
        key = tuple(max(start for start, _ in sc.contents[f] if start <= i) for f in range(len(boxes)))
        if key not in static:
            img = back.copy()
            for f, (_, box) in enumerate(boxes):
                what = sc.content_at(f, i)
                if what is not None:
                    _put(img, what[1], box, _rng(sc.seed, 1000 + 97 * f + key[f]))
            static = {key: img}  # scenarios only move forward: one cached combination is enough
        frame = static[key].copy()
        for first, last, target, kind in sc.hands:
            if first <= i <= last:
                _hand(frame, target, kind, _rng(sc.seed, 5000 + first))
        gain, grad = sc.gain(i)
        if gain != 1.0 or grad:
            frame *= gain * (1.0 + grad * ramp)
        frame += noise.normal(0, 2.0, frame.shape).astype(np.float32)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def empty_reference(sc: ShelfScenario) -> np.ndarray:
    """The photo of the empty shelf an installer takes (the shelf scene's ``empty_reference``)."""
    frame = _back(sc) + _rng(sc.seed, 960).normal(0, 2.0, (SCENE_SIZE[1], SCENE_SIZE[0], 3)).astype(np.float32)
    return np.clip(frame, 0, 255).astype(np.uint8)


def _changes(truth: list[dict[str, tuple[str, str | None]]]) -> list[dict[str, Any]]:
    out = []
    for i in range(1, len(truth)):
        for slot, now in truth[i].items():
            if now != truth[i - 1][slot]:
                out.append(
                    {"frame": i, "slot": slot, "previous": truth[i - 1][slot][0], "state": now[0], "sku": now[1]}
                )
    return out


def write_shelf_scenario(sc: ShelfScenario, out_dir: Path) -> Path:
    """Write ``NAME.mp4`` (or ``.avi`` where OpenCV cannot write mp4v), ``NAME.labels.json`` and, for a patterned
    back, ``NAME.empty.png``; returns the video's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = None
    if sc.patterned:
        reference = out_dir / f"{sc.name}.empty.png"
        cv2.imwrite(str(reference), empty_reference(sc))
    for fourcc, suffix in (("mp4v", ".mp4"), ("MJPG", ".avi")):
        final = out_dir / f"{sc.name}{suffix}"
        tmp = final.with_name(f".{sc.name}.tmp{suffix}")  # the suffix picks the container
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*fourcc), FPS, SCENE_SIZE)
        if not writer.isOpened():
            writer.release()
            tmp.unlink(missing_ok=True)
            continue
        for frame in scenario_frames(sc):
            writer.write(frame)
        writer.release()
        cap = cv2.VideoCapture(str(tmp))
        readable = cap.isOpened() and cap.grab()
        cap.release()
        if not readable:
            tmp.unlink(missing_ok=True)
            continue
        os.replace(tmp, final)
        truth = [sc.truth(i) for i in range(sc.frames)]
        meta = {
            "scenario": sc.name,
            "video": final.name,
            "fps": FPS,
            "frames": sc.frames,
            "size": list(SCENE_SIZE),
            "seed": sc.seed,
            "appearances": sc.appearances.source,
            "slots": sc.slots,
            "empty_reference": reference.name if reference else None,
            "occluded_frames": sorted({i for first, last, _, _ in sc.hands for i in range(first, last + 1)}),
            "truth": [{slot: state for slot, (state, _) in t.items()} for t in truth],
            "changes": _changes(truth),
        }
        final.with_suffix(".labels.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")
        return final
    raise OSError(f"no working video codec (tried mp4v/.mp4 and MJPG/.avi) for {out_dir / sc.name}")
