"""Throughput of the full edge-run pipeline against the bare backend and a naive sequential loop.

    python benchmarks/loop_efficiency.py [--bundle DIR] [--seconds 20] [--repeats 3] [--warmup 10]

On one demo video (640x480, every frame processed, whole-frame region), side by side in one run:

* **bare**: ``backend.embed`` on tensors prepared beforehand: the same model, backend and thread count the
  pipeline opens (``open_backend`` with the bundle's profile). The ceiling for any loop around it.
* **pipeline**: ``run.pipeline.run`` as edge-run runs it: capture, preprocess, inference and publish threads, the
  durable outbox and QoS 1 publishing to a local mosquitto (started here on a free loopback port).
* **naive**: the same work one step after another in one thread: read, regions, preprocess, infer, classify,
  build the messages and JPEG crops, store each in the outbox, publish it and wait for its PUBACK, delete it.

Throughput is counted after ``--warmup`` frames (runs), from the completion of the last warm-up frame to the
last frame, so start-up is excluded alike. The three are run in turn ``--repeats`` times; medians are reported.
Target: pipeline >= 0.90 x bare; the pipeline should beat the naive loop.

Each pipeline thread's busy time per frame is the sum of its stages' mean times (``THREAD_STAGES``); the busiest
thread bounds the pipeline's rate when the threads have cores to overlap on, which a CPU-bound host may not have.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from _common import broker, demo_bundle, demo_video, machine_line
from paho.mqtt.enums import CallbackAPIVersion

from edge_runtime.bundle import load_bundle
from edge_runtime.features import head_input
from edge_runtime.head.model import load_head
from edge_runtime.preprocess import prepare_batch
from edge_runtime.run.outbox import Outbox
from edge_runtime.run.pipeline import RunOptions, run
from edge_runtime.run.regions import crop, make_region_finder
from edge_runtime.run.stages import FrameTiming
from edge_runtime.run.startup import bundle_profile, open_backend
from edge_runtime.types import OutMessage

HOST = "127.0.0.1"
DISTINCT_TENSORS = 32
# Which of the pipeline's stage timings each of its threads spends (run/pipeline.py's thread diagram).
THREAD_STAGES: dict[str, tuple[str, ...]] = {
    "capture": ("capture",),
    "preprocess": ("regions", "preprocess"),
    "inference": ("inference", "head"),
    "publish": ("encode", "publish"),
}


def _frames(video: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return out


def bare_fps(bundle_dir: Path, frames: list[np.ndarray], warmup: int) -> tuple[float, float, float]:
    """Frames per second of backend.embed alone on pre-made tensors, its mean ms per call, and cores kept busy."""
    bundle = load_bundle(bundle_dir)
    profile = bundle_profile(bundle)
    backend = open_backend(bundle, profile)
    try:
        tensors = [prepare_batch([f], backend.input_size) for f in frames[:DISTINCT_TENSORS]]
        for i in range(warmup):
            backend.embed(tensors[i % len(tensors)])
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(len(frames)):
            backend.embed(tensors[i % len(tensors)])
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        backend.close()
    return len(frames) / elapsed, elapsed / len(frames) * 1000.0, cpu / elapsed


def pipeline_fps(bundle_dir: Path, video: Path, port: int | None, warmup: int) -> tuple[float, dict[str, float], float]:
    """Steady-state frames per second of the real pipeline, its mean ms per stage, and cores kept busy."""
    timings: list[FrameTiming] = []
    cpu: list[float] = []  # process CPU seconds (every thread) when each frame was stored

    def on_frame(t: FrameTiming) -> None:
        cpu.append(time.process_time())
        timings.append(t)

    with tempfile.TemporaryDirectory(prefix="edge-loop-") as state:
        summary = run(
            RunOptions(
                bundle=bundle_dir,
                source=str(video),
                state_dir=Path(state),
                metrics_port=0,
                mqtt_host=HOST,
                mqtt_port=port or 1,  # no broker: messages stay in the outbox, the pipeline is the same
                connect_wait_s=2.0 if port else 0.1,
                drain_timeout_s=30.0 if port else 0.5,
                device_id="loop-bench",
                every_frame=True,
                handle_signals=False,
                on_frame=on_frame,
            )
        )
    if port and not summary.drained:
        print(f"  warning: pipeline run left {summary.outbox_left} unacknowledged messages", file=sys.stderr)
    measured = timings[warmup:]
    seconds = measured[-1].done - timings[warmup - 1].done
    stages = {s: statistics.fmean(t.stages.get(s, 0.0) for t in measured) * 1000.0 for s in measured[0].stages}
    return len(measured) / seconds, stages, (cpu[-1] - cpu[warmup - 1]) / seconds


def _crop_json(image: np.ndarray, max_side: int, quality: int) -> dict[str, Any]:
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    _, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return {
        "format": "jpeg",
        "width": image.shape[1],
        "height": image.shape[0],
        "data": base64.b64encode(jpeg).decode(),
    }


def naive_fps(bundle_dir: Path, video: Path, port: int | None, warmup: int) -> tuple[float, float]:
    """One thread, one step after another, publishing each message synchronously (PUBACK awaited)."""
    bundle = load_bundle(bundle_dir)
    profile = bundle_profile(bundle)
    backend = open_backend(bundle, profile)
    head = load_head(bundle)
    finder = make_region_finder(profile.regions, bundle.root, threads=profile.backend.threads)
    m = profile.mqtt
    client = None
    if port:
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="loop-naive")
        client.connect(HOST, port)
        client.loop_start()
    cap = cv2.VideoCapture(str(video))
    done: list[float] = []
    cpu: list[float] = []
    with tempfile.TemporaryDirectory(prefix="edge-naive-") as state:
        outbox = Outbox(Path(state) / "outbox.sqlite3", max_bytes=64 << 20, ttl_s=3600.0)
        try:
            index = 0
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                regions = finder.find(frame)
                views = [crop(frame, r) for r in regions]
                decisions = []
                if views:
                    batch = prepare_batch(views, backend.input_size)
                    decisions = head.decide(head_input(backend.embed(batch), batch, head.config.colour_weight))
                messages: list[tuple[str, dict[str, Any]]] = [
                    (
                        "results",
                        {
                            "schema": "edge.results/1",
                            "id": uuid.uuid4().hex,
                            "frame_id": index,
                            "regions": [
                                {"box": list(r.box), "sku": d.sku, "score": d.score, "route": d.route, "top_k": d.top_k}
                                for r, d in zip(regions, decisions, strict=True)
                            ],
                        },
                    )
                ]
                for r, d, view in zip(regions, decisions, views, strict=True):
                    if d.route != "accept":
                        body = {"schema": f"edge.{d.route}/1", "id": uuid.uuid4().hex, "box": list(r.box)}
                        body["crop"] = _crop_json(view, m.crop_max_side, m.jpeg_quality)
                        messages.append((d.route, body))
                for topic, body in messages:
                    payload = json.dumps(body, separators=(",", ":")).encode()
                    msg = OutMessage(body["id"], f"edge/loop-naive/{topic}", payload, "result", time.time())
                    outbox.put(msg)
                    if client is not None:
                        client.publish(msg.topic, payload, qos=1).wait_for_publish(10)
                        outbox.ack(msg.id)
                done.append(time.perf_counter())
                cpu.append(time.process_time())
                index += 1
        finally:
            outbox.close()
            cap.release()
            backend.close()
            if client is not None:
                client.disconnect()
                client.loop_stop()
    seconds = done[-1] - done[warmup - 1]
    return (len(done) - warmup) / seconds, (cpu[-1] - cpu[warmup - 1]) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle (default: the demo bundle, out/demo/bundle)")
    parser.add_argument("--seconds", type=float, default=20.0, help="demo video length at 10 fps (default 20)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    warmup = max(1, args.warmup)

    bundle_dir = demo_bundle(args.bundle)
    video = demo_video(args.seconds)
    frames = _frames(video)
    manifest = load_bundle(bundle_dir).manifest
    print(machine_line())
    print(
        f"bundle {bundle_dir} ({manifest['variant']['variant']}, threads {manifest['measurement'].get('threads')}); "
        f"video {video.name}: {len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]}, "
        f"{warmup} warm-up, {args.repeats} repeats"
    )
    results: dict[str, list[float]] = {"bare": [], "pipeline": [], "naive": []}
    busy: dict[str, list[float]] = {"bare": [], "pipeline": [], "naive": []}
    stage_runs: list[dict[str, float]] = []
    bare_ms: list[float] = []
    with broker() as port:
        if port is None:
            print("mosquitto not installed: publishing goes to the outbox only (no broker round trips)")
        for _ in range(args.repeats):
            fps, ms, cores = bare_fps(bundle_dir, frames, warmup)
            results["bare"].append(fps)
            busy["bare"].append(cores)
            bare_ms.append(ms)
            fps, stages, cores = pipeline_fps(bundle_dir, video, port, warmup)
            results["pipeline"].append(fps)
            busy["pipeline"].append(cores)
            stage_runs.append(stages)
            fps, cores = naive_fps(bundle_dir, video, port, warmup)
            results["naive"].append(fps)
            busy["naive"].append(cores)
            print("  run: " + ", ".join(f"{k} {v[-1]:.1f} fps" for k, v in results.items()), flush=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{'loop':<10}{'fps (median)':>14}{'x bare':>9}{'cores busy':>12}{'CPU ms/frame':>14}   runs")
    for k, v in results.items():
        cores = statistics.median(busy[k])
        print(
            f"{k:<10}{med[k]:>14.1f}{med[k] / med['bare']:>9.2f}{cores:>12.2f}{1000 * cores / med[k]:>14.2f}   "
            + " ".join(f"{x:.1f}" for x in v)
        )
    print("(cores busy: this process's CPU time over wall time in the measured window; mosquitto not included)")
    stages = {s: statistics.median(r[s] for r in stage_runs) for s in stage_runs[0]}
    threads = {t: sum(stages.get(s, 0.0) for s in names) for t, names in THREAD_STAGES.items()}
    busiest = max(threads, key=lambda t: threads[t])
    print(
        "pipeline mean ms per frame: "
        + ", ".join(f"{s} {v:.2f}" for s, v in stages.items())
        + f"; bare embed {statistics.median(bare_ms):.2f}"
    )
    print(
        "threads busy ms/frame: "
        + ", ".join(f"{t} {v:.2f}" for t, v in threads.items())
        + f"; busiest {busiest} (ceiling {1000 / max(1e-9, threads[busiest]):.1f} fps with a core per thread)"
    )
    ratio, naive_ratio = med["pipeline"] / med["bare"], med["pipeline"] / med["naive"]
    print(
        f"pipeline / bare = {ratio:.2f} (target >= 0.90: {'met' if ratio >= 0.9 else 'MISSED'}); "
        f"pipeline / naive = {naive_ratio:.2f} ({'faster' if naive_ratio > 1 else 'NOT faster'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
