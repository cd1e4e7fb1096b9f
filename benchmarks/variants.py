"""Precision variants of the default backbone side by side: size, latency, footprint, agreement with fp32,
and top-1 on the grocery val split.

    python benchmarks/variants.py [--model PATH] [--images DIR] [--runs N] [--train-per-class N] [--no-top1]

Every variant is measured in a fresh process (the same measurement edge-build uses), at 1 and 2 threads,
in one run of this script, so the ratios compare like with like on a noisy machine.

Top-1 (when the shared grocery data is present): each variant embeds a class-balanced part of grocery/train
(``--train-per-class`` images per class, spread over each class's photo runs) and all of grocery/val; the head
is fitted on that variant's own train embeddings, as edge-build fits it on the chosen variant's: nearest class
centroid (cosine), and the shrinkage LDA then nearest centroid (shrinkage 0.05, the value edge-build chose on
this data). So a precision's loss shows as top-1, not only as cosine to fp32.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from edge_runtime.backends import create_backend
from edge_runtime.builder.backbone import export_default_backbone
from edge_runtime.builder.footprint import MIB, measure_in_subprocess
from edge_runtime.builder.quantize import load_model, make_variant
from edge_runtime.head.projection import fit_lda
from edge_runtime.head.prototypes import PrototypeTable, class_centroids, l2_normalise, nearest
from edge_runtime.preprocess import prepare, prepare_batch, read_image

GROCERY = Path(__file__).resolve().parents[2] / "shared" / "data" / "grocery"
SHARED_TRAIN = GROCERY / "train"
LDA_SHRINKAGE = 0.05


def _images(root: Path | None, count: int, seed: int) -> tuple[np.ndarray, str]:
    if root is None and SHARED_TRAIN.is_dir():
        root = SHARED_TRAIN
    if root is None:
        from edge_runtime.demo import generate_demo_catalogue

        root = generate_demo_catalogue(Path(tempfile.mkdtemp()) / "demo", seed=seed)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    rng = np.random.default_rng(seed)
    picked = [files[i] for i in rng.choice(len(files), size=min(count, len(files)), replace=False)]
    return prepare_batch([read_image(str(p)) for p in picked], 224), str(root)


def _grocery_split(split: str, per_class: int | None) -> tuple[list[Path], np.ndarray]:
    rows = []
    for line in (GROCERY / f"{split}.txt").read_text().splitlines():
        if line.strip():
            path, fine, _ = (p.strip() for p in line.split(","))
            rows.append((GROCERY / path, int(fine)))
    if per_class is not None:
        by_class: dict[int, list[Path]] = {}
        for path, label in rows:
            by_class.setdefault(label, []).append(path)
        # Evenly spaced, not the first N: the photos of a class come in runs of near-duplicates.
        rows = [
            (paths[int(i)], label)
            for label, paths in sorted(by_class.items())
            for i in np.linspace(0, len(paths) - 1, min(per_class, len(paths)))
        ]
    return [p for p, _ in rows], np.array([label for _, label in rows])


def _pixels_u8(paths: list[Path], size: int) -> np.ndarray:
    """Preprocessed images kept as uint8 (prepare() yields whole numbers 0..255): a quarter of float32's memory."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        image = read_image(str(path))
        if image is None:
            raise OSError(f"unreadable image {path}")
        out[i] = prepare(image, size)
    return out


def _embed_u8(model: Path, pixels: np.ndarray, threads: int = 2, batch: int = 32) -> np.ndarray:
    backend = create_backend("onnxruntime-cpu", model, threads=threads)
    try:
        return np.concatenate(
            [backend.embed(pixels[i : i + batch].astype(np.float32)) for i in range(0, len(pixels), batch)]
        )
    finally:
        backend.close()


