"""The native TensorRT backend: engine cache keys and verification, the backend on stand-ins, the probe, parity.

The pure logic runs everywhere. What needs a GPU (engine build, embed parity with the CPU) is written in full
and skips with the probe's reason where TensorRT or CUDA is missing. TensorRT is never imported in this process:
the native-backend checks run in a child interpreter, like the probe itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge_runtime.backends import create_backend
from edge_runtime.backends import tensorrt as trt_backend
from edge_runtime.backends.onnxruntime import (
    MIB,
)
from edge_runtime.backends.tensorrt import engine as trt_engine
from edge_runtime.backends.tensorrt import probe as trt_probe
from edge_runtime.errors import ModelError, UsageError
from tests.conftest import tiny_backbone

# --------------------------------------------------------------------------- engine cache

KEY_ARGS = {
    "model_sha256": "ab" * 32,
    "trt_version": "10.3.0",
    "gpu_name": "Orin (nvgpu)",
    "compute_capability": "8.7",
    "precision": "int8",
    "max_batch": 16,
}


def test_engine_cache_key_is_stable_and_covers_every_field() -> None:
    key = trt_backend.engine_cache_key(**KEY_ARGS)
    assert key == trt_backend.engine_cache_key(**KEY_ARGS)
    assert len(key) == 64 and int(key, 16) >= 0
    assert trt_backend.engine_cache_key(**{**KEY_ARGS, "compute_capability": (8, 7)}) == key
    changed = {
        "model_sha256": "cd" * 32,
        "trt_version": "10.3.1",
        "gpu_name": "NVIDIA H100",
        "compute_capability": "9.0",
        "precision": "fp16",
        "max_batch": 8,
    }
    keys = {trt_backend.engine_cache_key(**{**KEY_ARGS, field: value}) for field, value in changed.items()}
    assert len(keys) == len(changed) and key not in keys


def test_engine_cache_path_lives_in_the_engine_folder(tmp_path: Path) -> None:
    key = trt_backend.engine_cache_key(**KEY_ARGS)
    path = trt_backend.engine_cache_path(tmp_path, key)
    assert path == tmp_path / f"trt-{key}.engine"
    assert trt_backend.sidecar_path(path) == path.with_suffix(".json")


def _cached(tmp_path: Path, data: bytes = b"ENGINE:fake serialized engine") -> tuple[Path, str]:
    key = trt_backend.engine_cache_key(**KEY_ARGS)
    path = trt_backend.engine_cache_path(tmp_path, key)
    fields = trt_backend.engine_key_fields(**KEY_ARGS)
    trt_backend.write_cached_engine(path, key, fields, data, build_seconds=12.5)
    return path, key


def test_cached_engine_verifies(tmp_path: Path) -> None:
    path, key = _cached(tmp_path)
    check = trt_backend.check_cached_engine(path, key)
    assert check.usable and check.engine == b"ENGINE:fake serialized engine"
    meta = json.loads(trt_backend.sidecar_path(path).read_text())
    assert meta["key"] == key and meta["fields"]["gpu_name"] == "Orin (nvgpu)" and meta["build_seconds"] == 12.5
    engine, why = trt_backend.load_cached_engine(path, key, lambda b: ("engine", b))
    assert engine == ("engine", b"ENGINE:fake serialized engine") and "verified" in why


def test_corrupt_engine_bytes_mean_rebuild(tmp_path: Path) -> None:
    path, key = _cached(tmp_path)
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF
    path.write_bytes(bytes(data))
    check = trt_backend.check_cached_engine(path, key)
    assert not check.usable and "sha256" in check.reason and check.engine is None
    engine, why = trt_backend.load_cached_engine(path, key, lambda b: pytest.fail("must not deserialise"))
    assert engine is None and "corrupt" in why


def test_wrong_key_missing_or_bad_sidecar_mean_rebuild(tmp_path: Path) -> None:
    path, key = _cached(tmp_path)
    other = trt_backend.engine_cache_key(**{**KEY_ARGS, "trt_version": "10.4.0"})
    assert "not" in trt_backend.check_cached_engine(path, other).reason
    assert not trt_backend.check_cached_engine(path, other).usable
    side = trt_backend.sidecar_path(path)
    side.write_text("{not json")
    assert "unreadable" in trt_backend.check_cached_engine(path, key).reason
    side.write_text(json.dumps({"schema": "something else", "key": key}))
    assert "not a edge.trt-engine/1 record" in trt_backend.check_cached_engine(path, key).reason
    side.unlink()
    assert "no sidecar" in trt_backend.check_cached_engine(path, key).reason
    path.unlink()
    assert "no cached engine" in trt_backend.check_cached_engine(path, key).reason


def test_engine_that_does_not_deserialise_means_rebuild(tmp_path: Path) -> None:
    path, key = _cached(tmp_path)
    engine, why = trt_backend.load_cached_engine(path, key, lambda b: None)
    assert engine is None and "could not deserialise" in why

    def boom(_: bytes) -> object:
        raise RuntimeError("serialization version mismatch")

    engine, why = trt_backend.load_cached_engine(path, key, boom)
    assert engine is None and "serialization version mismatch" in why


class _FakeLogger:
    WARNING = 2

    def __init__(self, level: int) -> None:
        self.level = level


class _FakeRuntime:
    def __init__(self, logger: object) -> None:
        pass

    def deserialize_cuda_engine(self, data: bytes) -> object | None:
        return SimpleNamespace(data=data) if data.startswith(b"ENGINE") else None


class _FakeTrt:  # the parts of the tensorrt module the cache flow touches
    __version__ = "10.3.0"
    Logger = _FakeLogger
    Runtime = _FakeRuntime


def test_engine_reuse_and_rebuild_decisions(tmp_path: Path, tiny_model_path: Path, monkeypatch, caplog) -> None:
    """The real cache flow of the backend, with TensorRT and CUDA replaced by stand-ins (no GPU here)."""
    fake_trt = _FakeTrt
    cuda = SimpleNamespace(device_info=lambda: ("Orin (nvgpu)", "8.7"))
    builds: list[str] = []

    def fake_build(trt, model_path, precision, budget_mib, max_batch, timing_cache):
        builds.append(precision)
        return b"ENGINE-" + model_path.read_bytes()[:8], 3.25

    monkeypatch.setattr(trt_engine, "_build_serialized", fake_build)
    trt_engine._trt_logger.cache_clear()
    with caplog.at_level(logging.INFO, logger="edge_runtime.backends.tensorrt"):
        path, seconds, engine, _ = trt_engine._ensure_engine(fake_trt, cuda, tiny_model_path, tmp_path, "fp16", 256, 4)
        assert (seconds, builds) == (3.25, ["fp16"]) and engine.data.startswith(b"ENGINE")
        assert "no cached engine" in caplog.text
        again = trt_engine._ensure_engine(fake_trt, cuda, tiny_model_path, tmp_path, "fp16", 256, 4)
        assert again[0] == path and again[1] == 0.0 and builds == ["fp16"]
        # Another precision or batch is another engine.
        other = trt_engine._ensure_engine(fake_trt, cuda, tiny_model_path, tmp_path, "fp16", 256, 8)
        assert other[0] != path and builds == ["fp16", "fp16"]
        # Corrupt bytes: rebuilt, and the log says why.
        path.write_bytes(b"ENGINE-tampered")
        caplog.clear()
        rebuilt = trt_engine._ensure_engine(fake_trt, cuda, tiny_model_path, tmp_path, "fp16", 256, 4)
        assert rebuilt[1] == 3.25 and len(builds) == 3 and "sha256" in caplog.text
        # An engine TensorRT cannot load (other TensorRT build) with a valid sidecar: rebuilt too.
        key = json.loads(trt_backend.sidecar_path(path).read_text())["key"]
        trt_backend.write_cached_engine(path, key, {}, b"GARBAGE", 1.0)
        caplog.clear()
        trt_engine._ensure_engine(fake_trt, cuda, tiny_model_path, tmp_path, "fp16", 256, 4)
        assert len(builds) == 4 and "could not deserialise" in caplog.text
    assert trt_backend.check_cached_engine(path, key).usable
    trt_engine._trt_logger.cache_clear()


def test_an_api_a_newer_tensorrt_dropped_is_a_model_error_that_allows_fallback(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """TensorRT 11 has no BuilderFlag.FP16: the AttributeError must become a ModelError (an EdgeError, so edge-run
    can fall back), naming the version and the supported range. The module is a stand-in (no TensorRT here)."""

    class _Network:
        num_inputs = 1

    class _Builder:
        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int) -> _Network:
            raise AttributeError("module 'tensorrt' has no attribute 'NetworkDefinitionCreationFlag'")

    class _Trt11(_FakeTrt):
        __version__ = "11.0.0"
        Builder = _Builder

    cuda = SimpleNamespace(device_info=lambda: ("Orin (nvgpu)", "8.7"))
    trt_engine._trt_logger.cache_clear()
    with pytest.raises(ModelError, match=r"TensorRT 11\.0\.0 failed while building") as info:
        trt_engine._ensure_engine(_Trt11, cuda, tiny_model_path, tmp_path, "fp16", 256, 4)
    assert "8.6 to 10.x" in (info.value.hint or "")
    trt_engine._trt_logger.cache_clear()


def _recording_trt(version: str, strong: bool) -> tuple[type, dict[str, object]]:
    """A TensorRT module stand-in that records how the engine build drives it (no TensorRT here)."""
    seen: dict[str, object] = {"builder_flags": []}

    class _Input:
        name, shape = "image", (-1, 3, 64, 64)

    class _Network:
        num_inputs, num_layers = 1, 1

        def get_input(self, i: int) -> _Input:
            return _Input()

        def get_layer(self, i: int) -> SimpleNamespace:
            return SimpleNamespace(type="QUANTIZE")

    class _Parser:
        num_errors = 0

        def __init__(self, network: object, logger: object) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            return True

    class _Profile:
        def set_shape(self, name: str, *shapes: tuple[int, ...]) -> None:
            seen["profile"] = shapes

    class _Config:
        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            seen["workspace"] = size

        def set_flag(self, flag: str) -> None:
            seen["builder_flags"].append(flag)  # type: ignore[union-attr]

        def add_optimization_profile(self, profile: object) -> None:
            pass

    class _Builder:
        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int) -> _Network:
            seen["network_flags"] = flags
            return _Network()

        def create_builder_config(self) -> _Config:
            return _Config()

        def create_optimization_profile(self) -> _Profile:
            return _Profile()

        def build_serialized_network(self, network: object, config: object) -> bytes:
            return b"ENGINE:built"

    creation = {"EXPLICIT_BATCH": 0, **({"STRONGLY_TYPED": 1} if strong else {})}

    class _Trt(_FakeTrt):
        __version__ = version
        Builder, OnnxParser = _Builder, _Parser
        NetworkDefinitionCreationFlag = SimpleNamespace(**creation)
        BuilderFlag = SimpleNamespace(INT8="INT8", FP16="FP16")
        MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
        LayerType = SimpleNamespace(QUANTIZE="QUANTIZE", DEQUANTIZE="DEQUANTIZE")

    return _Trt, seen


@pytest.mark.parametrize(
    ("version", "strong", "network_flags", "builder_flags"),
    [
        ("10.3.0", True, 1 << 1, []),  # strongly typed: the model's types decide, no precision flag
        ("10.0.1", False, 0, ["INT8", "FP16"]),  # a 10.x without the flag: explicit batch only, precision flags
        ("8.6.2", False, 1 << 0, ["INT8", "FP16"]),  # JetPack 5: EXPLICIT_BATCH, precision flags
    ],
)
def test_networks_are_strongly_typed_where_tensorrt_can(
    tiny_model_path: Path, version: str, strong: bool, network_flags: int, builder_flags: list[str]
) -> None:
    trt, seen = _recording_trt(version, strong)
    trt_engine._trt_logger.cache_clear()
    data, _ = trt_engine._build_serialized(trt, tiny_model_path, "int8", 256, 4, None)
    trt_engine._trt_logger.cache_clear()
    assert data == b"ENGINE:built" and trt_engine.strongly_typed(trt) is strong
    assert seen["network_flags"] == network_flags and seen["builder_flags"] == builder_flags
    assert seen["profile"] == ((1, 3, 64, 64), (1, 3, 64, 64), (4, 3, 64, 64))


class _FakeDevice:
    """A numpy 'GPU' with the CUDA wrapper's interface: buffers are bytearrays keyed by fake addresses."""

    kind = "fake"

    def __init__(self) -> None:
        self.mem: dict[int, bytearray] = {}
        self.freed: list[int] = []
        self.streams = 0
        self.host: list[np.ndarray] = []  # page-locked host buffers handed out and not yet freed
        self.syncs = 0

    @contextlib.contextmanager
    def current(self):
        yield

    def device_info(self) -> tuple[str, str]:
        return "Fake GPU", "8.7"

    def malloc(self, nbytes: int) -> int:
        ptr = 0x1000 * (len(self.mem) + len(self.freed) + 1)
        self.mem[ptr] = bytearray(nbytes)
        return ptr

    def free(self, ptr: int) -> None:
        del self.mem[ptr]
        self.freed.append(ptr)

    def stream(self) -> str:
        self.streams += 1
        return "stream"

    def stream_handle(self, stream: str) -> int:
        return 7

    def htod(self, dst: int, host: np.ndarray, stream: str) -> None:
        assert host.nbytes <= len(self.mem[dst]), "input larger than its device buffer"
        self.mem[dst][: host.nbytes] = host.tobytes()

    def dtoh(self, host: np.ndarray, src: int, stream: str) -> None:
        host.reshape(-1).view(np.uint8)[:] = np.frombuffer(bytes(self.mem[src][: host.nbytes]), np.uint8)

    def host_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        array = np.full(shape, np.nan, dtype)  # stale contents, as a reused pinned buffer has
        self.host.append(array)
        return array

    def host_free(self, array: np.ndarray) -> None:
        self.host = [a for a in self.host if a is not array]

    def synchronize(self, stream: str) -> None:
        self.syncs += 1

    def destroy(self, stream: str) -> None:
        self.streams -= 1


