"""The demo's products as data: designs.toml loaded into DemoSku records, checked, and given long-tail counts.

designs.toml holds one table per product with named fields (see its header). Loading checks every field, so a
mistake in the data fails at once with the entry, the field and the fix, not later inside OpenCV: required
fields, types, [B, G, R] colours, unique codes, and that every shape, motif, logo and font exists in
packages.py, logos.py and draw.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from importlib import resources
from typing import Any

import numpy as np

from edge_runtime.demo.draw import FONTS
from edge_runtime.demo.logos import LOGOS
from edge_runtime.demo.packages import MOTIFS, SHAPES
from edge_runtime.demo.sku import DemoSku
from edge_runtime.errors import InputError

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DESIGNS_FILE = "designs.toml"
SECTIONS = ("catalogue", "unknown")  # [[catalogue]] products are in the catalogue; [[unknown]] never are

MAX_IMAGES = 40  # head of the long tail at scale 1
MIN_IMAGES = 4  # tail end at scale 1
MIN_PER_SKU = 3  # floor after scaling: fewer cannot be split into train/val
UNKNOWN_IMAGES = 8

_CODE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_TEXT_FIELDS = ("code", "name", "group", "shape", "brand", "flavour", "logo", "motif", "font")
_COLOUR_FIELDS = ("body", "band", "accent", "ink")
_REQUIRED = ("code", "name", "group", "shape", "brand", "flavour", "body", "band", "accent", "ink", "logo")
_ALLOWED = tuple(f.name for f in dataclasses.fields(DemoSku) if f.name != "n_images")


class DesignError(InputError):
    """A product design in the demo's design data is malformed; the message names the entry and the field."""


def _choices(names: Any) -> str:
    return ", ".join(repr(n) for n in sorted(names))


def _check_entry(where: str, entry: Any) -> DemoSku:
    def fail(field: str, problem: str, fix: str) -> DesignError:
        return DesignError(f"{where}: {field}: {problem}", hint=fix)

    if not isinstance(entry, dict):
        raise fail("(entry)", f"expected a table of fields, got {type(entry).__name__}", "write it as [[section]]")
    for key in entry:
        if key not in _ALLOWED:
            raise fail(key, "unknown field", f"remove it, or use one of: {', '.join(_ALLOWED)}")
    for key in _REQUIRED:
        if key not in entry:
            raise fail(key, "missing", f"add {key} = ... (every design needs: {', '.join(_REQUIRED)})")
    for key in _TEXT_FIELDS:
        value = entry.get(key, "")
        if not isinstance(value, str):
            raise fail(key, f"expected text, got {value!r}", f'write {key} = "..."')
        if key != "motif" and key in entry and not value.strip():
            raise fail(key, "empty", f"give {key} a value")
    if not _CODE.match(entry["code"]):
        raise fail("code", f"{entry['code']!r} is not a SKU code", "use lower-case letters, digits and '-'")
    if "/" in entry["group"] or "\\" in entry["group"]:
        raise fail("group", f"{entry['group']!r} contains a path separator", "the group names a directory")
    for key in _COLOUR_FIELDS:
        value = entry[key]
        ok = isinstance(value, list) and len(value) == 3
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
        if not ok:
            raise fail(key, f"expected a colour [B, G, R], got {value!r}", f"write {key} = [B, G, R], integers 0-255")
    aspect = entry.get("aspect", DemoSku.aspect)
    if isinstance(aspect, bool) or not isinstance(aspect, (int, float)) or not math.isfinite(aspect) or aspect <= 0:
        raise fail("aspect", f"expected a positive number, got {aspect!r}", "write aspect = WIDTH / HEIGHT, e.g. 0.6")
    shape = entry["shape"]
    if shape not in SHAPES:
        raise fail("shape", f"unknown shape {shape!r}", f"use one of {_choices(SHAPES)} (packages.py)")
    motif, choices = entry.get("motif", ""), MOTIFS[shape]
    if motif not in choices:
        named = _choices(m for m in choices if m)
        problem = f"shape {shape!r} has no motif {motif!r}" if motif else f"shape {shape!r} needs a motif"
        if not named:
            fix = "leave it out"
        elif "" in choices:
            fix = f"use one of {named}, or leave it out"
        else:
            fix = f"use one of {named}"
        raise fail("motif", problem, fix)
    if entry["logo"] not in LOGOS:
        raise fail("logo", f"unknown logo {entry['logo']!r}", f"use one of {_choices(LOGOS)} (logos.py)")
    font = entry.get("font", DemoSku.font)
    if font not in FONTS:
        raise fail("font", f"unknown font {font!r}", f"use one of {_choices(FONTS)}")
    colours = {key: tuple(entry[key]) for key in _COLOUR_FIELDS}
    text = {key: entry[key] for key in _TEXT_FIELDS if key in entry}
    return DemoSku(**{**text, **colours, "aspect": float(aspect)})


