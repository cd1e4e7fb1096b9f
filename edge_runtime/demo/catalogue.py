"""The demo catalogue on disk: ``<Group>/<sku>/<nnn>.jpg`` + catalogue.csv, and the unknowns beside it.

Everything is deterministic for a seed: each image has its own Generator seeded from (seed, SKU code, image
index), so an image does not depend on how many images were drawn before it, on ``scale``, or on the SKU
order. A directory is built into a temporary sibling and swapped in, and a stamp records what it holds, so a
complete catalogue for the same seed and scale is reused and a half-written one never is.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.demo.designs import demo_skus, demo_unknown_skus, scaled_count
from edge_runtime.demo.scene import render_product
from edge_runtime.demo.sku import DemoSku
from edge_runtime.errors import UsageError

# Bump whenever drawing or the schedule changes, so stale catalogues are rebuilt.
GENERATOR_VERSION = 1
STAMP_NAME = ".demo-stamp"
CATALOGUE_CSV = "catalogue.csv"
UNKNOWN_CSV = "unknown.csv"
JPEG_QUALITY = 90


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
