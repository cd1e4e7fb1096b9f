"""systemd readiness, status and watchdog for edge-run, without libsystemd or extra packages.

The notify protocol is one datagram of ``KEY=value`` lines sent to the socket named by ``$NOTIFY_SOCKET``
(a path, or an abstract socket written with a leading ``@``). Outside systemd the variable is unset and every
call here is a no-op, so the pipeline calls them unconditionally.

The watchdog is pinged only while frames flow: the pipeline calls ``frame_seen()`` for every captured frame and
a thread pings at half of ``$WATCHDOG_USEC`` only if the last frame is younger than ``frame_stall_s``. A camera
that stalls without raising (a frozen driver, a dead RTSP server that keeps the socket open) then lets the
watchdog expire and systemd restarts the service, which is exactly the fix a stall needs. The grace period
starts at construction, so a camera that takes a few seconds to deliver its first frame is not killed for it.
After ``stopping()`` the pings continue regardless of frames: draining is bounded by its own timeout.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["SystemdNotifier", "notify_address"]

log = logging.getLogger(__name__)


def notify_address(raw: str) -> str | bytes:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value; ``@name`` is the abstract socket ``\\0name``."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode("utf-8")
    return raw


class SystemdNotifier:
    """``ready()``, ``status()``, ``stopping()`` and a frame-gated watchdog; all no-ops without ``NOTIFY_SOCKET``."""

    def __init__(
        self,
        frame_stall_s: float = 10.0,
        *,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if env is None else env
        self.frame_stall_s = float(frame_stall_s)
        self._clock = clock
        raw = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = notify_address(raw) if raw else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._last_frame = clock()
        self._stopping = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.watchdog_interval_s = self._watchdog_interval(env)
        self.pings = 0  # watchdog pings sent
        self.withheld = 0  # pings skipped because frames had stalled
        self._send_failed_logged = False

    @staticmethod
    def _watchdog_interval(env: Mapping[str, str]) -> float | None:
        usec = env.get("WATCHDOG_USEC", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        pid = env.get("WATCHDOG_PID", "")
        # systemd sets WATCHDOG_PID to the main process; a child that inherited the environment must not ping.
        if pid and pid != str(os.getpid()):
            return None
        return int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, text: str) -> bool:
        """Send one notify datagram; False when disabled or it could not be sent (never raises)."""
        if self._address is None:
            return False
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.setblocking(False)  # a wedged systemd must not stall the pipeline
                self._sock.sendto(text.encode("utf-8"), self._address)
            except OSError as exc:
                if not self._send_failed_logged:
                    self._send_failed_logged = True
                    log.warning("systemd notify to %r failed: %s", self._address, exc)
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        text = "READY=1" + (f"\nSTATUS={_one_line(status)}" if status else "")
        return self.notify(text)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def stopping(self, status: str | None = None) -> bool:
        self._stopping = True
        text = "STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else "")
        return self.notify(text)

    def frame_seen(self) -> None:
        """Called by the capture stage for every frame; cheap (one clock read, no lock: a float store is atomic)."""
        self._last_frame = self._clock()

    def last_frame_age_s(self) -> float:
        """Seconds since the last captured frame (since construction before the first one)."""
        return max(0.0, self._clock() - self._last_frame)

    def frames_flowing(self) -> bool:
        return self._stopping or self._clock() - self._last_frame < self.frame_stall_s

    def watchdog(self) -> bool:
        """Ping the watchdog if frames are flowing; True when a ping was sent."""
        if not self.frames_flowing():
            self.withheld += 1
            return False
        sent = self.notify("WATCHDOG=1")
        if sent:
            self.pings += 1
        return sent

    def start_watchdog(self) -> None:
        """Ping from a daemon thread at half the watchdog interval (no-op without WATCHDOG_USEC)."""
        if not self.enabled or self.watchdog_interval_s is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watchdog_loop, name="systemd-watchdog", daemon=True)
        self._thread.start()
        log.info("systemd watchdog: pinging every %.1f s while frames flow", self.watchdog_interval_s / 2)

    def _watchdog_loop(self) -> None:
        assert self.watchdog_interval_s is not None
        period = self.watchdog_interval_s / 2
        stalled = False
        while not self._closed.wait(period):
            sent = self.watchdog()
            if not sent and not self.frames_flowing() and not stalled:
                stalled = True
                log.error(
                    "no frame for %.1f s: withholding the systemd watchdog ping so the service is restarted",
                    self._clock() - self._last_frame,
                )
            elif sent and stalled:
                stalled = False
                log.warning("frames flow again; watchdog pings resumed")

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _one_line(text: str) -> str:
    # A newline would start a new KEY=value assignment in the datagram.
    return " ".join(text.split())
