"""Measure a model's real memory footprint and latency in a separate, fresh process.

Measuring in the build process would count everything the build has loaded
(the catalogue, the quantiser, other variants), and a process never gives
memory back reliably; a fresh child sees what the device process will see:
the interpreter, numpy, OpenCV, the backend, the model, the frame buffers.

When camera frames are given (``frame_bytes``, as edge-build and edge-check do), the child also holds what
edge-run holds besides the model, and passes a few frames through the runtime's three-thread shape (see
``_runtime_like_load``): the bare model process peaked 135 MiB where edge-run peaked 176 MiB on the demo
bundle, and the footprint is meant to predict edge-run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge_runtime.errors import ModelError
from edge_runtime.memory import RssPeakSampler, vm_hwm_bytes
from edge_runtime.types import Measurement

# edge-run holds at most this many camera frames at once: its FRAME_QUEUE + TENSOR_QUEUE + PUBLISH_QUEUE
# (run/pipeline.py; a test keeps the two in step). Each TENSOR_QUEUE item also holds its regions' float tensors.
FRAME_QUEUE_DEPTH = 6
TENSOR_QUEUE_DEPTH = 2


def tensor_queue_bytes(regions_per_frame: int, input_size: int) -> int:
    """Bytes of prepared float32 region tensors edge-run's tensor queue can hold at once."""
    return TENSOR_QUEUE_DEPTH * max(1, regions_per_frame) * 3 * input_size * input_size * 4


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
    tensor_bytes: int = 0,
) -> Measurement:
    """Run the child and parse the one JSON line it prints."""
    cmd = [
        sys.executable,
        "-m",
        "edge_runtime.builder.footprint",
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
        "--tensor-bytes",
        str(tensor_bytes),
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
    sampler = RssPeakSampler()
    sampler.start()
    frames = np.ones(max(args.frame_bytes, 0), dtype=np.uint8)  # touched: camera frame queue
    # edge-run's tensor queue: prepared region batches waiting for the backend, held for the whole run.
    tensors = np.ones(max(args.tensor_bytes, 0), dtype=np.uint8)
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
    if args.frame_bytes > 0:
        del frames  # the runtime-like load holds real frames in real queues instead
        _runtime_like_load(backend, args.frame_bytes, args.batch)
    peak = max(sampler.stop(), vm_hwm_bytes())
    del tensors
    gpu_mib = 0.0
    if gpu_wanted and backend.name != "onnxruntime-cpu":  # a fallback to the CPU holds no GPU memory
        gpu_mib = footprint_gpu_mib(gpu_memory_used_mib(), unified_before, unified_memory_used_mib())
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


RUNTIME_LIKE_FRAMES = 20
_QUEUE = 2  # edge-run's FRAME_QUEUE and PUBLISH_QUEUE (its TENSOR_QUEUE's frames are in frame_bytes)


def _runtime_like_load(backend: Any, frame_bytes: int, batch: int) -> None:
    """Make this process hold what edge-run holds besides the model, so that its peak predicts edge-run's.

    Measured step by step on the demo bundle, edge-run's extra 40 MiB over the bare model process were: its own
    libraries (pydantic, prometheus_client, paho, sqlite3 and the run modules: about 24 MiB) and, once frames
    flow, decoder and encoder buffers plus one malloc arena per thread (about 15 MiB). So: import what edge-run
    imports, make its metrics registry, MQTT client and SQLite outbox, and pass a few camera-sized frames through
    three threads joined by bounded queues: decode -> preprocess and infer -> JPEG crop, JSON, outbox write.
    ``frame_bytes`` counts edge-build's FRAME_QUEUE_DEPTH queued frames; the frame is 4:3 of that share of it.
    """
    # The runtime's modules, imported here only: this child measures the device process, which is edge-run.
    import base64
    import json
    import queue
    import tempfile

    import cv2
    import numpy as np
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    import edge_runtime.run.pipeline  # noqa: F401  (everything edge-run imports)
    from edge_runtime.preprocess import prepare_batch
    from edge_runtime.run.metrics import RunMetrics
    from edge_runtime.run.outbox import Outbox
    from edge_runtime.types import OutMessage

    pixels = max(frame_bytes // (FRAME_QUEUE_DEPTH * 3), 64 * 48)
    height = max(48, int((pixels * 3 / 4) ** 0.5))
    width = max(64, pixels // height)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.dstack([xx % 256, yy % 256, (xx + yy) % 256]).astype(np.uint8)
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
    metrics = RunMetrics(["sku"], memory_budget_mib=1024)
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="footprint")  # never connects
    frames_q: queue.Queue[Any] = queue.Queue(_QUEUE)
    publish_q: queue.Queue[Any] = queue.Queue(_QUEUE)
    failures: list[BaseException] = []

    def guarded(body: Any) -> Any:
        def run() -> None:
            try:
                body()
            except BaseException as exc:  # reported below: a silent thread death would under-measure
                failures.append(exc)
                for q in (frames_q, publish_q):
                    with contextlib.suppress(queue.Full):
                        q.put_nowait(None)

        return run

    def capture() -> None:
        for _ in range(RUNTIME_LIKE_FRAMES):
            frames_q.put(cv2.imdecode(jpeg, cv2.IMREAD_COLOR))
        frames_q.put(None)

    def infer() -> None:
        while (frame := frames_q.get()) is not None:
            backend.embed(prepare_batch([frame] * batch, backend.input_size))
            publish_q.put(frame)
        publish_q.put(None)

    with tempfile.TemporaryDirectory(prefix="edge-footprint-") as tmp:
        outbox = Outbox(Path(tmp) / "outbox.sqlite3", max_bytes=64 * MIB, ttl_s=3600.0)

        def publish() -> None:
            n = 0
            while (frame := publish_q.get()) is not None:
                small = cv2.resize(frame, (320, 240), interpolation=cv2.INTER_AREA)
                data = base64.b64encode(cv2.imencode(".jpg", small)[1].tobytes()).decode("ascii")
                payload = json.dumps({"id": str(n), "crop": {"data": data}}).encode("utf-8")
                outbox.put(OutMessage(str(n), "edge/footprint/unknown", payload, "crop", time.time()))
                metrics.frames_processed.inc()
                n += 1

        threads = [threading.Thread(target=guarded(f)) for f in (capture, infer, publish)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        outbox.close()
    del client
    if failures:
        raise failures[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="internal: measure one model in a fresh process")
    parser.add_argument("--model", required=True)
    parser.add_argument("--backend", default="onnxruntime-cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--frame-bytes", type=int, default=0)
    parser.add_argument("--tensor-bytes", type=int, default=0)
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
