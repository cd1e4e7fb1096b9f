"""The machine a bench ran on, and the GPU memory it reports: what tells two bench results apart.

Its own room because it only asks the platform (``/proc``, psutil, onnxruntime, NVML or nvmap) and measures
nothing itself; ``benchmarks/`` use ``describe_machine`` too.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import psutil

MIB = 1024 * 1024


def gpu_reader() -> tuple[Any, Any]:
    """(per-process reader, Jetson system-wide reader), or Nones when this build has no GPU memory module."""
    try:
        from edge_runtime.backends.gpumem import gpu_memory_used_mib, unified_memory_used_mib
    except ImportError:
        return None, None
    return gpu_memory_used_mib, unified_memory_used_mib


def gpu_memory_mib(backend: str, unified_before: float | None) -> tuple[float | None, str]:
    """GPU memory this process holds, and where the figure comes from; None when the platform does not say."""
    per_process, unified = gpu_reader()
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
