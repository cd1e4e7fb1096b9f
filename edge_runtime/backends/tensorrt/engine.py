"""Engine build and the TensorRT backend: an engine built on the device from the bundle's (QDQ) ONNX model.

Build settings: explicit quantisation (the QDQ model's own scales; INT8 is enabled when the network has
Quantize/Dequantize layers, FP16 too so the layers between Q/DQ pairs need not run in fp32), FP16 for fp16
bundles, a workspace of ``TRT_WORKSPACE_FRACTION`` (25 %) of the memory budget, and one optimisation profile for
the batch dimension N: min 1, opt 1, max ``max_batch``. A TensorRT timing cache next to the engines makes
rebuilds after a model change faster. Engines are cached and verified by cache.py.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends.base import DEFAULT_MAX_BATCH, default_engine_dir
from edge_runtime.backends.onnxruntime import MIB, TRT_WORKSPACE_FRACTION
from edge_runtime.backends.tensorrt.cache import (
    atomic_write,
    build_lock,
    engine_cache_key,
    engine_cache_path,
    engine_key_fields,
    load_cached_engine,
    timing_cache_path,
    write_cached_engine,
)
from edge_runtime.backends.tensorrt.cuda import CudaBinding, CudaError, open_cuda
from edge_runtime.backends.tensorrt.probe import TRT_INSTALL_HINT
from edge_runtime.errors import EdgeError, ModelError, UsageError

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE_MIB = 256  # when no memory budget is given (TensorRT's own default is the whole GPU)


def workspace_bytes(budget_mib: float | None) -> int:
    mib = DEFAULT_WORKSPACE_MIB if budget_mib is None else max(16, int(budget_mib * TRT_WORKSPACE_FRACTION))
    return mib * MIB


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


@contextlib.contextmanager
def _tensorrt_errors(trt: Any, model_path: Path) -> Iterator[None]:
    """Anything TensorRT raises that is not one of our errors (an API a newer TensorRT dropped, such as
    ``BuilderFlag.FP16`` in TensorRT 11; a pybind11 error) becomes a ModelError: edge-run then falls back to
    the next backend where the profile allows it, instead of ending on a traceback."""
    try:
        yield
    except EdgeError:
        raise
    except Exception as exc:
        raise ModelError(
            f"{model_path}: TensorRT {getattr(trt, '__version__', '?')} failed while building the engine "
            f"({type(exc).__name__}: {exc})",
            hint="edge_runtime supports TensorRT 8.6 to 10.x (the [tensorrt] extra pins 10.x); "
            "or list a fallback backend in backend.prefer with backend.allow_fallback = true",
        ) from None


def strongly_typed(trt: Any) -> bool:
    """Whether this TensorRT builds strongly typed networks (10.x; 11 knows nothing else): every tensor keeps the
    type the ONNX model gives it, so an fp16 bundle runs in fp16 and an int8 QDQ bundle in int8 where its Q/DQ
    say, exactly the model edge-build measured and calibrated, and no precision flag is needed (TensorRT 11 has
    none: BuilderFlag.FP16 and INT8 are gone)."""
    major = int(str(trt.__version__).split(".")[0])
    return major >= 10 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def network_flags(trt: Any) -> int:
    """``create_network`` flags: STRONGLY_TYPED where available; TensorRT 8.5/8.6 needs EXPLICIT_BATCH; a
    TensorRT 10 without strong typing takes 0 (explicit batch is its only mode)."""
    if strongly_typed(trt):
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    major = int(str(trt.__version__).split(".")[0])
    return 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


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
    strong = strongly_typed(trt)
    network = builder.create_network(network_flags(trt))
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
    if not strong:  # weakly typed (TensorRT 8.6, JetPack 5): the precision flags let TensorRT pick per layer
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
        "building TensorRT %s engine for %s (%s, %s, int8=%s, workspace %d MiB, batch 1..%d)",
        trt.__version__,
        model_path.name,
        precision or "precision from the model",
        "strongly typed" if strong else "precision flags",
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
            atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized), seconds


def _ensure_engine(
    trt: Any,
    cuda: CudaBinding,
    model_path: Path,
    engine_dir: Path,
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
    path = engine_cache_path(engine_dir, key)
    runtime = trt.Runtime(_trt_logger(trt))
    engine, why = load_cached_engine(path, key, runtime.deserialize_cuda_engine)
    if engine is not None:
        log.info("TensorRT engine reused: %s", why)
        return path, 0.0, engine, runtime
    with build_lock(path):
        engine, why_now = load_cached_engine(path, key, runtime.deserialize_cuda_engine)
        if engine is not None:  # another process built it while this one waited for the lock
            log.info("TensorRT engine reused: %s", why_now)
            return path, 0.0, engine, runtime
        log.info("TensorRT engine (re)build: %s", why)
        timing = timing_cache_path(engine_dir, trt.__version__, cc)
        with _tensorrt_errors(trt, Path(model_path)):
            data, seconds = _build_serialized(trt, Path(model_path), precision, budget_mib, max_batch, timing)
        write_cached_engine(path, key, fields, data, seconds)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise ModelError(f"{model_path}: TensorRT built an engine it cannot load back")
    log.info("TensorRT engine built in %.1f s: %s (%.1f MiB)", seconds, path, len(data) / MIB)
    return path, seconds, engine, runtime


def build_engine(
    model_path: Path,
    engine_dir: Path,
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
            trt, cuda, Path(model_path), Path(engine_dir), precision, budget_mib, max_batch
        )
        del engine, runtime
    return path, seconds


# --------------------------------------------------------------------------- the backend


class TensorRTBackend:
    """The ``tensorrt`` backend (the ``Backend`` protocol): embeds batches with a TensorRT engine.

    Opening builds the engine for ``model`` on this GPU, or reuses a verified cached one under ``engine_dir``
    (default: ``default_engine_dir()``), then allocates device buffers for ``max_batch`` and one CUDA stream.
    ``precision`` is the bundle model's (int8 needs a QDQ model), ``budget_mib`` sets the build workspace, and
    ``embedding_output`` names the output tensor ``embed`` returns. ``engine_path`` and ``build_seconds`` (0.0
    when the cached engine was reused) say what happened. Needs TensorRT and cuda-python or pycuda; raises
    UsageError (or its CudaError) when they or the GPU are missing, ModelError when the model cannot be built.

    Not thread-safe: one inference thread uses it (the run pipeline's design). ``close()`` frees the buffers.
    """

    name: str = "tensorrt"
    # Set when the engine is open; declared here so the class matches the Backend protocol.
    providers: tuple[str, ...]
    input_size: int
    max_batch: int
    engine_path: Path
    build_seconds: float

    def __init__(
        self,
        model: Path,
        *,
        engine_dir: Path | None = None,
        precision: str | None = None,
        budget_mib: float | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        embedding_output: str = "embedding",
        device_id: int = 0,
    ) -> None:
        self._ptrs: dict[str, int] = {}
        self._stream: Any = None
        self._host_in: np.ndarray | None = None
        self._host_out: np.ndarray | None = None
        self._context: Any = None
        self._engine: Any = None
        self._runtime: Any = None
        trt = _import_tensorrt()
        self._cuda = open_cuda(device_id)
        with self._cuda.current():
            try:
                batch = max(1, int(max_batch))
                self._open(trt, Path(model), engine_dir, precision, budget_mib, batch, embedding_output)
            except BaseException:
                self.close()
                raise

    def _open(
        self,
        trt: Any,
        model: Path,
        engine_dir: Path | None,
        precision: str | None,
        budget_mib: float | None,
        max_batch: int,
        embedding_output: str,
    ) -> None:
        state = Path(engine_dir) if engine_dir is not None else default_engine_dir()
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
        # Page-locked host copies of the input and the embedding, for the largest batch: the copies are then
        # asynchronous on the engine's stream, and each call waits once (cuda.py says why).
        in_shape = tuple(int(d) for d in self._context.get_tensor_shape(self._input))
        out_shape = tuple(int(d) for d in self._context.get_tensor_shape(self._output))
        self._host_in = self._cuda.host_empty(in_shape, self._dtypes[self._input])
        self._host_out = self._cuda.host_empty(out_shape, self._dtypes[self._output])
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
        """Float32 [N,3,S,S] raw RGB in, float32 [N,D] embeddings out; batches above ``max_batch`` are split."""
        if self._context is None or self._host_in is None or self._host_out is None:
            raise UsageError("the tensorrt backend is closed")
        x = np.ascontiguousarray(batch, dtype=self._dtypes[self._input])
        expected = (3, self.input_size, self.input_size)
        if x.ndim != 4 or x.shape[1:] != expected:
            raise ValueError(f"expected a [N,{','.join(map(str, expected))}] batch, got {x.shape}")
        n = x.shape[0]
        if n > self.max_batch:
            parts = [self.embed(x[i : i + self.max_batch]) for i in range(0, n, self.max_batch)]
            return np.concatenate(parts)
        rows = self.max_batch if self._fixed_batch else n  # a fixed-batch engine runs padded to its batch
        host_in, host_out = self._host_in[:rows], self._host_out[:rows]  # leading rows: contiguous
        host_in[:n] = x
        if rows > n:
            host_in[n:] = 0
        with self._cuda.current():
            if not self._context.set_input_shape(self._input, host_in.shape):
                raise ValueError(f"the TensorRT engine refuses input shape {host_in.shape}")
            # Copy in, infer, copy out: queued on one stream, one wait.
            self._cuda.htod(self._ptrs[self._input], host_in, self._stream)
            if not self._context.execute_async_v3(self._cuda.stream_handle(self._stream)):
                raise CudaError("TensorRT could not enqueue the inference")
            self._cuda.dtoh(host_out, self._ptrs[self._output], self._stream)
            self._cuda.synchronize(self._stream)
        # A copy: the pinned buffer is overwritten by the next call.
        return np.array(host_out[:n], dtype=np.float32).reshape(n, -1)

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
            for attr in ("_host_in", "_host_out"):
                host = getattr(self, attr, None)
                if host is not None:
                    with contextlib.suppress(Exception):
                        cuda.host_free(host)
                    setattr(self, attr, None)
            if self._stream is not None:
                with contextlib.suppress(Exception):
                    cuda.destroy(self._stream)
                self._stream = None
            self._context = self._engine = self._runtime = None
