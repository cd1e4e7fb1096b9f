"""Native TensorRT backend: an engine built on the device from the bundle's (QDQ) ONNX model, cached and verified.

Optional: ``pip install edge_runtime[tensorrt]`` adds TensorRT and NVIDIA's cuda-python. On a Jetson, TensorRT
comes with JetPack (apt package ``python3-libnvinfer``); a virtual environment sees it only when created with
``--system-site-packages``. pycuda works instead of cuda-python where the image provides it. Nothing here
imports ``tensorrt`` or a CUDA binding at module import time: only the functions that need them do, so the
package imports (and its tests run) on machines without a GPU.

Engines are specific to the TensorRT version, the GPU and the build settings, so they are built on the device
and cached under the state directory, keyed by ``engine_cache_key()``: sha256 of the model bytes, TensorRT
version, GPU name, compute capability, precision and maximum batch. Each engine has a JSON sidecar with the key
fields and the engine's own sha256; a cached engine whose sidecar is missing, names another key, or whose bytes
do not hash to the recorded sha256, or that TensorRT cannot deserialise, is rebuilt (and the log says why).

Build settings: explicit quantisation (the QDQ model's own scales; INT8 is enabled when the network has
Quantize/Dequantize layers, FP16 too so the layers between Q/DQ pairs need not run in fp32), FP16 for fp16
bundles, a workspace of ``TRT_WORKSPACE_FRACTION`` (25 %) of the memory budget, and one optimisation profile for
the batch dimension N: min 1, opt 1, max ``max_batch``. A TensorRT timing cache next to the engines makes
rebuilds after a model change faster.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edge_runtime.backends.base import DEFAULT_MAX_BATCH
from edge_runtime.backends.onnxruntime import MIB, TRT_WORKSPACE_FRACTION
from edge_runtime.errors import ModelError, UsageError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_WORKSPACE_MIB = 256  # when no memory budget is given (TensorRT's own default is the whole GPU)
PROBE_TIMEOUT_S = 60.0  # the first CUDA initialisation on a Jetson can take several seconds
SIDECAR_SCHEMA = "edge.trt-engine/1"
KEY_SCHEMA = 1

TRT_INSTALL_HINT = (
    "pip install edge_runtime[tensorrt] on a JetPack image; JetPack's TensorRT is the apt package "
    "python3-libnvinfer, visible from a venv created with --system-site-packages"
)
CUDA_BINDING_HINT = "pip install cuda-python (in edge_runtime[tensorrt]), or provide pycuda"


class CudaError(UsageError):
    """The GPU runtime refused an operation (no device, out of memory, driver mismatch)."""


# --------------------------------------------------------------------------- probing (in a subprocess)

# Runs in a fresh interpreter: TensorRT's lean runtime wheels import without a GPU but can crash the interpreter
# at teardown, so the child prints one JSON line and leaves with os._exit, and the parent survives anything.
_PROBE_SCRIPT = r"""
import json, os, sys

def done(**out):
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)

try:
    import tensorrt as trt
except ModuleNotFoundError as exc:
    done(stage="import", missing=True, error=str(exc))
except Exception as exc:
    done(stage="import", missing=False, error=f"{type(exc).__name__}: {exc}")
info = {"trt_version": str(getattr(trt, "__version__", "unknown"))}
if not (hasattr(trt, "Builder") and hasattr(trt, "OnnxParser")):
    done(stage="builder", **info)
cudart = None
for name in ("cuda.bindings.runtime", "cuda.cudart"):
    try:
        cudart = __import__(name, fromlist=["_"])
        break
    except Exception:
        pass
try:
    if cudart is not None:
        info["cuda"] = "cuda-python"
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0:
            done(stage="device", error=cudart.cudaGetErrorName(err)[1].decode(), **info)
        if count < 1:
            done(stage="device", error="cudaGetDeviceCount returned 0", **info)
        err, prop = cudart.cudaGetDeviceProperties(0)
        if int(err) != 0:
            done(stage="device", error=cudart.cudaGetErrorName(err)[1].decode(), **info)
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        done(stage="ok", devices=int(count), gpu_name=name.rstrip("\x00").strip(),
             compute_capability=f"{prop.major}.{prop.minor}", **info)
    try:
        import pycuda.driver as drv
    except Exception as exc:
        done(stage="binding", error=f"{type(exc).__name__}: {exc}", **info)
    info["cuda"] = "pycuda"
    drv.init()
    count = drv.Device.count()
    if count < 1:
        done(stage="device", error="no CUDA device", **info)
    dev = drv.Device(0)
    done(stage="ok", devices=int(count), gpu_name=dev.name(),
         compute_capability="%d.%d" % dev.compute_capability(), **info)
