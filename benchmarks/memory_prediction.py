"""Does edge-build's footprint predict the memory edge-run really uses, in a fresh and a warm environment?

    python benchmarks/memory_prediction.py [--bundle DIR] [--seconds 10] [--repeats 2]

The budget's quantity (``edge_runtime/memory.py`` says why it is this one): the resident high-water mark (VmHWM:
anonymous memory plus the library and model pages the process maps) plus GPU memory. Every figure below is that
quantity unless its name says otherwise.

* **predicted, in the bundle**: ``manifest.json`` ``footprint.total_mib``, what edge-build measured at build time.
* **predicted, edge-build now**: the same measurement repeated with this checkout's footprint child, plus the
  table and queue bytes edge-build adds.
* **edge-run**: the real service on the demo video (every frame, publishing to a local mosquitto), its VmHWM read
  from ``/proc`` while it runs, and the ``memory.peak_mib`` of its last heartbeat (the same quantity, as the
  device reports it); beside them its anonymous part, PSS and, where this script may make a cgroup (root, a
  writable memory hierarchy), what the kernel charged to a cgroup of its own: what systemd's MemoryMax limits.
* **edge-bench --publish**: the benchmark's own ``memory.peak_mib``.

Environments: **fresh** drops the page cache first (``/proc/sys/vm/drop_caches`` as root; otherwise each
library, model and video file is evicted with ``posix_fadvise(DONTNEED)``), as on a device that just booted or a
clone that was just installed; **warm** runs right after the fresh run, everything cached.

Target: edge-run within 10 % of predicted, in both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from _common import REPO, broker, demo_bundle, demo_video, machine_line
from paho.mqtt.enums import CallbackAPIVersion

from edge_runtime.builder.footprint import FRAME_QUEUE_DEPTH, measure_in_subprocess, tensor_queue_bytes
from edge_runtime.bundle import MODEL, load_bundle
from edge_runtime.memory import read_process_memory
from edge_runtime.run.startup import bundle_profile

TARGET = 0.10
MIB = 1024 * 1024


def drop_page_cache(paths: list[Path]) -> str:
    """Evict what a fresh device would not have cached; returns how."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n", encoding="ascii")
        return "drop_caches"
    except OSError:
        pass
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in files:
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
    return "posix_fadvise"


@contextlib.contextmanager
def own_cgroup() -> Iterator[Path | None]:
    """A fresh memory cgroup for one child (v2 or v1's memory controller), None where none can be made."""
    candidates = [Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")]
    for base in candidates:
        if not (base / "cgroup.procs").is_file() or not os.access(base, os.W_OK):
            continue
        if base == Path("/sys/fs/cgroup") and not (base / "cgroup.controllers").is_file():
            continue  # a v1 hierarchy's tmpfs, not a cgroup
        path = base / f"edge-memory-prediction-{os.getpid()}"
        try:
            path.mkdir()
        except OSError:
            continue
        try:
            yield path
        finally:
            for _ in range(50):  # the child has exited; the kernel lets go of the cgroup shortly after
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        return
    yield None


def cgroup_peak_mib(path: Path) -> float | None:
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            return int((path / name).read_text().strip()) / MIB
    return None


def edge_run(bundle: Path, video: Path, port: int, state: Path) -> dict[str, Any]:
    """edge-run on ``video`` to the broker on ``port``: its peak figures, sampled from /proc, and its heartbeats."""
    beats: list[dict[str, Any]] = []
    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"memory-{os.getpid()}")
    sub.on_message = lambda _c, _u, msg: beats.append(json.loads(msg.payload))
    sub.connect("127.0.0.1", port)
    sub.subscribe("#", qos=1)
    sub.loop_start()
    code = "import sys; from edge_runtime.cli import run_main; sys.exit(run_main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "--bundle", str(bundle), "--source", str(video), "--state-dir", str(state)]
    cmd += ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(port), "--metrics-port", "0", "--every-frame"]
    with own_cgroup() as cgroup:

        def enter() -> None:  # in the child, before exec: everything it allocates is charged there
            if cgroup is not None:
                (cgroup / "cgroup.procs").write_text(str(os.getpid()))

        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=enter)
        peak: dict[str, float] = {}
        while proc.poll() is None:
            reading = read_process_memory(proc.pid, shares=True)
            if reading is not None:
                for key in ("hwm_mib", "anon_mib", "file_mib", "pss_mib"):
                    value = getattr(reading, key)
                    if value is not None:
                        peak[key] = max(peak.get(key, 0.0), value)
            time.sleep(0.02)
        err = proc.stderr.read().decode() if proc.stderr else ""
        charged = cgroup_peak_mib(cgroup) if cgroup is not None else None
    time.sleep(0.3)
    sub.loop_stop()
    sub.disconnect()
    if proc.returncode != 0:
        raise RuntimeError(f"edge-run failed ({proc.returncode}): {err.strip()[-400:]}")
    hearts = [b for b in beats if b.get("schema") == "edge.heartbeat/1" and "memory" in b]
    peak["heartbeat_mib"] = max(b["memory"]["peak_mib"] for b in hearts) if hearts else float("nan")
    peak["charged_mib"] = float("nan") if charged is None else charged
    return peak


