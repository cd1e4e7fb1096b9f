"""Package templates: each shape draws a flat, front-facing package (BGR plus an alpha mask) from a design.

Shapes: carton, can, bottle, box (cereal), pasta (box with a window), bag, jar, tub, tube. ``SHAPES`` maps a
design's ``shape`` to its function, ``MOTIFS`` lists the ``motif`` values each shape understands (designs.py
checks the data against both), and ``package_template`` returns the cached BGRA template that scene.py warps
into a photo.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable

import cv2
import numpy as np

from edge_runtime.demo.draw import (
    cylinder_shade,
    ink_on,
    leaf,
    mix,
    pt,
    put_text,
    put_vertical_text,
    scatter_pasta,
    shade,
    star_points,
)
from edge_runtime.demo.logos import draw_logo
from edge_runtime.demo.sku import DemoSku

_TH = 360  # template height in pixels; large enough that text survives down-scaling

# Cereal pieces in the bowl of a box ("bowl:KIND") and pasta pieces in the window of a pasta box
# ("window:KIND"): the motif is what tells the siblings apart.
BOWL_PIECES: dict[str, tuple[int, int, int]] = {
    "oats": (120, 190, 225),
    "honey": (40, 160, 230),
    "choco": (40, 70, 110),
    "stars": (60, 200, 250),
}
PASTA_PIECES = {"spaghetti": 26, "penne": 14, "fusilli": 14}
JAR_STRENGTHS = range(6)  # "dots:N": N of the five roast-strength dots filled


def _canvas(sku: DemoSku, h: int = _TH) -> tuple[np.ndarray, np.ndarray, int, int]:
    """An empty BGR image and alpha mask ``h`` tall and as wide as the design's aspect: (img, alpha, w, h)."""
    w = int(h * sku.aspect)
    return np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.uint8), w, h


def _box_side(img: np.ndarray, alpha: np.ndarray, sku: DemoSku, x0: int, x1: int, y0: int, y1: int) -> None:
    """Darker side panel next to the front face; the warp turns it into a visible 3D side."""
    side = shade(sku.body, 0.72)
    cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), side, -1)
    cv2.rectangle(alpha, (x0, y0), (x1 - 1, y1 - 1), 255, -1)
    w = x1 - x0
    cv2.rectangle(img, (x0, int(y0 + (y1 - y0) * 0.55)), (x1 - 1, int(y0 + (y1 - y0) * 0.66)), shade(sku.band, 0.8), -1)
    cv2.rectangle(
        img, pt(x0 + w * 0.15, y0 + (y1 - y0) * 0.72), pt(x1 - w * 0.15, y1 - (y1 - y0) * 0.06), (225, 230, 232), -1
    )
    for k in range(6):  # nutrition-table rules
        yy = y0 + (y1 - y0) * (0.75 + k * 0.03)
        cv2.line(img, pt(x0 + w * 0.2, yy), pt(x1 - w * 0.2, yy), (120, 120, 120), 1)


