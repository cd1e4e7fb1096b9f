"""Evaluate the recognition head on the shared grocery data, with held-out SKUs as new products.

    python benchmarks/head_eval.py [--sizes 224] [--folds 5] [--out DIR]

1. Runs the whole edge-build on grocery/train as the catalogue (dev-cpu profile, fp32 and int8, the given
   input sizes) and checks the bundle on grocery/val: fine and group top-1, ECE before and after calibration.
2. Simulates new products: in each fold 10 % of the SKUs are removed from the catalogue and the head is fitted
   again on the rest (same model variant, same code path as edge-build); the val images of known SKUs are the
   known stream, the val images of the removed SKUs the unknown stream (about 10 % of the mixed stream).
   Reports OOD detection at 95 % known retention per method, what the threshold stored by the build actually
   does, and the share of known images auto-accepted with the accepted precision when unknowns are mixed in.
Needs the shared grocery data next to the project (`../shared/data/grocery`).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_runtime.backends import create_backend
from edge_runtime.builder.augment import augment_batch
from edge_runtime.builder.pipeline import BuildOptions, run_build
from edge_runtime.bundle import load_bundle
from edge_runtime.features import head_input
from edge_runtime.head.calibration import ece, softmax
from edge_runtime.head.fit import FitSettings, fit_head
from edge_runtime.head.model import load_head
from edge_runtime.head.ood import METHODS, auroc, detection_at_keep
from edge_runtime.preprocess import prepare_batch, read_image
from edge_runtime.types import SkuInfo

REPO = Path(__file__).resolve().parents[1]
GROCERY = REPO.parent / "shared" / "data" / "grocery"


def _rows(split: str) -> list[tuple[Path, int, int]]:
    out = []
    for line in (GROCERY / f"{split}.txt").read_text().splitlines():
        if line.strip():
            path, fine, coarse = (p.strip() for p in line.split(","))
            out.append((GROCERY / path, int(fine), int(coarse)))
    return out


def _classes() -> dict[int, tuple[str, str]]:
    with open(GROCERY / "classes.csv", newline="") as fh:
        return {
            int(r["Class ID (int)"]): (r["Class Name (str)"], r["Coarse Class Name (str)"]) for r in csv.DictReader(fh)
        }


def _embed(model: Path, size: int, paths: list[Path], output: str, colour: float, views: int = 0) -> np.ndarray:
    """The head's input for the images, or (views > 0) for that many augmented views of each, as edge-build
    makes them (embedding, plus the colour descriptor when the head reads it)."""
    backend = create_backend("onnxruntime-cpu", model, threads=0, embedding_output=output)
    rng = np.random.default_rng(1)
    per_view: list[list[np.ndarray]] = [[] for _ in range(max(1, views))]
    for i in range(0, len(paths), 32):
        batch = prepare_batch([read_image(str(p)) for p in paths[i : i + 32]], size)  # decoded once for all views
        for chunks in per_view:
            pixels = augment_batch(batch.astype(np.uint8), rng) if views else batch
            chunks.append(head_input(backend.embed(pixels), pixels, colour))
    return np.concatenate([np.concatenate(chunks) for chunks in per_view])  # view-major, like edge-build


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224])
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not GROCERY.is_dir():
        print(f"grocery data not found at {GROCERY}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    names = _classes()
    work = args.out or Path(tempfile.mkdtemp(prefix="edge-head-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    train, val = _rows("train"), _rows("val")
    catalogue = work / "grocery-train.csv"
    with open(catalogue, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "sku", "group", "name"])
        for path, fine, _ in train:
            w.writerow([str(path), names[fine][0], names[fine][1], names[fine][0]])
    profile = work / "grocery-eval.toml"
    profile.write_text(
        f'extends = "{REPO / "device_profiles" / "dev-cpu.toml"}"\n'
        f'[device]\nname = "grocery-eval"\n[backend]\ninput_sizes = {args.sizes}\ncalibration_images = 100\n'
    )
    t0 = time.perf_counter()
    result = run_build(BuildOptions(profile=str(profile), out=work / "build", catalogue=catalogue, runs=20))
    build_s = time.perf_counter() - t0
    bundle = load_bundle(result.bundle.root)
    head = load_head(bundle)
    m = bundle.manifest
    size, output = m["model"]["input_size"], m["backbone"]["embedding_output"]
    codes = [s.code for s in head.skus]
    code_of = {fine: names[fine][0] for fine in names}

    # ---- 1. the shipped bundle on val --------------------------------------------------------------------
    val_paths = [p for p, _, _ in val]
    val_y = np.array([codes.index(code_of[f]) for _, f, _ in val])
    colour = head.config.colour_weight
    val_emb = _embed(bundle.path("model.onnx"), size, val_paths, output, colour)
    decisions = head.decide(val_emb)
    pred = np.array([codes.index(d.top_k[0][0]) for d in decisions])
    conf = np.array([d.score for d in decisions])
    feats = head.projection.apply(val_emb)
    raw = softmax(head.table.scores(feats))
    groups = head.group_of_class
    print(f"machine: {platform.machine()} {platform.system()}, python {platform.python_version()}")
    print(
        f"build: {m['variant']['variant']} in {build_s:.0f} s; head {m['head']['projection']['chosen']}, "
        f"OOD {m['head']['ood']['chosen']}, T={m['head']['calibration']['temperature']:.4f}"
    )
    print(f"colour descriptor: {m['head'].get('colour')}")
    print(
        f"val ({len(val)} images, {len(set(val_y))} classes): fine top-1 {np.mean(pred == val_y):.4f}, "
        f"group top-1 {np.mean(groups[pred] == groups[val_y]):.4f}"
    )
    print(
        f"ECE (15 bins) on val: before calibration {ece(raw.max(1), raw.argmax(1) == val_y):.4f}, "
        f"after {ece(conf, pred == val_y):.4f}"
    )
    routes = [d.route for d in decisions]
    acc = np.array([r == "accept" for r in routes])
    print(
        f"val routes: accept {acc.mean():.3f} (precision {np.mean((pred == val_y)[acc]):.4f}),"
        f" verify {routes.count('verify') / len(routes):.3f}, unknown {routes.count('unknown') / len(routes):.3f}"
    )

    # ---- 2. new products: hold out SKUs, refit the head on the rest -------------------------------------
    train_paths = [p for p, _, _ in train]
    train_y = np.array([codes.index(code_of[f]) for _, f, _ in train])
    train_emb = _embed(bundle.path("model.onnx"), size, train_paths, output, colour)
    views = int(m["head"].get("augmented_views", 0)) // len(train_paths)
    aug_emb = _embed(bundle.path("model.onnx"), size, train_paths, output, colour, views) if views else None
    aug_y = np.tile(train_y, views)
    rng = np.random.default_rng(0)
    n_hold = max(1, round(0.1 * len(codes)))
    shrink = m["head"]["projection"]["chosen"]
    shrinkages = () if shrink == "none" else (float(shrink.split("-")[1]),)
    per_method: dict[str, list[tuple[float, float]]] = {k: [] for k in METHODS}
    # Unknown images of a held-out SKU whose group still has a known SKU (another apple variety) against the rest.
    caught: dict[str, dict[bool, list[bool]]] = {k: {True: [], False: []} for k in METHODS}
    op_rows = []
    for fold in range(args.folds):
        held = rng.choice(len(codes), size=n_hold, replace=False)
        known = np.setdiff1d(np.arange(len(codes)), held)
        remap = {int(c): i for i, c in enumerate(known)}
        keep_tr = np.isin(train_y, known)
        skus = [SkuInfo(head.skus[c].code, head.skus[c].name, head.skus[c].group) for c in known]
        settings = FitSettings(shrinkages=shrinkages, seed=fold, colour_weight=colour)
        keep_aug = np.isin(aug_y, known)
        sub, _ = fit_head(
            train_emb[keep_tr],
            np.array([remap[int(c)] for c in train_y[keep_tr]]),
            skus,
            settings,
            aug_emb[keep_aug] if aug_emb is not None else None,
            # row i of the kept train images is the i-th True in keep_tr; views follow their source image
            (np.cumsum(keep_tr) - 1)[np.tile(np.arange(len(train_paths)), views)[keep_aug]] if views else None,
        )
        kv = np.isin(val_y, known)
        # Same distribution on both sides: val photos of known SKUs against val photos of the new ones
        # (train photos of the new SKUs would measure the train/val shift as much as novelty).
        unk = val_emb[~kv]
        known_emb, known_y = val_emb[kv], np.array([remap[int(c)] for c in val_y[kv]])
        fk, fu = sub.projection.apply(known_emb), sub.projection.apply(unk)
        known_groups = {head.skus[c].group for c in known}
        sibling = np.array([head.skus[c].group in known_groups for c in val_y[~kv]])
        ck, cu = sub.table.scores(fk), sub.table.scores(fu)
        for method in METHODS:
            from edge_runtime.head.ood import fit_ood

            model = fit_ood(
                method,
                sub.projection.apply(train_emb[keep_tr]),
                np.array([remap[int(c)] for c in train_y[keep_tr]]),
                len(known),
            )
            sk, su = model.score(fk, ck, sub.config.temperature), model.score(fu, cu, sub.config.temperature)
            rate, threshold = detection_at_keep(sk, su, 0.95)
            per_method[method].append((rate, auroc(sk, su)))
            for is_sibling in (True, False):
                caught[method][is_sibling] += (su[sibling == is_sibling] > threshold).tolist()
        dk, du = sub.decide(known_emb), sub.decide(unk)
        pk = np.array([[s.code for s in skus].index(d.top_k[0][0]) for d in dk])
        acc_k = np.array([d.route == "accept" for d in dk])
        acc_u = np.array([d.route == "accept" for d in du])
        flagged_u = np.array([d.route == "unknown" for d in du])
        kept_k = np.array([d.route != "unknown" for d in dk])
        tp = int((acc_k & (pk == known_y)).sum())
        fp = int((acc_k & (pk != known_y)).sum()) + int(acc_u.sum())
        op_rows.append(
            (
                sub.config.ood_method,
                kept_k.mean(),
                flagged_u.mean(),
                acc_k.mean(),
                tp / max(1, tp + fp),
                int(acc_u.sum()),
                len(du),
                len(dk),
            )
        )
    print(
        f"\nnew products: {args.folds} folds, {n_hold} of {len(codes)} SKUs held out per fold "
        f"(val images: the held-out SKUs' are the unknown stream, about 10 % of it)"
    )
    n_sib, n_other = len(caught[METHODS[0]][True]), len(caught[METHODS[0]][False])
    print(
        f"{'OOD method':<12}{'detection@95%':>15}{'AUROC':>8}{'siblings':>10}{'others':>8}"
        f"   (siblings: {n_sib} unknown images whose group has a known SKU; others: {n_other})"
    )
    for method, vals in per_method.items():
        v = np.array(vals)
        sib, other = (np.mean(caught[method][b]) if caught[method][b] else float("nan") for b in (True, False))
        print(f"{method:<12}{v[:, 0].mean():>15.3f}{v[:, 1].mean():>8.3f}{sib:>10.3f}{other:>8.3f}")
    o = np.array([r[1:5] for r in op_rows], dtype=float)
    print(f"operating point with the stored thresholds (method chosen per fold: {sorted({r[0] for r in op_rows})}):")
    print(f"  known kept (not routed unknown) {o[:, 0].mean():.3f}, unknowns flagged {o[:, 1].mean():.3f}")
    print(
        f"  known auto-accepted {o[:, 2].mean():.3f}, "
        f"accepted precision with the unknowns mixed in {o[:, 3].mean():.4f}"
    )
    print(
        f"  unknowns accepted (silently misclassified): {sum(r[5] for r in op_rows)} of {sum(r[6] for r in op_rows)}"
        f" unknown images; known images in stream: {sum(r[7] for r in op_rows)}"
    )
    (work / "head_eval.json").write_text(json.dumps({"manifest_head": m["head"], "folds": op_rows}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