def parse_designs(text: str, source: str = DESIGNS_FILE) -> dict[str, list[DemoSku]]:
    """Designs from TOML text: {section: [DemoSku, ...]} for "catalogue" and "unknown", in file order.

    ``n_images`` is 0 here (demo_skus assigns the long tail). Raises DesignError naming ``source``, the entry
    and the field, with the fix as its hint.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DesignError(f"{source}: TOML syntax error: {exc}", hint="fix the TOML at the position shown") from None
    for key in data:
        if key not in SECTIONS:
            raise DesignError(f"{source}: unknown section {key!r}", hint="use [[catalogue]] or [[unknown]] tables")
    designs: dict[str, list[DemoSku]] = {}
    seen: dict[str, str] = {}
    for section in SECTIONS:
        entries = data.get(section)
        if not isinstance(entries, list) or not entries:
            raise DesignError(f"{source}: no [[{section}]] designs", hint=f"add at least one [[{section}]] table")
        designs[section] = []
        for i, entry in enumerate(entries):
            code = entry.get("code") if isinstance(entry, dict) else None
            where = f"{source}: {section}[{i}]" + (f" ({code})" if isinstance(code, str) else "")
            sku = _check_entry(where, entry)
            if sku.code in seen:
                raise DesignError(
                    f"{where}: code: {sku.code!r} is already used by {seen[sku.code]}",
                    hint="give every SKU its own code",
                )
            seen[sku.code] = f"{section}[{i}]"
            designs[section].append(sku)
    return designs


@functools.lru_cache(maxsize=1)
def shipped_designs() -> dict[str, list[DemoSku]]:
    """The designs shipped with the package (designs.toml next to this module), parsed once."""
    text = resources.files("edge_runtime.demo").joinpath(DESIGNS_FILE).read_text(encoding="utf-8")
    return parse_designs(text, source=f"edge_runtime/demo/{DESIGNS_FILE}")


def long_tail_counts(n: int, head: int = MAX_IMAGES, tail: int = MIN_IMAGES) -> list[int]:
    """Zipf-like counts from ``head`` down to ``tail`` for ``n`` ranks (rank 1 first)."""
    if n == 1:
        return [head]
    # Exponent chosen so that rank n lands exactly on the tail count.
    s = math.log(head / tail) / math.log(n)
    return [max(tail, round(head * (r + 1) ** -s)) for r in range(n)]


def demo_skus(seed: int = 0) -> list[DemoSku]:
    """The demo catalogue's SKUs. The seed decides which SKUs sit in the long tail, not how they look."""
    designs = shipped_designs()["catalogue"]
    counts = long_tail_counts(len(designs))
    order = np.random.default_rng([seed, 0x7A11]).permutation(len(designs))
    return [dataclasses.replace(sku, n_images=counts[rank]) for sku, rank in zip(designs, order, strict=True)]


def demo_unknown_skus(seed: int = 0) -> list[DemoSku]:
    """Products never in the demo catalogue: some siblings of known families, some new shapes."""
    del seed  # same products for every seed; the seed only varies their images
    return [dataclasses.replace(sku, n_images=UNKNOWN_IMAGES) for sku in shipped_designs()["unknown"]]


def scaled_count(sku: DemoSku, scale: float) -> int:
    """Images written for ``sku`` at ``scale`` (never fewer than MIN_PER_SKU)."""
    return max(MIN_PER_SKU, round(sku.n_images * scale))