def _carton(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    h = _TH
    w = int(h * sku.aspect)
    s = int(w * 0.3)
    img = np.zeros((h, w + s, 3), np.uint8)
    alpha = np.zeros((h, w + s), np.uint8)
    y_roof, y_body = int(h * 0.06), int(h * 0.22)
    cv2.rectangle(img, (0, 0), (w - 1, y_roof), shade(sku.body, 0.93), -1)
    cv2.rectangle(img, (0, y_roof), (w - 1, y_body), shade(sku.body, 0.86), -1)
    cv2.rectangle(img, (0, y_body), (w - 1, h - 1), sku.body, -1)
    cv2.rectangle(alpha, (0, 0), (w - 1, h - 1), 255, -1)
    gable = np.array([(w, y_body), (w + s - 1, y_body), (w + s // 2, y_roof)])
    cv2.fillPoly(img, [gable], shade(sku.body, 0.78), cv2.LINE_AA)
    cv2.fillPoly(alpha, [gable], 255, cv2.LINE_AA)
    _box_side(img, alpha, sku, w, w + s, y_body, h)
    # The cap carries the flavour colour, as on real milk cartons.
    cv2.ellipse(
        img,
        pt(w * 0.7, (y_roof + y_body) / 2),
        pt(w * 0.14, (y_body - y_roof) * 0.38),
        0,
        0,
        360,
        sku.band,
        -1,
        cv2.LINE_AA,
    )
    cv2.ellipse(
        img,
        pt(w * 0.7, (y_roof + y_body) / 2),
        pt(w * 0.14, (y_body - y_roof) * 0.38),
        0,
        0,
        360,
        shade(sku.band, 0.7),
        2,
        cv2.LINE_AA,
    )
    cv2.line(img, (0, y_body), (w - 1, y_body), shade(sku.body, 0.7), 2)
    # Brand block, logo, flavour band, accent stripes.
    cv2.rectangle(img, pt(0, y_body + h * 0.02), pt(w, y_body + h * 0.15), sku.accent, -1)
    put_text(
        img,
        sku.brand,
        (w * 0.06, y_body + h * 0.025, w * 0.94, y_body + h * 0.145),
        sku.ink if sku.ink != sku.accent else (255, 255, 255),
        sku.font,
        1.2,
    )
    draw_logo(img, sku.logo, (w * 0.5, h * 0.52), w * 0.3, sku.accent)
    if sku.motif == "lf":
        draw_logo(img, "lf", (w * 0.82, h * 0.43), w * 0.1, sku.band)
    cv2.rectangle(img, pt(0, h * 0.7), pt(w, h * 0.83), sku.band, -1)
    put_text(img, sku.flavour, (w * 0.05, h * 0.705, w * 0.95, h * 0.825), ink_on(sku.band), "duplex")
    for k in range(3):
        yy = h * (0.87 + k * 0.035)
        cv2.line(img, pt(0, yy), pt(w, yy), mix(sku.accent, sku.body, 0.3 * k), 3, cv2.LINE_AA)
    put_text(img, "1 L", (w * 0.6, h * 0.935, w * 0.95, h * 0.99), (60, 60, 60), "simplex")
    return img, alpha


def _can(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    img, alpha, w, h = _canvas(sku)
    ey = int(h * 0.045)
    top, bot = ey, h - ey - 1
    cv2.rectangle(img, (0, top), (w - 1, bot), sku.body, -1)
    cv2.ellipse(img, (w // 2, bot), (w // 2 - 1, ey), 0, 0, 180, sku.body, -1, cv2.LINE_AA)
    cv2.rectangle(alpha, (0, top), (w - 1, bot), 255, -1)
    cv2.ellipse(alpha, (w // 2, bot), (w // 2 - 1, ey), 0, 0, 180, 255, -1, cv2.LINE_AA)
    cv2.ellipse(alpha, (w // 2, top), (w // 2 - 1, ey), 0, 0, 360, 255, -1, cv2.LINE_AA)
    put_vertical_text(img, sku.brand, (w * 0.08, h * 0.12, w * 0.55, h * 0.66), sku.ink, sku.body, sku.font)
    draw_logo(img, sku.logo, (w * 0.77, h * 0.3), w * 0.18, sku.accent)
    cv2.rectangle(img, pt(0, h * 0.7), pt(w, h * 0.8), sku.band, -1)
    put_text(img, sku.flavour, (w * 0.08, h * 0.705, w * 0.92, h * 0.795), ink_on(sku.band), "duplex")
    cv2.line(img, pt(0, h * 0.84), pt(w, h * 0.84), sku.accent, 3, cv2.LINE_AA)
    put_text(img, "330ml", (w * 0.3, h * 0.86, w * 0.7, h * 0.92), sku.ink, "simplex")
    cylinder_shade(img, 0, w, 0.35)
    # Lid after shading: it faces the camera and stays bright.
    cv2.ellipse(img, (w // 2, top), (w // 2 - 1, ey), 0, 0, 360, (185, 188, 192), -1, cv2.LINE_AA)
    cv2.ellipse(img, (w // 2, top), (int(w * 0.4), int(ey * 0.7)), 0, 0, 360, (150, 152, 158), -1, cv2.LINE_AA)
    cv2.ellipse(img, (w // 2, top + 1), (int(w * 0.1), int(ey * 0.35)), 0, 0, 360, (205, 208, 210), -1, cv2.LINE_AA)
    return img, alpha


def _bottle(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    img, alpha, w, h = _canvas(sku)
    flip = sku.motif == "flip"
    cap_w = w * (0.62 if flip else 0.36)
    neck_w = w * (0.5 if flip else 0.3)
    y_cap, y_neck, y_sh = h * (0.1 if flip else 0.07), h * (0.14 if flip else 0.17), h * (0.2 if flip else 0.34)
    cx = w / 2
    outline = [pt(cx - neck_w / 2, y_cap), pt(cx + neck_w / 2, y_cap), pt(cx + neck_w / 2, y_neck)]
    for t in np.linspace(0, 1, 12):  # shoulder curve
        outline.append(
            pt(cx + neck_w / 2 + (w / 2 - 1 - neck_w / 2) * math.sin(t * math.pi / 2), y_neck + (y_sh - y_neck) * t)
        )
    outline += [pt(w - 1, h * 0.95), pt(w * 0.88, h - 1), pt(w * 0.12, h - 1), pt(0, h * 0.95)]
    for t in np.linspace(1, 0, 12):
        outline.append(
            pt(cx - neck_w / 2 - (w / 2 - 1 - neck_w / 2) * math.sin(t * math.pi / 2), y_neck + (y_sh - y_neck) * t)
        )
    outline.append(pt(cx - neck_w / 2, y_neck))
    poly = np.array(outline, np.int32)
    cv2.fillPoly(img, [poly], sku.body, cv2.LINE_AA)
    cv2.fillPoly(alpha, [poly], 255, cv2.LINE_AA)
    # Label wrap with brand, icon and flavour band.
    ly0, ly1 = h * (0.42 if not flip else 0.3), h * 0.86
    cv2.rectangle(img, pt(0, ly0), pt(w, ly1), sku.accent, -1)
    cv2.rectangle(img, pt(0, ly0), pt(w, ly0 + h * 0.015), sku.band, -1)
    put_text(
        img,
        sku.brand,
        (w * 0.08, ly0 + h * 0.03, w * 0.92, ly0 + h * 0.12),
        sku.band if not flip else sku.body,
        sku.font,
        1.2,
    )
    draw_logo(img, sku.logo, (cx, ly0 + (ly1 - ly0) * 0.5), w * 0.22, sku.band)
    cv2.rectangle(img, pt(0, ly1 - h * 0.11), pt(w, ly1 - h * 0.02), sku.band, -1)
    put_text(img, sku.flavour, (w * 0.06, ly1 - h * 0.105, w * 0.94, ly1 - h * 0.025), ink_on(sku.band), "duplex")
    cylinder_shade(img, 0, w, 0.45)
    cap = (int(cx - cap_w / 2), 0, int(cx + cap_w / 2), int(y_cap) + 2)
    cap_col = (245, 245, 245) if flip else sku.band
    cv2.rectangle(img, cap[:2], cap[2:], cap_col, -1)
    cv2.rectangle(alpha, cap[:2], cap[2:], 255, -1)
    for k in range(1, 8):  # grip ridges
        xx = cap[0] + (cap[2] - cap[0]) * k / 8
        cv2.line(img, pt(xx, 2), pt(xx, cap[3] - 2), shade(cap_col, 0.75), 1)
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
                pt(*c),
                pt(c[0] + math.cos(a0) * w, c[1] + math.sin(a0) * w),
                pt(c[0] + math.cos(a1) * w, c[1] + math.sin(a1) * w),
            ]
        )
        cv2.fillPoly(img, [tri], mix(sku.body, (255, 255, 255), 0.25), cv2.LINE_AA)
    cv2.rectangle(img, (0, 0), (w - 1, int(h * 0.2)), sku.accent, -1)
    put_text(img, sku.brand, (w * 0.05, h * 0.02, w * 0.95, h * 0.18), sku.ink, sku.font, 1.3)
    draw_logo(img, sku.logo, (w * 0.16, h * 0.3), w * 0.11, sku.band)
    # Slanted flavour banner: same place on every sibling, only colour and word change.
    band = np.array([pt(w * 0.3, h * 0.24), pt(w, h * 0.24), pt(w, h * 0.36), pt(w * 0.34, h * 0.36)])
    cv2.fillPoly(img, [band], sku.band, cv2.LINE_AA)
    put_text(img, sku.flavour, (w * 0.36, h * 0.245, w * 0.97, h * 0.355), ink_on(sku.band), "duplex")
    # Bowl of cereal.
    bx, by = w * 0.5, h * 0.72
    cv2.ellipse(img, pt(bx, by), pt(w * 0.4, h * 0.17), 0, 0, 180, (245, 245, 245), -1, cv2.LINE_AA)
    cv2.ellipse(img, pt(bx, by), pt(w * 0.4, h * 0.05), 0, 0, 360, (250, 250, 250), -1, cv2.LINE_AA)
    kind = sku.motif.split(":")[1]
    piece = BOWL_PIECES[kind]
    sub = np.random.default_rng(zlib.crc32(sku.motif.encode()))
    for _ in range(26):
        px, py = bx + sub.uniform(-0.33, 0.33) * w, by - h * 0.02 + sub.uniform(-0.05, 0.02) * h
        if kind == "stars":
            cv2.fillPoly(img, [star_points((px, py), w * 0.04)], piece, cv2.LINE_AA)
        else:
            cv2.circle(img, pt(px, py), int(w * 0.035), piece, -1, cv2.LINE_AA)
            cv2.circle(img, pt(px, py), int(w * 0.035), shade(piece, 0.7), 1, cv2.LINE_AA)
    cv2.ellipse(img, pt(bx, by), pt(w * 0.4, h * 0.17), 0, 0, 180, (200, 200, 205), 2, cv2.LINE_AA)
    cv2.rectangle(img, pt(0, h * 0.93), pt(w, h), sku.accent, -1)
    put_text(img, "500g", (w * 0.62, h * 0.935, w * 0.95, h * 0.995), sku.ink, "simplex")
    return img, alpha


def _pasta_box(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    img, alpha, w, h = _boxed(sku, 0.16)
    for k, col in enumerate(((40, 140, 40), (245, 245, 245), (40, 40, 200))):  # tricolore stripe
        cv2.rectangle(img, pt(w * k / 3, 0), pt(w * (k + 1) / 3, h * 0.03), col, -1)
    put_text(img, sku.brand, (w * 0.08, h * 0.05, w * 0.92, h * 0.2), sku.ink, sku.font, 1.4)
    wx0, wy0, wx1, wy1 = w * 0.14, h * 0.25, w * 0.86, h * 0.64
    cv2.rectangle(img, pt(wx0, wy0), pt(wx1, wy1), (170, 225, 245), -1)
    sub = np.random.default_rng(zlib.crc32(sku.motif.encode()))
    kind = sku.motif.split(":")[1]
    scatter_pasta(img, kind, (wx0, wy0, wx1, wy1), sub, PASTA_PIECES[kind])
    cv2.rectangle(img, pt(wx0, wy0), pt(wx1, wy1), (245, 245, 245), 4)
    cv2.rectangle(img, pt(0, h * 0.7), pt(w, h * 0.8), sku.band, -1)
    put_text(img, sku.flavour, (w * 0.05, h * 0.705, w * 0.95, h * 0.795), ink_on(sku.band), "duplex")
    draw_logo(img, sku.logo, (w * 0.2, h * 0.88), w * 0.12, sku.accent)
    put_text(img, "500g", (w * 0.55, h * 0.85, w * 0.92, h * 0.92), (255, 255, 255), "simplex")
    return img, alpha


def _bag(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    img, alpha, w, h = _canvas(sku)
    crimp = h * 0.07
    teeth = 14
    top = [pt(w * k / (2 * teeth), (k % 2) * h * 0.012) for k in range(2 * teeth + 1)]
    bottom = [pt(w * k / (2 * teeth), h - 1 - (k % 2) * h * 0.012) for k in range(2 * teeth, -1, -1)]
    ts = np.linspace(0, 1, 16)
    right = [pt(w - 1 - w * 0.04 * (1 - math.sin(t * math.pi)), crimp + (h - 2 * crimp) * t) for t in ts]
    left = [pt(w * 0.04 * (1 - math.sin(t * math.pi)), h - crimp - (h - 2 * crimp) * t) for t in ts]
    poly = np.array(top + right + bottom + left, np.int32)
    cv2.fillPoly(img, [poly], sku.body, cv2.LINE_AA)
    cv2.fillPoly(alpha, [poly], 255, cv2.LINE_AA)
    for k in range(1, 2 * teeth):  # heat-seal ridges
        x_ridge = w * k / (2 * teeth)
        cv2.line(img, pt(x_ridge, 2), pt(x_ridge, crimp - 2), shade(sku.body, 0.82), 1)
        cv2.line(img, pt(x_ridge, h - crimp + 2), pt(x_ridge, h - 3), shade(sku.body, 0.82), 1)
    cv2.ellipse(img, pt(w * 0.5, h * 0.24), pt(w * 0.44, h * 0.12), -6, 0, 360, sku.accent, -1, cv2.LINE_AA)
    cv2.ellipse(img, pt(w * 0.5, h * 0.24), pt(w * 0.44, h * 0.12), -6, 0, 360, (255, 255, 255), 3, cv2.LINE_AA)
    put_text(img, sku.brand, (w * 0.14, h * 0.17, w * 0.86, h * 0.31), sku.ink, sku.font, 1.3)
    band = np.array([pt(0, h * 0.44), pt(w, h * 0.4), pt(w, h * 0.53), pt(0, h * 0.57)])
    cv2.fillPoly(img, [band], sku.band, cv2.LINE_AA)
    put_text(img, sku.flavour, (w * 0.06, h * 0.445, w * 0.94, h * 0.525), ink_on(sku.band), "duplex")
    draw_logo(img, sku.logo, (w * 0.78, h * 0.68), w * 0.12, sku.accent)
    sub = np.random.default_rng(7)  # same chips on every flavour: they are not what differs
    for _ in range(6):
        px, py = w * sub.uniform(0.15, 0.6), h * sub.uniform(0.65, 0.85)
        ang = sub.uniform(0, 180)
        cv2.ellipse(img, pt(px, py), pt(w * 0.11, w * 0.07), ang, 0, 360, (110, 215, 250), -1, cv2.LINE_AA)
        cv2.ellipse(img, pt(px, py), pt(w * 0.11, w * 0.07), ang, 0, 360, (40, 150, 210), 2, cv2.LINE_AA)
    # Pillow shading: brighter in the middle, darker at the crimped ends.
    yy = (np.arange(h, dtype=np.float32) + 0.5) / h
    xx = (np.arange(w, dtype=np.float32) + 0.5) / w
    prof = (0.72 + 0.28 * np.sin(np.pi * yy))[:, None] * (0.85 + 0.15 * np.sin(np.pi * xx))[None, :]
    prof += 0.25 * np.exp(-(((xx[None, :] - 0.32) / 0.07) ** 2)) * np.sin(np.pi * yy)[:, None]
    img[:] = np.clip(img.astype(np.float32) * prof[..., None] + 40 * (prof[..., None] > 1.0), 0, 255).astype(np.uint8)
    return img, alpha


def _jar(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    img, alpha, w, h = _canvas(sku)
    glass = (25, 40, 60)  # coffee granules seen through the glass
    cv2.rectangle(img, pt(w * 0.12, h * 0.13), pt(w * 0.88, h * 0.2), shade(glass, 0.8), -1)
    cv2.rectangle(alpha, pt(w * 0.12, h * 0.13), pt(w * 0.88, h * 0.2), 255, -1)
    body = (pt(0, h * 0.19), pt(w - 1, h - 1))
    cv2.rectangle(img, body[0], body[1], glass, -1)
    cv2.rectangle(alpha, body[0], body[1], 255, -1)
    cv2.rectangle(img, pt(0, h * 0.33), pt(w, h * 0.88), sku.body, -1)
    cv2.rectangle(img, pt(0, h * 0.345), pt(w, h * 0.355), sku.accent, -1)
    cv2.rectangle(img, pt(0, h * 0.855), pt(w, h * 0.865), sku.accent, -1)
    draw_logo(img, sku.logo, (w * 0.5, h * 0.43), w * 0.1, sku.accent)
    put_text(img, sku.brand, (w * 0.06, h * 0.48, w * 0.94, h * 0.58), sku.ink, sku.font, 1.1)
    cv2.rectangle(img, pt(0, h * 0.62), pt(w, h * 0.72), sku.band, -1)
    put_text(img, sku.flavour, (w * 0.08, h * 0.625, w * 0.92, h * 0.715), ink_on(sku.band), "duplex")
    strength = int(sku.motif.split(":")[1])
    for k in range(5):  # roast-strength scale: a small mark that separates the siblings
        c = pt(w * (0.3 + k * 0.1), h * 0.79)
        cv2.circle(img, c, int(w * 0.035), sku.accent, -1 if k < strength else 2, cv2.LINE_AA)
    cylinder_shade(img, 0, w, 0.3)
    cv2.rectangle(img, (0, 0), pt(w - 1, h * 0.14), sku.accent, -1)
    cv2.rectangle(alpha, (0, 0), pt(w - 1, h * 0.14), 255, -1)
    for k in range(1, 24):
        xx = w * k / 24
        cv2.line(img, pt(xx, 3), pt(xx, h * 0.14 - 3), shade(sku.accent, 0.75), 1)
    return img, alpha


def _tub(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    img, alpha, w, h = _canvas(sku, int(_TH * 0.8))
    y_lid = h * 0.13
    body = np.array([pt(0, y_lid), pt(w - 1, y_lid), pt(w * 0.87, h * 0.96), pt(w * 0.13, h * 0.96)])
    cv2.fillPoly(img, [body], sku.body, cv2.LINE_AA)
    cv2.fillPoly(alpha, [body], 255, cv2.LINE_AA)
    cv2.ellipse(img, pt(w / 2, h * 0.96), pt(w * 0.37, h * 0.035), 0, 0, 180, sku.body, -1, cv2.LINE_AA)
    cv2.ellipse(alpha, pt(w / 2, h * 0.96), pt(w * 0.37, h * 0.035), 0, 0, 180, 255, -1, cv2.LINE_AA)
    # The lid ellipse will cover the body down to y_lid + 0.11h, so the brand starts below it.
    put_text(img, sku.brand, (w * 0.16, y_lid + h * 0.12, w * 0.84, y_lid + h * 0.25), sku.ink, sku.font, 1.2)
    leaf(img, (w * 0.16, y_lid + h * 0.185), w * 0.05, -40, sku.accent)
    draw_logo(img, sku.logo, (w * 0.5, h * 0.555), w * 0.14, sku.accent)
    band = np.array([pt(w * 0.07, h * 0.7), pt(w * 0.93, h * 0.7), pt(w * 0.91, h * 0.82), pt(w * 0.09, h * 0.82)])
    cv2.fillPoly(img, [band], sku.band, cv2.LINE_AA)
    put_text(img, sku.flavour, (w * 0.14, h * 0.705, w * 0.86, h * 0.815), ink_on(sku.band), "duplex")
    put_text(img, "4 x 125g", (w * 0.3, h * 0.85, w * 0.7, h * 0.92), (90, 90, 90), "simplex")
    cylinder_shade(img, 0, w, 0.2)
    # Foil lid in the flavour colour: the first thing a shopper sees from above.
    cv2.ellipse(img, pt(w / 2, y_lid), pt(w / 2 - 1, h * 0.11), 0, 0, 360, sku.band, -1, cv2.LINE_AA)
    cv2.ellipse(alpha, pt(w / 2, y_lid), pt(w / 2 - 1, h * 0.11), 0, 0, 360, 255, -1, cv2.LINE_AA)
    cv2.ellipse(img, pt(w / 2, y_lid), pt(w / 2 - 1, h * 0.11), 0, 0, 360, shade(sku.band, 0.75), 3, cv2.LINE_AA)
    cv2.ellipse(
        img,
        pt(w * 0.35, y_lid - h * 0.03),
        pt(w * 0.15, h * 0.03),
        -8,
        0,
        360,
        mix(sku.band, (255, 255, 255), 0.5),
        -1,
        cv2.LINE_AA,
    )
    return img, alpha


def _tube(sku: DemoSku) -> tuple[np.ndarray, np.ndarray]:
    img, alpha, w, h = _canvas(sku, int(_TH * 0.45))
    x_seal, x_sh, x_cap = w * 0.07, w * 0.8, w * 0.86
    poly = np.array(
        [
            pt(0, 0),
            pt(x_seal, 0),
            pt(x_sh, h * 0.12),
            pt(x_cap, h * 0.3),
            pt(x_cap, h * 0.7),
            pt(x_sh, h * 0.88),
            pt(x_seal, h - 1),
            pt(0, h - 1),
        ]
    )
    cv2.fillPoly(img, [poly], sku.body, cv2.LINE_AA)
    cv2.fillPoly(alpha, [poly], 255, cv2.LINE_AA)
    for k in range(1, 8):
        xx = x_seal * k / 8
        cv2.line(img, pt(xx, 2), pt(xx, h - 3), shade(sku.body, 0.8), 1)
    stripe = np.array([pt(x_seal, h * 0.62), pt(x_sh, h * 0.5), pt(x_sh, h * 0.7), pt(x_seal, h * 0.86)])
    cv2.fillPoly(img, [stripe], sku.band, cv2.LINE_AA)
    put_text(img, sku.brand, (w * 0.12, h * 0.12, w * 0.55, h * 0.5), sku.ink, sku.font, 1.4)
    put_text(img, sku.flavour, (w * 0.55, h * 0.2, w * 0.78, h * 0.42), sku.band, "duplex")
    draw_logo(img, sku.logo, (w * 0.66, h * 0.72), h * 0.12, sku.accent)
    yy = (np.arange(h, dtype=np.float32) + 0.5) / h
    prof = 0.6 + 0.4 * np.sqrt(np.sin(np.pi * yy)) + 0.3 * np.exp(-(((yy - 0.3) / 0.06) ** 2))
    img[:] = np.clip(img.astype(np.float32) * prof[:, None, None], 0, 255).astype(np.uint8)
    cv2.rectangle(img, pt(x_cap, h * 0.25), pt(w - 1, h * 0.75), (235, 235, 235), -1)
    cv2.rectangle(alpha, pt(x_cap, h * 0.25), pt(w - 1, h * 0.75), 255, -1)
    for k in range(1, 10):
        xx = x_cap + (w - x_cap) * k / 10
        cv2.line(img, pt(xx, h * 0.27), pt(xx, h * 0.73), (190, 190, 190), 1)
    return img, alpha


SHAPES: dict[str, Callable[[DemoSku], tuple[np.ndarray, np.ndarray]]] = {
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


# What each shape reads from DemoSku.motif; every other value is refused by designs.py.
MOTIFS: dict[str, tuple[str, ...]] = {
    "carton": ("", "lf"),  # lf: a lactose-free roundel beside the logo
    "can": ("",),
    "bottle": ("", "flip"),  # flip: a wide flip-top cap, label higher (toiletries)
    "box": tuple(f"bowl:{kind}" for kind in BOWL_PIECES),
    "pasta": tuple(f"window:{kind}" for kind in PASTA_PIECES),
    "bag": ("", "chips"),  # the chips are drawn on every bag; "chips" just says so
    "jar": tuple(f"dots:{n}" for n in JAR_STRENGTHS),
    "tub": ("",),
    "tube": ("",),
}


@functools.lru_cache(maxsize=64)
def package_template(sku: DemoSku) -> np.ndarray:
    """The clean package as BGRA; drawn once per SKU because drawing costs more than warping."""
    bgr, alpha = SHAPES[sku.shape](sku)
    out = np.dstack([bgr, alpha])
    out.setflags(write=False)
    return out
