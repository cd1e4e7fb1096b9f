"""What edge-run opens before its threads start, and the checks that refuse a run early.

In order: the bundle (every hash verified, the signature policy of its own profile enforced), the camera and
the instance's MQTT identity and state directory, the backend (the first of the profile's ``prefer`` list that
loads the model, checked against the manifest's input size and the head's input width), the frame source, the
metrics endpoint, and the publisher with its durable outbox, whose first verdict on our credentials is awaited.

Startup problems raise EdgeError subclasses carrying their exit codes (bundle, model or source unusable: 3,
broker refused our credentials: 7); nothing here is retried.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

import edge_runtime
from edge_runtime.backends import Backend, create_backend, first_available
from edge_runtime.bundle import HEAD, MODEL, PROFILE, Bundle, load_bundle
from edge_runtime.errors import EXIT_INPUT, EXIT_USAGE, AuthError, BundleError, EdgeError, ModelError, UsageError
from edge_runtime.features import COLOUR_DIM
from edge_runtime.head.model import Head
from edge_runtime.profile import Camera, DeviceProfile
from edge_runtime.run.metrics import RunMetrics
from edge_runtime.run.mqtt import DRAIN_RETRY_S, MqttPublisher
from edge_runtime.run.mqtt_auth import MqttAuthError
from edge_runtime.run.outbox import OUTBOX_FILENAME, Outbox
from edge_runtime.run.publisher import NullPublisher, Publisher
from edge_runtime.run.queues import POLL_S
from edge_runtime.run.sources import Source, open_source, redact_uri

__all__ = [
    "await_broker",
    "bundle_profile",
    "check_head_input",
    "default_state_dir",
    "enforce_signature_policy",
    "instance_device_id",
    "open_backend",
    "open_bundle",
    "open_checked_backend",
    "open_frames",
    "open_metrics",
    "open_publisher",
    "outbox_delivered_on_refusal",
    "pick_camera",
    "status_fields",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the bundle and who we are


def bundle_profile(bundle: Bundle) -> DeviceProfile:
    """The resolved profile the bundle was built for (its profile.json)."""
    try:
        return DeviceProfile.model_validate(bundle.read_json(PROFILE))
    except ValidationError as exc:
        raise BundleError(
            f"{bundle.root / PROFILE}: not a profile this edge_runtime reads ({exc.error_count()} problems)",
            hint="rebuild the bundle with the edge-build that matches this runtime",
        ) from None


def enforce_signature_policy(bundle: Bundle, profile: DeviceProfile) -> Bundle:
    """The bundle's own profile may demand a signature (catches an unsigned build by mistake).

    Against tampering this is not enough, since whoever edits the bundle can edit its profile too: the trust
    anchor is the device's ``--public-key`` (RunOptions.public_key), checked by load_bundle before anything else.
    """
    if bundle.signature_verified or not profile.security.require_signature:
        return bundle
    key_file = profile.security.public_key_file
    assert key_file is not None  # the profile schema requires it with require_signature
    log.info("profile %s requires a signed bundle: checking it with %s", profile.name, key_file)
    return load_bundle(bundle.root, public_key=Path(key_file))


def open_bundle(path: Path, public_key: Path | None) -> tuple[Bundle, DeviceProfile]:
    """The bundle, every hash verified before anything is loaded (and its signature against ``public_key``), and
    the profile it was built for, which is what the run runs with."""
    bundle = load_bundle(Path(path), public_key=public_key)
    profile = bundle_profile(bundle)
    return enforce_signature_policy(bundle, profile), profile


def pick_camera(profile: DeviceProfile, name: str | None) -> Camera:
    """The profile's camera called ``name``; the first one when ``name`` is None."""
    if name is None:
        return profile.cameras[0]
    for camera in profile.cameras:
        if camera.name == name:
            return camera
    names = ", ".join(c.name for c in profile.cameras)
    raise UsageError(f"profile {profile.name} has no camera {name!r}", hint=f"use one of: {names}")


