"""edge-run: the on-device loop. This is the one place that wires the run stages together.

::

    capture thread     source.read() -> sampler -> frame queue   (live: drop the OLDEST frame when full, counted;
                                                                  files and folders: block, never drop)
    preprocess thread  regions -> crops -> prepare_batch (+ colour descriptor) -> tensor queue   (blocks, never drops)
    inference thread   ONE backend.embed per frame -> compose (+ colour) -> head.decide -> publish queue   (blocks)
    publish thread     encode (JSON; JPEG crops cut to the box, capped) -> outbox (durable, fsynced)
    MqttPublisher      its own sender and network threads: outbox -> broker at QoS 1, ack -> delete
    main thread        startup, systemd, heartbeats, metrics refresh, shutdown and drain

A slow broker never stalls inference (the outbox absorbs it), a slow disk or JPEG encoder never stalls inference
for more than one queue (the publish queue is bounded and blocks), and a slow model never blocks a live camera
(its queue drops the oldest frame). Each queue carries the end marker on to the next, so a stop or the end of a
file processes and stores every frame already read.

Where each part lives: ``startup`` (bundle, identity, backend, source, metrics, publisher), ``queues`` (the
bounded queues; their depths are part of edge-build's footprint), ``stages`` (the four thread loops),
``messages`` (every schema and payload), ``feedback`` (reviewer feedback), ``heartbeat`` (the main thread's
periodic work), ``publisher`` and ``mqtt`` (where messages go). ``run()`` below reads top to bottom.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import edge_runtime
from edge_runtime.backends import default_engine_dir
from edge_runtime.errors import AuthError
from edge_runtime.head.model import load_head
from edge_runtime.profile import Camera
from edge_runtime.run.feedback import FeedbackBook, FeedbackInbox
from edge_runtime.run.health import SystemdNotifier
from edge_runtime.run.heartbeat import Heartbeat
from edge_runtime.run.messages import latency_ms
from edge_runtime.run.outbox import OutboxStats
from edge_runtime.run.publisher import Publisher
from edge_runtime.run.queues import FRAME_QUEUE, POLL_S, PUBLISH_QUEUE, TENSOR_QUEUE, StageQueue
from edge_runtime.run.regions import make_region_finder
from edge_runtime.run.sampler import AdaptiveSampler
from edge_runtime.run.scene.messages import SESSION_TOPIC
from edge_runtime.run.scene.stage import make_scene
from edge_runtime.run.sources import ImageFolderSource, Source, redact_uri
from edge_runtime.run.stages import FrameTiming, Stages
from edge_runtime.run.startup import (
    await_broker,
    default_state_dir,
    instance_device_id,
    open_bundle,
    open_checked_backend,
    open_frames,
    open_metrics,
    open_publisher,
    outbox_delivered_on_refusal,
    pick_camera,
    status_fields,
)

__all__ = ["RunOptions", "RunSummary", "dumps_summary", "run"]

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """What ``edge-run`` was asked to do; ``None`` means: take it from the bundle's profile."""

    bundle: Path
    source: str | None = None  # None: the camera's source (see fallback_source when that is empty)
    state_dir: Path | None = None  # None: $STATE_DIRECTORY, else ~/.local/state/edge_runtime/DEVICE-CAMERA
    engine_dir: Path | None = None  # GPU engine caches; None: backends.default_engine_dir() (shared by all)
    max_frames: int | None = None  # stop after this many frames read from the source
    metrics_port: int | None = None  # 0 disables the endpoint
    metrics_addr: str = "0.0.0.0"
    mqtt_host: str | None = None
    mqtt_port: int | None = None
    device_id: str | None = None
    camera: str | None = None  # profile camera name; None = the first one
    drain_timeout_s: float = 10.0
    every_frame: bool = False  # bypass the motion sampler (image folders always do)
    realtime: bool = False  # play files at their frame rate, like a camera, instead of as fast as possible
    heartbeat_s: float = 30.0
    connect_wait_s: float = 2.0  # how long startup waits for the broker's verdict on our credentials
    handle_signals: bool = True  # SIGTERM/SIGINT stop the run (only possible in the main thread)
    public_key: Path | None = None  # the device's bundle public key: only bundles it signed are run
    # The source of a camera whose profile leaves it empty (dev-cpu's demo camera) when ``source`` is None:
    # called with the state directory and the camera. edge-run's CLI passes the demo video generator; None
    # leaves the empty source, which is refused.
    fallback_source: Callable[[Path, Camera], str] | None = None
    # edge-bench's hooks; the defaults are edge-run's behaviour.
    frames: Source | None = None  # a ready-made source, used instead of opening `source`
    publish: bool = True  # False: messages are built and serialised as usual, then discarded (no outbox, no broker)
    on_frame: Callable[[FrameTiming], None] | None = None  # called by the publish thread for every stored frame


