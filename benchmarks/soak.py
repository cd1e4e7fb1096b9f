"""Soak test: edge-run against a local mosquitto that is restarted periodically; counts what got through.

    python benchmarks/soak.py                      # 60 s, tiny test bundle, broker down 3 s every 15 s
    python benchmarks/soak.py --seconds 600 --bundle out/demo/bundle --json

Runs the real ``edge-run`` as a subprocess on a generated video played in real time (every frame inferred), with
a persistent subscriber on ``edge/soak/#``. The broker is stopped (SIGTERM) every ``--restart-every`` seconds and
started again after ``--down`` seconds. At the end edge-run drains its outbox and exits; then the script reports:

* produced: messages edge-run stored in its outbox (its summary's ``messages_produced``);
* delivered: distinct message ids the subscriber received (status messages excluded: they bypass the outbox);
* duplicated: deliveries beyond the first of an id (QoS 1 redelivery after an outage; consumers dedupe by id);
* lost: produced, not delivered and not left in the outbox. Must be 0;
* results gap-free: every frame's results message arrived;
* RSS: edge-run's resident memory early in the run (after 10 % of it) and at its peak after that, and the growth.

Without ``--bundle`` a tiny bundle (a small CNN over a small synthetic catalogue, built in a few seconds) is used:
the point is the plumbing, not the model. Needs the ``mosquitto`` binary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

# Lets the script run from a plain checkout, where edge_runtime is not installed.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.broker import Collector, Mosquitto, find_mosquitto  # noqa: E402
from tests.faultkit import build_assets, edge_cmd, make_video  # noqa: E402

MIB = 1024 * 1024


def soak(
    seconds: float, restart_every: float, down: float, bundle: Path | None, fps: int, work: Path
) -> dict[str, Any]:
    if bundle is None:
        print("building the tiny test bundle ...", file=sys.stderr)
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the report's
            bundle = build_assets(work / "assets").bundle
    frames = max(1, int(seconds * fps))
    print(f"generating a {seconds:g} s video ({frames} frames) ...", file=sys.stderr)
    video = make_video(work / "soak.mp4", frames, fps=fps)

    broker = Mosquitto(work / "broker", persistence=True)
    broker.start()
    collector = Collector(broker.host, broker.port, "edge/soak/#", client_id="soak-rx", clean_session=False)
    cmd = edge_cmd("run", "--bundle", str(bundle), "--source", str(video), "--state-dir", str(work / "state"))
    cmd += ["--metrics-port", "0", "--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--device-id", "soak"]
    cmd += ["--every-frame", "--realtime", "--heartbeat", "5", "--drain-timeout", "60", "--json", "-q"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rss: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        process = psutil.Process(proc.pid)
        while not done.wait(0.5):
            try:
                rss.append((time.monotonic(), int(process.memory_info().rss)))
            except psutil.Error:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    restarts = 0
    try:
        next_restart = started + restart_every
        while proc.poll() is None and time.monotonic() - started < seconds + 5:
            if time.monotonic() >= next_restart:
                broker.stop()
                time.sleep(down)
                broker.start()
                restarts += 1
                print(f"  broker restarted ({restarts}) at {time.monotonic() - started:.0f} s", file=sys.stderr)
                next_restart = time.monotonic() + restart_every
            time.sleep(0.2)
        out, err = proc.communicate(timeout=seconds + 120)
        done.set()
        if proc.returncode != 0:
            raise SystemExit(f"edge-run exited {proc.returncode}:\n{err[-3000:]}")
        summary = json.loads(out)
        produced = int(summary["messages_produced"])
        left = int(summary["outbox_left"])
        collector.wait_for(
            lambda ps: len({p["id"] for p in ps if p.get("schema") != "edge.status/1"}) >= produced - left, 30
        )
        time.sleep(1.0)  # late duplicates
        payloads = collector.payloads()
    finally:
        done.set()
        if proc.poll() is None:
            proc.kill()
        collector.close()
        broker.kill()
    outbox_msgs = [p for p in payloads if p.get("schema") != "edge.status/1"]
    unique = {p["id"] for p in outbox_msgs}
    result_frames = sorted({p["frame_id"] for p in outbox_msgs if p.get("schema") == "edge.results/1"})
    early = [r for t, r in rss if t - started >= 0.1 * seconds]
    rss_start = early[0] if early else (rss[0][1] if rss else 0)
    rss_peak = max(early) if early else rss_start
    return {
        "seconds": seconds,
        "broker_restarts": restarts,
        "broker_down_s": down,
        "frames_processed": summary["frames_processed"],
        "fps": summary["fps"],
        "produced": produced,
        "delivered": len(unique),
        "duplicated": len(outbox_msgs) - len(unique),
        "left_in_outbox": left,
        "lost": max(0, produced - len(unique) - left),
        "dropped_by_outbox": summary["messages_dropped"],
        "results_gap_free": result_frames == list(range(summary["frames_processed"])),
        "rss_mib_at_10pct": round(rss_start / MIB, 1),
        "rss_mib_peak_after": round(rss_peak / MIB, 1),
        "rss_growth_mib": round((rss_peak - rss_start) / MIB, 1),
        "latency_ms": summary["latency_ms"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the run (default 60)")
    parser.add_argument("--restart-every", type=float, default=15.0, help="seconds between broker restarts")
    parser.add_argument("--down", type=float, default=3.0, help="seconds the broker stays down each time")
    parser.add_argument("--fps", type=int, default=10, help="frame rate of the generated video (default 10)")
    parser.add_argument("--bundle", type=Path, help="bundle to run (default: the tiny test bundle)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if find_mosquitto() is None:
        print("soak: error: mosquitto not installed (apt install mosquitto)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="edge-soak-") as tmp:
        report = soak(args.seconds, args.restart_every, args.down, args.bundle, args.fps, Path(tmp))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>20}  {value}")
    return 0 if report["lost"] == 0 and report["results_gap_free"] else 1


if __name__ == "__main__":
    sys.exit(main())
