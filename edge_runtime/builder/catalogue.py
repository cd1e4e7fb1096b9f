"""Read a catalogue (folder tree or CSV), decode its images once, and split it for evaluation."""

from __future__ import annotations

import csv
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.errors import CatalogueError
from edge_runtime.preprocess import prepare, read_image
from edge_runtime.types import Catalogue, CatalogueItem, SkuInfo

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CSV_REQUIRED = ("image", "sku")


def _pretty(code: str) -> str:
    return code.replace("_", " ").replace("-", " ").strip().title() or code


def load_catalogue(path: Path) -> Catalogue:
    """A directory (``GROUP/SKU/*.jpg`` or ``SKU/*.jpg``) or a CSV ``image,sku[,group][,name]``."""
    path = Path(path)
    if path.is_dir():
        return _from_tree(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _from_csv(path)
    if not path.exists():
        raise CatalogueError(f"{path}: catalogue not found", hint="pass a folder of SKU folders or a CSV")
    raise CatalogueError(f"{path}: a catalogue is a folder of SKU folders or a .csv file")


def load_catalogues(paths: list[Path]) -> Catalogue:
    """Several catalogues as one (today's catalogue plus edge-review's delta, say): the SKUs of all of them, each
    SKU's images from every catalogue that has it. A SKU keeps the name of the first catalogue that lists it; the
    same code in two different groups is an error naming both, since it would be two products under one code."""
    parts = [load_catalogue(p) for p in paths]
    if len(parts) == 1:
        return parts[0]
    skus: dict[str, SkuInfo] = {}
    where: dict[str, str] = {}
    problems = []
    for part in parts:
        for sku in part.skus:
            first = skus.setdefault(sku.code, sku)
            where.setdefault(sku.code, part.source)
            if first.group != sku.group:
                problems.append(
                    f"{sku.code} is in group {first.group!r} in {where[sku.code]} and {sku.group!r} in {part.source}"
                )
    if problems:
        raise CatalogueError(
            f"the catalogues disagree on {len(problems)} SKU group(s): {'; '.join(problems[:5])}",
            hint="give the SKU the same group in every catalogue (the group is the parent folder or the CSV column)",
        )
    ordered = tuple(sorted(skus.values(), key=lambda s: (s.group, s.code)))
    items = tuple(item for part in parts for item in part.items)
    skipped = tuple(x for part in parts for x in part.skipped)
    return Catalogue(skus=ordered, items=items, skipped=skipped, source=" + ".join(p.source for p in parts))


def _from_tree(root: Path) -> Catalogue:
    by_leaf: dict[Path, list[Path]] = defaultdict(list)
    for file in sorted(root.rglob("*")):
        if (
            file.is_file()
            and file.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in file.relative_to(root).parts)
        ):
            by_leaf[file.parent].append(file)
    by_leaf.pop(root, None)  # loose images at the top carry no SKU
    if not by_leaf:
        raise CatalogueError(f"{root}: no SKU folders with images found", hint="lay it out as GROUP/SKU/image.jpg")
    codes = Counter(leaf.name for leaf in by_leaf)
    clashes = sorted(code for code, n in codes.items() if n > 1)
    if clashes:
        raise CatalogueError(f"{root}: SKU folder names must be unique, repeated: {', '.join(clashes)}")
    skus: list[SkuInfo] = []
    items: list[CatalogueItem] = []
    for leaf in sorted(by_leaf, key=lambda p: p.relative_to(root).as_posix()):
        group = leaf.parent.name if leaf.parent != root else ""
        skus.append(SkuInfo(code=leaf.name, name=_pretty(leaf.name), group=group))
        items.extend(CatalogueItem(image=f, sku=leaf.name) for f in by_leaf[leaf])
    return Catalogue(skus=tuple(skus), items=tuple(items), source=str(root))