class _FakeEngine:
    """A 'TensorRT engine' that runs the ONNX model with onnxruntime on the CPU when executed."""

    def __init__(self, model: Path, batch: int, device: _FakeDevice, profile_max: int = 4) -> None:
        self.session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        self.names = ["image", "embedding", "logits"]
        self.batch, self.profile_max, self.device = batch, profile_max, device

    num_io_tensors = 3

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == "image" else "OUTPUT"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (self.batch, 3, 64, 64) if name == "image" else (self.batch, 16 if name == "embedding" else 10)

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
        return [(1, 3, 64, 64), (1, 3, 64, 64), (self.profile_max, 3, 64, 64)]

    def create_execution_context(self) -> _FakeContext:
        return _FakeContext(self)


class _FakeContext:
    def __init__(self, engine: _FakeEngine) -> None:
        self.engine, self.n, self.addresses = engine, 0, {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        limit = self.engine.batch if self.engine.batch > 0 else self.engine.profile_max
        if (self.engine.batch > 0 and shape[0] != self.engine.batch) or not 1 <= shape[0] <= limit:
            return False
        self.n = shape[0]
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (self.n, *self.engine.get_tensor_shape(name)[1:])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        mem = self.engine.device.mem
        x = np.frombuffer(bytes(mem[self.addresses["image"]]), np.float32)[: self.n * 3 * 64 * 64]
        outs = self.engine.session.run(None, {"image": x.reshape(self.n, 3, 64, 64)})
        for name, value in zip(["embedding", "logits"], outs, strict=True):
            data = np.ascontiguousarray(value, np.float32).tobytes()
            mem[self.addresses[name]][: len(data)] = data
        return True


class _FakeTrtModule:
    __version__ = "10.3.0"
    TensorIOMode = SimpleNamespace(INPUT="INPUT")

    @staticmethod
    def nptype(dtype: str) -> type:
        return np.float32


@pytest.mark.parametrize("engine_batch", [-1, 4])  # dynamic N (profile 1..4) and a fixed batch of 4
def test_tensorrt_backend_buffers_and_batches(tiny_model_path: Path, monkeypatch, engine_batch: int) -> None:
    """TensorRTBackend's real buffer, shape, chunking and padding code, on a numpy stand-in for the GPU."""
    device = _FakeDevice()
    engine = _FakeEngine(tiny_model_path, engine_batch, device)
    monkeypatch.setattr(trt_engine, "_import_tensorrt", lambda: _FakeTrtModule)
    monkeypatch.setattr(trt_engine, "open_cuda", lambda device_id=0: device)
    monkeypatch.setattr(
        trt_engine, "_ensure_engine", lambda *a: (Path("/state/engines/trt-x.engine"), 2.5, engine, object())
    )
    backend = trt_backend.TensorRTBackend(tiny_model_path, engine_dir=Path("/state"), max_batch=4)
    assert (backend.name, backend.providers, backend.input_size, backend.max_batch) == (
        "tensorrt",
        ("TensorRT 10.3.0",),
        64,
        4,
    )
    assert len(device.mem) == 3  # every I/O tensor has a device buffer, sized for the largest batch
    reference = create_backend("onnxruntime-cpu", tiny_model_path, threads=1)
    x = np.random.default_rng(4).uniform(0, 255, (6, 3, 64, 64)).astype(np.float32)
    assert len(device.host) == 2  # pinned input and embedding buffers, allocated once
    for n in (1, 3, 4, 6):  # 6 > max_batch: split; 1 and 3 on a fixed batch of 4: padded
        before = device.syncs
        np.testing.assert_allclose(backend.embed(x[:n]), reference.embed(x[:n]), rtol=1e-5, atol=1e-5)
        assert device.syncs - before == (n + 3) // 4  # one wait per engine call: copies and run share the stream
    first = backend.embed(x[:1])
    backend.embed(x[1:2])
    np.testing.assert_allclose(first, reference.embed(x[:1]), rtol=1e-5, atol=1e-5)  # not the reused buffer
    with pytest.raises(ValueError, match="batch"):
        backend.embed(np.zeros((2, 3, 32, 32), np.float32))
    backend.close()
    assert not device.mem and len(device.freed) == 3 and device.streams == 0 and not device.host
    backend.close()  # idempotent
    with pytest.raises(UsageError, match="closed"):
        backend.embed(x[:1])


class _FakeCudart:
    """cuda-python's runtime module as it behaves on a driver older than the bindings: every call fails."""

    cudaError_t = SimpleNamespace(cudaSuccess=0)

    def cudaSetDevice(self, device: int) -> tuple[int]:
        return (35,)

    def cudaGetErrorName(self, err: int) -> tuple[int, bytes]:
        return (0, b"cudaErrorInsufficientDriver")


class _FakePycudaDriver:
    """pycuda.driver on a device without a GPU here: the binding imports, the device opens or refuses."""

    class Error(Exception):
        pass

    def __init__(self, works: bool) -> None:
        self.works = works

    def init(self) -> None:
        if not self.works:
            raise self.Error("cuInit failed: no CUDA-capable device is detected")

    def Device(self, index: int) -> SimpleNamespace:
        return SimpleNamespace(retain_primary_context=lambda: object())


def test_pycuda_is_tried_when_cuda_python_cannot_talk_to_the_driver(monkeypatch) -> None:
    from edge_runtime.backends.tensorrt import cuda as trt_cuda

    monkeypatch.setattr(trt_cuda, "_import_cudart", lambda: _FakeCudart())
    pycuda = ModuleType("pycuda")
    for works in (True, False):
        drv = _FakePycudaDriver(works)
        monkeypatch.setitem(sys.modules, "pycuda", pycuda)
        monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
        pycuda.driver = drv  # type: ignore[attr-defined]
        if works:
            assert trt_cuda.open_cuda(0).kind == "pycuda"
        else:  # both reasons in one line: the driver's answer to cuda-python and pycuda's own
            with pytest.raises(trt_cuda.CudaError, match=r"cudaErrorInsufficientDriver.*pycuda: pycuda cannot open"):
                trt_cuda.open_cuda(0)
    monkeypatch.setitem(sys.modules, "pycuda", None)  # not installed: the driver's answer and the fix
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(trt_cuda.CudaError, match="pycuda is not installed") as info:
        trt_cuda.open_cuda(0)
    assert "cuda-python 12" in (info.value.hint or "")


def test_tensorrt_backend_needs_the_named_output(tiny_model_path: Path, monkeypatch) -> None:
    device = _FakeDevice()
    engine = _FakeEngine(tiny_model_path, -1, device)
    monkeypatch.setattr(trt_engine, "_import_tensorrt", lambda: _FakeTrtModule)
    monkeypatch.setattr(trt_engine, "open_cuda", lambda device_id=0: device)
    monkeypatch.setattr(trt_engine, "_ensure_engine", lambda *a: (Path("/e.engine"), 0.0, engine, object()))
    with pytest.raises(ModelError, match="features"):
        trt_backend.TensorRTBackend(tiny_model_path, embedding_output="features")
    assert not device.mem  # nothing leaked by the failed open


def test_workspace_follows_the_budget() -> None:
    assert trt_backend.workspace_bytes(1536) == 384 * MIB
    assert trt_backend.workspace_bytes(None) == trt_backend.DEFAULT_WORKSPACE_MIB * MIB
    assert trt_backend.workspace_bytes(20) == 16 * MIB


def test_one_engine_folder_for_every_process_on_the_device(monkeypatch, tmp_path: Path) -> None:
    # Under systemd: the StateDirectory= entry named engines, whatever the camera's own entry (listed first).
    monkeypatch.delenv(trt_backend.ENGINE_DIR_ENV, raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path / 'edge' / 'cam0'}:{tmp_path / 'edge' / 'engines'}")
    assert trt_backend.default_engine_dir() == tmp_path / "edge" / "engines"
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path / 'edge' / 'bench'}:{tmp_path / 'edge' / 'engines'}")
    assert trt_backend.default_engine_dir() == tmp_path / "edge" / "engines"  # edge-bench finds the same one
    # The variable wins (edge-build --engine-on-device outside systemd, tests); then the user's state folder.
    monkeypatch.setenv(trt_backend.ENGINE_DIR_ENV, str(tmp_path / "x"))
    assert trt_backend.default_engine_dir() == tmp_path / "x"
    monkeypatch.delenv(trt_backend.ENGINE_DIR_ENV)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "edge" / "cam0"))  # an old unit: no engines entry
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert trt_backend.default_engine_dir() == tmp_path / "edge_runtime" / "engines"
    # Engines and the EP's caches lie in that folder itself, keyed (no per-camera subfolder).
    assert trt_backend.engine_cache_path(tmp_path, "k").parent == tmp_path


