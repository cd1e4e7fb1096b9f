"""Does the work around inference fit beside it? edge-bench with one inference thread against bare onnxruntime.

    python benchmarks/publish_ratio.py [--bundle DIR] [--frames 400] [--warmup 20] [--repeats 5]

A GPU device runs inference off the CPU; what it needs from the loop is that capture, preprocessing, encoding and
durable publishing fit beside it. On a CPU host the same question is asked with ``[backend] threads = 1``: one core
does inference, and the loop should run at >= 0.90 of bare onnxruntime on one thread, on the same model.

Side by side in one run, each in a fresh process, in turn, ``--repeats`` times (medians reported):

* **bare**: an onnxruntime session on the bundle's model with one intra-op thread (the session options edge-run's
  backend uses), ``run`` on tensors prepared beforehand from the bench's synthetic frames.
* **bench --publish**: ``edge-bench --publish`` (``bench.runner.run_bench``) on its default synthetic frames, every
  message stored in the durable outbox and delivered at QoS 1 to a local mosquitto started here.
* **bench**: the same without ``--publish`` (messages built and serialised, then dropped).

The bundle defaults to the demo bundle's model rebuilt with ``[backend] threads = 1`` (fp32, input 224, frozen
backbone; made once under ``.cache/bench/threads1``). Besides frames per second, each bench run reports its mean
milliseconds per stage and the CPU milliseconds per frame spent by each thread (``/proc/self/task/*/stat``, read
over the measured window): the inference thread should hold one core; everything else shares the other.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _common import CACHE, REPO, broker, machine_line

HOST = "127.0.0.1"
THREADS1 = CACHE / "bench" / "threads1"
PROFILE = """\
# The demo bundle's model and head settings with one inference thread (benchmarks/publish_ratio.py).
extends = "dev-cpu"
[device]
name = "dev-cpu-threads1"
[backend]
threads = 1
precisions = ["fp32"]
input_sizes = [224]
[train]
enabled = false
"""
_TICK = os.sysconf("SC_CLK_TCK")
# Thread name prefix -> the role reported (the publisher's threads carry the device id in their names).
_ROLES = (("mqtt-sender", "mqtt sender"), ("paho-mqtt", "paho network"), ("Thread-", "other (Python)"))


def threads1_bundle(path: Path | None) -> Path:
    """The given bundle, or the threads = 1 demo bundle (built by edge-build when missing)."""
    if path is not None:
        return path
    bundle = THREADS1 / "out" / "bundle"
    if not (bundle / "manifest.json").is_file():
        THREADS1.mkdir(parents=True, exist_ok=True)
        profile = THREADS1 / "profile.toml"
        profile.write_text(PROFILE)
        print(f"building the threads = 1 bundle at {bundle} (edge-build, a few minutes)", flush=True)
        code = "import sys; from edge_runtime.cli import build_main; sys.exit(build_main(sys.argv[1:]))"
        cmd = [sys.executable, "-c", code, "--profile", str(profile), "--out", str(bundle.parent), "-q"]
        subprocess.run(cmd, check=True, cwd=REPO)
    return bundle


# --------------------------------------------------------------------------- children (fresh processes)


class ThreadCpu:
    """CPU seconds per thread of this process, read from /proc every ``interval`` s (threads that ended keep their
    last reading), labelled by their Python thread names."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.cpu: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thread-cpu", daemon=True)

    def read(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for task in Path("/proc/self/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
        return out

    def sample(self) -> None:
        self.cpu.update(self.read())
        for t in threading.enumerate():
            if t.native_id is not None:
                self.names[t.native_id] = t.name

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def snapshot(self) -> dict[str, float]:
        """CPU seconds by thread role (the name's prefix: mqtt-sender-x -> mqtt-sender)."""
        self.sample()
        out: dict[str, float] = {}
        for tid, seconds in self.cpu.items():
            name = self.names.get(tid, "other (onnxruntime, OpenCV)")
            role = next((r for p, r in _ROLES if name.startswith(p)), name)
            out[role] = out.get(role, 0.0) + seconds
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def child_bare(bundle: Path, frames: int, warmup: int) -> dict[str, Any]:
    """Frames per second of one-thread onnxruntime on the bundle's model and the bench's synthetic frames."""
    import numpy as np
    import onnxruntime as ort

    from edge_runtime.backends.onnxruntime import session_options
    from edge_runtime.bench.synthetic import SyntheticSource
    from edge_runtime.bundle import MODEL, load_bundle
    from edge_runtime.preprocess import prepare_batch
    from edge_runtime.run.startup import bundle_profile, manifest_image_input, pick_camera

    loaded = load_bundle(bundle)
    profile = bundle_profile(loaded)
    camera = pick_camera(profile, None)
    name, size = manifest_image_input(loaded.manifest) or ("image", 224)
    output = str(loaded.manifest.get("backbone", {}).get("embedding_output") or "embedding")
    session = ort.InferenceSession(
        str(loaded.path(MODEL)), sess_options=session_options(1), providers=["CPUExecutionProvider"]
    )
    outputs = [o.name for o in session.get_outputs()]
    fetch = [output if output in outputs else ("embedding_multi" if "embedding_multi" in outputs else "embedding")]
    source = SyntheticSource(camera.width, camera.height)
    tensors = []
    for _ in range(8):
        frame = source.read()
        assert frame is not None
        tensors.append(np.ascontiguousarray(prepare_batch([frame.image], size)))
    source.close()
    for i in range(warmup):
        session.run(fetch, {name: tensors[i % len(tensors)]})
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(frames):
        session.run(fetch, {name: tensors[i % len(tensors)]})
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"fps": frames / elapsed, "cpu_ms": cpu / frames * 1000.0, "embed_ms": elapsed / frames * 1000.0}


def child_bench(bundle: Path, frames: int, warmup: int, port: int | None) -> dict[str, Any]:
    """edge-bench (``run_bench``, what the CLI runs), with per-thread CPU over the measured frames."""
    from edge_runtime.bench.runner import BenchOptions, run_bench
    from edge_runtime.run.stages import FrameTiming

    cpu = ThreadCpu()
    marks: list[dict[str, float]] = []
    seen = 0

    def on_frame(timing: FrameTiming) -> None:
        nonlocal seen
        seen += 1
        if seen in (warmup, warmup + frames):
            marks.append(cpu.snapshot())

    cpu.start()
    try:
        report = run_bench(
            BenchOptions(
                bundle=bundle,
                frames=frames,
                warmup=warmup,
                publish=port is not None,
                mqtt_host=HOST,
                mqtt_port=port,
                drain_timeout_s=60.0,
                on_frame=on_frame,
            )
        )
    finally:
        cpu.stop()
    data = report.as_dict()
    out: dict[str, Any] = {
        "fps": data["throughput"]["fps"],
        "stages_ms": {k: v["mean"] for k, v in data["latency_ms"].items() if not k.startswith("end_to_end")},
    }
    if len(marks) == 2:
        out["thread_cpu_ms"] = {
            k: (marks[1].get(k, 0.0) - marks[0].get(k, 0.0)) / frames * 1000.0 for k in marks[1] if k != "thread-cpu"
        }
    return out


def child_main(argv: list[str]) -> int:
    kind, bundle, frames, warmup, port = argv
    n, w = int(frames), int(warmup)
    if kind == "bare":
        out = child_bare(Path(bundle), n, w)
    else:
        out = child_bench(Path(bundle), n, w, int(port) if kind == "publish" else None)
    print("RESULT " + json.dumps(out))
    return 0


def in_child(kind: str, bundle: Path, frames: int, warmup: int, port: int | None, tree: Path = REPO) -> dict[str, Any]:
    """One run in a fresh process, with the code of the checkout ``tree`` (this one by default)."""
    script = tree / "benchmarks" / Path(__file__).name
    cmd = [sys.executable, str(script), "--child", kind, str(bundle), str(frames), str(warmup), str(port or 0)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"{kind} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


# --------------------------------------------------------------------------- the report

KINDS = ("bare", "publish", "bench")
LABELS = {"bare": "bare onnxruntime, 1 thread", "publish": "edge-bench --publish", "bench": "edge-bench"}


def _table(runs: dict[str, list[dict[str, Any]]], title: str) -> None:
    print(f"\n{title}")
    med = {k: statistics.median(r["fps"] for r in v) for k, v in runs.items()}
    print(f"{'loop':<30}{'fps (median)':>13}{'x bare':>8}   runs (fps; ratio to that repeat's bare)")
    for k in KINDS:
        fps = [r["fps"] for r in runs[k]]
        ratios = [r["fps"] / b["fps"] for r, b in zip(runs[k], runs["bare"], strict=True)]
        per_run = " ".join(f"{f:.1f}" for f in fps)
        print(
            f"{LABELS[k]:<30}{med[k]:>13.1f}{med[k] / med['bare']:>8.2f}   {per_run}; "
            + " ".join(f"{x:.2f}" for x in ratios)
        )
    print(
        f"bare embed {statistics.median(r['embed_ms'] for r in runs['bare']):.2f} ms, "
        f"CPU {statistics.median(r['cpu_ms'] for r in runs['bare']):.2f} ms per frame"
    )
    for k in ("publish", "bench"):
        stages = runs[k][0]["stages_ms"]
        line = ", ".join(f"{s} {statistics.median(r['stages_ms'].get(s, 0.0) for r in runs[k]):.2f}" for s in stages)
        print(f"{LABELS[k]}: mean ms per stage: {line}")
        cpu_runs = [r["thread_cpu_ms"] for r in runs[k] if "thread_cpu_ms" in r]
        if cpu_runs:
            roles = sorted({role for r in cpu_runs for role in r}, key=lambda x: -cpu_runs[0].get(x, 0.0))
            cells = {role: statistics.median(r.get(role, 0.0) for r in cpu_runs) for role in roles}
            total = sum(cells.values())
            outside = total - cells.get("inference", 0.0)
            print(
                f"{'':<2}CPU ms per frame by thread: "
                + ", ".join(f"{role} {v:.2f}" for role, v in cells.items() if v >= 0.005)
                + f"; all {total:.2f}, outside the inference thread {outside:.2f}"
            )
    ratio = med["publish"] / med["bare"]
    print(
        f"edge-bench --publish / bare = {ratio:.2f} (target >= 0.90: {'met' if ratio >= 0.9 else 'MISSED'}); "
        f"without --publish {med['bench'] / med['bare']:.2f}"
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle (default: the demo model with [backend] threads = 1)")
    parser.add_argument("--frames", type=int, default=400, help="measured frames per run (default 400)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--before",
        type=Path,
        help="another checkout of this repository (an earlier commit): its edge-bench runs are interleaved with "
        "this checkout's, against the same bare runs, and reported as a second table",
    )
    args = parser.parse_args()
    bundle = threads1_bundle(args.bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    profile = json.loads((bundle / "profile.json").read_text())
    print(machine_line())
    print(
        f"bundle {bundle} ({manifest['variant']['variant']}, backend threads {profile['backend']['threads']}); "
        f"{args.frames} frames after {args.warmup} warm-up, {args.repeats} repeats, each run a fresh process"
    )
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    before: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    with broker() as port:
        if port is None:
            print("mosquitto not installed (make sysdeps): nothing to measure")
            return 0
        for i in range(args.repeats):
            for kind in KINDS:
                runs[kind].append(in_child(kind, bundle, args.frames, args.warmup, port))
            line = ", ".join(f"{k} {runs[k][-1]['fps']:.1f} fps" for k in KINDS)
            if args.before is not None:
                before["bare"].append(runs["bare"][-1])
                for kind in KINDS[1:]:
                    before[kind].append(in_child(kind, bundle, args.frames, args.warmup, port, args.before))
                line += "; before: " + ", ".join(f"{k} {before[k][-1]['fps']:.1f} fps" for k in KINDS[1:])
            print(f"  repeat {i + 1}: {line}", flush=True)
    _table(runs, f"this checkout ({REPO.name})")
    if args.before is not None:
        _table(before, f"before: {args.before}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
