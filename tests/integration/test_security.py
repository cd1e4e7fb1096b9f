"""Security: MQTT over TLS with a password against a real mosquitto, Ed25519 bundle signatures, and crops that show
the object's box and nothing else (or nothing at all when the profile turns crop publishing off)."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from build_scripts.make_signing_key import main as keygen_main
from edge_runtime.bundle import MANIFEST, SIGNATURE, TARBALL, load_bundle, sign_bundle, write_bundle
from edge_runtime.cli import build_main
from edge_runtime.errors import EXIT_AUTH, BundleError, UsageError
from edge_runtime.run.pipeline import RunOptions, run
from tests.broker import Collector, Mosquitto, free_port, make_tls_files
from tests.faultkit import BOXES, CROP_CAP, REPO, Assets, edge_cmd, make_video, rebundle

pytestmark = pytest.mark.integration

PASSWORD = "Tr0ub4dor&3-never-in-a-log"


@pytest.fixture(scope="module")
def assets(tiny_assets: Assets) -> Assets:
    """The session's bundle (conftest.py): copy it before changing anything."""
    return tiny_assets


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("security") / "video.mp4", 10)


# --------------------------------------------------------------------------- MQTT over TLS with a password


def test_tls_and_password_from_files_never_logged(
    assets: Assets, video: Path, tmp_path: Path, mosquitto_factory: Any
) -> None:
    tls = make_tls_files(tmp_path / "pki")
    mqtt: Mosquitto = mosquitto_factory(tls=tls, passwords={"cart-7": PASSWORD, "reader": "r"})
    mqtt.start()
    cred = tmp_path / "mqtt.cred"
    cred.write_text(f"cart-7:{PASSWORD}\n")
    cred.chmod(0o600)
    mqtt_section = {"host": "127.0.0.1", "port": mqtt.port, "tls_ca_file": str(tls.ca), "credentials_file": str(cred)}
    bundle = rebundle(assets.bundle, tmp_path / "tls", profile={"mqtt": mqtt_section})
    collector = Collector(mqtt.host, mqtt.port, "edge/#", tls_ca=tls.ca, credentials=("reader", "r"))
    common = ["--bundle", str(bundle), "--source", str(video), "--state-dir", str(tmp_path / "state")]
    common += ["--metrics-port", "0", "--every-frame", "--device-id", "cart-7", "--drain-timeout", "10"]
    try:
        # -vv: DEBUG logging, the most talkative the service gets.
        done = subprocess.run(edge_cmd("run", *common, "--json", "-vv"), cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["drained"] and summary["messages_acked"] == summary["messages_produced"]
        assert collector.wait_for(lambda ps: sum(p.get("schema") == "edge.results/1" for p in ps) >= 10, 10)
    finally:
        collector.close()
    assert PASSWORD not in done.stdout + done.stderr
    assert "MQTT: connected" in done.stderr  # the log did talk about the connection, just not the secret

    # A wrong password: refused for good (exit 7), and the wrong secret is not echoed either.
    cred.write_text("cart-7:not-the-password-42\n")
    refused = subprocess.run(edge_cmd("run", *common, "-vv"), cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == EXIT_AUTH, refused.stderr
    assert "not-the-password-42" not in refused.stdout + refused.stderr and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("edge-run: error: MQTT broker")

    # A broker whose certificate another CA signed is never talked to: the messages wait in the outbox.
    other = make_tls_files(tmp_path / "other-pki")
    cred.write_text(f"cart-7:{PASSWORD}\n")
    bundle2 = rebundle(bundle, tmp_path / "other-ca", profile={"mqtt": {"tls_ca_file": str(other.ca)}})
    argv = [a if a != str(bundle) else str(bundle2) for a in common]
    argv[argv.index("--drain-timeout") + 1] = "0"
    untrusted = subprocess.run(edge_cmd("run", *argv, "--json", "-q"), cwd=REPO, capture_output=True, text=True)
    assert untrusted.returncode == 0, untrusted.stderr
    result = json.loads(untrusted.stdout)
    assert result["messages_acked"] == 0 and result["outbox_left"] >= result["messages_produced"] > 0
    assert PASSWORD not in untrusted.stderr


def test_password_is_not_accepted_on_the_command_line(assets: Assets) -> None:
    done = subprocess.run(
        edge_cmd("run", "--bundle", str(assets.bundle), "--mqtt-password", PASSWORD),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr


# --------------------------------------------------------------------------- bundle signatures


def _members() -> dict[str, bytes]:
    return {"model.onnx": b"\x08\x07model", "labels.json": b"[]\n", "report/build_report.md": b"# r\n"}


def _key_pair(directory: Path) -> tuple[Path, Path]:
    assert keygen_main(["--out", str(directory)]) == 0
    return directory / "edge-bundle.key", directory / "edge-bundle.pub"


def test_keygen_writes_a_private_key_only_the_owner_reads(tmp_path: Path) -> None:
    private, public = _key_pair(tmp_path / "keys")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    assert keygen_main(["--out", str(tmp_path / "keys")]) == 2  # never overwrites a key by accident


def test_signed_bundle_verifies_and_every_tampering_is_refused(tmp_path: Path) -> None:
    private, public = _key_pair(tmp_path / "keys")
    bundle = write_bundle(tmp_path / "out", _members(), {"profile": {"name": "t"}}, signing_key=private)
    assert (bundle.root / SIGNATURE).is_file() and SIGNATURE not in bundle.manifest["files"]
    opened = load_bundle(bundle.root, public_key=public)
    assert opened.signed and opened.signature_verified
    unchecked = load_bundle(bundle.root)  # without a key the signature is the one allowed extra file
    assert unchecked.signed and not unchecked.signature_verified
    # The tarball carries the signature.
    extracted = load_bundle(tmp_path / "out" / TARBALL, extract_to=tmp_path / "x", public_key=public)
    assert extracted.signature_verified

    def tampered(name: str) -> Path:
        return Path(shutil.copytree(bundle.root, tmp_path / name))

    manifest_edit = tampered("manifest-edit")  # consistent hashes, but not what was signed
    manifest = json.loads((manifest_edit / MANIFEST).read_text())
    manifest["profile"]["name"] = "someone-else"
    (manifest_edit / MANIFEST).write_text(json.dumps(manifest))
    bad_sig = tampered("bad-sig")
    sig = bytearray((bad_sig / SIGNATURE).read_bytes())
    sig[10] ^= 0x01
    (bad_sig / SIGNATURE).write_bytes(bytes(sig))
    short_sig = tampered("short-sig")
    (short_sig / SIGNATURE).write_bytes(b"\x00" * 10)
    unsigned = tampered("unsigned")
    (unsigned / SIGNATURE).unlink()
    for root, pattern in [
        (manifest_edit, "does not verify"),
        (bad_sig, "does not verify"),
        (short_sig, "does not verify"),
        (unsigned, "missing: this device only runs signed bundles"),
    ]:
        with pytest.raises(BundleError, match=pattern) as info:
            load_bundle(root, public_key=public)
        assert SIGNATURE in str(info.value) and "--signing-key" in str(info.value)
    extra = tampered("extra")
    (extra / "signature.ed25519.bak").write_bytes(b"x")
    with pytest.raises(BundleError, match="not listed"):
        load_bundle(extra, public_key=public)
    # Signing after the build, on a separate host, makes the unsigned copy verify.
    sign_bundle(unsigned, private)
    assert load_bundle(unsigned, public_key=public).signature_verified


def test_signing_keys_that_are_not_ed25519_are_refused(tmp_path: Path) -> None:
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    with pytest.raises(UsageError, match="not an Ed25519 key"):
        write_bundle(tmp_path / "a", _members(), {}, signing_key=ec_key)
    with pytest.raises(UsageError, match="encrypted"):
        write_bundle(tmp_path / "b", _members(), {}, signing_key=encrypted)
    with pytest.raises(UsageError, match="cannot read"):
        load_bundle(tmp_path, public_key=tmp_path / "missing.pub")
    assert not (tmp_path / "a" / "bundle").exists()  # a bad key fails before anything is written


@pytest.mark.slow
def test_edge_build_signs_and_a_profile_that_requires_it_runs_only_signed(
    assets: Assets, video: Path, tmp_path: Path
) -> None:
    private, public = _key_pair(tmp_path / "keys")
    profile = tmp_path / "signed.toml"
    profile.write_text(
        f'extends = "{assets.profile}"\n[security]\nrequire_signature = true\npublic_key_file = "{public}"\n'
    )
    args = ["--profile", str(profile), "--catalogue", str(assets.catalogue), "--model", str(assets.model)]
    assert build_main([*args, "--out", str(tmp_path / "out"), "--runs", "3", "-q", "--signing-key", str(private)]) == 0
    bundle = tmp_path / "out" / "bundle"
    assert load_bundle(bundle, public_key=public).signature_verified
    opts = RunOptions(
        bundle=bundle, source=str(video), state_dir=tmp_path / "state", max_frames=2, metrics_port=0,
        mqtt_port=free_port(), connect_wait_s=0.1, drain_timeout_s=0.0, handle_signals=False,
    )  # fmt: skip
    assert run(opts).frames_read == 2  # the profile's key verifies the signature
    (bundle / SIGNATURE).unlink()
    with pytest.raises(BundleError, match=r"signature\.ed25519: missing"):
        run(opts)


# --------------------------------------------------------------------------- crops


def _shots(folder: Path, n: int = 4) -> list[np.ndarray]:
    """Frames whose small box holds a random texture and whose outside is flat blue: a crop that leaks shows it."""
    folder.mkdir()
    rng = np.random.default_rng(7)
    frames = []
    x, y, w, h = BOXES[1]
    for i in range(n):
        frame = np.zeros((240, 320, 3), np.uint8)
        frame[:] = (200, 40, 0)
        frame[y : y + h, x : x + w] = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 0)
        cv2.imwrite(str(folder / f"shot_{i}.png"), frame)
        frames.append(frame)
    return frames


def _collect(bundle: Path, folder: Path, state: Path, mqtt: Mosquitto, device: str) -> list[dict[str, Any]]:
    collector = Collector(mqtt.host, mqtt.port, f"edge/{device}/#")
    try:
        summary = run(
            RunOptions(
                bundle=bundle, source=str(folder), state_dir=state, metrics_port=0, mqtt_host=mqtt.host,
                mqtt_port=mqtt.port, device_id=device, drain_timeout_s=15.0, handle_signals=False,
            )
        )  # fmt: skip
        assert summary.drained
        objects = sum(summary.routes.get(r, 0) for r in ("unknown", "verify"))
        assert collector.wait_for(lambda ps: sum("box" in p for p in ps) >= objects, 10)
        return collector.payloads()
    finally:
        collector.close()


def test_crops_hold_the_box_and_nothing_around_it(assets: Assets, tmp_path: Path, mosquitto: Mosquitto) -> None:
    frames = _shots(tmp_path / "shots")
    payloads = _collect(assets.bundle, tmp_path / "shots", tmp_path / "state", mosquitto, "crop-test")
    objects = [p for p in payloads if p.get("schema") in ("edge.unknown/1", "edge.verify/1")]
    small = [p for p in objects if p["box"] == BOXES[1]]
    assert small, "no object message for the small box: nothing to check"
    x, y, w, h = BOXES[1]
    for message in small:
        crop = message["crop"]
        image = cv2.imdecode(np.frombuffer(base64.b64decode(crop["data"]), np.uint8), cv2.IMREAD_COLOR)
        assert image.shape[:2] == (h, w) == (crop["height"], crop["width"])  # exactly the box, under the cap
        frame = frames[int(message["source_ref"].split("_")[1].split(".")[0])]
        diff = np.abs(image.astype(np.int16) - frame[y : y + h, x : x + w].astype(np.int16))
        assert float(diff.mean()) < 12  # the box's own pixels (JPEG quality 70) ...
        blue = np.all(np.abs(image.astype(np.int16) - (200, 40, 0)) < 30, axis=2)
        assert blue.mean() < 0.02  # ... and none of the flat background around it
    for message in objects:
        if message["box"] == BOXES[0]:  # the whole frame is itself a box: scaled to the cap
            assert max(message["crop"]["width"], message["crop"]["height"]) == CROP_CAP


def test_profile_can_turn_crop_publishing_off(assets: Assets, tmp_path: Path, mosquitto: Mosquitto) -> None:
    _shots(tmp_path / "shots")
    bundle = rebundle(assets.bundle, tmp_path / "no-crops", profile={"mqtt": {"publish_crops": False}})
    payloads = _collect(bundle, tmp_path / "shots", tmp_path / "state", mosquitto, "nocrop-test")
    objects = [p for p in payloads if p.get("schema") in ("edge.unknown/1", "edge.verify/1")]
    assert objects, "no object messages: nothing to check"
    assert all(p["crop"] is None and p["box"] in BOXES and p["nearest"] for p in objects)
    raw = json.dumps(payloads)
    assert '"data"' not in raw and "/9j/" not in raw  # no base64 JPEG anywhere ("/9j/" starts every one)
