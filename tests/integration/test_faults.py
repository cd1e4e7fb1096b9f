"""Faults edge-run must survive, with a real bundle, a real mosquitto and real processes.

Complements test_run_pipeline.py (broker absent at start, SIGTERM drain, startup errors) and test_mqtt.py (publisher
outages, last will, refused logins): here the broker goes away *mid-run*, the process is SIGKILLed at random
moments, the outbox and the disk fill up, the camera drops out, and the uplink is throttled. Every loop is bounded:
short videos, small timeouts.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import random
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.errors import EXIT_TEMPFAIL
from edge_runtime.run.metrics import sample_value
from edge_runtime.run.outbox import OUTBOX_FILENAME, Outbox
from edge_runtime.run.pipeline import RunOptions, RunSummary, run
from edge_runtime.run.sources import SourceError
from edge_runtime.types import OutMessage
from tests.broker import Collector, Mosquitto, free_port
from tests.faultkit import (
    REPO,
    Assets,
    NotifyListener,
    RssSampler,
    TcpProxy,
    edge_cmd,
    make_video,
    rebundle,
    snapshot_outbox,
    wait_until,
)
from tests.run.sources.test_live import MjpegServer

pytestmark = pytest.mark.integration

RESULTS = "edge.results/1"


@pytest.fixture(scope="module")
def assets(tiny_assets: Assets) -> Assets:
    """The session's bundle (conftest.py): copy it before changing anything."""
    return tiny_assets


@pytest.fixture(scope="module")
def video(tiny_video: Path) -> Path:
    return tiny_video  # 30 frames: 3 s at 10 fps


def options(bundle: Path, state: Path, port: int, **kw: Any) -> RunOptions:
    base: dict[str, Any] = {
        "bundle": bundle,
        "state_dir": state,
        "metrics_port": 0,
        "mqtt_host": "127.0.0.1",
        "mqtt_port": port,
        "device_id": "fault-test",
        "drain_timeout_s": 20.0,
        "handle_signals": False,
        "every_frame": True,
    }
    base.update(kw)
    return RunOptions(**base)


def results_by_frame(payloads: list[dict[str, Any]], device: str) -> dict[int, set[str]]:
    """frame id -> the distinct message ids of its results messages (a consumer dedupes by id)."""
    out: dict[int, set[str]] = {}
    for p in payloads:
        if p.get("schema") == RESULTS and p.get("device_id") == device:
            out.setdefault(p["frame_id"], set()).add(p["id"])
    return out


def attempts(summary: dict[str, Any]) -> int:
    """Messages the run tried to store: one results per frame, one per unknown/verify object, one final heartbeat."""
    routes = summary["routes"]
    return summary["frames_processed"] + routes.get("unknown", 0) + routes.get("verify", 0) + 1


def spawn_run(bundle: Path, source: Path, state: Path, port: int, device: str, *extra: str) -> subprocess.Popen[str]:
    cmd = edge_cmd("run", "--bundle", str(bundle), "--source", str(source), "--state-dir", str(state))
    cmd += ["--metrics-port", "0", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port), "--device-id", device]
    cmd += ["--every-frame", "--heartbeat", "0", "--json", *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, dict[str, Any], str]:
    out, err = proc.communicate(timeout=timeout)
    summary = json.loads(out) if proc.returncode == 0 and out.strip() else {}
    return proc.returncode, summary, err


# --------------------------------------------------------------------------- 1. broker outage mid-run


