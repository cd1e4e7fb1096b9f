"""systemd notify over real datagram sockets, and the Prometheus registry of edge-run."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_runtime.errors import UsageError
from edge_runtime.run.health import SystemdNotifier, notify_address
from edge_runtime.run.metrics import RunMetrics, sample_value
from edge_runtime.run.outbox import OutboxStats
from tests.broker import free_port


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notify socket (a path)."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield sock, str(path)
    sock.close()


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier(env={})
    assert not notifier.enabled
    assert not notifier.ready("x") and not notifier.status("x") and not notifier.stopping() and not notifier.watchdog()
    notifier.start_watchdog()  # no thread, no error
    notifier.close()


def test_ready_status_stopping_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = SystemdNotifier(env={"NOTIFY_SOCKET": path})
    assert notifier.ready("running\ncamera 1")
    assert _recv(sock) == "READY=1\nSTATUS=running camera 1"  # a newline would start a new assignment
    assert notifier.status("12 fps")
    assert _recv(sock) == "STATUS=12 fps"
    assert notifier.stopping("draining")
    assert _recv(sock) == "STOPPING=1\nSTATUS=draining"
    notifier.close()


def test_abstract_socket_names_start_with_at() -> None:
    name = f"edge-runtime-test-{os.getpid()}-{time.monotonic_ns()}"
    assert notify_address("@" + name) == b"\0" + name.encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        notifier = SystemdNotifier(env={"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert _recv(sock) == "READY=1"
        notifier.close()


def test_watchdog_pings_only_while_frames_flow(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    now = [100.0]
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"}
    notifier = SystemdNotifier(frame_stall_s=10.0, env=env, clock=lambda: now[0])
    assert notifier.watchdog_interval_s == 4.0
    now[0] = 105.0  # within the startup grace
    assert notifier.watchdog() and _recv(sock) == "WATCHDOG=1"
    now[0] = 111.0  # no frame for 11 s: withheld, so systemd restarts a stalled camera
    assert not notifier.watchdog() and notifier.withheld == 1
    notifier.frame_seen()
    assert notifier.watchdog() and _recv(sock) == "WATCHDOG=1"
    now[0] = 200.0
    notifier.stopping()
    _recv(sock)
    assert notifier.watchdog()  # draining is bounded by its own timeout; keep the watchdog quiet meanwhile
    notifier.close()
    # A child process that inherited the variables must not ping for its parent.
    assert SystemdNotifier(env={**env, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval_s is None


def test_watchdog_thread_stops_pinging_when_frames_stall(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = SystemdNotifier(frame_stall_s=0.3, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    notifier.start_watchdog()
    try:
        assert _recv(sock) == "WATCHDOG=1"
        time.sleep(0.5)  # frames stalled
        sock.settimeout(0.05)
        with pytest.raises(TimeoutError):  # drain what was sent before the stall, then silence
            while True:
                _recv(sock)
        # Silence is the watchdog withholding its pings, not the thread dying: a frame brings them back.
        withheld = notifier.withheld
        assert withheld >= 2  # pinged every 50 ms, stalled for at least the last 100 ms of the 0.5 s
        notifier.frame_seen()
        sock.settimeout(1.0)
        assert _recv(sock) == "WATCHDOG=1"
        time.sleep(0.1)  # frames are fresh again (0.3 s stall limit): nothing more is withheld
        assert notifier.withheld == withheld
    finally:
        notifier.close()


def test_metrics_registries_are_private_and_series_pre_declared() -> None:
    first = RunMetrics(["milk", "juice"], memory_budget_mib=100)
    second = RunMetrics(["milk", "juice"], memory_budget_mib=100)  # no "duplicated timeseries" error
    first.count_prediction("milk", "accept")
    first.count_prediction("juice", "unknown")
    first.count_feedback("milk", correct=True)
    text = first.render().decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"edge_predictions", "edge_feedback", "edge_stage_seconds", "edge_outbox_depth"} <= names
    assert sample_value(text, "edge_predictions_total", {"sku": "milk", "route": "accept"}) == 1
    assert sample_value(text, "edge_predictions_total", {"sku": "milk", "route": "verify"}) == 0
    assert sample_value(text, "edge_unknown_total") == 1
    assert sample_value(text, "edge_feedback_total", {"sku": "juice", "outcome": "incorrect"}) == 0
    assert sample_value(second.render().decode(), "edge_predictions_total", {"sku": "milk", "route": "accept"}) == 0


def test_refresh_mirrors_outbox_and_memory() -> None:
    m = RunMetrics(["a"], memory_budget_mib=1 << 20)
    m.refresh(OutboxStats(depth=3, bytes=300, drops={("full", "crop"): 2}), acked=4, connected=True)
    # Touched, then freed: the peak keeps it, the resident set not (above glibc's largest mmap threshold, 32 MiB,
    # so the pages are fresh and go back to the kernel when freed).
    block = np.ones(80 * 1024 * 1024, np.uint8)
    del block
    figures = m.refresh(
        OutboxStats(depth=1, bytes=90, drops={("full", "crop"): 5}), acked=9, connected=False, gpu_mib=4.0
    )
    text = m.render().decode()
    assert sample_value(text, "edge_outbox_depth") == 1 and sample_value(text, "edge_outbox_bytes") == 90
    assert sample_value(text, "edge_outbox_dropped_total", {"reason": "full", "kind": "crop"}) == 5
    assert sample_value(text, "edge_messages_acked_total") == 9
    assert sample_value(text, "edge_mqtt_connected") == 0
    # The budget's quantity: this process's resident high-water mark plus the GPU memory it was told of, against
    # the 1 TiB budget; the resident set now is reported beside it.
    rss = psutil.Process().memory_info().rss
    assert figures.rss_bytes == pytest.approx(rss, rel=0.2) and sample_value(text, "edge_process_rss_bytes") > 0
    assert figures.peak_bytes >= figures.rss_bytes + 70 * 1024 * 1024 + 4 * 1024 * 1024
    assert figures.headroom == pytest.approx(1 - figures.peak_bytes / (1 << 40))
    assert sample_value(text, "edge_memory_headroom_ratio") == pytest.approx(figures.headroom)
    assert sample_value(text, "edge_memory_peak_bytes") == figures.peak_bytes
    assert 0 < figures.anon_bytes < figures.peak_bytes
    beat = figures.as_dict()
    assert beat["gpu_mib"] == 4.0 and beat["peak_mib"] == round(figures.peak_bytes / 1024 / 1024, 1)


def test_refresh_mirrors_uplink_totals_as_counters() -> None:
    m = RunMetrics(["a"], memory_budget_mib=1 << 20)
    m.refresh(uplink=(1000, 0.5, True))
    m.refresh(uplink=(4000, 2.0, False))
    m.refresh(uplink=(4000, 2.0, False))  # unchanged totals add nothing
    text = m.render().decode()
    assert sample_value(text, "edge_mqtt_uplink_bytes_total") == 4000
    assert sample_value(text, "edge_mqtt_uplink_wait_seconds_total") == 2.0
    assert sample_value(text, "edge_mqtt_uplink_throttled") == 0


def test_metrics_endpoint_serves_and_refuses_a_taken_port() -> None:
    m = RunMetrics(["a"], memory_budget_mib=100)
    port = m.serve(free_port(), "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert b"edge_predictions_total" in response.read()
        with pytest.raises(UsageError, match="cannot serve metrics"):
            RunMetrics(["a"], memory_budget_mib=100).serve(port, "127.0.0.1")
    finally:
        m.close()
    assert RunMetrics(["a"], memory_budget_mib=100).serve(0) == 0
