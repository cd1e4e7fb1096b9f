"""Run edge-run briefly on the demo bundle and show what it published.

Generates a short demo video in the cache directory, starts a throwaway mosquitto on a free loopback port when the
binary exists, runs the pipeline on every frame and prints the summary, the counts by route and topic, and a
couple of example messages (crops shortened). Then a cart session (issue 18's scenes): a rendered basket where a
hand puts products in and takes one out, run through a copy of the bundle whose profile says ``[scene] kind =
"cart"`` (what edge-build writes for a cart profile); it prints the events as they were published and the cart's
retained contents against the scenario's truth. Without mosquitto the runs keep every message in their outboxes
and say so: the next run with a broker sends them first.

    python build_scripts/demo_run.py --bundle out/demo/bundle
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

# Lets the script run from a plain checkout, where edge_runtime is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_runtime.bundle import MANIFEST, PROFILE, json_bytes, load_bundle, write_bundle
from edge_runtime.demo import generate_demo_video
from edge_runtime.demo.cart_scenes import write_cart_video
from edge_runtime.errors import EdgeError
from edge_runtime.run.pipeline import RunOptions, RunSummary, run

HOST = "127.0.0.1"
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin")


def find_mosquitto() -> str | None:
    """mosquitto from PATH or the sbin directories, which are often not in a user's PATH."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for d in SBIN_DIRS:
        candidate = Path(d) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_broker(binary: str) -> Iterator[int]:
    """A throwaway anonymous mosquitto on a free loopback port; yields the port."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="edge-demo-mqtt-") as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        lines = [f"listener {port} {HOST}", "allow_anonymous true", "persistence false", "log_dest none"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # as root mosquitto would drop to a user that cannot read the temp dir
        conf.write_text("\n".join(lines) + "\n")
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 10
            while True:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise RuntimeError(f"mosquitto exited with {proc.returncode}: {err.strip()}")
                with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not listen on {port} within 10 s")
                time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


class Listener:
    """Subscribes to everything and keeps the JSON payloads, deduplicated by id as a consumer would."""

    def __init__(self, port: int) -> None:
        self.messages: dict[str, tuple[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self._client.on_connect = lambda c, *_: c.subscribe("#", qos=1)
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(HOST, port)
        self._client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("could not subscribe to the demo broker")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            payload = json.loads(message.payload)
            with self._lock:
                self.messages[payload.get("id", str(len(self.messages)))] = (message.topic, payload)

    def by_topic(self) -> Counter[str]:
        with self._lock:
            return Counter(topic.rsplit("/", 1)[-1] for topic, _ in self.messages.values())

    def example(self, schema: str) -> dict[str, Any] | None:
        with self._lock:
            return next((p for _, p in self.messages.values() if p.get("schema") == schema), None)

    def with_schema(self, schema: str) -> list[dict[str, Any]]:
        """Every payload of ``schema``, in arrival order."""
        with self._lock:
            return [p for _, p in self.messages.values() if p.get("schema") == schema]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def shorten(payload: dict[str, Any], limit: int = 600) -> str:
    body = json.loads(json.dumps(payload))
    crop = body.get("crop")
    if isinstance(crop, dict) and isinstance(crop.get("data"), str):
        crop["data"] = f"<{len(crop['data'])} base64 chars>"
    text = json.dumps(body, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def demo_video(cache_dir: Path, seconds: float) -> Path:
    target = cache_dir / "demo-run" / f"demo-{seconds:g}s.mp4"
    for existing in (target, target.with_suffix(".avi")):
        if existing.is_file():
            return existing
    return generate_demo_video(target, seconds=seconds, fps=10, size=(640, 480))


def cart_bundle(bundle: Path, cache_dir: Path) -> Path:
    """A copy of ``bundle`` whose profile runs the cart scene: every file and hash as edge-build writes them."""
    source = load_bundle(bundle)
    manifest = json.loads((source.root / MANIFEST).read_text())
    members = {name: (source.root / name).read_bytes() for name in manifest["files"]}
    profile = json.loads(members[PROFILE])
    profile["scene"] = {"kind": "cart", "cart": {"learn_frames": 15, "settle_s": 0.5, "gone_s": 0.6}}
    members[PROFILE] = json_bytes(profile)
    for key in ("schema", "schema_version", "files"):
        manifest.pop(key, None)
    return write_bundle(cache_dir / "demo-cart" / "out", members, manifest).root


def cart_video(cache_dir: Path) -> Path:
    # Seed 8: three products in (two at once), a lighting step, one taken out again.
    target = cache_dir / "demo-cart" / "session-8.avi"
    return target if target.is_file() else write_cart_video(target, seed=8, actions=4)


def print_cart_report(summary: RunSummary, listener: Listener, video: Path) -> None:
    truth = json.loads(video.with_suffix(".truth.json").read_text())
    print(f"\ncart session ({truth['frames']} frames, {', '.join(truth['features'])}):")
    print(summary.text())
    print(f"messages produced by topic: {dict(sorted(summary.messages_by_topic.items()))}")
    print("events (edge.event/1 on .../events), as published:")
    for payload in listener.with_schema("edge.event/1"):
        what = f"{payload['sku'] or 'new product'} ({payload['route']}, track {payload['track_id']})"
        print(f"  frame {payload['frame_id']:4d}  {payload['type']:13s} {what if payload['route'] else ''}")
    print("truth:")
    for event in truth["events"]:
        print(f"  frame {event['frame']:4d}  {event['type']:13s} {event['sku']}")
    carts = listener.with_schema("edge.cart/1")
    filled = [c for c in carts if c["session_id"]]
    if filled:
        print(f"\ncontents before checkout (edge.cart/1, retained): {shorten(filled[-1], 400)}")
    print(f"truth: {truth['contents']}")


def print_report(summary: RunSummary, listener: Listener | None) -> None:
    print(summary.text())
    routes = ", ".join(f"{k} {v}" for k, v in sorted(summary.routes.items()))
    print(f"\nregions by route: {routes or 'none'}")
    print(f"messages produced by topic: {dict(sorted(summary.messages_by_topic.items()))}")
    if listener is None:
        return
    print(f"messages received from the broker by topic: {dict(sorted(listener.by_topic().items()))}")
    for schema in ("edge.status/1", "edge.results/1", "edge.unknown/1", "edge.verify/1", "edge.heartbeat/1"):
        example = listener.example(schema)
        if example is not None:
            print(f"\nexample {schema}:\n  {shorten(example)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("out/demo/bundle"), help="bundle/ from edge-build")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("EDGE_CACHE_DIR", Path.home() / ".cache" / "edge_runtime")),
        help="where the demo video and the demo run's outbox live (default: $EDGE_CACHE_DIR)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the demo video (default 5 s)")
    parser.add_argument(
        "--sampler", action="store_true", help="use the profile's motion sampler (default: every frame)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show edge-run's progress log")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not (args.bundle / "manifest.json").is_file():
        print(f"demo_run: no bundle at {args.bundle}; run `make demo` (edge-build) first", file=sys.stderr)
        return 3

    video = demo_video(args.cache_dir, args.seconds)
    options = RunOptions(
        bundle=args.bundle,
        source=str(video),
        state_dir=args.cache_dir / "demo-run" / "state",
        metrics_port=0,
        mqtt_host=HOST,
        every_frame=not args.sampler,
        handle_signals=True,
    )
    binary = find_mosquitto()
    try:
        if binary is None:
            print("demo_run: mosquitto not installed (`make sysdeps`): messages will wait in the outbox\n")
            options.mqtt_port = free_port()  # nobody listens there
            options.connect_wait_s = 0.5
            options.drain_timeout_s = 1.0
            print_report(run(options), None)
            cart = replace(
                options, bundle=cart_bundle(args.bundle, args.cache_dir), source=str(cart_video(args.cache_dir))
            )
            cart.state_dir = args.cache_dir / "demo-cart" / "state"
            print(f"\ncart session: {run(cart).text()}")
            return 0
        with local_broker(binary) as port:
            options.mqtt_port = port
            listener = Listener(port)
            try:
                summary = run(options)
                time.sleep(0.3)  # the last deliveries to our own subscriber
                print(f"demo_run: ran {args.bundle} on {video} with a local mosquitto on port {port}\n")
                print_report(summary, listener)
            finally:
                listener.close()
            video = cart_video(args.cache_dir)
            cart = replace(options, bundle=cart_bundle(args.bundle, args.cache_dir), source=str(video))
            cart.state_dir = args.cache_dir / "demo-cart" / "state"
            listener = Listener(port)
            try:
                summary = run(cart)
                time.sleep(0.3)
                print_cart_report(summary, listener, video)
            finally:
                listener.close()
        return 0
    except EdgeError as exc:
        print(f"demo_run: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
