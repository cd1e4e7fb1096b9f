"""Does edge-build's footprint predict the memory edge-run really uses? Predicted against measured, one bundle.

    python benchmarks/memory_prediction.py [--bundle DIR] [--frames 150] [--repeats 2]

* **predicted, in the bundle**: ``manifest.json`` ``footprint.total_mib``, what edge-build measured when the
  bundle was built (with the edge-build of that day).
* **predicted, edge-build now**: the same measurement repeated with this checkout's footprint child
  (``measure_in_subprocess`` with the bundle's model, backend, threads and camera frames) plus the table bytes,
  as edge-build adds them.
* **measured**: ``edge-bench --json`` in a fresh process (the real pipeline, every frame, synthetic camera frames),
  without and with ``--publish`` (durable outbox, paho, a local mosquitto): the peak resident set (VmHWM) plus
  GPU memory where the platform reports it.

Target: measured within 10 % of predicted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from _common import REPO, broker, demo_bundle, machine_line

from edge_runtime.builder.footprint import measure_in_subprocess
from edge_runtime.bundle import MODEL, load_bundle
from edge_runtime.run.startup import bundle_profile

FRAME_QUEUE_DEPTH = 4  # edge-build's count of queued camera frames
TARGET = 0.10


def bench(bundle: Path, frames: int, port: int | None) -> dict[str, Any]:
    code = "import sys; from edge_runtime.cli import bench_main; sys.exit(bench_main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "--bundle", str(bundle), "--frames", str(frames), "--json", "-q"]
    if port is not None:
        cmd += ["--publish", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode not in (0, 6):  # 6: outside the limits, still a measurement
        raise RuntimeError(f"edge-bench failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return json.loads(proc.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle (default: the demo bundle, out/demo/bundle)")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    bundle_dir = demo_bundle(args.bundle)
    bundle = load_bundle(bundle_dir)
    profile = bundle_profile(bundle)
    manifest = bundle.manifest
    footprint = manifest["footprint"]
    in_bundle = float(footprint["total_mib"])
    table_mib = float(manifest["variant"]["footprint"]["table_mib"])
    camera = profile.cameras[0]
    print(machine_line())
    print(
        f"bundle {bundle_dir}: {manifest['variant']['variant']}, camera {camera.width}x{camera.height}, "
        f"threads {profile.backend.threads}; {args.frames} frames per edge-bench run, {args.repeats} repeats"
    )

    now: list[float] = []
    for _ in range(args.repeats):
        m = measure_in_subprocess(
            bundle.path(MODEL),
            backend=str(manifest["measurement"]["backend"]),
            threads=profile.backend.threads,
            frame_bytes=FRAME_QUEUE_DEPTH * camera.width * camera.height * 3,
            runs=10,
            embedding_output=profile.backend.embedding_output,
        )
        now.append(m.peak_rss_mib + table_mib + m.gpu_mib)
    measured: dict[str, list[float]] = {"edge-bench": [], "edge-bench --publish": []}
    with broker() as port:
        for _ in range(args.repeats):
            measured["edge-bench"].append(bench(bundle_dir, args.frames, None)["memory"]["peak_mib"])
            if port is not None:
                measured["edge-bench --publish"].append(bench(bundle_dir, args.frames, port)["memory"]["peak_mib"])
    if not measured["edge-bench --publish"]:
        print("mosquitto not installed: the --publish measurement is skipped")
        del measured["edge-bench --publish"]

    predicted_now = statistics.median(now)
    print(f"\n{'figure':<34}{'MiB':>8}   runs")
    print(f"{'predicted, in the bundle':<34}{in_bundle:>8.1f}   (built {manifest.get('created', '?')})")
    print(f"{'predicted, edge-build now':<34}{predicted_now:>8.1f}   " + " ".join(f"{x:.1f}" for x in now))
    for name, values in measured.items():
        print(f"{'measured, ' + name:<34}{statistics.median(values):>8.1f}   " + " ".join(f"{x:.1f}" for x in values))
    print()
    for name, values in measured.items():
        peak = statistics.median(values)
        for label, predicted in (("in the bundle", in_bundle), ("edge-build now", predicted_now)):
            gap = peak / predicted - 1.0
            verdict = "met" if abs(gap) <= TARGET else "MISSED"
            print(f"{name} vs predicted {label}: {gap:+.1%} ({verdict}, target within {TARGET:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
