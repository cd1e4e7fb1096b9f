"""Prometheus metrics of edge-run, on a private registry.

A private ``CollectorRegistry`` (not prometheus_client's global one) lets a process, or a test, hold several
independent pipelines. Class labels are bounded: the SKU list comes from the bundle, so every per-class series is
declared, at zero, when the pipeline starts. A dashboard then sees a class that was never predicted as 0 instead
of a missing series, and a rate() over a series that appears mid-run does not lose its first increment.

The ``sku`` label of the per-class counters is the top-1 SKU of a region: the nearest prototype, also when the
region was routed ``unknown`` (its results entry then has ``sku: null``). That keeps the label set fixed and
shows which prototypes attract the strange objects.

Gauges that mirror another component (outbox depth and bytes, memory, MQTT connection) are refreshed by
``refresh()``, which the pipeline calls about once a second; counters that mirror another component's totals
(outbox drops, publisher acks) are advanced by the difference since the last refresh. Feedback is counted where
it is judged (``run.feedback``), through ``count_feedback`` and ``reject_feedback``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest, start_http_server

from edge_runtime.errors import UsageError
from edge_runtime.memory import CgroupCharge, read_cgroup_charge, read_process_memory
from edge_runtime.run.feedback import REJECT_REASONS
from edge_runtime.run.outbox import KINDS, OutboxStats

__all__ = ["OUTBOX_DROP_REASONS", "ROUTES", "STAGES", "RunMetrics", "sample_value"]

log = logging.getLogger(__name__)

ROUTES: tuple[str, ...] = ("accept", "verify", "unknown")
# capture: source.read(); regions: region finder; preprocess: crops -> tensor; inference: the one backend call per
# frame; head: prototypes, calibration, OOD, routing; encode: JSON + JPEG; publish: durable outbox write; scene: the
# cart or shelf logic after the head (run/scene/), its messages included.
STAGES: tuple[str, ...] = ("capture", "regions", "preprocess", "inference", "head", "encode", "publish", "scene")
OUTBOX_DROP_REASONS: tuple[str, ...] = ("full", "oversize", "ttl", "disk_full", "db_error", "rejected", "closed")
MESSAGE_TOPICS: tuple[str, ...] = ("results", "unknown", "verify", "heartbeat")
# Per-stage latencies run from sub-millisecond (head) to a second (a large model on a small CPU).
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MIB = 1024 * 1024


@dataclass(frozen=True)
class MemoryFigures:
    """One refresh's memory figures, bytes: the heartbeat reports them, the gauges mirror them."""

    rss_bytes: float  # resident now
    peak_bytes: float  # resident high-water mark + GPU memory: the budget's quantity
    anon_bytes: float
    gpu_mib: float | None  # None: on the CPU, or the platform does not say
    headroom: float  # 1 - peak / budget
    charged: CgroupCharge | None

    def as_dict(self) -> dict[str, Any]:
        """The heartbeat's ``memory`` object."""
        return {
            "peak_mib": round(self.peak_bytes / MIB, 1),
            "rss_mib": round(self.rss_bytes / MIB, 1),
            "anon_mib": round(self.anon_bytes / MIB, 1),
            "gpu_mib": None if self.gpu_mib is None else round(self.gpu_mib, 1),
            "charged": None if self.charged is None else self.charged.as_dict(),
        }


