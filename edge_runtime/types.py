"""Frozen value types passed between stages.

Stages never import each other; what one stage hands to the next is defined
here, so the shape of the data flow is visible in one file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class SkuInfo:
    """One catalogue SKU: code (stable id), human name and visual group."""

    code: str
    name: str
    group: str


@dataclass(frozen=True)
class CatalogueItem:
    image: Path
    sku: str


@dataclass(frozen=True)
class Catalogue:
    """A validated catalogue: SKUs in a fixed order and the images that show them."""

    skus: tuple[SkuInfo, ...]
    items: tuple[CatalogueItem, ...]
    skipped: tuple[tuple[Path, str], ...] = ()  # (image, reason) for unreadable files
    source: str = ""

    def sku_index(self) -> dict[str, int]:
        return {s.code: i for i, s in enumerate(self.skus)}

    def labels(self) -> list[int]:
        index = self.sku_index()
        return [index[item.sku] for item in self.items]


@dataclass(frozen=True)
class ModelVariant:
    """One backbone variant: weight/activation precision and input resolution."""

    precision: Precision
    input_size: int

    @property
    def name(self) -> str:
        return f"{self.precision}-{self.input_size}"


@dataclass(frozen=True)
class VariantSpec:
    """A full candidate: a model variant plus the precision of the prototype table."""

    model: ModelVariant
    table_precision: Precision

    @property
    def name(self) -> str:
        return f"{self.model.name}-table-{self.table_precision}"


@dataclass(frozen=True)
class Measurement:
    """What a separate process measured while loading a model and running it."""

    backend: str
    threads: int
    batch: int
    baseline_rss_mib: float  # interpreter + libraries before the model is loaded
    peak_rss_mib: float  # highest resident set seen while loading and inferring
    gpu_mib: float  # device memory the backend reports, 0 when it runs on the CPU
    latency_ms_p50: float
    latency_ms_p95: float
    runs: int


@dataclass(frozen=True)
class Footprint:
    """Memory of a candidate on the device: measured process peak plus the exact table bytes."""

    process_peak_mib: float
    table_mib: float
    model_file_mib: float
    gpu_mib: float = 0.0

    @property
    def total_mib(self) -> float:
        return self.process_peak_mib + self.table_mib + self.gpu_mib


def _rounded(value: float, digits: int) -> float | None:
    """``value`` rounded for JSON, None for nan (JSON has no NaN)."""
    return None if math.isnan(value) else round(value, digits)


@dataclass(frozen=True)
class Accuracy:
    top1: float  # held-out catalogue images, nearest prototype
    n_eval: int
    cosine_to_fp32_mean: float
    cosine_to_fp32_min: float
    top1_agreement_fp32: float  # share of held-out predictions equal to the fp32 variant's
    # New-product detection at 95 % retention on held-out SKUs (ranking.heldout_ood), and the fp32 variant's at the
    # same input size; nan when the catalogue is too small to hold SKUs out.
    ood_detection: float = float("nan")
    ood_detection_fp32: float = float("nan")


@dataclass(frozen=True)
class Candidate:
    """One row of the decision table."""

    spec: VariantSpec
    footprint: Footprint
    measurement: Measurement
    accuracy: Accuracy
    model_path: Path
    host_estimate: bool
    violations: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fits(self) -> bool:
        return not self.violations

    def as_row(self) -> dict[str, Any]:
        return {
            "variant": self.spec.name,
            "precision": self.spec.model.precision,
            "input_size": self.spec.model.input_size,
            "table_precision": self.spec.table_precision,
            "footprint_mib": round(self.footprint.total_mib, 2),
            "footprint": {k: round(v, 3) for k, v in asdict(self.footprint).items()},
            "latency_ms_p50": round(self.measurement.latency_ms_p50, 3),
            "latency_ms_p95": round(self.measurement.latency_ms_p95, 3),
            "top1": round(self.accuracy.top1, 4),
            "cosine_to_fp32_mean": round(self.accuracy.cosine_to_fp32_mean, 5),
            "cosine_to_fp32_min": round(self.accuracy.cosine_to_fp32_min, 5),
            "top1_agreement_fp32": round(self.accuracy.top1_agreement_fp32, 4),
            "ood_detection": _rounded(self.accuracy.ood_detection, 4),
            "ood_detection_fp32": _rounded(self.accuracy.ood_detection_fp32, 4),
            "model_file_mib": round(self.footprint.model_file_mib, 3),
            "measured_with": self.measurement.backend,
            "host_estimate": self.host_estimate,
            "fits": self.fits,
            "violations": list(self.violations),
        }


# ---- run time ---------------------------------------------------------------------------------------------------

Route = Literal["accept", "verify", "unknown"]
MessageKind = Literal["result", "crop", "status", "heartbeat"]


@dataclass(frozen=True)
class Frame:
    """One captured image. ``source_ref`` is the file name for folders and the frame index for videos."""

    index: int  # frame id, strictly increasing within a run
    image: Any  # np.ndarray, BGR uint8 HxWx3 (Any keeps this module free of numpy)
    ts: float  # wall-clock capture time, time.time()
    source_ref: str
    camera: str = ""


@dataclass(frozen=True)
class Region:
    """A box to classify, ``[x, y, width, height]`` in source pixels."""

    box: tuple[int, int, int, int]
    detector_score: float = 1.0  # 1.0 for full-frame and fixed regions


@dataclass(frozen=True)
class Decision:
    """What the head decided for one region."""

    sku: str | None  # None when the route is unknown
    name: str | None
    group: str | None
    score: float  # calibrated probability of the named SKU
    ood_score: float  # grows with strangeness
    route: Route
    reasons: tuple[str, ...] = ()
    top_k: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class OutMessage:
    """A message waiting in the outbox. ``kind`` decides what is dropped first when the outbox is full."""

    id: str
    topic: str
    payload: bytes
    kind: MessageKind
    created: float  # time.time() when it entered the outbox
    retain: bool = False
