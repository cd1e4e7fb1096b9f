"""The synthetic demo: a catalogue of drawn products (near-duplicate siblings, a long tail, unknowns) and a demo
video, so `make demo` and the tests run without any real data. Used by the builder, bench and the CLI only."""

from edge_runtime.demo.generator import (
    CATALOGUE_CSV,
    IMAGE_SIZE,
    MIN_PER_SKU,
    STAMP_NAME,
    UNKNOWN_CSV,
    DemoSku,
    demo_skus,
    demo_unknown_skus,
    generate_demo_catalogue,
    generate_demo_video,
    long_tail_counts,
    render_product,
    scaled_count,
)

__all__ = [
    "CATALOGUE_CSV",
    "IMAGE_SIZE",
    "MIN_PER_SKU",
    "STAMP_NAME",
    "UNKNOWN_CSV",
    "DemoSku",
    "demo_skus",
    "demo_unknown_skus",
    "generate_demo_catalogue",
    "generate_demo_video",
    "long_tail_counts",
    "render_product",
    "scaled_count",
]
