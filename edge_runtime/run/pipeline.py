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
(its queue drops the oldest frame). The inference thread does nothing but the backend call and the head, so
on a GPU device the CPU work of the next frames (resize, crop, colour histogram) overlaps the current frame's
``embed`` instead of queueing in front of it. Each queue carries the end marker on to the next, so a stop or
the end of a file processes and stores every frame already read.

``FRAME_QUEUE + TENSOR_QUEUE + PUBLISH_QUEUE`` frames at the camera resolution is what edge-build counts in the
footprint as the frame queue (``build.footprint.FRAME_QUEUE_DEPTH``; a test keeps them in step), plus the tensor
queue's float tensors: ``TENSOR_QUEUE`` x regions per frame x 3 x S x S x 4 bytes at the variant's input size
(1.2 MiB for full-frame regions at 224 px; 18 MiB with 16 detector regions). Crops are views into their frame,
copied only once the head says they will be published.

Messages (``DESIGN.md``, *Formats*): ``edge.results/1`` per processed frame, ``edge.unknown/1`` and
``edge.verify/1`` per object with its JPEG crop, ``edge.heartbeat/1`` every ``heartbeat_s``; the retained
``edge.status/1`` comes from the publisher and carries the bundle id, backend and camera.

Feedback event ids
------------------
``edge.feedback/1`` messages (``{"schema": "edge.feedback/1", "event_id": ..., "sku": ...}``) name what was
reviewed with ``event_id``:

* the ``id`` of an ``edge.unknown/1`` or ``edge.verify/1`` message: that object;
* ``"<results id>:<region index>"``: region ``index`` (0-based, the order of ``regions``) of that results
  message; a bare ``"<results id>"`` is accepted when the frame had exactly one region (full-frame mode).

The prediction is the region's top-1 SKU (the nearest prototype, also for ``unknown``). The reviewer's ``sku``
equal to it counts ``edge_feedback_total{sku=<predicted>, outcome="correct"}``, any other catalogue SKU
``outcome="incorrect"``. Feedback is rejected (``edge_feedback_rejected_total{reason}``) and never crashes
anything when the event id is not known here (``unknown_event``: never published by this process, or older than
the last ``FEEDBACK_MEMORY`` events of its kind), when a bare results id names a frame with several regions
(``ambiguous_event``), or when the reviewer's SKU is not in the bundle's catalogue (``unknown_sku``: label sets
are fixed at build time; a new product goes into the catalogue and the next bundle).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import queue
import signal
import threading
import time
import uuid
from collections import Counter as Tally
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

import cv2
import numpy as np
from pydantic import ValidationError

import edge_runtime
from edge_runtime.backends import Backend, create_backend, first_available
from edge_runtime.bundle import HEAD, MODEL, PROFILE, Bundle, load_bundle
from edge_runtime.errors import AuthError, BundleError, EdgeError, ModelError, UsageError
from edge_runtime.features import COLOUR_DIM, colour_descriptor, compose, looks_monochrome
from edge_runtime.head.model import Head, load_head
from edge_runtime.preprocess import prepare_batch
from edge_runtime.profile import Camera, DeviceProfile
from edge_runtime.run.health import SystemdNotifier
from edge_runtime.run.metrics import RunMetrics
from edge_runtime.run.mqtt import MqttAuthError, MqttPublisher, PublisherStats
from edge_runtime.run.outbox import Outbox, OutboxStats
from edge_runtime.run.regions import RegionFinder, crop, make_region_finder
from edge_runtime.run.sampler import AdaptiveSampler
from edge_runtime.run.sources import ImageFolderSource, Source, VideoFileSource, open_source, redact_uri
from edge_runtime.types import Decision, Frame, Region

__all__ = [
    "FEEDBACK_MEMORY",
    "RESULTS_SCHEMA",
    "FeedbackBook",
    "FrameTiming",
    "RunOptions",
    "RunSummary",
    "StageQueue",
    "default_state_dir",
    "dumps_summary",
    "event_id_for_region",
    "run",
]

log = logging.getLogger(__name__)

RESULTS_SCHEMA = "edge.results/1"
UNKNOWN_SCHEMA = "edge.unknown/1"
VERIFY_SCHEMA = "edge.verify/1"
HEARTBEAT_SCHEMA = "edge.heartbeat/1"
FRAME_QUEUE = 2  # frames waiting for preprocessing
# Prepared frames waiting for the backend. Enough to double-buffer (one being embedded, the next ready, one
# more to absorb jitter); not more, because a frame that got this far is never dropped, so on a live camera
# each slot is one more frame of delay when inference is the bottleneck.
TENSOR_QUEUE = 2
PUBLISH_QUEUE = 2  # inferred frames waiting to be encoded and stored
MONO_CHECK_FRAMES = 30  # frames that must all look monochrome before the colour warning (a grey scene is not one)
FEEDBACK_MEMORY = 10_000  # results messages, and separately unknown/verify objects, that feedback can refer to
LATENCY_WINDOW = 512  # recent frame latencies the heartbeat's percentiles are taken over
DEMO_VIDEO_SECONDS = 10.0
_POLL_S = 0.2
_ERROR_LOG_INTERVAL_S = 30.0
_END = None  # queue sentinel: the producer is done


# --------------------------------------------------------------------------- options and summary


@dataclass
class RunOptions:
    """What ``edge-run`` was asked to do; ``None`` means: take it from the bundle's profile."""

    bundle: Path
    source: str | None = None  # None: the camera's source; "" there (dev-cpu) means the demo video
    state_dir: Path | None = None  # None: $STATE_DIRECTORY, else ~/.local/state/edge_runtime/DEVICE-CAMERA
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
    # edge-bench's hooks; the defaults are edge-run's behaviour.
    frames: Source | None = None  # a ready-made source, used instead of opening `source`
    publish: bool = True  # False: messages are built and serialised as usual, then discarded (no outbox, no broker)
    on_frame: Callable[[FrameTiming], None] | None = None  # called by the publish thread for every stored frame


