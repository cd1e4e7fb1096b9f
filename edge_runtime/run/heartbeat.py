"""The main thread's periodic work while edge-run runs: metrics refresh, systemd status, heartbeat messages.

The metrics that mirror other components (outbox, publisher, source, memory) are refreshed about once a second;
an ``edge.heartbeat/1`` message (fps since the last one, latency percentiles, memory and headroom, outbox, uplink,
frames, source health) goes out every ``heartbeat_s`` and once more, ``stopping``, after the stages have drained.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edge_runtime.run.health import SystemdNotifier
from edge_runtime.run.messages import heartbeat_message, utc_iso
from edge_runtime.run.metrics import MemoryFigures, RunMetrics
from edge_runtime.run.publisher import Publisher
from edge_runtime.run.stages import Stages

__all__ = ["METRICS_REFRESH_S", "Heartbeat"]

METRICS_REFRESH_S = 1.0


class Heartbeat:
    """Call ``tick()`` from the main thread's loop; ``send(final=True)`` once the stages are done."""

    def __init__(
        self,
        stages: Stages,
        publisher: Publisher,
        metrics: RunMetrics,
        health: SystemdNotifier,
        *,
        bundle_id: str,
        device_id: str,
        backend: str,
    ) -> None:
        self.stages = stages
        self.publisher = publisher
        self.metrics = metrics
        self.health = health
        self.bundle_id = bundle_id
        self.device_id = device_id
        self.backend = backend
        self.started = time.monotonic()
        self._last_refresh = float("-inf")
        self._last_beat = self.started
        self._last_processed = 0
        self.memory: MemoryFigures | None = None
        # GPU memory counts against the budget as it does in edge-build's footprint; per process (NVML or the
        # Jetson's nvmap clients), None where the platform does not say.
        self._gpu_reader: Callable[[], float | None] | None = None
        if backend != "onnxruntime-cpu":
            from edge_runtime.backends.gpumem import gpu_memory_used_mib

            self._gpu_reader = gpu_memory_used_mib

    def refresh(self) -> MemoryFigures:
        """Bring the mirrored metrics up to date; the memory figures the next heartbeat reports."""
        stats = self.publisher.stats()
        self.memory = self.metrics.refresh(
            self.publisher.outbox_stats(),
            acked=stats.acked,
            connected=stats.connected,
            source_reconnects=self.stages.source.reconnects,
            source_read_failures=self.stages.source.read_failures,
            frames_flowing=self.health.frames_flowing(),
            uplink=(stats.uplink_bytes, stats.uplink_wait_s, stats.uplink_throttled),
            gpu_mib=self._gpu_mib(),
        )
        self._last_refresh = time.monotonic()
        return self.memory

    def _gpu_mib(self) -> float | None:
        if self._gpu_reader is None:
            return None
        try:
            return self._gpu_reader()
        except Exception:  # a GPU library failing mid-run must not end the run; the figure is just missing
            return None

    def tick(self, interval_s: float, send: bool = True) -> None:
        """Refresh the metrics when a second has passed, and send a heartbeat when ``interval_s`` has (unless
        ``send`` is False or ``interval_s`` is 0)."""
        now = time.monotonic()
        if now - self._last_refresh >= METRICS_REFRESH_S:
            self.refresh()
        if send and interval_s > 0 and now - self._last_beat >= interval_s:
            self.send()

    def send(self, final: bool = False) -> None:
        """Send one heartbeat message now (``final``: state ``stopping``) and update systemd's status line."""
        memory = self.refresh()
        counts, latencies = self.stages.snapshot()
        now = time.monotonic()
        fps = (counts.frames_processed - self._last_processed) / max(1e-9, now - self._last_beat)
        self._last_beat, self._last_processed = now, counts.frames_processed
        outbox = self.publisher.outbox_stats()
        uplink = self.publisher.stats()
        source = self.stages.source
        payload = heartbeat_message(
            device_id=self.device_id,
            bundle_id=self.bundle_id,
            ts=utc_iso(time.time()),
            final=final,
            uptime_s=now - self.started,
            fps=fps,
            latencies=latencies,
            memory=memory.as_dict(),
            headroom=memory.headroom,
            outbox=outbox,
            uplink={
                "cap_bytes_per_s": uplink.uplink_bytes_per_s,
                "bytes": uplink.uplink_bytes,
                "wait_s": round(uplink.uplink_wait_s, 1),
                "throttled": uplink.uplink_throttled,
            },
            frames={
                "read": counts.frames_read,
                "processed": counts.frames_processed,
                "skipped": counts.frames_skipped,
                "dropped": counts.frames_dropped,
                "errors": counts.frame_errors,
            },
            backend=self.backend,
            source={
                "live": source.live,
                "frames_flowing": self.health.frames_flowing(),
                "last_frame_age_s": round(self.health.last_frame_age_s(), 2),
                "reconnects": source.reconnects,
                "read_failures": source.read_failures,
            },
        )
        if self.stages.scene is not None:  # cart: session, live tracks, items, events; shelf: slots per state
            payload["scene"] = self.stages.scene.heartbeat()
        self.stages.send("heartbeat", payload)
        stalled = "" if self.health.frames_flowing() else f", camera stalled {self.health.last_frame_age_s():.0f} s"
        self.health.status(
            f"{counts.frames_processed} frames, {fps:.1f} fps, outbox {outbox.depth}, "
            f"headroom {memory.headroom:.0%}{stalled}"
        )
