"""The four thread loops of edge-run and the state they share: capture, preprocess, inference, publish.

``run.pipeline``'s docstring draws them: capture reads, samples and queues frames (a live camera's queue drops the
oldest frame, a file's blocks); preprocess finds the regions and prepares one tensor batch per frame (+ colour);
inference makes ONE backend call per frame and runs the head; publish builds the messages (``run.messages``) and
hands them to the publisher. The inference thread does nothing but the backend call and the head, so on a GPU
device the CPU work of the next frames (resize, crop, colour histogram) overlaps the current frame's ``embed``
instead of queueing in front of it.

A frame that fails in a stage is counted by that stage (``edge_frame_errors_total{stage}``) and skipped; a stage
that cannot go on at all ends the run (``Stages.error``), and ``abort`` keeps the others from waiting for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from edge_runtime.backends import Backend
from edge_runtime.errors import EdgeError, ModelError
from edge_runtime.features import colour_descriptor, compose, looks_monochrome
from edge_runtime.head.model import Head
from edge_runtime.preprocess import prepare_batch
from edge_runtime.profile import Camera, DeviceProfile
from edge_runtime.run.feedback import FeedbackBook
from edge_runtime.run.health import SystemdNotifier
from edge_runtime.run.messages import encode_crop, object_message, object_topic, results_message, top1, utc_iso
from edge_runtime.run.metrics import RunMetrics
from edge_runtime.run.publisher import Publisher
from edge_runtime.run.queues import END, StageQueue
from edge_runtime.run.regions import RegionFinder, crop
from edge_runtime.run.sampler import AdaptiveSampler
from edge_runtime.run.scene.messages import SCENE_TOPICS
from edge_runtime.run.scene.stage import SceneStage
from edge_runtime.run.sources import Source, VideoFileSource
from edge_runtime.run.stage_items import Counts, FrameTiming, Inferred, Prepared, StageError, Throttled
from edge_runtime.types import Decision, Frame, MessageKind

__all__ = ["LATENCY_WINDOW", "MONO_CHECK_FRAMES", "Counts", "FrameTiming", "Stages"]

log = logging.getLogger(__name__)

MONO_CHECK_FRAMES = 30  # frames that must all look monochrome before the colour warning (a grey scene is not one)
LATENCY_WINDOW = 512  # recent frame latencies the heartbeat's percentiles are taken over


class Stages:
    """The four pipeline threads and the state they share, joined by the three queues they are given."""

    def __init__(
        self,
        *,
        source: Source,
        sampler: AdaptiveSampler,
        finder: RegionFinder,
        backend: Backend,
        head: Head,
        publisher: Publisher,
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
        queues: tuple[StageQueue, StageQueue, StageQueue],  # frames, tensors, publish
        on_frame: Callable[[FrameTiming], None] | None = None,
        scene: SceneStage | None = None,
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
        self._clock_t0 = time.time()
        self.counts = Counts()
        self.lock = threading.Lock()
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.ended_by = ""
        self.error: BaseException | None = None
        self.frames_q, self.tensors_q, self.publish_q = queues
        self.colour_weight = float(head.config.colour_weight)
        # Frames checked for a monochrome camera while the head reads colour (warned once, after MONO_CHECK_FRAMES).
        self._mono_seen = 0 if self.colour_weight > 0 else MONO_CHECK_FRAMES
        self.on_frame = on_frame
        self.scene = scene  # cart or shelf logic after the head (run/scene/); None: per-frame results only
        # Per-object crops go with per-frame messages only (a scene sends its own, one per track).
        self._object_crops = self.mqtt.publish_crops and (scene is None or scene.frames_published)
        if scene is not None:
            scene.bind(lambda topic, payload, retained: self.send(topic, payload, SCENE_TOPICS[topic][0], retained))
        # (frame index, read seconds) of queued frames, for on_frame only: Frame is immutable and shared.
        self._read_s: deque[tuple[int, float]] = deque()
        self._log_prepare_error = Throttled()  # one per thread: Throttled is not locked
        self._log_infer_error = Throttled()
        self._log_publish_error = Throttled()
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
        self.frames_q.put_or_abort(END, self.abort)

    def _end_tensors(self) -> None:
        self.tensors_q.put_or_abort(END, self.abort)

    def _end_publish(self) -> None:
        self.publish_q.put_or_abort(END, self.abort)

    def start(self) -> None:
        """Start the four threads."""
        self.started_at = time.monotonic()
        for thread in self.threads:
            thread.start()

    def alive(self) -> bool:
        """Whether any stage thread still runs."""
        return any(t.is_alive() for t in self.threads)

    def finished(self) -> bool:
        """Whether the publish thread, the last one, has ended (and so everything upstream of it)."""
        return not self.threads[-1].is_alive()

    def join(self, deadline: float) -> bool:
        """Wait for the threads until ``deadline`` (monotonic); True when all have ended."""
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

    def _relay(self, source: StageQueue, step: Callable[[Any], Any], log_error: Throttled, sink: StageQueue) -> None:
        """Apply ``step`` to every item of ``source`` and pass the result on; a failed frame is counted by the
        stage it failed in and skipped, the loop goes on."""
        while (item := source.get_or_end(self.abort)) is not END:
            try:
                out = step(item)
            except StageError as exc:
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

    def prepare(self, frame: Frame) -> Prepared:
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
            raise StageError(stage) from exc
        image = frame.image if self.scene is not None else None
        return Prepared(frame.index, frame.source_ref, frame.ts, regions, views, batch, colour, spent, image)

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

    def infer(self, item: Prepared) -> Inferred:
        stage = "inference"
        spent = item.spent
        decisions: list[Decision] = []
        features: np.ndarray | None = None
        try:
            if item.batch is not None:
                t2 = time.perf_counter()
                embeddings = self.backend.embed(item.batch)  # every region of the frame in one call
                t3 = time.perf_counter()
                self._observe(spent, "inference", t3 - t2)
                stage = "head"
                features = compose(embeddings, item.colour, self.colour_weight)
                decisions = self.head.decide(features)
                self._observe(spent, "head", time.perf_counter() - t3)
                if len(decisions) != len(item.regions):
                    raise ModelError(f"{len(item.regions)} regions but {len(decisions)} decisions")
        except Exception as exc:
            raise StageError(stage) from exc
        # Copy only the crops that will be published: the frame itself can then be freed while the publish
        # thread encodes.
        crops: list[np.ndarray | None] = [
            view.copy() if self._object_crops and object_topic(d, self.unknown_loop) else None
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
            self.metrics.count_prediction(top1(d), d.route)
        out = Inferred(item.frame_id, item.source_ref, item.ts, item.regions, decisions, crops, spent)
        if self.scene is not None:
            out.views, out.image = item.views, item.image
            out.features = features if self.scene.needs_features else None
        return out

    # ---- publish: encode -> outbox

    def publish_loop(self) -> None:
        while (item := self.publish_q.get_or_end(self.abort)) is not END:
            try:
                self.publish(item)
            except Exception as exc:
                self.metrics.frame_errors.labels(stage="encode").inc()
                with self.lock:
                    self.counts.frame_errors += 1
                self._log_publish_error("frame %s: messages not produced: %s", item.source_ref, exc)
        if self.scene is not None:
            self.scene.finish()  # final track decisions, the session's end, the last state

    def publish(self, item: Inferred) -> None:
        if self.scene is None or self.scene.frames_published:
            self._publish_frame(item)
        if self.scene is not None:
            t0 = time.perf_counter()
            # A file's scene runs on the file's clock (settle and idle times are video time), stamped from the start.
            ts = self._clock_t0 + item.frame_id / self.fps if self.video_clock else item.ts
            self.scene.on_frame(item.frame_id, ts, item.regions, item.decisions, item.features, item.views, item.image)
            self._observe(item.spent, "scene", time.perf_counter() - t0)
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

    def _publish_frame(self, item: Inferred) -> None:
        """The frame's edge.results/1 and its objects' unknown/verify messages."""
        t0 = time.perf_counter()
        ts = utc_iso(item.ts)
        results = results_message(
            device_id=self.device_id,
            bundle_id=self.bundle_id,
            frame_id=item.frame_id,
            source_ref=item.source_ref,
            ts=ts,
            regions=item.regions,
            decisions=item.decisions,
        )
        objects: list[tuple[str, dict[str, Any], str]] = []
        for region, d, crop_image in zip(item.regions, item.decisions, item.crops, strict=True):
            topic = object_topic(d, self.unknown_loop)
            if topic is None:
                continue
            jpeg = None
            if crop_image is not None:
                jpeg = encode_crop(crop_image, self.mqtt.crop_max_side, self.mqtt.jpeg_quality)
            message = object_message(
                topic,
                device_id=self.device_id,
                frame_id=item.frame_id,
                source_ref=item.source_ref,
                ts=ts,
                region=region,
                decision=d,
                crop=jpeg,
            )
            objects.append((topic, message, top1(d)))
        t1 = time.perf_counter()
        self._observe(item.spent, "encode", t1 - t0)

        # Remembered before the send: a reviewer can only answer after the broker has the message.
        self.feedback.remember_frame(results["id"], tuple(top1(d) for d in item.decisions))
        for _, message, predicted in objects:
            self.feedback.remember_object(message["id"], predicted)
        # One outbox transaction (one fsync) for the frame's messages, not one per message.
        batch: list[tuple[str, Mapping[str, Any]]] = [("results", results)]
        batch += [(topic, message) for topic, message, _ in objects]
        for (topic, _), stored in zip(batch, self.publisher.send_many(batch), strict=True):
            self._count_sent(topic, stored)
        self._observe(item.spent, "publish", time.perf_counter() - t1)

    def send(
        self, topic: str, payload: Mapping[str, Any], kind: MessageKind | None = None, retain: bool = False
    ) -> bool:
        """Hand a message to the publisher and count it by topic when it was stored."""
        stored = self.publisher.send(topic, payload, kind, retain=retain)
        self._count_sent(topic, stored)
        return stored

    def _count_sent(self, topic: str, stored: bool) -> None:
        if stored:
            self.metrics.messages.labels(topic=topic).inc()
            with self.lock:
                self.counts.messages[topic] += 1

    # ---- reporting

    def snapshot(self) -> tuple[Counts, list[float]]:
        """Copies of the counts and of the recent frame latencies (seconds)."""
        with self.lock:
            counts = replace(self.counts, routes=Tally(self.counts.routes), messages=Tally(self.counts.messages))
            return counts, list(self.latencies)