class RunMetrics:
    """Every metric edge-run exports, registered on ``self.registry``."""

    def __init__(
        self,
        skus: Sequence[str],
        *,
        memory_budget_mib: float,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.skus = tuple(skus)
        self._sku_set = frozenset(self.skus)
        self.memory_budget_bytes = float(memory_budget_mib) * MIB
        self._process = psutil.Process(os.getpid())
        self._lock = threading.Lock()
        self._seen_outbox_drops: dict[tuple[str, str], int] = {}
        self._seen_acked = 0
        self._seen_source = (0, 0)  # source reconnects and read failures already counted
        self._seen_uplink = (0, 0.0)  # uplink bytes and budget wait already counted
        self._server: Any = None
        r = self.registry

        self.predictions = Counter(
            "edge_predictions",
            "Regions classified, by top-1 SKU and route (accept | verify | unknown).",
            ["sku", "route"],
            registry=r,
        )
        self.routes = Counter("edge_routes", "Regions by route.", ["route"], registry=r)
        self.unknown = Counter("edge_unknown", "Objects routed unknown (one edge.unknown/1 message each).", registry=r)
        self.verify = Counter("edge_verify", "Objects routed to verification (one edge.verify/1 each).", registry=r)
        self.feedback = Counter(
            "edge_feedback",
            "Reviewer feedback matched to a prediction, by predicted top-1 SKU; outcome correct | incorrect.",
            ["sku", "outcome"],
            registry=r,
        )
        self.feedback_rejected = Counter(
            "edge_feedback_rejected", "Feedback messages not counted, by reason.", ["reason"], registry=r
        )
        self.stage_seconds = Histogram(
            "edge_stage_seconds",
            "Time per frame in each pipeline stage.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.frame_latency = Histogram(
            "edge_frame_latency_seconds",
            "Capture to results stored in the outbox, per processed frame.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.frames_read = Counter("edge_frames_read", "Frames delivered by the source.", registry=r)
        self.frames_processed = Counter("edge_frames_processed", "Frames that went through inference.", registry=r)
        self.frames_skipped = Counter("edge_frames_skipped", "Frames the adaptive sampler let pass by.", registry=r)
        self.frames_dropped = Counter(
            "edge_frames_dropped", "Live frames dropped because inference fell behind (oldest first).", registry=r
        )
        self.frame_errors = Counter(
            "edge_frame_errors", "Frames that failed in a stage (counted, not fatal).", ["stage"], registry=r
        )
        self.regions = Counter("edge_regions", "Regions classified.", registry=r)
        self.messages = Counter(
            "edge_messages", "Messages stored in the outbox for publishing, by topic.", ["topic"], registry=r
        )
        self.messages_acked = Counter("edge_messages_acked", "Messages the broker acknowledged (QoS 1).", registry=r)
        self.outbox_depth = Gauge(
            "edge_outbox_depth", "Messages waiting in the outbox (in flight included).", registry=r
        )
        self.outbox_bytes = Gauge("edge_outbox_bytes", "Bytes waiting in the outbox.", registry=r)
        self.outbox_dropped = Counter(
            "edge_outbox_dropped", "Messages the outbox dropped, by reason and kind.", ["reason", "kind"], registry=r
        )
        self.mqtt_connected = Gauge("edge_mqtt_connected", "1 while connected to the broker.", registry=r)
        self.uplink_throttled = Gauge(
            "edge_mqtt_uplink_throttled", "1 while a message waits for uplink budget (mqtt.uplink_bytes_per_s).",
            registry=r,
        )  # fmt: skip
        self.uplink_wait = Counter(
            "edge_mqtt_uplink_wait_seconds", "Time ready messages waited for uplink budget.", registry=r
        )
        self.uplink_bytes = Counter(
            "edge_mqtt_uplink_bytes", "Payload and topic bytes published, retransmissions included.", registry=r
        )
        self.rss = Gauge("edge_process_rss_bytes", "Resident memory of the edge-run process now.", registry=r)
        # The budget's quantity, as edge-build predicts it and edge-bench measures it (memory.py says why).
        self.peak = Gauge(
            "edge_memory_peak_bytes", "Resident high-water mark (VmHWM) plus GPU memory: what the budget bounds.",
            registry=r,
        )  # fmt: skip
        self.anon = Gauge("edge_process_anon_bytes", "Anonymous resident memory (not reclaimable).", registry=r)
        self.charged = Gauge(
            "edge_cgroup_charged_bytes",
            "Memory charged to this process's cgroup (MemoryMax's view), while the cgroup holds it alone.",
            registry=r,
        )
        self.budget = Gauge("edge_memory_budget_bytes", "The profile's memory budget.", registry=r)
        self.headroom = Gauge(
            "edge_memory_headroom_ratio",
            "1 - (resident high-water mark + GPU memory) / budget; the profile requires at least min_headroom.",
            registry=r,
        )
        self.backend = Info(
            "edge_backend", "The inference backend actually running and the bundle it runs.", registry=r
        )
        self.up_since = Gauge("edge_start_time_seconds", "Unix time the pipeline started.", registry=r)
        self.source_reconnects = Counter(
            "edge_source_reconnects", "Reconnection attempts of a live camera or stream.", registry=r
        )
        self.source_read_failures = Counter(
            "edge_source_read_failures", "Failed opens and reads of the source (counted, not fatal).", registry=r
        )
        self.frames_flowing = Gauge(
            "edge_source_frames_flowing",
            "1 while frames arrive within health.frame_stall_s; 0 = stalled (the systemd watchdog is withheld).",
            registry=r,
        )

        for sku in self.skus:
            for route in ROUTES:
                self.predictions.labels(sku=sku, route=route)
            for outcome in ("correct", "incorrect"):
                self.feedback.labels(sku=sku, outcome=outcome)
        for route in ROUTES:
            self.routes.labels(route=route)
        for reason in REJECT_REASONS:  # run.feedback counts every rejection, by these reasons
            self.feedback_rejected.labels(reason=reason)
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)
            self.frame_errors.labels(stage=stage)
        for topic in MESSAGE_TOPICS:
            self.messages.labels(topic=topic)
        for reason in OUTBOX_DROP_REASONS:
            for kind in KINDS:
                self.outbox_dropped.labels(reason=reason, kind=kind)
        self.budget.set(self.memory_budget_bytes)

    # ------------------------------------------------------------------ recording

    def set_backend(self, **fields: str) -> None:
        self.backend.info({k: str(v) for k, v in fields.items()})

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage=stage).observe(seconds)

    def count_prediction(self, top1_sku: str, route: str) -> None:
        # A SKU outside the bundle's list cannot happen (the head only knows those); refusing it keeps a bug from
        # growing the label set.
        if top1_sku in self._sku_set and route in ROUTES:
            self.predictions.labels(sku=top1_sku, route=route).inc()
        self.routes.labels(route=route).inc()
        if route == "unknown":
            self.unknown.inc()
        elif route == "verify":
            self.verify.inc()

    def count_feedback(self, predicted_sku: str, correct: bool) -> None:
        self.feedback.labels(sku=predicted_sku, outcome="correct" if correct else "incorrect").inc()

    def reject_feedback(self, reason: str) -> None:
        self.feedback_rejected.labels(reason=reason).inc()

    # ------------------------------------------------------------------ mirrored state

    def refresh(
        self,
        outbox: OutboxStats | None = None,
        *,
        acked: int | None = None,
        connected: bool | None = None,
        source_reconnects: int | None = None,
        source_read_failures: int | None = None,
        frames_flowing: bool | None = None,
        uplink: tuple[int, float, bool] | None = None,
        gpu_mib: float | None = None,
    ) -> MemoryFigures:
        """Update gauges and mirrored counters; returns the memory figures for heartbeats. ``gpu_mib``: the GPU
        memory this process holds, where the backend runs on a GPU that reports it."""
        with self._lock:
            if source_reconnects is not None and source_reconnects > self._seen_source[0]:
                self.source_reconnects.inc(source_reconnects - self._seen_source[0])
                self._seen_source = (source_reconnects, self._seen_source[1])
            if source_read_failures is not None and source_read_failures > self._seen_source[1]:
                self.source_read_failures.inc(source_read_failures - self._seen_source[1])
                self._seen_source = (self._seen_source[0], source_read_failures)
            if frames_flowing is not None:
                self.frames_flowing.set(1 if frames_flowing else 0)
            if outbox is not None:
                self.outbox_depth.set(outbox.depth)
                self.outbox_bytes.set(outbox.bytes)
                for key, total in outbox.drops.items():
                    delta = total - self._seen_outbox_drops.get(key, 0)
                    if delta > 0:
                        self.outbox_dropped.labels(reason=key[0], kind=key[1]).inc(delta)
                    self._seen_outbox_drops[key] = total
            if acked is not None:
                if acked > self._seen_acked:
                    self.messages_acked.inc(acked - self._seen_acked)
                self._seen_acked = max(self._seen_acked, acked)
            if connected is not None:
                self.mqtt_connected.set(1 if connected else 0)
            if uplink is not None:  # (bytes sent, seconds waited for budget, waiting now), running totals
                sent, waited, throttled = uplink
                if sent > self._seen_uplink[0]:
                    self.uplink_bytes.inc(sent - self._seen_uplink[0])
                if waited > self._seen_uplink[1]:
                    self.uplink_wait.inc(waited - self._seen_uplink[1])
                self._seen_uplink = (max(sent, self._seen_uplink[0]), max(waited, self._seen_uplink[1]))
                self.uplink_throttled.set(1 if throttled else 0)
            figures = self._memory(gpu_mib)
            self.rss.set(figures.rss_bytes)
            self.peak.set(figures.peak_bytes)
            self.anon.set(figures.anon_bytes)
            if figures.charged is not None and figures.charged.processes == 1:
                self.charged.set(figures.charged.current_mib * MIB)
            self.headroom.set(figures.headroom)
            return figures

    def _memory(self, gpu_mib: float | None) -> MemoryFigures:
        reading = read_process_memory()
        if reading is None:  # no procfs: psutil's RSS stands in for the high-water mark
            try:
                rss = float(self._process.memory_info().rss)
            except psutil.Error:
                rss = 0.0
            hwm, anon = rss, 0.0
        else:
            rss, hwm, anon = reading.rss_mib * MIB, reading.hwm_mib * MIB, reading.anon_mib * MIB
        peak = hwm + (gpu_mib or 0.0) * MIB
        headroom = 1.0 - peak / self.memory_budget_bytes if self.memory_budget_bytes > 0 else 0.0
        return MemoryFigures(rss, peak, anon, gpu_mib, headroom, read_cgroup_charge())

    # ------------------------------------------------------------------ exposition

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve /metrics on ``port`` (0 = do not serve); returns the port actually bound (0 when off)."""
        if port == 0:
            return 0
        try:
            result = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            raise UsageError(
                f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}",
                hint="another process holds the port: pass --metrics-port, or set metrics.port (0 disables it)",
            ) from exc
        # prometheus-client >= 0.17 returns (server, thread); older ones return None and cannot be shut down.
        self._server = result[0] if isinstance(result, tuple) else None
        bound = int(self._server.server_address[1]) if self._server is not None else port
        log.info("metrics on http://%s:%d/metrics", addr, bound)
        return bound

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def sample_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The value of one sample in exposition ``text`` (for tests and the demo; None when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = dict(labels or {})
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items()):
                return float(sample.value)
    return None
