"""A synthetic demo catalogue and demo video, drawn by the project itself.

Real product photos cannot ship with the code, so the embedded demo builds
from packages drawn with OpenCV primitives. The catalogue is designed around
the hard case the product exists for: flavour variants that share package
shape, brand and base colour and differ only in a band, a word or a small
logo. Image counts follow a long tail, and a few never-seen products are
written to a separate directory for out-of-distribution checks.

Everything is deterministic for a seed: each image has its own Generator
seeded from (seed, SKU code, image index), so an image does not depend on
how many images were drawn before it, on ``scale``, or on the SKU order.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.errors import UsageError

# Bump whenever drawing or the schedule changes, so stale catalogues are rebuilt.
GENERATOR_VERSION = 1
STAMP_NAME = ".demo-stamp"
CATALOGUE_CSV = "catalogue.csv"
UNKNOWN_CSV = "unknown.csv"
IMAGE_SIZE = (320, 320)  # (width, height), OpenCV order like every size here
JPEG_QUALITY = 90
MAX_IMAGES = 40  # head of the long tail at scale 1
MIN_IMAGES = 4  # tail end at scale 1
MIN_PER_SKU = 3  # floor after scaling: fewer cannot be split into train/val
UNKNOWN_IMAGES = 8

BGR = tuple[int, int, int]

_FONTS = {
    "simplex": cv2.FONT_HERSHEY_SIMPLEX,
    "duplex": cv2.FONT_HERSHEY_DUPLEX,
    "complex": cv2.FONT_HERSHEY_COMPLEX,
    "triplex": cv2.FONT_HERSHEY_TRIPLEX,
    "script": cv2.FONT_HERSHEY_SCRIPT_COMPLEX,
}


@dataclass(frozen=True)
class DemoSku:
    """One drawable product: identity plus the parameters its package is drawn from."""

    code: str
    name: str
    group: str
    shape: str  # carton | can | bottle | box | pasta | bag | jar | tub | tube
    brand: str
    flavour: str
    body: BGR  # base package colour, shared by flavour siblings
    band: BGR  # flavour band colour, the main sibling difference
    accent: BGR  # brand accent (logo, stripes)
    ink: BGR  # brand text colour
    logo: str  # flavour/brand icon kind, see _logo()
    motif: str = ""  # shape-specific illustration, e.g. "dots:5", "window:penne"
    font: str = "duplex"
    aspect: float = 0.6  # front-face width / height
    n_images: int = 0  # images at scale 1


# (code, name, group, shape, brand, flavour, body, band, accent, ink, logo, motif, font, aspect)
_WHITE: BGR = (238, 242, 244)
_CATALOGUE_DESIGN: list[tuple] = [
    # Milk: UK-style cap colours are the only real difference between the first three.
    (
        "milk-alpine-whole",
        "Alpine Whole Milk",
        "Milk",
        "carton",
        "ALPINE",
        "WHOLE",
        _WHITE,
        (170, 90, 20),
        (200, 120, 40),
        (150, 70, 10),
        "mountain",
        "",
        "triplex",
        0.5,
    ),
    (
        "milk-alpine-semi",
        "Alpine Semi-Skimmed Milk",
        "Milk",
        "carton",
        "ALPINE",
        "SEMI-SKIMMED",
        _WHITE,
        (60, 160, 40),
        (200, 120, 40),
        (150, 70, 10),
        "mountain",
        "",
        "triplex",
        0.5,
    ),
    (
        "milk-alpine-skimmed",
        "Alpine Skimmed Milk",
        "Milk",
        "carton",
        "ALPINE",
        "SKIMMED",
        _WHITE,
        (40, 40, 210),
        (200, 120, 40),
        (150, 70, 10),
        "mountain",
        "",
        "triplex",
        0.5,
    ),
    (
        "milk-alpine-lactosefree",
        "Alpine Lactose-Free Milk",
        "Milk",
        "carton",
        "ALPINE",
        "LACTOSE FREE",
        _WHITE,
        (150, 60, 120),
        (200, 120, 40),
        (150, 70, 10),
        "mountain",
        "lf",
        "triplex",
        0.5,
    ),
    # Juice: same carton family, fruit icon and band colour change; one bottle from another brand.
    (
        "juice-sunny-orange",
        "Sunny Orange Juice",
        "Juice",
        "carton",
        "Sunny",
        "ORANGE",
        (90, 215, 250),
        (0, 130, 250),
        (0, 90, 220),
        (20, 60, 170),
        "orange",
        "",
        "duplex",
        0.52,
    ),
    (
        "juice-sunny-apple",
        "Sunny Apple Juice",
        "Juice",
        "carton",
        "Sunny",
        "APPLE",
        (90, 215, 250),
        (40, 170, 60),
        (0, 90, 220),
        (20, 60, 170),
        "apple",
        "",
        "duplex",
        0.52,
    ),
    (
        "juice-sunny-multifruit",
        "Sunny Multifruit Juice",
        "Juice",
        "carton",
        "Sunny",
        "MULTIFRUIT",
        (90, 215, 250),
        (60, 40, 200),
        (0, 90, 220),
        (20, 60, 170),
        "multifruit",
        "",
        "duplex",
        0.52,
    ),
    (
        "juice-grove-orange",
        "Grove Orange Juice",
        "Juice",
        "bottle",
        "GROVE",
        "ORANGE",
        (20, 150, 245),
        (40, 110, 30),
        (230, 240, 240),
        (255, 255, 255),
        "orange",
        "",
        "complex",
        0.36,
    ),
    # Yoghurt: strawberry and raspberry bands are deliberately close in colour.
    (
        "yog-dell-strawberry",
        "Dairy Dell Strawberry Yoghurt",
        "Yoghurt",
        "tub",
        "Dairy Dell",
        "STRAWBERRY",
        (235, 245, 250),
        (120, 90, 235),
        (60, 130, 60),
        (60, 110, 40),
        "strawberry",
        "",
        "script",
        0.95,
    ),
    (
        "yog-dell-raspberry",
        "Dairy Dell Raspberry Yoghurt",
        "Yoghurt",
        "tub",
        "Dairy Dell",
        "RASPBERRY",
        (235, 245, 250),
        (130, 50, 200),
        (60, 130, 60),
        (60, 110, 40),
        "raspberry",
        "",
        "script",
        0.95,
    ),
    (
        "yog-dell-peach",
        "Dairy Dell Peach Yoghurt",
        "Yoghurt",
        "tub",
        "Dairy Dell",
        "PEACH",
        (235, 245, 250),
        (110, 170, 250),
        (60, 130, 60),
        (60, 110, 40),
        "peach",
        "",
        "script",
        0.95,
    ),
    (
        "yog-dell-vanilla",
        "Dairy Dell Vanilla Yoghurt",
        "Yoghurt",
        "tub",
        "Dairy Dell",
        "VANILLA",
        (235, 245, 250),
        (170, 225, 240),
        (60, 130, 60),
        (60, 110, 40),
        "vanilla",
        "",
        "script",
        0.95,
    ),
    # Cereal: three Crunchy Oats variants plus a different brand.
    (
        "cer-oats-original",
        "Crunchy Oats Original",
        "Cereal",
        "box",
        "CRUNCHY OATS",
        "ORIGINAL",
        (40, 185, 240),
        (40, 40, 190),
        (30, 110, 170),
        (30, 40, 120),
        "wheat",
        "bowl:oats",
        "triplex",
        0.72,
    ),
    (
        "cer-oats-honey",
        "Crunchy Oats Honey",
        "Cereal",
        "box",
        "CRUNCHY OATS",
        "HONEY",
        (40, 185, 240),
        (0, 120, 210),
        (30, 110, 170),
        (30, 40, 120),
        "honey",
        "bowl:honey",
        "triplex",
        0.72,
    ),
    (
        "cer-oats-choco",
        "Crunchy Oats Chocolate",
        "Cereal",
        "box",
        "CRUNCHY OATS",
        "CHOCOLATE",
        (40, 185, 240),
        (30, 60, 100),
        (30, 110, 170),
        (30, 40, 120),
        "choco",
        "bowl:choco",
        "triplex",
        0.72,
    ),
    (
        "cer-cornstars",
        "Corn Stars",
        "Cereal",
        "box",
        "CORN STARS",
        "FROSTED",
        (160, 80, 30),
        (0, 200, 250),
        (0, 220, 255),
        (255, 255, 255),
        "star",
        "bowl:stars",
        "duplex",
        0.72,
    ),
    # Soda: red Fizz cans differ only in the band; one energy drink from another brand.
    (
        "soda-fizz-classic",
        "Fizz Cola Classic",
        "Soda",
        "can",
        "FIZZ",
        "CLASSIC",
        (30, 30, 200),
        (240, 240, 240),
        (255, 255, 255),
        (255, 255, 255),
        "bubbles",
        "",
        "triplex",
        0.56,
    ),
    (
        "soda-fizz-zero",
        "Fizz Cola Zero",
        "Soda",
        "can",
        "FIZZ",
        "ZERO SUGAR",
        (30, 30, 200),
        (25, 25, 25),
        (255, 255, 255),
        (255, 255, 255),
        "bubbles",
        "",
        "triplex",
        0.56,
    ),
    (
        "soda-fizz-cherry",
        "Fizz Cola Cherry",
        "Soda",
        "can",
        "FIZZ",
        "CHERRY",
        (30, 30, 200),
        (70, 20, 110),
        (255, 255, 255),
        (255, 255, 255),
        "cherry",
        "",
        "triplex",
        0.56,
    ),
    (
        "soda-fizz-lime",
        "Fizz Cola Lime",
        "Soda",
        "can",
        "FIZZ",
        "LIME",
        (30, 30, 200),
        (40, 210, 150),
        (255, 255, 255),
        (255, 255, 255),
        "lime",
        "",
        "triplex",
        0.56,
    ),
    (
        "soda-bolt-energy",
        "Bolt Energy",
        "Soda",
        "can",
        "BOLT",
        "ENERGY",
        (190, 190, 185),
        (180, 80, 10),
        (0, 210, 255),
        (120, 40, 0),
        "bolt",
        "",
        "duplex",
        0.5,
    ),
    # Crisps: yellow Crunch bags, band colour and a flavour icon change.
    (
        "crisps-crunch-salted",
        "Crunch Sea Salt",
        "Crisps",
        "bag",
        "CRUNCH",
        "SEA SALT",
        (30, 200, 250),
        (190, 110, 30),
        (30, 30, 200),
        (255, 255, 255),
        "salt",
        "chips",
        "triplex",
        0.74,
    ),
    (
        "crisps-crunch-cheese",
        "Crunch Cheese & Onion",
        "Crisps",
        "bag",
        "CRUNCH",
        "CHEESE & ONION",
        (30, 200, 250),
        (50, 150, 40),
        (30, 30, 200),
        (255, 255, 255),
        "onion",
        "chips",
        "triplex",
        0.74,
    ),
    (
        "crisps-crunch-paprika",
        "Crunch Paprika",
        "Crisps",
        "bag",
        "CRUNCH",
        "PAPRIKA",
        (30, 200, 250),
        (30, 50, 200),
        (30, 30, 200),
        (255, 255, 255),
        "chili",
        "chips",
        "triplex",
        0.74,
    ),
    (
        "crisps-crunch-sourcream",
        "Crunch Sour Cream & Chive",
        "Crisps",
        "bag",
        "CRUNCH",
        "SOUR CREAM",
        (30, 200, 250),
        (150, 150, 20),
        (30, 30, 200),
        (255, 255, 255),
        "leaf",
        "chips",
        "triplex",
        0.74,
    ),
    # Coffee: black labels; strength dots and the band tell them apart.
    (
        "coffee-roast-espresso",
        "Roast & Co Espresso",
        "Coffee",
        "jar",
        "ROAST & CO",
        "ESPRESSO",
        (35, 35, 35),
        (30, 30, 140),
        (40, 170, 220),
        (40, 170, 220),
        "bean",
        "dots:5",
        "complex",
        0.62,
    ),
    (
        "coffee-roast-medium",
        "Roast & Co Medium Roast",
        "Coffee",
        "jar",
        "ROAST & CO",
        "MEDIUM",
        (35, 35, 35),
        (20, 110, 200),
        (40, 170, 220),
        (40, 170, 220),
        "bean",
        "dots:3",
        "complex",
        0.62,
    ),
    (
        "coffee-roast-decaf",
        "Roast & Co Decaf",
        "Coffee",
        "jar",
        "ROAST & CO",
        "DECAF",
        (35, 35, 35),
        (60, 120, 40),
        (40, 170, 220),
        (40, 170, 220),
        "bean",
        "dots:2",
        "complex",
        0.62,
    ),
    # Pasta: identical boxes; only the window contents and the name differ.
    (
        "pasta-nonna-spaghetti",
        "Nonna Spaghetti",
        "Pasta",
        "pasta",
        "Nonna",
        "SPAGHETTI",
        (150, 70, 20),
        (0, 200, 250),
        (40, 40, 200),
        (255, 255, 255),
        "spaghetti",
        "window:spaghetti",
        "script",
        0.52,
    ),
    (
        "pasta-nonna-penne",
        "Nonna Penne",
        "Pasta",
        "pasta",
        "Nonna",
        "PENNE",
        (150, 70, 20),
        (0, 200, 250),
        (40, 40, 200),
        (255, 255, 255),
        "penne",
        "window:penne",
        "script",
        0.52,
    ),
    (
        "pasta-nonna-fusilli",
        "Nonna Fusilli",
        "Pasta",
        "pasta",
        "Nonna",
        "FUSILLI",
        (150, 70, 20),
        (0, 200, 250),
        (40, 40, 200),
        (255, 255, 255),
        "fusilli",
        "window:fusilli",
        "script",
        0.52,
    ),
]

_UNKNOWN_DESIGN: list[tuple] = [
    # Siblings of catalogue families: the dangerous unknowns, one band away from a known SKU.
    (
        "milk-alpine-chocolate",
        "Alpine Chocolate Milk",
        "Milk",
        "carton",
        "ALPINE",
        "CHOCOLATE",
        _WHITE,
        (30, 60, 110),
        (200, 120, 40),
        (150, 70, 10),
        "mountain",
        "",
        "triplex",
        0.5,
    ),
    (
        "soda-fizz-orange",
        "Fizz Orange",
        "Soda",
        "can",
        "FIZZ",
        "ORANGE",
        (30, 30, 200),
        (0, 140, 255),
        (255, 255, 255),
        (255, 255, 255),
        "orange",
        "",
        "triplex",
        0.56,
    ),
    (
        "crisps-crunch-bbq",
        "Crunch Smoky BBQ",
        "Crisps",
        "bag",
        "CRUNCH",
        "SMOKY BBQ",
        (30, 200, 250),
        (30, 40, 110),
        (30, 30, 200),
        (255, 255, 255),
        "chili",
        "chips",
        "triplex",
        0.74,
    ),
    # Entirely new families: shapes and colours the catalogue never shows.
    (
        "toil-glow-shampoo",
        "Glow Lavender Shampoo",
        "Toiletries",
        "bottle",
        "GLOW",
        "LAVENDER",
        (170, 80, 150),
        (230, 200, 235),
        (255, 255, 255),
        (255, 255, 255),
        "leaf",
        "flip",
        "duplex",
        0.4,
    ),
    (
        "toil-brite-toothpaste",
        "Brite Mint Toothpaste",
        "Toiletries",
        "tube",
        "BRITE",
        "FRESH MINT",
        (245, 245, 245),
        (160, 170, 0),
        (200, 90, 20),
        (200, 90, 20),
        "drop",
        "",
        "duplex",
        2.6,
    ),
]


def _make(row: tuple, n_images: int) -> DemoSku:
    fields = (
        "code",
        "name",
        "group",
        "shape",
        "brand",
        "flavour",
        "body",
        "band",
        "accent",
        "ink",
        "logo",
        "motif",
        "font",
        "aspect",
    )
    return DemoSku(**dict(zip(fields, row, strict=True)), n_images=n_images)


def long_tail_counts(n: int, head: int = MAX_IMAGES, tail: int = MIN_IMAGES) -> list[int]:
    """Zipf-like counts from ``head`` down to ``tail`` for ``n`` ranks (rank 1 first)."""
    if n == 1:
        return [head]
    # Exponent chosen so that rank n lands exactly on the tail count.
    s = math.log(head / tail) / math.log(n)
    return [max(tail, round(head * (r + 1) ** -s)) for r in range(n)]


def demo_skus(seed: int = 0) -> list[DemoSku]:
    """The catalogue SKUs. The seed decides which SKUs sit in the long tail, not how they look."""
    counts = long_tail_counts(len(_CATALOGUE_DESIGN))
    order = np.random.default_rng([seed, 0x7A11]).permutation(len(_CATALOGUE_DESIGN))
    return [_make(row, counts[rank]) for row, rank in zip(_CATALOGUE_DESIGN, order, strict=True)]


def demo_unknown_skus(seed: int = 0) -> list[DemoSku]:
    """Products never in the catalogue: some siblings of known families, some new shapes."""
    del seed  # same products for every seed; the seed only varies their images
    return [_make(row, UNKNOWN_IMAGES) for row in _UNKNOWN_DESIGN]


def scaled_count(sku: DemoSku, scale: float) -> int:
    """Images written for ``sku`` at ``scale`` (never fewer than MIN_PER_SKU)."""
    return max(MIN_PER_SKU, round(sku.n_images * scale))


# --------------------------------------------------------------------------- drawing helpers


def _pt(x: float, y: float) -> tuple[int, int]:
    # floor(v + 0.5) rather than round(): inputs are often numpy scalars, and this always gives int.
    return math.floor(x + 0.5), math.floor(y + 0.5)


def _shade(c: BGR, f: float) -> BGR:
    return tuple(int(min(255, max(0, v * f))) for v in c)  # type: ignore[return-value]


def _mix(a: BGR, b: BGR, t: float) -> BGR:
    return tuple(round(x * (1 - t) + y * t) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _ink_on(bg: BGR) -> BGR:
    """Black or white text, whichever reads on ``bg``."""
    b, g, r = bg
    return (25, 25, 25) if 0.114 * b + 0.587 * g + 0.299 * r > 150 else (255, 255, 255)


def _text(
    img: np.ndarray,
    text: str,
    box: tuple[float, float, float, float],
    color: BGR,
    font: str = "duplex",
    weight: float = 1.0,
) -> None:
    """Draw ``text`` as large as fits inside ``box`` (x0, y0, x1, y1), centred."""
    x0, y0, x1, y1 = box
    face = _FONTS[font]
    (tw, th), base = cv2.getTextSize(text, face, 1.0, 2)
    scale = min((x1 - x0) * 0.94 / tw, (y1 - y0) * 0.86 / (th + base))
    thick = max(1, round(scale * 2.2 * weight))
    (tw, th), base = cv2.getTextSize(text, face, scale, thick)
    org = _pt((x0 + x1 - tw) / 2, (y0 + y1 + th) / 2 - base / 3)
    cv2.putText(img, text, org, face, scale, color, thick, cv2.LINE_AA)


def _vertical_text(
    img: np.ndarray, text: str, box: tuple[float, float, float, float], color: BGR, bg: BGR, font: str
) -> None:
    """Text running bottom-to-top, as printed along cans; putText cannot rotate, so rotate a patch."""
    x0, y0, x1, y1 = (math.floor(v + 0.5) for v in box)
    patch = np.empty((x1 - x0, y1 - y0, 3), np.uint8)
    patch[:] = bg
    _text(patch, text, (0, 0, y1 - y0, x1 - x0), color, font, weight=1.3)
    img[y0:y1, x0:x1] = cv2.rotate(patch, cv2.ROTATE_90_COUNTERCLOCKWISE)


def _star(c: tuple[float, float], r: float, points: int = 5, inner: float = 0.45) -> np.ndarray:
    ang = np.arange(points * 2) * math.pi / points - math.pi / 2
    rad = np.where(np.arange(points * 2) % 2 == 0, r, r * inner)
    return np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], 1).round().astype(np.int32)


def _leaf(img: np.ndarray, c: tuple[float, float], r: float, angle: float, col: BGR) -> None:
    cv2.ellipse(img, _pt(*c), _pt(r, r * 0.42), angle, 0, 360, col, -1, cv2.LINE_AA)
    dx, dy = math.cos(math.radians(angle)) * r * 0.9, math.sin(math.radians(angle)) * r * 0.9
    cv2.line(
        img, _pt(c[0] - dx, c[1] - dy), _pt(c[0] + dx, c[1] + dy), _shade(col, 0.6), max(1, int(r / 10)), cv2.LINE_AA
    )


def _pasta(
    img: np.ndarray, kind: str, box: tuple[float, float, float, float], rng: np.random.Generator, n: int
) -> None:
    """Scatter pasta pieces of one kind; the window contents are what tells the boxes apart."""
    x0, y0, x1, y1 = box
    col, dark = (110, 200, 240), (60, 150, 200)
    w, h = x1 - x0, y1 - y0
    for _ in range(n):
        cx, cy = x0 + rng.uniform(0.12, 0.88) * w, y0 + rng.uniform(0.15, 0.85) * h
        if kind == "spaghetti":
            ang = rng.uniform(-0.25, 0.25)
            dx, dy = math.sin(ang) * h * 0.6, math.cos(ang) * h * 0.6
            cv2.line(img, _pt(cx - dx, y0 + h * 0.5 - dy), _pt(cx + dx, y0 + h * 0.5 + dy), dark, 3, cv2.LINE_AA)
            cv2.line(img, _pt(cx - dx, y0 + h * 0.5 - dy), _pt(cx + dx, y0 + h * 0.5 + dy), col, 1, cv2.LINE_AA)
        elif kind == "penne":
            ang = rng.uniform(0, 180)
            ln, th = w * 0.16, w * 0.05
            rect = ((cx, cy), (ln, th), ang)
            box_pts = cv2.boxPoints(rect).astype(np.int32)
            cv2.fillPoly(img, [box_pts], col, cv2.LINE_AA)
            cv2.polylines(img, [box_pts], True, dark, 1, cv2.LINE_AA)
            for k in (-0.25, 0.0, 0.25):
                a = math.radians(ang)
                px, py = cx + math.cos(a) * ln * k, cy + math.sin(a) * ln * k
                qx, qy = -math.sin(a) * th * 0.4, math.cos(a) * th * 0.4
                cv2.line(img, _pt(px - qx, py - qy), _pt(px + qx, py + qy), dark, 1, cv2.LINE_AA)
        else:  # fusilli: a short sine twist
            ang = rng.uniform(0, math.pi)
            t = np.linspace(-1, 1, 24)
            ln, amp = w * 0.1, w * 0.03
            xs = t * ln
            ys = np.sin(t * 3 * math.pi) * amp
            px = cx + xs * math.cos(ang) - ys * math.sin(ang)
            py = cy + xs * math.sin(ang) + ys * math.cos(ang)
            pts = np.stack([px, py], 1).round().astype(np.int32)
            cv2.polylines(img, [pts], False, dark, 5, cv2.LINE_AA)
            cv2.polylines(img, [pts], False, col, 3, cv2.LINE_AA)


def _logo(img: np.ndarray, kind: str, c: tuple[float, float], r: float, accent: BGR) -> None:
    """Small flavour or brand icon centred on ``c`` with radius ``r``."""
    x, y = c
    aa = cv2.LINE_AA
    if kind == "mountain":
        cv2.fillPoly(
            img,
            [np.array([_pt(x - r, y + r * 0.6), _pt(x - r * 0.25, y - r * 0.8), _pt(x + r * 0.5, y + r * 0.6)])],
            accent,
            aa,
        )
        cv2.fillPoly(
            img,
            [np.array([_pt(x - r * 0.1, y + r * 0.6), _pt(x + r * 0.45, y - r * 0.3), _pt(x + r, y + r * 0.6)])],
            _shade(accent, 0.7),
            aa,
        )
        cv2.fillPoly(
            img,
            [
                np.array(
                    [_pt(x - r * 0.48, y - r * 0.38), _pt(x - r * 0.25, y - r * 0.8), _pt(x - r * 0.02, y - r * 0.38)]
                )
            ],
            (255, 255, 255),
            aa,
        )
    elif kind == "orange":
        cv2.circle(img, _pt(x, y), int(r * 0.8), (0, 140, 250), -1, aa)
        cv2.circle(img, _pt(x - r * 0.25, y - r * 0.25), int(r * 0.18), (90, 200, 255), -1, aa)
        _leaf(img, (x + r * 0.35, y - r * 0.8), r * 0.35, -30, (40, 150, 40))
    elif kind == "apple":
        cv2.circle(img, _pt(x - r * 0.3, y + r * 0.1), int(r * 0.62), (40, 190, 110), -1, aa)
        cv2.circle(img, _pt(x + r * 0.3, y + r * 0.1), int(r * 0.62), (40, 190, 110), -1, aa)
        cv2.line(img, _pt(x, y - r * 0.4), _pt(x + r * 0.1, y - r * 0.9), (30, 60, 90), max(2, int(r / 8)), aa)
        _leaf(img, (x + r * 0.4, y - r * 0.75), r * 0.3, -20, (30, 130, 30))
    elif kind == "multifruit":
        cv2.circle(img, _pt(x - r * 0.45, y + r * 0.25), int(r * 0.48), (0, 140, 250), -1, aa)
        cv2.circle(img, _pt(x + r * 0.45, y + r * 0.25), int(r * 0.48), (40, 190, 110), -1, aa)
        cv2.circle(img, _pt(x, y - r * 0.35), int(r * 0.48), (50, 40, 210), -1, aa)
    elif kind == "strawberry":
        pts = np.array([_pt(x - r * 0.75, y - r * 0.35), _pt(x + r * 0.75, y - r * 0.35), _pt(x, y + r * 0.95)])
        cv2.fillPoly(img, [pts], (50, 40, 215), aa)
        cv2.ellipse(img, _pt(x, y - r * 0.35), _pt(r * 0.75, r * 0.45), 0, 180, 360, (50, 40, 215), -1, aa)
        for dx, dy in ((-0.35, -0.1), (0.3, -0.05), (0, 0.3), (-0.1, 0.6), (0.2, 0.3), (-0.4, -0.45)):
            cv2.circle(img, _pt(x + dx * r, y + dy * r), max(1, int(r * 0.06)), (120, 220, 250), -1, aa)
        _star_pts = _star((x, y - r * 0.75), r * 0.45, 5, 0.4)
        cv2.fillPoly(img, [_star_pts], (40, 150, 40), aa)
    elif kind == "raspberry":
        for i in range(4):
            for j in range(4 - i // 2):
                px = x + (j - (3 - i // 2) / 2) * r * 0.38
                py = y - r * 0.45 + i * r * 0.33
                cv2.circle(img, _pt(px, py), int(r * 0.22), (90, 30, 170), -1, aa)
                cv2.circle(img, _pt(px - r * 0.05, py - r * 0.05), max(1, int(r * 0.06)), (170, 120, 230), -1, aa)
        _leaf(img, (x - r * 0.3, y - r * 0.8), r * 0.35, -160, (40, 150, 40))
        _leaf(img, (x + r * 0.3, y - r * 0.8), r * 0.35, -20, (40, 150, 40))
    elif kind == "peach":
        cv2.circle(img, _pt(x, y + r * 0.1), int(r * 0.8), (90, 160, 250), -1, aa)
        cv2.ellipse(
            img,
            _pt(x + r * 0.15, y + r * 0.1),
            _pt(r * 0.25, r * 0.7),
            0,
            -80,
            80,
            (60, 110, 230),
            max(2, int(r / 10)),
            aa,
        )
        _leaf(img, (x + r * 0.3, y - r * 0.75), r * 0.4, -25, (40, 150, 40))
    elif kind == "vanilla":
        for k in range(5):
            a = math.radians(k * 72 - 90)
            cv2.ellipse(
                img,
                _pt(x + math.cos(a) * r * 0.45, y + math.sin(a) * r * 0.45),
                _pt(r * 0.45, r * 0.24),
                k * 72 - 90,
                0,
                360,
                (200, 240, 250),
                -1,
                aa,
            )
        cv2.circle(img, _pt(x, y), int(r * 0.22), (0, 190, 240), -1, aa)
    elif kind == "cherry":
        cv2.line(img, _pt(x - r * 0.45, y + r * 0.3), _pt(x + r * 0.1, y - r * 0.8), (40, 110, 40), 3, aa)
        cv2.line(img, _pt(x + r * 0.45, y + r * 0.35), _pt(x + r * 0.1, y - r * 0.8), (40, 110, 40), 3, aa)
        cv2.circle(img, _pt(x - r * 0.45, y + r * 0.4), int(r * 0.42), (40, 20, 150), -1, aa)
        cv2.circle(img, _pt(x + r * 0.45, y + r * 0.45), int(r * 0.42), (40, 20, 150), -1, aa)
    elif kind == "lime":
        cv2.circle(img, _pt(x, y), int(r * 0.85), (40, 170, 90), -1, aa)
        cv2.circle(img, _pt(x, y), int(r * 0.68), (120, 235, 190), -1, aa)
        for k in range(8):
            a = math.radians(k * 45)
            cv2.line(img, _pt(x, y), _pt(x + math.cos(a) * r * 0.68, y + math.sin(a) * r * 0.68), (40, 170, 90), 2, aa)
    elif kind == "bolt":
        pts = np.array(
            [
                _pt(x + r * 0.2, y - r),
                _pt(x - r * 0.55, y + r * 0.15),
                _pt(x - r * 0.05, y + r * 0.15),
                _pt(x - r * 0.25, y + r),
                _pt(x + r * 0.55, y - r * 0.2),
                _pt(x + r * 0.05, y - r * 0.2),
            ]
        )
        cv2.fillPoly(img, [pts], accent, aa)
    elif kind == "star":
        cv2.fillPoly(img, [_star((x, y), r)], accent, aa)
    elif kind == "wheat":
        cv2.line(img, _pt(x, y + r), _pt(x, y - r * 0.9), (30, 110, 170), max(2, int(r / 9)), aa)
        for k in range(4):
            yy = y - r * 0.7 + k * r * 0.38
            _leaf(img, (x - r * 0.22, yy), r * 0.28, -60, (60, 170, 220))
            _leaf(img, (x + r * 0.22, yy), r * 0.28, -120, (60, 170, 220))
    elif kind == "honey":
        hexagon = np.array(
            [
                _pt(x + math.cos(math.radians(60 * k)) * r * 0.8, y + math.sin(math.radians(60 * k)) * r * 0.8)
                for k in range(6)
            ]
        )
        cv2.fillPoly(img, [hexagon], (0, 170, 240), aa)
        cv2.polylines(img, [hexagon], True, (0, 100, 170), max(2, int(r / 8)), aa)
        cv2.ellipse(img, _pt(x, y), _pt(r * 0.3, r * 0.2), 0, 0, 360, (20, 40, 60), -1, aa)
    elif kind == "choco":
        s = r * 0.55
        for i in (-1, 0):
            for j in (-1, 0):
                p0 = _pt(x + j * s + 2, y + i * s + 2)
                cv2.rectangle(img, p0, _pt(x + (j + 1) * s - 2, y + (i + 1) * s - 2), (30, 60, 100), -1, aa)
        cv2.rectangle(img, _pt(x - s, y - s), _pt(x + s, y + s), (20, 40, 70), max(2, int(r / 10)), aa)
    elif kind == "bubbles":
        for dx, dy, rr in ((-0.3, 0.3, 0.35), (0.35, 0.0, 0.25), (-0.05, -0.45, 0.2), (0.4, -0.6, 0.12)):
            cv2.circle(img, _pt(x + dx * r, y + dy * r), int(rr * r), accent, max(2, int(r / 12)), aa)
    elif kind == "salt":
        cv2.ellipse(img, _pt(x, y + r * 0.2), _pt(r * 0.9, r * 0.5), 0, 0, 360, (255, 255, 255), -1, aa)
        for k in range(3):
            yy = y + r * (0.05 + 0.17 * k)
            cv2.line(img, _pt(x - r * 0.6, yy), _pt(x + r * 0.6, yy), (190, 110, 30), 2, aa)
        for dx in (-0.4, 0.0, 0.4):
            cv2.rectangle(img, _pt(x + dx * r - 3, y - r * 0.7), _pt(x + dx * r + 3, y - r * 0.55), (255, 255, 255), -1)
    elif kind == "onion":
        cv2.circle(img, _pt(x, y + r * 0.15), int(r * 0.75), (140, 60, 150), -1, aa)
        cv2.circle(img, _pt(x, y + r * 0.15), int(r * 0.5), (200, 150, 210), 2, aa)
        cv2.circle(img, _pt(x, y + r * 0.15), int(r * 0.28), (200, 150, 210), 2, aa)
        _leaf(img, (x, y - r * 0.75), r * 0.35, -90, (50, 150, 40))
    elif kind == "chili":
        cv2.ellipse(
            img, _pt(x, y - r * 0.1), _pt(r * 0.85, r * 0.8), 0, 20, 160, (30, 30, 210), max(3, int(r / 3.5)), aa
        )
        cv2.line(img, _pt(x - r * 0.78, y + r * 0.05), _pt(x - r * 0.95, y - r * 0.35), (40, 140, 40), 3, aa)
    elif kind == "leaf":
        _leaf(img, (x - r * 0.2, y + r * 0.1), r * 0.7, -50, (60, 170, 60))
        _leaf(img, (x + r * 0.35, y - r * 0.1), r * 0.5, -120, (40, 130, 40))
    elif kind == "bean":
        cv2.ellipse(img, _pt(x, y), _pt(r * 0.6, r * 0.85), 25, 0, 360, (30, 60, 110), -1, aa)
        cv2.ellipse(img, _pt(x, y), _pt(r * 0.2, r * 0.7), 25, -90, 90, (20, 30, 50), max(2, int(r / 8)), aa)
    elif kind == "drop":
        cv2.circle(img, _pt(x, y + r * 0.3), int(r * 0.6), accent, -1, aa)
        cv2.fillPoly(
            img, [np.array([_pt(x - r * 0.55, y + r * 0.1), _pt(x, y - r), _pt(x + r * 0.55, y + r * 0.1)])], accent, aa
        )
    elif kind in ("spaghetti", "penne", "fusilli"):
        sub = np.random.default_rng(zlib.crc32(kind.encode()))
        cv2.circle(img, _pt(x, y), int(r), (240, 245, 250), -1, aa)
        _pasta(img, kind, (x - r * 0.8, y - r * 0.8, x + r * 0.8, y + r * 0.8), sub, 5)
    elif kind == "lf":
        cv2.circle(img, _pt(x, y), int(r), accent, -1, aa)
        _text(img, "LF", (x - r * 0.7, y - r * 0.5, x + r * 0.7, y + r * 0.5), (255, 255, 255), "duplex")


def _cylinder_shade(img: np.ndarray, x0: int, x1: int, gloss: float) -> None:
    """Darken towards the sides and add a highlight, so flat art reads as a round can or bottle."""
    w = x1 - x0
    t = (np.arange(w, dtype=np.float32) + 0.5) / w
    prof = 0.55 + 0.45 * np.sqrt(np.clip(np.sin(np.pi * t), 0, 1))
    hi = gloss * np.exp(-(((t - 0.3) / 0.06) ** 2))
    seg = img[:, x0:x1].astype(np.float32)
    seg = seg * prof[None, :, None] + 255.0 * hi[None, :, None]
    img[:, x0:x1] = np.clip(seg, 0, 255).astype(np.uint8)


def _box_side(img: np.ndarray, alpha: np.ndarray, sku: DemoSku, x0: int, x1: int, y0: int, y1: int) -> None:
    """Darker side panel next to the front face; the warp turns it into a visible 3D side."""
    side = _shade(sku.body, 0.72)
    cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), side, -1)
    cv2.rectangle(alpha, (x0, y0), (x1 - 1, y1 - 1), 255, -1)
    w = x1 - x0
    cv2.rectangle(
        img, (x0, int(y0 + (y1 - y0) * 0.55)), (x1 - 1, int(y0 + (y1 - y0) * 0.66)), _shade(sku.band, 0.8), -1
    )
    cv2.rectangle(
        img, _pt(x0 + w * 0.15, y0 + (y1 - y0) * 0.72), _pt(x1 - w * 0.15, y1 - (y1 - y0) * 0.06), (225, 230, 232), -1
    )
    for k in range(6):  # nutrition-table rules
        yy = y0 + (y1 - y0) * (0.75 + k * 0.03)
        cv2.line(img, _pt(x0 + w * 0.2, yy), _pt(x1 - w * 0.2, yy), (120, 120, 120), 1)


# --------------------------------------------------------------------------- package shapes

_TH = 360  # template height in pixels; large enough that text survives down-scaling


def _carton(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    h = _TH
    w = int(h * sku.aspect)
    s = int(w * 0.3)
    img = np.zeros((h, w + s, 3), np.uint8)
    alpha = np.zeros((h, w + s), np.uint8)
    y_roof, y_body = int(h * 0.06), int(h * 0.22)
    cv2.rectangle(img, (0, 0), (w - 1, y_roof), _shade(sku.body, 0.93), -1)
    cv2.rectangle(img, (0, y_roof), (w - 1, y_body), _shade(sku.body, 0.86), -1)
    cv2.rectangle(img, (0, y_body), (w - 1, h - 1), sku.body, -1)
    cv2.rectangle(alpha, (0, 0), (w - 1, h - 1), 255, -1)
    gable = np.array([(w, y_body), (w + s - 1, y_body), (w + s // 2, y_roof)])
    cv2.fillPoly(img, [gable], _shade(sku.body, 0.78), cv2.LINE_AA)
    cv2.fillPoly(alpha, [gable], 255, cv2.LINE_AA)
    _box_side(img, alpha, sku, w, w + s, y_body, h)
    # The cap carries the flavour colour, as on real milk cartons.
    cv2.ellipse(
        img,
        _pt(w * 0.7, (y_roof + y_body) / 2),
        _pt(w * 0.14, (y_body - y_roof) * 0.38),
        0,
        0,
        360,
        sku.band,
        -1,
        cv2.LINE_AA,
    )
    cv2.ellipse(
        img,
        _pt(w * 0.7, (y_roof + y_body) / 2),
        _pt(w * 0.14, (y_body - y_roof) * 0.38),
        0,
        0,
        360,
        _shade(sku.band, 0.7),
        2,
        cv2.LINE_AA,
    )
    cv2.line(img, (0, y_body), (w - 1, y_body), _shade(sku.body, 0.7), 2)
    # Brand block, logo, flavour band, accent stripes.
    cv2.rectangle(img, _pt(0, y_body + h * 0.02), _pt(w, y_body + h * 0.15), sku.accent, -1)
    _text(
        img,
        sku.brand,
        (w * 0.06, y_body + h * 0.025, w * 0.94, y_body + h * 0.145),
        sku.ink if sku.ink != sku.accent else (255, 255, 255),
        sku.font,
        1.2,
    )
    _logo(img, sku.logo, (w * 0.5, h * 0.52), w * 0.3, sku.accent)
    if sku.motif == "lf":
        _logo(img, "lf", (w * 0.82, h * 0.43), w * 0.1, sku.band)
    cv2.rectangle(img, _pt(0, h * 0.7), _pt(w, h * 0.83), sku.band, -1)
    _text(img, sku.flavour, (w * 0.05, h * 0.705, w * 0.95, h * 0.825), _ink_on(sku.band), "duplex")
    for k in range(3):
        yy = h * (0.87 + k * 0.035)
        cv2.line(img, _pt(0, yy), _pt(w, yy), _mix(sku.accent, sku.body, 0.3 * k), 3, cv2.LINE_AA)
    _text(img, "1 L", (w * 0.6, h * 0.935, w * 0.95, h * 0.99), (60, 60, 60), "simplex")
    return img, alpha


def _can(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    h = _TH
    w = int(h * sku.aspect)
    img = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    ey = int(h * 0.045)
    top, bot = ey, h - ey - 1
    cv2.rectangle(img, (0, top), (w - 1, bot), sku.body, -1)
    cv2.ellipse(img, (w // 2, bot), (w // 2 - 1, ey), 0, 0, 180, sku.body, -1, cv2.LINE_AA)
    cv2.rectangle(alpha, (0, top), (w - 1, bot), 255, -1)
    cv2.ellipse(alpha, (w // 2, bot), (w // 2 - 1, ey), 0, 0, 180, 255, -1, cv2.LINE_AA)
    cv2.ellipse(alpha, (w // 2, top), (w // 2 - 1, ey), 0, 0, 360, 255, -1, cv2.LINE_AA)
    _vertical_text(img, sku.brand, (w * 0.08, h * 0.12, w * 0.55, h * 0.66), sku.ink, sku.body, sku.font)
    _logo(img, sku.logo, (w * 0.77, h * 0.3), w * 0.18, sku.accent)
    cv2.rectangle(img, _pt(0, h * 0.7), _pt(w, h * 0.8), sku.band, -1)
    _text(img, sku.flavour, (w * 0.08, h * 0.705, w * 0.92, h * 0.795), _ink_on(sku.band), "duplex")
    cv2.line(img, _pt(0, h * 0.84), _pt(w, h * 0.84), sku.accent, 3, cv2.LINE_AA)
    _text(img, "330ml", (w * 0.3, h * 0.86, w * 0.7, h * 0.92), sku.ink, "simplex")
    _cylinder_shade(img, 0, w, 0.35)
    # Lid after shading: it faces the camera and stays bright.
    cv2.ellipse(img, (w // 2, top), (w // 2 - 1, ey), 0, 0, 360, (185, 188, 192), -1, cv2.LINE_AA)
    cv2.ellipse(img, (w // 2, top), (int(w * 0.4), int(ey * 0.7)), 0, 0, 360, (150, 152, 158), -1, cv2.LINE_AA)
    cv2.ellipse(img, (w // 2, top + 1), (int(w * 0.1), int(ey * 0.35)), 0, 0, 360, (205, 208, 210), -1, cv2.LINE_AA)
    return img, alpha


def _bottle(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    h = _TH
    w = int(h * sku.aspect)
    img = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    flip = sku.motif == "flip"
    cap_w = w * (0.62 if flip else 0.36)
    neck_w = w * (0.5 if flip else 0.3)
    y_cap, y_neck, y_sh = h * (0.1 if flip else 0.07), h * (0.14 if flip else 0.17), h * (0.2 if flip else 0.34)
    cx = w / 2
    outline = [_pt(cx - neck_w / 2, y_cap), _pt(cx + neck_w / 2, y_cap), _pt(cx + neck_w / 2, y_neck)]
    for t in np.linspace(0, 1, 12):  # shoulder curve
        outline.append(
            _pt(cx + neck_w / 2 + (w / 2 - 1 - neck_w / 2) * math.sin(t * math.pi / 2), y_neck + (y_sh - y_neck) * t)
        )
    outline += [_pt(w - 1, h * 0.95), _pt(w * 0.88, h - 1), _pt(w * 0.12, h - 1), _pt(0, h * 0.95)]
    for t in np.linspace(1, 0, 12):
        outline.append(
            _pt(cx - neck_w / 2 - (w / 2 - 1 - neck_w / 2) * math.sin(t * math.pi / 2), y_neck + (y_sh - y_neck) * t)
        )
    outline.append(_pt(cx - neck_w / 2, y_neck))
    poly = np.array(outline, np.int32)
    cv2.fillPoly(img, [poly], sku.body, cv2.LINE_AA)
    cv2.fillPoly(alpha, [poly], 255, cv2.LINE_AA)
    # Label wrap with brand, icon and flavour band.
    ly0, ly1 = h * (0.42 if not flip else 0.3), h * 0.86
    cv2.rectangle(img, _pt(0, ly0), _pt(w, ly1), sku.accent, -1)
    cv2.rectangle(img, _pt(0, ly0), _pt(w, ly0 + h * 0.015), sku.band, -1)
    _text(
        img,
        sku.brand,
        (w * 0.08, ly0 + h * 0.03, w * 0.92, ly0 + h * 0.12),
        sku.band if not flip else sku.body,
        sku.font,
        1.2,
    )
    _logo(img, sku.logo, (cx, ly0 + (ly1 - ly0) * 0.5), w * 0.22, sku.band)
    cv2.rectangle(img, _pt(0, ly1 - h * 0.11), _pt(w, ly1 - h * 0.02), sku.band, -1)
    _text(img, sku.flavour, (w * 0.06, ly1 - h * 0.105, w * 0.94, ly1 - h * 0.025), _ink_on(sku.band), "duplex")
    _cylinder_shade(img, 0, w, 0.45)
    cap = (int(cx - cap_w / 2), 0, int(cx + cap_w / 2), int(y_cap) + 2)
    cap_col = (245, 245, 245) if flip else sku.band
    cv2.rectangle(img, cap[:2], cap[2:], cap_col, -1)
    cv2.rectangle(alpha, cap[:2], cap[2:], 255, -1)
    for k in range(1, 8):  # grip ridges
        xx = cap[0] + (cap[2] - cap[0]) * k / 8
        cv2.line(img, _pt(xx, 2), _pt(xx, cap[3] - 2), _shade(cap_col, 0.75), 1)
    return img, alpha


def _boxed(sku: DemoSku, side: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """A plain box front in the body colour with its side panel (``side`` x the front width); (img, alpha, w, h)."""
    h = _TH
    w = int(h * sku.aspect)
    s = int(w * side)
    img = np.zeros((h, w + s, 3), np.uint8)
    alpha = np.zeros((h, w + s), np.uint8)
    cv2.rectangle(img, (0, 0), (w - 1, h - 1), sku.body, -1)
    cv2.rectangle(alpha, (0, 0), (w - 1, h - 1), 255, -1)
    _box_side(img, alpha, sku, w, w + s, 0, h)
    return img, alpha, w, h


def _box(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    img, alpha, w, h = _boxed(sku, 0.2)
    # Sunburst behind the bowl, cheap and typical of cereal boxes.
    for k in range(12):
        a0, a1 = math.radians(k * 30), math.radians(k * 30 + 12)
        c = (w * 0.5, h * 0.66)
        tri = np.array(
            [
                _pt(*c),
                _pt(c[0] + math.cos(a0) * w, c[1] + math.sin(a0) * w),
                _pt(c[0] + math.cos(a1) * w, c[1] + math.sin(a1) * w),
            ]
        )
        cv2.fillPoly(img, [tri], _mix(sku.body, (255, 255, 255), 0.25), cv2.LINE_AA)
    cv2.rectangle(img, (0, 0), (w - 1, int(h * 0.2)), sku.accent, -1)
    _text(img, sku.brand, (w * 0.05, h * 0.02, w * 0.95, h * 0.18), sku.ink, sku.font, 1.3)
    _logo(img, sku.logo, (w * 0.16, h * 0.3), w * 0.11, sku.band)
    # Slanted flavour banner: same place on every sibling, only colour and word change.
    band = np.array([_pt(w * 0.3, h * 0.24), _pt(w, h * 0.24), _pt(w, h * 0.36), _pt(w * 0.34, h * 0.36)])
    cv2.fillPoly(img, [band], sku.band, cv2.LINE_AA)
    _text(img, sku.flavour, (w * 0.36, h * 0.245, w * 0.97, h * 0.355), _ink_on(sku.band), "duplex")
    # Bowl of cereal.
    bx, by = w * 0.5, h * 0.72
    cv2.ellipse(img, _pt(bx, by), _pt(w * 0.4, h * 0.17), 0, 0, 180, (245, 245, 245), -1, cv2.LINE_AA)
    cv2.ellipse(img, _pt(bx, by), _pt(w * 0.4, h * 0.05), 0, 0, 360, (250, 250, 250), -1, cv2.LINE_AA)
    kind = sku.motif.split(":")[1]
    piece = {"oats": (120, 190, 225), "honey": (40, 160, 230), "choco": (40, 70, 110), "stars": (60, 200, 250)}[kind]
    sub = np.random.default_rng(zlib.crc32(sku.motif.encode()))
    for _ in range(26):
        px, py = bx + sub.uniform(-0.33, 0.33) * w, by - h * 0.02 + sub.uniform(-0.05, 0.02) * h
        if kind == "stars":
            cv2.fillPoly(img, [_star((px, py), w * 0.04)], piece, cv2.LINE_AA)
        else:
            cv2.circle(img, _pt(px, py), int(w * 0.035), piece, -1, cv2.LINE_AA)
            cv2.circle(img, _pt(px, py), int(w * 0.035), _shade(piece, 0.7), 1, cv2.LINE_AA)
    cv2.ellipse(img, _pt(bx, by), _pt(w * 0.4, h * 0.17), 0, 0, 180, (200, 200, 205), 2, cv2.LINE_AA)
    cv2.rectangle(img, _pt(0, h * 0.93), _pt(w, h), sku.accent, -1)
    _text(img, "500g", (w * 0.62, h * 0.935, w * 0.95, h * 0.995), sku.ink, "simplex")
    return img, alpha


def _pasta_box(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    img, alpha, w, h = _boxed(sku, 0.16)
    for k, col in enumerate(((40, 140, 40), (245, 245, 245), (40, 40, 200))):  # tricolore stripe
        cv2.rectangle(img, _pt(w * k / 3, 0), _pt(w * (k + 1) / 3, h * 0.03), col, -1)
    _text(img, sku.brand, (w * 0.08, h * 0.05, w * 0.92, h * 0.2), sku.ink, sku.font, 1.4)
    wx0, wy0, wx1, wy1 = w * 0.14, h * 0.25, w * 0.86, h * 0.64
    cv2.rectangle(img, _pt(wx0, wy0), _pt(wx1, wy1), (170, 225, 245), -1)
    sub = np.random.default_rng(zlib.crc32(sku.motif.encode()))
    kind = sku.motif.split(":")[1]
    _pasta(img, kind, (wx0, wy0, wx1, wy1), sub, {"spaghetti": 26, "penne": 14, "fusilli": 14}[kind])
    cv2.rectangle(img, _pt(wx0, wy0), _pt(wx1, wy1), (245, 245, 245), 4)
    cv2.rectangle(img, _pt(0, h * 0.7), _pt(w, h * 0.8), sku.band, -1)
    _text(img, sku.flavour, (w * 0.05, h * 0.705, w * 0.95, h * 0.795), _ink_on(sku.band), "duplex")
    _logo(img, sku.logo, (w * 0.2, h * 0.88), w * 0.12, sku.accent)
    _text(img, "500g", (w * 0.55, h * 0.85, w * 0.92, h * 0.92), (255, 255, 255), "simplex")
    return img, alpha


def _bag(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    h = _TH
    w = int(h * sku.aspect)
    img = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    crimp = h * 0.07
    teeth = 14
    top = [_pt(w * k / (2 * teeth), (k % 2) * h * 0.012) for k in range(2 * teeth + 1)]
    bottom = [_pt(w * k / (2 * teeth), h - 1 - (k % 2) * h * 0.012) for k in range(2 * teeth, -1, -1)]
    ts = np.linspace(0, 1, 16)
    right = [_pt(w - 1 - w * 0.04 * (1 - math.sin(t * math.pi)), crimp + (h - 2 * crimp) * t) for t in ts]
    left = [_pt(w * 0.04 * (1 - math.sin(t * math.pi)), h - crimp - (h - 2 * crimp) * t) for t in ts]
    poly = np.array(top + right + bottom + left, np.int32)
    cv2.fillPoly(img, [poly], sku.body, cv2.LINE_AA)
    cv2.fillPoly(alpha, [poly], 255, cv2.LINE_AA)
    for k in range(1, 2 * teeth):  # heat-seal ridges
        xx = w * k / (2 * teeth)
        cv2.line(img, _pt(xx, 2), _pt(xx, crimp - 2), _shade(sku.body, 0.82), 1)
        cv2.line(img, _pt(xx, h - crimp + 2), _pt(xx, h - 3), _shade(sku.body, 0.82), 1)
    cv2.ellipse(img, _pt(w * 0.5, h * 0.24), _pt(w * 0.44, h * 0.12), -6, 0, 360, sku.accent, -1, cv2.LINE_AA)
    cv2.ellipse(img, _pt(w * 0.5, h * 0.24), _pt(w * 0.44, h * 0.12), -6, 0, 360, (255, 255, 255), 3, cv2.LINE_AA)
    _text(img, sku.brand, (w * 0.14, h * 0.17, w * 0.86, h * 0.31), sku.ink, sku.font, 1.3)
    band = np.array([_pt(0, h * 0.44), _pt(w, h * 0.4), _pt(w, h * 0.53), _pt(0, h * 0.57)])
    cv2.fillPoly(img, [band], sku.band, cv2.LINE_AA)
    _text(img, sku.flavour, (w * 0.06, h * 0.445, w * 0.94, h * 0.525), _ink_on(sku.band), "duplex")
    _logo(img, sku.logo, (w * 0.78, h * 0.68), w * 0.12, sku.accent)
    sub = np.random.default_rng(7)  # same chips on every flavour: they are not what differs
    for _ in range(6):
        px, py = w * sub.uniform(0.15, 0.6), h * sub.uniform(0.65, 0.85)
        ang = sub.uniform(0, 180)
        cv2.ellipse(img, _pt(px, py), _pt(w * 0.11, w * 0.07), ang, 0, 360, (110, 215, 250), -1, cv2.LINE_AA)
        cv2.ellipse(img, _pt(px, py), _pt(w * 0.11, w * 0.07), ang, 0, 360, (40, 150, 210), 2, cv2.LINE_AA)
    # Pillow shading: brighter in the middle, darker at the crimped ends.
    yy = (np.arange(h, dtype=np.float32) + 0.5) / h
    xx = (np.arange(w, dtype=np.float32) + 0.5) / w
    prof = (0.72 + 0.28 * np.sin(np.pi * yy))[:, None] * (0.85 + 0.15 * np.sin(np.pi * xx))[None, :]
    prof += 0.25 * np.exp(-(((xx[None, :] - 0.32) / 0.07) ** 2)) * np.sin(np.pi * yy)[:, None]
    img[:] = np.clip(img.astype(np.float32) * prof[..., None] + 40 * (prof[..., None] > 1.0), 0, 255).astype(np.uint8)
    return img, alpha


def _jar(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    h = _TH
    w = int(h * sku.aspect)
    img = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    glass = (25, 40, 60)  # coffee granules seen through the glass
    cv2.rectangle(img, _pt(w * 0.12, h * 0.13), _pt(w * 0.88, h * 0.2), _shade(glass, 0.8), -1)
    cv2.rectangle(alpha, _pt(w * 0.12, h * 0.13), _pt(w * 0.88, h * 0.2), 255, -1)
    body = (_pt(0, h * 0.19), _pt(w - 1, h - 1))
    cv2.rectangle(img, body[0], body[1], glass, -1)
    cv2.rectangle(alpha, body[0], body[1], 255, -1)
    cv2.rectangle(img, _pt(0, h * 0.33), _pt(w, h * 0.88), sku.body, -1)
    cv2.rectangle(img, _pt(0, h * 0.345), _pt(w, h * 0.355), sku.accent, -1)
    cv2.rectangle(img, _pt(0, h * 0.855), _pt(w, h * 0.865), sku.accent, -1)
    _logo(img, sku.logo, (w * 0.5, h * 0.43), w * 0.1, sku.accent)
    _text(img, sku.brand, (w * 0.06, h * 0.48, w * 0.94, h * 0.58), sku.ink, sku.font, 1.1)
    cv2.rectangle(img, _pt(0, h * 0.62), _pt(w, h * 0.72), sku.band, -1)
    _text(img, sku.flavour, (w * 0.08, h * 0.625, w * 0.92, h * 0.715), _ink_on(sku.band), "duplex")
    strength = int(sku.motif.split(":")[1])
    for k in range(5):  # roast-strength scale: a small mark that separates the siblings
        c = _pt(w * (0.3 + k * 0.1), h * 0.79)
        cv2.circle(img, c, int(w * 0.035), sku.accent, -1 if k < strength else 2, cv2.LINE_AA)
    _cylinder_shade(img, 0, w, 0.3)
    cv2.rectangle(img, (0, 0), _pt(w - 1, h * 0.14), sku.accent, -1)
    cv2.rectangle(alpha, (0, 0), _pt(w - 1, h * 0.14), 255, -1)
    for k in range(1, 24):
        xx = w * k / 24
        cv2.line(img, _pt(xx, 3), _pt(xx, h * 0.14 - 3), _shade(sku.accent, 0.75), 1)
    return img, alpha


def _tub(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    h = int(_TH * 0.8)
    w = int(h * sku.aspect)
    img = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    y_lid = h * 0.13
    body = np.array([_pt(0, y_lid), _pt(w - 1, y_lid), _pt(w * 0.87, h * 0.96), _pt(w * 0.13, h * 0.96)])
    cv2.fillPoly(img, [body], sku.body, cv2.LINE_AA)
    cv2.fillPoly(alpha, [body], 255, cv2.LINE_AA)
    cv2.ellipse(img, _pt(w / 2, h * 0.96), _pt(w * 0.37, h * 0.035), 0, 0, 180, sku.body, -1, cv2.LINE_AA)
    cv2.ellipse(alpha, _pt(w / 2, h * 0.96), _pt(w * 0.37, h * 0.035), 0, 0, 180, 255, -1, cv2.LINE_AA)
    # The lid ellipse will cover the body down to y_lid + 0.11h, so the brand starts below it.
    _text(img, sku.brand, (w * 0.16, y_lid + h * 0.12, w * 0.84, y_lid + h * 0.25), sku.ink, sku.font, 1.2)
    _leaf(img, (w * 0.16, y_lid + h * 0.185), w * 0.05, -40, sku.accent)
    _logo(img, sku.logo, (w * 0.5, h * 0.555), w * 0.14, sku.accent)
    band = np.array([_pt(w * 0.07, h * 0.7), _pt(w * 0.93, h * 0.7), _pt(w * 0.91, h * 0.82), _pt(w * 0.09, h * 0.82)])
    cv2.fillPoly(img, [band], sku.band, cv2.LINE_AA)
    _text(img, sku.flavour, (w * 0.14, h * 0.705, w * 0.86, h * 0.815), _ink_on(sku.band), "duplex")
    _text(img, "4 x 125g", (w * 0.3, h * 0.85, w * 0.7, h * 0.92), (90, 90, 90), "simplex")
    _cylinder_shade(img, 0, w, 0.2)
    # Foil lid in the flavour colour: the first thing a shopper sees from above.
    cv2.ellipse(img, _pt(w / 2, y_lid), _pt(w / 2 - 1, h * 0.11), 0, 0, 360, sku.band, -1, cv2.LINE_AA)
    cv2.ellipse(alpha, _pt(w / 2, y_lid), _pt(w / 2 - 1, h * 0.11), 0, 0, 360, 255, -1, cv2.LINE_AA)
    cv2.ellipse(img, _pt(w / 2, y_lid), _pt(w / 2 - 1, h * 0.11), 0, 0, 360, _shade(sku.band, 0.75), 3, cv2.LINE_AA)
    cv2.ellipse(
        img,
        _pt(w * 0.35, y_lid - h * 0.03),
        _pt(w * 0.15, h * 0.03),
        -8,
        0,
        360,
        _mix(sku.band, (255, 255, 255), 0.5),
        -1,
        cv2.LINE_AA,
    )
    return img, alpha


def _tube(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    h = int(_TH * 0.45)
    w = int(h * sku.aspect)
    img = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    x_seal, x_sh, x_cap = w * 0.07, w * 0.8, w * 0.86
    poly = np.array(
        [
            _pt(0, 0),
            _pt(x_seal, 0),
            _pt(x_sh, h * 0.12),
            _pt(x_cap, h * 0.3),
            _pt(x_cap, h * 0.7),
            _pt(x_sh, h * 0.88),
            _pt(x_seal, h - 1),
            _pt(0, h - 1),
        ]
    )
    cv2.fillPoly(img, [poly], sku.body, cv2.LINE_AA)
    cv2.fillPoly(alpha, [poly], 255, cv2.LINE_AA)
    for k in range(1, 8):
        xx = x_seal * k / 8
        cv2.line(img, _pt(xx, 2), _pt(xx, h - 3), _shade(sku.body, 0.8), 1)
    stripe = np.array([_pt(x_seal, h * 0.62), _pt(x_sh, h * 0.5), _pt(x_sh, h * 0.7), _pt(x_seal, h * 0.86)])
    cv2.fillPoly(img, [stripe], sku.band, cv2.LINE_AA)
    _text(img, sku.brand, (w * 0.12, h * 0.12, w * 0.55, h * 0.5), sku.ink, sku.font, 1.4)
    _text(img, sku.flavour, (w * 0.55, h * 0.2, w * 0.78, h * 0.42), sku.band, "duplex")
    _logo(img, sku.logo, (w * 0.66, h * 0.72), h * 0.12, sku.accent)
    yy = (np.arange(h, dtype=np.float32) + 0.5) / h
    prof = 0.6 + 0.4 * np.sqrt(np.sin(np.pi * yy)) + 0.3 * np.exp(-(((yy - 0.3) / 0.06) ** 2))
    img[:] = np.clip(img.astype(np.float32) * prof[:, None, None], 0, 255).astype(np.uint8)
    cv2.rectangle(img, _pt(x_cap, h * 0.25), _pt(w - 1, h * 0.75), (235, 235, 235), -1)
    cv2.rectangle(alpha, _pt(x_cap, h * 0.25), _pt(w - 1, h * 0.75), 255, -1)
    for k in range(1, 10):
        xx = x_cap + (w - x_cap) * k / 10
        cv2.line(img, _pt(xx, h * 0.27), _pt(xx, h * 0.73), (190, 190, 190), 1)
    return img, alpha


_SHAPES: dict[str, Callable[[DemoSku], tuple[np.ndarray, np.ndarray]]] = {
    "carton": _carton,
    "can": _can,
    "bottle": _bottle,
    "box": _box,
    "pasta": _pasta_box,
    "bag": _bag,
    "jar": _jar,
    "tub": _tub,
    "tube": _tube,
}


@functools.lru_cache(maxsize=64)
def _template(sku: DemoSku) -> np.ndarray:
    """The clean package as BGRA; drawn once per SKU because drawing costs more than warping."""
    bgr, alpha = _SHAPES[sku.shape](sku)
    out = np.dstack([bgr, alpha])
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------- scene


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A float32 BGR scene without the product: shelf, clutter, gradient or surface texture."""
    kind = int(rng.integers(4))
    base = rng.uniform(40, 220, 3)
    other = rng.uniform(40, 220, 3)
    if kind == 0:  # gradient
        ang = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (xx / w - 0.5) * math.cos(ang) + (yy / h - 0.5) * math.sin(ang) + 0.5
        img = base[None, None] * (1 - t[..., None]) + other[None, None] * t[..., None]
    elif kind == 1:  # shelf: rows of blurred products between shelf edges
        img = np.empty((h, w, 3), np.float32)
        img[:] = base * 0.5
        y = -rng.uniform(0, h * 0.3)
        while y < h:
            row_h = rng.uniform(0.35, 0.6) * h
            x = -rng.uniform(0, 30)
            while x < w:
                pw = rng.uniform(0.08, 0.2) * w
                col = tuple(float(v) for v in rng.uniform(20, 240, 3))
                top = y + rng.uniform(0.05, 0.3) * row_h
                cv2.rectangle(img, _pt(x + 2, top), _pt(x + pw - 2, y + row_h), col, -1)
                x += pw
            edge = tuple(float(v) for v in rng.uniform(60, 200) * np.ones(3))
            cv2.rectangle(img, _pt(0, y + row_h), _pt(w, y + row_h + h * 0.05), edge, -1)
            for _ in range(int(rng.integers(1, 4))):  # price labels on the shelf edge
                px = rng.uniform(0, w)
                cv2.rectangle(
                    img, _pt(px, y + row_h + 2), _pt(px + w * 0.08, y + row_h + h * 0.045), (235, 235, 235), -1
                )
            y += row_h + h * 0.05
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(2.0, 5.0))
    elif kind == 2:  # clutter
        img = np.empty((h, w, 3), np.float32)
        img[:] = base
        for _ in range(int(rng.integers(10, 25))):
            col = tuple(float(v) for v in rng.uniform(0, 255, 3))
            c = _pt(rng.uniform(0, w), rng.uniform(0, h))
            r = rng.uniform(0.04, 0.25) * w
            if rng.random() < 0.5:
                cv2.ellipse(img, c, _pt(r, r * rng.uniform(0.3, 1)), rng.uniform(0, 180), 0, 360, col, -1)
            else:
                cv2.rectangle(img, _pt(c[0] - r, c[1] - r / 2), _pt(c[0] + r, c[1] + r / 2), col, -1)
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(1.5, 6.0))
    else:  # surface: low-frequency noise plus grain, like a counter top or cart floor
        low = rng.uniform(-1, 1, (6, 6)).astype(np.float32)
        low = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
        grain_freq = rng.uniform(0.05, 0.3)
        yy = np.arange(h, dtype=np.float32)[:, None]
        grain = np.sin(yy * grain_freq + low * 6.0) * 0.5
        t = (0.5 + 0.35 * low + 0.15 * grain)[..., None]
        img = base[None, None] * t + other[None, None] * (1 - t) * 0.5
    # Real stores are less saturated than random RGB; pull part way towards grey.
    grey = img.mean(axis=2, keepdims=True)
    mute = rng.uniform(0.2, 0.7)
    return np.ascontiguousarray(img * (1 - mute) + grey * mute, dtype=np.float32)


