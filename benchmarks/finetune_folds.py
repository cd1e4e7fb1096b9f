"""Choose the fine-tuning recipe on held-out SKUs of the catalogue (grocery/train), never on val.

    python benchmarks/finetune_folds.py [--folds 3] [--epochs 12] [--first-stage 6] [--objective cosface] ...

Each fold holds out 8 SKUs (10 %, as the independent check does) as new products, and one cluster of
look-alike photos of every other SKU as unseen known photos (``head.fit.cluster_folds``: photos come in
near-duplicate runs, and a random split would put a sibling of every test photo in training). The backbone is
fine-tuned on what is left; the frozen backbone is scored on the same split. Reported per fold and on average:

- top-1 on the unseen known photos: the head's way (shrinkage LDA on the multi-layer embedding + colour,
  nearest class mean) and, for the fine-tuned model, its own classifier (softmax);
- new-product detection at 95 % known retention and AUROC for several scores (max cosine in the head's space,
  max softmax, max logit, energy, and fusions of a cosine and a logit score, each standardised on the
  training photos' scores).

Needs ``../shared/data/grocery`` and the ``[train]`` extra. The early stages of every view are computed once and
cached under ``.cache/finetune-folds`` (about 600 MB).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from edge_runtime.builder import catalogue as cat
from edge_runtime.builder.backbone import build_efficientnet_lite0, default_checkpoint_path, read_legacy_checkpoint
from edge_runtime.builder.train.augment import Augment
from edge_runtime.builder.train.finetune import finetune, forward_rows
from edge_runtime.builder.train.model import from_state_dict
from edge_runtime.builder.train.recipe import Recipe
from edge_runtime.builder.train.views import ViewCache, build_view_cache
from edge_runtime.features import COLOUR_WEIGHT, colour_descriptor, compose
from edge_runtime.head.calibration import softmax
from edge_runtime.head.fit import cluster_folds
from edge_runtime.head.ood import auroc, detection_at_keep
from edge_runtime.head.projection import fit_lda
from edge_runtime.head.prototypes import class_centroids, l2_normalise

REPO = Path(__file__).resolve().parents[1]
GROCERY = REPO.parent / "shared" / "data" / "grocery"
CACHE = REPO / ".cache" / "finetune-folds"
HELD_OUT_SKUS = 8
KEEP = 0.95
SHRINKAGE = 0.2

_R = Recipe()
log = logging.getLogger("finetune_folds")


def load_cache(decoded: cat.DecodedCatalogue, backbone: onnx.ModelProto, stage: int, views: int) -> ViewCache:
    key = CACHE / f"stage{stage}-views{views}"
    if (key / "features.npy").is_file():
        arrays = {k: np.load(key / f"{k}.npy", mmap_mode="r" if k == "features" else None) for k in
                  ("features", "labels", "source", "view")}  # fmt: skip
        return ViewCache(**arrays)
    paths = [item.image for item in decoded.catalogue.items]
    cache = build_view_cache(backbone, stage, paths, decoded.pixels[224], decoded.labels, views, 224, Augment(), 0)
    key.mkdir(parents=True, exist_ok=True)
    for k in ("features", "labels", "source", "view"):
        np.save(key / f"{k}.npy", getattr(cache, k))
    return cache


def scores_head(
    train_x: np.ndarray, train_y: np.ndarray, xs: list[np.ndarray], n: int, shrinkage: float | None = SHRINKAGE
) -> list[np.ndarray]:
    """Cosine to class means in the shrinkage-LDA space (None: the raw space), for each of ``xs``."""
    if shrinkage is None:
        cents = class_centroids(train_x, train_y, n)
        return [l2_normalise(x) @ cents.T for x in xs]
    proj = fit_lda(train_x, train_y, shrinkage)
    cents = class_centroids(proj.apply(train_x), train_y, n)
    return [proj.apply(x) @ cents.T for x in xs]


def ood_table(known: dict[str, np.ndarray], unknown: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    out = {}
    for name in known:
        rate, _ = detection_at_keep(known[name], unknown[name], KEEP)
        out[name] = {"detection": rate, "auroc": auroc(known[name], unknown[name])}
    return out


def logit_scores(logits: np.ndarray) -> dict[str, np.ndarray]:
    """Higher = stranger."""
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    return {"msp": -softmax(logits).max(1), "max_logit": -logits.max(1), "energy": -lse}


@dataclass(frozen=True)
class Split:
    """One fold: cache rows to fit the head on, unseen known photos, new-product photos (labels remapped)."""

    train: np.ndarray
    y_train: np.ndarray
    known: np.ndarray
    y_known: np.ndarray
    new: np.ndarray
    n_known: int


def evaluate(out: dict[str, np.ndarray], name: str, sp: Split, colour_rows: np.ndarray) -> dict[str, object]:
    """Top-1 and new-product detection of one model's outputs on one split."""
    result: dict[str, object] = {}
    x = compose(out["embedding_multi"], colour_rows, COLOUR_WEIGHT)
    ck, cu, ct = scores_head(x[sp.train], sp.y_train, [x[sp.known], x[sp.new], x[sp.train]], sp.n_known)
    known = {"max_cosine": -ck.max(1)}
    unknown = {"max_cosine": -cu.max(1)}
    train_s = {"max_cosine": -ct.max(1)}
    if "logits" in out and out["logits"].shape[1] == sp.n_known:
        lk, lu, lt = out["logits"][sp.known], out["logits"][sp.new], out["logits"][sp.train]
        result[f"{name}_softmax_top1"] = float((lk.argmax(1) == sp.y_known).mean())
        known |= logit_scores(lk)
        unknown |= logit_scores(lu)
        train_s |= logit_scores(lt)
        for a in ("msp", "max_logit", "energy"):
            mu_c, sd_c = train_s["max_cosine"].mean(), train_s["max_cosine"].std() + 1e-9
            mu_l, sd_l = train_s[a].mean(), train_s[a].std() + 1e-9
            known[f"cos+{a}"] = (known["max_cosine"] - mu_c) / sd_c + (known[a] - mu_l) / sd_l
            unknown[f"cos+{a}"] = (unknown["max_cosine"] - mu_c) / sd_c + (unknown[a] - mu_l) / sd_l
    result[f"{name}_head_top1"] = float((ck.argmax(1) == sp.y_known).mean())
    # The head without a projection: cosine to class means of the embedding (+ colour) itself.
    rk, ru = scores_head(x[sp.train], sp.y_train, [x[sp.known], x[sp.new]], sp.n_known, None)
    result[f"{name}_cos_top1"] = float((rk.argmax(1) == sp.y_known).mean())
    known["cos_no_lda"], unknown["cos_no_lda"] = -rk.max(1), -ru.max(1)
    result[f"{name}_ood"] = ood_table(known, unknown)
    return result


