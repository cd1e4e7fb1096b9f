"""The fine-tuning step of a build: whether it runs, on what, and what it hands on (no torch here).

With the ``[train]`` extra installed (torch, packaging host only) and ``[train] enabled`` on or ``auto``, the
default backbone's last stages are fine-tuned on the catalogue (``builder.train``), twice: a calibration model
that never sees a share of the SKUs and one look-alike cluster of every other SKU, and the model that ships.
Both leave as ONNX with the project's own exporter, so everything after this step (activation clip, variants,
head, readiness, bundle) is the frozen path's code on other weights. Without torch the build goes on with the
frozen backbone and says in one line which extra would fine-tune; a profile that requires fine-tuning fails
instead (exit 2). Custom ``--model`` backbones are never fine-tuned (only the default has a torch twin).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_runtime.builder.backbone import build_efficientnet_lite0, default_checkpoint_path, read_legacy_checkpoint
from edge_runtime.builder.embedding import embed_catalogue
from edge_runtime.builder.holdout import HoldoutPlan, holdout_plan
from edge_runtime.builder.inputs import BuildInputs
from edge_runtime.builder.quantize import make_variant
from edge_runtime.builder.ranking import fit_ranking
from edge_runtime.bundle import sha256_file
from edge_runtime.errors import UsageError
from edge_runtime.head.ood import detection_at_keep
from edge_runtime.profile import DeviceProfile, Train

log = logging.getLogger(__name__)

TRAIN_EXTRA_HINT = "pip install 'edge_runtime[train]' (torch, on the packaging host only)"


@dataclass(frozen=True)
class Finetuned:
    """The fine-tuned backbone that ships, its calibration twin, what the twin never saw, and the record."""

    backbone: onnx.ModelProto
    calibration: onnx.ModelProto
    plan: HoldoutPlan
    report: dict[str, Any]


def torch_available() -> bool:
    """Whether the ``[train]`` extra's torch is importable (checked without importing it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # an import hook that refuses torch, or a broken half-installed one
        return False


def should_finetune(train: Train, default_backbone: bool) -> tuple[bool, str]:
    """(fine-tune?, why) for a profile's ``[train]`` table; ``UsageError`` when it is required but impossible."""
    if train.enabled is False:
        return False, "off in the profile ([train] enabled = false)"
    if not default_backbone:
        if train.enabled is True:
            raise UsageError(
                "the profile requires fine-tuning ([train] enabled = true), which needs the default backbone",
                hint='drop --model, or set [train] enabled = "auto" or false',
            )
        return False, "a custom --model backbone is used as it is (only the default backbone is fine-tuned)"
    if not torch_available():
        if train.enabled is True:
            raise UsageError(
                "the profile requires fine-tuning ([train] enabled = true) but torch is not installed",
                hint=TRAIN_EXTRA_HINT,
            )
        return False, f"torch is not installed: {TRAIN_EXTRA_HINT} fine-tunes the backbone on the catalogue"
    return True, "on" if train.enabled is True else "auto: torch is installed"


def catalogue_digest(inputs: BuildInputs) -> str:
    """sha256 over every kept image's bytes and its SKU: the catalogue part of the fine-tune cache key."""
    digest = hashlib.sha256()
    for item in inputs.decoded.catalogue.items:
        digest.update(f"{item.sku}\0{sha256_file(item.image)}\n".encode())
    return digest.hexdigest()


