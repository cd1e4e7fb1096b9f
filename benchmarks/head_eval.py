"""The whole build on grocery/train, frozen and fine-tuned side by side, checked on grocery/val with new products.

    python benchmarks/head_eval.py [--modes frozen finetuned] [--folds 3] [--held-out 8] [--sizes 224] [--out DIR]

Each fold holds ``--held-out`` SKUs (8, as the independent check does; drawn among the SKUs val has photos of)
out of the catalogue: they are the new products. For each mode the real edge-build runs on the rest (dev-cpu
profile with ``[train] enabled`` false or true; nothing of val is seen), and the bundle is checked on val the
way the device sees it (``preprocess.prepare``, the bundle's ONNX model, ``Head.decide``):

- fine and group top-1 and ECE before/after the temperature, on val photos of the catalogue's SKUs;
- new-product detection at 95 % known retention (the threshold set on val's known photos: an oracle that
  compares scores, not the build's own choice) per OOD score, split into new products with a sibling in the
  catalogue (another SKU of their group) and the rest, with AUROC;
- the stored rules on a stream with new products mixed in at 10 % (weighted): known photos auto-accepted,
  accepted precision, new-product photos accepted, and what the stored gate flags.

Needs ``../shared/data/grocery``; the fine-tuned mode needs the ``[train]`` extra. Results (one JSON per fold and
a summary) go to ``--out``. Fine-tuned builds take 10-20 minutes each on a 2-core CPU host.
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
from typing import Any

import numpy as np

from edge_runtime.backends import create_backend
from edge_runtime.builder.augment import augment_batch
from edge_runtime.builder.pipeline import BuildOptions, run_build
from edge_runtime.bundle import load_bundle
from edge_runtime.features import head_input
from edge_runtime.head.calibration import ece, softmax
from edge_runtime.head.model import Head, load_head
from edge_runtime.head.ood import METHODS, auroc, detection_at_keep, fit_ood
from edge_runtime.preprocess import prepare_batch, read_image

REPO = Path(__file__).resolve().parents[1]
GROCERY = REPO.parent / "shared" / "data" / "grocery"
UNKNOWN_SHARE = 0.1
KEEP = 0.95


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
    try:
        for i in range(0, len(paths), 32):
            batch = prepare_batch([read_image(str(p)) for p in paths[i : i + 32]], size)  # decoded once for all views
            for chunks in per_view:
                pixels = augment_batch(batch.astype(np.uint8), rng) if views else batch
                chunks.append(head_input(backend.embed(pixels), pixels, colour))
    finally:
        backend.close()
    return np.concatenate([np.concatenate(chunks) for chunks in per_view])  # view-major, like edge-build


def _build(
    mode: str, fold: int, held: set[int], train: list[tuple[Path, int, int]], names: dict[int, tuple[str, str]],
    sizes: list[int], work: Path,
) -> tuple[Path, float]:  # fmt: skip
    catalogue = work / f"catalogue-{fold}.csv"
    with open(catalogue, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "sku", "group", "name"])
        for path, fine, _ in train:
            if fine not in held:
                w.writerow([str(path), names[fine][0], names[fine][1], names[fine][0]])
    profile = work / f"grocery-{mode}.toml"
    profile.write_text(
        f'extends = "{REPO / "device_profiles" / "dev-cpu.toml"}"\n'
        f'[device]\nname = "grocery-{mode}"\n[backend]\ninput_sizes = {sizes}\ncalibration_images = 100\n'
        f"[train]\nenabled = {'true' if mode == 'finetuned' else 'false'}\n"
    )
    t0 = time.perf_counter()
    result = run_build(
        BuildOptions(profile=str(profile), out=work / f"{mode}-{fold}", catalogue=catalogue, runs=20, seed=0)
    )
    return result.bundle.root, time.perf_counter() - t0


def _evaluate(
    bundle_dir: Path, held: set[int], train: list[tuple[Path, int, int]], val: list[tuple[Path, int, int]],
    names: dict[int, tuple[str, str]],
) -> dict[str, Any]:  # fmt: skip
    bundle = load_bundle(bundle_dir)
    head: Head = load_head(bundle)
    m = bundle.manifest
    size, output = m["model"]["input_size"], m["backbone"]["embedding_output"]
    codes = [s.code for s in head.skus]
    colour = head.config.colour_weight
    model = bundle.path("model.onnx")
    known = [(p, f) for p, f, _ in val if f not in held]
    new = [(p, f) for p, f, _ in val if f in held]
    k_emb = _embed(model, size, [p for p, _ in known], output, colour)
    u_emb = _embed(model, size, [p for p, _ in new], output, colour)
    y = np.array([codes.index(names[f][0]) for _, f in known])
    groups, known_groups = head.group_of_class, {s.group for s in head.skus}
    sibling = np.array([names[f][1] in known_groups for _, f in new])

    dk, du = head.decide(k_emb), head.decide(u_emb)
    pred = np.array([codes.index(d.top_k[0][0]) for d in dk])
    conf = np.array([d.score for d in dk])
    fk, fu = head.projection.apply(k_emb), head.projection.apply(u_emb)
    ck, cu = head.table.scores(fk), head.table.scores(fu)
    raw = softmax(ck)
    out: dict[str, Any] = {
        "variant": m["variant"]["variant"],
        "finetune": m["backbone"].get("finetune", {}).get("enabled", False),
        "ood_chosen": m["head"]["ood"]["chosen"],
        "known_images": len(y),
        "new_images": len(new),
        "new_sibling_images": int(sibling.sum()),
        "top1": float(np.mean(pred == y)),
        "group_top1": float(np.mean(groups[pred] == groups[y])),
        "ece_before": ece(raw.max(1), raw.argmax(1) == y),
        "ece_after": ece(conf, pred == y),
    }
    # OOD scores, each with its threshold set on val's known photos (an oracle for comparing scores).
    train_kept = [(p, f) for p, f, _ in train if f not in held]
    t_emb = _embed(model, size, [p for p, _ in train_kept], output, colour)
    t_y = np.array([codes.index(names[f][0]) for _, f in train_kept])
    ft = head.projection.apply(t_emb)
    methods = {}
    for method in METHODS:
        scorer = fit_ood(method, ft, t_y, len(codes))
        sk, su = scorer.score(fk, ck, head.config.temperature), scorer.score(fu, cu, head.config.temperature)
        rate, threshold = detection_at_keep(sk, su, KEEP)
        methods[method] = {
            "detection": rate,
            "auroc": auroc(sk, su),
            "siblings": float(np.mean(su[sibling] > threshold)) if sibling.any() else float("nan"),
            "others": float(np.mean(su[~sibling] > threshold)) if (~sibling).any() else float("nan"),
        }
    out["ood"] = methods
    # The stored rules, with new products at 10 % of the stream.
    acc_k = np.array([d.route == "accept" for d in dk])
    acc_u = np.array([d.route == "accept" for d in du])
    w_u = (UNKNOWN_SHARE / (1 - UNKNOWN_SHARE)) * len(dk) / max(1, len(du))
    tp = float((acc_k & (pred == y)).sum())
    fp = float((acc_k & (pred != y)).sum()) + w_u * float(acc_u.sum())
    out |= {
        "known_auto_accepted": float(acc_k.mean()),
        "accepted_precision": tp / (tp + fp) if tp + fp else float("nan"),
        "new_accepted": float(acc_u.mean()) if len(du) else float("nan"),
        "known_routed_unknown": float(np.mean([d.route == "unknown" for d in dk])),
        "new_flagged_by_gate": float(np.mean([d.route == "unknown" for d in du])) if len(du) else float("nan"),
        "known_verify": float(np.mean([d.route == "verify" for d in dk])),
    }
    return out


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ["top1", "group_top1", "ece_before", "ece_after", "known_auto_accepted", "accepted_precision",
            "new_accepted", "known_routed_unknown", "new_flagged_by_gate", "known_verify"]  # fmt: skip
    out: dict[str, Any] = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    out["ood"] = {
        m: {k: float(np.nanmean([r["ood"][m][k] for r in rows])) for k in ("detection", "auroc", "siblings", "others")}
        for m in METHODS
    }
    out["build_seconds"] = float(np.mean([r["build_seconds"] for r in rows]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=["frozen", "finetuned"], default=["frozen", "finetuned"])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not GROCERY.is_dir():
        print(f"grocery data not found at {GROCERY}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    names = _classes()
    work = args.out or Path(tempfile.mkdtemp(prefix="edge-head-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    train, val = _rows("train"), _rows("val")
    in_val = sorted({f for _, f, _ in val})
    rng = np.random.default_rng(0)
    folds = [set(rng.choice(in_val, size=args.held_out, replace=False).tolist()) for _ in range(args.folds)]
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes}
    for fold, held in enumerate(folds):
        for mode in args.modes:
            bundle_dir, seconds = _build(mode, fold, held, train, names, args.sizes, work)
            row = _evaluate(bundle_dir, held, train, val, names) | {"fold": fold, "build_seconds": seconds}
            row["held_out"] = sorted(names[f][0] for f in held)
            results[mode].append(row)
            (work / f"{mode}-{fold}.json").write_text(json.dumps(row, indent=1, default=float))
            print(f"fold {fold} {mode}: top-1 {row['top1']:.3f}, OOD max_cosine "
                  f"{row['ood']['max_cosine']['detection']:.3f}, auto-accepted {row['known_auto_accepted']:.3f} at "
                  f"{row['accepted_precision']:.4f}", flush=True)  # fmt: skip
    summary = {mode: _summary(rows) for mode, rows in results.items()}
    (work / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    print(f"\nmachine: {platform.machine()} {platform.system()}, python {platform.python_version()}; "
          f"{args.folds} folds of {args.held_out} held-out SKUs; val: known SKUs' photos, new products' photos "
          f"weighted to {UNKNOWN_SHARE:.0%} of the stream")  # fmt: skip
    modes = list(summary)
    print(f"{'':<38}" + "".join(f"{m:>12}" for m in modes))
    for key, label in [
        ("top1", "fine top-1"), ("group_top1", "group top-1"), ("ece_before", "ECE before temperature"),
        ("ece_after", "ECE after"), ("known_auto_accepted", "known auto-accepted"),
        ("accepted_precision", "accepted precision (10 % new)"), ("new_accepted", "new products accepted"),
        ("known_verify", "known to verify"), ("known_routed_unknown", "known routed unknown"),
        ("new_flagged_by_gate", "new products flagged by the gate"), ("build_seconds", "build seconds"),
    ]:  # fmt: skip
        print(f"{label:<38}" + "".join(f"{summary[m][key]:>12.3f}" for m in modes))
    for method in METHODS:
        for key in ("detection", "siblings", "others", "auroc"):
            label = f"OOD {method} {key}" + (" @95%" if key == "detection" else "")
            print(f"{label:<38}" + "".join(f"{summary[m]['ood'][method][key]:>12.3f}" for m in modes))
    print(f"results in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