def instance_device_id(profile: DeviceProfile, camera: Camera, explicit: str | None = None) -> str:
    """The MQTT identity of one edge-run instance: ``--device-id`` when given, else the profile's device id, with
    ``-CAMERA`` appended when the profile has several cameras.

    systemd runs one edge-run per camera. Two instances under one id would share the MQTT client id (the broker
    disconnects one whenever the other connects, so both flap) and one retained status topic (either one's last
    will would mark the other offline). One id per camera keeps the DESIGN's ``{prefix}/{device}/...`` topics.
    """
    if explicit:
        return explicit
    base = profile.mqtt_device_id
    return f"{base}-{camera.name}" if len(profile.cameras) > 1 else base


def default_state_dir(device_id: str, camera: str) -> Path:
    """$STATE_DIRECTORY (systemd ``StateDirectory=``), else ``$XDG_STATE_HOME/edge_runtime/DEVICE-CAMERA``.

    One state directory per camera instance: the outbox in it belongs to one process.
    """
    systemd_dirs = os.environ.get("STATE_DIRECTORY", "")
    if systemd_dirs:
        return Path(systemd_dirs.split(":")[0])
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "edge_runtime" / f"{device_id}-{camera}"


# --------------------------------------------------------------------------- the backend


# The default backbone's input name: bundles built before the manifest recorded ``model.input_name`` used it.
DEFAULT_INPUT_NAME = "image"


def manifest_image_input(manifest: dict[str, Any]) -> tuple[str, int] | None:
    """(input name, S) of the bundle model's ``[N, 3, S, S]`` input, from its manifest; None when not recorded."""
    model = manifest.get("model", {})
    size = model.get("input_size")
    if not isinstance(size, int) or size < 1:
        return None
    return str(model.get("input_name") or DEFAULT_INPUT_NAME), size


def open_backend(bundle: Bundle, profile: DeviceProfile, engine_dir: Path | None = None) -> Backend:
    """The first backend of the profile's ``prefer`` list that exists here and loads the bundle's model.

    GPU backends get the bundle's precision, the memory budget (workspace and arena limits), the device's
    engine folder (engines survive restarts and are shared by every instance) and the largest batch the
    regions can make.
    """
    prefer: list[str] = list(profile.backend.prefer)
    measured = str(bundle.manifest.get("measurement", {}).get("backend", "") or "")
    output = str(bundle.manifest.get("backbone", {}).get("embedding_output") or profile.backend.embedding_output)
    failures: dict[str, str] = {}
    load_errors: list[EdgeError] = []  # backends that exist here but could not load this model
    remaining = prefer
    while remaining:
        name, skipped = first_available(remaining)
        failures.update(skipped)
        if name is None:
            break
        if name != prefer[0] and not profile.backend.allow_fallback:
            raise ModelError(
                f"backend {prefer[0]} is not available here ({failures.get(prefer[0], 'unknown reason')}) "
                "and backend.allow_fallback is false",
                hint="run on the device the profile describes, or allow fallback in the profile",
            )
        try:
            backend = create_backend(
                name,
                bundle.path(MODEL),
                threads=profile.backend.threads,
                embedding_output=output,
                precision=str(bundle.manifest.get("model", {}).get("precision") or "fp32"),
                budget_mib=float(profile.device.memory_budget_mib),
                engine_dir=engine_dir,
                max_batch=profile.regions.max_regions,
                image_input=manifest_image_input(bundle.manifest),
            )
        except EdgeError as exc:
            failures[name] = str(exc)
            load_errors.append(exc)
            if not profile.backend.allow_fallback:
                raise
            remaining = remaining[remaining.index(name) + 1 :]
            if remaining:
                log.warning("backend %s cannot load the model: %s; trying the next one", name, exc)
            continue
        for other, why in failures.items():
            log.info("backend %s skipped: %s", other, why)
        if measured and name != measured:
            log.warning("the bundle's figures were measured with %s; running %s", measured, name)
        return backend
    if load_errors:
        # Every backend that exists here refused the model itself: the bundle is at fault, not the host.
        raise ModelError(
            f"{bundle.root / MODEL}: no backend here can load the bundle's model "
            f"({'; '.join(f'{k}: {v}' for k, v in failures.items())})",
            hint="the model is damaged or not ONNX: rebuild the bundle with edge-build",
        )
    detail = "; ".join(f"{k}: {v}" for k, v in failures.items()) or "the profile lists none"
    raise ModelError(
        f"no usable inference backend for profile {profile.name} ({detail})",
        hint="install the runtime the profile prefers, or build for a profile that lists this host's backend",
    )


