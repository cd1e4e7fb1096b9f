"""edge-build, top to bottom: profile -> inputs -> backbone -> variants -> choose -> head -> readiness -> manifest
-> bundle.

Each step is a public function of its room (``inputs``, ``embedding``, ``variants``, ``manifest``, ``readiness``);
this module only passes their results along. edge-check (``check.py``) runs the same steps up to the readiness
checklist, with the fp32 model at the first input size instead of a chosen variant.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_runtime.builder.embedding import FittedHead, clip_backbone, fit_catalogue_head
from edge_runtime.builder.finetune import maybe_finetune, should_finetune
from edge_runtime.builder.footprint import MIB
from edge_runtime.builder.holdout import CalibrationTwin
from edge_runtime.builder.inputs import BuildInputs, default_cache_dir, load_inputs, measurement_plan
from edge_runtime.builder.manifest import build_manifest, build_report, build_summary
from edge_runtime.builder.readiness import ReadinessReport, run_readiness, write_report
from edge_runtime.builder.variants import choose_variant, make_variants
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
    write_bundle,
)
from edge_runtime.errors import BudgetError, ReadinessError
from edge_runtime.profile import DeviceProfile, load_profile
from edge_runtime.types import Candidate, Footprint, SkuInfo

log = logging.getLogger(__name__)


@dataclass
class BuildOptions:
    """What to build: ``edge-build``'s options. Only ``profile`` and ``out`` are required; the rest default to
    the demo catalogue, the default backbone, seed 0 and 30 timed runs per variant."""

    profile: str  # a profile name in device_profiles/ or a path to a .toml
    out: Path  # bundle/, bundle.tar.gz and (while building) .work/ are written here
    # One catalogue or several (merged: today's plus edge-review's delta); None: the generated demo catalogue.
    catalogue: Path | list[Path] | None = None
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
    """What ``run_build`` made: the written bundle, the chosen candidate among all that were measured, the
    resolved profile and the shipped footprint (the chosen variant with the fitted head)."""

    bundle: Bundle
    chosen: Candidate
    candidates: list[Candidate]
    profile: DeviceProfile
    footprint: Footprint

    def summary(self) -> dict[str, Any]:
        """The build in a few figures: what ``edge-build --json`` prints."""
        return build_summary(self.bundle, self.chosen, self.profile, self.footprint)


def run_build(opts: BuildOptions) -> BuildResult:
    """Build a verified bundle for ``opts.profile``: every variant the profile allows is made and measured,
    the best that fits the memory budget (with headroom) and the latency ceiling is chosen, the recognition
    head is fitted with it, the readiness checklist runs, and the bundle with its manifest is written.

    Raises ``UsageError`` (profile, backend), ``InputError`` subclasses (catalogue, model), ``BudgetError``
    (nothing fits) and, with ``opts.strict``, ``ReadinessError`` before any bundle is written.
    """
    t_start = time.perf_counter()
    profile = load_profile(opts.profile)
    should_finetune(profile.train, default_backbone=opts.model is None)  # a required fine-tune fails before any work
    inputs = load_inputs(
        profile,
        catalogue=opts.catalogue,
        model=opts.model,
        cache_dir=opts.cache_dir,
        seed=opts.seed,
        sizes=profile.backend.input_sizes,
    )
    work = opts.out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    # The backbone every variant is made from: fine-tuned on the catalogue (with the [train] extra), clipped.
    prepared = prepare_backbone(
        inputs, profile, opts.seed, work, default_backbone=opts.model is None, cache_dir=opts.cache_dir
    )
    plan = measurement_plan(profile)
    variants = make_variants(
        prepared.model, inputs, profile, plan, work, runs=opts.runs, seed=opts.seed, twin=prepared.twin
    )
    chosen = choose_variant(variants)

    # The head replaces the ranking table: fitted on every catalogue image with the chosen variant.
    model = chosen.spec.model
    fitted = fit_catalogue_head(
        variants.files[model],
        inputs.decoded,
        model.input_size,
        profile,
        embedding_output=inputs.embedding_output,
        seed=opts.seed,
        table_precision=chosen.spec.table_precision,
        footprint_mib=chosen.footprint.total_mib,
        clip_report=prepared.clip_report,
        features=variants.features[model],
    )
    footprint = shipped_footprint(chosen, fitted, profile)
    readiness = check_readiness(
        profile,
        fitted,
        inputs.labels,
        inputs.skus,
        footprint.total_mib,
        history=opts.history,
        previous_bundle=opts.previous_bundle,
        seed=opts.seed,
        strict=opts.strict,
        finetune=prepared.finetune_report,
    )
    model_bytes = variants.files[model].read_bytes()
    manifest = build_manifest(
        profile,
        inputs,
        variants,
        chosen,
        fitted,
        footprint,
        plan,
        readiness,
        model_bytes=model_bytes,
        clip_report=prepared.clip_report,
        finetune_report=prepared.finetune_report,
        default_backbone=opts.model is None,
    )
    members = {
        MODEL: model_bytes,
        PROTOTYPES: npz_bytes(fitted.head.to_arrays()),
        LABELS: json_bytes(labels_doc(inputs.skus)),
        HEAD: json_bytes(fitted.head.to_json()),
        PROFILE: json_bytes(profile.model_dump(mode="json")),
        "report/build_report.md": build_report(profile, manifest, variants, chosen).encode("utf-8"),
        **readiness_members(readiness, work / "readiness"),
    }
    bundle = write_bundle(opts.out, members, manifest, signing_key=opts.signing_key)
    shutil.rmtree(work, ignore_errors=True)
    log.info("bundle written to %s in %.1f s", bundle.root, time.perf_counter() - t_start)
    return BuildResult(
        bundle=bundle, chosen=chosen, candidates=variants.candidates, profile=profile, footprint=footprint
    )


def labels_doc(skus: list[SkuInfo]) -> list[dict[str, Any]]:
    """labels.json: every SKU with its class index, name and group."""
    return [{"index": i, "sku": s.code, "name": s.name, "group": s.group} for i, s in enumerate(skus)]


@dataclass(frozen=True)
class PreparedBackbone:
    """What every variant is made from, and the records of how it got there."""

    model: onnx.ModelProto  # fine-tuned (when it ran) and clipped
    clip_report: dict[str, Any]
    finetune_report: dict[str, Any]
    twin: CalibrationTwin | None = None  # a fine-tuned build's calibration model, clipped the same way


def prepare_backbone(
    inputs: BuildInputs,
    profile: DeviceProfile,
    seed: int,
    work: Path,
    *,
    default_backbone: bool,
    cache_dir: Path,
) -> PreparedBackbone:
    """The backbone every variant is made from: fine-tuned on the catalogue when the profile and the host allow
    it (``finetune.maybe_finetune``), then its pooled head activations clipped at the profile's percentile of
    the catalogue's. edge-build and edge-check both start from this, so both judge the model that ships.
    """
    b = profile.backend
    finetuned, finetune_report = maybe_finetune(
        inputs, profile, default_backbone=default_backbone, seed=seed, cache_dir=cache_dir, work=work
    )
    backbone = finetuned.backbone if finetuned is not None else inputs.backbone

    def clip(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
        return clip_backbone(
            model,
            inputs.embedding_output,
            profile.head.activation_clip_percentile,
            inputs.decoded,
            b.input_sizes[0],
            inputs.calibration_index(b.calibration_images, seed),
            b.threads,
            work,
        )

    model, clip_report = clip(backbone)
    twin = None
    if finetuned is not None:
        # The calibration model is clipped at its own catalogue percentile, as the shipped one is at its own.
        twin = CalibrationTwin(clip(finetuned.calibration)[0], finetuned.plan)
    return PreparedBackbone(model, clip_report, finetune_report, twin)


def shipped_footprint(chosen: Candidate, fitted: FittedHead, profile: DeviceProfile) -> Footprint:
    """The chosen variant's footprint with the fitted head in place of the ranking table; ``BudgetError`` when
    the head brings it over the budget less the minimum headroom."""
    limit_mib = float(profile.device.memory_budget_mib) * (1.0 - profile.device.min_headroom)
    footprint = replace(chosen.footprint, table_mib=fitted.head.nbytes / MIB)
    if footprint.total_mib > limit_mib:
        raise BudgetError(
            f"the fitted head brings {chosen.spec.name} to {footprint.total_mib:.1f} MiB, over {limit_mib:.1f} MiB",
            hint="raise device.memory_budget_mib or allow int8 tables",
        )
    return footprint


def check_readiness(
    profile: DeviceProfile,
    fitted: FittedHead,
    labels: np.ndarray,
    skus: list[SkuInfo],
    footprint_mib: float,
    *,
    history: Path | None,
    previous_bundle: Path | None,
    seed: int,
    strict: bool,
    finetune: dict[str, Any] | None = None,
) -> ReadinessReport:
    """The seven-check readiness checklist on the fitted head; under ``strict`` a failing check stops the build
    before any bundle is written. ``history`` (CSV) or ``previous_bundle``'s manifest give the change rate."""
    previous = None
    if previous_bundle is not None:
        previous = load_bundle(previous_bundle).manifest
    log.info("running the readiness checklist")
    report = run_readiness(
        embeddings=fitted.features.judged.head_input,  # a fine-tuned build: its calibration model's
        labels=labels,
        skus=skus,
        head=fitted.head,
        head_report=fitted.report,
        footprint_mib=footprint_mib,
        budget_mib=float(profile.device.memory_budget_mib),
        profile=profile,
        history=history,
        previous_manifest=previous,
        seed=seed,
        finetune=finetune,
    )
    for check in report.checks:
        log.info("  readiness %s %-28s %s", check.status.upper(), check.name, check.detail[:100])
    if report.failed and strict:
        names = ", ".join(c.name for c in report.failed)
        raise ReadinessError(
            f"readiness checklist failed ({names}); no bundle written",
            hint="see the checks above, or run edge-check --out DIR for the full report; without --strict the "
            "bundle is written and the failures are recorded in it",
        )
    return report


def readiness_members(report: ReadinessReport, out_dir: Path) -> dict[str, bytes]:
    """readiness.json, readiness.md and the plots, as bundle members under report/."""
    written = write_report(report, out_dir)
    return {f"report/{p.relative_to(out_dir).as_posix()}": p.read_bytes() for p in written if p.is_file()}
