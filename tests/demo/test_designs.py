"""The demo's design data: the shipped file is valid and draws, and a malformed design fails clearly."""

from __future__ import annotations

import dataclasses
from importlib import resources

import numpy as np
import pytest

from edge_runtime.demo import DemoSku, DesignError, demo_skus, demo_unknown_skus, parse_designs
from edge_runtime.demo.designs import DESIGNS_FILE, SECTIONS, UNKNOWN_IMAGES, long_tail_counts, shipped_designs
from edge_runtime.demo.draw import FONTS
from edge_runtime.demo.logos import LOGOS, draw_logo
from edge_runtime.demo.packages import MOTIFS, SHAPES, package_template
from edge_runtime.errors import EXIT_INPUT

GOOD = """
[[catalogue]]
code = "tea-leafy-green"
name = "Leafy Green Tea"
group = "Tea"
shape = "box"
brand = "LEAFY"
flavour = "GREEN"
body = [40, 120, 40]
band = [60, 200, 60]
accent = [255, 255, 255]
ink = [20, 20, 20]
logo = "leaf"
motif = "bowl:oats"
font = "complex"
aspect = 0.7

[[unknown]]
code = "tea-leafy-black"
name = "Leafy Black Tea"
group = "Tea"
shape = "can"
brand = "LEAFY"
flavour = "BLACK"
body = [40, 120, 40]
band = [20, 20, 20]
accent = [255, 255, 255]
ink = [20, 20, 20]
logo = "leaf"
"""


def _shipped_text() -> str:
    return resources.files("edge_runtime.demo").joinpath(DESIGNS_FILE).read_text(encoding="utf-8")


def test_shipped_design_file_is_valid() -> None:
    designs = parse_designs(_shipped_text())
    assert set(designs) == set(SECTIONS)
    every = designs["catalogue"] + designs["unknown"]
    assert len(designs["catalogue"]) >= 30 and len(designs["unknown"]) >= 5
    codes = [s.code for s in every]
    assert len(set(codes)) == len(codes), "SKU codes must be unique across catalogue and unknowns"
    for sku in every:
        assert sku.shape in SHAPES and sku.logo in LOGOS and sku.font in FONTS, sku.code
        assert sku.motif in MOTIFS[sku.shape], sku.code
        for colour in (sku.body, sku.band, sku.accent, sku.ink):
            assert isinstance(colour, tuple) and len(colour) == 3 and all(0 <= v <= 255 for v in colour), sku.code
        assert isinstance(sku.aspect, float) and sku.aspect > 0
    # Every shape the catalogue advertises is drawn by some design; every MOTIFS key is a real shape.
    assert set(MOTIFS) == set(SHAPES)
    assert {s.shape for s in every} == set(SHAPES)


@pytest.mark.parametrize("sku", shipped_designs()["catalogue"] + shipped_designs()["unknown"], ids=lambda s: s.code)
def test_every_design_draws_a_package(sku: DemoSku) -> None:
    template = package_template(sku)
    assert template.dtype == np.uint8 and template.ndim == 3 and template.shape[2] == 4
    alpha = template[..., 3]
    assert 0.3 < float((alpha > 0).mean()) <= 1.0, "the package should fill much of its template"
    assert len(np.unique(template[..., :3][alpha > 0].reshape(-1, 3), axis=0)) > 20, "a package is more than a blob"


@pytest.mark.parametrize("kind", sorted(LOGOS))
def test_every_logo_kind_draws_something(kind: str) -> None:
    img = np.zeros((80, 80, 3), np.uint8)
    draw_logo(img, kind, (40.0, 40.0), 24.0, (200, 120, 40))
    assert (img.max(axis=2) > 0).mean() > 0.03, kind


