"""Fine-tune the last stages of the backbone on the catalogue: linear probe first, then the stages (LP-FT).

Kumar et al. (ICLR 2022, "Fine-tuning can distort pretrained features") show that fine-tuning with a random
classifier distorts the pretrained features most where the data is thin, which is what hurts new products; fitting
the classifier on frozen features first (the linear probe) and then fine-tuning from there keeps more of them.
Lee et al. (ICLR 2023, "Surgical fine-tuning") find that a shift in what the objects are, not in how the images
look, is best served by tuning the *last* layers, which is also what a 2-core packaging host can afford: the frozen
early stages are computed once per view (``builder.train.views``) and each step runs only the tuned stages.
Vaze et al. (ICLR 2022) show that a better closed-set classifier is a better open-set detector, so the objective
is plain cross-entropy with light label smoothing; what separates new products is chosen later, on held-out SKUs.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_runtime.builder.backbone import LITE0_STAGES
from edge_runtime.builder.train.model import Lite0
from edge_runtime.builder.train.recipe import Recipe
from edge_runtime.builder.train.views import ViewCache

log = logging.getLogger(__name__)

EVAL_BATCH = 128


@dataclass
class TrainLog:
    """What happened, for the manifest and the build report."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    probe_top1: float | None = None  # the linear probe on held-out rows, before fine-tuning

    def as_dict(self) -> dict[str, object]:
        return {
            "seconds": round(self.seconds, 1),
            "device": self.device,
            "probe_heldout_top1": None if self.probe_top1 is None else round(self.probe_top1, 4),
            "epochs": self.epochs,
        }


