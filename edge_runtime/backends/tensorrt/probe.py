"""Is native TensorRT usable here? Probed once per process in a fresh interpreter, never in this one.

The probe checks, in order: ``tensorrt`` imports, it has a builder and an ONNX parser (not a lean or dispatch
runtime only), a CUDA binding (cuda-python or pycuda) imports, and a CUDA device answers. The first stage that
fails gives the reason the ``tensorrt`` backend is unavailable, with what to install.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 60.0  # the first CUDA initialisation on a Jetson can take several seconds

TRT_INSTALL_HINT = (
    "pip install edge_runtime[tensorrt] on a JetPack image; JetPack's TensorRT is the apt package "
    "python3-libnvinfer, visible from a venv created with --system-site-packages"
)
CUDA_BINDING_HINT = "pip install cuda-python (in edge_runtime[tensorrt]), or provide pycuda"

# Runs in a fresh interpreter: TensorRT's lean runtime wheels import without a GPU but can crash the interpreter
# at teardown, so the child prints one JSON line and leaves with os._exit, and the parent survives anything.
_PROBE_SCRIPT = r"""
import json, os, sys

def done(**out):
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)

try:
    import tensorrt as trt
except ModuleNotFoundError as exc:
    done(stage="import", missing=True, error=str(exc))
except Exception as exc:
    done(stage="import", missing=False, error=f"{type(exc).__name__}: {exc}")
info = {"trt_version": str(getattr(trt, "__version__", "unknown"))}
if not (hasattr(trt, "Builder") and hasattr(trt, "OnnxParser")):
    done(stage="builder", **info)
cudart = None
for name in ("cuda.bindings.runtime", "cuda.cudart"):
    try:
        cudart = __import__(name, fromlist=["_"])
        break
    except Exception:
        pass
try:
    if cudart is not None:
        info["cuda"] = "cuda-python"
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0:
            done(stage="device", error=cudart.cudaGetErrorName(err)[1].decode(), **info)
        if count < 1:
            done(stage="device", error="cudaGetDeviceCount returned 0", **info)
        err, prop = cudart.cudaGetDeviceProperties(0)
        if int(err) != 0:
            done(stage="device", error=cudart.cudaGetErrorName(err)[1].decode(), **info)
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        done(stage="ok", devices=int(count), gpu_name=name.rstrip("\x00").strip(),
             compute_capability=f"{prop.major}.{prop.minor}", **info)
    try:
        import pycuda.driver as drv
    except Exception as exc:
        done(stage="binding", error=f"{type(exc).__name__}: {exc}", **info)
    info["cuda"] = "pycuda"
    drv.init()
    count = drv.Device.count()
    if count < 1:
        done(stage="device", error="no CUDA device", **info)
    dev = drv.Device(0)
    done(stage="ok", devices=int(count), gpu_name=dev.name(),
         compute_capability="%d.%d" % dev.compute_capability(), **info)
except Exception as exc:
    done(stage="device", error=f"{type(exc).__name__}: {exc}", **info)
"""


@dataclass(frozen=True)
class ProbeResult:
    """What the probe subprocess found; ``reason`` is None when the native backend can run here."""

    reason: str | None
    trt_version: str | None = None
    cuda_binding: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None


def run_probe(code: str = _PROBE_SCRIPT, timeout_s: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Run a probe script in a fresh interpreter and interpret its last JSON line (no caching)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(f"the TensorRT probe did not finish within {timeout_s:g} s (a hung GPU driver?)")
    except OSError as exc:
        return ProbeResult(f"the TensorRT probe could not start ({exc})")
    data: dict[str, Any] | None = None
    for line in reversed(proc.stdout.splitlines()):
        with contextlib.suppress(ValueError):
            candidate = json.loads(line)
            if isinstance(candidate, dict):
                data = candidate
                break
    if data is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return ProbeResult(f"the TensorRT probe process failed (exit code {proc.returncode}: {tail})")
    return _interpret(data)


def _interpret(data: dict[str, Any]) -> ProbeResult:
    stage = data.get("stage")
    version = data.get("trt_version")
    error = data.get("error", "")
    if stage == "ok":
        return ProbeResult(None, version, data.get("cuda"), data.get("gpu_name"), data.get("compute_capability"))
    if stage == "import":
        if data.get("missing"):
            return ProbeResult(f"tensorrt is not installed ({TRT_INSTALL_HINT})")
        return ProbeResult(f"tensorrt cannot be imported ({error}); {TRT_INSTALL_HINT}")
    if stage == "builder":
        return ProbeResult(
            f"this TensorRT ({version}) has no builder or ONNX parser (a lean or dispatch runtime only), "
            "so engines cannot be built on this device",
            version,
        )
    if stage == "binding":
        return ProbeResult(f"neither cuda-python nor pycuda is installed ({CUDA_BINDING_HINT})", version)
    return ProbeResult(f"no CUDA device ({error})", version, data.get("cuda"))


_probe_lock = threading.Lock()
_probe_cache: ProbeResult | None = None


def probe_info(*, refresh: bool = False) -> ProbeResult:
    """The probe's result, run once per process (``refresh`` runs it again)."""
    global _probe_cache
    with _probe_lock:
        if _probe_cache is None or refresh:
            _probe_cache = run_probe()
            if _probe_cache.reason is None:
                log.info(
                    "TensorRT %s usable: %s (sm %s) via %s",
                    _probe_cache.trt_version,
                    _probe_cache.gpu_name,
                    _probe_cache.compute_capability,
                    _probe_cache.cuda_binding,
                )
        return _probe_cache


def tensorrt_probe() -> str | None:
    """None when the native TensorRT backend can run here, else why not (probed in a subprocess, cached)."""
    return probe_info().reason
