"""How well edge-review groups look-alike unknowns: groups per new product and group purity, at several thresholds.

    python benchmarks/review_grouping.py [--bundle DIR] [--thresholds 0.7,0.75,0.8,0.85,0.9] [--seed 0]

A bundle is built on ``KNOWN`` grocery SKUs (frozen default backbone, fp32, input 224; or ``--bundle``). Every
train and val photo of the ``NEW`` SKUs, none of them in the bundle, arrives in a random order as a device would
publish it (a JPEG crop capped at 256 px, the profile's default), is embedded by the collector's own ``Embedder``
and goes through ``ReviewStore.add_event``, which groups it, exactly as ``edge-review serve`` does. Per threshold:

- *groups per new product*: over the groups of two or more, how many hold that product's photos (as the group's
  majority); 1 is ideal (one label action per product);
- *purity*: the share of each group's members from its majority product, weighted by group size;
- *grouped*: the share of photos in a group of two or more (the rest is reviewed one by one);
- *label actions*: groups plus single photos, what a reviewer clicks to label every photo (vs. one per photo);
- *unticks*: grouped photos not of their group's majority product, which a reviewer unticks before labelling.

The new SKUs include look-alike families (apples, juices, milks): a threshold that merges siblings shows as
lower purity, one that splits a product as more groups per product.
"""

from __future__ import annotations

import argparse
import base64
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from _common import GROCERY, REPO, machine_line

from edge_runtime.cli import build_main
from edge_runtime.review.grouping import Embedder
from edge_runtime.review.intake import IncomingEvent
from edge_runtime.review.schema import open_engine
from edge_runtime.review.store import ReviewStore
from edge_runtime.run.messages import encode_crop

KNOWN = [
    "Fruit/Banana", "Fruit/Kiwi", "Fruit/Lemon", "Fruit/Orange", "Fruit/Apple/Granny-Smith",
    "Vegetables/Carrots", "Vegetables/Cucumber", "Vegetables/Potato/Solid-Potato", "Vegetables/Tomato/Regular-Tomato",
    "Packages/Juice/Bravo-Apple-Juice", "Packages/Milk/Arla-Standard-Milk", "Packages/Yoghurt/Arla-Natural-Yoghurt",
]  # fmt: skip
NEW = [
    "Fruit/Pineapple", "Fruit/Apple/Pink-Lady", "Fruit/Apple/Royal-Gala", "Fruit/Melon/Watermelon", "Fruit/Avocado",
    "Vegetables/Aubergine", "Vegetables/Pepper/Red-Bell-Pepper", "Vegetables/Pepper/Yellow-Bell-Pepper",
    "Packages/Juice/Tropicana-Apple-Juice", "Packages/Juice/God-Morgon-Orange-Juice",
    "Packages/Milk/Arla-Ecological-Medium-Fat-Milk", "Packages/Oat-Milk/Oatly-Oat-Milk",
]  # fmt: skip
PROFILE = f"""extends = "{REPO / "device_profiles" / "dev-cpu.toml"}"
[device]
name = "review-grouping"
[backend]
precisions = ["fp32"]
input_sizes = [224]
table_precisions = ["fp32"]
[train]
enabled = false
"""


def build_bundle(work: Path) -> Path:
    catalogue = work / "catalogue"
    for rel in KNOWN:
        src = GROCERY / "train" / rel
        dst = catalogue / Path(rel).parent.name / Path(rel).name
        dst.mkdir(parents=True)
        for f in sorted(src.glob("*.jpg")):
            shutil.copyfile(f, dst / f.name)
    (work / "profile.toml").write_text(PROFILE)
    args = ["--profile", str(work / "profile.toml"), "--catalogue", str(catalogue), "--out", str(work / "out")]
    if build_main([*args, "--runs", "3", "-q"]) != 0:
        sys.exit("building the benchmark bundle failed")
    return work / "out" / "bundle"


