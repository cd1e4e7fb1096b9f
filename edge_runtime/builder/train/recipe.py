"""The fine-tuning recipe: every setting that changes the trained weights, and its hash for the cache key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from edge_runtime.builder.train.augment import Augment

# Bumped whenever the training code changes what a recipe produces, so cached models are not reused.
TRAIN_CODE_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    first_trained_stage: int = 6  # stage 6 (320 channels) and the 1x1 head conv train
    views: int = 4  # random views per catalogue image, besides the evaluation crop
    epochs: int = 12
    batch: int = 64
    lr: float = 3e-4  # AdamW, for the tuned stages
    head_lr_scale: float = 1.0  # the classifier's learning rate relative to the stages'
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    dropout: float = 0.2  # before the classifier, as EfficientNet-Lite was trained
    warmup_epochs: float = 1.0
    batch_norm: Literal["frozen", "train"] = "frozen"
    objective: Literal["softmax", "cosface"] = "cosface"
    cos_scale: float = 16.0  # cosface: logit scale (an inverse temperature)
    cos_margin: float = 0.1  # cosface: additive margin on the true class's cosine
    # Weight of a pull toward the frozen model's multi-layer embedding of the same view (1 - cosine): keeps what
    # the ImageNet features know about products the catalogue does not have.
    distill: float = 0.0
    probe_weight_decay: float = 1e-4
    seed: int = 0
    augment: Augment = field(default_factory=Augment)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def digest(self) -> str:
        """sha256 of the recipe and the training code version (part of the fine-tune cache key)."""
        text = json.dumps({"code": TRAIN_CODE_VERSION, **self.as_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()