def pick_device() -> torch.device:
    """A CUDA GPU when torch sees one (recorded in the manifest), else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def trained_parameters(model: Lite0, first_stage: int) -> list[nn.Parameter]:
    """Freeze everything before ``first_stage``; return what trains (the stages from there, head, classifier)."""
    first_block = sum(repeats for repeats, *_ in LITE0_STAGES[:first_stage])
    trained: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        keep = name.startswith(("head.", "classifier.")) or (
            name.startswith("blocks.") and int(name.split(".")[1]) >= first_block
        )
        p.requires_grad_(keep)
        if keep:
            trained.append(p)
    return trained


def _set_train_mode(model: Lite0, recipe: Recipe) -> None:
    model.train()
    if recipe.batch_norm == "frozen":
        # Pretrained running statistics stay as they are: a 64-image batch of one catalogue is a poor estimate
        # of them, and the export folds whatever statistics the module holds into the convolutions.
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()


@torch.no_grad()
def forward_rows(
    model: Lite0, cache: ViewCache, rows: np.ndarray, first_stage: int, device: torch.device
) -> dict[str, np.ndarray]:
    """The model's outputs (``embedding``, ``logits``, ``embedding_multi``) for cached rows, in eval mode."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {}
    for s in range(0, len(rows), EVAL_BATCH):
        x = torch.from_numpy(cache.features[rows[s : s + EVAL_BATCH]].astype(np.float32)).to(device)
        for k, v in model.features_from(x, first_stage).items():
            out.setdefault(k, []).append(v.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def linear_probe(
    pooled: np.ndarray, labels: np.ndarray, n_classes: int, weight_decay: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on frozen pooled features (full-batch L-BFGS), as the classifier's start."""
    x = torch.from_numpy(pooled.astype(np.float32)).to(device)
    mean, std = x.mean(0), x.std(0) + 1e-6  # standardised for the solver; folded back into the weights below
    z = (x - mean) / std
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    w = torch.zeros(n_classes, z.shape[1], device=device, requires_grad=True)
    b = torch.zeros(n_classes, device=device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        weight = w / std
        bias = b - (weight * mean).sum(1)
    return weight.detach(), bias.detach()


class Progress:
    """One line per epoch: a rewritten status line on a terminal, log lines otherwise."""

    def __init__(self, epochs: int, stream: object = sys.stderr) -> None:
        self.epochs, self.t0 = epochs, time.perf_counter()
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.stream = stream

    def epoch(self, epoch: int, loss: float, train_acc: float, heldout: float | None) -> None:
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / (epoch + 1) * (self.epochs - epoch - 1)
        held = "" if heldout is None else f", held-out top-1 {100 * heldout:.1f}%"
        text = (
            f"fine-tune epoch {epoch + 1}/{self.epochs}: loss {loss:.3f}, train top-1 {100 * train_acc:.1f}%{held}, "
            f"{elapsed:.0f} s, ETA {eta:.0f} s"
        )
        if self.tty:
            end = "\n" if epoch + 1 == self.epochs else ""
            print(f"\r{text}\x1b[K", end=end, file=self.stream, flush=True)  # type: ignore[call-overload]
        else:
            log.info("%s", text)


class CosineClassifier(nn.Module):
    """Cosine logits on the multi-layer embedding, with an additive margin for the true class (CosFace: Wang et
    al., CVPR 2018). The head that ships scores cosines to class means of that very embedding, so this objective
    shapes the geometry the head reads, where a linear classifier on the pooled features shapes only its part."""

    def __init__(self, centroids: torch.Tensor, scale: float, margin: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(centroids.clone())
        self.scale, self.margin = scale, margin

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.normalize(embedding, dim=1) @ F.normalize(self.weight, dim=1).T
        if labels is not None and self.margin > 0:
            cos = cos - self.margin * F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return self.scale * cos


def finetune(
    model: Lite0,
    cache: ViewCache,
    train_images: np.ndarray,
    n_classes: int,
    recipe: Recipe,
    heldout_images: np.ndarray | None = None,
    device: torch.device | None = None,
    on_epoch: Callable[[int, Lite0], None] | None = None,
) -> TrainLog:
    """Linear probe, then fine-tune stages ``recipe.first_trained_stage``.. on the views of ``train_images``.

    ``recipe.objective``: ``softmax`` trains the linear classifier on the pooled features (the probe is its
    start); ``cosface`` trains a cosine classifier on the multi-layer embedding, started at the frozen model's
    class means (the linear probe still sets the exported ``logits``). ``heldout_images`` (catalogue indices,
    never trained on) are scored after every epoch for the progress line; nothing is chosen by them.
    """
    device = device or pick_device()
    torch.manual_seed(recipe.seed)
    # Adam's second moments of rarely moving weights decay into denormal floats, which x86 CPUs handle two
    # orders of magnitude slower; flushing them to zero changes nothing else.
    torch.set_flush_denormal(True)
    rng = np.random.default_rng(recipe.seed)
    model.to(device)
    first = recipe.first_trained_stage
    t0 = time.perf_counter()
    result = TrainLog(device=str(device))

    # 1. linear probe on the frozen model's pooled features of every training view
    train_rows = cache.rows(train_images)
    frozen = forward_rows(model, cache, train_rows, first, device)
    y_rows = cache.labels[train_rows]
    weight, bias = linear_probe(frozen["embedding"], y_rows, n_classes, recipe.probe_weight_decay, device)
    with torch.no_grad():
        model.classifier.weight.copy_(weight)
        model.classifier.bias.copy_(bias)
    cosine: CosineClassifier | None = None
    if recipe.objective == "cosface":
        sums = np.zeros((n_classes, frozen["embedding_multi"].shape[1]), np.float64)
        np.add.at(sums, y_rows, frozen["embedding_multi"])
        centroids = torch.from_numpy(sums / np.maximum(1, np.bincount(y_rows, minlength=n_classes))[:, None])
        cosine = CosineClassifier(centroids.float(), recipe.cos_scale, recipe.cos_margin).to(device)
    held_rows = cache.rows(heldout_images, plain=True) if heldout_images is not None else np.zeros(0, np.int64)
    if len(held_rows):
        result.probe_top1 = _accuracy(model, cosine, cache, held_rows, first, device)
        log.info("start (linear probe or class means): held-out top-1 %.1f%%", 100 * result.probe_top1)

    # 2. fine-tune: one random view (or the evaluation crop) of every training image per epoch
    teacher = copy.deepcopy(model).eval() if recipe.distill > 0 else None
    params = trained_parameters(model, first)
    head_params = list(cosine.parameters()) if cosine is not None else list(model.classifier.parameters())
    if cosine is not None:
        model.classifier.requires_grad_(False)  # the exported logits stay the probe's
    body_params = [p for p in params if all(p is not q for q in head_params) and p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": body_params, "lr": recipe.lr}, {"params": head_params, "lr": recipe.lr * recipe.head_lr_scale}],
        weight_decay=recipe.weight_decay,
        foreach=True,
    )
    per_image = cache.by_source()
    steps_per_epoch = max(1, math.ceil(len(train_images) / recipe.batch))
    total = steps_per_epoch * recipe.epochs
    warmup = max(1, round(recipe.warmup_epochs * steps_per_epoch))

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    progress = Progress(recipe.epochs)
    for epoch in range(recipe.epochs):
        _set_train_mode(model, recipe)
        picks = np.array([rng.choice(per_image[int(i)]) for i in rng.permutation(train_images)])
        losses, hits, seen = 0.0, 0, 0
        for s in range(0, len(picks), recipe.batch):
            rows = picks[s : s + recipe.batch]
            x = torch.from_numpy(cache.features[rows].astype(np.float32)).to(device)
            y = torch.from_numpy(cache.labels[rows]).to(device)
            out = model.features_from(x, first)
            if cosine is not None:
                logits = cosine(out["embedding_multi"], y)
            else:
                logits = model.classifier(F.dropout(out["embedding"], recipe.dropout, training=True))
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            if teacher is not None:
                with torch.no_grad():
                    target = teacher.features_from(x, first)["embedding_multi"]
                pull = 1.0 - F.cosine_similarity(out["embedding_multi"], target, dim=1).mean()
                loss = loss + recipe.distill * pull
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses += float(loss.detach()) * len(rows)
            hits += int((logits.argmax(1) == y).sum())
            seen += len(rows)
        held = _accuracy(model, cosine, cache, held_rows, first, device) if len(held_rows) else None
        row = {"epoch": epoch + 1, "loss": round(losses / seen, 4), "train_top1": round(hits / seen, 4)}
        if held is not None:
            row["heldout_top1"] = round(held, 4)
        result.epochs.append(row)
        progress.epoch(epoch, losses / seen, hits / seen, held)
        if on_epoch is not None:
            on_epoch(epoch, model)
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result


def _accuracy(
    model: Lite0,
    cosine: CosineClassifier | None,
    cache: ViewCache,
    rows: np.ndarray,
    first: int,
    device: torch.device,
) -> float:
    out = forward_rows(model, cache, rows, first, device)
    if cosine is None:
        logits = out["logits"]
    else:
        with torch.no_grad():
            logits = cosine(torch.from_numpy(out["embedding_multi"]).to(device)).cpu().numpy()
    return float((logits.argmax(1) == cache.labels[rows]).mean())
