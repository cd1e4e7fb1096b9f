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

from edge_runtime.memory import PeakSampler

MIB = 1024 * 1024


def gpu_reader() -> tuple[Any, Any]:
    """(per-process reader, system-wide reader: the Jetson's nvmap total or NVML's devices' used memory), or
    Nones when this build has no GPU memory module."""
    try:
        from edge_runtime.backends.gpumem import gpu_memory_used_mib, system_gpu_used_mib
    except ImportError:
        return None, None
    return gpu_memory_used_mib, system_gpu_used_mib


class GpuPeakSampler:
    """This process's GPU memory and the system-wide GPU total (nvmap or NVML), each polled while a run goes on
    (``memory.PeakSampler``): read once the run has returned, the backend is closed and its GPU memory
    released, so a figure read then overstates the headroom. ``readers``: (per-process, system-wide), each
    returning MiB or None; ``gpu_reader()`` by default."""

    def __init__(self, interval_s: float = 0.25, readers: tuple[Any, Any] | None = None) -> None:
        per_process, unified = readers if readers is not None else gpu_reader()
        self._samplers = [
            PeakSampler(reader, interval_s, name) if reader is not None else None
            for reader, name in ((per_process, "bench-gpu"), (unified, "bench-nvmap"))
        ]

    @property
    def per_process_peak(self) -> float | None:
        return self._samplers[0].peak if self._samplers[0] is not None else None

    @property
    def unified_peak(self) -> float | None:
        return self._samplers[1].peak if self._samplers[1] is not None else None

    def sample(self) -> None:
        """One reading of each figure."""
        for sampler in self._samplers:
            if sampler is not None:
                sampler.sample()

    def start(self) -> None:
        for sampler in self._samplers:
            if sampler is not None:
                sampler.start()

    def stop(self) -> None:
        for sampler in self._samplers:
            if sampler is not None and sampler.is_alive():
                sampler.halt()


def gpu_memory_mib(
    backend: str, unified_before: float | None, during: GpuPeakSampler | None = None
) -> tuple[float | None, str]:
    """GPU memory this process held, and where the figure comes from; None when the platform does not say.

    ``during``: the peaks sampled while the run went on (preferred: after the run the backend is closed);
    without it, or when it saw nothing, one reading now."""
    per_process, unified = gpu_reader()
    if per_process is None:
        return None, "no GPU memory reader in this build"
    if backend == "onnxruntime-cpu":
        # NVML would answer with other processes' memory: this process holds none.
        return 0.0, "CPU backend"
    if during is not None and during.per_process_peak is not None:
        return during.per_process_peak, "per process (NVML or nvmap), peak during the run"
    value = per_process()
    if value is not None:
        return float(value), "per process (NVML or nvmap), after the run"
    after = during.unified_peak if during is not None and during.unified_peak is not None else None
    if after is None and unified is not None:
        after = unified()
    if unified_before is not None and after is not None:
        # Every process's GPU memory: only this run's in an otherwise idle machine, and labelled as such.
        return max(0.0, float(after) - float(unified_before)), "system-wide growth during the run (peak; nvmap or NVML)"
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
