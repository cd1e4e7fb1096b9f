"""Tools for the run, fault, robustness, security and bench tests: a tiny real bundle, bundle surgery, a throttling
TCP proxy, a systemd notify listener, outbox snapshots and RSS sampling. No fixtures here: tests/conftest.py builds
the tiny bundle once per session with ``build_assets`` (``tiny_assets``), and a test that needs another one makes a
changed copy with ``rebundle``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import psutil

from edge_runtime.bundle import MANIFEST, PROFILE, SIGNATURE, json_bytes, write_bundle
from edge_runtime.cli import build_main
from edge_runtime.demo import generate_demo_catalogue, generate_demo_video
from edge_runtime.run.outbox import OUTBOX_FILENAME
from tests.conftest import tiny_backbone

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
FRAME_SIZE = (320, 240)  # (width, height) of the test videos
BOXES = [[0, 0, 320, 240], [200, 120, 100, 90]]  # the whole frame and a small box: two crops per frame
CROP_CAP = 128


def edge_cmd(tool: str, *args: str) -> list[str]:
    """The real CLI ``tool`` (build, run, bench, check) as a subprocess command line."""
    return [sys.executable, "-c", f"from edge_runtime.cli import {tool}; {tool}()", *args]


@dataclass(frozen=True)
class Assets:
    root: Path
    bundle: Path
    model: Path
    catalogue: Path
    profile: Path


def build_assets(root: Path, *, extra_profile: str = "") -> Assets:
    """A real bundle of the tiny backbone over a small demo catalogue, built by edge-build in-process."""
    root.mkdir(parents=True, exist_ok=True)
    model = root / "tiny.onnx"
    onnx.save(tiny_backbone(), str(model))
    catalogue = generate_demo_catalogue(root / "catalogue", seed=3, scale=0.25)
    profile = root / "faults.toml"
    profile.write_text(
        f'extends = "{REPO / "device_profiles" / "dev-cpu.toml"}"\n'
        '[device]\nname = "faults"\n'
        '[backend]\nprecisions = ["fp32"]\ninput_sizes = [96]\ntable_precisions = ["fp32"]\ncalibration_images = 16\n'
        f'[regions]\nmode = "fixed"\nfixed = {BOXES}\n'
        f"[mqtt]\ncrop_max_side = {CROP_CAP}\njpeg_quality = 70\n"
        "[metrics]\nport = 0\n" + extra_profile
    )
    args = ["--profile", str(profile), "--catalogue", str(catalogue), "--model", str(model)]
    code = build_main([*args, "--out", str(root / "out"), "--runs", "3", "-q"])
    assert code == 0, "building the test bundle failed"
    return Assets(root=root, bundle=root / "out" / "bundle", model=model, catalogue=catalogue, profile=profile)


def make_video(path: Path, frames: int, fps: int = 10, seed: int = 1) -> Path:
    return generate_demo_video(path, seed=seed, seconds=frames / fps, fps=fps, size=FRAME_SIZE)


def _deep_merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def rebundle(
    src: Path,
    out: Path,
    *,
    replace: Mapping[str, bytes] | None = None,
    profile: Mapping[str, Any] | None = None,
    signing_key: Path | None = None,
) -> Path:
    """A consistent copy of bundle ``src`` (every hash right) with members replaced and/or profile.json changed.

    What a careless or hostile packager could produce: the verifier's hashes pass, only the content is wrong.
    """
    manifest = json.loads((src / MANIFEST).read_text())
    members = {name: (src / name).read_bytes() for name in manifest["files"]}
    if profile:
        members[PROFILE] = json_bytes(_deep_merge(json.loads(members[PROFILE]), profile))
    members.update(replace or {})
    for key in ("schema", "schema_version", "files"):
        manifest.pop(key, None)
    return write_bundle(out, members, manifest, signing_key=signing_key).root


def copy_bundle(src: Path, dst: Path, *, signature: bool = True) -> Path:
    shutil.copytree(src, dst, ignore=None if signature else shutil.ignore_patterns(SIGNATURE))
    return dst


# --------------------------------------------------------------------------- the outbox, seen from outside


@dataclass(frozen=True)
class OutboxSnapshot:
    integrity: str
    rows: list[tuple[str, str, str, bytes]]  # (id, topic, kind, payload), in send order

    def ids(self) -> set[str]:
        return {r[0] for r in self.rows}

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, _, kind, _ in self.rows:
            out[kind] = out.get(kind, 0) + 1
        return out

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(r[3]) for r in self.rows]


def snapshot_outbox(state_dir: Path, into: Path) -> OutboxSnapshot:
    """Copy the outbox files as they are on disk (as a power cut leaves them) and read the copy.

    The copy is what the next start would open: SQLite replays the WAL into it. The live files are not touched.
    """
    into.mkdir(parents=True, exist_ok=True)
    db = state_dir / OUTBOX_FILENAME
    target = into / OUTBOX_FILENAME
    for suffix in ("", "-wal"):
        source = db.with_name(db.name + suffix)
        if source.exists():
            shutil.copyfile(source, target.with_name(target.name + suffix))
    if not target.exists():
        return OutboxSnapshot(integrity="ok", rows=[])  # killed before the outbox was created
    with contextlib.closing(sqlite3.connect(str(target))) as conn:
        integrity = "; ".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall())
        try:
            rows = conn.execute("SELECT id, topic, kind, payload FROM messages ORDER BY seq").fetchall()
        except sqlite3.OperationalError:  # killed between creating the file and its schema
            rows = []
    return OutboxSnapshot(integrity=integrity, rows=[(r[0], r[1], r[2], bytes(r[3])) for r in rows])


# --------------------------------------------------------------------------- a throttling TCP proxy


class TcpProxy:
    """A loopback TCP proxy to ``target_port`` that can cap the client-to-server byte rate.

    ``rate_bytes_s=None`` forwards at full speed; a number makes the uplink that slow, as a congested cellular link
    or an overloaded broker would. Server-to-client bytes (PUBACKs) are never delayed.
    """

    def __init__(self, target_port: int, *, rate_bytes_s: float | None = None) -> None:
        self.target_port = target_port
        self.rate_bytes_s = rate_bytes_s
        self.forwarded = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, throttled: bool) -> None:
        try:
            while not self._closed.is_set():
                data = src.recv(512 if throttled else 65536)
                if not data:
                    break
                rate = self.rate_bytes_s
                if throttled and rate:
                    time.sleep(len(data) / rate)
                dst.sendall(data)
                if throttled:
                    with self._lock:
                        self.forwarded += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()


# --------------------------------------------------------------------------- systemd's side of sd_notify


class NotifyListener:
    """A datagram socket standing in for systemd's ``NOTIFY_SOCKET``; records (monotonic time, line) pairs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-listener", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self._lock:
                self.events += [(now, line) for line in data.decode("utf-8", "replace").splitlines()]

    def times(self, line: str) -> list[float]:
        with self._lock:
            return [t for t, text in self.events if text == line]

    def lines(self, prefix: str) -> list[str]:
        with self._lock:
            return [text for _, text in self.events if text.startswith(prefix)]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self._sock.close()


# --------------------------------------------------------------------------- memory of another process


class RssSampler:
    """Samples the resident memory of process ``pid`` every ``period_s`` until ``stop()``."""

    def __init__(self, pid: int, period_s: float = 0.05) -> None:
        self.samples: list[tuple[float, int]] = []
        self._process = psutil.Process(pid)
        self._period = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), int(self._process.memory_info().rss)))
            except psutil.Error:
                return
            self._stop.wait(self._period)

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join(timeout=2)
        return self.samples


def wait_until(predicate: Any, timeout: float, period: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return bool(predicate())