def test_broker_outage_mid_run_every_result_arrives_once(
    assets: Assets, video: Path, tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    mqtt = mosquitto_factory(persistence=True)
    mqtt.start()
    # A persistent subscriber: the broker keeps its session across the restart and queues for it.
    collector = Collector(mqtt.host, mqtt.port, "edge/fault-test/#", client_id="rx-outage", clean_session=False)
    out: dict[str, RunSummary] = {}
    opts = options(assets.bundle, tmp_path / "state", mqtt.port, source=str(video), realtime=True)
    worker = threading.Thread(target=lambda: out.setdefault("summary", run(opts)))
    worker.start()
    try:
        assert collector.wait_for(lambda ps: len(results_by_frame(ps, "fault-test")) >= 3, timeout=20)
        mqtt.stop()  # the broker goes away mid-stream: SIGTERM, it saves its sessions
        before = len(results_by_frame(collector.payloads(), "fault-test"))
        time.sleep(1.5)  # 15 frames at 10 fps are produced meanwhile
        mqtt.start()
        worker.join(60)
        summary = out["summary"]
        assert collector.wait_for(
            lambda ps: len(results_by_frame(ps, "fault-test")) >= summary.frames_processed, timeout=20
        ), mqtt.log_tail()
        time.sleep(0.3)  # a late duplicate would arrive now
        payloads = collector.payloads()
    finally:
        worker.join(30)
        collector.close()
    frames = results_by_frame(payloads, "fault-test")
    assert summary.frames_processed == summary.frames_read == 30
    assert summary.drained and summary.outbox_left == 0 and summary.messages_dropped == 0
    # Every frame's result arrived; after dedupe by id, exactly once (one id per frame, no frame twice).
    assert sorted(frames) == list(range(30))
    assert all(len(ids) == 1 for ids in frames.values())
    assert summary.frames_processed - before >= 10, "the outage was too short to mean anything"
    raw = sum(1 for p in payloads if p.get("schema") == RESULTS)
    assert raw >= 30  # duplicates (a redelivered in-flight message) are legal; the ids make them harmless


# --------------------------------------------------------------------------- 2. power cut (SIGKILL)


def _watch_for(proc: subprocess.Popen[str], text: str) -> threading.Event:
    """An event set once ``text`` shows up in the process's log; the reader also keeps stderr drained."""
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if text in line:
                seen.set()

    threading.Thread(target=read, daemon=True).start()
    return seen


KILLS = 10


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(
    assets: Assets, tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    """SIGKILL a real edge-run at random moments, ten times, sometimes during a broker outage; restart each time.

    Kill moments are timed from the start of the frames (seen in the log), so a slow machine shifts them with it.

    After every kill the outbox files are copied as the kill left them: the copy must pass integrity_check, and
    whatever the killed process stored and the broker has not acknowledged must be in it. Each run has its own
    device id, so its results are told apart: delivered plus pending must be a gap-free prefix of its frames. The
    last start delivers everything still pending.
    """
    clip = make_video(tmp_path / "clip.mp4", 20)  # 2 s at 10 fps in realtime
    mqtt = mosquitto_factory(persistence=True)
    mqtt.start()
    collector = Collector(mqtt.host, mqtt.port, "edge/#", client_id="rx-powercut", clean_session=False)
    state = tmp_path / "state"
    rng = random.Random(20261126)
    pending: dict[str, set[str]] = {}  # run -> message ids in the outbox right after its kill
    stored: dict[str, dict[int, str]] = {}  # run -> frame id -> results id, from the outbox snapshots
    try:
        for i in range(KILLS):
            outage = i % 3 == 1  # kills 1, 4, 7: the broker is down for the whole life of the process
            if outage:
                mqtt.stop()
            device = f"pc-{i}"
            proc = spawn_run(assets.bundle, clip, state, mqtt.port, device, "--realtime")
            running = _watch_for(proc, "running bundle")
            if i % 5 == 0:  # kills 0 and 5: during startup (loading, opening the outbox, connecting)
                when = f"{rng.uniform(0.1, 0.6):.2f} s after the start"
                time.sleep(float(when.split()[0]))
            else:  # anywhere in the 2 s of frames (and the drain after them), timed from when frames start
                assert running.wait(30), f"run {i} never started"
                when = f"{rng.uniform(0.0, 2.2):.2f} s into the frames"
                time.sleep(float(when.split()[0]))
            proc.kill()
            proc.wait(10)
            snap = snapshot_outbox(state, tmp_path / f"snap-{i}")
            assert snap.integrity == "ok", f"kill {i}, {when}: {snap.integrity}"
            pending[device] = set()
            for msg_id, topic, _, payload in snap.rows:
                run_name = topic.split("/")[1]
                pending.setdefault(run_name, set()).add(msg_id)
                body = json.loads(payload)
                if body.get("schema") == RESULTS:
                    stored.setdefault(run_name, {})[body["frame_id"]] = msg_id
            if outage:
                mqtt.start()
        # The restart after the last kill: sends what is pending first, then its own single frame.
        code, summary, err = finish(spawn_run(assets.bundle, clip, state, mqtt.port, "pc-final", "--max-frames", "1"))
        assert code == 0, err
        assert summary["drained"] and summary["outbox_left"] == 0
        everything = set().union(*pending.values())
        assert collector.wait_ids(everything, timeout=20), mqtt.log_tail()
        time.sleep(0.3)
        payloads = collector.payloads()
    finally:
        collector.close()
    delivered_ids = {p["id"] for p in payloads}
    assert everything <= delivered_ids  # every message pending at a kill was delivered after a restart
    produced_somewhere = 0
    for i in range(KILLS):
        device = f"pc-{i}"
        frames = results_by_frame(payloads, device)
        for frame_id, msg_id in stored.get(device, {}).items():
            assert frames.get(frame_id) == {msg_id}
        # No hole: whatever the process stored is a prefix of its frames, and each frame has exactly one id.
        assert sorted(frames) == list(range(len(frames))), f"{device}: frames {sorted(frames)}"
        assert all(len(ids) == 1 for ids in frames.values()), device
        produced_somewhere += bool(frames)
    assert produced_somewhere >= KILLS // 2, "too few kills happened after the first result"
    # The outage kills leave messages behind for the next start: the case the outbox exists for.
    assert sum(bool(pending[f"pc-{i}"]) for i in range(1, KILLS, 3)) >= 2, pending


# --------------------------------------------------------------------------- 3. outbox full


def test_outbox_full_drops_crops_first_counts_exactly_and_memory_stays_flat(
    assets: Assets, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    cap_mib = 0.2  # results of 100 frames fit (~110 KB); their ~200 crops (~1 MB) do not
    bundle = rebundle(assets.bundle, tmp_path / "capped", profile={"outbox": {"max_mib": cap_mib}})
    clip = make_video(tmp_path / "clip100.mp4", 100, fps=50)  # 2 s in realtime
    state = tmp_path / "state"
    proc = spawn_run(bundle, clip, state, free_port(), "full-test", "--realtime", "--drain-timeout", "0")
    sampler = RssSampler(proc.pid)
    code, summary, err = finish(proc)
    samples = sampler.stop()
    assert code == 0, err
    assert "Traceback" not in err and "dropped a crop message (full)" in err
    assert summary["frames_processed"] == summary["frames_read"] == 100  # the service kept running

    drops = summary["outbox_drops"]
    assert set(drops) == {"full"} and drops["full"].get("crop", 0) > 0
    assert drops["full"].get("result", 0) == 0  # crops went first; no result had to go
    assert summary["messages_dropped"] == sum(drops["full"].values())
    # Exact accounting: everything the run tried to store is either still in the outbox or counted as dropped.
    assert summary["outbox_left"] + summary["messages_dropped"] == attempts(summary)
    snap = snapshot_outbox(state, tmp_path / "snap")
    assert snap.integrity == "ok" and len(snap.rows) == summary["outbox_left"]
    assert snap.kinds()["result"] == 100
    assert sum(len(r[3]) + len(r[1]) + len(r[0]) for r in snap.rows) <= cap_mib * 1024 * 1024
    # Memory stays flat while ~5x the cap flows through the outbox: compare the second half with the first.
    rss = [r for _, r in samples]
    assert len(rss) > 20
    growth = max(rss[len(rss) // 2 :]) - max(rss[len(rss) // 4 : len(rss) // 2])
    assert growth < 16 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB"

    # The broker comes back: every stored result is delivered by the next start.
    collector = Collector(mosquitto.host, mosquitto.port, "edge/full-test/results")
    try:
        code, after, err = finish(spawn_run(bundle, clip, state, mosquitto.port, "full-next", "--max-frames", "1"))
        assert code == 0 and after["drained"], err
        assert collector.wait_for(lambda ps: len(results_by_frame(ps, "full-test")) >= 100, timeout=20)
        frames = results_by_frame(collector.payloads(), "full-test")
    finally:
        collector.close()
    assert sorted(frames) == list(range(100))


# --------------------------------------------------------------------------- 4. disk full


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs: a state directory whose disk really fills up. Needs root (CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the SQLite max_page_count path is in test_outbox.py")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True, timeout=10
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); test_outbox.py covers max_page_count")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=10)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Fill ``disk`` up to ``leave_bytes`` of free space (0: completely) with one file."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(filler, "wb", buffering=0) as fh:
        try:
            fh.write(b"\0" * max(0, free - leave_bytes))
            while leave_bytes == 0:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_disk_full_is_logged_counted_not_fatal_and_recovers(assets: Assets, video: Path, small_disk: Path) -> None:
    state = small_disk / "state"
    # At startup: the outbox cannot even be created. A clear one-line error, exit 75 (systemd retries later).
    filler = fill(small_disk, 0)
    code, _, err = finish(spawn_run(assets.bundle, video, state, free_port(), "disk-test", "-q"))
    assert code == EXIT_TEMPFAIL, err
    assert err.strip().count("\n") == 0 and "disk is full" in err and "Traceback" not in err
    filler.unlink()
    for leftover in state.glob("outbox.sqlite3*"):
        leftover.unlink()

    # Mid-run: the disk fills a few frames in; space returns when the test sees the error in the log.
    filler = fill(small_disk, 96 * 1024)
    proc = spawn_run(assets.bundle, video, state, free_port(), "disk-test", "--realtime", "--drain-timeout", "0")
    assert proc.stderr is not None
    lines: list[str] = []
    freed_at = threading.Event()

    def read_log() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "cannot write" in line and not freed_at.is_set():
                filler.unlink()
                freed_at.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    out = proc.stdout.read() if proc.stdout else ""
    proc.wait(60)
    reader.join(10)
    log = "".join(lines)
    assert proc.returncode == 0, log  # the service never crashed
    summary = json.loads(out)
    assert freed_at.is_set(), log
    assert log.count("cannot write") == 1, log  # one clear error, not one per message
    assert "Fix: free space in" in log and "writes work again" in log and "Traceback" not in log
    drops = summary["outbox_drops"]
    assert drops.get("disk_full") and sum(drops["disk_full"].values()) == summary["messages_dropped"]
    assert summary["outbox_left"] + summary["messages_dropped"] == attempts(summary)
    snap = snapshot_outbox(state, small_disk.parent / "snap")
    assert snap.integrity == "ok"
    # After the recovery the last frame's messages, the big ones with crops included, were all stored again.
    last = [p for p in snap.payloads() if p.get("frame_id") == 29]
    (result,) = [p for p in last if p["schema"] == RESULTS]
    assert len(last) == 1 + sum(region["route"] != "accept" for region in result["regions"])


# --------------------------------------------------------------------------- 5. camera loss


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode("utf-8")


def test_camera_loss_reconnects_reports_and_starves_the_watchdog_only_after_the_stall_time(
    assets: Assets, tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    stall_s = 2.0
    bundle = rebundle(
        assets.bundle,
        tmp_path / "cam",
        profile={"regions": {"mode": "full", "fixed": []}, "health": {"frame_stall_s": stall_s}},
    )
    notify = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", "300000")  # pings every 0.15 s while frames flow
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    camera = MjpegServer()
    camera.start()
    port = free_port()
    collector = Collector(mosquitto.host, mosquitto.port, "edge/cam-test/heartbeat")
    stop = threading.Event()
    out: dict[str, RunSummary] = {}
    opts = options(
        bundle, tmp_path / "state", mosquitto.port, source=camera.url, device_id="cam-test", metrics_port=port
    )
    opts.heartbeat_s = 0.5
    worker = threading.Thread(target=lambda: out.setdefault("summary", run(opts, stop_event=stop)))
    worker.start()
    try:
        assert wait_until(lambda: len(notify.times("WATCHDOG=1")) >= 3, 20), notify.events
        assert notify.lines("READY=1")

        # A short drop-out (0.3 s, well under the stall time): the source reconnects, pings never pause.
        short_at = time.monotonic()
        camera.stop()
        time.sleep(0.3)
        camera.start()
        time.sleep(1.5)
        pings = [t for t in notify.times("WATCHDOG=1") if t >= short_at - 0.2]
        assert max(b - a for a, b in itertools.pairwise(pings)) < 1.0

        # A long one (3 s > frame_stall_s): the watchdog is starved, but only once frames stopped for stall_s.
        long_at = time.monotonic()
        camera.stop()
        assert wait_until(lambda: sample_value(_scrape(port), "edge_source_frames_flowing") == 0.0, 5)
        stalled_beat = collector.wait_for(lambda ps: any(p["source"]["frames_flowing"] is False for p in ps), timeout=3)
        time.sleep(max(0.0, long_at + 3.0 - time.monotonic()))
        camera.start()
        resumed = wait_until(lambda: sample_value(_scrape(port), "edge_source_frames_flowing") == 1.0, 10)
        back_at = time.monotonic()
        assert resumed
        assert wait_until(lambda: any(t > back_at for t in notify.times("WATCHDOG=1")), 3)  # pings resume
        text = _scrape(port)
    finally:
        stop.set()
        worker.join(30)
        camera.stop()
        notify.close()
        collector.close()
    pings = notify.times("WATCHDOG=1")
    before = [t for t in pings if t < back_at]
    gaps = [(a, b) for a, b in itertools.pairwise(before) if a >= long_at - 0.2]
    last_fed, fed_again = max(gaps, key=lambda g: g[1] - g[0])  # the withheld stretch ...
    assert fed_again - last_fed >= 0.8
    assert last_fed >= long_at + stall_s - 0.5  # ... began only after about stall_s without frames
    early = [g for g in gaps if g[0] < long_at + stall_s - 0.5 and g[1] - g[0] > 1.0]
    assert not early, f"the watchdog went hungry before frame_stall_s: {early}"
    assert stalled_beat, "no heartbeat reported the stalled camera"
    assert any("camera stalled" in line for line in notify.lines("STATUS="))
    assert (sample_value(text, "edge_source_reconnects_total") or 0) >= 2
    assert (sample_value(text, "edge_source_read_failures_total") or 0) >= 2
    summary = out["summary"]
    assert summary.source_reconnects >= 2 and summary.frames_processed > 0
    assert summary.ended_by == "stop requested"


def test_truncated_video_ends_the_run_cleanly(assets: Assets, video: Path, tmp_path: Path) -> None:
    import cv2

    full = tmp_path / "full.avi"
    reader = cv2.VideoCapture(str(video))
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    while True:
        ok, image = reader.read()
        if not ok:
            break
        writer.write(image)
    writer.release()
    reader.release()
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])  # the camera's recorder lost power: no end, no index
    code, summary, err = finish(
        spawn_run(assets.bundle, cut, tmp_path / "state", free_port(), "cut-test", "--drain-timeout", "0")
    )
    assert code == 0, err
    assert "Traceback" not in err
    assert 0 < summary["frames_processed"] == summary["frames_read"] < 30
    assert summary["ended_by"] == "source ended"


# --------------------------------------------------------------------------- 6. slow consumer


def test_slow_uplink_inference_keeps_its_rate_and_the_outbox_absorbs_the_backlog(
    assets: Assets, video: Path, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    proxy = TcpProxy(mosquitto.port, rate_bytes_s=4000)  # a congested uplink: ~4 KB/s for ~300 KB of messages
    collector = Collector(mosquitto.host, mosquitto.port, "edge/slow-test/results")
    state = tmp_path / "state"
    try:
        summary = run(
            options(
                assets.bundle, state, proxy.port, source=str(video), realtime=True, drain_timeout_s=0.5,
                device_id="slow-test",
            )
        )  # fmt: skip
        proxy.close()
        # Inference kept the camera's pace: every frame, at ~10 fps, with a short capture-to-outbox latency.
        assert summary.frames_processed == summary.frames_read == 30 and summary.frames_dropped == 0
        assert summary.fps >= 8.0, summary.fps
        assert summary.latency_ms["p95"] < 500, summary.latency_ms
        # The outbox took the backlog: most messages were still waiting when the run ended.
        assert not summary.drained and summary.outbox_left > summary.messages_produced // 2
        assert summary.messages_dropped == 0
        # The next start (direct to the broker) delivers the backlog, each result exactly once after dedupe.
        after = run(options(assets.bundle, state, mosquitto.port, source=str(video), max_frames=1, device_id="s2"))
        assert after.drained
        assert collector.wait_for(lambda ps: len(results_by_frame(ps, "slow-test")) >= 30, timeout=20)
        frames = results_by_frame(collector.payloads(), "slow-test")
    finally:
        proxy.close()
        collector.close()
    assert sorted(frames) == list(range(30)) and all(len(ids) == 1 for ids in frames.values())


# --------------------------------------------------------------------------- 7. an outbox never stranded


class _Seen(logging.Handler):
    """Sets ``event`` when a log line contains ``text`` (from any thread)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def test_a_broker_back_during_the_drain_gets_the_outbox_before_exit(
    assets: Assets, video: Path, tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    # A finite source ends while the broker is away; it returns well into the drain, when paho's doubled
    # backoff (1, 2, 4, 5 s) would let the drain time out: the drain retries every DRAIN_RETRY_S instead.
    mqtt = mosquitto_factory(persistence=True)
    mqtt.start()
    collector = Collector(mqtt.host, mqtt.port, "edge/drain-test/#", client_id="rx-drain", clean_session=False)
    mqtt.stop()
    seen = _Seen("draining; retrying")
    mqtt_log = logging.getLogger("edge_runtime.run.mqtt")
    level = mqtt_log.level
    mqtt_log.addHandler(seen)
    mqtt_log.setLevel(logging.INFO)  # the line is an info one
    out: dict[str, RunSummary] = {}
    opts = options(
        assets.bundle, tmp_path / "state", mqtt.port, source=str(video), device_id="drain-test",
        connect_wait_s=0.2, drain_timeout_s=6.0,
    )  # fmt: skip
    worker = threading.Thread(target=lambda: out.setdefault("summary", run(opts)))
    worker.start()
    try:
        assert seen.event.wait(30), "the drain never began"
        time.sleep(3.0)  # the broker is back 3 s into a 6 s drain
        mqtt.start()
        worker.join(30)
        summary = out["summary"]
        assert collector.wait_for(lambda ps: len(results_by_frame(ps, "drain-test")) >= 30, timeout=10)
    finally:
        mqtt_log.removeHandler(seen)
        mqtt_log.setLevel(level)
        worker.join(30)
        collector.close()
    assert summary.frames_processed == 30
    assert summary.drained and summary.outbox_left == 0 and summary.messages_dropped == 0


def _leftovers(state: Path, device: str, n: int) -> set[str]:
    """``n`` results messages an earlier run of ``device`` left in the outbox of ``state``."""
    ids = {f"left-{i:03d}" for i in range(n)}
    with Outbox(state / OUTBOX_FILENAME, max_bytes=1 << 20, ttl_s=3600) as box:
        for msg_id in sorted(ids):
            body = {"schema": RESULTS, "id": msg_id, "device_id": device, "frame_id": int(msg_id[-3:]), "regions": []}
            payload = json.dumps(body).encode()
            assert box.put(OutMessage(msg_id, f"edge/{device}/results", payload, "result", time.time()))
    return ids


def test_a_camera_that_cannot_open_delivers_the_outbox_before_exit_3(
    assets: Assets, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # RestartPreventExitStatus=3 keeps the unit down until someone fixes the camera: the messages of the
    # earlier run must not wait that long.
    state = tmp_path / "state"
    ids = _leftovers(state, "exit3-test", 12)
    collector = Collector(mosquitto.host, mosquitto.port, "edge/exit3-test/results")
    try:
        missing = tmp_path / "camera-gone.mp4"
        with pytest.raises(SourceError) as refused:
            run(options(assets.bundle, state, mosquitto.port, source=str(missing), device_id="exit3-test"))
        assert refused.value.exit_code == 3 and str(missing) in str(refused.value)
        assert collector.wait_ids(ids, 5)  # delivered before run() raised
    finally:
        collector.close()
    with Outbox(state / OUTBOX_FILENAME, max_bytes=1 << 20, ttl_s=3600) as box:
        assert box.depth == 0

    # No broker: the wait is bounded by the drain timeout and the messages stay for the next start.
    ids = _leftovers(state, "exit3-test", 3)
    t0 = time.monotonic()
    with pytest.raises(SourceError):
        run(options(assets.bundle, state, free_port(), source=str(missing), device_id="exit3-test", drain_timeout_s=1))
    assert time.monotonic() - t0 < 5
    with Outbox(state / OUTBOX_FILENAME, max_bytes=1 << 20, ttl_s=3600) as box:
        assert {m.id for m in box.next_batch(10)} == ids
