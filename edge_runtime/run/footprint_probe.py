"""The measured child of edge-build's footprint measurement: a fresh process that holds what edge-run holds.

``edge_runtime.builder.footprint.measure_in_subprocess`` starts ``python -m edge_runtime.run.footprint_probe``
and reads the one JSON line it prints. It lives in ``run/`` because it imports what edge-run imports (the
builder may not import the runtime), and it is a separate process because measuring in the build process
would count everything the build has loaded (the catalogue, the quantiser, other variants), and a process
never gives memory back reliably; a fresh child sees what the device process will see: the interpreter,
numpy, OpenCV, the backend, the model, the frame buffers.

When camera frames are given (``--frame-bytes``, as edge-build and edge-check do), the child also holds what
edge-run holds besides the model, and passes a few frames through the runtime's three-thread shape (see
``runtime_like_load``): the bare model process peaked 135 MiB where edge-run peaked 176 MiB on the demo
bundle, and the footprint is meant to predict edge-run.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.memory import RssPeakSampler, vm_hwm_bytes

if TYPE_CHECKING:
    from edge_runtime.backends.base import Backend

MIB = 1024 * 1024
RUNTIME_LIKE_FRAMES = 20
QUEUE_SIZE = 2  # edge-run's FRAME_QUEUE and PUBLISH_QUEUE (its TENSOR_QUEUE's frames are in frame_bytes)


def measure(args: argparse.Namespace) -> dict[str, object]:
    """Load the model the way edge-run does, time ``args.runs`` embeddings and report the peak memory."""
    # Import what the device process imports before taking the baseline.
    import cv2  # noqa: F401  (counted: the runtime decodes frames with OpenCV)
    import numpy as np
    import psutil

    from edge_runtime.backends import create_backend
    from edge_runtime.backends.gpumem import footprint_gpu_mib, gpu_memory_used_mib, system_gpu_used_mib

    baseline = psutil.Process().memory_info().rss
    # GPU memory is added to the peak RSS, never already in it: VRAM on a discrete GPU, and on a Jetson the
    # nvmap buffers the GPU allocates from the shared DRAM (accounted by nvmap, not in the process's RSS).
    # Per-process figures (NVML, nvmap debugfs) win; else the Jetson's system-wide nvmap growth across this
    # fresh process's run. Read once the runs are done: the steady state, not an engine build's transient peak.
    gpu_wanted = args.backend != "onnxruntime-cpu"
    unified_before = system_gpu_used_mib() if gpu_wanted else None
    sampler = RssPeakSampler()
    sampler.start()
    frames = np.ones(max(args.frame_bytes, 0), dtype=np.uint8)  # touched: camera frame queue
    # edge-run's tensor queue: prepared region batches waiting for the backend, held for the whole run.
    tensors = np.ones(max(args.tensor_bytes, 0), dtype=np.uint8)
    # Opened as edge-run opens it: a GPU engine built without the precision, budget and batch profile is
    # another engine with another footprint. Its cache is this process's own, gone with it.
    engines = Path(tempfile.mkdtemp(prefix="edge-probe-"))
    atexit.register(shutil.rmtree, engines, True)
    backend = create_backend(
        args.backend,
        Path(args.model),
        threads=args.threads,
        embedding_output=args.embedding_output,
        precision=args.precision,
        budget_mib=args.budget_mib,
        engine_dir=engines,
        max_batch=args.max_batch,
        image_input=(args.input_name, args.input_size) if args.input_size else None,
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
        runtime_like_load(
            backend, args.frame_bytes, args.queued_frames, args.batch, Path(args.clip) if args.clip else None
        )
    peak = max(sampler.stop(), vm_hwm_bytes())
    del tensors
    gpu_mib = 0.0
    if gpu_wanted and backend.name != "onnxruntime-cpu":  # a fallback to the CPU holds no GPU memory
        gpu_mib = footprint_gpu_mib(gpu_memory_used_mib(), unified_before, system_gpu_used_mib())
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


def runtime_like_load(
    backend: Backend, frame_bytes: int, queued_frames: int, batch: int, clip: Path | None = None
) -> None:
    """Make this process hold what edge-run holds besides the model, so that its peak predicts edge-run's.

    Measured step by step on the demo bundle, edge-run's extra 40 MiB over the bare model process were: its own
    libraries (pydantic, prometheus_client, paho, sqlite3 and the run modules: about 24 MiB) and, once frames
    flow, decoder and encoder buffers plus one malloc arena per thread (about 15 MiB). So: import what edge-run
    imports, make its metrics registry, MQTT client and SQLite outbox, and pass a few camera-sized frames through
    three threads joined by bounded queues: decode -> preprocess and infer -> JPEG crop, JSON, outbox write.
    ``frame_bytes`` counts the ``queued_frames`` frames edge-run can hold at once (the builder's
    FRAME_QUEUE_DEPTH); the frame is 4:3 of that share of it.
    """
    # The runtime's modules, imported here only: this child measures the device process, which is edge-run.
    import base64
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

    pixels = max(frame_bytes // (queued_frames * 3), 64 * 48)
    height = max(48, int((pixels * 3 / 4) ** 0.5))
    width = max(64, pixels // height)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.dstack([xx % 256, yy % 256, (xx + yy) % 256]).astype(np.uint8)
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
    metrics = RunMetrics(["sku"], memory_budget_mib=1024)
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="footprint")  # never connects
    frames_q: queue.Queue[Any] = queue.Queue(QUEUE_SIZE)
    publish_q: queue.Queue[Any] = queue.Queue(QUEUE_SIZE)
    failures: list[BaseException] = []

    def guarded(body: Callable[[], None]) -> Callable[[], None]:
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
        # Decoded by the same machinery as edge-run's video sources (OpenCV's FFmpeg backend: its libraries and
        # its per-thread decoder buffers count: edge-run on the demo video peaked 183 MiB where this child,
        # decoding JPEG stills, predicted 159), where the builder wrote a clip; JPEG stills otherwise.
        video = cv2.VideoCapture(str(clip)) if clip is not None else None
        try:
            for _ in range(RUNTIME_LIKE_FRAMES):
                ok, frame = video.read() if video is not None else (False, None)
                if not ok and video is not None:  # a short clip: start it again
                    video.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok, frame = video.read()
                frames_q.put(frame if ok else cv2.imdecode(jpeg, cv2.IMREAD_COLOR))
        finally:
            if video is not None:
                video.release()
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
    """Measure one model and print the result as one JSON line (errors: one line on stderr, exit 1)."""
    parser = argparse.ArgumentParser(description="internal: measure one model in a fresh process")
    parser.add_argument("--model", required=True)
    parser.add_argument("--backend", default="onnxruntime-cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--frame-bytes", type=int, default=0)
    parser.add_argument("--queued-frames", type=int, required=True, help="camera frames frame-bytes counts")
    parser.add_argument("--tensor-bytes", type=int, default=0)
    parser.add_argument("--embedding-output", default="embedding")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    parser.add_argument("--budget-mib", type=float, default=None)
    parser.add_argument("--max-batch", type=int, default=None)
    parser.add_argument("--input-name", default="image")
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--clip", default=None, help="a short video of camera-sized frames to decode")
    args = parser.parse_args(argv)
    try:
        result = measure(args)
    except Exception as exc:  # reported to the parent through stderr and the exit code
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