def maybe_finetune(
    inputs: BuildInputs,
    profile: DeviceProfile,
    *,
    default_backbone: bool,
    seed: int,
    cache_dir: Path,
    work: Path,
) -> tuple[Finetuned | None, dict[str, Any]]:
    """Fine-tune when the profile and the host allow it: (the models, or None, and the manifest's record)."""
    train = profile.train
    run, why = should_finetune(train, default_backbone)
    if not run:
        log.info("fine-tuning: %s", why)
        return None, {"enabled": False, "why": why}
    # Imported here: the train room needs torch, which the frozen path never loads.
    from edge_runtime.builder.train.pipeline import train_pair
    from edge_runtime.builder.train.recipe import Recipe

    size = profile.backend.input_sizes[0]
    recipe = Recipe(
        first_trained_stage=train.first_trained_stage,
        views=train.views,
        epochs=train.epochs,
        batch=train.batch_size,
        lr=train.learning_rate,
        weight_decay=train.weight_decay,
        label_smoothing=train.label_smoothing,
        batch_norm=train.batch_norm,
        objective=train.objective,
        seed=seed,
    )
    n_classes = len(inputs.skus)
    frozen_path = work / f"model-frozen-{size}.onnx"
    onnx.save(make_variant(inputs.backbone, "fp32", size), str(frozen_path))
    frozen = embed_catalogue(frozen_path, inputs.decoded, size, profile.backend.threads, inputs.embedding_output)
    plan = holdout_plan(frozen, inputs.labels, n_classes, train.calibration_holdout, seed)
    key = hashlib.sha256(
        "\n".join(
            [catalogue_digest(inputs), sha256_file(inputs.backbone_path), recipe.digest(), plan.digest(), str(size)]
        ).encode()
    ).hexdigest()[:24]
    checkpoint = read_legacy_checkpoint(default_checkpoint_path())
    pair = train_pair(
        checkpoint,
        inputs.backbone,
        [item.image for item in inputs.decoded.catalogue.items],
        inputs.decoded.pixels[size],
        inputs.labels,
        n_classes,
        plan,
        recipe,
        size=size,
        device=train.device,
        threads=profile.backend.threads,
        cache_path=cache_dir / "finetune" / key,
    )
    record: dict[str, Any] = {
        "enabled": True,
        "why": why,
        "recipe": recipe.as_dict(),
        "recipe_sha256": recipe.digest(),
        "cache_key": key,
        "input_size": size,
        "calibration_holdout": {
            "skus": [inputs.skus[i].code for i in plan.new_classes],
            "unseen_photos": int(plan.unseen.sum()),
        },
        **pair.record,
    }
    calibration = build_efficientnet_lite0(pair.calibration, size)
    tuned_path = work / f"calibration-check-{size}.onnx"
    onnx.save(calibration, str(tuned_path))
    tuned = embed_catalogue(tuned_path, inputs.decoded, size, profile.backend.threads, inputs.embedding_output)
    record["heldout"] = {
        "frozen": holdout_figures(frozen, inputs.labels, plan, profile.routing.ood_keep),
        "finetuned": holdout_figures(tuned, inputs.labels, plan, profile.routing.ood_keep),
        "rule": "the calibration model against the frozen backbone on the same held-out photos and SKUs",
    }
    f, t = record["heldout"]["frozen"], record["heldout"]["finetuned"]
    log.info(
        "fine-tuning on held-out photos: top-1 %.1f%% -> %.1f%%, new products caught %.1f%% -> %.1f%%",
        100 * f["top1"], 100 * t["top1"], 100 * f["ood_detection"], 100 * t["ood_detection"],
    )  # fmt: skip
    if t["top1"] < f["top1"] and t["ood_detection"] < f["ood_detection"] and train.enabled is not True:
        # Worse at both jobs on photos it never saw: the frozen backbone ships (a tiny or odd catalogue).
        record["kept"] = False
        record["why_not_kept"] = "worse than the frozen backbone on held-out top-1 and new-product detection"
        log.warning("fine-tuning: %s; the frozen backbone is used", record["why_not_kept"])
        return None, record
    record["kept"] = True
    finetuned = Finetuned(build_efficientnet_lite0(pair.shipped, size), calibration, plan, record)
    return finetuned, record


def holdout_figures(emb: np.ndarray, labels: np.ndarray, plan: HoldoutPlan, keep: float) -> dict[str, float]:
    """Held-out top-1 (the variants' ranking measure: shrinkage LDA, nearest class mean, fitted on the photos
    the calibration model trained on) and new-product detection at ``keep`` known retention (max cosine)."""
    trained = ~plan.unseen & ~np.isin(labels, plan.new_classes)
    known = np.setdiff1d(np.unique(labels), plan.new_classes)
    compact = np.full(int(labels.max()) + 1, -1)
    compact[known] = np.arange(len(known))
    proj, cents = fit_ranking(emb, compact[labels], np.flatnonzero(trained), len(known))
    unseen = np.flatnonzero(plan.unseen)
    new = np.flatnonzero(np.isin(labels, plan.new_classes))
    ck = proj.apply(emb[unseen]) @ cents.T
    cu = proj.apply(emb[new]) @ cents.T
    top1 = float(np.mean(ck.argmax(1) == compact[labels[unseen]])) if len(unseen) else float("nan")
    detection, _ = detection_at_keep(-ck.max(1), -cu.max(1), keep) if len(unseen) else (float("nan"), 0.0)
    return {"top1": round(top1, 4), "ood_detection": round(detection, 4), "photos": len(unseen), "new": len(new)}


def finetune_lines(ft: dict[str, Any]) -> list[str]:
    """The fine-tuning record as report lines (build report and readiness report)."""
    if not ft.get("enabled"):
        return [f"- not fine-tuned: {ft.get('why', 'not asked')}"]
    r = ft["recipe"]
    lines = [
        f"- recipe {ft['recipe_sha256'][:12]}: stages {r['first_trained_stage']}.. trained, {r['epochs']} epochs, "
        f"{r['views']} views per photo, {r['objective']} objective, AdamW lr {r['lr']}, label smoothing "
        f"{r['label_smoothing']}, batch norm {r['batch_norm']}",
        f"- on {ft.get('device', '?')} in {ft.get('seconds', 0):.0f} s (cache {ft.get('cache', '?')}); a calibration "
        f"model without {len(ft['calibration_holdout']['skus'])} SKUs and {ft['calibration_holdout']['unseen_photos']}"
        " photos of the others makes the head's choices",
    ]
    held = ft.get("heldout")
    if held:
        f, t = held["frozen"], held["finetuned"]
        lines.append(
            f"- on those held-out photos: top-1 {f['top1']:.1%} frozen, {t['top1']:.1%} fine-tuned; new products "
            f"caught at 95 % known kept {f['ood_detection']:.1%} frozen, {t['ood_detection']:.1%} fine-tuned"
        )
    if ft.get("kept") is False:
        lines.append(f"- **not kept**: {ft.get('why_not_kept')}; the frozen backbone ships")
    return lines
