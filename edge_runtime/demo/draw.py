"""Drawing primitives for the demo packages: points, colours, fitted text, stars, leaves, pasta, cylinder shading.

Everything draws with OpenCV into uint8 BGR images in place. Sizes are floats until the last moment; ``pt``
rounds a point one way everywhere, whether its coordinates are Python floats or numpy scalars.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge_runtime.demo.sku import BGR

FONTS = {
    "simplex": cv2.FONT_HERSHEY_SIMPLEX,
    "duplex": cv2.FONT_HERSHEY_DUPLEX,
    "complex": cv2.FONT_HERSHEY_COMPLEX,
    "triplex": cv2.FONT_HERSHEY_TRIPLEX,
    "script": cv2.FONT_HERSHEY_SCRIPT_COMPLEX,
}


def pt(x: float, y: float) -> tuple[int, int]:
    """An OpenCV pixel point from float coordinates."""
    # floor(v + 0.5) rather than round(): inputs are often numpy scalars, and this always gives int.
    return math.floor(x + 0.5), math.floor(y + 0.5)


def shade(c: BGR, f: float) -> BGR:
    """``c`` darkened (f < 1) or brightened (f > 1), clipped to 0-255."""
    return tuple(int(min(255, max(0, v * f))) for v in c)  # type: ignore[return-value]


def mix(a: BGR, b: BGR, t: float) -> BGR:
    """``a`` blended towards ``b`` by ``t`` (0 = a, 1 = b)."""
    return tuple(round(x * (1 - t) + y * t) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def ink_on(bg: BGR) -> BGR:
    """Black or white text, whichever reads on ``bg``."""
    b, g, r = bg
    return (25, 25, 25) if 0.114 * b + 0.587 * g + 0.299 * r > 150 else (255, 255, 255)


def put_text(
    img: np.ndarray,
    text: str,
    box: tuple[float, float, float, float],
    color: BGR,
    font: str = "duplex",
    weight: float = 1.0,
) -> None:
    """Draw ``text`` as large as fits inside ``box`` (x0, y0, x1, y1), centred."""
    x0, y0, x1, y1 = box
    face = FONTS[font]
    (tw, th), base = cv2.getTextSize(text, face, 1.0, 2)
    scale = min((x1 - x0) * 0.94 / tw, (y1 - y0) * 0.86 / (th + base))
    thick = max(1, round(scale * 2.2 * weight))
    (tw, th), base = cv2.getTextSize(text, face, scale, thick)
    org = pt((x0 + x1 - tw) / 2, (y0 + y1 + th) / 2 - base / 3)
    cv2.putText(img, text, org, face, scale, color, thick, cv2.LINE_AA)


def put_vertical_text(
    img: np.ndarray, text: str, box: tuple[float, float, float, float], color: BGR, bg: BGR, font: str
) -> None:
    """Text running bottom-to-top, as printed along cans; putText cannot rotate, so rotate a patch."""
    x0, y0, x1, y1 = (math.floor(v + 0.5) for v in box)
    patch = np.empty((x1 - x0, y1 - y0, 3), np.uint8)
    patch[:] = bg
    put_text(patch, text, (0, 0, y1 - y0, x1 - x0), color, font, weight=1.3)
    img[y0:y1, x0:x1] = cv2.rotate(patch, cv2.ROTATE_90_COUNTERCLOCKWISE)


def star_points(c: tuple[float, float], r: float, points: int = 5, inner: float = 0.45) -> np.ndarray:
    """Vertices of a star centred on ``c`` (outer radius ``r``, inner ``r * inner``), for cv2.fillPoly."""
    ang = np.arange(points * 2) * math.pi / points - math.pi / 2
    rad = np.where(np.arange(points * 2) % 2 == 0, r, r * inner)
    return np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], 1).round().astype(np.int32)


def leaf(img: np.ndarray, c: tuple[float, float], r: float, angle: float, col: BGR) -> None:
    """A leaf (an ellipse with a midrib) centred on ``c``, ``r`` long, pointing along ``angle`` degrees."""
    cv2.ellipse(img, pt(*c), pt(r, r * 0.42), angle, 0, 360, col, -1, cv2.LINE_AA)
    dx, dy = math.cos(math.radians(angle)) * r * 0.9, math.sin(math.radians(angle)) * r * 0.9
    cv2.line(img, pt(c[0] - dx, c[1] - dy), pt(c[0] + dx, c[1] + dy), shade(col, 0.6), max(1, int(r / 10)), cv2.LINE_AA)


def scatter_pasta(
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
            cv2.line(img, pt(cx - dx, y0 + h * 0.5 - dy), pt(cx + dx, y0 + h * 0.5 + dy), dark, 3, cv2.LINE_AA)
            cv2.line(img, pt(cx - dx, y0 + h * 0.5 - dy), pt(cx + dx, y0 + h * 0.5 + dy), col, 1, cv2.LINE_AA)
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
                cv2.line(img, pt(px - qx, py - qy), pt(px + qx, py + qy), dark, 1, cv2.LINE_AA)
        else:  # fusilli: a short sine twist
            ang = rng.uniform(0, math.pi)
            t = np.linspace(-1, 1, 24)
            ln, amp = w * 0.1, w * 0.03
            xs = t * ln
            ys = np.sin(t * 3 * math.pi) * amp
            curve_x = cx + xs * math.cos(ang) - ys * math.sin(ang)
            curve_y = cy + xs * math.sin(ang) + ys * math.cos(ang)
            pts = np.stack([curve_x, curve_y], 1).round().astype(np.int32)
            cv2.polylines(img, [pts], False, dark, 5, cv2.LINE_AA)
            cv2.polylines(img, [pts], False, col, 3, cv2.LINE_AA)


def cylinder_shade(img: np.ndarray, x0: int, x1: int, gloss: float) -> None:
    """Darken towards the sides and add a highlight, so flat art reads as a round can or bottle."""
    w = x1 - x0
    t = (np.arange(w, dtype=np.float32) + 0.5) / w
    prof = 0.55 + 0.45 * np.sqrt(np.clip(np.sin(np.pi * t), 0, 1))
    hi = gloss * np.exp(-(((t - 0.3) / 0.06) ** 2))
    seg = img[:, x0:x1].astype(np.float32)
    seg = seg * prof[None, :, None] + 255.0 * hi[None, :, None]
    img[:, x0:x1] = np.clip(seg, 0, 255).astype(np.uint8)
