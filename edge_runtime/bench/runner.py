"""``run_bench``: one bench run, from the bundle to the report (the flow; the parts are its siblings).

Its own room because it is the one place the bench starts things: it opens the bundle, picks the camera and the
limits, runs ``run.pipeline.run`` with a timing callback, samples memory meanwhile and turns the timings into the
report's percentiles and checks.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.bench.machine import MIB, GpuPeakSampler, describe_machine, gpu_memory_mib, gpu_reader
from edge_runtime.bench.report import BenchReport, Limits
from edge_runtime.bench.synthetic import SyntheticSource
from edge_runtime.bundle import load_bundle
from edge_runtime.errors import InputError, UsageError
from edge_runtime.memory import RssPeakSampler, read_cgroup_charge, read_process_memory, vm_hwm_bytes
from edge_runtime.profile import load_profile
from edge_runtime.run.metrics import STAGES
from edge_runtime.run.pipeline import RunOptions, RunSummary, run
from edge_runtime.run.stages import FrameTiming
from edge_runtime.run.startup import bundle_profile, pick_camera

PERCENTILES = (50, 95, 99)
# The RSS sampler's period. Where the kernel keeps the peak itself (VmHWM, read after the run), sampling only
# cross-checks it, and a 5 ms poll cost the measured loop about 1 CPU-ms per frame on 2 cores (publish_ratio.py).
_SAMPLE_S = 0.005
_SAMPLE_WITH_HWM_S = 0.05


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
    engine_dir: Path | None = None  # GPU engines: None = the device's shared folder, the engines edge-run runs
    drain_timeout_s: float = 10.0
    public_key: Path | None = None  # as edge-run's --public-key: only a bundle signed for this device is run
    seed: int = 0
    handle_signals: bool = False
    # Called by the publish thread after each frame's messages are stored, warm-up included (benchmarks/ use it
    # to read CPU figures at the edges of the measured window).
    on_frame: Callable[[FrameTiming], None] | None = None


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
    unified = gpu_reader()[1]
    unified_before = unified() if unified is not None else None
    sampler = RssPeakSampler(_SAMPLE_WITH_HWM_S if vm_hwm_bytes() else _SAMPLE_S, name="bench-rss")
    sampler.start()
    gpu_sampler = GpuPeakSampler()
    gpu_sampler.start()
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
        hook = options.on_frame

        def on_frame(timing: FrameTiming) -> None:
            timings.append(timing)  # list.append is atomic: the publish thread is the only writer
            if hook is not None:
                hook(timing)

        summary: RunSummary = run(
            RunOptions(
                bundle=bundle.root,
                source=options.source,
                frames=frames,
                camera=camera.name,
                state_dir=state_dir,
                engine_dir=options.engine_dir,
                max_frames=options.warmup + options.frames,
                metrics_port=0,
                mqtt_host=options.mqtt_host,
                mqtt_port=options.mqtt_port,
                device_id=options.device_id or f"{profile.mqtt_device_id}-bench",
                drain_timeout_s=options.drain_timeout_s,
                every_frame=True,
                publish=options.publish,
                on_frame=on_frame if hook is not None else timings.append,
                handle_signals=options.handle_signals,
                public_key=options.public_key,
            )
        )
    finally:
        peak_rss = sampler.stop()
        gpu_sampler.stop()
        for tmp in (tmp_state, tmp_bundle):
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    hwm = vm_hwm_bytes()
    # Beside the budget's quantity: what of it is anonymous, and what the kernel charged the cgroup (under
    # edge-bench.service, MemoryMax's view; memory.py says why the budget is not that figure).
    reading, charged = read_process_memory(), read_cgroup_charge()
    gpu_mib, gpu_source = gpu_memory_mib(summary.backend, unified_before, gpu_sampler)
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
            "anon_mib": None if reading is None else round(reading.anon_mib, 1),
            "charged": None if charged is None else charged.as_dict(),
            "budget_mib": limits.budget_mib,
            "headroom": round(headroom, 4),
            "min_headroom": limits.min_headroom,
        },
        predicted_footprint_mib=None if predicted is None else round(float(predicted), 1),
        limits=limits,
        checks=checks,
    )