def grocery_top1(models: dict[str, Path], per_class: int) -> None:
    """Top-1 on grocery/val per variant, with a head fitted on that variant's own train embeddings."""
    train_paths, train_labels = _grocery_split("train", per_class)
    val_paths, val_labels = _grocery_split("val", None)
    n_classes = int(max(train_labels.max(), val_labels.max())) + 1
    t0 = time.perf_counter()
    train_px, val_px = _pixels_u8(train_paths, 224), _pixels_u8(val_paths, 224)
    print(
        f"\ngrocery top-1: head fitted on {len(train_paths)} train images ({per_class} per class, {n_classes} "
        f"classes), evaluated on all {len(val_paths)} val images; decoding took {time.perf_counter() - t0:.0f} s"
    )
    print(f"{'variant':<22}{'NC top-1':>9}{'LDA top-1':>10}{'vs fp32':>9}{'same as fp32':>13}")
    ref_pred = None
    ref_top1 = 0.0
    for name, path in models.items():
        train, val = _embed_u8(path, train_px), _embed_u8(path, val_px)
        nc = class_centroids(train, train_labels, n_classes)
        nc_pred = nearest(PrototypeTable.from_float(nc, "fp32"), val, k=1)[0][:, 0]
        proj = fit_lda(train, train_labels, LDA_SHRINKAGE)
        cents = class_centroids(proj.apply(train), train_labels, n_classes)
        pred = nearest(PrototypeTable.from_float(cents, "fp32"), proj.apply(val), k=1)[0][:, 0]
        top1 = float((pred == val_labels).mean())
        if ref_pred is None:
            ref_pred, ref_top1 = pred, top1
        print(
            f"{name:<22}{float((nc_pred == val_labels).mean()):>9.1%}{top1:>10.1%}"
            f"{100 * (top1 - ref_top1):>+8.1f}pp{float((pred == ref_pred).mean()):>13.1%}",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="fp32 backbone (default: export EfficientNet-Lite0)")
    parser.add_argument("--images", type=Path, help="image folder for calibration and agreement")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--calibration", type=int, default=100)
    parser.add_argument("--train-per-class", type=int, default=16, help="grocery train images per class (top-1)")
    parser.add_argument("--no-top1", action="store_true", help="skip the grocery top-1 part")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edge-bench-variants-"))
    fp32_path = args.model or export_default_backbone(work / "fp32.onnx")
    base = load_model(fp32_path)
    pixels, source = _images(args.images, args.calibration + 64, seed=0)
    calib, check = pixels[: args.calibration], pixels[args.calibration :]

    variants = {
        "fp32": base,
        "fp16": make_variant(base, "fp16", 224),
        "int8 u8s8 (CPU)": make_variant(base, "int8", 224, calib, "u8s8"),
        "int8 s8s8 (TensorRT)": make_variant(base, "int8", 224, calib, "s8s8"),
    }
    rows = []
    ref = None
    paths: dict[str, Path] = {}
    for name, model in variants.items():
        path = work / (name.split()[0] + name.split()[-1].strip("()") + ".onnx")
        onnx.save(model, str(path))
        paths[name] = path
        backend = create_backend("onnxruntime-cpu", path, threads=2)
        emb = l2_normalise(np.concatenate([backend.embed(check[i : i + 16]) for i in range(0, len(check), 16)]))
        backend.close()
        ref = emb if ref is None else ref
        cos = np.sum(emb * ref, axis=1)
        m1 = measure_in_subprocess(path, backend="onnxruntime-cpu", threads=1, runs=args.runs)
        m2 = measure_in_subprocess(path, backend="onnxruntime-cpu", threads=2, runs=args.runs)
        rows.append((name, path.stat().st_size / MIB, m1, m2, float(cos.mean()), float(cos.min())))

    print(
        f"machine: {platform.machine()} {platform.system()}, {platform.processor() or 'cpu'}, "
        f"python {platform.python_version()}; images from {source}"
    )
    print(
        f"{'variant':<22}{'size MiB':>9}{'x smaller':>10}{'1t p50 ms':>10}{'x faster':>9}"
        f"{'2t p50 ms':>10}{'x faster':>9}{'peak MiB':>9}{'cos mean':>9}{'cos min':>8}"
    )
    base_size, base1, base2 = rows[0][1], rows[0][2].latency_ms_p50, rows[0][3].latency_ms_p50
    for name, size, m1, m2, cmean, cmin in rows:
        t1, t2 = m1.latency_ms_p50, m2.latency_ms_p50
        print(
            f"{name:<22}{size:>9.2f}{base_size / size:>10.2f}{t1:>10.2f}{base1 / t1:>9.2f}"
            f"{t2:>10.2f}{base2 / t2:>9.2f}{m1.peak_rss_mib:>9.1f}{cmean:>9.4f}{cmin:>8.4f}"
        )
    int8 = rows[2]
    print(
        f"INT8/FP32 at 1 thread: {base1 / int8[2].latency_ms_p50:.2f}x faster (target >= 1.8), "
        f"{base_size / int8[1]:.2f}x smaller (target >= 3.5), cosine {int8[4]:.4f} (target >= 0.99)"
    )
    if args.no_top1:
        return 0
    if not (GROCERY / "val.txt").is_file():
        print(f"\ngrocery top-1 skipped: the shared grocery data is not at {GROCERY}")
        return 0
    grocery_top1(paths, args.train_per_class)
    return 0


if __name__ == "__main__":
    sys.exit(main())
