"""Embedding the catalogue with a model variant, and fitting the recognition head on it.

These are the steps edge-build and edge-check share, so the readiness checklist judges the head a build ships:
the activation clip of the backbone, the catalogue's embeddings (+ colour descriptors when they help) with the
held-out split they are judged on, augmented views, and the head fitted with the profile's settings.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_runtime.backends import create_backend
from edge_runtime.builder import catalogue as cat
from edge_runtime.builder.augment import augment_batch
from edge_runtime.builder.backbone import EMBEDDING_OUTPUT, MULTI_EMBEDDING_OUTPUT, can_clip_head, clip_head
from edge_runtime.builder.footprint import MIB
from edge_runtime.builder.holdout import CalibrationTwin, HoldoutPlan, heldout_split
from edge_runtime.builder.inputs import BuildInputs
from edge_runtime.builder.quantize import make_variant
from edge_runtime.builder.ranking import fit_ranking, heldout_top1
from edge_runtime.features import COLOUR_BINS, COLOUR_WEIGHT, colour_descriptor, compose, head_input
from edge_runtime.head.fit import Calibration, FitSettings, fit_head
from edge_runtime.head.model import Head
from edge_runtime.head.prototypes import PrototypeTable
from edge_runtime.profile import DeviceProfile
from edge_runtime.types import Precision

log = logging.getLogger(__name__)

EMBED_BATCH = 16


def embed_catalogue(
    model_path: Path,
    decoded: cat.DecodedCatalogue,
    size: int,
    threads: int,
    output: str,
    views: int = 0,
    rng: np.random.Generator | None = None,
    colour_weight: float = 0.0,
) -> np.ndarray:
    """Embeddings of every catalogue image; with ``rng``, of ``views`` random augmented views of each, view-major.

    With a colour weight, each row is the head's input: the embedding followed by the colour of the same pixels.
    """
    backend = create_backend("onnxruntime-cpu", model_path, threads=threads, embedding_output=output)
    n = len(decoded.labels)
    out = []
    try:
        for _ in range(max(1, views) if rng is not None else 1):
            for start in range(0, n, EMBED_BATCH):
                index = np.arange(start, min(n, start + EMBED_BATCH))
                batch = decoded.batch(size, index) if rng is None else augment_batch(decoded.pixels[size][index], rng)
                out.append(head_input(backend.embed(batch), batch, colour_weight))
    finally:
        backend.close()
    return np.concatenate(out)


def embed_views(
    model_path: Path,
    decoded: cat.DecodedCatalogue,
    size: int,
    threads: int,
    output: str,
    views: int,
    seed: int,
    colour_weight: float = 0.0,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Embeddings of ``views`` augmented views per catalogue image, and each view's source image index."""
    if views <= 0:
        return None, None
    t0 = time.perf_counter()
    n = len(decoded.labels)
    rng = np.random.default_rng(seed + 7919)
    emb = embed_catalogue(model_path, decoded, size, threads, output, views, rng, colour_weight)
    log.info("embedded %d augmented views of %d images in %.1f s", views * n, n, time.perf_counter() - t0)
    return emb, np.tile(np.arange(n), views)