@dataclass(frozen=True)
class RunSummary:
    """What a run did. ``messages_acked`` includes messages left over from an earlier run and delivered now."""

    frames_read: int
    frames_processed: int
    frames_skipped: int  # sampler
    frames_dropped: int  # live queue overflow
    frame_errors: int
    regions: int
    routes: dict[str, int]
    messages_produced: int  # stored in the outbox by this run
    messages_by_topic: dict[str, int]
    messages_acked: int
    messages_dropped: int  # dropped by the outbox (cap, TTL, disk), by this run
    outbox_left: int
    drained: bool  # every stored message was acknowledged before exit
    elapsed_s: float
    fps: float  # processed frames per second, first capture to the last frame stored (startup excluded)
    latency_ms: dict[str, float]  # capture -> results stored, p50 and p95 over the last LATENCY_WINDOW frames
    backend: str
    source: str
    bundle_id: str
    device_id: str
    ended_by: str  # "source ended" | "max frames" | "stop requested" | "error"
    state_dir: str
    source_reconnects: int = 0  # live sources: reconnection attempts
    source_read_failures: int = 0  # failed opens/reads (live), undecodable frames (files)
    outbox_drops: dict[str, dict[str, int]] = field(default_factory=dict)  # reason -> kind -> messages

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-ready data (``edge-run --json``)."""
        return asdict(self)

    def text(self) -> str:
        """The summary for people: what ended the run, frames, latency, routes, messages."""
        routes = ", ".join(f"{k} {v}" for k, v in sorted(self.routes.items())) or "none"
        lines = [
            f"edge-run: {self.ended_by}; {self.frames_processed} of {self.frames_read} frames processed "
            f"({self.frames_skipped} skipped by the sampler, {self.frames_dropped} dropped, "
            f"{self.frame_errors} failed) in {self.elapsed_s:.1f} s, {self.fps:.1f} fps on {self.backend}, "
            f"latency p50 {self.latency_ms['p50']:.0f} ms, p95 {self.latency_ms['p95']:.0f} ms",
            f"  regions {self.regions}: {routes}",
            f"  messages: {self.messages_produced} produced, {self.messages_acked} acknowledged by the broker, "
            f"{self.messages_dropped} dropped",
        ]
        if self.outbox_left:
            lines.append(
                f"  {self.outbox_left} message(s) kept in the outbox under {self.state_dir} for the next start"
            )
        return "\n".join(lines)


def dumps_summary(summary: RunSummary) -> str:
    """The summary as the indented, key-sorted JSON ``edge-run --json`` prints."""
    return json.dumps(summary.as_dict(), indent=2, sort_keys=True)


# --------------------------------------------------------------------------- the run


def run(options: RunOptions, stop_event: threading.Event | None = None) -> RunSummary:
    """Run the pipeline until the source ends, ``max_frames`` are read, or ``stop_event``/SIGTERM/SIGINT; then
    drain the queues and wait (up to ``drain_timeout_s``) for the broker to acknowledge every stored message.

    Startup problems raise EdgeError subclasses carrying their exit codes (bundle or source unusable: 3, broker
    refused our credentials: 7). Per-frame problems are counted in the summary and the metrics, never raised.
    A broker that refuses us mid-run ends the run with AuthError; a stage that fails for good re-raises its error.
    """
    t_start = time.monotonic()
    stop, hurry = stop_event or threading.Event(), threading.Event()
    with contextlib.ExitStack() as cleanup, _signals_stop(stop, hurry, options.handle_signals):
        # 1. The bundle (every hash verified before anything is loaded; its profile is what we run with), the
        #    camera, who we are on the broker and where our state lives.
        bundle, profile = open_bundle(options.bundle, options.public_key)
        camera = pick_camera(profile, options.camera)
        device_id = instance_device_id(profile, camera, options.device_id)
        default_dir = default_state_dir(options.device_id or profile.mqtt_device_id, camera.name)
        state_dir = Path(options.state_dir) if options.state_dir else default_dir
        # GPU engines: one folder for every camera instance, edge-bench and edge-build --engine-on-device.
        engine_dir = Path(options.engine_dir) if options.engine_dir else default_engine_dir()
        if device_id != profile.mqtt_device_id and not options.device_id:
            log.info("profile has %d cameras: this instance publishes as %s", len(profile.cameras), device_id)
        head = load_head(bundle)
        skus = [s.code for s in head.skus]

        # 2-3. A backend or source that cannot be used ends the run (exit 2/3, which keeps the unit down); what an
        #      earlier run left in the outbox is delivered first, within the drain timeout.
        with outbox_delivered_on_refusal(
            profile,
            state_dir,
            publish=options.publish,
            timeout_s=options.drain_timeout_s,
            host=options.mqtt_host,
            port=options.mqtt_port,
            device_id=device_id,
            camera=camera,
            status_fields={"bundle_id": bundle.bundle_id, "camera": camera.name, "version": edge_runtime.__version__},
        ):
            # 2. The backend, checked against the input size the bundle was built and calibrated for.
            backend, input_size = open_checked_backend(bundle, profile, head, engine_dir, cleanup)

            # 3. The source (lazy for cameras: the first read connects), sampler and region finder.
            source, uri = open_frames(options.frames, options.source, camera, state_dir, options.fallback_source)
            cleanup.callback(source.close)
        sampling = not options.every_frame and not isinstance(source, ImageFolderSource)
        sampler = AdaptiveSampler.from_profile(profile.sampler, enabled=None if sampling else False)
        finder = make_region_finder(
            profile.regions,
            bundle.root,
            threads=profile.backend.threads,
            prefer=profile.backend.prefer,
            allow_fallback=profile.backend.allow_fallback,
            engine_dir=engine_dir,
        )

        # 4. Sinks: metrics, the publisher over its durable outbox, feedback, systemd.
        metrics = open_metrics(bundle, profile, backend, skus, options.metrics_port, options.metrics_addr)
        cleanup.callback(metrics.close)
        publisher = open_publisher(
            profile,
            state_dir,
            cleanup,
            publish=options.publish,
            host=options.mqtt_host,
            port=options.mqtt_port,
            device_id=device_id,
            camera=camera,
            status_fields=status_fields(bundle, backend, camera, uri),
        )
        # The scene after the head (cart events and contents, shelf slots; run/scene/), with its region finder.
        scene, finder = make_scene(
            profile,
            head,
            (camera.width, camera.height),
            device_id=device_id,
            registry=metrics.registry,
            finder=finder,
        )
        feedback = FeedbackBook(skus, metrics)
        publisher.on_feedback(FeedbackInbox(feedback, metrics).receive)
        if scene is not None and scene.cart is not None:
            publisher.on_topic(SESSION_TOPIC, scene.trigger)  # the cart firmware's session start/end
        health = SystemdNotifier(profile.health.frame_stall_s)
        cleanup.callback(health.close)
        publisher.start()
        cleanup.callback(publisher.close, publish_offline=False, timeout_s=1.0)  # only if we never got to close it

        # 5. Startup verdict from the broker: refused credentials end the run now, an absent broker does not.
        broker = f"{options.mqtt_host or profile.mqtt.host}:{options.mqtt_port or profile.mqtt.port}"
        await_broker(publisher, options.connect_wait_s, broker)
        log.info(
            "running bundle %s on %s with %s (%s), device %s; %d SKUs, input %d px, state in %s",
            bundle.bundle_id[:19],
            source.describe(),
            backend.name,
            ", ".join(backend.providers),
            device_id,
            len(skus),
            input_size,
            state_dir,
        )

        # 6. The threads, joined by the bounded queues (whose depths edge-build counts in the footprint).
        stages = Stages(
            source=source,
            sampler=sampler,
            finder=finder,
            backend=backend,
            head=head,
            publisher=publisher,
            metrics=metrics,
            health=health,
            feedback=feedback,
            profile=profile,
            camera=camera,
            bundle_id=bundle.bundle_id,
            device_id=device_id,
            input_size=input_size,
            max_frames=options.max_frames,
            realtime=options.realtime,
            stop=stop,
            queues=(StageQueue(FRAME_QUEUE), StageQueue(TENSOR_QUEUE), StageQueue(PUBLISH_QUEUE)),
            on_frame=options.on_frame,
            scene=scene,
        )
        stages.start()
        health.ready(f"running {backend.name} on {redact_uri(uri)}")
        health.start_watchdog()
        beat = Heartbeat(
            stages, publisher, metrics, health, bundle_id=bundle.bundle_id, device_id=device_id, backend=backend.name
        )
        beat.refresh()  # the memory and outbox gauges hold real figures from the first scrape on

        # 7. Run until the source ends, a stage fails, the broker refuses us, or we are asked to stop.
        auth_error = _until_done(stages, publisher, beat, stop, options.heartbeat_s)

        # 8. Drain: stop capturing, let the other stages finish what is queued, then wait for acks.
        deadline = time.monotonic() + max(0.0, options.drain_timeout_s)
        t_done = _drain_stages(stages, beat, health, stop, deadline, options.heartbeat_s)
        if auth_error:
            hurry.set()  # a broker that refused us will not acknowledge anything: keep it all for the next start
        drained, left = _drain_publisher(publisher, beat, hurry, deadline, options.heartbeat_s)
        publisher.close(publish_offline=True, timeout_s=2.0)
        if auth_error:
            raise AuthError(auth_error, hint="check mqtt.credentials_file and the broker's ACL for this device")
        if stages.error is not None:
            raise stages.error

        counts, latencies = stages.snapshot()
        stats = publisher.outbox_stats()
        return RunSummary(
            frames_read=counts.frames_read,
            frames_processed=counts.frames_processed,
            frames_skipped=counts.frames_skipped,
            frames_dropped=counts.frames_dropped,
            frame_errors=counts.frame_errors,
            regions=counts.regions,
            routes=dict(counts.routes),
            messages_produced=sum(counts.messages.values()),
            messages_by_topic=dict(counts.messages),
            messages_acked=publisher.stats().acked,
            messages_dropped=sum(stats.drops.values()),
            outbox_left=left,
            drained=drained,
            elapsed_s=round(time.monotonic() - t_start, 3),
            fps=round(counts.frames_processed / max(1e-9, t_done - stages.started_at), 2),
            latency_ms=latency_ms(latencies),
            backend=backend.name,
            source=redact_uri(uri),
            bundle_id=bundle.bundle_id,
            device_id=device_id,
            ended_by=stages.ended_by or "stop requested",
            state_dir=str(state_dir),
            source_reconnects=source.reconnects,
            source_read_failures=source.read_failures,
            outbox_drops=_drops_by_reason(stats),
        )


# --------------------------------------------------------------------------- the main thread's phases


def _until_done(
    stages: Stages, publisher: Publisher, beat: Heartbeat, stop: threading.Event, heartbeat_s: float
) -> str | None:
    """Heartbeats until the publish thread ends (so every stage upstream has), a stop is asked for, or the broker
    refuses us for good; returns the broker's refusal, if that was it."""
    while not stages.finished() and not stop.is_set():
        stop.wait(POLL_S)
        beat.tick(heartbeat_s)
        if publisher.fatal_error:
            stop.set()
            return publisher.fatal_error
    return None


