"""What a build starts from: the catalogue, the backbone, and the backend the variants are measured with.

edge-build and edge-check both load their inputs here, so they read the same catalogue the same way (folder
tree or CSV, decoded once per input size) and resolve the same backbone (``--model``, or the default
EfficientNet-Lite0 exported once into the cache).
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edge_runtime.backends import first_available
from edge_runtime.builder import catalogue as cat
from edge_runtime.builder.backbone import BACKBONE_GRAPH_VERSION, EMBEDDING_OUTPUT, MULTI_EMBEDDING_OUTPUT
from edge_runtime.builder.footprint import (
    frame_queue_bytes,
    measure_in_subprocess,
    regions_per_frame,
    tensor_queue_bytes,
)
from edge_runtime.builder.quantize import load_model
from edge_runtime.bundle import sha256_file
from edge_runtime.errors import UsageError
from edge_runtime.profile import DeviceProfile
from edge_runtime.types import Measurement, SkuInfo

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Where the default backbone and the demo catalogue are cached: $EDGE_CACHE_DIR or ~/.cache/edge_runtime."""
    return Path(os.environ.get("EDGE_CACHE_DIR", Path.home() / ".cache" / "edge_runtime"))


@dataclass(frozen=True)
class BuildInputs:
    """The catalogue, decoded at every input size asked for, and the backbone with its embedding output's name."""

    catalogue_path: Path
    decoded: cat.DecodedCatalogue
    backbone_path: Path
    backbone: onnx.ModelProto
    embedding_output: str
    catalogue_sources: tuple[Path, ...] = ()  # every --catalogue, merged in this order (catalogue_path is the first)

    @property
    def labels(self) -> np.ndarray:
        """Class index of every decoded catalogue image."""
        return self.decoded.labels

    @property
    def skus(self) -> list[SkuInfo]:
        """The catalogue's SKUs in class-index order."""
        return list(self.decoded.catalogue.skus)

    def calibration_index(self, count: int, seed: int) -> np.ndarray:
        """Up to ``count`` images spread evenly over the SKUs: what INT8 calibration and the activation clip see."""
        return cat.stratified_sample(self.labels, count, seed)


@dataclass(frozen=True)
class MeasurementPlan:
    """How variants are measured on this host: the backend and its threads, whether the figures only estimate
    the device's, and what the measured process holds besides the model, as edge-run does: the camera frames of
    its frame queue and the prepared regions of its tensor queue."""

    backend: str
    host_estimate: bool
    why_estimate: str
    threads: int
    frame_bytes: int
    regions_per_frame: int
    # What edge-run gives a GPU backend, so the measured engine is the one the device builds: the memory budget
    # (workspace and arena limits) and the largest batch (the engine's profile). Ignored by the CPU backend.
    budget_mib: float | None = None
    max_batch: int | None = None

    def tensor_bytes(self, input_size: int) -> int:
        """Bytes of edge-run's tensor queue at this input size."""
        return tensor_queue_bytes(self.regions_per_frame, input_size)

    def measure(
        self,
        model: Path,
        input_size: int,
        *,
        runs: int,
        embedding_output: str,
        input_name: str,
        precision: str = "fp32",
    ) -> Measurement:
        """Footprint and latency of ``model`` in a fresh process that holds what edge-run holds, opened with the
        settings edge-run opens it with (precision, memory budget, largest batch)."""
        return measure_in_subprocess(
            model,
            backend=self.backend,
            threads=self.threads,
            frame_bytes=self.frame_bytes,
            runs=runs,
            embedding_output=embedding_output,
            tensor_bytes=self.tensor_bytes(input_size),
            precision=precision,
            budget_mib=self.budget_mib,
            max_batch=self.max_batch,
            image_input=(input_name, input_size),
        )


def resolve_catalogue(catalogue: Path | Sequence[Path] | None, cache_dir: Path, seed: int) -> list[Path]:
    """The catalogue(s) given (several are merged: ``catalogue.load_catalogues``), or (None or empty) the generated
    demo catalogue in ``cache_dir``, made on first use."""
    if isinstance(catalogue, Path | str):
        return [Path(catalogue)]
    if catalogue:
        return [Path(c) for c in catalogue]
    from edge_runtime.demo import generate_demo_catalogue

    target = cache_dir / "demo-catalogue"
    log.info("no --catalogue given: using the generated demo catalogue in %s", target)
    return [generate_demo_catalogue(target, seed=seed, unknown_dir=cache_dir / "demo-unknown")]