def evaluate(labels: list[str], groups: list[int | None]) -> dict[str, float]:
    members: dict[int, list[str]] = {}
    for label, g in zip(labels, groups, strict=True):
        if g is not None:
            members.setdefault(g, []).append(label)
    multi = {g: m for g, m in members.items() if len(m) >= 2}
    grouped = sum(len(m) for m in multi.values())
    majority = {g: Counter(m).most_common(1)[0] for g, m in multi.items()}
    purity = sum(n for _, n in majority.values()) / grouped if grouped else float("nan")
    per_product = Counter(label for label, _ in majority.values())
    products = sorted(set(labels))
    singles = len(labels) - grouped
    return {
        "groups": len(multi),
        "groups_per_product": float(np.mean([per_product.get(p, 0) for p in products])),
        "products_without_group": sum(1 for p in products if per_product.get(p, 0) == 0),
        "purity": purity,
        "grouped": grouped / len(labels),
        "actions": len(multi) + singles,
        "unticks": grouped - sum(n for _, n in majority.values()),  # crops a reviewer takes out of their group
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--thresholds", default="0.7,0.75,0.8,0.85,0.9")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not GROCERY.is_dir():
        sys.exit(f"needs the grocery data at {GROCERY}")
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        bundle = args.bundle or build_bundle(work)
        print(f"bundle {bundle} ready in {time.perf_counter() - t0:.0f} s ({len(KNOWN)} known SKUs)")
        photos = [
            (rel, f) for rel in NEW for split in ("train", "val") for f in sorted((GROCERY / split / rel).glob("*.jpg"))
        ]
        random.Random(args.seed).shuffle(photos)
        embedder = Embedder(bundle)
        t0 = time.perf_counter()
        crops, vectors = [], []
        for _, path in photos:
            image = cv2.imread(str(path))
            crop = encode_crop(image, 256, 85)  # what edge-run publishes for a whole-frame region
            jpeg = base64.b64decode(crop["data"])
            crops.append(jpeg)
            vec = embedder.embed(jpeg)
            assert vec is not None
            vectors.append(vec)
        per_photo_ms = (time.perf_counter() - t0) * 1000 / len(photos)
        embedder.close()
        print(f"{len(photos)} photos of {len(NEW)} new SKUs embedded, {per_photo_ms:.1f} ms per crop (decode + embed)")
        labels = [Path(rel).name for rel, _ in photos]
        print(f"{'threshold':>9} {'groups':>6} {'groups/product':>14} {'no group':>8} {'purity':>7} {'grouped':>8} "
              f"{'label actions':>13} {'unticks':>7}")  # fmt: skip
        for threshold in [float(x) for x in args.thresholds.split(",")]:
            store = ReviewStore(open_engine(f"sqlite:///{work / f'g{threshold}.db'}"), work / "data",
                                group_threshold=threshold)  # fmt: skip
            t0 = time.perf_counter()
            for i, (jpeg, vec) in enumerate(zip(crops, vectors, strict=True)):
                event = IncomingEvent(
                    id=f"e{i}", kind="unknown", device_id="bench", frame_id=i, source_ref="", ts="",
                    device_time=float(i), box=[0, 0, 1, 1], sku=None, score=None, ood_score=1.0, nearest=[],
                    jpeg=jpeg,
                )  # fmt: skip
                store.add_event(event, vec)
            store_ms = (time.perf_counter() - t0) * 1000 / len(photos)
            groups = [e.group_id for e in sorted(store.events(f"e{i}" for i in range(len(photos))),
                                                 key=lambda e: int(e.id[1:]))]  # fmt: skip
            m = evaluate(labels, groups)
            print(
                f"{threshold:>9.2f} {m['groups']:>6d} {m['groups_per_product']:>14.2f} "
                f"{m['products_without_group']:>8d} {m['purity']:>7.3f} {m['grouped']:>8.1%} "
                f"{m['actions']:>6d} of {len(photos)} {m['unticks']:>7d}   "
                f"(store + group {store_ms:.1f} ms per event)"
            )  # fmt: skip
            store.engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