def _paste(img: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    """Copy ``patch`` into ``img`` at (x, y), clipped to the image."""
    h, w = img.shape[:2]
    ph, pw = patch.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + pw), min(h, y + ph)
    if x1 > x0 and y1 > y0:
        img[y0:y1, x0:x1] = patch[y0 - y : y1 - y, x0 - x : x1 - x]


def _occlude(img: np.ndarray, rng: np.random.Generator, box: tuple[float, float, float, float]) -> None:
    """Something in front of part of the product: a hand, a price tag or another item."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    kind = int(rng.integers(3))
    side = int(rng.integers(4))
    depth = rng.uniform(0.15, 0.4)
    # Start from the chosen edge and reach inward by `depth` of the product.
    if side == 0:
        ex, ey, dx, dy = rng.uniform(x0, x1), y0 - bh * 0.1, 0.0, 1.0
    elif side == 1:
        ex, ey, dx, dy = rng.uniform(x0, x1), y1 + bh * 0.1, 0.0, -1.0
    elif side == 2:
        ex, ey, dx, dy = x0 - bw * 0.1, rng.uniform(y0, y1), 1.0, 0.0
    else:
        ex, ey, dx, dy = x1 + bw * 0.1, rng.uniform(y0, y1), -1.0, 0.0
    reach = depth * (bh if dy else bw) + 0.1 * (bh if dy else bw)
    tx, ty = ex + dx * reach, ey + dy * reach
    if kind == 0:  # hand: round-capped thick lines read as fingers
        skin = tuple(
            float(v)
            for v in rng.choice(np.array([[140, 170, 220], [100, 140, 200], [60, 90, 140], [170, 195, 235]]), 1)[0]
        )
        fw = max(4, int(min(bw, bh) * 0.1))
        for k in range(4):
            off = (k - 1.5) * fw * 1.05
            ox, oy = -dy * off, dx * off
            ln = 1.0 - 0.15 * abs(k - 1.5)
            cv2.line(
                img,
                _pt(ex + ox, ey + oy),
                _pt(ex + ox + (tx - ex) * ln, ey + oy + (ty - ey) * ln),
                skin,
                fw,
                cv2.LINE_AA,
            )
        cv2.ellipse(img, _pt(ex, ey), _pt(fw * 2.6, fw * 2.6), 0, 0, 360, skin, -1, cv2.LINE_AA)
    elif kind == 1:  # price tag / shelf-edge label
        tw, th = bw * rng.uniform(0.4, 0.7), bh * rng.uniform(0.12, 0.22)
        cx, cy = (ex + tx) / 2, (ey + ty) / 2
        tag = np.full((max(2, int(th)), max(2, int(tw)), 3), 240, np.uint8)  # putText needs uint8
        cv2.rectangle(tag, (0, 0), (int(tw * 0.3), tag.shape[0]), (40, 200, 250), -1)
        price = f"{int(rng.integers(0, 9))}.{int(rng.integers(0, 99)):02d}"
        _text(tag, price, (tw * 0.32, 0, tw, th), (20, 20, 20), "duplex")
        _paste(img, tag, int(cx - tw / 2), int(cy - th / 2))
    else:  # another item in front
        col = tuple(float(v) for v in rng.uniform(20, 230, 3))
        half = max(bw, bh) * rng.uniform(0.15, 0.3)
        pts = np.array(
            [
                _pt(tx - dy * half, ty + dx * half),
                _pt(tx + dy * half, ty - dx * half),
                _pt(ex + dy * half * 2, ey - dx * half * 2),
                _pt(ex - dy * half * 2, ey + dx * half * 2),
            ]
        )
        cv2.fillPoly(img, [pts], col, cv2.LINE_AA)


def _place(
    template: np.ndarray,
    rng: np.random.Generator,
    w: int,
    h: int,
    fill: tuple[float, float],
    centre: tuple[float, float],
    jitter: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Homography from the flat template to a rotated, scaled, slightly tilted pose in a (w, h) frame."""
    th, tw = template.shape[:2]
    target = rng.uniform(*fill) * min(w, h)
    s = target / max(th, tw)
    a = math.radians(rng.uniform(-15, 15))
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], np.float32)
    src = np.array([[0, 0], [tw, 0], [tw, th], [0, th]], np.float32)
    dst = ((src - [tw / 2, th / 2]) * s) @ rot.T + np.array(centre, np.float32)
    # Independent corner offsets approximate the package being tilted away from the camera.
    dst = dst + rng.uniform(-jitter, jitter, (4, 2)).astype(np.float32) * target
    return cv2.getPerspectiveTransform(src, dst.astype(np.float32)), dst


