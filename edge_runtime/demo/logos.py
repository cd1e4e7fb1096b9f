"""Logos: the small flavour and brand icons on the packages, one drawing function per kind.

``LOGOS`` maps a design's ``logo`` name to its function; ``draw_logo`` draws one centred on ``c`` with radius
``r``. Icons draw in their own fruit colours; only the brand marks (bolt, star, bubbles, drop, lf, mountain)
take the design's accent colour.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import cv2
import numpy as np

from edge_runtime.demo.draw import leaf, pt, put_text, scatter_pasta, shade, star_points
from edge_runtime.demo.sku import BGR

LogoFn = Callable[[np.ndarray, float, float, float, BGR], None]

_AA = cv2.LINE_AA


def _mountain(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    cv2.fillPoly(
        img,
        [np.array([pt(x - r, y + r * 0.6), pt(x - r * 0.25, y - r * 0.8), pt(x + r * 0.5, y + r * 0.6)])],
        accent,
        _AA,
    )
    cv2.fillPoly(
        img,
        [np.array([pt(x - r * 0.1, y + r * 0.6), pt(x + r * 0.45, y - r * 0.3), pt(x + r, y + r * 0.6)])],
        shade(accent, 0.7),
        _AA,
    )
    cv2.fillPoly(
        img,
        [np.array([pt(x - r * 0.48, y - r * 0.38), pt(x - r * 0.25, y - r * 0.8), pt(x - r * 0.02, y - r * 0.38)])],
        (255, 255, 255),
        _AA,
    )


def _orange(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    cv2.circle(img, pt(x, y), int(r * 0.8), (0, 140, 250), -1, _AA)
    cv2.circle(img, pt(x - r * 0.25, y - r * 0.25), int(r * 0.18), (90, 200, 255), -1, _AA)
    leaf(img, (x + r * 0.35, y - r * 0.8), r * 0.35, -30, (40, 150, 40))


def _apple(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    cv2.circle(img, pt(x - r * 0.3, y + r * 0.1), int(r * 0.62), (40, 190, 110), -1, _AA)
    cv2.circle(img, pt(x + r * 0.3, y + r * 0.1), int(r * 0.62), (40, 190, 110), -1, _AA)
    cv2.line(img, pt(x, y - r * 0.4), pt(x + r * 0.1, y - r * 0.9), (30, 60, 90), max(2, int(r / 8)), _AA)
    leaf(img, (x + r * 0.4, y - r * 0.75), r * 0.3, -20, (30, 130, 30))


def _multifruit(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    cv2.circle(img, pt(x - r * 0.45, y + r * 0.25), int(r * 0.48), (0, 140, 250), -1, _AA)
    cv2.circle(img, pt(x + r * 0.45, y + r * 0.25), int(r * 0.48), (40, 190, 110), -1, _AA)
    cv2.circle(img, pt(x, y - r * 0.35), int(r * 0.48), (50, 40, 210), -1, _AA)


def _strawberry(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    pts = np.array([pt(x - r * 0.75, y - r * 0.35), pt(x + r * 0.75, y - r * 0.35), pt(x, y + r * 0.95)])
    cv2.fillPoly(img, [pts], (50, 40, 215), _AA)
    cv2.ellipse(img, pt(x, y - r * 0.35), pt(r * 0.75, r * 0.45), 0, 180, 360, (50, 40, 215), -1, _AA)
    for dx, dy in ((-0.35, -0.1), (0.3, -0.05), (0, 0.3), (-0.1, 0.6), (0.2, 0.3), (-0.4, -0.45)):
        cv2.circle(img, pt(x + dx * r, y + dy * r), max(1, int(r * 0.06)), (120, 220, 250), -1, _AA)
    _star_pts = star_points((x, y - r * 0.75), r * 0.45, 5, 0.4)
    cv2.fillPoly(img, [_star_pts], (40, 150, 40), _AA)


def _raspberry(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    for i in range(4):
        for j in range(4 - i // 2):
            px = x + (j - (3 - i // 2) / 2) * r * 0.38
            py = y - r * 0.45 + i * r * 0.33
            cv2.circle(img, pt(px, py), int(r * 0.22), (90, 30, 170), -1, _AA)
            cv2.circle(img, pt(px - r * 0.05, py - r * 0.05), max(1, int(r * 0.06)), (170, 120, 230), -1, _AA)
    leaf(img, (x - r * 0.3, y - r * 0.8), r * 0.35, -160, (40, 150, 40))
    leaf(img, (x + r * 0.3, y - r * 0.8), r * 0.35, -20, (40, 150, 40))


def _peach(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    cv2.circle(img, pt(x, y + r * 0.1), int(r * 0.8), (90, 160, 250), -1, _AA)
    cv2.ellipse(
        img,
        pt(x + r * 0.15, y + r * 0.1),
        pt(r * 0.25, r * 0.7),
        0,
        -80,
        80,
        (60, 110, 230),
        max(2, int(r / 10)),
        _AA,
    )
    leaf(img, (x + r * 0.3, y - r * 0.75), r * 0.4, -25, (40, 150, 40))


def _vanilla(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    for k in range(5):
        a = math.radians(k * 72 - 90)
        cv2.ellipse(
            img,
            pt(x + math.cos(a) * r * 0.45, y + math.sin(a) * r * 0.45),
            pt(r * 0.45, r * 0.24),
            k * 72 - 90,
            0,
            360,
            (200, 240, 250),
            -1,
            _AA,
        )
    cv2.circle(img, pt(x, y), int(r * 0.22), (0, 190, 240), -1, _AA)


def _cherry(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    cv2.line(img, pt(x - r * 0.45, y + r * 0.3), pt(x + r * 0.1, y - r * 0.8), (40, 110, 40), 3, _AA)
    cv2.line(img, pt(x + r * 0.45, y + r * 0.35), pt(x + r * 0.1, y - r * 0.8), (40, 110, 40), 3, _AA)
    cv2.circle(img, pt(x - r * 0.45, y + r * 0.4), int(r * 0.42), (40, 20, 150), -1, _AA)
    cv2.circle(img, pt(x + r * 0.45, y + r * 0.45), int(r * 0.42), (40, 20, 150), -1, _AA)


def _lime(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    cv2.circle(img, pt(x, y), int(r * 0.85), (40, 170, 90), -1, _AA)
    cv2.circle(img, pt(x, y), int(r * 0.68), (120, 235, 190), -1, _AA)
    for k in range(8):
        a = math.radians(k * 45)
        cv2.line(img, pt(x, y), pt(x + math.cos(a) * r * 0.68, y + math.sin(a) * r * 0.68), (40, 170, 90), 2, _AA)


def _bolt(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    pts = np.array(
        [
            pt(x + r * 0.2, y - r),
            pt(x - r * 0.55, y + r * 0.15),
            pt(x - r * 0.05, y + r * 0.15),
            pt(x - r * 0.25, y + r),
            pt(x + r * 0.55, y - r * 0.2),
            pt(x + r * 0.05, y - r * 0.2),
        ]
    )
    cv2.fillPoly(img, [pts], accent, _AA)


def _star(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    cv2.fillPoly(img, [star_points((x, y), r)], accent, _AA)


def _wheat(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    cv2.line(img, pt(x, y + r), pt(x, y - r * 0.9), (30, 110, 170), max(2, int(r / 9)), _AA)
    for k in range(4):
        yy = y - r * 0.7 + k * r * 0.38
        leaf(img, (x - r * 0.22, yy), r * 0.28, -60, (60, 170, 220))
        leaf(img, (x + r * 0.22, yy), r * 0.28, -120, (60, 170, 220))


def _honey(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    hexagon = np.array(
        [
            pt(x + math.cos(math.radians(60 * k)) * r * 0.8, y + math.sin(math.radians(60 * k)) * r * 0.8)
            for k in range(6)
        ]
    )
    cv2.fillPoly(img, [hexagon], (0, 170, 240), _AA)
    cv2.polylines(img, [hexagon], True, (0, 100, 170), max(2, int(r / 8)), _AA)
    cv2.ellipse(img, pt(x, y), pt(r * 0.3, r * 0.2), 0, 0, 360, (20, 40, 60), -1, _AA)


def _choco(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    s = r * 0.55
    for i in (-1, 0):
        for j in (-1, 0):
            p0 = pt(x + j * s + 2, y + i * s + 2)
            cv2.rectangle(img, p0, pt(x + (j + 1) * s - 2, y + (i + 1) * s - 2), (30, 60, 100), -1, _AA)
    cv2.rectangle(img, pt(x - s, y - s), pt(x + s, y + s), (20, 40, 70), max(2, int(r / 10)), _AA)


def _bubbles(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    for dx, dy, rr in ((-0.3, 0.3, 0.35), (0.35, 0.0, 0.25), (-0.05, -0.45, 0.2), (0.4, -0.6, 0.12)):
        cv2.circle(img, pt(x + dx * r, y + dy * r), int(rr * r), accent, max(2, int(r / 12)), _AA)


def _salt(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    cv2.ellipse(img, pt(x, y + r * 0.2), pt(r * 0.9, r * 0.5), 0, 0, 360, (255, 255, 255), -1, _AA)
    for k in range(3):
        yy = y + r * (0.05 + 0.17 * k)
        cv2.line(img, pt(x - r * 0.6, yy), pt(x + r * 0.6, yy), (190, 110, 30), 2, _AA)
    for dx in (-0.4, 0.0, 0.4):
        cv2.rectangle(img, pt(x + dx * r - 3, y - r * 0.7), pt(x + dx * r + 3, y - r * 0.55), (255, 255, 255), -1)


def _onion(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    cv2.circle(img, pt(x, y + r * 0.15), int(r * 0.75), (140, 60, 150), -1, _AA)
    cv2.circle(img, pt(x, y + r * 0.15), int(r * 0.5), (200, 150, 210), 2, _AA)
    cv2.circle(img, pt(x, y + r * 0.15), int(r * 0.28), (200, 150, 210), 2, _AA)
    leaf(img, (x, y - r * 0.75), r * 0.35, -90, (50, 150, 40))


def _chili(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    cv2.ellipse(img, pt(x, y - r * 0.1), pt(r * 0.85, r * 0.8), 0, 20, 160, (30, 30, 210), max(3, int(r / 3.5)), _AA)
    cv2.line(img, pt(x - r * 0.78, y + r * 0.05), pt(x - r * 0.95, y - r * 0.35), (40, 140, 40), 3, _AA)


def _leaf(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    leaf(img, (x - r * 0.2, y + r * 0.1), r * 0.7, -50, (60, 170, 60))
    leaf(img, (x + r * 0.35, y - r * 0.1), r * 0.5, -120, (40, 130, 40))


def _bean(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    cv2.ellipse(img, pt(x, y), pt(r * 0.6, r * 0.85), 25, 0, 360, (30, 60, 110), -1, _AA)
    cv2.ellipse(img, pt(x, y), pt(r * 0.2, r * 0.7), 25, -90, 90, (20, 30, 50), max(2, int(r / 8)), _AA)


def _drop(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    cv2.circle(img, pt(x, y + r * 0.3), int(r * 0.6), accent, -1, _AA)
    cv2.fillPoly(
        img, [np.array([pt(x - r * 0.55, y + r * 0.1), pt(x, y - r), pt(x + r * 0.55, y + r * 0.1)])], accent, _AA
    )


def _pasta_logo(kind: str) -> LogoFn:
    def draw(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
        sub = np.random.default_rng(zlib.crc32(kind.encode()))
        cv2.circle(img, pt(x, y), int(r), (240, 245, 250), -1, _AA)
        scatter_pasta(img, kind, (x - r * 0.8, y - r * 0.8, x + r * 0.8, y + r * 0.8), sub, 5)

    return draw


def _lf(img: np.ndarray, x: float, y: float, r: float, accent: BGR) -> None:
    cv2.circle(img, pt(x, y), int(r), accent, -1, _AA)
    put_text(img, "LF", (x - r * 0.7, y - r * 0.5, x + r * 0.7, y + r * 0.5), (255, 255, 255), "duplex")


LOGOS: dict[str, LogoFn] = {
    "mountain": _mountain,
    "orange": _orange,
    "apple": _apple,
    "multifruit": _multifruit,
    "strawberry": _strawberry,
    "raspberry": _raspberry,
    "peach": _peach,
    "vanilla": _vanilla,
    "cherry": _cherry,
    "lime": _lime,
    "bolt": _bolt,
    "star": _star,
    "wheat": _wheat,
    "honey": _honey,
    "choco": _choco,
    "bubbles": _bubbles,
    "salt": _salt,
    "onion": _onion,
    "chili": _chili,
    "leaf": _leaf,
    "bean": _bean,
    "drop": _drop,
    "spaghetti": _pasta_logo("spaghetti"),
    "penne": _pasta_logo("penne"),
    "fusilli": _pasta_logo("fusilli"),
    "lf": _lf,
}


def draw_logo(img: np.ndarray, kind: str, c: tuple[float, float], r: float, accent: BGR) -> None:
    """Small flavour or brand icon centred on ``c`` with radius ``r`` (an unknown kind draws nothing)."""
    draw = LOGOS.get(kind)
    if draw is not None:
        draw(img, c[0], c[1], r, accent)
