"""How much memory the GPU holds for a process: NVML on discrete GPUs, nvmap and /proc/meminfo on a Jetson.

No new dependency: NVML is read through ctypes from the driver's ``libnvidia-ml.so.1``. On this kind of machine
(no NVIDIA driver) every reader returns None.

Where GPU memory shows up, and why the footprint adds it to the peak RSS without counting it twice:

- Discrete GPU: device memory (VRAM) is not part of the process's resident set. NVML reports it per process
  (``nvmlDeviceGetComputeRunningProcesses``, which includes the CUDA context).
- Jetson (unified memory): CPU and GPU share the DRAM, but buffers the GPU allocates (``cudaMalloc``, TensorRT
  engines and workspace, the CUDA EP arena) come from the nvmap allocator and are accounted by nvmap, not in the
  process's page tables, so they are *not* in its RSS either. ``NvMapMemUsed`` in ``/proc/meminfo`` counts them
  for the whole system; nvmap's debugfs (``/sys/kernel/debug/nvmap/iovmm/clients``, root only) per process.
  Either way they take from the same budget as the RSS, so they are added. Pinned host buffers mapped for both
  CPU and GPU may appear in both figures: a small, conservative over-count.
  (To check on a device: load a large engine and compare the process RSS with the NvMapMemUsed delta.)

NVML's Jetson support differs by JetPack release; where it has no per-process figures the nvmap readers are used.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MIB = 1024 * 1024
_ROOT = Path("/")

# --------------------------------------------------------------------------- Jetson detection and parsers


def is_jetson(root: Path = _ROOT) -> bool:
    """A Jetson (L4T): /etc/nv_tegra_release exists or the device-tree model names an NVIDIA Jetson."""
    if (root / "etc" / "nv_tegra_release").is_file():
        return True
    try:
        model = (root / "proc" / "device-tree" / "model").read_bytes().decode("utf-8", "replace")
    except OSError:
        return False
    return "nvidia jetson" in model.replace("\x00", "").lower()


_MEMINFO_LINE = re.compile(r"^(\w+):\s+(\d+)\s*kB$", re.IGNORECASE)


def parse_meminfo(text: str) -> dict[str, float]:
    """``/proc/meminfo`` as {field: MiB}: MemTotal, MemAvailable, ... and on a Jetson NvMapMemUsed/NvMapMemFree.

    Only the fields given in kB; counts such as HugePages_Total are left out.
    """
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _MEMINFO_LINE.match(line.strip())
        if m:
            out[m.group(1)] = int(m.group(2)) / 1024.0
    return out


_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?(\d+))?")


def parse_tegrastats(line: str) -> dict[str, float]:
    """One ``tegrastats`` line -> ram_used_mb, ram_total_mb, and where present swap_used_mb, swap_total_mb,
    gr3d_freq_pct (GPU load) and gr3d_mhz (GPU clock). ValueError when the line has no RAM field. tegrastats
    prints no nvmap figure: GPU allocations come from ``unified_memory_used_mib`` (/proc/meminfo or debugfs).

    Handles the formats of JetPack 4 (``GR3D_FREQ 0%@76``), 5 (``GR3D_FREQ 0%@[305,305]``) and 6 (``GR3D_FREQ 0%``).
    """
    ram = _RAM.search(line)
    if ram is None:
        raise ValueError(f"not a tegrastats line (no 'RAM used/totalMB'): {line[:80]!r}")
    out: dict[str, float] = {"ram_used_mb": float(ram.group(1)), "ram_total_mb": float(ram.group(2))}
    swap = _SWAP.search(line)
    if swap:
        out.update(swap_used_mb=float(swap.group(1)), swap_total_mb=float(swap.group(2)))
    gr3d = _GR3D.search(line)
    if gr3d:
        out["gr3d_freq_pct"] = float(gr3d.group(1))
        if gr3d.group(2) is not None:
            out["gr3d_mhz"] = float(gr3d.group(2))
    return out


_SIZE = re.compile(r"^(\d+)([KMG]?)B?$", re.IGNORECASE)
_UNIT = {"": 1, "K": 1024, "M": MIB, "G": 1024 * MIB}


def parse_nvmap_clients(text: str, pid: int) -> float | None:
    """MiB the nvmap clients of ``pid`` hold, from ``/sys/kernel/debug/nvmap/iovmm/clients``
    (columns CLIENT PROCESS PID SIZE, sizes like ``123456K``); None when the process is not listed.

    Not listed is not "holds nothing": the table can lag a process that just opened the GPU, and a 0.0 here
    would win over the system-wide nvmap growth that ``footprint_gpu_mib`` falls back to."""
    total, listed = 0, False
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 4 or not cols[-2].isdigit() or int(cols[-2]) != pid:
            continue
        size = _SIZE.match(cols[-1])
        if size:
            listed = True
            total += int(size.group(1)) * _UNIT[size.group(2).upper()]
    return total / MIB if listed else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def parse_nvmap_total(text: str) -> float | None:
    """MiB all nvmap clients hold together, from ``iovmm/clients`` (its ``total`` line where it has one, else the
    sum of the client rows); None when the text has neither."""
    rows, total = 0, None
    for line in text.splitlines():
        cols = line.split()
        if not cols:
            continue
        size = _SIZE.match(cols[-1])
        if size is None:
            continue
        value = int(size.group(1)) * _UNIT[size.group(2).upper()]
        if cols[0].lower() == "total":
            total = value
        elif len(cols) >= 4 and cols[-2].isdigit():
            rows += value
    if total is not None:
        return total / MIB
    return rows / MIB if rows else None


def unified_memory_used_mib(root: Path = _ROOT) -> float | None:
    """On a Jetson, the system-wide nvmap (GPU-side) allocation in MiB: /proc/meminfo's NvMapMemUsed, or where a
    kernel has no such field, the total of nvmap's ``iovmm/clients`` table (debugfs, root only).

    System-wide, not per process: take a difference around what you measure. None elsewhere or when absent.
    """
    if not is_jetson(root):
        return None
    text = _read(root / "proc" / "meminfo")
    used = None if text is None else parse_meminfo(text).get("NvMapMemUsed")
    if used is not None:
        return used
    clients = _read(root / "sys" / "kernel" / "debug" / "nvmap" / "iovmm" / "clients")
    return None if clients is None else parse_nvmap_total(clients)


def jetson_memory(root: Path = _ROOT) -> dict[str, float] | None:
    """On a Jetson: total, available and nvmap-used memory (MiB) of the shared DRAM; None elsewhere."""
    if not is_jetson(root):
        return None
    text = _read(root / "proc" / "meminfo")
    if text is None:
        return None
    info = parse_meminfo(text)
    keys = {"MemTotal": "total_mib", "MemAvailable": "available_mib", "NvMapMemUsed": "nvmap_used_mib"}
    return {new: info[old] for old, new in keys.items() if old in info}


# --------------------------------------------------------------------------- NVML through ctypes

_NVML_SUCCESS = 0
_NVML_ERROR_INSUFFICIENT_SIZE = 7
_NVML_ERROR_FUNCTION_NOT_FOUND = 13
_NVML_VALUE_NOT_AVAILABLE = 2**64 - 1


class _ProcessInfoV1(ctypes.Structure):  # nvmlDeviceGetComputeRunningProcesses (unversioned)
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


class _ProcessInfoV2(ctypes.Structure):  # the _v2 and _v3 entry points (nvmlProcessInfo_v2_t / nvmlProcessInfo_t)
    _fields_ = [
        ("pid", ctypes.c_uint),
        ("usedGpuMemory", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
    ]


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def _load_nvml() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None


def _fn(lib: ctypes.CDLL, *names: str) -> tuple[str, object] | None:
    for name in names:
        fn = getattr(lib, name, None)
        if fn is not None:
            return name, fn
    return None


def _processes(lib: ctypes.CDLL, handle: ctypes.c_void_p) -> list[tuple[int, int]] | None:
    """(pid, used bytes) of the compute processes on a device; None when NVML cannot list them."""
    for name, struct in (
        ("nvmlDeviceGetComputeRunningProcesses_v3", _ProcessInfoV2),
        ("nvmlDeviceGetComputeRunningProcesses_v2", _ProcessInfoV2),
        ("nvmlDeviceGetComputeRunningProcesses", _ProcessInfoV1),
    ):
        fn = getattr(lib, name, None)
        if fn is None:
            continue
        count = ctypes.c_uint(0)
        rc = fn(handle, ctypes.byref(count), None)
        if rc == _NVML_SUCCESS:
            return []
        if rc == _NVML_ERROR_FUNCTION_NOT_FOUND:
            continue
        if rc != _NVML_ERROR_INSUFFICIENT_SIZE:
            return None
        for _ in range(3):  # the list can grow between the calls
            capacity = count.value + 8
            infos = (struct * capacity)()
            count = ctypes.c_uint(capacity)
            rc = fn(handle, ctypes.byref(count), infos)
            if rc == _NVML_SUCCESS:
                return [(int(infos[i].pid), int(infos[i].usedGpuMemory)) for i in range(count.value)]
            if rc != _NVML_ERROR_INSUFFICIENT_SIZE:
                return None
        return None
    return None


def _nvml_devices(visit: Callable[[ctypes.CDLL, ctypes.c_void_p], None]) -> bool:
    """Calls ``visit(lib, handle)`` for every NVML device; False without NVML."""
    lib = _load_nvml()
    if lib is None:
        return False
    init = _fn(lib, "nvmlInit_v2", "nvmlInit")
    if init is None or init[1]() != _NVML_SUCCESS:  # type: ignore[operator]
        return False
    try:
        count = ctypes.c_uint(0)
        get_count = _fn(lib, "nvmlDeviceGetCount_v2", "nvmlDeviceGetCount")
        if get_count is None or get_count[1](ctypes.byref(count)) != _NVML_SUCCESS:  # type: ignore[operator]
            return False
        by_index = _fn(lib, "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByIndex")
        if by_index is None:
            return False
        for index in range(count.value):
            handle = ctypes.c_void_p()
            if by_index[1](ctypes.c_uint(index), ctypes.byref(handle)) == _NVML_SUCCESS:  # type: ignore[operator]
                visit(lib, handle)
        return True
    finally:
        shutdown = getattr(lib, "nvmlShutdown", None)
        if shutdown is not None:
            shutdown()


def nvml_memory_used_mib(pid: int) -> float | None:
    """GPU memory of ``pid`` over all devices per NVML, in MiB; None without NVML or when NVML does not list the
    process (no per-process accounting, or a container with its own PID namespace). Never the devices' total:
    that is other processes' memory too, and ``nvml_device_used_mib`` says so by its name."""
    own: list[int] = []

    def visit(lib: ctypes.CDLL, handle: ctypes.c_void_p) -> None:
        for p, used in _processes(lib, handle) or []:
            if p == pid and used != _NVML_VALUE_NOT_AVAILABLE:
                own.append(used)

    if not _nvml_devices(visit):
        return None
    return sum(own) / MIB if own else None


