"""The price of durability: messages per second to a local mosquitto at QoS 1, with and without the outbox.

    python benchmarks/outbox_rate.py [--results 2000] [--crops 300] [--repeats 3]

Side by side in one run, for the same messages (a results message of about 0.6 kB and an unknown-object
message with a 320-px JPEG crop of about 25 kB), each serialised to JSON per message on both sides:

* **outbox**: edge-run's path, ``MqttPublisher.send`` -> ``Outbox.put`` (SQLite WAL, ``synchronous=FULL``: one
  fsync per message) -> sender thread -> paho at QoS 1 -> PUBACK -> delete from the outbox.
* **paho**: ``client.publish(qos=1)`` straight from memory, with the same in-flight window (72); nothing survives
  a crash or a power cut.

Sustained rate = messages / (first send until the last PUBACK). The outbox's state directory is on the disk
this checkout lives on (not /tmp, which may be a RAM disk that makes fsync free); its filesystem is printed.

Then, at a camera's pace (``--fps``, 50 by default, ``--frames`` frames): what the publish path costs per frame,
a results message and an unknown message with its crop per frame, handed over as edge-run's publish thread does
(``send_many``: one transaction per frame, where the publisher has it; ``send`` per message otherwise): CPU
milliseconds per frame by thread (the caller's, the sender's, paho's network thread) and the wall time of the
hand-over, which is what the publish thread waits (the fsync).
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from _common import CACHE, broker, machine_line
from paho.mqtt.enums import CallbackAPIVersion
from publish_ratio import ThreadCpu

from edge_runtime.run.mqtt import MqttPublisher
from edge_runtime.run.outbox import Outbox

HOST = "127.0.0.1"
INFLIGHT = 64  # MqttPublisher's default window; paho gets the same (+8, as the publisher sets it)


def results_message(i: int) -> dict[str, Any]:
    """The shape edge-run publishes per frame: one region, top-5."""
    return {
        "schema": "edge.results/1",
        "id": uuid.uuid4().hex,
        "device_id": "rate-bench",
        "bundle_id": "sha256:" + "9ab2" * 16,
        "frame_id": i,
        "source_ref": str(i),
        "ts": "2026-11-26T12:00:00.123Z",
        "regions": [
            {
                "box": [0, 0, 640, 480],
                "sku": "arla-standard-milk",
                "name": "Arla Standard Milk",
                "group": "Milk",
                "score": 0.97,
                "ood_score": 0.12,
                "route": "accept",
                "top_k": [[f"sku-{j:04d}", round(0.97 / (j + 1), 6)] for j in range(5)],
            }
        ],
    }


def crop_message(i: int, jpeg_b64: str) -> dict[str, Any]:
    return {
        "schema": "edge.unknown/1",
        "id": uuid.uuid4().hex,
        "device_id": "rate-bench",
        "frame_id": i,
        "source_ref": str(i),
        "ts": "2026-11-26T12:00:00.123Z",
        "box": [120, 40, 320, 240],
        "ood_score": 0.91,
        "nearest": [["oatly-oat-milk", 0.41]],
        "crop": {"format": "jpeg", "width": 320, "height": 240, "data": jpeg_b64},
    }


def _crop_b64() -> str:
    from edge_runtime.demo import demo_skus, render_product

    image = render_product(demo_skus(0)[3], np.random.default_rng(7), size=(320, 240))
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return base64.b64encode(data.tobytes()).decode("ascii")


def via_outbox(port: int, bodies: list[dict[str, Any]], topic: str, state_root: Path) -> tuple[float, float]:
    """(messages/s until the last PUBACK, send() calls/s) through MqttPublisher and the durable outbox."""
    state = Path(tempfile.mkdtemp(prefix="outbox-rate-", dir=state_root))
    outbox = Outbox(state / "outbox.sqlite3", max_bytes=1 << 30, ttl_s=3600.0)
    publisher = MqttPublisher(
        host=HOST, port=port, device_id=f"rate-{uuid.uuid4().hex[:6]}", outbox=outbox, max_inflight=INFLIGHT
    )
    try:
        publisher.start()
        if not publisher.wait_connected(10):
            raise RuntimeError("publisher did not connect")
        acked0 = publisher.stats().acked
        t0 = time.perf_counter()
        for body in bodies:
            publisher.send(topic, body)
        t_sent = time.perf_counter()
        if not publisher.flush(120):
            raise RuntimeError("outbox did not drain")
        t1 = time.perf_counter()
        assert publisher.stats().acked - acked0 == len(bodies)
    finally:
        publisher.close(publish_offline=False)
        outbox.close()
        shutil.rmtree(state, ignore_errors=True)
    return len(bodies) / (t1 - t0), len(bodies) / (t_sent - t0)


def via_paho(port: int, bodies: list[dict[str, Any]], topic: str) -> float:
    """Messages/s until the last PUBACK, publishing straight from memory at QoS 1."""
    done = threading.Event()
    acked = 0
    lock = threading.Lock()

    def on_publish(*_: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked == len(bodies):
                done.set()

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"rate-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(INFLIGHT + 8)
    client.on_publish = on_publish
    client.connect(HOST, port)
    client.loop_start()
    try:
        t0 = time.perf_counter()
        for body in bodies:
            payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
            client.publish(f"edge/rate/{topic}", payload, qos=1)
        if not done.wait(120):
            raise RuntimeError("paho did not get every PUBACK")
        t1 = time.perf_counter()
    finally:
        client.disconnect()
        client.loop_stop()
    return len(bodies) / (t1 - t0)


def per_frame(port: int, crop: str, frames: int, fps: float, state_root: Path) -> dict[str, float]:
    """CPU ms per frame by thread, and the hand-over's wall ms, publishing one results and one crop message per
    frame at ``fps`` (the first 20 frames are warm-up)."""
    from edge_runtime.run import messages

    data: Any = getattr(messages, "Base64Text", str)(crop)  # what encode_crop makes, where it exists
    state = Path(tempfile.mkdtemp(prefix="outbox-frames-", dir=state_root))
    outbox = Outbox(state / "outbox.sqlite3", max_bytes=1 << 30, ttl_s=3600.0)
    publisher = MqttPublisher(host=HOST, port=port, device_id=f"frames-{uuid.uuid4().hex[:6]}", outbox=outbox)
    cpu = ThreadCpu()
    warmup, handover = 20, 0.0
    before: dict[str, float] = {}
    try:
        publisher.start()
        if not publisher.wait_connected(10):
            raise RuntimeError("publisher did not connect")
        cpu.start()
        t0 = time.perf_counter()
        for i in range(warmup + frames):
            if i == warmup:
                before = cpu.snapshot()
            time.sleep(max(0.0, t0 + i / fps - time.perf_counter()))
            body = crop_message(i, "")
            body["crop"]["data"] = data
            batch = [("results", results_message(i)), ("unknown", body)]
            t = time.perf_counter()
            if hasattr(publisher, "send_many"):
                publisher.send_many(batch)
            else:
                for topic, message in batch:
                    publisher.send(topic, message)
            handover += time.perf_counter() - t if i >= warmup else 0.0
        if not publisher.flush(60):
            raise RuntimeError("outbox did not drain")
        after = cpu.snapshot()
    finally:
        cpu.stop()
        publisher.close(publish_offline=False)
        outbox.close()
        shutil.rmtree(state, ignore_errors=True)
    me = threading.current_thread().name
    out = {
        ("caller" if k == me else k): (after.get(k, 0.0) - before.get(k, 0.0)) / frames * 1000.0
        for k in after
        if k != "thread-cpu"
    }
    out["hand-over wall"] = handover / frames * 1000.0
    return out


def _filesystem(path: Path) -> str:
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return f"{kind} at {best or '?'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=2000, help="results messages per run")
    parser.add_argument("--crops", type=int, default=300, help="crop messages per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=300, help="frames of the paced run (default 300)")
    parser.add_argument("--fps", type=float, default=50.0, help="pace of the paced run (default 50)")
    parser.add_argument("--paced-only", action="store_true", help="only the paced run, not the rates")
    args = parser.parse_args()

    state_root = CACHE / "bench"
    state_root.mkdir(parents=True, exist_ok=True)
    crop = _crop_b64()
    kinds = {
        "results": [results_message(i) for i in range(args.results)],
        "unknown": [crop_message(i, crop) for i in range(args.crops)],
    }
    print(machine_line())
    print(f"outbox state on {_filesystem(state_root)}; QoS 1, in-flight window {INFLIGHT}; {args.repeats} repeats")
    with broker() as port:
        if port is None:
            print("mosquitto not installed (make sysdeps): nothing to measure")
            return 0
        print(f"{'message':<10}{'bytes':>7}{'outbox msg/s':>14}{'send() /s':>11}{'paho msg/s':>12}{'outbox/paho':>13}")
        for topic, bodies in kinds.items() if not args.paced_only else ():
            size = len(json.dumps(bodies[0], separators=(",", ":")))
            out_rates, send_rates, paho_rates = [], [], []
            for _ in range(args.repeats):
                rate, send_rate = via_outbox(port, bodies, topic, state_root)
                out_rates.append(rate)
                send_rates.append(send_rate)
                paho_rates.append(via_paho(port, bodies, topic))
            o, s, p = (statistics.median(x) for x in (out_rates, send_rates, paho_rates))
            print(f"{topic:<10}{size:>7}{o:>14.0f}{s:>11.0f}{p:>12.0f}{o / p:>13.2f}", flush=True)
            print(
                f"{'':<10}runs: outbox {' '.join(f'{x:.0f}' for x in out_rates)}; "
                f"paho {' '.join(f'{x:.0f}' for x in paho_rates)}"
            )
        print(
            "(outbox msg/s: first send() to the last PUBACK; send() /s: how fast the pipeline's publish thread can "
            "store)"
        )
        runs = [per_frame(port, crop, args.frames, args.fps, state_root) for _ in range(args.repeats)]
    cells = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}
    wall = cells.pop("hand-over wall")
    print(
        f"\nat {args.fps:g} frames/s, a results and a crop message per frame ({args.frames} frames, "
        f"{args.repeats} repeats, medians): CPU ms per frame "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(cells.items(), key=lambda kv: -kv[1]) if v >= 0.005)
        + f"; all {sum(cells.values()):.2f}; hand-over wall {wall:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