def clip_backbone(
    backbone: onnx.ModelProto,
    embedding_output: str,
    percentile: float,
    decoded: cat.DecodedCatalogue,
    size: int,
    index: np.ndarray,
    threads: int,
    work: Path,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The backbone with its pooled head activations clipped at ``percentile`` of what the catalogue images
    ``index`` produce (``backbone.clip_head``), and the record of it for the manifest."""
    report: dict[str, Any] = {"percentile": percentile, "limit": None}
    if percentile <= 0:
        report["why_not"] = "off in the profile"
        return backbone, report
    if embedding_output != MULTI_EMBEDDING_OUTPUT or not can_clip_head(backbone):
        report["why_not"] = "the backbone has no multi-layer tail (only the default backbone has)"
        return backbone, report
    path = work / f"model-unclipped-{size}.onnx"
    onnx.save(make_variant(backbone, "fp32", size), str(path))
    backend = create_backend("onnxruntime-cpu", path, threads=threads, embedding_output=EMBEDDING_OUTPUT)
    try:
        pooled = np.concatenate(
            [backend.embed(decoded.batch(size, index[s : s + EMBED_BATCH])) for s in range(0, len(index), EMBED_BATCH)]
        )
    finally:
        backend.close()
        path.unlink(missing_ok=True)
    limit = float(np.percentile(pooled, percentile))
    report["limit"] = round(limit, 6)
    report["images"] = len(index)
    log.info("head activations clipped at %.4f (percentile %g of %d catalogue images)", limit, percentile, len(index))
    return clip_head(backbone, limit), report


def catalogue_colour(decoded: cat.DecodedCatalogue, size: int) -> np.ndarray:
    """Colour descriptors of every catalogue image as the backbone sees it at ``size``."""
    n = len(decoded.labels)
    chunks = [np.arange(s, min(n, s + EMBED_BATCH)) for s in range(0, n, EMBED_BATCH)]
    return np.concatenate([colour_descriptor(decoded.batch(size, index)) for index in chunks])


def choose_colour(
    setting: str,
    feats: np.ndarray,
    colour: np.ndarray | None,
    labels: np.ndarray,
    train_idx: np.ndarray,
    eval_idx: np.ndarray,
    n_classes: int,
) -> tuple[float, dict[str, Any]]:
    """The colour weight the head will read, and why: ``auto`` keeps colour when it raises held-out top-1."""
    report: dict[str, Any] = {"setting": setting, "bins": list(COLOUR_BINS)}
    if setting == "off" or colour is None or len(eval_idx) == 0:
        report["used"] = False
        return 0.0, report
    top1 = {}
    for name, weight in (("without", 0.0), ("with", COLOUR_WEIGHT)):
        x = compose(feats, colour, weight)
        proj, cents = fit_ranking(x, labels, train_idx, n_classes)
        top1[name], _ = heldout_top1(
            PrototypeTable.from_float(cents, "fp32"), proj.apply(x[eval_idx]), labels[eval_idx]
        )
        report[f"top1_{name}"] = round(top1[name], 4)
    # One held-out image's worth of gain is not evidence; colour must win by more than that.
    used = setting == "on" or top1["with"] > top1["without"] + 1.0 / len(eval_idx)
    report["used"] = used
    report["weight"] = COLOUR_WEIGHT if used else 0.0
    log.info(
        "colour descriptor: held-out top-1 %.1f%% with, %.1f%% without -> %s",
        100 * top1["with"], 100 * top1["without"], "used" if used else "not used",
    )  # fmt: skip
    return (COLOUR_WEIGHT if used else 0.0), report


@dataclass(frozen=True)
class HeadFeatures:
    """The catalogue as one model variant embeds it, and what the head reads of it."""

    embeddings: np.ndarray  # the backbone's output, one row per catalogue image
    head_input: np.ndarray  # the embeddings, followed by the weighted colour descriptors when the head reads colour
    colour: np.ndarray | None  # colour descriptors at this variant's input size (None: not computed)
    colour_weight: float
    colour_report: dict[str, Any]  # the colour decision and its evidence, for the manifest's head section
    split: tuple[np.ndarray, np.ndarray]  # (held-in, held-out) image indices every variant is judged on
    # A fine-tuned build: the same variant made from the calibration model, which every choice is made on
    # (its split holds out only photos it never trained on), the file it was embedded with, and its holdout.
    twin: HeadFeatures | None = None
    twin_model: Path | None = None
    holdout: HoldoutPlan | None = None

    @property
    def judged(self) -> HeadFeatures:
        """The features choices are made on: the calibration twin's when there is one."""
        return self.twin if self.twin is not None else self


def embed_for_head(
    model_path: Path,
    decoded: cat.DecodedCatalogue,
    size: int,
    profile: DeviceProfile,
    embedding_output: str,
    seed: int,
    *,
    reference: HeadFeatures | None = None,
    colour: np.ndarray | None = None,
    split: tuple[np.ndarray, np.ndarray] | None = None,
) -> HeadFeatures:
    """Embed the catalogue with one model variant and compose the head's input.

    Without ``reference`` this decides the held-out split and whether the head reads colour, on these
    embeddings (edge-build decides on the fp32 model at the first input size, as edge-check does); with it,
    both decisions are the reference's, so every variant is judged on the same images and the same input.
    ``colour``: the catalogue's colour descriptors at ``size`` when the caller already has them. ``split``: the
    held-out split to use instead of clusters of these embeddings (a calibration model's unseen photos).
    """
    labels = decoded.labels
    feats = embed_catalogue(model_path, decoded, size, profile.backend.threads, embedding_output)
    if reference is None:
        if colour is None and profile.head.colour != "off":
            colour = catalogue_colour(decoded, size)
        split = split if split is not None else heldout_split(feats, labels, seed)
        n_classes = len(decoded.catalogue.skus)
        weight, report = choose_colour(profile.head.colour, feats, colour, labels, split[0], split[1], n_classes)
    else:
        split, weight, report = reference.split, reference.colour_weight, reference.colour_report
        if colour is None and weight > 0:
            colour = catalogue_colour(decoded, size)
    return HeadFeatures(feats, compose(feats, colour, weight), colour, weight, report, split)


def head_settings(
    profile: DeviceProfile, *, table_precision: Precision, footprint_mib: float, colour_weight: float, seed: int
) -> FitSettings:
    """The head's fit settings from the profile. The OOD gate may use what is left under the headroom limit
    once the process holds ``footprint_mib`` (the measured variant, without the head)."""
    r = profile.routing
    limit_mib = float(profile.device.memory_budget_mib) * (1.0 - profile.device.min_headroom)
    return FitSettings(
        accept_precision=r.accept_precision,
        accept_confidence=r.accept_confidence,
        ood_keep=r.ood_keep,
        verify_band=r.verify_band,
        table_precision=table_precision,
        ood_memory_limit_bytes=int(max(0.0, limit_mib - footprint_mib) * MIB),
        seed=seed,
        colour_weight=colour_weight,
        max_projection_dim=profile.head.max_projection_dim,
    )


@dataclass(frozen=True)
class FittedHead:
    """The recognition head, its report (the manifest's head section) and the catalogue features it was fitted on."""

    head: Head
    report: dict[str, Any]
    features: HeadFeatures


def fit_catalogue_head(
    model_path: Path,
    decoded: cat.DecodedCatalogue,
    size: int,
    profile: DeviceProfile,
    *,
    embedding_output: str,
    seed: int,
    table_precision: Precision,
    footprint_mib: float,
    clip_report: dict[str, Any],
    features: HeadFeatures | None = None,
) -> FittedHead:
    """Embed the catalogue with one model variant (+ colour, + augmented views) and fit the head with the
    profile's settings: the one head-fitting path of edge-build and edge-check.

    ``features``: this variant's ``embed_for_head`` result when the caller has it already (edge-build embedded
    every variant to rank it), so the catalogue is not embedded twice. ``footprint_mib`` is the measured
    process without the head (see ``head_settings``); ``clip_report`` is recorded in the head report.
    """
    if features is None:
        features = embed_for_head(model_path, decoded, size, profile, embedding_output, seed)
    views, threads = profile.head.augment_views, profile.backend.threads
    aug_emb, aug_source = embed_views(
        model_path, decoded, size, threads, embedding_output, views, seed, features.colour_weight
    )
    calibration = None
    if features.twin is not None and features.twin_model is not None and features.holdout is not None:
        # Every choice on the calibration model's embeddings of what it never saw (head.fit.Calibration).
        twin_aug, twin_source = embed_views(
            features.twin_model, decoded, size, threads, embedding_output, views, seed, features.colour_weight
        )
        calibration = Calibration(
            embeddings=features.twin.head_input,
            unseen=features.holdout.unseen,
            new_classes=features.holdout.new_classes,
            augmented=twin_aug,
            aug_source=twin_source,
        )
    settings = head_settings(
        profile,
        table_precision=table_precision,
        footprint_mib=footprint_mib,
        colour_weight=features.colour_weight,
        seed=seed,
    )
    log.info("fitting the recognition head (projection, calibration, OOD gate, thresholds)")
    skus = list(decoded.catalogue.skus)
    head, report = fit_head(
        features.head_input, decoded.labels, skus, settings, aug_emb, aug_source, calibration=calibration
    )
    report["colour"] = features.colour_report
    report["activation_clip"] = clip_report
    return FittedHead(head, report, features)


def twin_features(
    twin: CalibrationTwin,
    model_path: Path,
    inputs: BuildInputs,
    profile: DeviceProfile,
    size: int,
    seed: int,
    work: Path,
) -> HeadFeatures:
    """The fp32 model at ``size`` (``model_path``) embedded with its calibration twin beside it: what
    ``fit_catalogue_head`` needs to calibrate a fine-tuned head (edge-check; edge-build does this per variant)."""
    twin_path = work / f"calibration-fp32-{size}.onnx"
    onnx.save(make_variant(twin.model, "fp32", size), str(twin_path))
    output = inputs.embedding_output
    judged = embed_for_head(twin_path, inputs.decoded, size, profile, output, seed, split=twin.plan.split())
    shipped = embed_for_head(model_path, inputs.decoded, size, profile, output, seed, reference=judged)
    return replace(shipped, twin=judged, twin_model=twin_path, holdout=twin.plan)