# --------------------------------------------------------------------------- the probe (subprocesses)


def test_tensorrt_probe_gives_a_reason_here() -> None:
    result = trt_backend.probe_info(refresh=True)  # really runs the subprocess
    if result.reason is None:
        pytest.skip(f"TensorRT {result.trt_version} is usable here ({result.gpu_name})")
    assert isinstance(trt_backend.tensorrt_probe(), str)
    assert "tensorrt" in result.reason.lower() or "cuda" in result.reason.lower()
    if "not installed" in result.reason:
        assert "edge_runtime[tensorrt]" in result.reason


def test_tensorrt_probe_is_cached_per_process(monkeypatch) -> None:
    first = trt_backend.tensorrt_probe()
    monkeypatch.setattr(trt_probe, "run_probe", lambda *a, **k: pytest.fail("probed twice"))
    assert trt_backend.tensorrt_probe() == first
    from edge_runtime.backends.base import unavailable_reason

    assert unavailable_reason("tensorrt") == first


def test_probe_survives_crashes_hangs_and_noise() -> None:
    crashed = trt_backend.run_probe("import os, sys; sys.stderr.write('boom\\n'); os.abort()", timeout_s=30)
    assert crashed.reason is not None and "probe process failed" in crashed.reason and "boom" in crashed.reason
    hung = trt_backend.run_probe("import time; time.sleep(30)", timeout_s=0.5)
    assert hung.reason is not None and "did not finish" in hung.reason
    # A crash at teardown after the answer was printed does not matter: the answer is read from stdout.
    noisy = trt_backend.run_probe(
        "import json, os; print('[TRT] warning'); "
        "print(json.dumps({'stage': 'ok', 'trt_version': '10.3.0', 'cuda': 'cuda-python', "
        "'gpu_name': 'Orin', 'compute_capability': '8.7'}), flush=True); os.abort()",
        timeout_s=30,
    )
    assert noisy == trt_backend.ProbeResult(None, "10.3.0", "cuda-python", "Orin", "8.7")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"stage": "import", "missing": True}, "tensorrt is not installed (pip install edge_runtime[tensorrt]"),
        ({"stage": "import", "missing": False, "error": "OSError: libnvinfer.so.10"}, "cannot be imported"),
        ({"stage": "builder", "trt_version": "10.3.0"}, "no builder or ONNX parser"),
        ({"stage": "binding", "trt_version": "10.3.0"}, "neither cuda-python nor pycuda"),
        ({"stage": "device", "error": "cudaErrorNoDevice"}, "no CUDA device (cudaErrorNoDevice)"),
    ],
)
def test_probe_answers_become_reasons(data: dict, expected: str) -> None:
    reason = trt_probe._interpret(data).reason
    assert reason is not None and expected in reason