def check_head_input(bundle: Bundle, backend: Backend, head: Head) -> None:
    """One embedding at startup: a head that reads another width than the model (+ colour) gives would fail
    every frame, which a service would only show as a counter; better to refuse the bundle now."""
    try:
        probe = backend.embed(np.zeros((1, 3, backend.input_size, backend.input_size), dtype=np.float32))
    except EdgeError:
        raise
    except Exception as exc:
        raise ModelError(
            f"{bundle.root / MODEL}: the model fails on a blank frame ({type(exc).__name__}: {exc})",
            hint="check the backend's log above; rebuild the bundle if the model is at fault",
        ) from None
    colour = COLOUR_DIM if head.config.colour_weight > 0 else 0
    wanted = head.projection.in_dim
    if probe.ndim != 2 or probe.shape[1] + colour != wanted:
        given = f"{probe.shape[-1]}-d embeddings" + (f" + {colour} colour bins" if colour else "")
        raise BundleError(
            f"{bundle.root / HEAD}: the head reads {wanted}-d input but the model gives {given}",
            hint="the head and the model come from different builds: rebuild the bundle with edge-build",
        )


def open_checked_backend(
    bundle: Bundle, profile: DeviceProfile, head: Head, engine_dir: Path, cleanup: contextlib.ExitStack
) -> tuple[Backend, int]:
    """``open_backend``, closed by ``cleanup``, checked against the input size the bundle was built and
    calibrated for and against the head's input width; (backend, input size)."""
    backend = open_backend(bundle, profile, engine_dir)
    cleanup.callback(backend.close)
    input_size = int(bundle.manifest.get("model", {}).get("input_size") or backend.input_size)
    if backend.input_size != input_size:
        raise BundleError(
            f"{bundle.root / MODEL}: model input is {backend.input_size}, the manifest says {input_size}",
            hint="rebuild the bundle",
        )
    check_head_input(bundle, backend, head)
    return backend, input_size


# --------------------------------------------------------------------------- frames, metrics, publisher


def open_frames(
    frames: Source | None,
    source: str | None,
    camera: Camera,
    state_dir: Path,
    fallback: Callable[[Path, Camera], str] | None,
) -> tuple[Source, str]:
    """The source to read and its URI: ``frames`` when given, else ``source``, else the camera's source, else (a
    camera with an empty source and no ``source`` given) what ``fallback(state_dir, camera)`` names. Lazy for
    cameras: the first read connects."""
    if frames is not None:
        return frames, frames.describe()
    uri = source if source is not None else camera.source
    if not uri.strip() and source is None and fallback is not None:
        uri = fallback(state_dir, camera)
    return open_source(uri, camera=camera.name, width=camera.width, height=camera.height, fps=camera.fps), uri


def open_metrics(
    bundle: Bundle, profile: DeviceProfile, backend: Backend, skus: list[str], port: int | None, addr: str
) -> RunMetrics:
    """The run's metrics, every per-class series declared, served on ``port`` (None: the profile's; 0: not served).

    The caller closes it.
    """
    metrics = RunMetrics(skus, memory_budget_mib=profile.device.memory_budget_mib)
    metrics.set_backend(
        backend=backend.name,
        providers=",".join(backend.providers),
        bundle_id=bundle.bundle_id,
        variant=str(bundle.manifest.get("variant", {}).get("variant", "")),
        version=edge_runtime.__version__,
    )
    metrics.up_since.set(time.time())
    metrics.serve(profile.metrics.port if port is None else port, addr)
    return metrics