def _composite(scene: np.ndarray, template: np.ndarray, m: np.ndarray, shadow: tuple[float, float, float]) -> None:
    """Warp the BGRA template into ``scene`` (float32, in place), with a soft contact shadow."""
    h, w = scene.shape[:2]
    warped = cv2.warpPerspective(template, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha = warped[..., 3].astype(np.float32) * (1.0 / 255.0)
    dx, dy, strength = shadow
    if strength > 0:
        shift = np.float32([[1, 0, dx], [0, 1, dy]])
        sh = cv2.warpAffine(alpha, shift, (w, h))
        sh = cv2.GaussianBlur(sh, (0, 0), 1.0 + abs(dx) * 0.8)
        scene *= (1.0 - strength * sh)[..., None]
    a3 = alpha[..., None]
    scene *= 1.0 - a3
    scene += warped[..., :3].astype(np.float32) * a3


def _photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera and lighting: white balance, exposure, light fall-off, gamma, blur, sensor noise, JPEG."""
    h, w = img.shape[:2]
    gains = rng.uniform(0.85, 1.15, 3).astype(np.float32) * np.float32(rng.uniform(0.7, 1.25))
    ang = rng.uniform(0, 2 * math.pi)
    amp = rng.uniform(0.0, 0.3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = 1.0 + amp * ((xx / w - 0.5) * math.cos(ang) + (yy / h - 0.5) * math.sin(ang))
    img = img * ramp[..., None] * gains[None, None]
    gamma = rng.uniform(0.75, 1.35)
    img = 255.0 * np.power(np.clip(img, 0, 255) * (1.0 / 255.0), gamma)
    blur_kind = rng.random()
    if blur_kind < 0.35:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.6))
    elif blur_kind < 0.5:  # motion blur from a moving cart or hand
        ln = int(rng.integers(3, 10))
        k = np.zeros((ln, ln), np.float32)
        k[ln // 2, :] = 1.0 / ln
        k = cv2.warpAffine(k, cv2.getRotationMatrix2D(((ln - 1) / 2, (ln - 1) / 2), rng.uniform(0, 180), 1.0), (ln, ln))
        img = cv2.filter2D(img, -1, k / max(k.sum(), 1e-6))
    img += rng.normal(0, rng.uniform(1.0, 5.0), img.shape).astype(np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:  # an earlier, harsher compression pass, as from a streaming camera
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(35, 80))])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return out


def render_product(sku: DemoSku, rng: np.random.Generator, size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """One photo-like BGR uint8 image of ``sku``; ``size`` is (width, height).

    Randomness is drawn in the same order for every SKU of a given template size,
    so two flavour siblings rendered with equally seeded generators differ only
    in the package itself.
    """
    w, h = size
    template = _template(sku)
    scene = _background(rng, w, h)
    centre = (w / 2 + rng.uniform(-0.12, 0.12) * w, h / 2 + rng.uniform(-0.12, 0.12) * h)
    m, quad = _place(template, rng, w, h, (0.55, 0.9), centre, 0.06)
    shadow = (rng.uniform(-8, 8), rng.uniform(2, 10), rng.uniform(0.0, 0.5))
    _composite(scene, template, m, shadow)
    occluded = rng.random() < 0.25
    if occluded:
        (x0, y0), (x1, y1) = quad.min(0), quad.max(0)
        _occlude(scene, rng, (float(x0), float(y0), float(x1), float(y1)))
    return _photometric(scene, rng)


# --------------------------------------------------------------------------- catalogue on disk


def _image_rng(seed: int, code: str, index: int) -> np.random.Generator:
    # Keyed by code, not position, so adding a SKU or changing scale leaves other images unchanged.
    return np.random.default_rng([seed, zlib.crc32(code.encode()), index])


def _write_images(root: Path, skus: list[DemoSku], seed: int, scale: float, nested: bool, csv_name: str) -> int:
    rows = []
    for sku in skus:
        rel_dir = Path(sku.group, sku.code) if nested else Path(sku.code)
        (root / rel_dir).mkdir(parents=True, exist_ok=True)
        for i in range(scaled_count(sku, scale)):
            rel = rel_dir / f"{i:03d}.jpg"
            img = render_product(sku, _image_rng(seed, sku.code, i))
            if not cv2.imwrite(str(root / rel), img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise OSError(f"could not write {root / rel}")
            rows.append((rel.as_posix(), sku.code, sku.group, sku.name))
    with open(root / csv_name, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("image", "sku", "group", "name"))
        writer.writerows(rows)
    return len(rows)


def _stamp(kind: str, seed: int, scale: float) -> dict:
    return {"kind": kind, "seed": seed, "scale": scale, "generator_version": GENERATOR_VERSION}


def _is_complete(target: Path, expected: dict) -> bool:
    try:
        found = json.loads((target / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(found, dict) or {k: found.get(k) for k in expected} != expected:
        return False
    # The stamp is written last, but files may have been deleted since; a count check is cheap.
    return sum(1 for _ in target.rglob("*.jpg")) == found.get("images")


def _materialise(target: Path, expected: dict, write: Callable[[Path], int]) -> None:
    """Build into a temp sibling and swap it in, so ``target`` is never half-written."""
    if _is_complete(target, expected):
        return
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / STAMP_NAME).exists())):
        raise UsageError(
            f"{target} exists and is not a demo catalogue; refusing to replace it",
            hint="pass an empty or new directory",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        n = write(tmp)
        (tmp / STAMP_NAME).write_text(json.dumps({**expected, "images": n}, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            # A directory cannot be renamed over a non-empty one: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def generate_demo_catalogue(out_dir: Path, seed: int = 0, unknown_dir: Path | None = None, scale: float = 1.0) -> Path:
    """Write the demo catalogue (``<Group>/<sku>/<nnn>.jpg`` + catalogue.csv) to ``out_dir``.

    ``unknown_dir`` receives the never-seen products as ``<sku>/<nnn>.jpg`` + unknown.csv;
    it must lie outside ``out_dir`` or its folders would be read as SKUs. ``scale``
    multiplies per-SKU image counts (at least MIN_PER_SKU each). A directory that
    already holds a complete catalogue for the same seed and scale is left alone.
    """
    if not scale > 0:
        raise UsageError(f"scale must be positive, got {scale}")
    out_dir = Path(out_dir)
    if unknown_dir is not None:
        unknown_dir = Path(unknown_dir)
        a, b = out_dir.resolve(), unknown_dir.resolve()
        if a == b or a in b.parents or b in a.parents:
            raise UsageError(
                f"unknown_dir {unknown_dir} must not overlap the catalogue {out_dir}", hint="use a sibling directory"
            )
    skus = demo_skus(seed)
    _materialise(
        out_dir,
        _stamp("catalogue", seed, scale),
        lambda root: _write_images(root, skus, seed, scale, True, CATALOGUE_CSV),
    )
    if unknown_dir is not None:
        unknown = demo_unknown_skus(seed)
        _materialise(
            unknown_dir,
            _stamp("unknown", seed, scale),
            lambda root: _write_images(root, unknown, seed, scale, False, UNKNOWN_CSV),
        )
    return out_dir


# --------------------------------------------------------------------------- demo video


def _video_frames(seed: int, n: int, fps: int, size: tuple[int, int]) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Frames plus the SKU codes visible in each: products sliding through or held up, and idle gaps."""
    w, h = size
    rng = np.random.default_rng([seed, 0xF11E])
    known, unknown = demo_skus(seed), demo_unknown_skus(seed)
    scene = _background(rng, w, h)
    events: list[tuple[int, int, DemoSku, np.ndarray, np.ndarray]] = []
    f = 0
    while f < n:
        r = rng.random()
        if r < 0.2:  # nothing happening: the detector must stay quiet here
            f += int(rng.uniform(0.6, 1.5) * fps)
            continue
        sku = unknown[int(rng.integers(len(unknown)))] if r < 0.35 else known[int(rng.integers(len(known)))]
        length = max(2, int(rng.uniform(1.5, 3.0) * fps))
        # Start and end centres: enter from one side and leave on the other, or (most often, as a shopper
        # does in front of a cart camera) be held still near the middle.
        if rng.random() < 0.3:
            y0, y1 = rng.uniform(0.35, 0.65, 2) * h
            xs = (-0.25 * w, 1.25 * w) if rng.random() < 0.5 else (1.25 * w, -0.25 * w)
            start, end = np.array([xs[0], y0]), np.array([xs[1], y1])
        else:
            start = np.array([rng.uniform(0.35, 0.65) * w, rng.uniform(0.4, 0.6) * h])
            end = start + rng.uniform(-0.05, 0.05, 2) * np.array([w, h])
        events.append((f, f + length, sku, start, end))
        f += length
    for i in range(n):
        frame = scene.copy()
        visible: list[str] = []
        for f0, f1, sku, start, end in events:
            if not f0 <= i < f1:
                continue
            t = (i - f0) / max(1, f1 - f0 - 1)
            centre = start + (end - start) * t
            # Reseed per event so the pose is smooth: only angle drifts with t.
            ev_rng = np.random.default_rng([seed, f0])
            template = _template(sku)
            m, quad = _place(template, ev_rng, w, h, (0.5, 0.7), (float(centre[0]), float(centre[1])), 0.03)
            rot = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), 12.0 * (t - 0.5), 1.0)
            m = np.vstack([rot, [0, 0, 1]]) @ m
            _composite(frame, template, m, (6.0, 8.0, 0.35))
            inside = (quad[:, 0].max() > 0) and (quad[:, 0].min() < w)
            if inside:
                visible.append(sku.code)
        frame *= np.float32(1.0 + 0.02 * math.sin(i * 0.9))  # mains flicker
        frame += rng.normal(0, 2.0, frame.shape).astype(np.float32)
        yield np.clip(frame, 0, 255).astype(np.uint8), visible


