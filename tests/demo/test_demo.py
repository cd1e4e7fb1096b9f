"""The synthetic demo catalogue and video: determinism, layout, long tail, siblings, unknowns."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.demo import (
    CATALOGUE_CSV,
    IMAGE_SIZE,
    MIN_PER_SKU,
    STAMP_NAME,
    UNKNOWN_CSV,
    demo_skus,
    demo_unknown_skus,
    generate_demo_catalogue,
    generate_demo_video,
    render_product,
    scaled_count,
)
from edge_runtime.errors import UsageError

SCALE = 0.25  # small enough to keep the whole file well under 20 s
SMALL = 0.1  # every SKU at the MIN_PER_SKU floor
SAMPLE = [
    Path("Milk/milk-alpine-whole/000.jpg"),
    Path("Pasta/pasta-nonna-penne/002.jpg"),
    Path("Soda/soda-fizz-zero/001.jpg"),
    Path("Coffee/coffee-roast-decaf/000.jpg"),
]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _images_by_leaf(root: Path) -> dict[Path, list[Path]]:
    leaves: dict[Path, list[Path]] = defaultdict(list)
    for p in root.rglob("*.jpg"):
        leaves[p.parent.relative_to(root)].append(p)
    return leaves


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("demo")
    cat, unknown = root / "catalogue", root / "unknown"
    assert generate_demo_catalogue(cat, seed=0, unknown_dir=unknown, scale=SCALE) == cat
    return cat, unknown


@pytest.fixture(scope="module")
def small_seed0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_catalogue(tmp_path_factory.mktemp("small") / "cat", seed=0, scale=SMALL)


def test_same_seed_gives_identical_bytes(built: tuple[Path, Path], small_seed0: Path) -> None:
    # Images are keyed by (seed, code, index), so a smaller scale reproduces the first images exactly.
    cat, _ = built
    for rel in SAMPLE:
        assert _sha(cat / rel) == _sha(small_seed0 / rel), rel


def test_render_product_is_deterministic() -> None:
    sku = demo_skus()[0]
    a = render_product(sku, np.random.default_rng(5))
    b = render_product(sku, np.random.default_rng(5))
    c = render_product(sku, np.random.default_rng(6))
    assert a.dtype == np.uint8 and a.shape == (IMAGE_SIZE[1], IMAGE_SIZE[0], 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_different_seed_replaces_catalogue_with_different_images(small_seed0: Path, tmp_path: Path) -> None:
    target = tmp_path / "cat"
    shutil.copytree(small_seed0, target)
    generate_demo_catalogue(target, seed=1, scale=SMALL)
    for rel in SAMPLE:
        assert _sha(target / rel) != _sha(small_seed0 / rel), rel
    stamp = json.loads((target / STAMP_NAME).read_text())
    assert stamp["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["cat"]  # no temp or old trees left behind


def test_layout_and_csv_match(built: tuple[Path, Path]) -> None:
    cat, _ = built
    leaves = _images_by_leaf(cat)
    assert all(len(rel.parts) == 2 for rel in leaves), "images must sit at <Group>/<sku>/"
    assert all(len(files) >= MIN_PER_SKU for files in leaves.values())
    on_disk = {p.relative_to(cat).as_posix() for files in leaves.values() for p in files}
    rows = _csv_rows(cat / CATALOGUE_CSV)
    assert list(rows[0]) == ["image", "sku", "group", "name"]
    assert {r["image"] for r in rows} == on_disk and len(rows) == len(on_disk)
    for r in rows:
        group, sku, _ = r["image"].split("/")
        assert (r["group"], r["sku"]) == (group, sku) and r["name"]
    skus = demo_skus(0)
    assert {Path(s.group, s.code) for s in skus} == set(leaves)
    for s in skus:
        assert len(leaves[Path(s.group, s.code)]) == scaled_count(s, SCALE)
    assert len({s.group for s in skus}) >= 6
    assert len({s.code for s in skus}) == len(skus)


def test_long_tail() -> None:
    counts = [s.n_images for s in demo_skus(0)]
    assert max(counts) / min(counts) >= 4
    assert max(counts) >= 30 and min(counts) >= 4
    # The seed moves SKUs along the tail but keeps its shape.
    assert sorted(counts) == sorted(s.n_images for s in demo_skus(1))
    assert [s.n_images for s in demo_skus(1)] != counts


def test_long_tail_order_survives_scaling(built: tuple[Path, Path]) -> None:
    cat, _ = built
    leaves = _images_by_leaf(cat)
    pairs = sorted((s.n_images, len(leaves[Path(s.group, s.code)])) for s in demo_skus(0))
    on_disk = [n for _, n in pairs]
    assert on_disk == sorted(on_disk)
    assert on_disk[-1] > on_disk[0]


def test_near_duplicate_siblings_are_similar_but_distinct() -> None:
    families: dict[tuple, list] = defaultdict(list)
    for s in demo_skus(0):
        families[(s.group, s.shape, s.brand, s.body)].append(s)
    big = [f for f in families.values() if len(f) >= 3]
    assert big, "need at least one group with three look-alike flavour variants"
    for fam in big:
        # Same generator seed -> same background, pose and lighting; only the package differs.
        base = render_product(fam[0], np.random.default_rng(3)).astype(np.int16)
        for other in fam[1:]:
            img = render_product(other, np.random.default_rng(3)).astype(np.int16)
            changed = float((np.abs(base - img).max(axis=2) > 40).mean())
            assert 0.005 < changed < 0.25, (fam[0].code, other.code, changed)


def test_all_jpegs_decode_to_intended_size(built: tuple[Path, Path]) -> None:
    files = [p for root in built for p in root.rglob("*.jpg")]
    assert files
    for p in files:
        img = cv2.imread(str(p))
        assert img is not None and img.shape == (IMAGE_SIZE[1], IMAGE_SIZE[0], 3), p


def test_unknown_products_are_outside_the_catalogue(built: tuple[Path, Path]) -> None:
    cat, unknown = built
    known = {s.code for s in demo_skus(0)}
    leaves = _images_by_leaf(unknown)
    codes = {rel.as_posix() for rel in leaves}
    assert all(len(rel.parts) == 1 for rel in leaves)
    assert len(codes) >= 5 and not codes & known
    assert codes == {s.code for s in demo_unknown_skus(0)}
    assert all(len(files) >= MIN_PER_SKU for files in leaves.values())
    assert {r["sku"] for r in _csv_rows(unknown / UNKNOWN_CSV)} == codes
    assert not any(p.name in codes for p in cat.rglob("*") if p.is_dir())
    # Both kinds of unknown exist: siblings of known families and entirely new groups.
    groups = {s.group for s in demo_skus(0)}
    unknown_groups = [s.group for s in demo_unknown_skus(0)]
    assert any(g in groups for g in unknown_groups) and any(g not in groups for g in unknown_groups)


def test_complete_catalogue_is_not_regenerated(built: tuple[Path, Path]) -> None:
    cat, unknown = built
    before = {p: p.stat().st_mtime_ns for p in (cat / STAMP_NAME, cat / SAMPLE[0], unknown / STAMP_NAME)}
    t0 = time.perf_counter()
    generate_demo_catalogue(cat, seed=0, unknown_dir=unknown, scale=SCALE)
    assert time.perf_counter() - t0 < 1.0
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_refuses_to_clobber_or_nest(tmp_path: Path) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(UsageError):
        generate_demo_catalogue(foreign, scale=SMALL)
    assert (foreign / "holiday.jpg").read_bytes() == b"not ours"
    with pytest.raises(UsageError):
        generate_demo_catalogue(tmp_path / "cat", unknown_dir=tmp_path / "cat" / "unknown", scale=SMALL)
    with pytest.raises(UsageError):
        generate_demo_catalogue(tmp_path / "cat2", scale=0)


def test_video_reads_back_with_expected_frame_count(tmp_path: Path) -> None:
    seconds, fps = 2.0, 10
    path = generate_demo_video(tmp_path / "demo.mp4", seed=0, seconds=seconds, fps=fps)
    assert path.exists() and path.suffix in (".mp4", ".avi")
    cap = cv2.VideoCapture(str(path))
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (480, 640, 3)
        frames += 1
    cap.release()
    assert abs(frames - seconds * fps) <= 1
    meta = json.loads(path.with_suffix(".labels.json").read_text())
    assert len(meta["labels"]) == seconds * fps


def test_video_falls_back_to_mjpg_avi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_runtime.demo import video as demo

    real = demo._count_frames
    # Pretend this OpenCV build writes mp4v files it cannot read back.
    monkeypatch.setattr(demo, "_count_frames", lambda p: -1 if p.suffix == ".mp4" else real(p))
    path = generate_demo_video(tmp_path / "demo.mp4", seconds=1.0, fps=10)
    assert path.suffix == ".avi" and real(path) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.avi", "demo.labels.json"]
