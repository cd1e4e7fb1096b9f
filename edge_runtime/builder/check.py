"""edge-check: the readiness checklist on a catalogue without building a bundle.

It runs edge-build's own steps (``inputs.load_inputs``, ``pipeline.prepare_backbone``,
``embedding.fit_catalogue_head``, ``readiness.run_readiness``) up to the checklist, so the head it judges is
fitted the way a build fits the head it ships. It does not make or choose variants: it embeds with the fp32
model at the profile's first input size and measures that model's footprint in a fresh process. The fp32
footprint is an upper bound for the variant a build would choose (int8 and fp16 variants are smaller), so a
headroom that passes here passes in the build.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import onnx

from edge_runtime.builder.embedding import fit_catalogue_head, twin_features
from edge_runtime.builder.finetune import should_finetune
from edge_runtime.builder.footprint import MIB
from edge_runtime.builder.inputs import default_cache_dir, load_inputs, measurement_plan
from edge_runtime.builder.pipeline import prepare_backbone
from edge_runtime.builder.quantize import image_input, make_variant
from edge_runtime.builder.readiness import ReadinessReport, read_history, run_readiness, write_report
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
    """Run the readiness checklist on ``catalogue`` and write the report (json, md, png) to ``out``.

    ``model`` is the backbone (None: the default EfficientNet-Lite0, cached in ``cache_dir``); ``profile`` a
    profile name or .toml path; ``history`` an optional change-history CSV, read first so that a bad one fails
    before minutes of embedding; ``runs`` the timed inference runs of the footprint measurement; ``plots=False``
    writes the JSON and markdown only. Returns the report; failing checks are in it, not raised.
    """
    prof = load_profile(profile)
    should_finetune(prof.train, default_backbone=model is None)  # a required fine-tune fails before any work
    b = prof.backend
    if history is not None:
        read_history(history)  # a bad history fails now, not after minutes of embedding
    size = b.input_sizes[0]
    inputs = load_inputs(
        prof, catalogue=catalogue, model=model, cache_dir=cache_dir or default_cache_dir(), seed=seed, sizes=[size]
    )
    plan = measurement_plan(prof)
    work = Path(tempfile.mkdtemp(prefix="edge-check-"))
    try:
        cache = cache_dir or default_cache_dir()
        prepared = prepare_backbone(inputs, prof, seed, work, default_backbone=model is None, cache_dir=cache)
        model_path = work / f"model-fp32-{size}.onnx"
        onnx.save(make_variant(prepared.model, "fp32", size), str(model_path))
        features = None
        if prepared.twin is not None:
            features = twin_features(prepared.twin, model_path, inputs, prof, size, seed, work)
        log.info("measuring the fp32 model's footprint in a fresh process")
        m = plan.measure(
            model_path,
            size,
            runs=runs,
            embedding_output=inputs.embedding_output,
            input_name=image_input(prepared.model).name,
        )
        model_file_mib = model_path.stat().st_size / MIB
        log.info("embedding %d images with the fp32 model at %d px", len(inputs.labels), size)
        fitted = fit_catalogue_head(
            model_path,
            inputs.decoded,
            size,
            prof,
            embedding_output=inputs.embedding_output,
            seed=seed,
            table_precision="fp32",
            footprint_mib=m.peak_rss_mib + m.gpu_mib,
            clip_report=prepared.clip_report,
            features=features,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    head_mib = fitted.head.nbytes / MIB
    footprint = m.peak_rss_mib + m.gpu_mib + head_mib
    frames_mib = plan.frame_bytes / MIB
    tensors_mib = plan.tensor_bytes(size) / MIB
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
        embeddings=fitted.features.judged.head_input,  # a fine-tuned build: its calibration model's
        labels=inputs.labels,
        skus=inputs.skus,
        head=fitted.head,
        head_report=fitted.report,
        footprint_mib=footprint,
        budget_mib=float(prof.device.memory_budget_mib),
        profile=prof,
        history=history,
        seed=seed,
        footprint_parts=parts,
        finetune=prepared.finetune_report,
    )
    write_report(report, out, plots=plots)
    return report
