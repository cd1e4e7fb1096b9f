"""edge-check: the readiness checklist on a catalogue without building a bundle.

Embeds the catalogue the way edge-build does (same backbone resolution, same decoding, the fp32 model at the
profile's first input size), fits the same head, measures the fp32 model's footprint in a fresh process, then
runs the checklist. The fp32 footprint is an upper bound for the variant a build would choose (int8 and fp16
variants are smaller), so a headroom that passes here passes in the build.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edge_runtime.builder import catalogue as cat
from edge_runtime.builder.footprint import MIB, measure_in_subprocess, tensor_queue_bytes
from edge_runtime.builder.pipeline import (
    FRAME_QUEUE_DEPTH,
    HOLDOUT_FOLDS,
    BuildOptions,
    _embed,
    _embed_views,
    catalogue_colour,
    choose_colour,
    clip_backbone,
    default_cache_dir,
    load_backbone,
    measurement_backend,
    regions_per_frame,
)
from edge_runtime.builder.quantize import make_variant
from edge_runtime.builder.readiness import ReadinessReport, read_history, run_readiness, write_report
from edge_runtime.features import compose
from edge_runtime.head.fit import FitSettings, cluster_folds, fit_head
from edge_runtime.profile import load_profile

log = logging.getLogger(__name__)


def run_check(
    catalogue: Path,
    model: Path | None,
    profile: str,
    history: Path | None,
    out: Path,
    seed: int = 0,
    *,
    cache_dir: Path | None = None,
    runs: int = 10,
    plots: bool = True,
) -> ReadinessReport:
    """Run the readiness checklist on ``catalogue`` and write the report (json, md, png) to ``out``."""
    prof = load_profile(profile)
    b = prof.backend
    if history is not None:
        read_history(history)  # a bad history fails now, not after minutes of embedding
    opts = BuildOptions(profile=profile, out=out, catalogue=catalogue, model=model, seed=seed)
    opts.cache_dir = cache_dir or default_cache_dir()
    _, backbone, embedding_output = load_backbone(opts, b.embedding_output)
    size = b.input_sizes[0]

    loaded = cat.load_catalogue(catalogue)
    log.info("catalogue %s: %d SKUs, %d images", catalogue, len(loaded.skus), len(loaded.items))
    decoded = cat.decode_catalogue(loaded, [size], progress=True)
    skus = list(decoded.catalogue.skus)
    labels = decoded.labels

    backend_here, host_estimate, why = measurement_backend(prof)
    camera = prof.cameras[0]
    frame_bytes = FRAME_QUEUE_DEPTH * camera.width * camera.height * 3
    work = Path(tempfile.mkdtemp(prefix="edge-check-"))
    try:
        backbone, clip_report = clip_backbone(
            backbone, embedding_output, prof.head.activation_clip_percentile, decoded, size,
            cat.stratified_sample(labels, b.calibration_images, seed), b.threads, work,
        )  # fmt: skip
        model_path = work / f"model-fp32-{size}.onnx"
        onnx.save(make_variant(backbone, "fp32", size), str(model_path))
        log.info("embedding %d images with the fp32 model at %d px", len(labels), size)
        embeddings = _embed(model_path, decoded, size, b.threads, embedding_output)
        colour = catalogue_colour(decoded, size) if prof.head.colour != "off" else None
        fold = cluster_folds(embeddings, labels, HOLDOUT_FOLDS, seed)
        held_in, held_out = np.flatnonzero(fold != 0), np.flatnonzero(fold == 0)
        colour_weight, colour_report = choose_colour(
            prof.head.colour, embeddings, colour, labels, held_in, held_out, len(skus)
        )
        embeddings = compose(embeddings, colour, colour_weight)
        # The same augmented views edge-build fits on, so the checklist judges the head that would ship.
        aug_emb, aug_source = _embed_views(
            model_path, decoded, size, b.threads, embedding_output, prof.head.augment_views, seed, colour_weight
        )
        log.info("measuring the fp32 model's footprint in a fresh process")
        m = measure_in_subprocess(
            model_path,
            backend=backend_here,
            threads=b.threads,
            frame_bytes=frame_bytes,
            runs=runs,
            embedding_output=embedding_output,
            tensor_bytes=tensor_queue_bytes(regions_per_frame(prof), size),
        )
        model_file_mib = model_path.stat().st_size / MIB
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if host_estimate:
        log.warning("footprint is a host estimate (%s)", why)

    budget = float(prof.device.memory_budget_mib)
    limit_mib = budget * (1.0 - prof.device.min_headroom)
    r = prof.routing
    settings = FitSettings(
        accept_precision=r.accept_precision,
        ood_keep=r.ood_keep,
        verify_band=r.verify_band,
        table_precision="fp32",
        ood_memory_limit_bytes=int(max(0.0, limit_mib - m.peak_rss_mib - m.gpu_mib) * MIB),
        seed=seed,
        colour_weight=colour_weight,
        max_projection_dim=prof.head.max_projection_dim,
    )
    log.info("fitting the recognition head")
    head, head_report = fit_head(embeddings, labels, skus, settings, aug_emb, aug_source)
    head_report["colour"] = colour_report
    head_report["activation_clip"] = clip_report
    head_mib = head.nbytes / MIB
    footprint = m.peak_rss_mib + m.gpu_mib + head_mib
    frames_mib = frame_bytes / MIB
    tensors_mib = tensor_queue_bytes(regions_per_frame(prof), size) / MIB
    # Parts for the footprint plot: the measured peak split into what it is made of (weights ~ the model file).
    session = max(0.0, m.peak_rss_mib - m.baseline_rss_mib - frames_mib - tensors_mib - model_file_mib)
    parts = {
        "runtime (interpreter, libraries)": m.baseline_rss_mib,
        "frame queue": frames_mib,
        "tensor queue": tensors_mib,
        "weights": model_file_mib,
        "activations and session": session,
        "embedding tables (head)": head_mib,
    }
    if m.gpu_mib:
        parts["gpu"] = m.gpu_mib
    report = run_readiness(
        embeddings=embeddings,
        labels=labels,
        skus=skus,
        head=head,
        head_report=head_report,
        footprint_mib=footprint,
        budget_mib=budget,
        profile=prof,
        history=history,
        seed=seed,
        footprint_parts=parts,
    )
    write_report(report, out, plots=plots)
    return report
