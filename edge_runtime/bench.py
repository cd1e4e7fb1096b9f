"""edge-bench: run a bundle's real pipeline on the device and check it against the profile's limits.

The frames go through ``run.pipeline.run`` itself, the code edge-run runs: the same backend selection, region
finder, preprocessing, ``Head.decide``, JSON and JPEG crop encoding, in the same capture / inference / publish
threads. Only the sink differs: without ``publish`` every message is built and serialised, then discarded (the
pipeline's ``NullPublisher``), so a bench run neither needs a broker nor leaves anything in an outbox; with it,
messages go through the durable outbox to the broker as in service (under a ``-bench`` device id, so the bench
never takes the service's MQTT session or overwrites its retained status).

What is measured, and why this way:

* **Frames** are read as fast as the pipeline takes them (files never drop), every frame is processed (the
  motion sampler is off): throughput is the pipeline's capacity, not the camera's rate. The first ``warmup``
  frames (session start-up, first-call allocations, cold caches) are not counted.
* **Stage latencies** per frame: capture (read and decode), regions, preprocess, inference, head, encode (JSON
  and JPEG crops) and publish (serialisation; plus the fsynced outbox write with ``publish``).
* **End to end** is the sum of a frame's stages: its latency when it waits in no queue, which is the case on a
  camera the pipeline keeps up with. ``end_to_end_saturated`` (read start to stored, queue waits included)
  is what it becomes when frames arrive faster than they are processed, as in this bench; it is reported,
  not checked, because the bench makes the queues full on purpose.
* **Memory**: the process's peak resident set (a sampler thread and the kernel's high-water mark VmHWM, which
  also covers start-up), plus GPU memory where the platform tells (NVML, nvmap), the same sum edge-build's
  footprint makes. Headroom = 1 - peak / budget.

Limits: headroom >= ``device.min_headroom`` and p95 end to end <= ``backend.max_latency_ms``, from the bundle's
own profile, or from another profile (what-if: the same bundle on a smaller device), each overridable.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil

from edge_runtime.bundle import load_bundle
from edge_runtime.errors import BenchLimitError, InputError, UsageError
from edge_runtime.memory import RssPeakSampler, vm_hwm_bytes
from edge_runtime.profile import load_profile
from edge_runtime.run.metrics import STAGES
from edge_runtime.run.pipeline import RunOptions, RunSummary, run
from edge_runtime.run.sources import Source
from edge_runtime.run.stages import FrameTiming
from edge_runtime.run.startup import bundle_profile, pick_camera
from edge_runtime.types import Frame

__all__ = [
    "BENCH_SCHEMA",
    "BenchOptions",
    "BenchReport",
    "Limits",
    "SyntheticSource",
    "describe_machine",
    "render_frames",
    "run_bench",
]

BENCH_SCHEMA = "edge.bench/1"
MIB = 1024 * 1024
PERCENTILES = (50, 95, 99)
DISTINCT_FRAMES = 8  # synthetic renders cycled through; more only costs start-up time
SYNTHETIC_JPEG_QUALITY = 90
_SAMPLE_S = 0.005


# --------------------------------------------------------------------------- options and report


@dataclass
class BenchOptions:
    """What ``edge-bench`` was asked to do; ``None`` means: from the bundle's profile."""

    bundle: Path  # a bundle/ folder or a bundle.tar.gz
    frames: int = 200  # measured frames, after the warm-up
    warmup: int = 10
    source: str | None = None  # None: synthetic frames at the camera's resolution
    camera: str | None = None
    publish: bool = False
    profile: str | Path | None = None  # take the limits from this profile instead of the bundle's
    budget_mib: float | None = None  # what-if overrides of the limits
    max_latency_ms: float | None = None
    min_headroom: float | None = None
    mqtt_host: str | None = None
    mqtt_port: int | None = None
    device_id: str | None = None  # with publish; default: the profile's device id + "-bench"
    state_dir: Path | None = None  # with publish; default: a temporary directory, removed afterwards
    drain_timeout_s: float = 10.0
    public_key: Path | None = None  # as edge-run's --public-key: only a bundle signed for this device is run
    seed: int = 0
    handle_signals: bool = False


@dataclass(frozen=True)
class Limits:
    budget_mib: float
    min_headroom: float
    max_latency_ms: float
    source: str  # where they came from, for the report


