"""Measure a model's real memory footprint and latency in a separate, fresh process.

Measuring in the build process would count everything the build has loaded
(the catalogue, the quantiser, other variants), and a process never gives
memory back reliably; a fresh child sees what the device process will see:
the interpreter, numpy, OpenCV, the backend, the model, the frame buffers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge_runtime.errors import ModelError
from edge_runtime.types import Measurement

MIB = 1024 * 1024


def measure_in_subprocess(
    model: Path,
    *,
    backend: str,
    threads: int,
    batch: int = 1,
    warmup: int = 5,
    runs: int = 30,
    frame_bytes: int = 0,
    embedding_output: str = "embedding",
    timeout_s: float = 600.0,
) -> Measurement:
    """Run the child and parse the one JSON line it prints."""
    cmd = [
        sys.executable,
        "-m",
        "edge_runtime.build.footprint",
        "--model",
        str(model),
        "--backend",
        backend,
        "--threads",
        str(threads),
        "--batch",
        str(batch),
        "--warmup",
        str(warmup),
        "--runs",
        str(runs),
        "--frame-bytes",
        str(frame_bytes),
        "--embedding-output",
        embedding_output,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ModelError(f"{model}: measurement did not finish within {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"{model}: measurement process failed ({tail})")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Measurement(**data)


class _PeakSampler(threading.Thread):
    """Samples RSS often enough to catch the transient peak while a session initialises."""

    def __init__(self, interval_s: float = 0.002) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process()
        self.interval_s = interval_s
        self.peak = self.proc.memory_info().rss
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._halt.wait(self.interval_s)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return self.peak


def _max_rss_bytes() -> int:
    """The kernel's high-water mark of this address space (Linux VmHWM), 0 where unavailable.

    Not ru_maxrss: after fork+exec it can still report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _child(args: argparse.Namespace) -> dict[str, object]:
    # Import what the device process imports before taking the baseline.
    import cv2  # noqa: F401  (counted: the runtime decodes frames with OpenCV)
    import numpy as np
    import psutil

    from edge_runtime.backends import create_backend
    from edge_runtime.backends.gpumem import footprint_gpu_mib, gpu_memory_used_mib, unified_memory_used_mib

    baseline = psutil.Process().memory_info().rss
    # GPU memory is added to the peak RSS, never already in it: VRAM on a discrete GPU, and on a Jetson the
    # nvmap buffers the GPU allocates from the shared DRAM (accounted by nvmap, not in the process's RSS).
    # Per-process figures (NVML, nvmap debugfs) win; else the Jetson's system-wide nvmap growth across this
    # fresh process's run. Read once the runs are done: the steady state, not an engine build's transient peak.
    gpu_wanted = args.backend != "onnxruntime-cpu"
    unified_before = unified_memory_used_mib() if gpu_wanted else None
    sampler = _PeakSampler()
    sampler.start()
    frames = np.ones(max(args.frame_bytes, 0), dtype=np.uint8)  # touched: camera frame queue
    backend = create_backend(
        args.backend, Path(args.model), threads=args.threads, embedding_output=args.embedding_output
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(args.batch, 3, backend.input_size, backend.input_size)).astype(np.float32)
    for _ in range(args.warmup):
        backend.embed(x)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        backend.embed(x)
        times.append((time.perf_counter() - t0) * 1000.0)
    peak = max(sampler.stop(), _max_rss_bytes())
    gpu_mib = 0.0
    if gpu_wanted and backend.name != "onnxruntime-cpu":  # a fallback to the CPU holds no GPU memory
        gpu_mib = footprint_gpu_mib(gpu_memory_used_mib(), unified_before, unified_memory_used_mib())
    del frames
    times.sort()
    return {
        "backend": backend.name,
        "threads": args.threads,
        "batch": args.batch,
        "baseline_rss_mib": baseline / MIB,
        "peak_rss_mib": peak / MIB,
        "gpu_mib": gpu_mib,
        "latency_ms_p50": float(np.percentile(times, 50)),
        "latency_ms_p95": float(np.percentile(times, 95)),
        "runs": args.runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="internal: measure one model in a fresh process")
    parser.add_argument("--model", required=True)
    parser.add_argument("--backend", default="onnxruntime-cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--frame-bytes", type=int, default=0)
    parser.add_argument("--embedding-output", default="embedding")
    args = parser.parse_args(argv)
    try:
        result = _child(args)
    except Exception as exc:  # reported to the parent through stderr and the exit code
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
