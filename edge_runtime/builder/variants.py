"""Making, measuring and ranking the variants: every (precision x input size) model with every table precision.

Each model variant is made from the (clipped) backbone, embeds the catalogue, and is measured in a fresh
process (footprint, latency); each table precision then makes one candidate, ranked by held-out top-1 of the
quick nearest-centroid measure in ``ranking.py``; a quantised one that loses more than 3 points of the fp32
model's new-product detection on held-out SKUs is not a candidate. ``choose.py`` picks the one to ship.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from edge_runtime.builder.choose import choose, violations
from edge_runtime.builder.embedding import HeadFeatures, catalogue_colour, embed_for_head
from edge_runtime.builder.footprint import MIB
from edge_runtime.builder.holdout import CalibrationTwin
from edge_runtime.builder.inputs import BuildInputs, MeasurementPlan
from edge_runtime.builder.quantize import Int8Scheme, image_input, int8_scheme_for, make_variant
from edge_runtime.builder.ranking import OOD_DROP_LIMIT, fit_ranking, heldout_ood, heldout_top1, stand_in_new_classes
from edge_runtime.head.prototypes import PrototypeTable, l2_normalise
from edge_runtime.profile import DeviceProfile
from edge_runtime.types import Accuracy, Candidate, Footprint, ModelVariant, Precision, VariantSpec

log = logging.getLogger(__name__)

PRECISION_ORDER: tuple[Precision, ...] = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class VariantSet:
    """Every candidate of the decision table, with each model variant's file and catalogue features."""

    candidates: list[Candidate]
    files: dict[ModelVariant, Path]
    features: dict[ModelVariant, HeadFeatures]  # the head's input per variant: embeddings (+ colour)
    int8_scheme: Int8Scheme


def make_variants(
    backbone: onnx.ModelProto,
    inputs: BuildInputs,
    profile: DeviceProfile,
    plan: MeasurementPlan,
    work: Path,
    *,
    runs: int,
    seed: int,
    twin: CalibrationTwin | None = None,
) -> VariantSet:
    """Make, embed and measure every variant the profile allows; the model files are written under ``work``.

    fp32 comes first at every input size, as the reference the other precisions are compared with; the first
    fp32 embedding also decides the held-out split and the colour descriptor for every variant. With a
    fine-tuned backbone's calibration ``twin``, each variant is also made from the twin (same precision, size
    and int8 calibration images) and ranked on the twin's embeddings of the photos it never trained on: the
    shipped model has trained on every catalogue photo, so none is held out for it.
    """
    b = profile.backend
    decoded, labels, n_classes = inputs.decoded, inputs.labels, len(inputs.skus)
    # Calibration only sets activation ranges, so it may draw on every image.
    calib_idx = inputs.calibration_index(b.calibration_images, seed)
    scheme = int8_scheme_for(b.prefer[0])
    candidates: list[Candidate] = []
    files: dict[ModelVariant, Path] = {}
    features: dict[ModelVariant, HeadFeatures] = {}
    decisions: HeadFeatures | None = None  # the first fp32 embedding: the split and the colour decision
    input_name = image_input(backbone).name  # the engine profile of a measured GPU variant is given per input
    for size in b.input_sizes:
        fp32: HeadFeatures | None = None
        # Needed to decide at the first size, and at later sizes only when the decision kept it.
        wanted = profile.head.colour != "off" and (decisions is None or decisions.colour_weight > 0)
        colour = catalogue_colour(decoded, size) if wanted else None
        for precision in [p for p in PRECISION_ORDER if p == "fp32" or p in b.precisions]:
            variant = ModelVariant(precision, size)
            log.info("variant %s: preparing model", variant.name)
            t0 = time.perf_counter()
            calibration = decoded.batch(size, calib_idx) if precision == "int8" else None
            path = work / f"model-{variant.name}.onnx"
            onnx.save(make_variant(backbone, precision, size, calibration, scheme), str(path))
            twin_feats, twin_path = None, None
            if twin is not None:
                twin_path = work / f"calibration-{variant.name}.onnx"
                onnx.save(make_variant(twin.model, precision, size, calibration, scheme), str(twin_path))
                twin_feats = embed_for_head(
                    twin_path, decoded, size, profile, inputs.embedding_output, seed, reference=decisions,
                    colour=colour, split=twin.plan.split(),
                )  # fmt: skip
                decisions = decisions or twin_feats
            feats = embed_for_head(
                path, decoded, size, profile, inputs.embedding_output, seed, reference=decisions, colour=colour
            )
            if twin is not None:
                feats = replace(feats, twin=twin_feats, twin_model=twin_path, holdout=twin.plan)
            log.info("variant %s: embedded %d images in %.1f s", variant.name, len(labels), time.perf_counter() - t0)
            if decisions is None:
                decisions = feats
            if fp32 is None:
                fp32 = feats  # fp32 comes first at every size
            if precision not in b.precisions:
                continue  # fp32 was only the reference
            files[variant] = path
            features[variant] = feats
            candidates.extend(
                measure_variant(
                    variant,
                    path,
                    feats,
                    fp32,
                    labels,
                    n_classes,
                    profile,
                    plan,
                    runs,
                    inputs.embedding_output,
                    input_name=input_name,
                )
            )
    for c in candidates:
        log.info(
            "  %s: %.1f MiB, %.2f ms, top-1 %.1f%%, new products caught %.1f%%",
            c.spec.name,
            c.footprint.total_mib,
            c.measurement.latency_ms_p50,
            100 * c.accuracy.top1,
            100 * c.accuracy.ood_detection,
        )
    return VariantSet(candidates, files, features, scheme)


