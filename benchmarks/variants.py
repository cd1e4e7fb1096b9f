"""Precision variants of the default backbone side by side: size, latency, footprint, agreement with fp32.

    python benchmarks/variants.py [--model PATH] [--images DIR] [--runs N]

Every variant is measured in a fresh process (the same measurement edge-build uses), at 1 and 2 threads,
in one run of this script, so the ratios compare like with like on a noisy machine.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edge_runtime.backends import create_backend
from edge_runtime.build.backbone import export_default_backbone
from edge_runtime.build.footprint import MIB, measure_in_subprocess
from edge_runtime.build.quantize import load_model, make_variant
from edge_runtime.head.prototypes import l2_normalise
from edge_runtime.preprocess import prepare_batch, read_image

SHARED_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "grocery" / "train"


def _images(root: Path | None, count: int, seed: int) -> tuple[np.ndarray, str]:
    if root is None and SHARED_TRAIN.is_dir():
        root = SHARED_TRAIN
    if root is None:
        from edge_runtime.build.demo import generate_demo_catalogue

        root = generate_demo_catalogue(Path(tempfile.mkdtemp()) / "demo", seed=seed)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    rng = np.random.default_rng(seed)
    picked = [files[i] for i in rng.choice(len(files), size=min(count, len(files)), replace=False)]
    return prepare_batch([read_image(str(p)) for p in picked], 224), str(root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="fp32 backbone (default: export EfficientNet-Lite0)")
    parser.add_argument("--images", type=Path, help="image folder for calibration and agreement")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--calibration", type=int, default=100)
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
    for name, model in variants.items():
        path = work / (name.split()[0] + name.split()[-1].strip("()") + ".onnx")
        onnx.save(model, str(path))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
