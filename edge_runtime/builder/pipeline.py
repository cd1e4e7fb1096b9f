"""edge-build, top to bottom: profile -> catalogue -> variants -> measure -> choose -> bundle."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_runtime import __version__
from edge_runtime.backends import create_backend, first_available
from edge_runtime.builder import catalogue as cat
from edge_runtime.builder.augment import augment_batch
from edge_runtime.builder.backbone import (
    BACKBONE_GRAPH_VERSION,
    EMBEDDING_OUTPUT,
    MULTI_EMBEDDING_OUTPUT,
    can_clip_head,
    clip_head,
)
from edge_runtime.builder.choose import choose, format_table, violations
from edge_runtime.builder.footprint import FRAME_QUEUE_DEPTH, MIB, measure_in_subprocess, tensor_queue_bytes
from edge_runtime.builder.quantize import int8_scheme_for, load_model, make_variant
from edge_runtime.builder.readiness import ReadinessReport, run_readiness, write_report
from edge_runtime.bundle import (
    HEAD,
    LABELS,
    MODEL,
    PROFILE,
    PROTOTYPES,
    Bundle,
    json_bytes,
    load_bundle,
    npz_bytes,
    sha256_bytes,
    sha256_file,
    write_bundle,
)
from edge_runtime.errors import BudgetError, ReadinessError, UsageError
from edge_runtime.features import COLOUR_BINS, COLOUR_DIM, COLOUR_WEIGHT, colour_descriptor, compose, head_input
from edge_runtime.head.fit import FitSettings, cluster_folds, fit_head
from edge_runtime.head.model import Head
from edge_runtime.head.projection import Projection, fit_lda
from edge_runtime.head.prototypes import PrototypeTable, class_centroids, l2_normalise, nearest
from edge_runtime.profile import DeviceProfile, load_profile
from edge_runtime.types import Accuracy, Candidate, Footprint, ModelVariant, SkuInfo, VariantSpec

log = logging.getLogger(__name__)

HOLDOUT_FOLDS = 4
RANKING_SHRINKAGE = 0.2
# Frames the runtime keeps queued at the camera resolution; counted in the measured footprint.
EMBED_BATCH = 16


def default_cache_dir() -> Path:
    return Path(os.environ.get("EDGE_CACHE_DIR", Path.home() / ".cache" / "edge_runtime"))


@dataclass
class BuildOptions:
    profile: str
    out: Path
    catalogue: Path | None = None  # None: the generated demo catalogue
    model: Path | None = None  # None: the default EfficientNet-Lite0 backbone
    cache_dir: Path = field(default_factory=default_cache_dir)
    seed: int = 0
    runs: int = 30
    signing_key: Path | None = None  # Ed25519 private key (PEM): the bundle gets signature.ed25519
    history: Path | None = None  # catalogue change history CSV for the readiness checklist
    previous_bundle: Path | None = None  # its manifest gives the change rate when there is no history
    strict: bool = False  # refuse to write a bundle whose readiness checklist fails


@dataclass
class BuildResult:
    bundle: Bundle
    chosen: Candidate
    candidates: list[Candidate]
    profile: DeviceProfile
    footprint: Footprint

    def summary(self) -> dict[str, Any]:
        m = self.bundle.manifest
        return {
            "bundle": str(self.bundle.root),
            "tarball": str(self.bundle.root.parent / "bundle.tar.gz"),
            "bundle_id": self.bundle.bundle_id,
            "profile": self.profile.name,
            "variant": self.chosen.spec.name,
            "footprint_mib": round(self.footprint.total_mib, 2),
            "budget_mib": self.profile.device.memory_budget_mib,
            "headroom": m["headroom"],
            "latency_ms": round(self.chosen.measurement.latency_ms_p50, 3),
            "accuracy": round(self.chosen.accuracy.top1, 4),
            "ood_method": m["head"]["ood"]["chosen"],
            "known_auto_accepted": m["head"]["routing"]["known_auto_accepted"],
            "host_estimate": self.chosen.host_estimate,
            "skus": m["catalogue"]["skus"],
        }


def resolve_catalogue(opts: BuildOptions) -> Path:
    if opts.catalogue is not None:
        return opts.catalogue
    from edge_runtime.demo import generate_demo_catalogue

    target = opts.cache_dir / "demo-catalogue"
    log.info("no --catalogue given: using the generated demo catalogue in %s", target)
    return generate_demo_catalogue(target, seed=opts.seed, unknown_dir=opts.cache_dir / "demo-unknown")


def resolve_backbone(opts: BuildOptions) -> Path:
    if opts.model is not None:
        return opts.model
    from edge_runtime.builder.backbone import default_checkpoint_path, export_default_backbone

    ckpt = default_checkpoint_path()
    # The graph version is in the name so a cache written by an older exporter is never reused.
    name = f"efficientnet_lite0-{sha256_file(ckpt)[:12]}-g{BACKBONE_GRAPH_VERSION}.onnx"
    target = opts.cache_dir / "backbone" / name
    if not target.is_file():
        log.info("exporting the default backbone (EfficientNet-Lite0) to %s", target)
        target.parent.mkdir(parents=True, exist_ok=True)
        export_default_backbone(target)
    return target


def load_backbone(opts: BuildOptions, embedding_output: str) -> tuple[Path, onnx.ModelProto, str]:
    """The backbone to build with (``--model`` or the default) and the name of its embedding output.

    ``auto`` takes the multi-layer embedding when the backbone has one (the default backbone does), else
    ``embedding``; any other name must be an output of the model.
    """
    path = resolve_backbone(opts)
    model = load_model(path)
    outputs = [o.name for o in model.graph.output]
    if embedding_output == "auto":
        embedding_output = MULTI_EMBEDDING_OUTPUT if MULTI_EMBEDDING_OUTPUT in outputs else EMBEDDING_OUTPUT
    if embedding_output not in outputs:
        raise UsageError(
            f"{path}: no output named {embedding_output!r} (outputs: {', '.join(outputs)})",
            hint="set backend.embedding_output in the profile",
        )
    return path, model, embedding_output


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


def _embed(
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
        proj = _ranking_projection(x[train_idx], labels[train_idx])
        cents = class_centroids(proj.apply(x[train_idx]), labels[train_idx], n_classes)
        top1[name], _ = _top1(PrototypeTable.from_float(cents, "fp32"), proj.apply(x[eval_idx]), labels[eval_idx])
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


def _embed_views(
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
    emb = _embed(model_path, decoded, size, threads, output, views, np.random.default_rng(seed + 7919), colour_weight)
    log.info("embedded %d augmented views of %d images in %.1f s", views * n, n, time.perf_counter() - t0)
    return emb, np.tile(np.arange(n), views)


def regions_per_frame(profile: DeviceProfile) -> int:
    """The most regions edge-run embeds per frame with this profile: what its tensor queue is sized by."""
    r = profile.regions
    if r.mode == "full":
        return 1
    if r.mode == "fixed":
        return min(len(r.fixed), r.max_regions)
    return r.max_regions


def _ranking_projection(feats: np.ndarray, labels: np.ndarray) -> Projection:
    """The projection used to rank variants: the head's LDA at a fixed, middle shrinkage (the full head
    chooses its own by cross-validation, which is too slow to repeat for every variant)."""
    if len(np.unique(labels)) < 3:
        return Projection.identity(feats.shape[1])
    return fit_lda(feats, labels, RANKING_SHRINKAGE)


def _top1(table: PrototypeTable, feats: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    if len(labels) == 0:
        return float("nan"), np.zeros(0, dtype=np.int64)
    idx, _ = nearest(table, feats, k=1)
    pred = idx[:, 0]
    return float((pred == labels).mean()), pred


def run_build(opts: BuildOptions) -> BuildResult:
    t_start = time.perf_counter()
    profile = load_profile(opts.profile)
    b = profile.backend
    catalogue_path = resolve_catalogue(opts)
    backbone_path, backbone, embedding_output = load_backbone(opts, b.embedding_output)

    catalogue = cat.load_catalogue(catalogue_path)
    log.info("catalogue %s: %d SKUs, %d images", catalogue_path, len(catalogue.skus), len(catalogue.items))
    decoded = cat.decode_catalogue(catalogue, list(b.input_sizes), progress=True)
    if decoded.catalogue.skipped:
        log.warning("%d catalogue image(s) skipped as unreadable", len(decoded.catalogue.skipped))
    labels = decoded.labels
    n_classes = len(decoded.catalogue.skus)
    # Calibration only sets activation ranges, so it may draw on every image.
    calib_idx = cat.stratified_sample(labels, b.calibration_images, opts.seed)
    split: tuple[np.ndarray, np.ndarray] | None = None  # (train, eval), from the first fp32 embedding
    work = opts.out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    backbone, clip_report = clip_backbone(
        backbone, embedding_output, profile.head.activation_clip_percentile, decoded, b.input_sizes[0], calib_idx,
        b.threads, work,
    )  # fmt: skip

    backend_here, host_estimate, estimate_reason = measurement_backend(profile)
    if host_estimate:
        log.warning("figures are host estimates (%s); confirm on the device with edge-bench", estimate_reason)
    camera = profile.cameras[0]
    frame_bytes = FRAME_QUEUE_DEPTH * camera.width * camera.height * 3

    scheme = int8_scheme_for(profile.backend.prefer[0])
    candidates: list[Candidate] = []
    variant_files: dict[ModelVariant, Path] = {}
    full_feats: dict[ModelVariant, np.ndarray] = {}  # the head's input: embeddings (+ colour)
    precisions = list(b.precisions)
    colour_weight: float | None = None  # decided on the first fp32 embedding
    colour_report: dict[str, Any] = {}
    for size in b.input_sizes:
        fp32_feats: np.ndarray | None = None
        # Needed to decide at the first size, and at later sizes only when the decision kept it.
        wanted = profile.head.colour != "off" and (colour_weight is None or colour_weight > 0)
        colour = catalogue_colour(decoded, size) if wanted else None
        # fp32 first: every other precision is compared with it at the same input size.
        for precision in sorted(set(precisions) | {"fp32"}, key=["fp32", "fp16", "int8"].index):
            variant = ModelVariant(precision, size)  # type: ignore[arg-type]
            log.info("variant %s: preparing model", variant.name)
            t0 = time.perf_counter()
            calibration = decoded.batch(size, calib_idx) if precision == "int8" else None
            model = make_variant(backbone, precision, size, calibration, scheme)  # type: ignore[arg-type]
            path = work / f"model-{variant.name}.onnx"
            onnx.save(model, str(path))
            feats = _embed(path, decoded, size, b.threads, embedding_output)
            log.info("variant %s: embedded %d images in %.1f s", variant.name, len(feats), time.perf_counter() - t0)
            if precision == "fp32":
                fp32_feats = feats
            if split is None:
                # Held-out images are whole clusters of look-alikes, not random siblings of training images.
                fold = cluster_folds(feats, labels, HOLDOUT_FOLDS, opts.seed)
                split = (np.flatnonzero(fold != 0), np.flatnonzero(fold == 0))
            if colour_weight is None:
                colour_weight, colour_report = choose_colour(
                    profile.head.colour, feats, colour, labels, split[0], split[1], n_classes
                )
            assert fp32_feats is not None
            if precision not in precisions:
                continue  # fp32 was only the reference
            variant_files[variant] = path
            full_feats[variant] = compose(feats, colour, colour_weight)
            candidates.extend(
                _candidates_for(
                    variant,
                    path,
                    feats,
                    fp32_feats,
                    compose(fp32_feats, colour, colour_weight),
                    full_feats[variant],
                    labels,
                    split[0],
                    split[1],
                    n_classes,
                    profile,
                    backend_here,
                    host_estimate,
                    frame_bytes,
                    opts.runs,
                    embedding_output,
                )
            )

    for c in candidates:
        log.info(
            "  %s: %.1f MiB, %.2f ms, top-1 %.1f%%",
            c.spec.name,
            c.footprint.total_mib,
            c.measurement.latency_ms_p50,
            100 * c.accuracy.top1,
        )
    chosen = choose(candidates)
    log.info("chose %s", chosen.spec.name)

    skus = decoded.catalogue.skus
    budget = float(profile.device.memory_budget_mib)
    limit_mib = budget * (1.0 - profile.device.min_headroom)
    # The head replaces the ranking table: fitted on every catalogue image with the chosen variant.
    r = profile.routing
    settings = FitSettings(
        accept_precision=r.accept_precision,
        ood_keep=r.ood_keep,
        verify_band=r.verify_band,
        table_precision=chosen.spec.table_precision,
        ood_memory_limit_bytes=int(max(0.0, limit_mib - chosen.footprint.total_mib) * MIB),
        seed=opts.seed,
        colour_weight=colour_weight or 0.0,
        max_projection_dim=profile.head.max_projection_dim,
    )
    aug_emb, aug_source = _embed_views(
        variant_files[chosen.spec.model], decoded, chosen.spec.model.input_size, b.threads, embedding_output,
        profile.head.augment_views, opts.seed, colour_weight or 0.0,
    )  # fmt: skip
    log.info("fitting the recognition head (projection, calibration, OOD gate, thresholds)")
    head, head_report = fit_head(full_feats[chosen.spec.model], labels, list(skus), settings, aug_emb, aug_source)
    head_report["colour"] = colour_report
    head_report["activation_clip"] = clip_report
    footprint = replace(chosen.footprint, table_mib=head.nbytes / MIB)
    if footprint.total_mib > limit_mib:
        raise BudgetError(
            f"the fitted head brings {chosen.spec.name} to {footprint.total_mib:.1f} MiB, over {limit_mib:.1f} MiB",
            hint="raise device.memory_budget_mib or allow int8 tables",
        )
    readiness = _readiness(
        opts, profile, full_feats[chosen.spec.model], labels, list(skus), head, head_report, footprint, budget
    )
    model_bytes = variant_files[chosen.spec.model].read_bytes()
    labels_doc = [{"index": i, "sku": s.code, "name": s.name, "group": s.group} for i, s in enumerate(skus)]
    profile_doc = profile.model_dump(mode="json")
    table_text = format_table(candidates, chosen)
    manifest: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": {
            "name": profile.name,
            "sha256": profile.content_hash(),
            "files": [p.name for p in profile.source_files],
        },
        "backbone": {
            "sha256": sha256_file(backbone_path),
            "source": "default EfficientNet-Lite0" if opts.model is None else backbone_path.name,
            "embedding_output": embedding_output,
            "activation_clip": clip_report,
        },
        "model": {
            "file": MODEL,
            "sha256": sha256_bytes(model_bytes),
            "input_size": chosen.spec.model.input_size,
            "precision": chosen.spec.model.precision,
            "embedding_dim": int(full_feats[chosen.spec.model].shape[1]) - (COLOUR_DIM if colour_weight else 0),
            "int8_scheme": scheme if chosen.spec.model.precision == "int8" else None,
        },
        "variant": chosen.as_row(),
        "footprint": {
            "total_mib": round(footprint.total_mib, 2),
            "process_peak_mib": round(footprint.process_peak_mib, 2),
            "head_mib": round(footprint.table_mib, 4),
            "gpu_mib": round(footprint.gpu_mib, 2),
            "frame_queue_mib": round(frame_bytes / MIB, 2),
            "tensor_queue_mib": round(
                tensor_queue_bytes(regions_per_frame(profile), chosen.spec.model.input_size) / MIB, 2
            ),
        },
        "budget_mib": budget,
        "min_headroom": profile.device.min_headroom,
        "headroom": round(1.0 - footprint.total_mib / budget, 4),
        "accuracy": {
            "top1_heldout": round(chosen.accuracy.top1, 4),
            "n_eval": chosen.accuracy.n_eval,
            "cosine_to_fp32_mean": round(chosen.accuracy.cosine_to_fp32_mean, 5),
        },
        "measurement": {
            "backend": backend_here,
            "host_estimate": host_estimate,
            "why_estimate": estimate_reason,
            "host": f"{platform.machine()} {platform.system()} {os.cpu_count()} cpu",
            "threads": b.threads,
        },
        "catalogue": {
            "source": Path(catalogue_path).name,
            "skus": len(skus),
            "images": len(labels),
            "sku_codes": [s.code for s in skus],
            "skipped": [[p.name, why] for p, why in decoded.catalogue.skipped],
        },
        "decision_table": [c.as_row() for c in candidates],
        "head": head_report,
        "readiness": {"overall": readiness.overall, "failed": [c.id for c in readiness.failed]},
        "tool_versions": _tool_versions(),
    }
    report = _report(profile, manifest, table_text)
    members = {
        MODEL: model_bytes,
        PROTOTYPES: npz_bytes(head.to_arrays()),
        LABELS: json_bytes(labels_doc),
        HEAD: json_bytes(head.to_json()),
        PROFILE: json_bytes(profile_doc),
        "report/build_report.md": report.encode("utf-8"),
    }
    members.update(_readiness_members(readiness, work / "readiness"))
    bundle = write_bundle(opts.out, members, manifest, signing_key=opts.signing_key)
    shutil.rmtree(work, ignore_errors=True)
    log.info("bundle written to %s in %.1f s", bundle.root, time.perf_counter() - t_start)
    return BuildResult(bundle=bundle, chosen=chosen, candidates=candidates, profile=profile, footprint=footprint)


def _candidates_for(
    variant: ModelVariant,
    path: Path,
    feats: np.ndarray,
    fp32_feats: np.ndarray,
    fp32_head_feats: np.ndarray,
    head_feats: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    eval_idx: np.ndarray,
    n_classes: int,
    profile: DeviceProfile,
    backend_here: str,
    host_estimate: bool,
    frame_bytes: int,
    runs: int,
    embedding_output: str,
) -> list[Candidate]:
    b = profile.backend
    log.info("variant %s: measuring footprint and latency in a fresh process", variant.name)
    measurement = measure_in_subprocess(
        path,
        backend=backend_here,
        threads=b.threads,
        frame_bytes=frame_bytes,
        runs=runs,
        embedding_output=embedding_output,
        tensor_bytes=tensor_queue_bytes(regions_per_frame(profile), variant.input_size),
    )
    # Quantisation is judged on the embeddings alone; ranking on what the head will read.
    cos = np.sum(l2_normalise(feats) * l2_normalise(fp32_feats), axis=1)
    proj = _ranking_projection(head_feats[train_idx], labels[train_idx])
    centroids = class_centroids(proj.apply(head_feats[train_idx]), labels[train_idx], n_classes)
    ref_proj = _ranking_projection(fp32_head_feats[train_idx], labels[train_idx])
    ref_cents = class_centroids(ref_proj.apply(fp32_head_feats[train_idx]), labels[train_idx], n_classes)
    _, ref_pred = _top1(
        PrototypeTable.from_float(ref_cents, "fp32"), ref_proj.apply(fp32_head_feats[eval_idx]), labels[eval_idx]
    )
    out = []
    for tp in b.table_precisions:
        table = PrototypeTable.from_float(centroids, tp)
        top1, pred = _top1(table, proj.apply(head_feats[eval_idx]), labels[eval_idx])
        accuracy = Accuracy(
            top1=top1,
            n_eval=len(eval_idx),
            cosine_to_fp32_mean=float(cos.mean()),
            cosine_to_fp32_min=float(cos.min()),
            top1_agreement_fp32=float((pred == ref_pred).mean()) if len(pred) else float("nan"),
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
            enforce_latency=not host_estimate,
        )
        out.append(
            Candidate(
                spec=VariantSpec(variant, tp),
                footprint=footprint,
                measurement=measurement,
                accuracy=accuracy,
                model_path=path,
                host_estimate=host_estimate,
                violations=broken,
            )
        )
    return out


def _readiness(
    opts: BuildOptions,
    profile: DeviceProfile,
    feats: np.ndarray,
    labels: np.ndarray,
    skus: list[SkuInfo],
    head: Head,
    head_report: dict[str, Any],
    footprint: Footprint,
    budget: float,
) -> ReadinessReport:
    """The seven-check readiness checklist; under --strict a failing one stops the build before any bundle."""
    previous = None
    if opts.previous_bundle is not None:
        previous = load_bundle(opts.previous_bundle).manifest
    log.info("running the readiness checklist")
    report = run_readiness(
        embeddings=feats,
        labels=labels,
        skus=skus,
        head=head,
        head_report=head_report,
        footprint_mib=footprint.total_mib,
        budget_mib=budget,
        profile=profile,
        history=opts.history,
        previous_manifest=previous,
        seed=opts.seed,
    )
    for check in report.checks:
        log.info("  readiness %s %-28s %s", check.status.upper(), check.name, check.detail[:100])
    if report.failed and opts.strict:
        names = ", ".join(c.name for c in report.failed)
        raise ReadinessError(
            f"readiness checklist failed ({names}); no bundle written",
            hint="see the checks above, or run edge-check --out DIR for the full report; without --strict the "
            "bundle is written and the failures are recorded in it",
        )
    return report


def _readiness_members(report: ReadinessReport, out_dir: Path) -> dict[str, bytes]:
    """readiness.json, readiness.md and the plots, as bundle members under report/."""
    written = write_report(report, out_dir)
    return {f"report/{p.relative_to(out_dir).as_posix()}": p.read_bytes() for p in written if p.is_file()}


def _tool_versions() -> dict[str, str]:
    import cv2
    import onnxruntime

    return {
        "edge_runtime": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opencv": cv2.__version__,
    }


def _report(profile: DeviceProfile, manifest: dict[str, Any], table_text: str) -> str:
    m = manifest
    lines = [
        f"# Build report: {profile.name}",
        "",
        f"- created: {m['created']}",
        f"- catalogue: {m['catalogue']['skus']} SKUs, {m['catalogue']['images']} images "
        f"({len(m['catalogue']['skipped'])} skipped)",
        f"- chosen variant: **{m['variant']['variant']}**",
        f"- footprint: {m['footprint']['total_mib']:.1f} MiB of {m['budget_mib']:.0f} MiB "
        f"(headroom {m['headroom']:.1%}, minimum {m['min_headroom']:.0%})",
        f"- held-out top-1 (nearest centroid): {m['accuracy']['top1_heldout']:.1%} on {m['accuracy']['n_eval']} images",
        f"- measured with {m['measurement']['backend']} on {m['measurement']['host']}"
        + (f" — host estimate: {m['measurement']['why_estimate']}" if m["measurement"]["host_estimate"] else ""),
        "",
        "## Recognition head",
        "",
        *_head_lines(m["head"]),
        "",
        "## Decision table",
        "",
        "```",
        table_text,
        "```",
        "",
    ]
    return "\n".join(lines)


def _dim_text(out: dict[str, Any] | None) -> str:
    if not out:
        return ""
    text = f"; keeps {out['dim']} of {out['full_dim']} directions ({out['rule']}"
    return text + (f": {out['cv_top1']})" if "cv_top1" in out else ")")


def _head_lines(h: dict[str, Any]) -> list[str]:
    ood, rt, cal = h["ood"], h["routing"], h["calibration"]
    lines = [
        f"- projection: {h['projection']['chosen']} (cross-validated top-1 by choice: {h['projection']['cv_top1']})"
        + _dim_text(h["projection"].get("output_dim")),
        f"- out-of-fold top-1 {h['accuracy']['top1_oof']:.1%}, group top-1 {h['accuracy']['group_top1_oof']:.1%} "
        f"on {h['accuracy']['n_eval']} images (held out by clusters of look-alike images)",
        f"- calibration: temperature {cal['temperature']:.4f}, ECE {cal['ece_before']:.3f} before, "
        f"{cal['ece_after']:.3f} after (15 bins)",
        f"- OOD gate: {ood['chosen']}, threshold {ood['threshold']:.4f} keeps {ood['keep']:.0%} of known images",
        f"- accept rule for precision {rt['accept_precision_target']}: class thresholds fitted at "
        f"{rt['class_threshold_target']} (levels {rt['threshold_levels']}, {rt['never_accepted_classes']} class(es) "
        f"never auto-accepted) and an OOD accept limit {rt['accept_ood_threshold']:.4f} that keeps "
        f"{rt['accept_gate_keep']:.0%} of gated known images; cross-fitted on unseen halves: precision "
        f"{rt['accepted_precision_crossfit']} with {rt['unknown_share_assumed']:.0%} simulated new products in the "
        f"stream, {rt['known_auto_accepted_crossfit']:.1%} of known images auto-accepted",
        "",
        "| OOD method | detection at keep | AUROC | siblings | extra bytes |",
        "|---|---|---|---|---|",
    ]
    for name, row in ood["methods"].items():
        lines.append(
            f"| {name} | {row['detection']:.1%} | {row['auroc']:.3f} | {row['detection_siblings']} | "
            f"{row['extra_bytes']} |"
        )
    return lines


def summary_text(result: BuildResult) -> str:
    s = result.summary()
    est = " (host estimate: confirm with edge-bench on the device)" if s["host_estimate"] else ""
    return (
        f"edge-build {s['profile']}: {s['variant']} for {s['skus']} SKUs\n"
        f"  footprint {s['footprint_mib']:.1f} MiB of {s['budget_mib']} MiB budget, headroom {s['headroom']:.1%}\n"
        f"  latency {s['latency_ms']:.2f} ms per image{est}\n"
        f"  held-out top-1 {s['accuracy']:.1%}; OOD gate {s['ood_method']}; "
        f"{s['known_auto_accepted']:.0%} of known images auto-accepted\n"
        f"  bundle {s['bundle']}\n"
        f"  tarball {s['tarball']}\n"
        f"  bundle id {s['bundle_id']}"
    )


def dumps_summary(result: BuildResult) -> str:
    return json.dumps(result.summary(), sort_keys=True)
