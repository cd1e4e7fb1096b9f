"""Peak resident memory of this process, measured the same way by edge-build's footprint child and edge-bench."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

MIB = 1024 * 1024


def vm_hwm_bytes() -> int:
    """The kernel's high-water mark of this address space (Linux VmHWM), 0 where unavailable.

    Not ru_maxrss: after fork+exec it can still report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakSampler(threading.Thread):
    """Polls ``reader`` every ``interval_s`` and keeps the largest value it returned: a figure read once a run is
    over misses its transient peaks, and a GPU figure read after the backend closed misses the model entirely.
    A reading of None, or one that raises, is skipped (a GPU library that fails mid-run must not end the run);
    ``peak`` stays None until a reading arrives."""

    def __init__(self, reader: Callable[[], float | None], interval_s: float, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._reader = reader
        self.interval_s = interval_s
        self.peak: float | None = None
        self._halt = threading.Event()

    def sample(self) -> None:
        """One reading, kept when it is the largest so far."""
        try:
            value = self._reader()
        except Exception:
            return
        if value is not None and (self.peak is None or value > self.peak):
            self.peak = float(value)

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self.sample()

    def halt(self) -> float | None:
        """Stop sampling (after one last reading); the peak, None when nothing was read."""
        self._halt.set()
        if self.is_alive():
            self.join()
        self.sample()
        return self.peak


class RssPeakSampler(PeakSampler):
    """Samples the resident set often enough to catch transient peaks (a session initialising, say), for
    kernels without VmHWM and as a cross-check of it."""

    def __init__(self, interval_s: float = 0.002, name: str = "rss-peak") -> None:
        proc = psutil.Process()

        def rss() -> float | None:
            try:
                return float(proc.memory_info().rss)
            except psutil.Error:
                return None

        super().__init__(rss, interval_s, name)
        self.sample()

    def stop(self) -> int:
        """Stop sampling; the highest RSS seen, in bytes."""
        return int(self.halt() or 0)


# ---------------------------------------------------------------------------------------------------------------
# What the budget means, and what the kernel charges.
#
# The profile's memory budget is the device memory edge-run may hold at its peak: its resident set's high-water
# mark (anonymous memory plus the library and model pages it maps) plus the GPU memory allocated for it. systemd
# renders the budget as the unit's MemoryMax, which charges the cgroup; but that charge is not a property of the
# process: page cache is charged to whoever read a file first. One edge-bench run measured here peaked at
# 154.5 MiB charged with a cold page cache (37.5 MiB of it library and model files it read, reclaimable) and at
# 118 MiB when a previous run had left the files cached, while its resident peak was 164 and 171 MiB and its
# mapped file pages 59.1 MiB both times (benchmarks/RESULTS.md, "Memory: what the budget means"). PSS splits
# shared library pages among whoever else maps them (edge-bench's frame renderer halves it), so it moves with the
# neighbours. The resident peak is the stable figure and an upper bound of the unreclaimable charge; the cgroup
# charge is reported beside it, split into what the kernel could reclaim and what it could not.


@dataclass(frozen=True)
class ProcessMemory:
    """One reading of a process's memory, MiB. ``pss_mib``/``uss_mib`` are None unless asked for (``shares``) and
    where the kernel has no ``smaps_rollup`` (before Linux 4.14)."""

    rss_mib: float
    hwm_mib: float  # VmHWM: the resident high-water mark since the process started
    anon_mib: float  # RssAnon: heap, thread stacks, tensors: what the kernel cannot reclaim without swap
    file_mib: float  # RssFile: mapped library and model pages (reclaimable, but refaulted while running)
    shmem_mib: float
    pss_mib: float | None
    uss_mib: float | None


@dataclass(frozen=True)
class CgroupCharge:
    """The memory charged to a cgroup, MiB, as MemoryMax sees it. ``peak_mib`` is None where the kernel keeps
    no peak (cgroup v2 before Linux 5.19); ``processes`` tells whether the charge is this process's alone."""

    path: str
    version: int
    current_mib: float
    peak_mib: float | None
    anon_mib: float  # not reclaimable (no swap on these devices)
    file_mib: float  # page cache charged here: reclaimable under pressure
    processes: int

    def as_dict(self) -> dict[str, float | int | str | None]:
        return {
            "cgroup": self.path,
            "version": self.version,
            "current_mib": round(self.current_mib, 1),
            "peak_mib": None if self.peak_mib is None else round(self.peak_mib, 1),
            "anon_mib": round(self.anon_mib, 1),
            "file_mib": round(self.file_mib, 1),
            "processes": self.processes,
        }


def _kib_fields(path: str, wanted: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in wanted:
                    parts = rest.split()
                    if parts and parts[0].isdigit():
                        out[key] = int(parts[0]) / 1024.0
    except OSError:
        pass
    return out


def read_process_memory(pid: int | str = "self", *, shares: bool = False) -> ProcessMemory | None:
    """This (or another) process's memory from ``/proc/PID/status``; None where there is no such process or no
    procfs (not Linux). ``shares`` also reads PSS and USS from ``smaps_rollup``, which walks every mapping of the
    process: for a benchmark, not for edge-run's once-a-second refresh."""
    status = _kib_fields(f"/proc/{pid}/status", ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"))
    if "VmRSS" not in status:
        return None
    rollup = _kib_fields(f"/proc/{pid}/smaps_rollup", ("Pss", "Private_Clean", "Private_Dirty")) if shares else {}
    return ProcessMemory(
        rss_mib=status["VmRSS"],
        hwm_mib=status.get("VmHWM", status["VmRSS"]),
        anon_mib=status.get("RssAnon", 0.0),
        file_mib=status.get("RssFile", 0.0),
        shmem_mib=status.get("RssShmem", 0.0),
        pss_mib=rollup.get("Pss"),
        uss_mib=rollup["Private_Clean"] + rollup["Private_Dirty"] if "Private_Clean" in rollup else None,
    )


def _cgroup_mounts(mountinfo: str) -> tuple[str | None, str | None]:
    """(cgroup v2 mount point, cgroup v1 memory controller mount point) from ``/proc/self/mountinfo`` text."""
    v2: str | None = None
    v1_memory: str | None = None
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields, tail = pre.split(), post.split()
        if len(fields) < 5 or len(tail) < 1:
            continue
        fstype, mount_point = tail[0], fields[4]
        if fstype == "cgroup2" and v2 is None:
            v2 = mount_point
        elif fstype == "cgroup" and len(tail) >= 3 and "memory" in tail[2].split(","):
            v1_memory = mount_point
    return v2, v1_memory


def _read_number(path: Path) -> float | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError:
        return None
    return float(text) if text.isdigit() else None


def _memory_stat(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                out[key] = float(value)
    except OSError:
        pass
    return out


def read_cgroup_charge(pid: int | str = "self") -> CgroupCharge | None:
    """The memory charged to the cgroup the process is in (v2 ``memory.current``/``memory.peak``, or v1
    ``memory.usage_in_bytes``/``memory.max_usage_in_bytes``); None where neither can be read. Under systemd
    this is the unit's cgroup, the one its MemoryMax limits; elsewhere it may hold other processes
    (``processes``)."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
        membership = Path(f"/proc/{pid}/cgroup").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    v2_mount, v1_mount = _cgroup_mounts(mountinfo)
    v2_rel = v1_rel = None
    for line in membership.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_rel = parts[2]
        elif "memory" in parts[1].split(","):
            v1_rel = parts[2]
    # (version, mount, path in it, current, peak, anonymous keys, page-cache keys) of each hierarchy's files.
    layouts = (
        (2, v2_mount, v2_rel, "memory.current", "memory.peak", ("anon",), ("file",)),
        (1, v1_mount, v1_rel, "memory.usage_in_bytes", "memory.max_usage_in_bytes", ("rss", "shmem"), ("cache",)),
    )
    for version, mount, rel, current_file, peak_file, anon_keys, file_keys in layouts:
        if not mount or rel is None:
            continue
        base = Path(mount) / rel.lstrip("/")
        current = _read_number(base / current_file)
        if current is None:
            continue
        stat = _memory_stat(base / "memory.stat")
        peak = _read_number(base / peak_file)
        return CgroupCharge(
            rel,
            version,
            current / MIB,
            None if peak is None else peak / MIB,
            sum(stat.get(k, 0.0) for k in anon_keys) / MIB,
            sum(stat.get(k, 0.0) for k in file_keys) / MIB,
            _count_lines(base / "cgroup.procs"),
        )
    return None


def _count_lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text(encoding="ascii").splitlines() if line.strip())
    except OSError:
        return 0