# --------------------------------------------------------------------------- on a GPU (skip elsewhere)

_PARITY_CHILD = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from pathlib import Path
    from edge_runtime.backends import create_backend
    from edge_runtime.backends.tensorrt import build_engine, check_cached_engine, sidecar_path

    args = json.loads(sys.argv[1])
    out = {}
    rng = np.random.default_rng(0)
    for name, precision in args["models"]:
        model = Path(args["dir"]) / name
        cpu = create_backend("onnxruntime-cpu", model, threads=1)
        trt = create_backend("tensorrt", model, precision=precision, budget_mib=512, engine_dir=args["state"],
                             max_batch=4)
        x = rng.uniform(0, 255, (6, 3, cpu.input_size, cpu.input_size)).astype(np.float32)  # > max_batch
        a, b = cpu.embed(x), trt.embed(x)
        one = trt.embed(x[:1])[0]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        one_cos = float(one @ b[0] / (np.linalg.norm(one) * np.linalg.norm(b[0])))
        out[name] = {"cos_min": float(cos.min()), "shape": list(b.shape), "one": one_cos,
                     "providers": list(trt.providers), "built_s": trt.build_seconds, "engine": str(trt.engine_path)}
        trt.close()
        path, seconds = build_engine(model, Path(args["state"]), precision, 512, 4)
        out[name]["reuse_s"] = seconds
        out[name]["same_path"] = path == Path(out[name]["engine"])
        data = bytearray(path.read_bytes()); data[len(data) // 2] ^= 0xFF; path.write_bytes(bytes(data))
        path, seconds = build_engine(model, Path(args["state"]), precision, 512, 4)
        out[name]["rebuilt_s"] = seconds
        out[name]["verified"] = check_cached_engine(path, json.loads(sidecar_path(path).read_text())["key"]).usable
    print(json.dumps(out), flush=True)
    os._exit(0)
    """
)


@pytest.mark.slow
def test_tensorrt_engine_parity_with_onnxruntime_cpu(tmp_path: Path) -> None:
    reason = trt_backend.tensorrt_probe()
    if reason is not None:
        pytest.skip(f"native TensorRT is not usable here: {reason}")
    from edge_runtime.builder.quantize import make_variant

    base = tiny_backbone(64)
    calib = np.random.default_rng(1).uniform(0, 255, (16, 3, 64, 64)).astype(np.float32)
    onnx.save(base, str(tmp_path / "fp32.onnx"))
    onnx.save(make_variant(base, "fp16", 64), str(tmp_path / "fp16.onnx"))
    onnx.save(make_variant(base, "int8", 64, calib, "s8s8"), str(tmp_path / "int8.onnx"))
    args = {
        "dir": str(tmp_path),
        "state": str(tmp_path / "state"),
        "models": [["fp32.onnx", "fp32"], ["fp16.onnx", "fp16"], ["int8.onnx", "int8"]],
    }
    proc = subprocess.run(
        [sys.executable, "-c", _PARITY_CHILD, json.dumps(args)], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, r in results.items():
        assert r["shape"] == [6, 16], name
        assert r["cos_min"] >= 0.99, (name, r)  # within 1e-2 cosine of onnxruntime on the CPU
        assert r["one"] >= 0.999, (name, r)  # batch 1 and a batch of 4 agree
        assert r["providers"][0].startswith("TensorRT "), r
        assert r["built_s"] > 0 and r["reuse_s"] == 0.0 and r["same_path"], r
        assert r["rebuilt_s"] > 0 and r["verified"], r
