"""The synthetic demo: a catalogue of drawn products (near-duplicate siblings, a long tail, unknowns) and a demo
video, so `make demo` and the tests run without any real data. Used by the builder, bench and the CLI only.

Real product photos cannot ship with the code, so the demo draws its packages with OpenCV primitives. The
catalogue is designed around the hard case the product exists for: flavour variants that share package shape,
brand and base colour and differ only in a band, a word or a small logo. Image counts follow a long tail, and a
few never-seen products are written to a separate directory for out-of-distribution checks.

This room holds the product designs as data (designs.toml, loaded and checked by designs.py into ``DemoSku``
records from sku.py), drawing primitives (draw.py), logos (logos.py), package templates (packages.py), scenes
and camera effects (scene.py: ``render_product``), the catalogue writer (catalogue.py) and the video writer
(video.py). Output is byte-identical for a seed.
"""

from edge_runtime.demo.catalogue import (
    CATALOGUE_CSV,
    GENERATOR_VERSION,
    STAMP_NAME,
    UNKNOWN_CSV,
    generate_demo_catalogue,
)
from edge_runtime.demo.designs import (
    MIN_PER_SKU,
    DesignError,
    demo_skus,
    demo_unknown_skus,
    long_tail_counts,
    parse_designs,
    scaled_count,
)
from edge_runtime.demo.scene import IMAGE_SIZE, render_product
from edge_runtime.demo.sku import DemoSku
from edge_runtime.demo.video import generate_demo_video

__all__ = [
    "CATALOGUE_CSV",
    "GENERATOR_VERSION",
    "IMAGE_SIZE",
    "MIN_PER_SKU",
    "STAMP_NAME",
    "UNKNOWN_CSV",
    "DemoSku",
    "DesignError",
    "demo_skus",
    "demo_unknown_skus",
    "generate_demo_catalogue",
    "generate_demo_video",
    "long_tail_counts",
    "parse_designs",
    "render_product",
    "scaled_count",
]