def _from_csv(csv_path: Path) -> Catalogue:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in CSV_REQUIRED if c not in columns]
            if missing:
                raise CatalogueError(
                    f"{csv_path}: missing column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'})",
                    hint="the header must be image,sku[,group][,name]",
                )
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except UnicodeDecodeError as exc:
        raise CatalogueError(f"{csv_path}: not UTF-8 text ({exc})") from None
    except csv.Error as exc:
        raise CatalogueError(f"{csv_path}: malformed CSV ({exc})") from None
    sku_meta: dict[str, SkuInfo] = {}
    items = []
    problems = []
    for line, row in enumerate(rows, start=2):
        image, sku = row.get("image", ""), row.get("sku", "")
        if not image or not sku:
            problems.append(f"line {line}: empty image or sku")
            continue
        info = SkuInfo(code=sku, name=row.get("name") or _pretty(sku), group=row.get("group", ""))
        previous = sku_meta.setdefault(sku, info)
        if previous.group != info.group:
            problems.append(f"line {line}: sku {sku} is in group {info.group!r} here and {previous.group!r} before")
        items.append(CatalogueItem(image=(csv_path.parent / image), sku=sku))
    if problems:
        raise CatalogueError(f"{csv_path}: {len(problems)} bad row(s)", hint="; ".join(problems[:10]))
    if not items:
        raise CatalogueError(f"{csv_path}: no rows")
    skus = tuple(sorted(sku_meta.values(), key=lambda s: (s.group, s.code)))
    return Catalogue(skus=skus, items=tuple(items), source=str(csv_path))


@dataclass(frozen=True)
class DecodedCatalogue:
    """A catalogue with every readable image prepared once per input size, as uint8 NCHW."""

    catalogue: Catalogue
    labels: np.ndarray  # int32 [N], index into catalogue.skus
    pixels: dict[int, np.ndarray]  # input size -> uint8 [N, 3, S, S]

    def batch(self, size: int, index: np.ndarray) -> np.ndarray:
        """The images ``index`` at ``size`` as the backbone's float32 input, [len(index), 3, S, S]."""
        return self.pixels[size][index].astype(np.float32)


def decode_catalogue(catalogue: Catalogue, sizes: list[int], progress: bool = False) -> DecodedCatalogue:
    """Decode each image once; corrupt ones are listed and skipped, a SKU left empty is an error."""
    kept: list[CatalogueItem] = []
    skipped = list(catalogue.skipped)
    planes: dict[int, list[np.ndarray]] = {s: [] for s in sizes}
    total = len(catalogue.items)
    for i, item in enumerate(catalogue.items):
        image = read_image(str(item.image)) if item.image.is_file() else None
        if image is None:
            reason = "missing" if not item.image.is_file() else "unreadable or corrupt image"
            skipped.append((item.image, reason))
            log.warning("skipping %s: %s", item.image, reason)
            continue
        kept.append(item)
        for s in sizes:
            planes[s].append(prepare(image, s).astype(np.uint8))
        if progress and (i + 1) % 200 == 0:
            log.info("decoded %d/%d catalogue images", i + 1, total)
    present = {item.sku for item in kept}
    empty = [s.code for s in catalogue.skus if s.code not in present]
    if empty:
        raise CatalogueError(
            f"{catalogue.source}: {len(empty)} SKU(s) have no readable image: {', '.join(empty[:20])}",
            hint="add at least one readable image per SKU or remove the SKU",
        )
    result = Catalogue(skus=catalogue.skus, items=tuple(kept), skipped=tuple(skipped), source=catalogue.source)
    labels = np.asarray(result.labels(), dtype=np.int32)
    pixels = {s: np.stack(planes[s]) for s in sizes}
    return DecodedCatalogue(catalogue=result, labels=labels, pixels=pixels)


def stratified_sample(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Up to ``count`` indices spread evenly over classes (for INT8 calibration)."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < count and any(per_class):
        for bucket in per_class:
            if bucket and len(chosen) < count:
                chosen.append(bucket.pop())
    return np.sort(np.asarray(chosen, dtype=np.int64))
