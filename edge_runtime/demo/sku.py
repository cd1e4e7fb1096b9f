"""DemoSku: one drawable product of the synthetic demo, as designs.py loads it from designs.toml."""

from __future__ import annotations

from dataclasses import dataclass

BGR = tuple[int, int, int]


@dataclass(frozen=True)
class DemoSku:
    """One drawable product: identity plus the parameters its package is drawn from."""

    code: str
    name: str
    group: str
    shape: str  # carton | can | bottle | box | pasta | bag | jar | tub | tube
    brand: str
    flavour: str
    body: BGR  # base package colour, shared by flavour siblings
    band: BGR  # flavour band colour, the main sibling difference
    accent: BGR  # brand accent (logo, stripes)
    ink: BGR  # brand text colour
    logo: str  # flavour/brand icon kind, see logos.LOGOS
    motif: str = ""  # shape-specific illustration, e.g. "dots:5", "window:penne" (packages.MOTIFS)
    font: str = "duplex"
    aspect: float = 0.6  # front-face width / height
    n_images: int = 0  # images at scale 1
