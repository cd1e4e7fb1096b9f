"""Peak resident memory of this process, measured the same way by edge-build's footprint child and edge-bench."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psutil


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
