"""The profile schema: pydantic v2 models, one per TOML table, every one ``extra="forbid"`` and frozen.

The field descriptions are the reference for profile authors (device_profiles/dev-cpu.toml shows every table
with comments). Validation is strict (TOML is typed, so ``port = "1883"`` is an error, not a silent conversion)
and infinities/NaN are rejected for every float. Reading files, ``extends`` and error reporting live in
loader.py and problems.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    FiniteFloat,
    PrivateAttr,
    ValidationInfo,
    field_validator,
)

from edge_runtime.profile.fields import MODEL_CONFIG, NAME_PATTERN, Box
from edge_runtime.profile.scene import Scene, check_scene

# The one top-level key that is not a table of the schema: the parent profile, removed before validation.
EXTENDS_KEY = "extends"

Precision = Literal["fp32", "fp16", "int8"]
BackendName = Literal["tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda", "onnxruntime-cpu"]
InputSize = Annotated[int, Field(ge=96, le=512, multiple_of=32)]


def _unique(values: list[Any]) -> list[Any]:
    seen: set[Any] = set()
    dupes: list[Any] = []
    for v in values:
        if v in seen:
            dupes.append(v)
        else:
            seen.add(v)
    if dupes:
        raise ValueError(f"duplicate entries: {', '.join(map(str, dict.fromkeys(dupes)))}")
    return values


def _all_precisions() -> list[Precision]:
    return ["fp32", "fp16", "int8"]


class Device(BaseModel):
    """What the device is and how much memory the recognition service may use."""

    model_config = MODEL_CONFIG

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Device class name (1-64 chars of A-Z a-z 0-9 . _ -); the default MQTT device id.",
    )
    platform: str = Field(min_length=1, description="Hardware platform label, e.g. 'jetson-orin-nano-8gb'.")
    arch: Literal["x86_64", "aarch64"] = Field(description="CPU architecture the engines are built for.")
    memory_budget_mib: int = Field(
        ge=16,
        le=1_048_576,
        description="Memory (MiB) the recognition service may use: model, engine workspace, table, buffers.",
    )
    min_headroom: FiniteFloat = Field(
        default=0.20,
        ge=0,
        lt=0.95,
        description="Fraction of the budget that must stay free at peak (a variant using more does not fit).",
    )


class Backend(BaseModel):
    """Inference backends, precisions and input sizes the build may choose from."""

    model_config = MODEL_CONFIG

    prefer: list[BackendName] = Field(
        min_length=1, description="Backends in order of preference; the first one available on the device is used."
    )
    precisions: list[Precision] = Field(min_length=1, description="Backbone precisions worth building for this device.")
    input_sizes: list[InputSize] = Field(
        min_length=1, description="Backbone input sizes (96..512, multiples of 32) worth building."
    )
    table_precisions: list[Precision] = Field(
        default_factory=_all_precisions,
        min_length=1,
        description="Precisions the prototype table may be stored in.",
    )
    max_latency_ms: FiniteFloat = Field(gt=0, description="Per-crop latency ceiling (ms); slower variants do not fit.")
    threads: int = Field(
        default=0,
        ge=0,
        le=64,
        description=(
            "CPU threads for CPU backends; 0 = all cores (lowest latency). cores - 1 leaves one to edge-run's other"
            " threads: the same frame rate for about a quarter less CPU on a 2-core host."
        ),
    )
    allow_fallback: bool = Field(
        default=True, description="Fall back to the next backend in `prefer` if one fails to load."
    )
    embedding_output: str = Field(
        default="auto",
        min_length=1,
        description=(
            "Name of the backbone's embedding output tensor; 'auto' = 'embedding_multi' (the default backbone's"
            " multi-layer embedding) when the model has it, else 'embedding'."
        ),
    )
    calibration_images: int = Field(
        default=100, ge=8, le=2000, description="Catalogue images used to calibrate int8 variants."
    )

    @field_validator("prefer", "precisions", "input_sizes", "table_precisions")
    @classmethod
    def _no_duplicates(cls, values: list[Any]) -> list[Any]:
        return _unique(values)


class Camera(BaseModel):
    """One video source."""

    model_config = MODEL_CONFIG

    name: str = Field(pattern=NAME_PATTERN, description="Camera name, unique within the profile; used in topics.")
    source: str = Field(
        description="GStreamer/OpenCV source: csi://N, rtsp://..., /dev/videoN or a file; '' = the demo video."
    )
    width: int = Field(default=1280, gt=0, le=16384, description="Capture width in pixels.")
    height: int = Field(default=720, gt=0, le=16384, description="Capture height in pixels.")
    fps: FiniteFloat = Field(default=30.0, gt=0, description="Capture frame rate.")


class Regions(BaseModel):
    """Where in a frame to look for products."""

    model_config = MODEL_CONFIG

    mode: Literal["full", "fixed", "detector"] = Field(
        default="full",
        description="'full': the whole frame is one region; 'fixed': the boxes in `fixed`; 'detector': run a model.",
    )
    fixed: list[Box] = Field(
        default_factory=list,
        validate_default=True,
        description="Fixed regions as [x, y, w, h] in capture pixels (mode 'fixed').",
    )
    detector_model: str | None = Field(
        default=None, validate_default=True, description="Path to the region detector model (mode 'detector')."
    )
    detector_score: FiniteFloat = Field(default=0.5, ge=0, le=1, description="Minimum detector score for a region.")
    max_regions: int = Field(default=16, ge=1, le=256, description="At most this many regions per frame.")

    @field_validator("fixed")
    @classmethod
    def _fixed_needs_boxes(cls, value: list[list[int]], info: ValidationInfo) -> list[list[int]]:
        if info.data.get("mode") == "fixed" and not value:
            raise ValueError('mode = "fixed" needs at least one [x, y, w, h] box')
        return value

    @field_validator("detector_model")
    @classmethod
    def _detector_needs_model(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("mode") == "detector" and not value:
            raise ValueError('mode = "detector" needs detector_model')
        return value


class Sampler(BaseModel):
    """Motion-gated frame sampling: a slow idle rate, a fast rate while things move."""

    model_config = MODEL_CONFIG

    enabled: bool = Field(default=True, description="Gate frames on motion; off = process every captured frame.")
    idle_fps: FiniteFloat = Field(default=2.0, gt=0, description="Frames per second processed when nothing moves.")
    active_fps: FiniteFloat = Field(
        default=15.0, gt=0, validate_default=True, description="Frames per second processed while motion is seen."
    )
    motion_threshold: FiniteFloat = Field(
        default=0.02, ge=0, le=1, description="Fraction of changed pixels that counts as motion."
    )

    @field_validator("active_fps")
    @classmethod
    def _active_not_below_idle(cls, value: float, info: ValidationInfo) -> float:
        idle = info.data.get("idle_fps")
        if idle is not None and value < idle:
            raise ValueError(f"active_fps ({value:g}) must be >= idle_fps ({idle:g})")
        return value


class Mqtt(BaseModel):
    """The uplink to the store broker."""

    model_config = MODEL_CONFIG

    host: str = Field(default="127.0.0.1", min_length=1, description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (1883 plain, 8883 TLS by convention).")
    topic_prefix: str = Field(default="edge", min_length=1, description="First topic level: PREFIX/DEVICE_ID/...")
    device_id: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Device id in topics; unset = device.name. With several cameras each edge-run appends -CAMERA.",
    )
    qos: Literal[0, 1, 2] = Field(default=1, description="MQTT quality of service for published messages.")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive interval in seconds.")
    tls_ca_file: str | None = Field(default=None, description="CA bundle to verify the broker; set = use TLS.")
    tls_cert_file: str | None = Field(default=None, description="Client certificate (mutual TLS); needs tls_key_file.")
    tls_key_file: str | None = Field(
        default=None, validate_default=True, description="Client private key (mutual TLS); needs tls_cert_file."
    )
    credentials_file: str | None = Field(
        default=None, description="File holding 'username:password' for the broker; kept out of the profile."
    )
    uplink_bytes_per_s: int = Field(
        default=250_000,
        gt=0,
        description="Uplink cap, payload+topic bytes/s (average; 1 s burst); held-back messages wait in the outbox.",
    )
    crop_max_side: int = Field(
        default=320, ge=32, le=2048, description="Published crops are scaled to this longer side."
    )
    jpeg_quality: int = Field(default=80, ge=10, le=100, description="JPEG quality of published crops.")
    publish_crops: bool = Field(default=True, description="Publish crops of unknown/uncertain items for review.")

    @field_validator("topic_prefix")
    @classmethod
    def _no_wildcards(cls, value: str) -> str:
        if re.search(r"[#+\s]", value) or value.startswith("/") or value.endswith("/"):
            raise ValueError("topic_prefix must not contain '#', '+' or spaces, nor start or end with '/'")
        return value

    @field_validator("tls_key_file")
    @classmethod
    def _cert_and_key_together(cls, value: str | None, info: ValidationInfo) -> str | None:
        cert = info.data.get("tls_cert_file")
        if bool(cert) != bool(value):
            raise ValueError("tls_cert_file and tls_key_file must be set together (mutual TLS) or both left unset")
        return value


class Outbox(BaseModel):
    """Store-and-forward queue for messages while the broker is unreachable."""

    model_config = MODEL_CONFIG

    max_mib: FiniteFloat = Field(default=64, gt=0, description="Disk the outbox may use; oldest messages go first.")
    ttl_hours: FiniteFloat = Field(default=72, gt=0, description="Messages older than this are dropped.")


class Metrics(BaseModel):
    """Prometheus metrics endpoint."""

    model_config = MODEL_CONFIG

    port: int = Field(default=9108, ge=0, le=65535, description="HTTP port for /metrics; 0 disables the endpoint.")


class Routing(BaseModel):
    """How recognitions are routed: accepted, sent for verification, or treated as unknown."""

    model_config = MODEL_CONFIG

    accept_precision: FiniteFloat = Field(
        default=0.98, ge=0.5, le=1, description="Target precision of auto-accepted recognitions (sets the threshold)."
    )
    accept_confidence: FiniteFloat = Field(
        default=0.95,
        ge=0,
        lt=1,
        description=(
            "The build fits the accept rule so that the one-sided lower confidence bound of its cross-fitted"
            " precision reaches accept_precision (catalogue photos flatter the head; store photos measured lower)."
            " 0 = the point estimate."
        ),
    )
    ood_keep: FiniteFloat = Field(
        default=0.95, ge=0.5, le=1, description="Fraction of in-catalogue items the out-of-distribution gate keeps."
    )
    verify_band: FiniteFloat = Field(
        default=0.15, ge=0, le=1, description="Width of the score band below acceptance that goes to verification."
    )
    unknown_loop: bool = Field(default=True, description="Send unknown items back for labelling (the unknown loop).")


class HeadFit(BaseModel):
    """How edge-build fits the recognition head on the catalogue."""

    model_config = MODEL_CONFIG

    augment_views: int = Field(
        default=2,
        ge=0,
        le=8,
        description=(
            "Augmented views (crop, tilt, lighting, mirror) of each catalogue image embedded to fit the head;"
            " 0 = photos only. Costs build time (one more embedding pass per view), nothing at run time."
        ),
    )
    activation_clip_percentile: FiniteFloat = Field(
        default=90.0,
        ge=0,
        le=100,
        description=(
            "Clip the backbone's pooled head activations at this percentile of catalogue activations before the"
            " multi-layer embedding normalises them (ReAct); 0 = off. Default backbone only; free at run time."
        ),
    )
    max_projection_dim: int = Field(
        default=0,
        ge=0,
        description=(
            "Most directions the head's LDA projection keeps; 0 = chosen by the build (from 257 SKUs on, the"
            " smallest of 128/256/512 or all that is as accurate out of fold as the best). The"
            " projection and the prototype table shrink with it: time and memory per region at thousands of SKUs."
        ),
    )
    colour: Literal["auto", "on", "off"] = Field(
        default="auto",
        description=(
            "Append a hue-saturation histogram of each region to its embedding (siblings often differ mostly in"
            " colour). auto = keep it when it raises held-out top-1 on the catalogue; off for monochrome cameras."
            " Costs 0.2-0.3 ms per region at run time."
        ),
    )


class Train(BaseModel):
    """Fine-tuning the backbone on the catalogue at build time (the ``[train]`` extra: torch, packaging host only).

    The bundle and the device never need torch: the fine-tuned weights are exported to the same ONNX contract.
    """

    model_config = MODEL_CONFIG

    enabled: Literal["auto"] | bool = Field(
        default="auto",
        description=(
            "Fine-tune the default backbone's last stages on the catalogue. auto = when torch is importable"
            " (pip install edge_runtime[train]); true = required (edge-build exits 2 without torch); false = the"
            " frozen ImageNet backbone. Custom --model backbones are never fine-tuned."
        ),
    )
    first_trained_stage: int = Field(
        default=6,
        ge=4,
        le=6,
        description=(
            "EfficientNet-Lite0 stages from this one on (and the 1x1 head conv) are trained; earlier stages stay"
            " frozen and are computed once per view. 6 = the last stage (measured: stage 5 on costs 3-5x the training"
            " time for no held-out gain, benchmarks/RESULTS.md)."
        ),
    )
    epochs: int = Field(default=12, ge=1, le=200, description="Passes over the catalogue (one random view each).")
    views: int = Field(
        default=4, ge=0, le=16, description="Random training views per catalogue image, besides its evaluation crop."
    )
    learning_rate: FiniteFloat = Field(default=3e-4, gt=0, le=1.0, description="AdamW peak rate (cosine schedule).")
    weight_decay: FiniteFloat = Field(default=0.05, ge=0, le=1.0, description="AdamW decoupled weight decay.")
    label_smoothing: FiniteFloat = Field(default=0.1, ge=0, le=0.3, description="Cross-entropy label smoothing.")
    batch_size: int = Field(default=64, ge=4, le=1024, description="Views per training step.")
    batch_norm: Literal["frozen", "train"] = Field(
        default="frozen",
        description="frozen = keep the pretrained batch-norm statistics (stable on small catalogues); train = update.",
    )
    objective: Literal["softmax", "cosface"] = Field(
        default="cosface",
        description=(
            "softmax = cross-entropy on a linear classifier of the pooled features (after a linear probe);"
            " cosface = cross-entropy on cosines of the multi-layer embedding to learned class centres, with a"
            " margin (the geometry the head reads)."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where torch trains: auto = a CUDA GPU when torch sees one, else the CPU."
    )
    calibration_holdout: FiniteFloat = Field(
        default=0.15,
        ge=0.05,
        le=0.4,
        description=(
            "Share of SKUs a second, calibration model is trained without (together with one cluster of"
            " look-alike photos of every other SKU): the head's temperature, OOD gate and accept rule are fitted"
            " on what that model never saw, never on images a model trained on."
        ),
    )


class Readiness(BaseModel):
    """Limits of the readiness checklist that edge-build runs before shipping a bundle."""

    model_config = MODEL_CONFIG

    imbalance_max: FiniteFloat = Field(
        default=10.0, ge=1, description="Largest allowed ratio of images per SKU, most to fewest."
    )
    near_duplicate_percentile: FiniteFloat = Field(
        default=5.0, ge=0, le=100, description="Percentile of inter-SKU distances used to flag near-duplicate SKUs."
    )
    change_rate_max_per_quarter: FiniteFloat = Field(
        default=0.05, ge=0, le=1, description="Largest fraction of the catalogue expected to change per quarter."
    )
    headroom_min: FiniteFloat = Field(
        default=0.20, ge=0, lt=1, description="Memory headroom the chosen variant must leave (fraction of budget)."
    )
    ood_detection_min: FiniteFloat = Field(
        default=0.70, ge=0, le=1, description="Minimum share of out-of-catalogue items the OOD gate must catch."
    )
    accuracy_spread_max: FiniteFloat = Field(
        default=15.0, ge=0, le=100, description="Largest gap (percentage points) in accuracy between SKU groups."
    )
    ece_max: FiniteFloat = Field(default=0.05, ge=0, le=1, description="Largest expected calibration error allowed.")
    planned_catalogue_size: int = Field(
        default=1000, ge=1, description="SKUs the device must eventually hold; budgets are checked at this size."
    )


class Health(BaseModel):
    """Liveness: the systemd watchdog and frame-stall detection."""

    model_config = MODEL_CONFIG

    watchdog_s: FiniteFloat = Field(default=30, gt=0, description="systemd watchdog interval in seconds.")
    frame_stall_s: FiniteFloat = Field(
        default=10, gt=0, description="A camera with no frame for this long is reported stalled."
    )


class Security(BaseModel):
    """Bundle signatures: which bundles this device class may run."""

    model_config = MODEL_CONFIG

    require_signature: bool = Field(
        default=False, description="Refuse bundles without a valid Ed25519 signature (signature.ed25519)."
    )
    public_key_file: str | None = Field(
        default=None,
        validate_default=True,
        description="PEM Ed25519 public key on the device that bundles must be signed with; "
        "needed when require_signature is true.",
    )

    @field_validator("public_key_file")
    @classmethod
    def _key_when_required(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("require_signature") and not value:
            raise ValueError("require_signature = true needs public_key_file (the device's copy of the public key)")
        return value


class DeviceProfile(BaseModel):
    """A resolved, merged and validated device profile: one field per TOML table.

    Build one with ``load_profile`` (files, ``extends``, every problem reported) or in code with
    ``DeviceProfile.model_validate(dict)``. Instances are frozen. Besides the schema fields it carries
    ``source_files`` (the extends chain, most-derived first), which is metadata and not part of the TOML or
    the hash; ``content_hash()`` identifies the resolved profile in bundle manifests.
    """

    model_config = MODEL_CONFIG

    device: Device = Field(description="What the device is and its memory budget.")
    backend: Backend = Field(description="Backends, precisions and input sizes to choose from.")
    cameras: list[Camera] = Field(min_length=1, description="Video sources; names must be unique.")
    regions: Regions = Field(default_factory=Regions, description="Where in a frame to look.")
    sampler: Sampler = Field(default_factory=Sampler, description="Motion-gated frame sampling.")
    mqtt: Mqtt = Field(default_factory=Mqtt, description="Uplink to the store broker.")
    outbox: Outbox = Field(default_factory=Outbox, description="Store-and-forward queue.")
    metrics: Metrics = Field(default_factory=Metrics, description="Prometheus metrics endpoint.")
    routing: Routing = Field(default_factory=Routing, description="Accept / verify / unknown routing.")
    head: HeadFit = Field(default_factory=HeadFit, description="How the recognition head is fitted at build time.")
    train: Train = Field(default_factory=Train, description="Fine-tuning the backbone on the catalogue at build time.")
    readiness: Readiness = Field(default_factory=Readiness, description="Readiness checklist limits.")
    health: Health = Field(default_factory=Health, description="Watchdog and stall detection.")
    security: Security = Field(default_factory=Security, description="Bundle signature policy.")
    scene: Scene = Field(default_factory=Scene, description="What is published: frames, cart events or shelf slots.")

    _source_files: tuple[Path, ...] = PrivateAttr(default=())

    @field_validator("cameras")
    @classmethod
    def _unique_camera_names(cls, cameras: list[Camera]) -> list[Camera]:
        _unique([c.name for c in cameras])
        return cameras

    @field_validator("scene")
    @classmethod
    def _scene_fits(cls, scene: Scene, info: ValidationInfo) -> Scene:
        return check_scene(scene, info.data)  # profile/scene.py: the checks that read other tables

    @property
    def name(self) -> str:
        """The device class name (``device.name``)."""
        return self.device.name

    @property
    def source_files(self) -> tuple[Path, ...]:
        """The files this profile was read from, most-derived first; () if built in code."""
        return self._source_files

    @property
    def mqtt_device_id(self) -> str:
        """The device id in MQTT topics: ``mqtt.device_id``, else ``device.name``."""
        return self.mqtt.device_id or self.device.name

    def canonical_json(self) -> str:
        """The resolved profile as compact JSON with sorted keys: what ``content_hash`` hashes."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def content_hash(self) -> str:
        """sha256 hex of the canonical JSON; equal for equal resolved profiles whatever files they came from."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()