def test_shipped_designs_feed_the_demo_lists() -> None:
    designs = shipped_designs()
    strip = [dataclasses.replace(s, n_images=0) for s in demo_skus(3)]
    assert strip == designs["catalogue"]  # same products in file order; the seed only sets the counts
    assert sorted(s.n_images for s in demo_skus(3)) == sorted(long_tail_counts(len(designs["catalogue"])))
    assert [s.code for s in demo_unknown_skus()] == [s.code for s in designs["unknown"]]
    assert {s.n_images for s in demo_unknown_skus()} == {UNKNOWN_IMAGES}


def test_a_minimal_design_file_loads_with_defaults() -> None:
    designs = parse_designs(GOOD)
    tea = designs["catalogue"][0]
    assert tea == DemoSku(
        code="tea-leafy-green",
        name="Leafy Green Tea",
        group="Tea",
        shape="box",
        brand="LEAFY",
        flavour="GREEN",
        body=(40, 120, 40),
        band=(60, 200, 60),
        accent=(255, 255, 255),
        ink=(20, 20, 20),
        logo="leaf",
        motif="bowl:oats",
        font="complex",
        aspect=0.7,
    )
    black = designs["unknown"][0]
    assert (black.motif, black.font, black.aspect) == ("", "duplex", 0.6)


@pytest.mark.parametrize(
    ("old", "new", "field", "fix"),
    [
        ("band = [60, 200, 60]", "band = [60, 200]", "band", "[B, G, R], integers 0-255"),
        ("band = [60, 200, 60]", "band = [60, 200, 300]", "band", "[B, G, R], integers 0-255"),
        ('shape = "box"', 'shape = "crate"', "shape", "'bag', 'bottle', 'box'"),
        ('logo = "leaf"\nmotif', 'logo = "teapot"\nmotif', "logo", "'apple', 'bean'"),
        ('motif = "bowl:oats"', 'motif = "bowl:rice"', "motif", "'bowl:choco'"),
        ('motif = "bowl:oats"', "", "motif", "'bowl:choco'"),  # a box needs its bowl
        ('font = "complex"', 'font = "comic"', "font", "'complex', 'duplex'"),
        ("aspect = 0.7", "aspect = -1", "aspect", "WIDTH / HEIGHT"),
        ("aspect = 0.7", 'aspect = "wide"', "aspect", "WIDTH / HEIGHT"),
        ('code = "tea-leafy-green"', 'code = "Tea Green"', "code", "lower-case letters"),
        ('flavour = "GREEN"', "flavour = 3", "flavour", 'flavour = "..."'),
        ('brand = "LEAFY"\nflavour = "GREEN"', 'flavour = "GREEN"', "brand", "add brand = ..."),
        ("aspect = 0.7", "aspect = 0.7\ncolour = [1, 2, 3]", "colour", "use one of: code, name"),
    ],
)
def test_a_malformed_design_names_the_entry_the_field_and_the_fix(old: str, new: str, field: str, fix: str) -> None:
    assert GOOD.count(old) == 1
    with pytest.raises(DesignError) as err:
        parse_designs(GOOD.replace(old, new), source="mine.toml")
    assert err.value.message.startswith("mine.toml: catalogue[0]") and f": {field}: " in err.value.message
    assert err.value.hint is not None and fix in err.value.hint
    assert err.value.exit_code == EXIT_INPUT and "(fix: " in str(err.value)


def test_duplicate_codes_missing_sections_and_syntax_errors_are_refused() -> None:
    twice = GOOD.replace('code = "tea-leafy-black"', 'code = "tea-leafy-green"')
    with pytest.raises(DesignError, match=r"unknown\[0\].*'tea-leafy-green' is already used by catalogue\[0\]"):
        parse_designs(twice)
    with pytest.raises(DesignError, match=r"no \[\[unknown\]\] designs"):
        parse_designs(GOOD.split("[[unknown]]")[0])
    with pytest.raises(DesignError, match="unknown section 'extras'"):
        parse_designs(GOOD + "\n[extras]\nx = 1\n")
    with pytest.raises(DesignError, match="TOML syntax error"):
        parse_designs(GOOD + "\n[[catalogue]\n")