@dataclass(frozen=True)
class BenchReport:
    """Everything one bench run measured; ``as_dict()`` is the ``--json`` object."""

    bundle: str
    bundle_id: str
    variant: str
    backend: str
    precision: str
    table_precision: str
    input_size: int
    threads: dict[str, int]  # configured (0 = backend default) and used
    machine: dict[str, Any]
    source: str
    published: bool
    frames: dict[str, int]  # measured, warmup, read, processed, errors, dropped
    regions: int  # in the measured frames
    routes: dict[str, int]  # whole run, warm-up included
    latency_ms: dict[str, dict[str, float]]  # stage -> {p50, p95, p99, mean}; end_to_end, end_to_end_saturated
    throughput: dict[str, float]  # fps, regions_per_s, seconds
    memory: dict[str, Any]  # peak_rss_mib, vm_hwm_mib, gpu_mib (None: not exposed), peak_mib, budget, headroom
    predicted_footprint_mib: float | None  # what edge-build measured for this bundle
    limits: Limits
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {ok, value, limit}

    @property
    def passed(self) -> bool:
        return all(c["ok"] for c in self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["schema"] = BENCH_SCHEMA
        out["passed"] = self.passed
        return out

    def dumps(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True, allow_nan=False)

    def raise_if_outside_limits(self) -> None:
        failed = [name for name, c in self.checks.items() if not c["ok"]]
        if failed:
            raise BenchLimitError(
                "outside the profile's limits: " + "; ".join(self.checks[name]["text"] for name in failed),
                hint="choose a smaller variant (edge-build), or revisit the profile's budget or latency ceiling",
            )

    def text(self) -> str:
        m, t = self.memory, self.throughput
        threads = f"{self.threads['used']} thread(s)" + (" (backend default)" if not self.threads["configured"] else "")
        lines = [
            f"edge-bench: {self.variant} on {self.backend} ({self.precision}, input {self.input_size} px, {threads})",
            f"  bundle:  {self.bundle} ({self.bundle_id[:19]}...)",
            f"  machine: {_machine_line(self.machine)}",
            f"  source:  {self.source}; {self.frames['measured']} frames measured after {self.frames['warmup']} "
            f"warm-up, {self.regions} regions, publishing {'on (outbox + broker)' if self.published else 'off'}",
            "",
            f"  {'stage':<22}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'mean ms':>9}",
        ]
        for name, row in self.latency_ms.items():
            label = {
                "end_to_end": "end to end",
                "end_to_end_saturated": "saturated, queued",
            }.get(name, name)
            if name == "end_to_end":
                lines.append("  " + "-" * 58)
            lines.append(f"  {label:<22}{row['p50']:>9.2f}{row['p95']:>9.2f}{row['p99']:>9.2f}{row['mean']:>9.2f}")
        gpu = "not exposed here" if m["gpu_mib"] is None else f"{m['gpu_mib']:.1f} MiB"
        predicted = (
            f"; edge-build predicted {self.predicted_footprint_mib:.1f} MiB"
            if self.predicted_footprint_mib is not None
            else ""
        )
        lines += [
            "  (end to end: sum of a frame's stages, no queue waits; saturated: read to stored with full queues)",
            "",
            f"  throughput: {t['fps']:.1f} frames/s, {t['regions_per_s']:.1f} regions/s over {t['seconds']:.2f} s",
            f"  memory: peak {m['peak_mib']:.1f} MiB = resident high-water mark (sampled {m['peak_rss_mib']:.1f}, "
            f"VmHWM {m['vm_hwm_mib']:.1f} MiB) + GPU {gpu}{predicted}",
            f"  limits from {self.limits.source}:",
        ]
        for check in self.checks.values():
            lines.append(f"    {'ok  ' if check['ok'] else 'FAIL'} {check['text']}")
        lines.append(f"  {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def _machine_line(machine: dict[str, Any]) -> str:
    parts = [
        f"{machine['arch']} {machine['os']}",
        str(machine.get("model") or machine.get("cpu") or "cpu"),
        f"{machine['cores_logical']} cores",
        f"{machine['memory_mib'] / 1024:.1f} GiB",
        f"Python {machine['python']}",
        f"onnxruntime {machine['onnxruntime']}",
        f"load {machine['load_avg_1m']:.2f}",
    ]
    return ", ".join(parts)


# --------------------------------------------------------------------------- synthetic frames


class SyntheticSource(Source):
    """Deterministic camera-sized frames: demo products rendered onto store-like backgrounds.

    The renders are made once, in a child process so that drawing's temporaries do not count in this process's
    peak memory (edge-run does not draw), and kept as JPEG bytes; each read decodes one, so the capture stage
    costs what decoding a camera's MJPEG or a video frame costs instead of nothing. Frames cycle until
    ``close()``.
    """

    live = False

    def __init__(
        self, width: int, height: int, *, distinct: int = DISTINCT_FRAMES, seed: int = 0, camera: str = ""
    ) -> None:
        super().__init__(f"synthetic:{width}x{height}", camera=camera)
        self.width, self.height, self.seed = width, height, seed
        with tempfile.TemporaryDirectory(prefix="edge-bench-frames-") as tmp:
            target = Path(tmp) / "frames.npz"
            code = "import sys; from edge_runtime.bench import render_frames; render_frames(*sys.argv[1:])"
            args = [str(target), str(width), str(height), str(max(1, distinct)), str(seed)]
            proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise InputError(f"cannot render synthetic {width}x{height} frames ({tail})")
            with np.load(target, allow_pickle=False) as data:
                self._jpegs = [data[f"frame_{i}"] for i in range(len(data.files))]

    def read(self) -> Frame | None:
        if self.closed:
            return None
        image = cv2.imdecode(self._jpegs[self.frames_read % len(self._jpegs)], cv2.IMREAD_COLOR)
        if image is None:  # the child wrote what it encoded: only a damaged temporary file could do this
            raise InputError(f"cannot decode synthetic frame {self.frames_read}")
        return self._emit(image)

    def describe(self) -> str:
        return (
            f"synthetic {self.width}x{self.height} frames ({len(self._jpegs)} demo renders, seed {self.seed}, "
            "JPEG-decoded per read)"
        )


def render_frames(target: str, width: str, height: str, distinct: str, seed: str) -> None:
    """The child process of SyntheticSource: write ``distinct`` JPEG frames to ``target`` (.npz)."""
    from edge_runtime.demo import demo_skus, demo_unknown_skus, render_product

    w, h, n, s = int(width), int(height), int(distinct), int(seed)
    known, unknown = demo_skus(s), demo_unknown_skus(s)
    frames: dict[str, Any] = {}
    for i in range(n):
        # One in four is a product the catalogue has never seen, as a cart camera meets them.
        sku = unknown[i % len(unknown)] if i % 4 == 3 else known[(i * 7) % len(known)]
        image = render_product(sku, np.random.default_rng([s, 0xBE7C, i]), size=(w, h))
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, SYNTHETIC_JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"cannot encode a synthetic {w}x{h} frame")
        frames[f"frame_{i}"] = data
    np.savez(target, **frames)


# --------------------------------------------------------------------------- memory


def _gpu_reader() -> tuple[Any, Any]:
    """(per-process reader, Jetson system-wide reader), or Nones when this build has no GPU memory module."""
    try:
        from edge_runtime.backends.gpumem import gpu_memory_used_mib, unified_memory_used_mib
    except ImportError:
        return None, None
    return gpu_memory_used_mib, unified_memory_used_mib


def _gpu_mib(backend: str, unified_before: float | None) -> tuple[float | None, str]:
    """GPU memory this process holds, and where the figure comes from; None when the platform does not say."""
    per_process, unified = _gpu_reader()
    if per_process is None:
        return None, "no GPU memory reader in this build"
    if backend == "onnxruntime-cpu":
        # NVML would answer with other processes' memory: this process holds none.
        return 0.0, "CPU backend"
    value = per_process()
    if value is not None:
        return float(value), "per process (NVML or nvmap)"
    after = unified() if unified is not None else None
    if unified_before is not None and after is not None:
        return max(0.0, float(after) - float(unified_before)), "system-wide nvmap growth during the run"
    return None, "not exposed here"


# --------------------------------------------------------------------------- machine


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def describe_machine() -> dict[str, Any]:
    """Enough to tell two bench results apart: architecture, CPU or board, cores, memory, versions, load."""
    import onnxruntime

    model = None
    with contextlib.suppress(OSError):
        model = Path("/proc/device-tree/model").read_bytes().decode("utf-8", "replace").strip("\x00").strip()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return {
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "model": model,
        "cpu": _cpu_name(),
        "cores_logical": os.cpu_count() or 1,
        "cores_physical": psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        "cores_usable": usable,
        "memory_mib": round(psutil.virtual_memory().total / MIB, 1),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": list(onnxruntime.get_available_providers()),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0,
    }


# --------------------------------------------------------------------------- the bench


def _stats_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {f"p{q}": 0.0 for q in PERCENTILES} | {"mean": 0.0}
    ms = np.asarray(values, dtype=np.float64) * 1000.0
    out = {f"p{q}": round(float(np.percentile(ms, q)), 3) for q in PERCENTILES}
    out["mean"] = round(float(ms.mean()), 3)
    return out


def _limits(options: BenchOptions, bundle_limits: Limits) -> Limits:
    limits = bundle_limits
    if options.profile is not None:
        other = load_profile(options.profile)
        limits = Limits(
            budget_mib=float(other.device.memory_budget_mib),
            min_headroom=float(other.device.min_headroom),
            max_latency_ms=float(other.backend.max_latency_ms),
            source=f"profile {other.name} ({other.source_files[0] if other.source_files else options.profile})",
        )
    overridden = []
    budget, headroom, latency = limits.budget_mib, limits.min_headroom, limits.max_latency_ms
    if options.budget_mib is not None:
        budget = float(options.budget_mib)
        overridden.append(f"budget {budget:.10g} MiB")
    if options.min_headroom is not None:
        headroom = float(options.min_headroom)
        overridden.append(f"min headroom {headroom:g}")
    if options.max_latency_ms is not None:
        latency = float(options.max_latency_ms)
        overridden.append(f"latency ceiling {latency:.10g} ms")
    source = limits.source + (f", overridden: {', '.join(overridden)}" if overridden else "")
    return Limits(budget, headroom, latency, source)


def _check_options(options: BenchOptions) -> None:
    if options.frames < 1:
        raise UsageError("--frames must be at least 1")
    if options.warmup < 0:
        raise UsageError("--warmup must not be negative")
    if options.budget_mib is not None and not options.budget_mib > 0:
        raise UsageError("--budget-mib must be positive")
    if options.max_latency_ms is not None and not options.max_latency_ms > 0:
        raise UsageError("--max-latency-ms must be positive")
    if options.min_headroom is not None and not 0 <= options.min_headroom < 1:
        raise UsageError("--min-headroom must be in [0, 1)")


def run_bench(options: BenchOptions) -> BenchReport:
    """Run the bundle's pipeline on ``options.frames`` frames (after the warm-up) and measure it.

    Never raises for limits: the report says whether they hold (``passed``, ``raise_if_outside_limits``).
    Startup problems raise the same errors edge-run raises (bundle 3, usage 2, broker refused 7).
    """
    _check_options(options)
    unified = _gpu_reader()[1]
    unified_before = unified() if unified is not None else None
    sampler = RssPeakSampler(_SAMPLE_S, name="bench-rss")
    sampler.start()
    tmp_state: Path | None = None
    tmp_bundle: Path | None = None
    try:
        if Path(options.bundle).is_file():
            # A tarball: extracted once here, so that the run below verifies and opens the same folder.
            tmp_bundle = Path(tempfile.mkdtemp(prefix="edge-bench-bundle-"))
        bundle = load_bundle(Path(options.bundle), tmp_bundle, public_key=options.public_key)
        profile = bundle_profile(bundle)
        camera = pick_camera(profile, options.camera)
        limits = _limits(
            options,
            Limits(
                budget_mib=float(profile.device.memory_budget_mib),
                min_headroom=float(profile.device.min_headroom),
                max_latency_ms=float(profile.backend.max_latency_ms),
                source=f"the bundle's profile {profile.name}",
            ),
        )
        frames = None
        if options.source is None:
            frames = SyntheticSource(camera.width, camera.height, seed=options.seed, camera=camera.name)
        state_dir = options.state_dir
        if options.publish and state_dir is None:
            # Never the service's state directory: its outbox belongs to the running edge-run.
            tmp_state = state_dir = Path(tempfile.mkdtemp(prefix="edge-bench-"))
        timings: list[FrameTiming] = []
        summary: RunSummary = run(
            RunOptions(
                bundle=bundle.root,
                source=options.source,
                frames=frames,
                camera=camera.name,
                state_dir=state_dir,
                max_frames=options.warmup + options.frames,
                metrics_port=0,
                mqtt_host=options.mqtt_host,
                mqtt_port=options.mqtt_port,
                device_id=options.device_id or f"{profile.mqtt_device_id}-bench",
                drain_timeout_s=options.drain_timeout_s,
                every_frame=True,
                publish=options.publish,
                on_frame=timings.append,  # list.append is atomic: the publish thread is the only writer
                handle_signals=options.handle_signals,
                public_key=options.public_key,
            )
        )
    finally:
        peak_rss = sampler.stop()
        for tmp in (tmp_state, tmp_bundle):
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    hwm = vm_hwm_bytes()
    gpu_mib, gpu_source = _gpu_mib(summary.backend, unified_before)
    if len(timings) <= options.warmup:
        raise InputError(
            f"only {len(timings)} frame(s) went through the pipeline, {options.warmup} of them warm-up: "
            f"nothing to measure ({summary.frame_errors} failed, source {summary.source}: {summary.ended_by})",
            hint="use a longer source, or fewer --warmup frames",
        )
    measured = timings[options.warmup :]
    start = timings[options.warmup - 1].done if options.warmup else timings[0].done - timings[0].latency_s
    seconds = max(1e-9, measured[-1].done - start)
    regions = sum(t.regions for t in measured)

    latency = {s: _stats_ms([t.stages[s] for t in measured if s in t.stages]) for s in STAGES}
    latency = {s: v for s, v in latency.items() if any(s in t.stages for t in measured)}
    latency["end_to_end"] = _stats_ms([sum(t.stages.values()) for t in measured])
    latency["end_to_end_saturated"] = _stats_ms([t.latency_s for t in measured])

    peak_rss_mib = max(peak_rss, hwm) / MIB
    peak_mib = peak_rss_mib + (gpu_mib or 0.0)
    headroom = 1.0 - peak_mib / limits.budget_mib
    p95 = latency["end_to_end"]["p95"]
    manifest = bundle.manifest
    variant = manifest.get("variant", {})
    threads_configured = int(profile.backend.threads)
    machine = describe_machine()
    checks = {
        "headroom": {
            "ok": headroom >= limits.min_headroom,
            "value": round(headroom, 4),
            "limit": limits.min_headroom,
            "text": f"headroom {headroom:.1%} (peak {peak_mib:.1f} of {limits.budget_mib:.10g} MiB) "
            f"{'>=' if headroom >= limits.min_headroom else '<'} {limits.min_headroom:.0%}",
        },
        "latency": {
            "ok": p95 <= limits.max_latency_ms,
            "value": p95,
            "limit": limits.max_latency_ms,
            "text": f"p95 end to end {p95:.2f} ms {'<=' if p95 <= limits.max_latency_ms else '>'} "
            f"ceiling {limits.max_latency_ms:.10g} ms",
        },
    }
    predicted = manifest.get("footprint", {}).get("total_mib")
    return BenchReport(
        bundle=str(options.bundle),
        bundle_id=bundle.bundle_id,
        variant=str(variant.get("variant", "")),
        backend=summary.backend,
        precision=str(variant.get("precision", manifest.get("model", {}).get("precision", ""))),
        table_precision=str(variant.get("table_precision", "")),
        input_size=int(manifest.get("model", {}).get("input_size") or variant.get("input_size") or 0),
        threads={
            "configured": threads_configured,
            # onnxruntime's default (0) is one thread per physical core.
            "used": threads_configured or int(machine["cores_physical"]),
        },
        machine=machine,
        source=summary.source,
        published=options.publish,
        frames={
            "measured": len(measured),
            "warmup": options.warmup,
            "read": summary.frames_read,
            "processed": summary.frames_processed,
            "errors": summary.frame_errors,
            "dropped": summary.frames_dropped,
        },
        regions=regions,
        routes=dict(summary.routes),
        latency_ms=latency,
        throughput={
            "fps": round(len(measured) / seconds, 2),
            "regions_per_s": round(regions / seconds, 2),
            "seconds": round(seconds, 3),
        },
        memory={
            "peak_rss_mib": round(peak_rss / MIB, 1),
            "vm_hwm_mib": round(hwm / MIB, 1),
            "gpu_mib": None if gpu_mib is None else round(gpu_mib, 1),
            "gpu_source": gpu_source,
            "peak_mib": round(peak_mib, 1),
            "budget_mib": limits.budget_mib,
            "headroom": round(headroom, 4),
            "min_headroom": limits.min_headroom,
        },
        predicted_footprint_mib=None if predicted is None else round(float(predicted), 1),
        limits=limits,
        checks=checks,
    )