def nvml_device_used_mib() -> float | None:
    """Memory used on all NVML devices together, in MiB, every process's: device-wide, a figure to take a
    difference of around a measurement in an otherwise idle machine. None without NVML."""
    used: list[int] = []

    def visit(lib: ctypes.CDLL, handle: ctypes.c_void_p) -> None:
        memory = _Memory()
        if lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) == _NVML_SUCCESS:
            used.append(memory.used)

    if not _nvml_devices(visit) or not used:
        return None
    return sum(used) / MIB


def system_gpu_used_mib(root: Path = _ROOT) -> float | None:
    """GPU memory used by everything on this machine, MiB: the Jetson's nvmap total, else NVML's devices' used
    memory; None where neither tells. The footprint and edge-bench take its growth across a run when no
    per-process figure exists, and label it system-wide."""
    unified = unified_memory_used_mib(root)
    if unified is not None or is_jetson(root):
        return unified
    return nvml_device_used_mib() if root == _ROOT else None


def gpu_memory_used_mib(pid: int | None = None, *, root: Path = _ROOT) -> float | None:
    """GPU memory held for process ``pid`` (default: this one) in MiB, None when nothing here can tell.

    NVML first (discrete GPUs, and Jetsons whose NVML has per-process figures); on a Jetson then nvmap's
    per-process debugfs table (readable by root only). For a Jetson without either, use
    ``unified_memory_used_mib()`` around the measurement (system-wide).
    """
    pid = os.getpid() if pid is None else pid
    jetson = is_jetson(root)
    value = nvml_memory_used_mib(pid) if root == _ROOT else None
    if value is not None and not (jetson and value == 0.0):
        return value
    if jetson:
        text = _read(root / "sys" / "kernel" / "debug" / "nvmap" / "iovmm" / "clients")
        if text is not None:
            return parse_nvmap_clients(text, pid)
    return value


def footprint_gpu_mib(
    per_process_mib: float | None, unified_before_mib: float | None, unified_after_mib: float | None
) -> float:
    """The GPU share a measurement adds to the peak RSS (see the module docstring for why it is added).

    A per-process figure (NVML, nvmap debugfs) wins; on a Jetson without one, the growth of the system-wide
    nvmap total across the measurement (run in a fresh, otherwise idle process); 0.0 when neither is known.
    """
    if per_process_mib is not None:
        return max(0.0, float(per_process_mib))
    if unified_before_mib is not None and unified_after_mib is not None:
        return max(0.0, float(unified_after_mib) - float(unified_before_mib))
    return 0.0