def bench(bundle: Path, frames: int, port: int) -> float:
    code = "import sys; from edge_runtime.cli import bench_main; sys.exit(bench_main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "--bundle", str(bundle), "--frames", str(frames), "--json", "-q"]
    cmd += ["--publish", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode not in (0, 6):  # 6: outside the limits, still a measurement
        raise RuntimeError(f"edge-bench failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return float(json.loads(proc.stdout)["memory"]["peak_mib"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle (default: the demo bundle, out/demo/bundle)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the demo video edge-run runs on")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    bundle_dir = demo_bundle(args.bundle)
    bundle = load_bundle(bundle_dir)
    profile = bundle_profile(bundle)
    manifest = bundle.manifest
    in_bundle = float(manifest["footprint"]["total_mib"])
    added = float(manifest["footprint"]["total_mib"]) - float(manifest["footprint"]["process_peak_mib"])
    camera = profile.cameras[0]
    size = int(manifest["variant"]["input_size"]) if "input_size" in manifest["variant"] else 224
    video = demo_video(args.seconds, (camera.width, camera.height))
    print(machine_line())
    variant = manifest["variant"]["variant"]
    print(f"bundle {bundle_dir}: {variant}, camera {camera.width}x{camera.height}, video {video.name}")

    now: list[float] = []
    for _ in range(args.repeats):
        m = measure_in_subprocess(
            bundle.path(MODEL),
            backend=str(manifest["measurement"]["backend"]),
            threads=profile.backend.threads,
            frame_bytes=FRAME_QUEUE_DEPTH * camera.width * camera.height * 3,
            runs=10,
            embedding_output=str(manifest.get("backbone", {}).get("embedding_output") or "embedding"),
            tensor_bytes=tensor_queue_bytes(1, size),
            image_input=(str(manifest.get("model", {}).get("input_name", "image")), size),
        )
        now.append(m.peak_rss_mib + m.gpu_mib + added)
    predicted = statistics.median(now)

    import site
    import tempfile

    libraries = [Path(p) for p in site.getsitepackages()] + [bundle_dir, video]
    rows: dict[str, list[dict[str, Any]]] = {"fresh": [], "warm": []}
    how = ""
    with broker() as port:
        if port is None:
            print("mosquitto is not installed: edge-run needs a broker for this measurement")
            return 1
        for _ in range(args.repeats):
            for env in ("fresh", "warm"):
                if env == "fresh":
                    how = drop_page_cache(libraries)
                with tempfile.TemporaryDirectory(prefix="edge-memory-") as state:
                    row = edge_run(bundle_dir, video, port, Path(state))
                row["bench_mib"] = bench(bundle_dir, 100, port)
                rows[env].append(row)

    print(f"fresh = page cache dropped by {how}; {args.repeats} repeats, medians\n")
    print(f"{'figure':<44}{'fresh':>9}{'warm':>9}")
    print(f"{'predicted, in the bundle':<44}{in_bundle:>9.1f}{in_bundle:>9.1f}")
    print(f"{'predicted, edge-build now':<44}{predicted:>9.1f}{predicted:>9.1f}   " + " ".join(f"{x:.1f}" for x in now))
    labels = {
        "hwm_mib": "edge-run: resident peak (VmHWM)",
        "heartbeat_mib": "edge-run: heartbeat memory.peak_mib",
        "anon_mib": "  of it anonymous (RssAnon)",
        "file_mib": "  of it mapped files (RssFile)",
        "pss_mib": "edge-run: PSS",
        "charged_mib": "edge-run: cgroup charge peak (MemoryMax's)",
        "bench_mib": "edge-bench --publish: memory.peak_mib",
    }
    for key, label in labels.items():
        cells = [statistics.median(r[key] for r in rows[env]) for env in ("fresh", "warm")]
        print(f"{label:<44}" + "".join(f"{c:>9.1f}" for c in cells))
    print()
    for env in ("fresh", "warm"):
        measured = statistics.median(r["hwm_mib"] for r in rows[env])
        for name, value in (("edge-build now", predicted), ("in the bundle", in_bundle)):
            gap = measured / value - 1.0
            verdict = "met" if abs(gap) <= TARGET else "MISSED"
            print(f"{env}: edge-run vs predicted {name}: {gap:+.1%} ({verdict}, target within {TARGET:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