except Exception as exc:
    done(stage="device", error=f"{type(exc).__name__}: {exc}", **info)
"""


@dataclass(frozen=True)
class ProbeResult:
    """What the probe subprocess found; ``reason`` is None when the native backend can run here."""

    reason: str | None
    trt_version: str | None = None
    cuda_binding: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None


def run_probe(code: str = _PROBE_SCRIPT, timeout_s: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Run a probe script in a fresh interpreter and interpret its last JSON line (no caching)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(f"the TensorRT probe did not finish within {timeout_s:g} s (a hung GPU driver?)")
    except OSError as exc:
        return ProbeResult(f"the TensorRT probe could not start ({exc})")
    data: dict[str, Any] | None = None
    for line in reversed(proc.stdout.splitlines()):
        with contextlib.suppress(ValueError):
            candidate = json.loads(line)
            if isinstance(candidate, dict):
                data = candidate
                break
    if data is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return ProbeResult(f"the TensorRT probe process failed (exit code {proc.returncode}: {tail})")
    return _interpret(data)


def _interpret(data: dict[str, Any]) -> ProbeResult:
    stage = data.get("stage")
    version = data.get("trt_version")
    error = data.get("error", "")
    if stage == "ok":
        return ProbeResult(None, version, data.get("cuda"), data.get("gpu_name"), data.get("compute_capability"))
    if stage == "import":
        if data.get("missing"):
            return ProbeResult(f"tensorrt is not installed ({TRT_INSTALL_HINT})")
        return ProbeResult(f"tensorrt cannot be imported ({error}); {TRT_INSTALL_HINT}")
    if stage == "builder":
        return ProbeResult(
            f"this TensorRT ({version}) has no builder or ONNX parser (a lean or dispatch runtime only), "
            "so engines cannot be built on this device",
            version,
        )
    if stage == "binding":
        return ProbeResult(f"neither cuda-python nor pycuda is installed ({CUDA_BINDING_HINT})", version)
    return ProbeResult(f"no CUDA device ({error})", version, data.get("cuda"))


_probe_lock = threading.Lock()
_probe_cache: ProbeResult | None = None


def probe_info(*, refresh: bool = False) -> ProbeResult:
    """The probe's result, run once per process (``refresh`` runs it again)."""
    global _probe_cache
    with _probe_lock:
        if _probe_cache is None or refresh:
            _probe_cache = run_probe()
            if _probe_cache.reason is None:
                log.info(
                    "TensorRT %s usable: %s (sm %s) via %s",
                    _probe_cache.trt_version,
                    _probe_cache.gpu_name,
                    _probe_cache.compute_capability,
                    _probe_cache.cuda_binding,
                )
        return _probe_cache


def tensorrt_probe() -> str | None:
    """None when the native TensorRT backend can run here, else why not (probed in a subprocess, cached)."""
    return probe_info().reason


# --------------------------------------------------------------------------- the engine cache (pure parts)


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


def engine_cache_path(state_dir: Path, key: str) -> Path:
    return Path(state_dir) / "engines" / f"trt-{key}.engine"


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