def resolve_backbone(model: Path | None, cache_dir: Path) -> Path:
    """``model``, or (None) the default EfficientNet-Lite0 backbone exported once into ``cache_dir``."""
    if model is not None:
        return model
    from edge_runtime.builder.backbone import default_checkpoint_path, export_default_backbone

    ckpt = default_checkpoint_path()
    # The graph version is in the name so a cache written by an older exporter is never reused.
    name = f"efficientnet_lite0-{sha256_file(ckpt)[:12]}-g{BACKBONE_GRAPH_VERSION}.onnx"
    target = cache_dir / "backbone" / name
    if not target.is_file():
        log.info("exporting the default backbone (EfficientNet-Lite0) to %s", target)
        target.parent.mkdir(parents=True, exist_ok=True)
        export_default_backbone(target)
    return target


def load_backbone(model: Path | None, cache_dir: Path, embedding_output: str) -> tuple[Path, onnx.ModelProto, str]:
    """The backbone to build with (``model`` or the default) and the name of its embedding output.

    ``auto`` takes the multi-layer embedding when the backbone has one (the default backbone does), else
    ``embedding``; any other name must be an output of the model.
    """
    path = resolve_backbone(model, cache_dir)
    proto = load_model(path)
    outputs = [o.name for o in proto.graph.output]
    if embedding_output == "auto":
        embedding_output = MULTI_EMBEDDING_OUTPUT if MULTI_EMBEDDING_OUTPUT in outputs else EMBEDDING_OUTPUT
    if embedding_output not in outputs:
        raise UsageError(
            f"{path}: no output named {embedding_output!r} (outputs: {', '.join(outputs)})",
            hint="set backend.embedding_output in the profile",
        )
    return path, proto, embedding_output


def load_inputs(
    profile: DeviceProfile,
    *,
    catalogue: Path | Sequence[Path] | None,
    model: Path | None,
    cache_dir: Path,
    seed: int,
    sizes: Sequence[int],
) -> BuildInputs:
    """Resolve and load the catalogue and the backbone, and decode the catalogue at every size in ``sizes``.

    The backbone is loaded before the catalogue is read, so a bad model is reported without waiting for the
    images; unreadable images are skipped (and listed in the manifest), a SKU left without images is an error.
    """
    catalogue_paths = resolve_catalogue(catalogue, cache_dir, seed)
    catalogue_path = catalogue_paths[0]
    backbone_path, backbone, embedding_output = load_backbone(model, cache_dir, profile.backend.embedding_output)
    loaded = cat.load_catalogues(catalogue_paths)
    log.info("catalogue %s: %d SKUs, %d images", loaded.source, len(loaded.skus), len(loaded.items))
    decoded = cat.decode_catalogue(loaded, list(sizes), progress=True)
    if decoded.catalogue.skipped:
        log.warning("%d catalogue image(s) skipped as unreadable", len(decoded.catalogue.skipped))
    sources = tuple(catalogue_paths)
    return BuildInputs(catalogue_path, decoded, backbone_path, backbone, embedding_output, sources)


def measurement_backend(profile: DeviceProfile) -> tuple[str, bool, str]:
    """(backend to measure with here, whether figures are host estimates, why)."""
    device_backend = profile.backend.prefer[0]
    here, skipped = first_available(profile.backend.prefer)
    host_arch = platform.machine().replace("arm64", "aarch64").replace("AMD64", "x86_64")
    if here is None:
        if not profile.backend.allow_fallback:
            why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
            raise UsageError(
                f"none of the profile's backends runs on this host ({why})",
                hint="build on the device, or set backend.allow_fallback = true to measure with a stand-in",
            )
        here = "onnxruntime-cpu"
    reasons = []
    if here != device_backend:
        reasons.append(f"device runs {device_backend}, measured with {here}")
    if host_arch != profile.device.arch:
        reasons.append(f"device is {profile.device.arch}, this host is {host_arch}")
    return here, bool(reasons), "; ".join(reasons)


def measurement_plan(profile: DeviceProfile) -> MeasurementPlan:
    """``measurement_backend`` and the camera frames to hold, warning once when the figures are estimates."""
    backend, host_estimate, why = measurement_backend(profile)
    if host_estimate:
        log.warning("figures are host estimates (%s); confirm on the device with edge-bench", why)
    return MeasurementPlan(
        backend,
        host_estimate,
        why,
        profile.backend.threads,
        frame_queue_bytes(profile),
        regions_per_frame(profile),
        budget_mib=float(profile.device.memory_budget_mib),
        max_batch=profile.regions.max_regions,
    )