def _count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return -1
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def generate_demo_video(
    out_path: Path, seed: int = 0, seconds: float = 10.0, fps: int = 10, size: tuple[int, int] = (640, 480)
) -> Path:
    """Write the demo video and return the path actually written.

    Tries mp4v in ``.mp4`` first and falls back to MJPG in ``.avi`` when the
    OpenCV build cannot write or read back mp4v. ``size`` is (width, height).
    Per-frame ground truth (visible SKU codes) goes to ``<video>.labels.json``.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, round(seconds * fps))
    for fourcc, suffix in (("mp4v", ".mp4"), ("MJPG", ".avi")):
        final = out_path.with_suffix(suffix)
        tmp = final.with_name(f".{final.stem}.tmp{suffix}")  # the suffix picks the container
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), float(fps), size)
        if not writer.isOpened():
            writer.release()
            tmp.unlink(missing_ok=True)
            continue
        labels = []
        for i, (frame, visible) in enumerate(_video_frames(seed, n, fps, size)):
            writer.write(frame)
            labels.append({"frame": i, "skus": visible})
        writer.release()
        if _count_frames(tmp) != n:
            tmp.unlink(missing_ok=True)
            continue
        os.replace(tmp, final)
        meta = {
            "video": final.name,
            "codec": fourcc,
            "fps": fps,
            "frames": n,
            "size": list(size),
            "seed": seed,
            "unknown_codes": [s.code for s in demo_unknown_skus(seed)],
            "labels": labels,
        }
        final.with_suffix(".labels.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")
        return final
    raise OSError(f"no working video codec (tried mp4v/.mp4 and MJPG/.avi) for {out_path}")
