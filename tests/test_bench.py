"""edge-bench end to end: a real bundle (tiny ONNX model, small demo catalogue), the real pipeline, real limits."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_runtime.bench import BenchOptions, SyntheticSource, run_bench
from edge_runtime.bench.machine import GpuPeakSampler, gpu_memory_mib
from edge_runtime.bundle import MANIFEST
from edge_runtime.cli import bench_main
from edge_runtime.demo import generate_demo_video
from edge_runtime.errors import EXIT_BENCH, EXIT_USAGE
from tests.broker import Collector, Mosquitto
from tests.faultkit import Assets, rebundle

REPO = Path(__file__).resolve().parents[1]
STAGES = ("capture", "regions", "preprocess", "inference", "head", "encode", "publish")
# 1 TiB and a minute per frame: nothing this test machine does can miss them.
GENEROUS = '[device]\nname = "generous"\nmemory_budget_mib = 1048576\n[backend]\nmax_latency_ms = 60000\n'


def _profile(path: Path, body: str) -> Path:
    path.write_text(f'extends = "{REPO / "device_profiles" / "dev-cpu.toml"}"\n' + body)
    return path


@pytest.fixture(scope="module")
def bundle(tiny_assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's bundle (input 96, fp32 only; conftest.py) as a copy whose profile looks at the whole frame of
    a small camera with no source (a bundle.tar.gz beside it, as edge-build writes)."""
    camera = {"name": "demo", "source": "", "width": 320, "height": 240, "fps": 10.0}
    changes = {"device": {"name": "test-bench"}, "regions": {"mode": "full"}, "cameras": [camera]}
    return rebundle(tiny_assets.bundle, tmp_path_factory.mktemp("bench") / "out", profile=changes)