def open_publisher(
    profile: DeviceProfile,
    state_dir: Path,
    cleanup: contextlib.ExitStack,
    *,
    publish: bool,
    host: str | None,
    port: int | None,
    device_id: str,
    camera: Camera,
    status_fields: dict[str, Any],
    reconnect_s: float | None = None,
) -> Publisher:
    """The MQTT publisher over the durable outbox in ``state_dir`` (closed by ``cleanup``); a NullPublisher when
    ``publish`` is False. Not started. ``reconnect_s`` retries a lost connection that often instead of with
    backoff."""
    if not publish:
        return NullPublisher()
    outbox = Outbox.from_profile(profile, state_dir)
    cleanup.callback(outbox.close)
    leftover = outbox.depth
    if leftover:
        log.info("outbox holds %d message(s) from an earlier run; they are sent first", leftover)
    extra: dict[str, Any] = {}
    if len(profile.cameras) > 1:
        # Two cameras of one device under one client id would keep kicking each other off the broker.
        extra["client_id"] = f"{profile.mqtt.topic_prefix}-{device_id}-{camera.name}"
    if reconnect_s is not None:
        extra.update(reconnect_min_s=reconnect_s, reconnect_max_s=reconnect_s)
    return MqttPublisher.from_profile(
        profile, outbox, host=host, port=port, device_id=device_id, status_fields=status_fields, **extra
    )


@contextlib.contextmanager
def outbox_delivered_on_refusal(
    profile: DeviceProfile,
    state_dir: Path,
    *,
    publish: bool,
    timeout_s: float,
    host: str | None,
    port: int | None,
    device_id: str,
    camera: Camera,
    status_fields: dict[str, Any],
) -> Iterator[None]:
    """Around startup steps whose errors keep the service down (exit 2 or 3: the unit's
    ``RestartPreventExitStatus``, e.g. a camera that cannot be opened): before such an error ends the run, the
    messages an earlier run left in the outbox are delivered, for up to ``timeout_s``. Otherwise they would wait
    until someone fixes the camera. Whatever is not acknowledged by then stays in the outbox."""
    try:
        yield
    except EdgeError as exc:
        if publish and exc.exit_code in (EXIT_USAGE, EXIT_INPUT) and (state_dir / OUTBOX_FILENAME).is_file():
            options = {"host": host, "port": port, "device_id": device_id, "camera": camera}
            _deliver_leftovers(profile, state_dir, timeout_s, options, status_fields)
        raise


def _deliver_leftovers(
    profile: DeviceProfile, state_dir: Path, timeout_s: float, options: dict[str, Any], fields: dict[str, Any]
) -> None:
    with contextlib.ExitStack() as cleanup:
        try:
            # Retried every DRAIN_RETRY_S: this is a drain, with no backoff to grow.
            publisher = open_publisher(
                profile, state_dir, cleanup, publish=True, status_fields=fields, reconnect_s=DRAIN_RETRY_S, **options
            )
        except EdgeError as exc:  # the outbox itself cannot be opened: nothing to deliver
            log.warning("cannot deliver the outbox before exiting: %s", exc)
            return
        left = publisher.outbox_stats().depth
        if not left:
            return
        log.warning(
            "cannot start (see below); first delivering the %d message(s) left in %s, for up to %g s",
            left,
            publisher.outbox_path,
            timeout_s,
        )
        publisher.start()
        cleanup.callback(publisher.close, publish_offline=True, timeout_s=1.0)
        deadline = time.monotonic() + max(0.0, timeout_s)
        while not publisher.fatal_error and time.monotonic() < deadline:
            if publisher.flush(min(POLL_S, max(0.0, deadline - time.monotonic()))):
                log.info("delivered the outbox (%d message(s))", left)
                return
        left = publisher.outbox_stats().depth
        why = f"the broker refused us: {publisher.fatal_error}" if publisher.fatal_error else "not acknowledged in time"
        log.warning("%d message(s) stay in %s (%s)", left, publisher.outbox_path, why)


def await_broker(publisher: Publisher, timeout_s: float, where: str) -> None:
    """The broker's verdict at startup: refused credentials end the run now (AuthError), an absent broker does
    not (messages wait in the outbox; logged)."""
    if publisher.wait_connected(timeout_s):
        return
    try:
        publisher.raise_if_fatal()
    except MqttAuthError as exc:
        raise AuthError(exc.message, hint=exc.hint) from None
    log.warning("MQTT broker %s not reachable yet; messages wait in the outbox (%s)", where, publisher.outbox_path)


def status_fields(bundle: Bundle, backend: Backend, camera: Camera, uri: str) -> dict[str, Any]:
    """What the retained ``edge.status/1`` message says about this instance besides its state."""
    return {
        "bundle_id": bundle.bundle_id,
        "backend": backend.name,
        "camera": camera.name,
        "source": redact_uri(uri),
        "version": edge_runtime.__version__,
    }