def _drain_stages(
    stages: Stages,
    beat: Heartbeat,
    health: SystemdNotifier,
    stop: threading.Event,
    deadline: float,
    heartbeat_s: float,
) -> float:
    """Stop capturing and let the other stages finish what is queued (until ``deadline``); then the final
    heartbeat. Returns when the stages were done (monotonic), the end of the measured run."""
    stop.set()
    health.stopping("draining")
    stages.source.close()  # ends a read blocked on a live camera
    while not stages.join(min(deadline, time.monotonic() + POLL_S)) and time.monotonic() < deadline:
        beat.tick(heartbeat_s)
    if stages.alive():
        log.error("pipeline threads did not finish within the drain timeout; frames in them are lost")
    t_done = time.monotonic()
    beat.send(final=True)
    return t_done


def _drain_publisher(
    publisher: Publisher, beat: Heartbeat, hurry: threading.Event, deadline: float, heartbeat_s: float
) -> tuple[bool, int]:
    """Wait until the broker has acknowledged every stored message, ``deadline`` passes or ``hurry`` is set;
    (drained, messages left in the outbox). A lost connection is retried every moment meanwhile, not after the
    backoff that doubled through an outage: a broker back within the drain timeout gets the outbox."""
    drained = False
    if not hurry.is_set():
        publisher.retry_promptly()
    while not hurry.is_set():
        if publisher.flush(min(POLL_S, max(0.0, deadline - time.monotonic()))):
            drained = True
            break
        if time.monotonic() >= deadline:
            break
        beat.tick(heartbeat_s, send=False)
    beat.refresh()
    left = publisher.outbox_stats().depth
    if not drained:
        log.warning(
            "%d message(s) not acknowledged by the broker before exit; kept in %s for the next start",
            left,
            publisher.outbox_path,
        )
    return drained, left


def _drops_by_reason(stats: OutboxStats) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (reason, kind), n in sorted(stats.drops.items()):
        out.setdefault(reason, {})[kind] = n
    return out


@contextlib.contextmanager
def _signals_stop(stop: threading.Event, hurry: threading.Event, enabled: bool) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop`` (drain, then exit 0); a second one sets ``hurry`` (stop waiting for the broker)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            hurry.set()
            log.warning("%s again: not waiting for the broker; unsent messages stay in the outbox", name)
        else:
            log.info("%s: stopping capture, draining the queues and the outbox", name)
            stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