@pytest.fixture
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where edge-run would put its state by default; the bench must leave it untouched."""
    state = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    return state


def test_json_report_and_exit_0_within_generous_limits(
    bundle: Path, tmp_path: Path, isolated_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generous = _profile(tmp_path / "generous.toml", GENEROUS)
    code = bench_main(
        ["--bundle", str(bundle), "--frames", "20", "--warmup", "3", "--json", "-q", "--profile", str(generous)]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["schema"] == "edge.bench/1" and report["passed"] is True
    assert report["backend"] == "onnxruntime-cpu" and report["precision"] == "fp32" and report["input_size"] == 96
    assert report["variant"] == "fp32-96-table-fp32"
    # dev-cpu's threads = 0 is onnxruntime's default: one per physical core.
    assert report["threads"] == {"configured": 0, "used": report["machine"]["cores_physical"]}
    assert report["machine"]["arch"] and report["machine"]["cores_logical"] >= report["machine"]["cores_physical"]
    assert report["frames"]["measured"] == 20 and report["frames"]["read"] == 23 and report["frames"]["errors"] == 0
    assert report["regions"] == 20  # dev-cpu: the whole frame is one region
    assert "synthetic 320x240" in report["source"] and report["published"] is False
    for stage in (*STAGES, "end_to_end", "end_to_end_saturated"):
        row = report["latency_ms"][stage]
        assert 0 <= row["p50"] <= row["p95"] <= row["p99"], stage
    lat = report["latency_ms"]
    assert lat["end_to_end"]["p50"] >= lat["inference"]["p50"]
    # 20 measured frames of one region each over the measured time: the rates follow from the seconds, which are
    # rounded to the millisecond (half a millisecond at the measured rate, plus the rate's own rounding).
    throughput = report["throughput"]
    frames = throughput["fps"] * throughput["seconds"]
    assert frames == pytest.approx(20, abs=throughput["fps"] * 5e-4 + throughput["seconds"] * 5e-3)
    assert throughput["regions_per_s"] == throughput["fps"]
    mem = report["memory"]
    assert mem["peak_rss_mib"] > 30 and mem["vm_hwm_mib"] > 30 and "gpu_mib" in mem
    assert mem["gpu_mib"] in (None, 0.0)  # the CPU backend holds no GPU memory
    assert 0 < mem["anon_mib"] < mem["peak_mib"]  # the unreclaimable part of the resident set
    if mem["charged"] is not None:  # the cgroup's charge, reported beside the budget's quantity
        assert mem["charged"]["current_mib"] > 0 and mem["charged"]["processes"] >= 1
    assert mem["budget_mib"] == 1048576 and mem["headroom"] == pytest.approx(1 - mem["peak_mib"] / 1048576, abs=1e-4)
    # The peak is the larger of the sampled RSS and the kernel's high-water mark, plus the GPU's share (none here).
    peak = max(mem["peak_rss_mib"], mem["vm_hwm_mib"]) + (mem["gpu_mib"] or 0)
    assert mem["peak_mib"] == pytest.approx(peak, abs=0.1)
    assert report["limits"]["source"].startswith("profile generous")
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert report["predicted_footprint_mib"] == round(manifest["footprint"]["total_mib"], 1)  # what edge-build measured
    assert set(report["checks"]) == {"headroom", "latency"}
    assert not isolated_state.exists(), "a bench without --publish must not create an outbox"


def test_exit_6_when_the_budget_is_too_small_for_the_measured_peak(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = bench_main(["--bundle", str(bundle), "--frames", "5", "--warmup", "1", "--budget-mib", "16", "-q"])
    out, err = capsys.readouterr()
    assert code == EXIT_BENCH
    assert "FAIL headroom" in out and "PASS" not in out  # the table is printed whatever the verdict
    assert "edge-bench: error: outside the profile's limits: headroom" in err
    assert "p95 end to end" not in err  # only the broken limit is named
    assert "Traceback" not in err


def test_exit_6_against_another_profiles_latency_ceiling(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tight = _profile(
        tmp_path / "tight.toml",
        '[device]\nname = "tight"\nmemory_budget_mib = 1048576\n[backend]\nmax_latency_ms = 0.001\n',
    )
    code = bench_main(["--bundle", str(bundle), "--frames", "5", "--warmup", "1", "--profile", str(tight), "--json"])
    out, err = capsys.readouterr()
    assert code == EXIT_BENCH
    report = json.loads(out)
    assert report["passed"] is False and report["checks"]["latency"]["ok"] is False
    assert report["checks"]["headroom"]["ok"] is True and report["limits"]["max_latency_ms"] == 0.001
    assert "p95 end to end" in err and "ceiling 0.001 ms" in err


def test_bad_arguments_exit_2(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--bundle", str(bundle), "--frames", "0"]) == EXIT_USAGE
    assert "--frames must be at least 1" in capsys.readouterr().err
    assert bench_main(["--frames", "3"]) == EXIT_USAGE  # --bundle is required


def test_run_bench_on_a_video_file_counts_what_the_file_holds(bundle: Path, tmp_path: Path) -> None:
    video = generate_demo_video(tmp_path / "v.mp4", seed=2, seconds=1.2, fps=10, size=(320, 240))
    report = run_bench(BenchOptions(bundle=bundle, source=str(video), frames=100, warmup=2, budget_mib=1048576))
    # The file ends before 100 frames: what it holds is measured, and said so.
    assert report.frames["read"] == 12 and report.frames["measured"] == 10
    assert report.source == str(video)
    assert report.limits.source.endswith("overridden: budget 1048576 MiB")
    assert sum(report.routes.values()) == 12


def test_run_bench_on_the_tarball(bundle: Path) -> None:
    tarball = bundle.parent / "bundle.tar.gz"
    report = run_bench(BenchOptions(bundle=tarball, frames=3, warmup=1, budget_mib=1048576))
    assert report.bundle == str(tarball) and report.frames["measured"] == 3 and report.passed


def test_synthetic_frames_are_deterministic_and_camera_sized() -> None:
    a, b = SyntheticSource(160, 120, distinct=3, seed=5), SyntheticSource(160, 120, distinct=3, seed=5)
    frames_a = [a.read() for _ in range(4)]
    frames_b = [b.read() for _ in range(4)]
    assert all(f is not None and f.image.shape == (120, 160, 3) for f in frames_a)
    assert all((fa.image == fb.image).all() for fa, fb in zip(frames_a, frames_b, strict=True))  # type: ignore[union-attr]
    assert (frames_a[3].image == frames_a[0].image).all()  # type: ignore[union-attr]  # cycles through 3 renders
    assert [f.index for f in frames_a] == [0, 1, 2, 3]  # type: ignore[union-attr]
    a.close()
    assert a.read() is None


@pytest.mark.integration
def test_publish_sends_through_the_outbox_under_a_bench_device_id(
    bundle: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    broker = mosquitto_factory()
    broker.start()
    collector = Collector(broker.host, broker.port, "edge/#")
    try:
        report = run_bench(
            BenchOptions(
                bundle=bundle,
                frames=6,
                warmup=1,
                publish=True,
                mqtt_host=broker.host,
                mqtt_port=broker.port,
                budget_mib=1048576,
            )
        )
        assert report.published is True
        assert collector.wait_for(lambda ps: sum(p.get("schema") == "edge.results/1" for p in ps) >= 7)
        # The final heartbeat is the last message stored: once it is here, everything else is.
        assert collector.wait_for(lambda ps: any(p.get("schema") == "edge.heartbeat/1" for p in ps))
        payloads = collector.payloads()
    finally:
        collector.close()
    topics = {m.topic for m in collector.messages}
    assert "edge/dev-cpu-0-bench/results" in topics and "edge/dev-cpu-0-bench/status" in topics
    # Warm-up frames are published too: one results message per frame read, every frame once, in the bench's id.
    results = {p["id"]: p for p in payloads if p.get("schema") == "edge.results/1"}
    assert sorted(p["frame_id"] for p in results.values()) == list(range(report.frames["read"])) == list(range(7))
    assert {p["device_id"] for p in payloads if "device_id" in p} == {"dev-cpu-0-bench"}
    objects = {p["id"] for p in payloads if p.get("schema") in ("edge.unknown/1", "edge.verify/1")}
    assert len(objects) == report.routes.get("unknown", 0) + report.routes.get("verify", 0)
    # Publishing stores every message durably (an fsynced outbox write), so that stage ran for every frame.
    assert report.latency_ms["publish"]["p50"] > 0


def test_gpu_memory_is_the_peak_sampled_during_the_run() -> None:
    """Read after the run, the backend is closed and its GPU memory released: the sampler keeps the peak seen
    while it ran. No GPU here: the readers play NVML and nvmap with a run that rises and falls."""
    readings = iter([120.0, 480.0, 300.0, None])
    system = iter([1000.0, 1650.0, 1200.0])

    def per_process() -> float | None:
        return next(readings, None)

    def unified() -> float | None:
        value = next(system, None)
        if value is None:
            raise OSError("nvmap went away")  # a failing reader counts as not exposed
        return value

    sampler = GpuPeakSampler(readers=(per_process, unified))
    for _ in range(5):
        sampler.sample()
    assert sampler.per_process_peak == 480.0 and sampler.unified_peak == 1650.0
    mib, source = gpu_memory_mib("onnxruntime-cuda", 900.0, sampler)
    assert (mib, source) == (480.0, "per process (NVML or nvmap), peak during the run")
    only_system = GpuPeakSampler(readers=(None, lambda: 1650.0))
    only_system.sample()
    assert only_system.per_process_peak is None and only_system.unified_peak == 1650.0
    mib, source = gpu_memory_mib("onnxruntime-tensorrt", 1000.0, only_system)
    if mib is not None and "per process" not in source:  # this host's own per-process reader says nothing
        assert mib == 650.0 and "growth" in source
    assert gpu_memory_mib("onnxruntime-cpu", None, sampler) == (0.0, "CPU backend")
    # A sampler with no reader starts no thread and stops cleanly.
    idle = GpuPeakSampler(readers=(None, None))
    idle.start()
    idle.stop()
    assert idle.per_process_peak is None
