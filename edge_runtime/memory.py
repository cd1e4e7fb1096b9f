"""Peak resident memory of this process, measured the same way by edge-build's footprint child and edge-bench."""

from __future__ import annotations

import contextlib
import threading

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


class RssPeakSampler(threading.Thread):
    """Samples the resident set often enough to catch transient peaks (a session initialising, say), for
    kernels without VmHWM and as a cross-check of it."""

    def __init__(self, interval_s: float = 0.002, name: str = "rss-peak") -> None:
        super().__init__(name=name, daemon=True)
        self._proc = psutil.Process()
        self.interval_s = interval_s
        self.peak = self._proc.memory_info().rss
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._proc.memory_info().rss)

    def stop(self) -> int:
        """Stop sampling; the highest RSS seen, in bytes."""
        self._halt.set()
        self.join()
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, self._proc.memory_info().rss)
        return self.peak