@dataclass(frozen=True)
class FrameTiming:
    """Where one processed frame's time went, for ``RunOptions.on_frame`` (edge-bench).

    ``stages`` holds seconds per stage that ran for the frame (``metrics.STAGES`` names; a frame without
    regions has no preprocess, inference or head). Their sum is the frame's latency when it waits in no queue;
    ``latency_s`` runs from the start of its read to its messages being stored, queue waits included.
    """

    frame_id: int
    regions: int
    stages: dict[str, float]
    latency_s: float
    done: float  # time.monotonic() when the frame's messages were stored


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
        return asdict(self)

    def text(self) -> str:
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


# --------------------------------------------------------------------------- small helpers


def utc_iso(ts: float) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as every message's ``ts``."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_id_for_region(results_id: str, index: int) -> str:
    """The feedback ``event_id`` of region ``index`` of a results message."""
    return f"{results_id}:{index}"


def _check_head_input(bundle: Bundle, backend: Backend, head: Head) -> None:
    """One embedding at startup: a head that reads another width than the model (+ colour) gives would fail
    every frame, which a service would only show as a counter; better to refuse the bundle now."""
    try:
        probe = backend.embed(np.zeros((1, 3, backend.input_size, backend.input_size), dtype=np.float32))
    except EdgeError:
        raise
    except Exception as exc:
        raise ModelError(
            f"{bundle.root / MODEL}: the model fails on a blank frame ({type(exc).__name__}: {exc})",
            hint="check the backend's log above; rebuild the bundle if the model is at fault",
        ) from None
    colour = COLOUR_DIM if head.config.colour_weight > 0 else 0
    wanted = head.projection.in_dim
    if probe.ndim != 2 or probe.shape[1] + colour != wanted:
        given = f"{probe.shape[-1]}-d embeddings" + (f" + {colour} colour bins" if colour else "")
        raise BundleError(
            f"{bundle.root / HEAD}: the head reads {wanted}-d input but the model gives {given}",
            hint="the head and the model come from different builds: rebuild the bundle with edge-build",
        )


def instance_device_id(profile: DeviceProfile, camera: Camera, explicit: str | None = None) -> str:
    """The MQTT identity of one edge-run instance: ``--device-id`` when given, else the profile's device id, with
    ``-CAMERA`` appended when the profile has several cameras.

    systemd runs one edge-run per camera. Two instances under one id would share the MQTT client id (the broker
    disconnects one whenever the other connects, so both flap) and one retained status topic (either one's last
    will would mark the other offline). One id per camera keeps the DESIGN's ``{prefix}/{device}/...`` topics.
    """
    if explicit:
        return explicit
    base = profile.mqtt_device_id
    return f"{base}-{camera.name}" if len(profile.cameras) > 1 else base


def default_state_dir(device_id: str, camera: str) -> Path:
    """$STATE_DIRECTORY (systemd ``StateDirectory=``), else ``$XDG_STATE_HOME/edge_runtime/DEVICE-CAMERA``.

    One state directory per camera instance: the outbox in it belongs to one process.
    """
    systemd_dirs = os.environ.get("STATE_DIRECTORY", "")
    if systemd_dirs:
        return Path(systemd_dirs.split(":")[0])
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "edge_runtime" / f"{device_id}-{camera}"


def bundle_profile(bundle: Bundle) -> DeviceProfile:
    """The resolved profile the bundle was built for (its profile.json)."""
    try:
        return DeviceProfile.model_validate(bundle.read_json(PROFILE))
    except ValidationError as exc:
        raise BundleError(
            f"{bundle.root / PROFILE}: not a profile this edge_runtime reads ({exc.error_count()} problems)",
            hint="rebuild the bundle with the edge-build that matches this runtime",
        ) from None


def pick_camera(profile: DeviceProfile, name: str | None) -> Camera:
    if name is None:
        return profile.cameras[0]
    for camera in profile.cameras:
        if camera.name == name:
            return camera
    names = ", ".join(c.name for c in profile.cameras)
    raise UsageError(f"profile {profile.name} has no camera {name!r}", hint=f"use one of: {names}")


def demo_video(state_dir: Path, camera: Camera) -> Path:
    """The generated demo video under the state dir (made once): what dev-cpu's empty camera source means."""
    # The one place run/ reaches into build/: the generator is pure OpenCV drawing, and only the developer
    # profile uses it. Imported lazily so a device never loads it.
    from edge_runtime.demo import generate_demo_video

    target = state_dir / "demo" / "demo-video.mp4"
    for existing in (target, target.with_suffix(".avi")):
        if existing.is_file() and existing.with_suffix(".labels.json").is_file():
            return existing
    log.info("camera %r has no source: generating the demo video in %s", camera.name, target.parent)
    return generate_demo_video(
        target, seconds=DEMO_VIDEO_SECONDS, fps=max(1, round(camera.fps)), size=(camera.width, camera.height)
    )


def open_backend(bundle: Bundle, profile: DeviceProfile, state_dir: Path | None = None) -> Backend:
    """The first backend of the profile's ``prefer`` list that exists here and loads the bundle's model.

    GPU backends get the bundle's precision, the memory budget (workspace and arena limits), the state
    directory (engine caches survive restarts) and the largest batch the regions can make.
    """
    prefer = list(profile.backend.prefer)
    measured = str(bundle.manifest.get("measurement", {}).get("backend", "") or "")
    output = str(bundle.manifest.get("backbone", {}).get("embedding_output") or profile.backend.embedding_output)
    failures: dict[str, str] = {}
    load_errors: list[EdgeError] = []  # backends that exist here but could not load this model
    remaining = prefer
    while remaining:
        name, skipped = first_available(remaining)
        failures.update(skipped)
        if name is None:
            break
        if name != prefer[0] and not profile.backend.allow_fallback:
            raise ModelError(
                f"backend {prefer[0]} is not available here ({failures.get(prefer[0], 'unknown reason')}) "
                "and backend.allow_fallback is false",
                hint="run on the device the profile describes, or allow fallback in the profile",
            )
        try:
            backend = create_backend(
                name,
                bundle.path(MODEL),
                threads=profile.backend.threads,
                embedding_output=output,
                precision=str(bundle.manifest.get("model", {}).get("precision") or "fp32"),
                budget_mib=float(profile.device.memory_budget_mib),
                state_dir=state_dir,
                max_batch=profile.regions.max_regions,
            )
        except EdgeError as exc:
            failures[name] = str(exc)
            load_errors.append(exc)
            if not profile.backend.allow_fallback:
                raise
            remaining = remaining[remaining.index(name) + 1 :]
            if remaining:
                log.warning("backend %s cannot load the model: %s; trying the next one", name, exc)
            continue
        for other, why in failures.items():
            log.info("backend %s skipped: %s", other, why)
        if measured and name != measured:
            log.warning("the bundle's figures were measured with %s; running %s", measured, name)
        return backend
    if load_errors:
        # Every backend that exists here refused the model itself: the bundle is at fault, not the host.
        raise ModelError(
            f"{bundle.root / MODEL}: no backend here can load the bundle's model "
            f"({'; '.join(f'{k}: {v}' for k, v in failures.items())})",
            hint="the model is damaged or not ONNX: rebuild the bundle with edge-build",
        )
    detail = "; ".join(f"{k}: {v}" for k, v in failures.items()) or "the profile lists none"
    raise ModelError(
        f"no usable inference backend for profile {profile.name} ({detail})",
        hint="install the runtime the profile prefers, or build for a profile that lists this host's backend",
    )