def measure_variant(
    variant: ModelVariant,
    path: Path,
    features: HeadFeatures,
    fp32: HeadFeatures,
    labels: np.ndarray,
    n_classes: int,
    profile: DeviceProfile,
    plan: MeasurementPlan,
    runs: int,
    embedding_output: str,
    *,
    input_name: str,
) -> list[Candidate]:
    """One candidate per table precision for a model variant: footprint and latency measured in a fresh
    process; held-out top-1 on ``features.split``, agreement with ``fp32``, the fp32 variant at the same input
    size, and new-product detection on held-out SKUs against fp32's (``ood_violation``)."""
    b = profile.backend
    log.info("variant %s: measuring footprint and latency in a fresh process", variant.name)
    measurement = plan.measure(
        path,
        variant.input_size,
        runs=runs,
        embedding_output=embedding_output,
        precision=variant.precision,
        input_name=input_name,
    )
    # Quantisation is judged on the embeddings alone; ranking on what the head will read, as the model that
    # makes the choices embeds it (the calibration twin of a fine-tuned build).
    cos = np.sum(l2_normalise(features.embeddings) * l2_normalise(fp32.embeddings), axis=1)
    judged, ref = features.judged, fp32.judged
    train_idx, eval_idx = judged.split
    proj, centroids = fit_ranking(judged.head_input, labels, train_idx, n_classes)
    ref_proj, ref_cents = fit_ranking(ref.head_input, labels, train_idx, n_classes)
    _, ref_pred = heldout_top1(
        PrototypeTable.from_float(ref_cents, "fp32"), ref_proj.apply(ref.head_input[eval_idx]), labels[eval_idx]
    )
    # New-product detection, judged like top-1: the calibration model's held-out SKUs in a fine-tuned build.
    holdout = features.holdout or fp32.holdout
    new_classes = holdout.new_classes if holdout is not None else stand_in_new_classes(n_classes)
    ref_ood = heldout_ood(ref.head_input, labels, judged.split, new_classes, n_classes, ["fp32"])[0]["fp32"]
    oods, n_new = heldout_ood(judged.head_input, labels, judged.split, new_classes, n_classes, b.table_precisions)
    out = []
    for tp in b.table_precisions:
        table = PrototypeTable.from_float(centroids, tp)
        top1, pred = heldout_top1(table, proj.apply(judged.head_input[eval_idx]), labels[eval_idx])
        ood = oods[tp]
        accuracy = Accuracy(
            top1=top1,
            n_eval=len(eval_idx),
            cosine_to_fp32_mean=float(cos.mean()),
            cosine_to_fp32_min=float(cos.min()),
            top1_agreement_fp32=float((pred == ref_pred).mean()) if len(pred) else float("nan"),
            ood_detection=ood,
            ood_detection_fp32=ref_ood,
        )
        footprint = Footprint(
            process_peak_mib=measurement.peak_rss_mib,
            table_mib=table.nbytes / MIB,
            model_file_mib=path.stat().st_size / MIB,
            gpu_mib=measurement.gpu_mib,
        )
        broken = violations(
            footprint.total_mib,
            measurement.latency_ms_p50,
            budget_mib=profile.device.memory_budget_mib,
            min_headroom=profile.device.min_headroom,
            max_latency_ms=b.max_latency_ms,
            enforce_latency=not plan.host_estimate,
        ) + ood_violation(ood, ref_ood, n_new)
        out.append(
            Candidate(
                spec=VariantSpec(variant, tp),
                footprint=footprint,
                measurement=measurement,
                accuracy=accuracy,
                model_path=path,
                host_estimate=plan.host_estimate,
                violations=broken,
            )
        )
    return out


def ood_violation(ood: float, ref_ood: float, n_new: int) -> tuple[str, ...]:
    """A quantised variant (or table) that loses more than ``OOD_DROP_LIMIT`` of the fp32 model's new-product
    detection breaks a constraint, whatever its top-1: the OOD gate is what keeps new products out of accept.
    A drop of two new-product images or fewer is noise, not a loss (small catalogues hold out few)."""
    if ood != ood or ref_ood != ref_ood:  # nan: nothing to compare
        return ()
    allowed = max(OOD_DROP_LIMIT, 2.0 / n_new if n_new else 1.0)
    if ood >= ref_ood - allowed - 1e-9:
        return ()
    return (f"new-product detection {ood:.1%} < fp32's {ref_ood:.1%} - {allowed:.1%} ({n_new} new-product images)",)


def choose_variant(variants: VariantSet) -> Candidate:
    """The candidate to ship (``choose.choose``), logged."""
    chosen = choose(variants.candidates)
    log.info("chose %s", chosen.spec.name)
    return chosen
