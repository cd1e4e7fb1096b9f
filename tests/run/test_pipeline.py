"""edge-run end to end: a real bundle (tiny ONNX model), a real video and image folder, a real mosquitto."""

from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from edge_runtime.bundle import load_bundle
from edge_runtime.cli import run_main
from edge_runtime.errors import EXIT_AUTH, EXIT_INPUT
from edge_runtime.run.feedback import event_id_for_region
from edge_runtime.run.metrics import sample_value
from edge_runtime.run.pipeline import RunOptions, RunSummary, run
from edge_runtime.run.queues import PUBLISH_QUEUE, TENSOR_QUEUE
from edge_runtime.run.sources import Source, VideoFileSource
from edge_runtime.run.stages import MONO_CHECK_FRAMES, FrameTiming
from edge_runtime.run.startup import bundle_profile
from edge_runtime.types import Frame
from tests.broker import Collector, Mosquitto, free_port
from tests.conftest import TINY_VIDEO_FRAMES
from tests.faultkit import BOXES, CROP_CAP, Assets

REPO = Path(__file__).resolve().parents[2]
VIDEO_FRAMES = TINY_VIDEO_FRAMES  # 3 s at 10 fps
# The session bundle (conftest.py) has two fixed regions: the whole frame (its crop is capped to CROP_CAP) and a
# small box (published as is), so every frame exercises batching (two crops, one backend call) and both crop sizes.
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def assets(tiny_assets: Assets, tiny_video: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's bundle and video (conftest.py), and an image folder of catalogue shots for this module."""
    # Colour forced on, so every run test goes through the composed head input as well.
    assert json.loads((tiny_assets.bundle / "head.json").read_text())["input"]["colour_weight"] > 0
    folder = tmp_path_factory.mktemp("run") / "images"
    folder.mkdir()
    for i, image in enumerate(sorted(tiny_assets.catalogue.rglob("*.jpg"))[::7][:6]):
        shutil.copy(image, folder / f"shot_{i:03d}.jpg")
    (folder / "notes.txt").write_text("not an image")
    return {"bundle": tiny_assets.bundle, "video": tiny_video, "folder": folder}


def options(assets: dict[str, Path], tmp_path: Path, broker: Mosquitto | None, **kw: Any) -> RunOptions:
    base: dict[str, Any] = {
        "bundle": assets["bundle"],
        "source": str(assets["video"]),
        "state_dir": tmp_path / "state",
        "metrics_port": 0,
        "mqtt_host": "127.0.0.1",
        "mqtt_port": broker.port if broker else free_port(),
        "device_id": "cart-test",
        "drain_timeout_s": 15.0,
        "handle_signals": False,
    }
    base.update(kw)
    return RunOptions(**base)


def by_schema(payloads: list[dict[str, Any]], schema: str) -> dict[str, dict[str, Any]]:
    """Messages of one schema, deduplicated by id as a consumer would."""
    return {p["id"]: p for p in payloads if p.get("schema") == schema}


def expected_crop_size(box: list[int]) -> tuple[int, int]:
    w, h = box[2], box[3]
    scale = min(1.0, CROP_CAP / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def check_object_messages(payloads: list[dict[str, Any]]) -> int:
    n = 0
    for schema in ("edge.unknown/1", "edge.verify/1"):
        for msg in by_schema(payloads, schema).values():
            n += 1
            assert TS.match(msg["ts"]) and msg["device_id"] == "cart-test"
            assert msg["box"] in BOXES and msg["nearest"] and isinstance(msg["ood_score"], float)
            crop = msg["crop"]
            assert crop["format"] == "jpeg"
            image = cv2.imdecode(np.frombuffer(base64.b64decode(crop["data"]), np.uint8), cv2.IMREAD_COLOR)
            assert image is not None, "crop is not a decodable JPEG"
            assert (image.shape[1], image.shape[0]) == (crop["width"], crop["height"]) == expected_crop_size(msg["box"])
            if schema == "edge.verify/1":
                assert msg["sku"] and msg["name"] and msg["group"] and 0 <= msg["score"] <= 1
    return n


@pytest.mark.integration
def test_every_video_frame_yields_one_results_message(
    assets: dict[str, Path], tmp_path: Path, mosquitto: Mosquitto
) -> None:
    collector = Collector(mosquitto.host, mosquitto.port, "edge/cart-test/#")
    try:
        summary = run(options(assets, tmp_path, mosquitto, every_frame=True))
        assert summary.drained and summary.outbox_left == 0
        assert collector.wait_for(lambda ps: len(by_schema(ps, "edge.results/1")) >= VIDEO_FRAMES)
        time.sleep(0.2)  # a redelivered duplicate would arrive now; dedupe by id must absorb it
        payloads = collector.payloads()
    finally:
        collector.close()

    assert summary.frames_read == summary.frames_processed == VIDEO_FRAMES
    assert summary.frames_dropped == summary.frame_errors == 0
    results = by_schema(payloads, "edge.results/1")
    assert sorted(r["frame_id"] for r in results.values()) == list(range(VIDEO_FRAMES))
    bundle = load_bundle(assets["bundle"])
    skus = {s["sku"] for s in bundle.read_json("labels.json")}
    for r in results.values():
        assert r["bundle_id"] == bundle.bundle_id and r["device_id"] == "cart-test"
        assert r["source_ref"] == str(r["frame_id"]) and TS.match(r["ts"])
        assert [reg["box"] for reg in r["regions"]] == BOXES
        for reg in r["regions"]:
            assert reg["route"] in {"accept", "verify", "unknown"}
            assert (reg["sku"] is None) == (reg["route"] == "unknown")
            assert all(code in skus for code, _ in reg["top_k"]) and 0 <= reg["score"] <= 1
    routes = [reg["route"] for r in results.values() for reg in r["regions"]]
    assert summary.regions == len(routes) == 2 * VIDEO_FRAMES
    assert summary.routes == {k: routes.count(k) for k in set(routes)}
    n_objects = check_object_messages(payloads)
    assert n_objects == routes.count("unknown") + routes.count("verify") > 0
    assert summary.messages_by_topic["results"] == VIDEO_FRAMES
    assert summary.messages_acked == summary.messages_produced
    states = [p["state"] for p in payloads if p.get("schema") == "edge.status/1"]
    assert states[0] == "online" and states[-1] == "offline"
    (beat,) = by_schema(payloads, "edge.heartbeat/1").values()  # the final one; the interval is 30 s
    assert beat["frames"]["processed"] == VIDEO_FRAMES and beat["outbox_depth"] >= 0 and beat["rss_mib"] > 0
    # The budget's quantity, as edge-build predicts it: the resident high-water mark (plus GPU memory, none here).
    assert beat["memory"]["peak_mib"] >= beat["rss_mib"] and beat["memory"]["gpu_mib"] is None
    budget = bundle_profile(bundle).device.memory_budget_mib
    assert beat["headroom"] == pytest.approx(1 - beat["memory"]["peak_mib"] / budget, abs=1e-3)
    # The profile's uplink cap is in force and reported; the bytes counted so far exclude this heartbeat itself.
    assert beat["uplink"]["cap_bytes_per_s"] == 250_000 and beat["uplink"]["bytes"] > 0


@pytest.mark.integration
def test_image_folder_one_result_per_image_named_by_file(
    assets: dict[str, Path], tmp_path: Path, mosquitto: Mosquitto
) -> None:
    collector = Collector(mosquitto.host, mosquitto.port, "edge/cart-test/results")
    try:
        summary = run(options(assets, tmp_path, mosquitto, source=str(assets["folder"])))
        names = sorted(p.name for p in assets["folder"].glob("*.jpg"))
        assert collector.wait_for(lambda ps: len(by_schema(ps, "edge.results/1")) >= len(names))
        results = by_schema(collector.payloads(), "edge.results/1")
    finally:
        collector.close()
    # Folders bypass the motion sampler: every still is its own shot.
    assert summary.frames_read == summary.frames_processed == len(names) and summary.frames_skipped == 0
    assert sorted(r["source_ref"] for r in results.values()) == names
    assert sorted(r["frame_id"] for r in results.values()) == list(range(len(names)))


@pytest.mark.integration
def test_sampler_accounts_for_every_frame(assets: dict[str, Path], tmp_path: Path, mosquitto: Mosquitto) -> None:
    summary = run(options(assets, tmp_path, mosquitto))  # the profile's sampler, on the video's own clock
    assert summary.frames_read == VIDEO_FRAMES
    assert summary.frames_processed + summary.frames_skipped == VIDEO_FRAMES
    assert 0 < summary.frames_processed < VIDEO_FRAMES
    assert summary.messages_by_topic["results"] == summary.frames_processed


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode("utf-8")


def _publish(port: int, topic: str, payloads: list[dict[str, Any]]) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for p in payloads:
            client.publish(topic, json.dumps(p), qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.integration
def test_feedback_moves_per_class_counters_on_the_metrics_endpoint(
    assets: dict[str, Path], tmp_path: Path, mosquitto: Mosquitto
) -> None:
    port = free_port()
    stop = threading.Event()
    out: dict[str, RunSummary] = {}
    opts = options(assets, tmp_path, mosquitto, every_frame=True, realtime=True, metrics_port=port, max_frames=25)
    collector = Collector(mosquitto.host, mosquitto.port, "edge/cart-test/#")
    worker = threading.Thread(target=lambda: out.setdefault("summary", run(opts, stop_event=stop)))
    worker.start()
    try:
        assert collector.wait_for(
            lambda ps: (
                len(by_schema(ps, "edge.results/1")) >= 3
                and any(p.get("schema") in ("edge.unknown/1", "edge.verify/1") for p in ps)
            ),
            timeout=20,
        )
        payloads = collector.payloads()
        frame = next(iter(by_schema(payloads, "edge.results/1").values()))
        obj = next(p for p in payloads if p.get("schema") in ("edge.unknown/1", "edge.verify/1"))
        predicted0 = frame["regions"][0]["top_k"][0][0]
        predicted1 = frame["regions"][1]["top_k"][0][0]
        other = next(code for code, _ in frame["regions"][1]["top_k"] if code != predicted1)
        nearest = obj["nearest"][0][0]
        _publish(
            mosquitto.port,
            "edge/cart-test/feedback",
            [
                {"schema": "edge.feedback/1", "event_id": event_id_for_region(frame["id"], 0), "sku": predicted0},
                {"schema": "edge.feedback/1", "event_id": event_id_for_region(frame["id"], 1), "sku": other},
                {"schema": "edge.feedback/1", "event_id": obj["id"], "sku": nearest},
                {"schema": "edge.feedback/1", "event_id": "no-such-event", "sku": predicted0},
                {"schema": "edge.feedback/1", "event_id": obj["id"], "sku": "not-in-the-catalogue"},
                {"schema": "edge.feedback/1", "event_id": frame["id"], "sku": predicted0},  # 2 regions: ambiguous
            ],
        )

        def value(name: str, **labels: str) -> float:
            return sample_value(_scrape(port), name, labels) or 0.0

        deadline = time.monotonic() + 10
        while value("edge_feedback_rejected_total", reason="ambiguous_event") < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        text = _scrape(port)
    finally:
        stop.set()
        worker.join(30)
        collector.close()

    families = {f.name: f for f in text_string_to_metric_families(text)}  # raises on invalid exposition text
    expected_correct = {predicted0: 1.0}
    expected_correct[nearest] = expected_correct.get(nearest, 0.0) + 1.0
    for sku, n in expected_correct.items():
        assert sample_value(text, "edge_feedback_total", {"sku": sku, "outcome": "correct"}) == n
    assert sample_value(text, "edge_feedback_total", {"sku": predicted1, "outcome": "incorrect"}) == 1.0
    for reason in ("unknown_event", "unknown_sku", "ambiguous_event"):
        assert sample_value(text, "edge_feedback_rejected_total", {"reason": reason}) == 1.0
    # Every per-class series exists from the start, at zero when nothing happened to it.
    skus = [s["sku"] for s in load_bundle(assets["bundle"]).read_json("labels.json")]
    predictions = [s for s in families["edge_predictions"].samples if s.name == "edge_predictions_total"]
    assert {(s.labels["sku"], s.labels["route"]) for s in predictions} == {
        (sku, route) for sku in skus for route in ("accept", "verify", "unknown")
    }
    feedback = [s for s in families["edge_feedback"].samples if s.name == "edge_feedback_total"]
    assert len(feedback) == 2 * len(skus) and sum(s.value for s in feedback) == 3
    assert sample_value(text, "edge_frames_processed_total")
    assert sample_value(text, "edge_stage_seconds_count", {"stage": "inference"})
    assert sample_value(text, "edge_process_rss_bytes")
    assert sample_value(text, "edge_backend_info", {"backend": "onnxruntime-cpu"}) == 1.0
    summary = out["summary"]
    assert summary.drained and summary.frames_read == summary.frames_processed


@pytest.mark.integration
def test_sigterm_mid_run_loses_nothing(assets: dict[str, Path], tmp_path: Path, mosquitto: Mosquitto) -> None:
    collector = Collector(mosquitto.host, mosquitto.port, "edge/cart-test/#")
    cmd = [sys.executable, "-c", "from edge_runtime.cli import run; run()", "--bundle", str(assets["bundle"])]
    cmd += ["--source", str(assets["video"]), "--state-dir", str(tmp_path / "state"), "--metrics-port", "0"]
    cmd += ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(mosquitto.port), "--device-id", "cart-test"]
    cmd += ["--every-frame", "--realtime", "--json", "-q"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert collector.wait_for(lambda ps: len(by_schema(ps, "edge.results/1")) >= 2, timeout=30)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        summary = json.loads(out)
        assert collector.wait_for(
            lambda ps: len(by_schema(ps, "edge.results/1")) >= summary["frames_processed"], timeout=10
        )
        payloads = collector.payloads()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        collector.close()
    assert summary["ended_by"] == "stop requested" and summary["frames_read"] < VIDEO_FRAMES
    # Every frame read was processed and every result reached the broker: nothing lost, nothing left behind.
    assert summary["frames_read"] == summary["frames_processed"]
    assert summary["drained"] and summary["outbox_left"] == 0
    frame_ids = sorted(r["frame_id"] for r in by_schema(payloads, "edge.results/1").values())
    assert frame_ids == list(range(summary["frames_processed"]))
    assert [p["state"] for p in payloads if p.get("schema") == "edge.status/1"][-1] == "offline"


def test_stop_with_every_queue_full_processes_every_frame_read_in_order(
    assets: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A file read as fast as it decodes, and a publish stage slowed down (on_frame runs in the publish thread),
    # so every queue is full when the stop comes: the end marker must pass through all of them behind the frames.
    stop = threading.Event()
    stored: list[int] = []

    def on_frame(t: FrameTiming) -> None:
        stored.append(t.frame_id)
        if len(stored) == 3:
            stop.set()
        time.sleep(0.1)

    summary = run(options(assets, tmp_path, None, every_frame=True, publish=False, on_frame=on_frame), stop_event=stop)
    assert summary.ended_by == "stop requested" and summary.frame_errors == 0
    # Frames were waiting beyond the publish queue (in the tensor and frame queues) when the stop came.
    assert 3 + PUBLISH_QUEUE + TENSOR_QUEUE <= summary.frames_read < VIDEO_FRAMES
    assert summary.frames_processed == summary.frames_read
    assert stored == list(range(summary.frames_read))
    assert "did not finish" not in caplog.text  # each thread saw its end marker; none waited out the drain timeout


def test_monochrome_camera_with_a_colour_head_is_warned_once(
    assets: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The module's bundle reads colour; a monochrome camera (single-channel JPEGs, decoded to BGR) cannot feed it.
    folder = tmp_path / "mono"
    folder.mkdir()
    shots = sorted(assets["folder"].glob("*.jpg"))
    for i in range(MONO_CHECK_FRAMES + 5):
        grey = cv2.cvtColor(cv2.imread(str(shots[i % len(shots)])), cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(folder / f"mono_{i:03d}.jpg"), grey)
    with caplog.at_level("WARNING", logger="edge_runtime.run.stages"):
        summary = run(options(assets, tmp_path, None, source=str(folder), publish=False))
    assert summary.frames_processed == MONO_CHECK_FRAMES + 5 and summary.frame_errors == 0
    warnings = [r.getMessage() for r in caplog.records if "monochrome" in r.getMessage()]
    assert len(warnings) == 1 and 'colour = "off"' in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="edge_runtime.run.stages"):
        run(options(assets, tmp_path / "colour", None, source=str(assets["folder"]), publish=False))
    assert "monochrome" not in caplog.text


class _FaultyCamera(Source):
    """A video file whose driver hands over some malformed frames: not decodable as a picture of the scene."""

    def __init__(self, video: Path, bad: dict[int, str]) -> None:
        super().__init__(str(video), camera="faulty")
        self.video = VideoFileSource(video)
        self.nominal_fps = self.video.nominal_fps
        self.bad = bad

    def read(self) -> Frame | None:
        frame = self.video.read()
        if frame is None:
            return None
        image = frame.image
        if self.bad.get(frame.index) == "regions":
            image = image.reshape(-1)  # no height or width: the region finder cannot place its boxes
        elif self.bad.get(frame.index) == "preprocess":
            image = np.ascontiguousarray(image[:, :, :2])  # boxes fit, but two channels are not BGR
        return self._emit(image, frame.source_ref)

    def describe(self) -> str:
        return f"faulty camera over {self.video.describe()}"

    def close(self) -> None:
        super().close()
        self.video.close()


def test_frames_failing_before_the_backend_are_counted_by_stage_and_the_rest_go_on(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    bad = {3: "regions", 4: "preprocess", 11: "preprocess", 20: "regions"}
    port = free_port()
    stored: list[FrameTiming] = []
    scraped: list[str] = []

    def on_frame(t: FrameTiming) -> None:
        stored.append(t)
        if t.frame_id == VIDEO_FRAMES - 1:  # every earlier frame has been counted by now
            scraped.append(_scrape(port))

    source = _FaultyCamera(assets["video"], bad)
    summary = run(
        options(assets, tmp_path, None, frames=source, every_frame=True, publish=False, metrics_port=port,
                on_frame=on_frame)
    )  # fmt: skip
    assert summary.ended_by == "source ended"
    assert summary.frames_read == VIDEO_FRAMES and summary.frame_errors == len(bad)
    assert summary.frames_processed == VIDEO_FRAMES - len(bad) == len(stored)
    assert [t.frame_id for t in stored] == [i for i in range(VIDEO_FRAMES) if i not in bad]
    assert all({"regions", "preprocess", "inference", "head", "encode", "publish"} <= set(t.stages) for t in stored)
    (text,) = scraped
    for stage in ("regions", "preprocess"):
        assert sample_value(text, "edge_frame_errors_total", {"stage": stage}) == 2.0
    assert sample_value(text, "edge_frame_errors_total", {"stage": "inference"}) == 0.0


@pytest.mark.integration
def test_broker_absent_at_start_gets_everything_once_it_appears(
    assets: dict[str, Path], tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    absent = mosquitto_factory(persistence=True)
    absent.start()
    # A persistent subscriber registered before the outage: the broker queues for it while it reconnects.
    collector = Collector(absent.host, absent.port, "edge/cart-test/#", client_id="rx-absent", clean_session=False)
    absent.stop()
    timer = threading.Timer(2.0, absent.start)
    timer.start()
    try:
        summary = run(options(assets, tmp_path, absent, every_frame=True, connect_wait_s=0.5, drain_timeout_s=30))
        assert collector.wait_for(lambda ps: len(by_schema(ps, "edge.results/1")) >= VIDEO_FRAMES, timeout=15)
        payloads = collector.payloads()
    finally:
        timer.join()
        collector.close()
    assert summary.drained and summary.outbox_left == 0
    assert summary.messages_acked == summary.messages_produced
    results = by_schema(payloads, "edge.results/1")
    assert sorted(r["frame_id"] for r in results.values()) == list(range(VIDEO_FRAMES))
    for topic, schema in (("unknown", "edge.unknown/1"), ("verify", "edge.verify/1")):
        assert len(by_schema(payloads, schema)) == summary.messages_by_topic.get(topic, 0)


def test_without_a_broker_everything_stays_in_the_outbox(assets: dict[str, Path], tmp_path: Path) -> None:
    summary = run(
        options(assets, tmp_path, None, every_frame=True, max_frames=5, connect_wait_s=0.2, drain_timeout_s=0.5)
    )
    assert summary.frames_processed == 5 and summary.ended_by == "max frames"
    assert not summary.drained and summary.outbox_left == summary.messages_produced > 5
    assert "kept in the outbox" in summary.text()


@pytest.mark.integration
def test_startup_errors_exit_with_documented_codes(
    assets: dict[str, Path],
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ["--state-dir", str(tmp_path / "state"), "--metrics-port", "0", "--mqtt-host", "127.0.0.1", "-q"]
    tampered = tmp_path / "tampered"
    shutil.copytree(assets["bundle"], tampered)
    (tampered / "labels.json").write_text("[]\n")
    assert run_main(["--bundle", str(tampered), *common]) == EXIT_INPUT
    assert "sha256 mismatch" in capsys.readouterr().err

    missing = tmp_path / "no-such-video.mp4"
    assert run_main(["--bundle", str(assets["bundle"]), "--source", str(missing), *common]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1

    locked = mosquitto_factory(passwords={"someone": "secret"})
    locked.start()
    code = run_main(
        ["--bundle", str(assets["bundle"]), "--source", str(assets["video"]), "--mqtt-port", str(locked.port), *common]
    )
    err = capsys.readouterr().err
    assert code == EXIT_AUTH, err
    assert "refused" in err and "Traceback" not in err