def _percentile_ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000.0, 2) if values else 0.0


class _Throttled:
    """Log a recurring per-frame problem once, then at most once per interval with a count."""

    def __init__(self, interval_s: float = _ERROR_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last = float("-inf")
        self._pending = 0

    def __call__(self, text: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            more = f" (+{self._pending} more since the last report)" if self._pending else ""
            log.error(text + more, *args, exc_info=self._last == float("-inf"))
            self._last, self._pending = now, 0
        else:
            self._pending += 1


# --------------------------------------------------------------------------- feedback


class FeedbackBook:
    """Which SKU was predicted for each event id feedback may name (bounded; oldest forgotten first)."""

    def __init__(self, skus: list[str], metrics: RunMetrics, memory: int = FEEDBACK_MEMORY) -> None:
        self._skus = frozenset(skus)
        self._metrics = metrics
        self._memory = memory
        self._lock = threading.Lock()
        self._frames: OrderedDict[str, tuple[str, ...]] = OrderedDict()  # results id -> top-1 SKU per region
        self._objects: OrderedDict[str, str] = OrderedDict()  # unknown/verify id -> top-1 SKU
        self.counted = Tally[str]()

    def remember_frame(self, results_id: str, top1: tuple[str, ...]) -> None:
        with self._lock:
            self._frames[results_id] = top1
            if len(self._frames) > self._memory:
                self._frames.popitem(last=False)

    def remember_object(self, message_id: str, top1: str) -> None:
        with self._lock:
            self._objects[message_id] = top1
            if len(self._objects) > self._memory:
                self._objects.popitem(last=False)

    def predicted(self, event_id: str) -> tuple[str | None, str]:
        """(predicted SKU, "") or (None, rejection reason)."""
        with self._lock:
            if event_id in self._objects:
                return self._objects[event_id], ""
            base, sep, index = event_id.rpartition(":")
            if sep and base in self._frames and index.isdigit():
                regions = self._frames[base]
                return (regions[int(index)], "") if int(index) < len(regions) else (None, "unknown_event")
            if event_id in self._frames:
                regions = self._frames[event_id]
                return (regions[0], "") if len(regions) == 1 else (None, "ambiguous_event")
        return None, "unknown_event"

    def __call__(self, feedback: dict[str, Any]) -> None:
        """The publisher's feedback callback (paho's network thread: dictionary lookups only)."""
        event_id, sku = str(feedback["event_id"]), str(feedback["sku"])
        predicted, reason = self.predicted(event_id)
        if predicted is not None and sku not in self._skus:
            predicted, reason = None, "unknown_sku"
        if predicted is None:
            self._metrics.reject_feedback(reason)
            self.counted[reason] += 1
            log.info("feedback for %s rejected: %s", event_id[:80], reason)
            return
        correct = sku == predicted
        self._metrics.count_feedback(predicted, correct)
        self.counted["correct" if correct else "incorrect"] += 1


# --------------------------------------------------------------------------- the stages


class StageQueue(queue.Queue):  # type: ignore[type-arg]
    """A bounded queue between two stages. ``None`` (``_END``) tells the consumer that the producer is done.

    ``abort`` is set when a stage died: a producer must not wait forever for a consumer that is gone, and a
    consumer must not wait forever for an end marker that will never come.
    """

    def put_or_abort(self, item: Any, abort: threading.Event) -> bool:
        """Block until there is room (never drops); False only when ``abort`` is set meanwhile."""
        while True:
            try:
                self.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                if abort.is_set():
                    return False

    def put_drop_oldest(self, item: Any) -> int:
        """Never block: while full, drop the oldest item (a stale frame is worth less than a fresh one).

        Returns how many were dropped.
        """
        dropped = 0
        while True:
            try:
                self.put_nowait(item)
                return dropped
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self.get_nowait()
                    dropped += 1

    def get_or_end(self, abort: threading.Event) -> Any:
        while True:
            try:
                return self.get(timeout=_POLL_S)
            except queue.Empty:
                if abort.is_set():
                    return _END


class _StageError(Exception):
    """A per-frame failure, tagged with the stage it happened in (the cause is the original exception)."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


@dataclass
class _Prepared:
    """What the preprocess thread hands to the inference thread for one frame."""

    frame_id: int
    source_ref: str
    ts: float  # capture wall-clock time
    regions: list[Region]
    # Views into the frame, not copies: which crops get published is known only after the head, and copying
    # every crop here would cost each frame what only unknown/verify objects need.
    views: list[np.ndarray]
    batch: np.ndarray | None  # [regions, 3, S, S] float32; None when the frame has no regions
    colour: np.ndarray | None  # [regions, COLOUR_DIM] when the head reads colour
    spent: dict[str, float] = field(default_factory=dict)  # seconds per stage so far, for on_frame


@dataclass
class _Inferred:
    """What the inference thread hands to the publish thread for one frame."""

    frame_id: int
    source_ref: str
    ts: float  # capture wall-clock time
    regions: list[Region]
    decisions: list[Decision]
    crops: list[np.ndarray | None]  # copies for objects that get an unknown/verify message with a crop
    spent: dict[str, float] = field(default_factory=dict)  # seconds per stage so far, for on_frame


@dataclass
class _Counters:
    frames_read: int = 0
    frames_processed: int = 0
    frames_skipped: int = 0
    frames_dropped: int = 0
    frame_errors: int = 0
    regions: int = 0
    routes: Tally[str] = field(default_factory=Tally)
    messages: Tally[str] = field(default_factory=Tally)


class _Stages:
    """The four pipeline threads and the state they share; ``run()`` below wires and drives them."""

    def __init__(
        self,
        *,
        source: Source,
        sampler: AdaptiveSampler,
        finder: RegionFinder,
        backend: Backend,
        head: Head,
        publisher: MqttPublisher | _DiscardingPublisher,
        metrics: RunMetrics,
        health: SystemdNotifier,
        feedback: FeedbackBook,
        profile: DeviceProfile,
        camera: Camera,
        bundle_id: str,
        device_id: str,
        input_size: int,
        max_frames: int | None,
        realtime: bool,
        stop: threading.Event,
        on_frame: Callable[[FrameTiming], None] | None = None,
    ) -> None:
        self.source = source
        self.sampler = sampler
        self.finder = finder
        self.backend = backend
        self.head = head
        self.publisher = publisher
        self.metrics = metrics
        self.health = health
        self.feedback = feedback
        self.bundle_id = bundle_id
        self.device_id = device_id
        self.input_size = input_size
        self.max_frames = max_frames
        self.realtime = realtime
        self.stop = stop
        self.abort = threading.Event()  # a stage died: nobody may block on a queue any more
        self.mqtt = profile.mqtt
        self.unknown_loop = profile.routing.unknown_loop
        self.fps = source.nominal_fps or camera.fps
        # Folders are stills, not a stream: every image counts. Videos are sampled on their own clock
        # (index / fps), so a file read faster than real time is sampled as the camera would have been.
        self.video_clock = isinstance(source, VideoFileSource)
        self.counts = _Counters()
        self.lock = threading.Lock()
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.ended_by = ""
        self.error: BaseException | None = None
        self.frames_q = StageQueue(FRAME_QUEUE)
        self.tensors_q = StageQueue(TENSOR_QUEUE)
        self.publish_q = StageQueue(PUBLISH_QUEUE)
        self.colour_weight = float(head.config.colour_weight)
        # Frames checked for a monochrome camera while the head reads colour (warned once, after MONO_CHECK_FRAMES).
        self._mono_seen = 0 if self.colour_weight > 0 else MONO_CHECK_FRAMES
        self.on_frame = on_frame
        # (frame index, read seconds) of queued frames, for on_frame only: Frame is immutable and shared.
        self._read_s: deque[tuple[int, float]] = deque()
        self._log_prepare_error = _Throttled()  # one per thread: _Throttled is not locked
        self._log_infer_error = _Throttled()
        self._log_publish_error = _Throttled()
        self.started_at = 0.0
        self.threads = [
            threading.Thread(
                target=self._guard(self.capture_loop, self._end_frames, False), name="capture", daemon=True
            ),
            threading.Thread(
                target=self._guard(self.preprocess_loop, self._end_tensors, True), name="preprocess", daemon=True
            ),
            threading.Thread(
                target=self._guard(self.inference_loop, self._end_publish, True), name="inference", daemon=True
            ),
            # Last: run() watches it to know when everything upstream has finished.
            threading.Thread(target=self._guard(self.publish_loop, None, True), name="publish", daemon=True),
        ]

    # ---- thread plumbing

    def _guard(self, body: Callable[[], None], finish: Callable[[], None] | None, consumer: bool) -> Callable[[], None]:
        def target() -> None:
            try:
                body()
            except BaseException as exc:
                # Not a per-frame problem (those are caught per frame): the stage cannot go on. Startup errors
                # of live sources (no first frame) land here too and end the run with their exit code.
                with self.lock:
                    self.error = self.error or exc
                    self.ended_by = "error"
                if not isinstance(exc, EdgeError):
                    log.exception("%s stage failed", threading.current_thread().name)
                self.stop.set()
                if consumer:
                    # Its producer would block forever on a queue nobody empties. A dead capture stage needs
                    # no abort: the frames already queued are still processed.
                    self.abort.set()
            finally:
                if finish is not None:
                    finish()

        return target

    def _end_frames(self) -> None:
        self.frames_q.put_or_abort(_END, self.abort)

    def _end_tensors(self) -> None:
        self.tensors_q.put_or_abort(_END, self.abort)

    def _end_publish(self) -> None:
        self.publish_q.put_or_abort(_END, self.abort)

    def start(self) -> None:
        self.started_at = time.monotonic()
        for thread in self.threads:
            thread.start()

    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def join(self, deadline: float) -> bool:
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not self.alive()

    # ---- capture: source -> sampler -> frame queue

    def capture_loop(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set():
            if self.max_frames is not None and self.counts.frames_read >= self.max_frames:
                self.ended_by = self.ended_by or "max frames"
                return
            # Paced before the read, so the frame's capture time is when a camera would have delivered it.
            due = started + self.counts.frames_read / self.fps
            if self.realtime and not self.source.live and self.stop.wait(max(0.0, due - time.monotonic())):
                break
            t0 = time.perf_counter()
            frame = self.source.read()
            if frame is None:
                self.ended_by = self.ended_by or ("stop requested" if self.stop.is_set() else "source ended")
                return
            read_s = time.perf_counter() - t0
            self.metrics.observe_stage("capture", read_s)
            self.metrics.frames_read.inc()
            self.health.frame_seen()
            with self.lock:
                self.counts.frames_read += 1
            now = frame.index / self.fps if self.video_clock else None
            if not self.sampler.should_process(frame, now=now):
                self.metrics.frames_skipped.inc()
                with self.lock:
                    self.counts.frames_skipped += 1
                continue
            if self.on_frame is not None:
                self._read_s.append((frame.index, read_s))  # before the put: the consumer may pop at once
            if self.source.live:
                dropped = self.frames_q.put_drop_oldest(frame)
                if dropped:
                    self.metrics.frames_dropped.inc(dropped)
                    with self.lock:
                        self.counts.frames_dropped += dropped
            elif not self.frames_q.put_or_abort(frame, self.abort):
                return
        self.ended_by = self.ended_by or "stop requested"

    # ---- preprocess: regions -> crops -> tensors (+ colour) -> tensor queue

    def preprocess_loop(self) -> None:
        # Blocks even for live sources: dropping happens once, at the frame queue, where it is counted; a frame
        # prepared here has already cost its CPU time.
        self._relay(self.frames_q, self.prepare, self._log_prepare_error, self.tensors_q)

    def _relay(self, source: StageQueue, step: Callable[[Any], Any], log_error: _Throttled, sink: StageQueue) -> None:
        """Apply ``step`` to every item of ``source`` and pass the result on; a failed frame is counted by the
        stage it failed in and skipped, the loop goes on."""
        while (item := source.get_or_end(self.abort)) is not _END:
            try:
                out = step(item)
            except _StageError as exc:
                self._count_error(exc.stage)
                log_error("frame %s failed in %s: %s", item.source_ref, exc.stage, exc.__cause__)
                continue
            if not sink.put_or_abort(out, self.abort):
                return

    def _observe(self, spent: dict[str, float], stage: str, seconds: float) -> None:
        self.metrics.observe_stage(stage, seconds)
        spent[stage] = seconds

    def _count_error(self, stage: str) -> None:
        self.metrics.frame_errors.labels(stage=stage).inc()
        with self.lock:
            self.counts.frame_errors += 1

    def _read_seconds(self, index: int) -> dict[str, float]:
        """The read time recorded for frame ``index`` (frames dropped before it are discarded)."""
        while self._read_s:
            queued, seconds = self._read_s.popleft()
            if queued == index:
                return {"capture": seconds}
            if queued > index:  # cannot happen with in-order queues; keep it for the next frame
                self._read_s.appendleft((queued, seconds))
                break
        return {}

    def prepare(self, frame: Frame) -> _Prepared:
        stage = "regions"
        spent = self._read_seconds(frame.index) if self.on_frame is not None else {}
        views: list[np.ndarray] = []
        batch: np.ndarray | None = None
        colour: np.ndarray | None = None
        try:
            t0 = time.perf_counter()
            regions = self.finder.find(frame.image)
            t1 = time.perf_counter()
            self._observe(spent, "regions", t1 - t0)
            if regions:
                stage = "preprocess"
                if self._mono_seen < MONO_CHECK_FRAMES:
                    self._check_monochrome(frame.image)
                views = [crop(frame.image, r) for r in regions]
                batch = prepare_batch(views, self.input_size)
                # The colour histogram reads the very tensor the backbone gets; computed here, it overlaps the
                # previous frame's embed instead of following it.
                colour = colour_descriptor(batch) if self.colour_weight > 0 else None
                self._observe(spent, "preprocess", time.perf_counter() - t1)
        except Exception as exc:
            raise _StageError(stage) from exc
        return _Prepared(frame.index, frame.source_ref, frame.ts, regions, views, batch, colour, spent)

    def _check_monochrome(self, image: np.ndarray) -> None:
        if not looks_monochrome(image):
            self._mono_seen = MONO_CHECK_FRAMES + 1  # a colour frame: nothing to say
            return
        self._mono_seen += 1
        if self._mono_seen == MONO_CHECK_FRAMES:
            log.warning(
                "the first %d frames are monochrome but the bundle's head reads colour: recognition will be poor; "
                'rebuild the bundle with [head] colour = "off" in the profile for this camera',
                MONO_CHECK_FRAMES,
            )

    # ---- inference: one backend call per frame -> head -> publish queue

    def inference_loop(self) -> None:
        self._relay(self.tensors_q, self.infer, self._log_infer_error, self.publish_q)

    def infer(self, item: _Prepared) -> _Inferred:
        stage = "inference"
        spent = item.spent
        decisions: list[Decision] = []
        try:
            if item.batch is not None:
                t2 = time.perf_counter()
                embeddings = self.backend.embed(item.batch)  # every region of the frame in one call
                t3 = time.perf_counter()
                self._observe(spent, "inference", t3 - t2)
                stage = "head"
                decisions = self.head.decide(compose(embeddings, item.colour, self.colour_weight))
                self._observe(spent, "head", time.perf_counter() - t3)
                if len(decisions) != len(item.regions):
                    raise ModelError(f"{len(item.regions)} regions but {len(decisions)} decisions")
        except Exception as exc:
            raise _StageError(stage) from exc
        # Copy only the crops that will be published: the frame itself can then be freed while the publish
        # thread encodes.
        crops: list[np.ndarray | None] = [
            view.copy() if self.mqtt.publish_crops and self._object_topic(d) else None
            for view, d in zip(item.views, decisions, strict=True)
        ]
        with self.lock:
            self.counts.frames_processed += 1
            self.counts.regions += len(item.regions)
            for d in decisions:
                self.counts.routes[d.route] += 1
        self.metrics.frames_processed.inc()
        self.metrics.regions.inc(len(item.regions))
        for d in decisions:
            self.metrics.count_prediction(_top1(d), d.route)
        return _Inferred(item.frame_id, item.source_ref, item.ts, item.regions, decisions, crops, spent)

    def _object_topic(self, d: Decision) -> str | None:
        if d.route == "verify":
            return "verify"
        if d.route == "unknown" and self.unknown_loop:
            return "unknown"
        return None

    # ---- publish: encode -> outbox

    def publish_loop(self) -> None:
        while (item := self.publish_q.get_or_end(self.abort)) is not _END:
            try:
                self.publish(item)
            except Exception as exc:
                self.metrics.frame_errors.labels(stage="encode").inc()
                with self.lock:
                    self.counts.frame_errors += 1
                self._log_publish_error("frame %s: messages not produced: %s", item.source_ref, exc)

    def publish(self, item: _Inferred) -> None:
        t0 = time.perf_counter()
        ts = utc_iso(item.ts)
        results_id = uuid.uuid4().hex
        results = {
            "schema": RESULTS_SCHEMA,
            "id": results_id,
            "device_id": self.device_id,
            "bundle_id": self.bundle_id,
            "frame_id": item.frame_id,
            "source_ref": item.source_ref,
            "ts": ts,
            "regions": [_region_json(r, d) for r, d in zip(item.regions, item.decisions, strict=True)],
        }
        objects: list[tuple[str, dict[str, Any], str]] = []
        for region, d, crop_image in zip(item.regions, item.decisions, item.crops, strict=True):
            topic = self._object_topic(d)
            if topic is None:
                continue
            message: dict[str, Any] = {
                "schema": VERIFY_SCHEMA if topic == "verify" else UNKNOWN_SCHEMA,
                "id": uuid.uuid4().hex,
                "device_id": self.device_id,
                "frame_id": item.frame_id,
                "source_ref": item.source_ref,
                "ts": ts,
                "box": list(region.box),
            }
            if topic == "verify":
                # What the reviewer is asked to confirm or correct.
                message.update(sku=d.sku, name=d.name, group=d.group, score=d.score)
            message["ood_score"] = d.ood_score
            message["nearest"] = [[code, p] for code, p in d.top_k]
            message["crop"] = self.encode_crop(crop_image) if crop_image is not None else None
            objects.append((topic, message, _top1(d)))
        t1 = time.perf_counter()
        self._observe(item.spent, "encode", t1 - t0)

        # Remembered before the send: a reviewer can only answer after the broker has the message.
        self.feedback.remember_frame(results_id, tuple(_top1(d) for d in item.decisions))
        self.send("results", results)
        for topic, message, top1 in objects:
            self.feedback.remember_object(message["id"], top1)
            self.send(topic, message)
        self._observe(item.spent, "publish", time.perf_counter() - t1)
        latency = max(0.0, time.time() - item.ts)
        self.metrics.frame_latency.observe(latency)
        with self.lock:
            self.latencies.append(latency)
        if self.on_frame is not None:
            self.on_frame(
                FrameTiming(
                    frame_id=item.frame_id,
                    regions=len(item.regions),
                    stages=dict(item.spent),
                    latency_s=latency + item.spent.get("capture", 0.0),  # ts is taken after the read
                    done=time.monotonic(),
                )
            )

    def encode_crop(self, image: np.ndarray) -> dict[str, Any]:
        h, w = image.shape[:2]
        scale = min(1.0, self.mqtt.crop_max_side / max(h, w))
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.mqtt.jpeg_quality])
        if not ok:
            raise ValueError(f"JPEG encoding of a {w}x{h} crop failed")
        return {
            "format": "jpeg",
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "data": base64.b64encode(jpeg.tobytes()).decode("ascii"),
        }

    def send(self, topic: str, payload: dict[str, Any]) -> bool:
        stored = self.publisher.send(topic, payload)
        if stored:
            self.metrics.messages.labels(topic=topic).inc()
            with self.lock:
                self.counts.messages[topic] += 1
        return stored

    # ---- reporting

    def snapshot(self) -> tuple[_Counters, list[float]]:
        with self.lock:
            counts = replace(self.counts, routes=Tally(self.counts.routes), messages=Tally(self.counts.messages))
            return counts, list(self.latencies)


def _top1(d: Decision) -> str:
    return d.top_k[0][0] if d.top_k else (d.sku or "")


def _region_json(region: Region, d: Decision) -> dict[str, Any]:
    return {
        "box": list(region.box),
        "sku": d.sku,
        "name": d.name,
        "group": d.group,
        "score": d.score,
        "ood_score": d.ood_score,
        "route": d.route,
        "top_k": [[code, p] for code, p in d.top_k],
    }


# --------------------------------------------------------------------------- signals


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


# --------------------------------------------------------------------------- the run


def run(options: RunOptions, stop_event: threading.Event | None = None) -> RunSummary:
    """Run the pipeline until the source ends, ``max_frames`` are read, or ``stop_event``/SIGTERM/SIGINT.

    Startup problems raise EdgeError subclasses carrying their exit codes (bundle or source unusable: 3, broker
    refused our credentials: 7). Per-frame problems are counted in the summary and the metrics, never raised.
    """
    t_start = time.monotonic()
    stop = stop_event or threading.Event()
    hurry = threading.Event()
    with contextlib.ExitStack() as cleanup, _signals_stop(stop, hurry, options.handle_signals):
        # 1. The bundle: every hash verified before anything is loaded; its profile is what we run with.
        bundle = load_bundle(Path(options.bundle), public_key=options.public_key)
        profile = bundle_profile(bundle)
        bundle = _enforce_signature_policy(bundle, profile)
        camera = pick_camera(profile, options.camera)
        device_id = instance_device_id(profile, camera, options.device_id)
        state_dir = (
            Path(options.state_dir)
            if options.state_dir
            else default_state_dir(options.device_id or profile.mqtt_device_id, camera.name)
        )
        if device_id != profile.mqtt_device_id and not options.device_id:
            log.info("profile has %d cameras: this instance publishes as %s", len(profile.cameras), device_id)
        head = load_head(bundle)
        skus = [s.code for s in head.skus]

        # 2. The backend, checked against the input size the bundle was built and calibrated for.
        backend = open_backend(bundle, profile, state_dir)
        cleanup.callback(backend.close)
        input_size = int(bundle.manifest.get("model", {}).get("input_size") or backend.input_size)
        if backend.input_size != input_size:
            raise BundleError(
                f"{bundle.root / MODEL}: model input is {backend.input_size}, the manifest says {input_size}",
                hint="rebuild the bundle",
            )
        _check_head_input(bundle, backend, head)

        # 3. The source (lazy for cameras: the first read connects), sampler and region finder.
        if options.frames is not None:
            source = options.frames
            uri = source.describe()
        else:
            uri = options.source if options.source is not None else camera.source
            if not uri.strip() and options.source is None:
                uri = str(demo_video(state_dir, camera))
            source = open_source(uri, camera=camera.name, width=camera.width, height=camera.height, fps=camera.fps)
        cleanup.callback(source.close)
        sampling = not options.every_frame and not isinstance(source, ImageFolderSource)
        sampler = AdaptiveSampler.from_profile(profile.sampler, enabled=None if sampling else False)
        finder = make_region_finder(profile.regions, bundle.root, threads=profile.backend.threads)

        # 4. Sinks: metrics, the durable outbox, the MQTT publisher, systemd.
        metrics = RunMetrics(skus, memory_budget_mib=profile.device.memory_budget_mib)
        backend_label = f"{backend.name} ({', '.join(backend.providers)})"
        metrics.set_backend(
            backend=backend.name,
            providers=",".join(backend.providers),
            bundle_id=bundle.bundle_id,
            variant=str(bundle.manifest.get("variant", {}).get("variant", "")),
            version=edge_runtime.__version__,
        )
        metrics.up_since.set(time.time())
        port = profile.metrics.port if options.metrics_port is None else options.metrics_port
        metrics.serve(port, options.metrics_addr)
        cleanup.callback(metrics.close)
        outbox: Outbox | _NoOutbox
        publisher: MqttPublisher | _DiscardingPublisher
        if options.publish:
            outbox = Outbox.from_profile(profile, state_dir)
            cleanup.callback(outbox.close)
            leftover = outbox.depth
            if leftover:
                log.info("outbox holds %d message(s) from an earlier run; they are sent first", leftover)
            extra: dict[str, Any] = {}
            if len(profile.cameras) > 1:
                # Two cameras of one device under one client id would keep kicking each other off the broker.
                extra["client_id"] = f"{profile.mqtt.topic_prefix}-{device_id}-{camera.name}"
            publisher = MqttPublisher.from_profile(
                profile,
                outbox,
                host=options.mqtt_host,
                port=options.mqtt_port,
                device_id=device_id,
                status_fields={
                    "bundle_id": bundle.bundle_id,
                    "backend": backend.name,
                    "camera": camera.name,
                    "source": redact_uri(uri),
                    "version": edge_runtime.__version__,
                },
                **extra,
            )
        else:
            outbox, publisher = _NoOutbox(), _DiscardingPublisher()
        feedback = FeedbackBook(skus, metrics)
        publisher.on_feedback(feedback)
        health = SystemdNotifier(profile.health.frame_stall_s)
        cleanup.callback(health.close)
        publisher.start()
        cleanup.callback(publisher.close, publish_offline=False, timeout_s=1.0)  # only if we never got to close it

        # 5. Startup verdict from the broker: refused credentials end the run now, an absent broker does not.
        if not publisher.wait_connected(options.connect_wait_s):
            _raise_if_refused(publisher)
            log.warning(
                "MQTT broker %s:%s not reachable yet; messages wait in the outbox (%s)",
                options.mqtt_host or profile.mqtt.host,
                options.mqtt_port or profile.mqtt.port,
                outbox.path,
            )
        log.info(
            "running bundle %s on %s with %s, device %s; %d SKUs, input %d px, state in %s",
            bundle.bundle_id[:19],
            source.describe(),
            backend_label,
            device_id,
            len(skus),
            input_size,
            state_dir,
        )

        # 6. The threads.
        stages = _Stages(
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
            on_frame=options.on_frame,
        )
        stages.start()
        health.ready(f"running {backend.name} on {redact_uri(uri)}")
        health.start_watchdog()
        beat = _Heartbeat(stages, publisher, outbox, metrics, health, bundle.bundle_id, device_id, backend.name)

        # 7. Run until the source ends, a stage fails, the broker refuses us, or we are asked to stop.
        auth_error: str | None = None
        while stages.threads[-1].is_alive() and not stop.is_set():
            stop.wait(_POLL_S)
            beat.tick(options.heartbeat_s)
            if publisher.fatal_error:
                auth_error = publisher.fatal_error
                stop.set()

        # 8. Drain: stop capturing, let the other stages finish what is queued, then wait for acks.
        stop.set()
        deadline = time.monotonic() + max(0.0, options.drain_timeout_s)
        health.stopping("draining")
        source.close()  # ends a read blocked on a live camera
        while not stages.join(min(deadline, time.monotonic() + _POLL_S)) and time.monotonic() < deadline:
            beat.tick(options.heartbeat_s)
        if stages.alive():
            log.error("pipeline threads did not finish within the drain timeout; frames in them are lost")
        t_done = time.monotonic()
        beat.send(final=True)
        if auth_error:
            hurry.set()  # a broker that refused us will not acknowledge anything: keep it all for the next start
        drained = False
        while not hurry.is_set():
            if publisher.flush(min(_POLL_S, max(0.0, deadline - time.monotonic()))):
                drained = True
                break
            if time.monotonic() >= deadline:
                break
            beat.tick(options.heartbeat_s, send=False)
        beat.refresh()
        left = outbox.depth
        if not drained:
            log.warning(
                "%d message(s) not acknowledged by the broker before exit; kept in %s for the next start",
                left,
                outbox.path,
            )
        publisher.close(publish_offline=True, timeout_s=2.0)
        if auth_error:
            raise AuthError(auth_error, hint="check mqtt.credentials_file and the broker's ACL for this device")
        if stages.error is not None:
            raise stages.error

        counts, latencies = stages.snapshot()
        stats = outbox.stats()
        elapsed = time.monotonic() - t_start
        busy = max(1e-9, t_done - stages.started_at)
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
            elapsed_s=round(elapsed, 3),
            fps=round(counts.frames_processed / busy, 2),
            latency_ms={"p50": _percentile_ms(latencies, 50), "p95": _percentile_ms(latencies, 95)},
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


def _drops_by_reason(stats: OutboxStats) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (reason, kind), n in sorted(stats.drops.items()):
        out.setdefault(reason, {})[kind] = n
    return out


def _enforce_signature_policy(bundle: Bundle, profile: DeviceProfile) -> Bundle:
    """The bundle's own profile may demand a signature (catches an unsigned build by mistake).

    Against tampering this is not enough, since whoever edits the bundle can edit its profile too: the trust
    anchor is the device's ``--public-key`` (RunOptions.public_key), checked by load_bundle before anything else.
    """
    if bundle.signature_verified or not profile.security.require_signature:
        return bundle
    key_file = profile.security.public_key_file
    assert key_file is not None  # the profile schema requires it with require_signature
    log.info("profile %s requires a signed bundle: checking it with %s", profile.name, key_file)
    return load_bundle(bundle.root, public_key=Path(key_file))


class _NoOutbox:
    """The outbox of a run that publishes nothing (``RunOptions.publish=False``): always empty."""

    path = Path(os.devnull)
    depth = 0

    def stats(self) -> OutboxStats:
        return OutboxStats(depth=0, bytes=0)

    def close(self) -> None:
        pass


class _DiscardingPublisher:
    """Stands in for MqttPublisher when a run publishes nothing (edge-bench without ``--publish``).

    ``send`` serialises the payload exactly as ``MqttPublisher.send`` does before its outbox write, so the
    publish stage still costs what building the bytes costs; then it drops them.
    """

    fatal_error: str | None = None

    def __init__(self) -> None:
        self.sent = 0

    def send(self, name: str, payload: Mapping[str, Any]) -> bool:
        json.dumps(dict(payload), separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
        self.sent += 1
        return True

    def on_feedback(self, callback: Callable[[dict[str, Any]], None]) -> None:
        pass

    def start(self) -> None:
        pass

    def wait_connected(self, timeout: float) -> bool:
        return True

    def raise_if_fatal(self) -> None:
        pass

    def flush(self, timeout_s: float) -> bool:
        return True

    def close(self, publish_offline: bool = True, timeout_s: float = 2.0) -> None:
        pass

    def stats(self) -> PublisherStats:
        # Nothing reaches a broker, so nothing is acknowledged.
        return PublisherStats(
            connected=False,
            connects=0,
            disconnects=0,
            published=0,
            acked=0,
            resent=0,
            inflight=0,
            feedback_received=0,
            feedback_duplicates=0,
            feedback_rejected={},
            send_rejected=0,
        )


def _raise_if_refused(publisher: MqttPublisher | _DiscardingPublisher) -> None:
    try:
        publisher.raise_if_fatal()
    except MqttAuthError as exc:
        raise AuthError(exc.message, hint=exc.hint) from None


class _Heartbeat:
    """Periodic work of the main thread: metrics refresh (1 s), systemd status and the heartbeat message."""

    def __init__(
        self,
        stages: _Stages,
        publisher: MqttPublisher | _DiscardingPublisher,
        outbox: Outbox | _NoOutbox,
        metrics: RunMetrics,
        health: SystemdNotifier,
        bundle_id: str,
        device_id: str,
        backend: str,
    ) -> None:
        self.stages = stages
        self.publisher = publisher
        self.outbox = outbox
        self.metrics = metrics
        self.health = health
        self.bundle_id = bundle_id
        self.device_id = device_id
        self.backend = backend
        self.started = time.monotonic()
        self._last_refresh = float("-inf")
        self._last_beat = self.started
        self._last_processed = 0
        self.rss = 0.0
        self.headroom = 0.0

    def refresh(self) -> None:
        stats = self.publisher.stats()
        self.rss, self.headroom = self.metrics.refresh(
            self.outbox.stats(),
            acked=stats.acked,
            connected=stats.connected,
            feedback_rejected=stats.feedback_rejected,
            source_reconnects=self.stages.source.reconnects,
            source_read_failures=self.stages.source.read_failures,
            frames_flowing=self.health.frames_flowing(),
            uplink=(stats.uplink_bytes, stats.uplink_wait_s, stats.uplink_throttled),
        )
        self._last_refresh = time.monotonic()

    def tick(self, interval_s: float, send: bool = True) -> None:
        now = time.monotonic()
        if now - self._last_refresh >= 1.0:
            self.refresh()
        if send and interval_s > 0 and now - self._last_beat >= interval_s:
            self.send()

    def send(self, final: bool = False) -> None:
        self.refresh()
        counts, latencies = self.stages.snapshot()
        now = time.monotonic()
        fps = (counts.frames_processed - self._last_processed) / max(1e-9, now - self._last_beat)
        self._last_beat, self._last_processed = now, counts.frames_processed
        stats = self.outbox.stats()
        uplink = self.publisher.stats()
        payload = {
            "schema": HEARTBEAT_SCHEMA,
            "id": uuid.uuid4().hex,
            "device_id": self.device_id,
            "bundle_id": self.bundle_id,
            "ts": utc_iso(time.time()),
            "state": "stopping" if final else "running",
            "uptime_s": round(now - self.started, 1),
            "fps": round(fps, 2),
            "latency_ms": {"p50": _percentile_ms(latencies, 50), "p95": _percentile_ms(latencies, 95)},
            "rss_mib": round(self.rss / (1024 * 1024), 1),
            "headroom": round(self.headroom, 4),
            "outbox_depth": stats.depth,
            "outbox_bytes": stats.bytes,
            # A growing outbox with throttled=true is the profile's uplink cap at work, not a broker problem.
            "uplink": {
                "cap_bytes_per_s": uplink.uplink_bytes_per_s,
                "bytes": uplink.uplink_bytes,
                "wait_s": round(uplink.uplink_wait_s, 1),
                "throttled": uplink.uplink_throttled,
            },
            "frames": {
                "read": counts.frames_read,
                "processed": counts.frames_processed,
                "skipped": counts.frames_skipped,
                "dropped": counts.frames_dropped,
                "errors": counts.frame_errors,
            },
            "backend": self.backend,
            "source": {
                "live": self.stages.source.live,
                "frames_flowing": self.health.frames_flowing(),
                "last_frame_age_s": round(self.health.last_frame_age_s(), 2),
                "reconnects": self.stages.source.reconnects,
                "read_failures": self.stages.source.read_failures,
            },
        }
        self.stages.send("heartbeat", payload)
        stalled = "" if self.health.frames_flowing() else f", camera stalled {self.health.last_frame_age_s():.0f} s"
        self.health.status(
            f"{counts.frames_processed} frames, {fps:.1f} fps, outbox {stats.depth}, "
            f"headroom {self.headroom:.0%}{stalled}"
        )


def dumps_summary(summary: RunSummary) -> str:
    return json.dumps(summary.as_dict(), indent=2, sort_keys=True)