def _atomic_write(path: Path, data: bytes) -> None:
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
    _atomic_write(path, engine)
    meta = {
        "schema": SIDECAR_SCHEMA,
        "key": key,
        "fields": fields,
        "engine_sha256": hashlib.sha256(engine).hexdigest(),
        "engine_bytes": len(engine),
        "build_seconds": round(float(build_seconds), 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _atomic_write(sidecar_path(path), (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def default_state_dir() -> Path:
    """$STATE_DIRECTORY (systemd's StateDirectory=, first entry), else $XDG_STATE_HOME/edge_runtime
    (~/.local/state/edge_runtime)."""
    env = os.environ.get("STATE_DIRECTORY", "")
    if env.strip():
        return Path(env.split(":")[0])
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "edge_runtime"


def workspace_bytes(budget_mib: float | None) -> int:
    mib = DEFAULT_WORKSPACE_MIB if budget_mib is None else max(16, int(budget_mib * TRT_WORKSPACE_FRACTION))
    return mib * MIB


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """One engine build per key at a time across processes (two camera instances start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- CUDA bindings (lazy)


def _import_cudart() -> Any | None:
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (cuda-python >= 12.6) or ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # type: ignore[attr-defined]

        return cudart
    except ImportError:
        return None


class _CudaPython:
    """Device buffers and a stream through NVIDIA's cuda-python runtime bindings; every return code checked."""

    kind = "cuda-python"

    def __init__(self, cudart: Any, device_id: int) -> None:
        self.rt = cudart
        self.device_id = device_id
        self._call("cudaSetDevice", device_id)

    def _call(self, fn: str, *args: Any) -> Any:
        result = getattr(self.rt, fn)(*args)
        err, rest = result[0], tuple(result[1:])
        if err != self.rt.cudaError_t.cudaSuccess:
            name = self.rt.cudaGetErrorName(err)[1]
            name = name.decode() if isinstance(name, bytes) else str(name)
            raise CudaError(
                f"CUDA {fn} failed: {name}",
                hint="check the GPU (nvidia-smi or tegrastats), free GPU memory, or lower the memory budget",
            )
        return rest[0] if len(rest) == 1 else (rest or None)

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        self._call("cudaSetDevice", self.device_id)  # the runtime's device choice is per thread
        yield

    def device_info(self) -> tuple[str, str]:
        prop = self._call("cudaGetDeviceProperties", self.device_id)
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}"

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", int(nbytes)))

    def free(self, ptr: int) -> None:
        self._call("cudaFree", ptr)

    def stream(self) -> Any:
        return self._call("cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def htod(self, dst: int, host: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", dst, host.ctypes.data, host.nbytes, kind, stream)

    def dtoh(self, host: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", host.ctypes.data, src, host.nbytes, kind, stream)

    def synchronize(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", stream)

    def destroy(self, stream: Any) -> None:
        self._call("cudaStreamDestroy", stream)


class _PyCuda:
    """The same buffer path with pycuda (driver API, the device's primary context, shared with TensorRT).

    Copies are synchronous here (pycuda's async copies want page-locked host memory); the engine still runs on
    its own stream, which is synchronised before the result is copied back.
    """

    kind = "pycuda"

    def __init__(self, drv: Any, device_id: int) -> None:
        self.drv = drv
        self.device_id = device_id
        self._allocs: dict[int, Any] = {}
        try:
            drv.init()
            self.dev = drv.Device(device_id)
            self.ctx = self.dev.retain_primary_context()
        except drv.Error as exc:
            raise CudaError(f"pycuda cannot open CUDA device {device_id}: {exc}") from None

    def _guard(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except self.drv.Error as exc:
            raise CudaError(f"CUDA {what} failed (pycuda): {exc}", hint="check the GPU and free GPU memory") from None

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        self._guard("context push", self.ctx.push)
        try:
            yield
        finally:
            self.drv.Context.pop()

    def device_info(self) -> tuple[str, str]:
        major, minor = self.dev.compute_capability()
        return str(self.dev.name()), f"{major}.{minor}"

    def malloc(self, nbytes: int) -> int:
        alloc = self._guard("mem_alloc", self.drv.mem_alloc, int(nbytes))
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        alloc = self._allocs.pop(ptr, None)
        if alloc is not None:
            self._guard("free", alloc.free)

    def stream(self) -> Any:
        return self._guard("Stream", self.drv.Stream)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def htod(self, dst: int, host: np.ndarray, stream: Any) -> None:
        self._guard("memcpy_htod", self.drv.memcpy_htod, dst, host)

    def dtoh(self, host: np.ndarray, src: int, stream: Any) -> None:
        self._guard("memcpy_dtoh", self.drv.memcpy_dtoh, host, src)

    def synchronize(self, stream: Any) -> None:
        self._guard("stream synchronize", stream.synchronize)

    def destroy(self, stream: Any) -> None:
        del stream


def open_cuda(device_id: int = 0) -> _CudaPython | _PyCuda:
    """cuda-python when installed, else pycuda; UsageError naming both when neither is."""
    cudart = _import_cudart()
    if cudart is not None:
        return _CudaPython(cudart, device_id)
    try:
        import pycuda.driver as drv
    except ImportError:
        raise UsageError(
            "the tensorrt backend needs cuda-python or pycuda and neither is installed", hint=CUDA_BINDING_HINT
        ) from None
    return _PyCuda(drv, device_id)


# --------------------------------------------------------------------------- building (needs TensorRT)


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise UsageError("tensorrt is not installed", hint=TRT_INSTALL_HINT) from None
    return tensorrt


@functools.lru_cache(maxsize=1)
def _trt_logger(trt: Any) -> Any:
    # One logger per process: TensorRT complains when the builder and runtime get different ones.
    return trt.Logger(trt.Logger.WARNING)


def _has_qdq(trt: Any, network: Any) -> bool:
    kinds = {trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE}
    return any(network.get_layer(i).type in kinds for i in range(network.num_layers))


def _timing_cache_path(state_dir: Path, trt_version: str, compute_capability: str) -> Path:
    return Path(state_dir) / "engines" / f"timing-trt{trt_version}-sm{compute_capability}.cache"


def _build_serialized(
    trt: Any,
    model_path: Path,
    precision: str | None,
    budget_mib: float | None,
    max_batch: int,
    timing_cache: Path | None,
) -> tuple[bytes, float]:
    """Parse the ONNX model, configure the builder, build; (engine bytes, seconds spent in the build)."""
    logger = _trt_logger(trt)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # pybind11 raises when createInferBuilder returns null (no usable GPU)
        raise CudaError(f"TensorRT could not create a builder ({exc})", hint="check the GPU and its driver") from None
    major = int(str(trt.__version__).split(".")[0])
    # TensorRT 10: explicit batch is the only mode (flag 0, and not STRONGLY_TYPED, so the precision flags
    # below apply). TensorRT 8.5/8.6 (JetPack 5) still needs the EXPLICIT_BATCH flag.
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(
            f"{model_path}: TensorRT's ONNX parser refused the model ({'; '.join(errors[:3]) or 'no detail'})",
            hint="int8 models for TensorRT must be symmetric s8s8 QDQ (build for a TensorRT profile)",
        )
    if network.num_inputs != 1:
        raise ModelError(f"{model_path}: expected one image input, TensorRT sees {network.num_inputs}")
    image = network.get_input(0)
    shape = tuple(int(d) for d in image.shape)
    if len(shape) != 4 or any(d < 1 for d in shape[1:]):
        raise ModelError(f"{model_path}: input {image.name} must be [N,3,S,S] with fixed C, S; found {shape}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes(budget_mib))
    qdq = _has_qdq(trt, network)
    if precision == "int8" and not qdq:
        raise ModelError(
            f"{model_path}: the bundle says int8 but the model has no Quantize/Dequantize nodes",
            hint="TensorRT builds int8 only from explicitly quantised (QDQ) models; rebuild the bundle",
        )
    if qdq:
        config.set_flag(trt.BuilderFlag.INT8)
    if qdq or precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if shape[0] < 1:  # dynamic batch: one profile, N from 1 to max_batch, tuned for single crops
        profile = builder.create_optimization_profile()
        tail = shape[1:]
        profile.set_shape(image.name, (1, *tail), (1, *tail), (max_batch, *tail))
        config.add_optimization_profile(profile)
    elif shape[0] != max_batch:
        log.warning("%s has a fixed batch of %d; batches are split or padded to it", model_path, shape[0])

    cache = None
    if timing_cache is not None:
        blob = b""
        with contextlib.suppress(OSError):
            blob = timing_cache.read_bytes()
        cache = config.create_timing_cache(blob)
        if cache is None or not config.set_timing_cache(cache, False):
            log.info("TensorRT timing cache %s not usable; building without it", timing_cache)
            cache = None

    log.info(
        "building TensorRT %s engine for %s (%s, int8=%s, workspace %d MiB, batch 1..%d)",
        trt.__version__,
        model_path.name,
        precision or "precision from the model",
        qdq,
        workspace_bytes(budget_mib) // MIB,
        max_batch,
    )
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise ModelError(f"{model_path}: TensorRT could not build an engine (its log above says why)")
    if cache is not None and timing_cache is not None:
        with contextlib.suppress(Exception):
            _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized), seconds


def _ensure_engine(
    trt: Any,
    cuda: _CudaPython | _PyCuda,
    model_path: Path,
    state_dir: Path,
    precision: str | None,
    budget_mib: float | None,
    max_batch: int,
) -> tuple[Path, float, Any, Any]:
    """(engine path, build seconds or 0.0 when a verified cached engine was reused, engine, runtime)."""
    try:
        model_bytes = Path(model_path).read_bytes()
    except OSError as exc:
        raise ModelError(f"{model_path}: cannot read the model ({exc.strerror or exc})") from None
    gpu_name, cc = cuda.device_info()
    fields = engine_key_fields(
        hashlib.sha256(model_bytes).hexdigest(), trt.__version__, gpu_name, cc, precision or "auto", max_batch
    )
    key = engine_cache_key(**{k: v for k, v in fields.items() if k != "schema"})
    path = engine_cache_path(state_dir, key)
    runtime = trt.Runtime(_trt_logger(trt))
    engine, why = load_cached_engine(path, key, runtime.deserialize_cuda_engine)
    if engine is not None:
        log.info("TensorRT engine reused: %s", why)
        return path, 0.0, engine, runtime
    with _build_lock(path):
        engine, why_now = load_cached_engine(path, key, runtime.deserialize_cuda_engine)
        if engine is not None:  # another process built it while this one waited for the lock
            log.info("TensorRT engine reused: %s", why_now)
            return path, 0.0, engine, runtime
        log.info("TensorRT engine (re)build: %s", why)
        data, seconds = _build_serialized(
            trt, Path(model_path), precision, budget_mib, max_batch, _timing_cache_path(state_dir, trt.__version__, cc)
        )
        write_cached_engine(path, key, fields, data, seconds)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise ModelError(f"{model_path}: TensorRT built an engine it cannot load back")
    log.info("TensorRT engine built in %.1f s: %s (%.1f MiB)", seconds, path, len(data) / MIB)
    return path, seconds, engine, runtime


def build_engine(
    model_path: Path,
    state_dir: Path,
    precision: str | None,
    budget_mib: float | None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> tuple[Path, float]:
    """Build (or verify and reuse) the engine for a model on this device: (engine path, build seconds).

    The build seconds are 0.0 when a verified cached engine was reused. Needs TensorRT and a CUDA device.
    """
    trt = _import_tensorrt()
    cuda = open_cuda()
    with cuda.current():
        path, seconds, engine, runtime = _ensure_engine(
            trt, cuda, Path(model_path), Path(state_dir), precision, budget_mib, max_batch
        )
        del engine, runtime
    return path, seconds


# --------------------------------------------------------------------------- the backend


class TensorRTBackend:
    """Embeds batches with a TensorRT engine: device buffers sized for ``max_batch``, one CUDA stream.

    Not thread-safe: one inference thread uses it (the run pipeline's design). ``close()`` frees the buffers.
    """

    name = "tensorrt"

    def __init__(
        self,
        model: Path,
        *,
        state_dir: Path | None = None,
        precision: str | None = None,
        budget_mib: float | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        embedding_output: str = "embedding",
        device_id: int = 0,
    ) -> None:
        self._ptrs: dict[str, int] = {}
        self._stream: Any = None
        self._context: Any = None
        self._engine: Any = None
        self._runtime: Any = None
        trt = _import_tensorrt()
        self._cuda = open_cuda(device_id)
        with self._cuda.current():
            try:
                self._open(trt, Path(model), state_dir, precision, budget_mib, max(1, int(max_batch)), embedding_output)
            except BaseException:
                self.close()
                raise

    def _open(
        self,
        trt: Any,
        model: Path,
        state_dir: Path | None,
        precision: str | None,
        budget_mib: float | None,
        max_batch: int,
        embedding_output: str,
    ) -> None:
        state = Path(state_dir) if state_dir is not None else default_state_dir()
        self.engine_path, self.build_seconds, self._engine, self._runtime = _ensure_engine(
            trt, self._cuda, model, state, precision, budget_mib, max_batch
        )
        self.providers = (f"TensorRT {trt.__version__}",)
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise CudaError("TensorRT could not create an execution context (out of GPU memory?)")
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1:
            raise ModelError(f"{model}: expected one image input, the engine has {inputs}")
        if embedding_output not in outputs:
            raise ModelError(
                f"{model}: no output named {embedding_output!r} (outputs: {', '.join(outputs)})",
                hint="set backend.embedding_output in the profile to the embedding output's name",
            )
        self._input, self._output = inputs[0], embedding_output
        shape = tuple(int(d) for d in engine.get_tensor_shape(self._input))
        if len(shape) != 4 or shape[2] != shape[3] or shape[2] < 1:
            raise ModelError(f"{model}: input {self._input} must be [N,3,S,S] with a fixed S, found {shape}")
        self.input_size = shape[2]
        self._fixed_batch = shape[0] >= 1
        self.max_batch = shape[0] if self._fixed_batch else int(engine.get_tensor_profile_shape(self._input, 0)[2][0])
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        if not self._context.set_input_shape(self._input, (self.max_batch, *shape[1:])):
            raise ModelError(f"{model}: the engine refuses batch {self.max_batch}")
        # Every I/O tensor needs a device address (logits too): buffers for the largest batch, allocated once.
        for n in names:
            full = tuple(int(d) for d in self._context.get_tensor_shape(n))
            self._ptrs[n] = self._cuda.malloc(max(1, int(np.prod(full))) * self._dtypes[n].itemsize)
            if not self._context.set_tensor_address(n, self._ptrs[n]):
                raise CudaError(f"TensorRT refused the device address of tensor {n}")
        self._stream = self._cuda.stream()
        log.info(
            "TensorRT %s engine %s ready: input %d px, batch 1..%d, %s bindings%s",
            trt.__version__,
            self.engine_path.name,
            self.input_size,
            self.max_batch,
            self._cuda.kind,
            f", built in {self.build_seconds:.1f} s" if self.build_seconds else " (cached)",
        )

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if self._context is None:
            raise UsageError("the tensorrt backend is closed")
        x = np.ascontiguousarray(batch, dtype=self._dtypes[self._input])
        expected = (3, self.input_size, self.input_size)
        if x.ndim != 4 or x.shape[1:] != expected:
            raise ValueError(f"expected a [N,{','.join(map(str, expected))}] batch, got {x.shape}")
        n = x.shape[0]
        if n > self.max_batch:
            parts = [self.embed(x[i : i + self.max_batch]) for i in range(0, n, self.max_batch)]
            return np.concatenate(parts)
        run = x
        if self._fixed_batch and n != self.max_batch:
            run = np.zeros((self.max_batch, *x.shape[1:]), dtype=x.dtype)
            run[:n] = x
        with self._cuda.current():
            if not self._context.set_input_shape(self._input, run.shape):
                raise ValueError(f"the TensorRT engine refuses input shape {run.shape}")
            out = np.empty(
                tuple(int(d) for d in self._context.get_tensor_shape(self._output)), self._dtypes[self._output]
            )
            self._cuda.htod(self._ptrs[self._input], run, self._stream)
            if not self._context.execute_async_v3(self._cuda.stream_handle(self._stream)):
                raise CudaError("TensorRT could not enqueue the inference")
            self._cuda.synchronize(self._stream)
            self._cuda.dtoh(out, self._ptrs[self._output], self._stream)
            self._cuda.synchronize(self._stream)
        return np.asarray(out[:n], dtype=np.float32).reshape(n, -1)

    def close(self) -> None:
        """Free the device buffers and the stream, then the context, engine and runtime (idempotent)."""
        cuda = getattr(self, "_cuda", None)
        if cuda is None:
            return
        with contextlib.ExitStack() as stack:
            with contextlib.suppress(Exception):
                stack.enter_context(cuda.current())
            if self._stream is not None:
                with contextlib.suppress(Exception):
                    cuda.synchronize(self._stream)
            for name, ptr in list(self._ptrs.items()):
                try:
                    cuda.free(ptr)
                except Exception as exc:
                    log.warning("could not free the device buffer of %s: %s", name, exc)
            self._ptrs.clear()
            if self._stream is not None:
                with contextlib.suppress(Exception):
                    cuda.destroy(self._stream)
                self._stream = None
            self._context = self._engine = self._runtime = None
