"""Train the two models a fine-tuned build needs: the one that ships, and its calibration twin.

The shipped model trains on every catalogue image, so no catalogue image is held out for it, and the head's
temperature, OOD gate and accept rule must not be fitted on images it trained on (it would look far more
certain than it is on a store photo). The calibration model is trained by the same recipe without a share of
the SKUs (the simulated new products) and without one look-alike cluster of every other SKU (unseen photos
of known products); the head makes every choice on what the calibration model never saw, then takes its
prototypes from the shipped model (``head.fit.Calibration``). This is the "hold the calibration folds out of
training" option: fine-tuning inside every fold of the head's cross-validation would cost a training per fold.
Both models come from one cache of early-stage views, and both are cached by catalogue, backbone and recipe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from edge_runtime.builder.holdout import HoldoutPlan
from edge_runtime.builder.train.export import load_state, save_state
from edge_runtime.builder.train.finetune import finetune, pick_device
from edge_runtime.builder.train.model import from_state_dict, to_state_dict
from edge_runtime.builder.train.recipe import Recipe
from edge_runtime.builder.train.views import ViewCache, build_view_cache

log = logging.getLogger(__name__)


@dataclass
class TrainedPair:
    """The shipped and the calibration model's weights (checkpoint key names), and what happened."""

    shipped: dict[str, np.ndarray]
    calibration: dict[str, np.ndarray]
    record: dict[str, Any] = field(default_factory=dict)


def train_pair(
    state: dict[str, np.ndarray],
    backbone: onnx.ModelProto,
    image_paths: Sequence[Path],
    plain_pixels: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    plan: HoldoutPlan,
    recipe: Recipe,
    *,
    size: int,
    device: str,
    threads: int,
    cache_path: Path | None,
) -> TrainedPair:
    """Fine-tune the calibration model (without ``plan``'s SKUs and photos) and the shipped model (everything).

    ``state`` is the pretrained checkpoint, ``backbone`` its ONNX export (the frozen early stages run there);
    ``cache_path`` (without suffix) holds a previous result for the same inputs, which is returned as it is.
    """
    if cache_path is not None:
        cached = load_state(cache_path)
        if cached is not None:
            arrays, cached_record = cached
            shipped = {k[len("shipped/") :]: v for k, v in arrays.items() if k.startswith("shipped/")}
            calibration = {k[len("calibration/") :]: v for k, v in arrays.items() if k.startswith("calibration/")}
            log.info("fine-tuned models taken from the cache (%s)", cache_path.name)
            return TrainedPair(shipped, calibration, {**cached_record, "cache": "hit"})
    torch_device = pick_device() if device == "auto" else torch.device(device)
    t0 = time.perf_counter()
    cache = build_view_cache(
        backbone, recipe.first_trained_stage - 1, image_paths, plain_pixels, labels, recipe.views, size,
        recipe.augment, recipe.seed, threads,
    )  # fmt: skip
    views_s = time.perf_counter() - t0

    # The calibration model: SKUs renumbered to those it knows.
    known = np.setdiff1d(np.arange(n_classes), plan.new_classes)
    compact = np.full(n_classes, -1, dtype=np.int64)
    compact[known] = np.arange(len(known))
    cal_images = np.flatnonzero(~np.isin(labels, plan.new_classes) & ~plan.unseen)
    held = np.flatnonzero(plan.unseen & ~np.isin(labels, plan.new_classes))
    cal_cache = ViewCache(cache.features, compact[cache.labels], cache.source, cache.view)
    log.info(
        "fine-tuning the calibration model: %d SKUs, %d photos (%d SKUs and %d photos of the others held out)",
        len(known), len(cal_images), len(plan.new_classes), len(held),
    )  # fmt: skip
    cal_model = from_state_dict(state, n_classes=len(known))
    cal_log = finetune(cal_model, cal_cache, cal_images, len(known), recipe, heldout_images=held, device=torch_device)

    log.info("fine-tuning the shipped model: %d SKUs, %d photos", n_classes, len(labels))
    model = from_state_dict(state, n_classes=n_classes)
    ship_log = finetune(model, cache, np.arange(len(labels)), n_classes, recipe, device=torch_device)
    record: dict[str, Any] = {
        "cache": "miss",
        "device": str(torch_device),
        "torch": torch.__version__,
        "views_seconds": round(views_s, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "calibration_model": {
            "skus": len(known),
            "photos": len(cal_images),
            "held_out_skus": len(plan.new_classes),
            "held_out_photos": len(held),
            **cal_log.as_dict(),
        },
        "shipped_model": {"skus": n_classes, "photos": len(labels), **ship_log.as_dict()},
    }
    pair = TrainedPair(to_state_dict(model), to_state_dict(cal_model), record)
    if cache_path is not None:
        arrays = {f"shipped/{k}": v for k, v in pair.shipped.items()}
        arrays |= {f"calibration/{k}": v for k, v in pair.calibration.items()}
        save_state(cache_path, arrays, record)
    return pair
