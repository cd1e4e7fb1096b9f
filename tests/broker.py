"""A real mosquitto broker for tests, and a paho subscriber that collects what arrives.

The fixtures live in tests/conftest.py: ``mosquitto`` is the session's one started default broker (cleared of
retained messages before each test), ``mosquitto_factory`` makes configured, not yet started brokers for one
test. Both skip the test when the mosquitto binary is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

# Broker discovery has one implementation, the demo's: make demo starts a throwaway mosquitto the same way.
from build_scripts.demo_run import HOST, SBIN_DIRS, find_mosquitto, free_port

__all__ = ["SBIN_DIRS", "Collector", "Mosquitto", "TlsFiles", "find_mosquitto", "free_port", "make_tls_files"]


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path, common_name: str = HOST) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost, made with the openssl CLI (EC keys: fast)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not installed; needed to make test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=30)

    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(ca_key))
    run("req", "-x509", "-new", "-key", str(ca_key), "-sha256", "-days", "2", "-subj", "/CN=edge-ca", "-out", str(ca))
    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    run("req", "-new", "-key", str(key), "-subj", f"/CN={common_name}", "-out", str(csr))
    run(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "2", "-sha256", "-extfile", str(ext), "-out", str(cert),
    )  # fmt: skip
    return TlsFiles(ca=ca, cert=cert, key=key)


class Mosquitto:
    """One mosquitto process on 127.0.0.1 with its config, log and (optional) persistence in ``workdir``.

    The port is fixed at construction, so ``stop()`` then ``start()`` simulates an outage of the same
    broker. ``persistence=True`` keeps sessions, subscriptions and queued messages across a ``stop()``
    (SIGTERM, mosquitto saves on exit), not across ``kill()``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        binary: str | None = None,
        port: int | None = None,
        persistence: bool = False,
        passwords: dict[str, str] | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        found = binary or find_mosquitto()
        if found is None:
            raise FileNotFoundError("mosquitto binary not found in PATH or " + ", ".join(SBIN_DIRS))
        self.binary = found
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or free_port()
        self.log_file = self.workdir / "mosquitto.log"
        self.conf_file = self.workdir / "mosquitto.conf"
        self._proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} {HOST}",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # Outage tests queue hundreds of messages for an offline subscriber; the default is 1000.
            "max_queued_messages 100000",
        ]
        if persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 0"]
        else:
            lines.append("persistence false")
        if passwords:
            passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
            if not os.access(passwd, os.X_OK):
                pytest.skip("mosquitto_passwd not installed; needed for the authentication tests")
            pw_file = self.workdir / "passwords"
            pw_file.write_text("")
            for user, password in passwords.items():
                subprocess.run(
                    [passwd, "-b", str(pw_file), user, password], check=True, capture_output=True, timeout=30
                )
            lines += ["allow_anonymous false", f"password_file {pw_file}"]
        else:
            lines.append("allow_anonymous true")
        if tls is not None:
            lines += [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # As root mosquitto drops to the 'mosquitto' user, which cannot write the log and
            # persistence files in a root-owned temporary directory.
            lines.append("user root")
        self.conf_file.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf_file)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {err}\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.2):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not accept connections on port {self.port} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: a clean broker shutdown (saves persistence when enabled)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._close_pipes()

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without saving anything."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()

    def clear_retained(self, timeout: float = 5.0) -> list[str]:
        """Delete every retained message (an empty retained publish on each topic that holds one): a broker shared
        by several tests then shows each test only what it publishes. Returns the topics cleared."""
        retained: list[str] = []
        marker = f"clear-retained/{uuid.uuid4().hex}"
        done = threading.Event()

        def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            if message.topic == marker:
                done.set()  # the broker sent the retained messages on subscribing, before this one
            elif message.retain:
                retained.append(message.topic)

        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        client.on_message = on_message
        client.on_subscribe = lambda *args: client.publish(marker, b"", qos=0)
        client.connect(self.host, self.port)
        client.loop_start()
        try:
            client.subscribe("#", qos=0)
            if not done.wait(timeout):
                raise TimeoutError(f"mosquitto on port {self.port} did not echo the marker")
            for topic in retained:
                client.publish(topic, b"", qos=1, retain=True).wait_for_publish(timeout)
        finally:
            client.disconnect()
            client.loop_stop()
        return retained

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_file.is_file():
            return "(no mosquitto log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class Collector:
    """A paho subscriber at QoS 1 that records every message on ``topic_filter``.

    ``client_id`` plus ``clean_session=False`` makes it a persistent subscriber: with a broker that has
    persistence, messages published while it is disconnected are queued for it and delivered later.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic_filter: str,
        *,
        client_id: str = "",
        clean_session: bool = True,
        tls_ca: Path | None = None,
        credentials: tuple[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.topic_filter = topic_filter
        self.messages: list[mqtt.MQTTMessage] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        self._client.reconnect_delay_set(min_delay=0.2, max_delay=1)  # type: ignore[arg-type]
        if tls_ca is not None:
            self._client.tls_set(ca_certs=str(tls_ca))
        if credentials is not None:
            self._client.username_pw_set(*credentials)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise TimeoutError(f"collector could not subscribe to {topic_filter} on {host}:{port}")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not reason_code.is_failure:
            client.subscribe(self.topic_filter, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def payloads(self) -> list[dict[str, Any]]:
        with self._cond:
            return [json.loads(m.payload) for m in self.messages]

    def ids(self) -> list[str]:
        return [p["id"] for p in self.payloads()]

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(payloads)`` holds; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate([json.loads(m.payload) for m in self.messages]):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.2))

    def wait_ids(self, expected: set[str], timeout: float = 10.0) -> bool:
        return self.wait_for(lambda ps: expected <= {p.get("id") for p in ps}, timeout)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
