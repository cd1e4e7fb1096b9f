"""The engine cache: keys, sidecars, verification, atomic writes and the cross-process build lock.

Engines are specific to the TensorRT version, the GPU and the build settings, so they are built on the device
and cached in the device's engine folder (``backends.base.default_engine_dir``), keyed by ``engine_cache_key()``:
sha256 of the model bytes, TensorRT
version, GPU name, compute capability, precision and maximum batch. Each engine has a JSON sidecar with the key
fields and the engine's own sha256; a cached engine whose sidecar is missing, names another key, or whose bytes
do not hash to the recorded sha256, or that TensorRT cannot deserialise, is rebuilt (and the log says why).
Nothing here needs TensorRT or a GPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SIDECAR_SCHEMA = "edge.trt-engine/1"
KEY_SCHEMA = 1


def _cc_text(compute_capability: str | tuple[int, int]) -> str:
    if isinstance(compute_capability, tuple):
        return f"{int(compute_capability[0])}.{int(compute_capability[1])}"
    return str(compute_capability)


def engine_key_fields(
    model_sha256: str,
    trt_version: str,
    gpu_name: str,
    compute_capability: str | tuple[int, int],
    precision: str,
    max_batch: int,
) -> dict[str, Any]:
    """The normalised fields an engine depends on (also stored in its sidecar)."""
    return {
        "schema": KEY_SCHEMA,
        "model_sha256": str(model_sha256).lower(),
        "trt_version": str(trt_version),
        "gpu_name": str(gpu_name).strip(),
        "compute_capability": _cc_text(compute_capability),
        "precision": str(precision),
        "max_batch": int(max_batch),
    }


def engine_cache_key(
    model_sha256: str,
    trt_version: str,
    gpu_name: str,
    compute_capability: str | tuple[int, int],
    precision: str,
    max_batch: int,
) -> str:
    """sha256 (hex) of the canonical JSON of the key fields: stable, and different when any field differs."""
    fields = engine_key_fields(model_sha256, trt_version, gpu_name, compute_capability, precision, max_batch)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def engine_cache_path(engine_dir: Path, key: str) -> Path:
    return Path(engine_dir) / f"trt-{key}.engine"


def sidecar_path(engine_path: Path) -> Path:
    return engine_path.with_suffix(".json")


@dataclass(frozen=True)
class CacheCheck:
    """Whether a cached engine may be used; ``reason`` says why (not), ``engine`` holds its verified bytes."""

    usable: bool
    reason: str
    engine: bytes | None = None


def check_cached_engine(path: Path, key: str) -> CacheCheck:
    """Verify a cached engine against its sidecar: schema, key and the sha256 of the engine bytes."""
    if not path.is_file():
        return CacheCheck(False, f"no cached engine at {path}")
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return CacheCheck(False, f"cached engine {path.name} has no sidecar {side.name}")
    except (OSError, ValueError) as exc:
        return CacheCheck(False, f"sidecar {side.name} is unreadable ({type(exc).__name__})")
    if not isinstance(meta, dict) or meta.get("schema") != SIDECAR_SCHEMA:
        return CacheCheck(False, f"sidecar {side.name} is not a {SIDECAR_SCHEMA} record")
    if meta.get("key") != key:
        return CacheCheck(False, f"sidecar {side.name} is for key {str(meta.get('key'))[:12]}…, not {key[:12]}…")
    try:
        data = path.read_bytes()
    except OSError as exc:
        return CacheCheck(False, f"cached engine {path.name} is unreadable ({exc.strerror or exc})")
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta.get("engine_sha256"):
        return CacheCheck(False, f"cached engine {path.name} does not match its recorded sha256 (corrupt or altered)")
    return CacheCheck(True, f"cached engine {path.name} verified (sha256 {digest[:12]}…)", data)


def load_cached_engine(path: Path, key: str, deserialize: Callable[[bytes], T | None]) -> tuple[T | None, str]:
    """The deserialised cached engine, or None and the reason it must be rebuilt."""
    check = check_cached_engine(path, key)
    if not check.usable or check.engine is None:
        return None, check.reason
    try:
        engine = deserialize(check.engine)
    except Exception as exc:  # TensorRT raises or returns None depending on version
        return None, f"TensorRT could not deserialise cached engine {path.name} ({type(exc).__name__}: {exc})"
    if engine is None:
        return None, f"TensorRT could not deserialise cached engine {path.name} (other TensorRT build or GPU?)"
    return engine, check.reason


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, fsync it and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_cached_engine(path: Path, key: str, fields: dict[str, Any], engine: bytes, build_seconds: float) -> None:
    """Store an engine and then its sidecar, each atomically (a crash leaves no sidecar for a partial engine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar_path(path).unlink(missing_ok=True)
    atomic_write(path, engine)
    meta = {
        "schema": SIDECAR_SCHEMA,
        "key": key,
        "fields": fields,
        "engine_sha256": hashlib.sha256(engine).hexdigest(),
        "engine_bytes": len(engine),
        "build_seconds": round(float(build_seconds), 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write(sidecar_path(path), (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode("utf-8"))


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """One engine build per key at a time across processes (two camera instances start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def timing_cache_path(engine_dir: Path, trt_version: str, compute_capability: str) -> Path:
    """TensorRT's timing cache next to the engines, one per TensorRT version and compute capability."""
    return Path(engine_dir) / f"timing-trt{trt_version}-sm{compute_capability}.cache"