def _scatter(out: dict[str, np.ndarray], rows: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Outputs computed for ``rows`` placed at those rows of full-size arrays (the rest stay zero)."""
    full = {}
    for k, v in out.items():
        full[k] = np.zeros((n, v.shape[1]), np.float32)
        full[k][rows] = v
    return full


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Defaults: the recipe edge-build ships, so a plain run re-measures it.
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--first-fold", type=int, default=0)
    p.add_argument("--epochs", type=int, default=_R.epochs)
    p.add_argument("--first-stage", type=int, default=_R.first_trained_stage)
    p.add_argument("--views", type=int, default=_R.views)
    p.add_argument("--lr", type=float, default=_R.lr)
    p.add_argument("--weight-decay", type=float, default=_R.weight_decay)
    p.add_argument("--label-smoothing", type=float, default=_R.label_smoothing)
    p.add_argument("--dropout", type=float, default=_R.dropout)
    p.add_argument("--batch-norm", choices=["frozen", "train"], default=_R.batch_norm)
    p.add_argument("--head-lr-scale", type=float, default=_R.head_lr_scale)
    p.add_argument("--objective", choices=["softmax", "cosface"], default=_R.objective)
    p.add_argument("--cos-scale", type=float, default=_R.cos_scale)
    p.add_argument("--cos-margin", type=float, default=_R.cos_margin)
    p.add_argument("--distill", type=float, default=_R.distill)
    p.add_argument("--out", type=Path, default=None, help="append one JSON line per fold here")
    p.add_argument("--tag", default="")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(2)
    if not GROCERY.is_dir():
        print(f"no grocery data at {GROCERY}", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    decoded = cat.decode_catalogue(cat.load_catalogue(GROCERY / "train"), [224])
    state = read_legacy_checkpoint(default_checkpoint_path())
    backbone = build_efficientnet_lite0(state, 224)
    cache = load_cache(decoded, backbone, args.first_stage - 1, args.views)
    labels = decoded.labels.astype(np.int64)
    n_sku = int(labels.max()) + 1
    colour_plain = colour_descriptor(decoded.pixels[224].astype(np.float32))
    # Val photos (other sessions than train: a second opinion, never the one that chooses) join the cache as
    # extra plain rows after every catalogue photo.
    val = cat.decode_catalogue(cat.load_catalogue(GROCERY / "val"), [224])
    index_of = {s.code: i for i, s in enumerate(decoded.catalogue.skus)}
    val_labels = np.array([index_of[val.catalogue.skus[y].code] for y in val.labels], dtype=np.int64)
    val_cache = build_view_cache(
        backbone, args.first_stage - 1, [i.image for i in val.catalogue.items], val.pixels[224], val_labels, 0, 224,
        Augment(), 0,
    )  # fmt: skip
    n_train = len(labels)
    cache = ViewCache(
        np.concatenate([cache.features, val_cache.features]),
        np.concatenate([cache.labels, val_cache.labels]),
        np.concatenate([cache.source, val_cache.source + n_train]),
        np.concatenate([cache.view, val_cache.view]),
    )
    colour_plain = np.concatenate([colour_plain, colour_descriptor(val.pixels[224].astype(np.float32))])
    log.info("data ready in %.0f s", time.perf_counter() - t0)

    frozen = from_state_dict(state)
    # The head is fitted on the evaluation crops and two random views of each photo, as the build does.
    used = np.flatnonzero(cache.view <= 2)
    frozen_out = _scatter(
        forward_rows(frozen, cache, used, args.first_stage, torch.device("cpu")), used, len(cache.source)
    )
    plain_train = np.flatnonzero((cache.view == 0) & (cache.source < n_train))
    plain_train = plain_train[np.argsort(cache.source[plain_train])]
    fold_of = cluster_folds(frozen_out["embedding_multi"][plain_train], labels, 4, 0)
    rng = np.random.default_rng(0)
    order = rng.permutation(n_sku)
    recipe = Recipe(
        first_trained_stage=args.first_stage, views=args.views, epochs=args.epochs, lr=args.lr,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, dropout=args.dropout,
        batch_norm=args.batch_norm, head_lr_scale=args.head_lr_scale, objective=args.objective,
        cos_scale=args.cos_scale, cos_margin=args.cos_margin, distill=args.distill,
    )  # fmt: skip
    # Colour for every cached row: the evaluation crop's own colour for view 0; random views carry their
    # source photo's colour (close enough for ranking recipes; the build computes it per view).
    colour_rows = colour_plain[cache.source]
    for f in range(args.first_fold, args.first_fold + args.folds):
        held = np.sort(order[f * HELD_OUT_SKUS : (f + 1) * HELD_OUT_SKUS])
        is_new = np.isin(labels, held)
        known_test = ~is_new & (fold_of == f % 4)
        train_imgs = np.flatnonzero(~is_new & ~known_test)
        known_classes = np.setdiff1d(np.arange(n_sku), held)
        remap = np.full(n_sku, -1)
        remap[known_classes] = np.arange(len(known_classes))
        rows_train = np.intersect1d(cache.rows(train_imgs), used)
        val_rows = np.flatnonzero(cache.source >= n_train)
        val_new = val_rows[np.isin(cache.labels[val_rows], held)]
        val_known = val_rows[~np.isin(cache.labels[val_rows], held)]
        rows_known = cache.rows(np.flatnonzero(known_test), plain=True)
        rows_new = cache.rows(np.flatnonzero(is_new), plain=True)
        y_train, y_known = remap[cache.labels[rows_train]], remap[cache.labels[rows_known]]
        result: dict[str, object] = {"fold": f, "held_out": held.tolist(), "tag": args.tag, "recipe": recipe.as_dict()}

        split = Split(rows_train, y_train, rows_known, y_known, rows_new, len(known_classes))
        vsplit = Split(rows_train, y_train, val_known, remap[cache.labels[val_known]], val_new, len(known_classes))
        result.update(evaluate(frozen_out, "frozen", split, colour_rows))
        result.update(evaluate(frozen_out, "val_frozen", vsplit, colour_rows))
        model = from_state_dict(state, n_classes=len(known_classes))
        sub = ViewCache(cache.features, remap[cache.labels], cache.source, cache.view)
        log_ = finetune(model, sub, train_imgs, len(known_classes), recipe, heldout_images=np.flatnonzero(known_test))
        result["train_log"] = log_.as_dict()
        tuned = _scatter(
            forward_rows(model, cache, used, args.first_stage, torch.device("cpu")), used, len(cache.source)
        )
        result.update(evaluate(tuned, "tuned", split, colour_rows))
        result.update(evaluate(tuned, "val_tuned", vsplit, colour_rows))
        # One model whose shared early stages feed both the frozen and the tuned late stages: the two
        # multi-layer embeddings side by side (each unit length, so neither dominates).
        fused = {"embedding_multi": np.hstack([frozen_out["embedding_multi"], tuned["embedding_multi"]]) / np.sqrt(2)}
        result.update(evaluate(fused, "fused", split, colour_rows))
        result.update(evaluate(fused, "val_fused", vsplit, colour_rows))
        line = json.dumps(result, default=float)
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as fh:
                fh.write(line + "\n")
        brief = {k: v for k, v in result.items() if k.endswith("top1")}
        log.info("fold %d: %s", f, brief)
        for name in ("frozen_ood", "tuned_ood", "fused_ood", "val_frozen_ood", "val_tuned_ood", "val_fused_ood"):
            table = result[name]
            assert isinstance(table, dict)
            log.info("  %s: %s", name, {k: round(v["detection"], 3) for k, v in table.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
