"""GPU backends: provider plans, engine cache keys and verification, backend selection, GPU memory readers.

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
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge_runtime.backends import create_backend, gpumem, select_backend
from edge_runtime.backends import tensorrt as trt_backend
from edge_runtime.backends.base import incompatible_reason
from edge_runtime.backends.onnxruntime import (
    CUDA_ARENA_FRACTION,
    MIB,
    TRT_WORKSPACE_FRACTION,
    OrtBackend,
    ProviderPlan,
    open_session,
    provider_plan,
    trt_cache_dir,
)
from edge_runtime.backends.tensorrt import engine as trt_engine
from edge_runtime.backends.tensorrt import probe as trt_probe
from edge_runtime.errors import ModelError, UsageError
from edge_runtime.profile import load_profile
from tests.conftest import tiny_backbone

HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()
HAS_TRT_EP = "TensorrtExecutionProvider" in ort.get_available_providers()
cpu_only_ort = pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime build has the CUDA provider")


@pytest.fixture(autouse=True, scope="module")
def _tensorrt_stays_out_of_this_process():
    yield
    assert "tensorrt" not in sys.modules, "tensorrt was imported into the test process"


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --------------------------------------------------------------------------- provider plans


def test_cpu_plan_is_the_cpu_alone() -> None:
    plan = provider_plan("onnxruntime-cpu", "int8", 1536, Path("/state"))
    assert plan.providers == ("CPUExecutionProvider",)
    assert plan.for_ort() == [("CPUExecutionProvider", {})]
    assert provider_plan("cpu", None, None, None) == plan.__class__("onnxruntime-cpu", plan.providers, ({},))


def test_cuda_plan_options_from_the_budget() -> None:
    plan = provider_plan("onnxruntime-cuda", "fp16", 1000, None, device_id=1)
    assert plan.backend == "onnxruntime-cuda"
    assert plan.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert plan.options_for("CUDAExecutionProvider") == {
        "device_id": 1,
        "arena_extend_strategy": "kSameAsRequested",
        "gpu_mem_limit": 500 * MIB,
    }
    assert "gpu_mem_limit" not in provider_plan("onnxruntime-cuda", "fp16", None, None).options_for(
        "CUDAExecutionProvider"
    )


@pytest.mark.parametrize(
    ("precision", "fp16", "int8"),
    [("fp32", False, False), (None, False, False), ("fp16", True, False), ("int8", True, True)],
)
def test_tensorrt_ep_plan_per_precision(tmp_path: Path, precision: str | None, fp16: bool, int8: bool) -> None:
    plan = provider_plan("onnxruntime-tensorrt", precision, 2048, tmp_path)
    assert plan.providers == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    trt = plan.options_for("TensorrtExecutionProvider")
    cache = str(trt_cache_dir(tmp_path, precision or "fp32"))
    assert trt == {
        "device_id": 0,
        "trt_fp16_enable": fp16,
        "trt_int8_enable": int8,
        "trt_max_workspace_size": 512 * MIB,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
    }
    assert cache.startswith(str(tmp_path / "engines"))
    assert plan.options_for("CUDAExecutionProvider")["gpu_mem_limit"] == 1024 * MIB
    # ONNX Runtime's Python API turns every option value into a string; bools become "True"/"False".
    assert all(isinstance(v, (str, int, bool)) for _, opts in plan.for_ort() for v in opts.values())


def test_tensorrt_ep_plan_without_state_dir_or_budget() -> None:
    trt = provider_plan("tensorrt", "int8", None, None).options_for("TensorrtExecutionProvider")
    assert trt["trt_engine_cache_enable"] is False and trt["trt_timing_cache_enable"] is False
    assert "trt_engine_cache_path" not in trt and "trt_max_workspace_size" not in trt


def test_plans_from_a_shipped_profile(tmp_path: Path) -> None:
    profile = load_profile("cart-v2")
    budget = profile.device.memory_budget_mib
    plans = {
        name: provider_plan(name, "int8", budget, tmp_path) for name in profile.backend.prefer if name != "tensorrt"
    }
    assert list(plans) == ["onnxruntime-tensorrt", "onnxruntime-cuda", "onnxruntime-cpu"]
    trt = plans["onnxruntime-tensorrt"].options_for("TensorrtExecutionProvider")
    assert trt["trt_max_workspace_size"] == int(budget * TRT_WORKSPACE_FRACTION) * MIB == 384 * MIB
    cuda = plans["onnxruntime-cuda"].options_for("CUDAExecutionProvider")
    assert cuda["gpu_mem_limit"] == int(budget * CUDA_ARENA_FRACTION) * MIB == 768 * MIB


def test_plan_refuses_unknown_names() -> None:
    with pytest.raises(UsageError, match="no onnxruntime provider plan"):
        provider_plan("onnxruntime-rocm", "fp32", None, None)
    with pytest.raises(UsageError, match="precision"):
        provider_plan("onnxruntime-cuda", "int4", None, None)


def test_plan_is_read_only_and_drops_providers() -> None:
    plan = provider_plan("onnxruntime-tensorrt", "fp16", 512, None)
    with pytest.raises(TypeError):
        plan.options[0]["device_id"] = 3  # type: ignore[index]
    rest = plan.without("TensorrtExecutionProvider")
    assert rest.backend == "onnxruntime-cuda"
    assert rest.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    with pytest.raises(ValueError):
        ProviderPlan("x", ("CPUExecutionProvider",), ())


# --------------------------------------------------------------------------- missing providers, fallback


@cpu_only_ort
def test_missing_cuda_provider_is_named_with_the_install_hint(tiny_model_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        create_backend("onnxruntime-cuda", tiny_model_path, threads=1)
    text = str(info.value)
    assert "CUDAExecutionProvider" in text and "onnxruntime-gpu" in text and "Jetson" in text
    plan = provider_plan("onnxruntime-cuda", "fp32", 256, None)
    with pytest.raises(UsageError, match="CUDAExecutionProvider is not available here") as info:
        OrtBackend(tiny_model_path, threads=1, plan=plan)
    assert "allow_fallback" in str(info.value)


@cpu_only_ort
def test_provider_fallback_when_allowed_is_logged(tiny_model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    x = np.random.default_rng(0).uniform(0, 255, (3, 3, 64, 64)).astype(np.float32)
    reference = create_backend("onnxruntime-cpu", tiny_model_path, threads=1).embed(x)
    plan = provider_plan("onnxruntime-tensorrt", "fp32", 256, None)
    with caplog.at_level(logging.WARNING, logger="edge_runtime.backends.onnxruntime"):
        backend = OrtBackend(tiny_model_path, threads=1, plan=plan, allow_fallback=True)
    assert backend.name == "onnxruntime-cpu"  # named after what runs, not what was asked for
    assert backend.providers == ("CPUExecutionProvider",)
    assert "TensorrtExecutionProvider" in caplog.text and "CUDAExecutionProvider" in caplog.text
    np.testing.assert_allclose(backend.embed(x), reference, rtol=1e-5, atol=1e-5)
    backend.close()
    backend.close()  # idempotent


def test_create_backend_keeps_its_old_call_and_takes_gpu_options(tiny_model_path: Path, tmp_path: Path) -> None:
    x = np.zeros((2, 3, 64, 64), np.float32)
    old = create_backend("onnxruntime-cpu", tiny_model_path, threads=1, embedding_output="embedding")
    new = create_backend(
        "onnxruntime-cpu", tiny_model_path, threads=1, precision="fp32", budget_mib=256, state_dir=tmp_path
    )
    assert old.name == new.name == "onnxruntime-cpu"
    np.testing.assert_array_equal(old.embed(x), new.embed(x))
    session = open_session(tiny_model_path, 1, "cpu")  # the region detector's call
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_bad_model_is_still_a_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match=r"bad\.onnx"):
        open_session(bad, 1, provider_plan("onnxruntime-cpu", None, None, None))


# --------------------------------------------------------------------------- backend selection

GPU_FIRST = ["tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda", "onnxruntime-cpu"]


@cpu_only_ort
def test_select_without_fallback_refuses_a_missing_first_choice() -> None:
    with pytest.raises(UsageError) as info:
        select_backend(["onnxruntime-cuda", "onnxruntime-cpu"], "fp32", allow_fallback=False)
    text = str(info.value)
    assert "onnxruntime-cuda" in text and "CUDAExecutionProvider" in text and "onnxruntime-gpu" in text
    assert "allow_fallback" in text


@cpu_only_ort
def test_select_with_fallback_chooses_the_cpu_and_says_why() -> None:
    name, lines = select_backend(["onnxruntime-cuda", "onnxruntime-cpu"], "int8", allow_fallback=True)
    assert name == "onnxruntime-cpu"
    assert len(lines) == 1 and lines[0].startswith("backend onnxruntime-cuda skipped:")
    assert "onnxruntime-gpu" in lines[0]


@cpu_only_ort
def test_select_falls_back_to_the_cpu_even_when_not_listed() -> None:
    if trt_backend.tensorrt_probe() is None:
        pytest.skip("native TensorRT is usable here")
    name, lines = select_backend(["tensorrt", "onnxruntime-cuda"], "fp16", allow_fallback=True)
    assert name == "onnxruntime-cpu"
    assert [ln.split(":")[0] for ln in lines[:2]] == ["backend tensorrt skipped", "backend onnxruntime-cuda skipped"]
    assert "tensorrt is not installed" in lines[0] or "CUDA" in lines[0]
    assert lines[-1].startswith("no preferred backend is usable here; falling back to onnxruntime-cpu")


def test_select_the_available_first_choice_logs_nothing() -> None:
    assert select_backend(["onnxruntime-cpu", "tensorrt"], "fp32", allow_fallback=False) == ("onnxruntime-cpu", [])


def test_select_skips_tensorrt_for_an_asymmetric_int8_model() -> None:
    name, lines = select_backend(GPU_FIRST, "int8", allow_fallback=True, int8_scheme="u8s8")
    assert lines[0].startswith("backend tensorrt skipped:") and "u8s8" in lines[0]
    assert "u8s8" in lines[1]
    assert incompatible_reason("onnxruntime-cpu", "int8", "u8s8") is None
    assert incompatible_reason("tensorrt", "int8", "s8s8") is None
    assert incompatible_reason("tensorrt", "fp16", "u8s8") is None
    if not HAS_CUDA_EP:
        assert name == "onnxruntime-cpu"


def test_select_refuses_bad_input() -> None:
    with pytest.raises(UsageError, match="precision"):
        select_backend(["onnxruntime-cpu"], "int4", allow_fallback=True)
    with pytest.raises(UsageError, match="empty"):
        select_backend([], "fp32", allow_fallback=True)
    with pytest.raises(UsageError, match="unknown backend"):
        select_backend(["onnxruntime-directml"], "fp32", allow_fallback=False)


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


def test_engine_cache_path_lives_under_the_state_dir(tmp_path: Path) -> None:
    key = trt_backend.engine_cache_key(**KEY_ARGS)
    path = trt_backend.engine_cache_path(tmp_path, key)
    assert path == tmp_path / "engines" / f"trt-{key}.engine"
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


class _FakeDevice:
    """A numpy 'GPU' with the CUDA wrapper's interface: buffers are bytearrays keyed by fake addresses."""

    kind = "fake"

    def __init__(self) -> None:
        self.mem: dict[int, bytearray] = {}
        self.freed: list[int] = []
        self.streams = 0

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

    def synchronize(self, stream: str) -> None:
        pass

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
    backend = trt_backend.TensorRTBackend(tiny_model_path, state_dir=Path("/state"), max_batch=4)
    assert (backend.name, backend.providers, backend.input_size, backend.max_batch) == (
        "tensorrt",
        ("TensorRT 10.3.0",),
        64,
        4,
    )
    assert len(device.mem) == 3  # every I/O tensor has a device buffer, sized for the largest batch
    reference = create_backend("onnxruntime-cpu", tiny_model_path, threads=1)
    x = np.random.default_rng(4).uniform(0, 255, (6, 3, 64, 64)).astype(np.float32)
    for n in (1, 3, 4, 6):  # 6 > max_batch: split; 1 and 3 on a fixed batch of 4: padded
        np.testing.assert_allclose(backend.embed(x[:n]), reference.embed(x[:n]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch"):
        backend.embed(np.zeros((2, 3, 32, 32), np.float32))
    backend.close()
    assert not device.mem and len(device.freed) == 3 and device.streams == 0
    backend.close()  # idempotent
    with pytest.raises(UsageError, match="closed"):
        backend.embed(x[:1])


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


def test_default_state_dir_follows_systemd(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert trt_backend.default_state_dir() == tmp_path / "a"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert trt_backend.default_state_dir() == tmp_path / "edge_runtime"


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


# --------------------------------------------------------------------------- GPU memory readers

TEGRASTATS = {
    "jetpack4-nano": (
        "RAM 1664/3964MB (lfb 139x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
        "CPU [7%@1479,4%@1479,3%@1479,3%@1479] EMC_FREQ 3%@1600 GR3D_FREQ 23%@76 APE 25 PLL@25C CPU@28C "
        "PMIC@100C GPU@26.5C AO@35C thermal@27.25C POM_5V_IN 2302/2302 POM_5V_GPU 40/40 POM_5V_CPU 361/361",
        {"ram_used_mb": 1664, "ram_total_mb": 3964, "swap_used_mb": 0, "swap_total_mb": 1982},
        (23, 76),
    ),
    "jetpack5-orin": (
        "RAM 2448/30536MB (lfb 6037x4MB) SWAP 0/15268MB (cached 0MB) CPU [0%@729,0%@729,0%@729,0%@729] "
        "EMC_FREQ 0%@2133 GR3D_FREQ 61%@[611,611] VIC_FREQ 729 APE 174 CV0@-256C CPU@45.375C Tboard@34C",
        {"ram_used_mb": 2448, "ram_total_mb": 30536, "swap_used_mb": 0, "swap_total_mb": 15268},
        (61, 611),
    ),
    "jetpack6-orin-nano": (
        "04-17-2024 10:12:33 RAM 2847/7620MB (lfb 2x4MB) SWAP 12/3810MB (cached 0MB) "
        "CPU [2%@729,1%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 12% cpu@47.5C "
        "soc2@46.4C VDD_IN 4470mW/4470mW VDD_CPU_GPU_CV 479mW/479mW VDD_SOC 1436mW/1436mW",
        {"ram_used_mb": 2847, "ram_total_mb": 7620, "swap_used_mb": 12, "swap_total_mb": 3810},
        (12, None),
    ),
}


@pytest.mark.parametrize("name", sorted(TEGRASTATS))
def test_tegrastats_lines(name: str) -> None:
    line, memory, (load, mhz) = TEGRASTATS[name]
    stats = gpumem.parse_tegrastats(line)
    assert {k: stats[k] for k in memory} == memory
    assert stats["gr3d_freq_pct"] == load
    assert stats.get("gr3d_mhz") == mhz


def test_tegrastats_nvmap_field_and_garbage() -> None:
    stats = gpumem.parse_tegrastats("RAM 2847/7772MB (lfb 512x4MB) SWAP 0/3886MB IOVA 104 MB NVMAP 1124 MB AO 0 MB")
    assert stats["nvmap_mb"] == 1124 and "gr3d_freq_pct" not in stats
    with pytest.raises(ValueError, match="not a tegrastats line"):
        gpumem.parse_tegrastats("CPU [1%@729] GR3D_FREQ 0%")


MEMINFO = """\
MemTotal:        7802604 kB
MemFree:          986452 kB
MemAvailable:    4551240 kB
Buffers:           52344 kB
Cached:          3427548 kB
SwapTotal:       3901296 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
NvMapMemFree:      57264 kB
NvMapMemUsed:     603904 kB
"""

NVMAP_CLIENTS = """\
CLIENT                        PROCESS      PID        SIZE
user                   nvargus-daemon      912      43008K
user                          python3     4242     262144K
user                          python3     4242       1024K
user                          python3    14242       2048K
total                                               308224K
"""


def test_meminfo_parser() -> None:
    info = gpumem.parse_meminfo(MEMINFO)
    assert info["MemTotal"] == pytest.approx(7802604 / 1024)
    assert info["MemAvailable"] == pytest.approx(4551240 / 1024)
    assert info["NvMapMemUsed"] == pytest.approx(589.75)
    assert "HugePages_Total" not in info


def _fake_jetson(root: Path, *, marker: str = "tegra", clients: bool = False) -> Path:
    if marker == "tegra":
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    else:
        (root / "proc" / "device-tree").mkdir(parents=True)
        (root / "proc" / "device-tree" / "model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "meminfo").write_text(MEMINFO)
    if clients:
        debug = root / "sys" / "kernel" / "debug" / "nvmap" / "iovmm"
        debug.mkdir(parents=True)
        (debug / "clients").write_text(NVMAP_CLIENTS)
    return root


def test_jetson_detection_and_unified_memory(tmp_path: Path) -> None:
    plain = tmp_path / "x86"
    (plain / "proc").mkdir(parents=True)
    (plain / "proc" / "meminfo").write_text(MEMINFO)
    assert not gpumem.is_jetson(plain)
    assert gpumem.unified_memory_used_mib(plain) is None and gpumem.jetson_memory(plain) is None
    for marker in ("tegra", "device-tree"):
        root = _fake_jetson(tmp_path / marker, marker=marker)
        assert gpumem.is_jetson(root)
        assert gpumem.unified_memory_used_mib(root) == pytest.approx(589.75)
        assert gpumem.jetson_memory(root) == pytest.approx(
            {"total_mib": 7802604 / 1024, "available_mib": 4551240 / 1024, "nvmap_used_mib": 589.75}
        )


def test_nvmap_clients_per_process(tmp_path: Path) -> None:
    assert gpumem.parse_nvmap_clients(NVMAP_CLIENTS, 4242) == pytest.approx(257.0)
    assert gpumem.parse_nvmap_clients(NVMAP_CLIENTS, 912) == pytest.approx(42.0)
    assert gpumem.parse_nvmap_clients(NVMAP_CLIENTS, 1) == 0.0
    root = _fake_jetson(tmp_path / "j", clients=True)
    assert gpumem.gpu_memory_used_mib(4242, root=root) == pytest.approx(257.0)
    assert gpumem.gpu_memory_used_mib(4242, root=_fake_jetson(tmp_path / "k")) is None  # debugfs needs root


def test_gpu_memory_used_is_none_here() -> None:
    if gpumem._load_nvml() is not None or gpumem.is_jetson():
        pytest.skip("this machine has an NVIDIA driver")
    assert gpumem.gpu_memory_used_mib() is None
    assert gpumem.nvml_memory_used_mib(1) is None
    assert gpumem.unified_memory_used_mib() is None


def test_footprint_gpu_rule() -> None:
    assert gpumem.footprint_gpu_mib(None, None, None) == 0.0
    assert gpumem.footprint_gpu_mib(300.0, 100.0, 900.0) == 300.0  # per process wins
    assert gpumem.footprint_gpu_mib(None, 600.0, 850.0) == 250.0  # Jetson: nvmap growth across the run
    assert gpumem.footprint_gpu_mib(None, 600.0, 590.0) == 0.0


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
        trt = create_backend("tensorrt", model, precision=precision, budget_mib=512, state_dir=args["state"],
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


@pytest.mark.skipif(not HAS_CUDA_EP, reason="this onnxruntime build has no CUDAExecutionProvider (CPU wheel)")
def test_onnxruntime_cuda_parity(tiny_model_path: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(2).uniform(0, 255, (4, 3, 64, 64)).astype(np.float32)
    cpu = create_backend("onnxruntime-cpu", tiny_model_path, threads=1).embed(x)
    gpu = create_backend("onnxruntime-cuda", tiny_model_path, precision="fp32", budget_mib=512, state_dir=tmp_path)
    assert gpu.providers[0] == "CUDAExecutionProvider"
    assert _cos(gpu.embed(x), cpu).min() >= 0.99


@pytest.mark.skipif(not HAS_TRT_EP, reason="this onnxruntime build has no TensorrtExecutionProvider")
def test_onnxruntime_tensorrt_ep_parity_and_engine_cache(tiny_model_path: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(3).uniform(0, 255, (1, 3, 64, 64)).astype(np.float32)
    cpu = create_backend("onnxruntime-cpu", tiny_model_path, threads=1).embed(x)
    try:
        gpu = create_backend(
            "onnxruntime-tensorrt", tiny_model_path, precision="fp32", budget_mib=512, state_dir=tmp_path
        )
    except UsageError as exc:  # the provider is compiled in but TensorRT's libraries are missing
        pytest.skip(str(exc))
    assert gpu.providers[0] == "TensorrtExecutionProvider"
    assert _cos(gpu.embed(x), cpu).min() >= 0.99
    assert any(trt_cache_dir(tmp_path, "fp32").iterdir()), "the TensorRT EP wrote no engine cache"
