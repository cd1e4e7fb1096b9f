"""Scenes: a package template placed in a photo-like image.

Backgrounds (shelf, clutter, gradient, surface), a perspective pose with a contact shadow, occlusion (a hand,
a price tag, another item) and camera effects (white balance, exposure, light fall-off, gamma, blur, noise,
JPEG). ``render_product`` is one catalogue photo; video.py reuses the pieces for moving products.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge_runtime.demo.draw import pt, put_text
from edge_runtime.demo.packages import package_template
from edge_runtime.demo.sku import DemoSku

IMAGE_SIZE = (320, 320)  # (width, height), OpenCV order like every size here


def background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
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
                cv2.rectangle(img, pt(x + 2, top), pt(x + pw - 2, y + row_h), col, -1)
                x += pw
            edge = tuple(float(v) for v in rng.uniform(60, 200) * np.ones(3))
            cv2.rectangle(img, pt(0, y + row_h), pt(w, y + row_h + h * 0.05), edge, -1)
            for _ in range(int(rng.integers(1, 4))):  # price labels on the shelf edge
                px = rng.uniform(0, w)
                cv2.rectangle(img, pt(px, y + row_h + 2), pt(px + w * 0.08, y + row_h + h * 0.045), (235, 235, 235), -1)
            y += row_h + h * 0.05
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(2.0, 5.0))
    elif kind == 2:  # clutter
        img = np.empty((h, w, 3), np.float32)
        img[:] = base
        for _ in range(int(rng.integers(10, 25))):
            col = tuple(float(v) for v in rng.uniform(0, 255, 3))
            c = pt(rng.uniform(0, w), rng.uniform(0, h))
            r = rng.uniform(0.04, 0.25) * w
            if rng.random() < 0.5:
                cv2.ellipse(img, c, pt(r, r * rng.uniform(0.3, 1)), rng.uniform(0, 180), 0, 360, col, -1)
            else:
                cv2.rectangle(img, pt(c[0] - r, c[1] - r / 2), pt(c[0] + r, c[1] + r / 2), col, -1)
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(1.5, 6.0))
    else:  # surface: low-frequency noise plus grain, like a counter top or cart floor
        coarse = rng.uniform(-1, 1, (6, 6)).astype(np.float32)
        low = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
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
                pt(ex + ox, ey + oy),
                pt(ex + ox + (tx - ex) * ln, ey + oy + (ty - ey) * ln),
                skin,
                fw,
                cv2.LINE_AA,
            )
        cv2.ellipse(img, pt(ex, ey), pt(fw * 2.6, fw * 2.6), 0, 0, 360, skin, -1, cv2.LINE_AA)
    elif kind == 1:  # price tag / shelf-edge label
        tw, th = bw * rng.uniform(0.4, 0.7), bh * rng.uniform(0.12, 0.22)
        cx, cy = (ex + tx) / 2, (ey + ty) / 2
        tag = np.full((max(2, int(th)), max(2, int(tw)), 3), 240, np.uint8)  # putText needs uint8
        cv2.rectangle(tag, (0, 0), (int(tw * 0.3), tag.shape[0]), (40, 200, 250), -1)
        price = f"{int(rng.integers(0, 9))}.{int(rng.integers(0, 99)):02d}"
        put_text(tag, price, (tw * 0.32, 0, tw, th), (20, 20, 20), "duplex")
        _paste(img, tag, int(cx - tw / 2), int(cy - th / 2))
    else:  # another item in front
        col = tuple(float(v) for v in rng.uniform(20, 230, 3))
        half = max(bw, bh) * rng.uniform(0.15, 0.3)
        pts = np.array(
            [
                pt(tx - dy * half, ty + dx * half),
                pt(tx + dy * half, ty - dx * half),
                pt(ex + dy * half * 2, ey - dx * half * 2),
                pt(ex - dy * half * 2, ey + dx * half * 2),
            ]
        )
        cv2.fillPoly(img, [pts], col, cv2.LINE_AA)


def place(
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


def composite(scene: np.ndarray, template: np.ndarray, m: np.ndarray, shadow: tuple[float, float, float]) -> None:
    """Warp the BGRA template into ``scene`` (float32, in place), with a soft contact shadow."""
    h, w = scene.shape[:2]
    warped = cv2.warpPerspective(template, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha = warped[..., 3].astype(np.float32) * (1.0 / 255.0)
    dx, dy, strength = shadow
    if strength > 0:
        shift = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
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
        line = np.zeros((ln, ln), np.float32)
        line[ln // 2, :] = 1.0 / ln
        rotation = cv2.getRotationMatrix2D(((ln - 1) / 2, (ln - 1) / 2), rng.uniform(0, 180), 1.0)
        k = cv2.warpAffine(line, rotation, (ln, ln))
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
    template = package_template(sku)
    scene = background(rng, w, h)
    centre = (w / 2 + rng.uniform(-0.12, 0.12) * w, h / 2 + rng.uniform(-0.12, 0.12) * h)
    m, quad = place(template, rng, w, h, (0.55, 0.9), centre, 0.06)
    shadow = (rng.uniform(-8, 8), rng.uniform(2, 10), rng.uniform(0.0, 0.5))
    composite(scene, template, m, shadow)
    occluded = rng.random() < 0.25
    if occluded:
        (x0, y0), (x1, y1) = quad.min(0), quad.max(0)
        _occlude(scene, rng, (float(x0), float(y0), float(x1), float(y1)))
    return _photometric(scene, rng)
