"""The onnxruntime backends: provider plans, missing providers and fallback, backend selection, GPU parity.

The pure logic runs everywhere; the parity checks skip where the onnxruntime build has no CUDA or TensorRT
provider.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge_runtime.backends import create_backend, select_backend
from edge_runtime.backends import tensorrt as trt_backend
from edge_runtime.backends.base import incompatible_reason
from edge_runtime.backends.onnxruntime import (
    CUDA_ARENA_FRACTION,
    MIB,
    TRT_WORKSPACE_FRACTION,
    OrtBackend,
    ProviderPlan,
    model_key,
    open_session,
    provider_plan,
    trt_cache_dir,
)
from edge_runtime.errors import ModelError, UsageError
from edge_runtime.profile import load_profile
from tests.conftest import tiny_backbone

HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()
HAS_TRT_EP = "TensorrtExecutionProvider" in ort.get_available_providers()
cpu_only_ort = pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime build has the CUDA provider")


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


def test_tensorrt_ep_engines_are_kept_per_model(tmp_path: Path) -> None:
    """Every bundle ships model.onnx: a rebuilt model must not run on the previous model's cached engine."""
    first, second = tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx"
    for path, size in ((first, 64), (second, 96)):
        path.parent.mkdir()
        onnx.save(tiny_backbone(size), str(path))
    keys = model_key(first), model_key(second)
    assert keys[0] != keys[1] and len(keys[0]) == 16
    assert model_key(first) == keys[0]  # the same bytes, the same engine
    folders = [
        provider_plan("onnxruntime-tensorrt", "fp16", 2048, tmp_path, model=k).options_for("TensorrtExecutionProvider")[
            "trt_engine_cache_path"
        ]
        for k in keys
    ]
    assert folders[0] != folders[1] and all(str(f).endswith(k) for f, k in zip(folders, keys, strict=True))


def test_on_a_jetson_the_cuda_ep_picks_convolutions_by_heuristics() -> None:
    for backend, provider in (
        ("onnxruntime-cuda", "CUDAExecutionProvider"),
        ("onnxruntime-tensorrt", "CUDAExecutionProvider"),
    ):
        jetson = provider_plan(backend, "fp16", 2048, None, jetson=True).options_for(provider)
        assert jetson["cudnn_conv_algo_search"] == "HEURISTIC"
        assert "cudnn_conv_algo_search" not in provider_plan(backend, "fp16", 2048, None).options_for(provider)


def test_tensorrt_ep_gets_an_engine_profile_for_every_batch_up_to_the_largest() -> None:
    """Without explicit profile shapes the EP builds for the first batch and rebuilds on every larger one."""
    plan = provider_plan("onnxruntime-tensorrt", "fp16", 2048, None, image_input=("image", 224), max_batch=8)
    trt = plan.options_for("TensorrtExecutionProvider")
    assert trt["trt_profile_min_shapes"] == "image:1x3x224x224"
    assert trt["trt_profile_opt_shapes"] == "image:1x3x224x224"
    assert trt["trt_profile_max_shapes"] == "image:8x3x224x224"
    assert "trt_profile_min_shapes" not in provider_plan("onnxruntime-tensorrt", "fp16", 2048, None).options_for(
        "TensorrtExecutionProvider"
    )
    with pytest.raises(UsageError, match="engine profile"):
        provider_plan("onnxruntime-tensorrt", "fp16", None, None, image_input=("a:b", 224))
    # The CUDA and CPU providers take no profile.
    cuda = provider_plan("onnxruntime-cuda", "fp16", 2048, None, image_input=("image", 224))
    assert not any(k.startswith("trt_") for k in cuda.options_for("CUDAExecutionProvider"))


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
    assert Path(cache).parent == tmp_path  # in the device's engine folder itself
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


@cpu_only_ort
def test_a_gpu_provider_that_does_not_start_is_retried_with_our_options(
    tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime's own fallback drops every provider option (gpu_mem_limit included): when the TensorRT EP
    is present but does not start, the session is reopened from our plan without it. The GPU build is played by
    this CPU build claiming the GPU providers (no GPU here); onnxruntime itself really runs."""
    from edge_runtime.backends import onnxruntime as ort_backend

    monkeypatch.setattr(
        ort_backend.ort,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    asked: list[list[tuple[str, dict[str, object]]]] = []
    real = ort.InferenceSession

    def recording(source: object, sess_options: object = None, providers: object = None) -> ort.InferenceSession:
        asked.append(list(providers))  # type: ignore[call-overload]
        return real(source, sess_options=sess_options, providers=["CPUExecutionProvider"])  # type: ignore[arg-type]

    monkeypatch.setattr(ort_backend.ort, "InferenceSession", recording)
    plan = provider_plan("onnxruntime-tensorrt", "fp16", 1024, None)
    backend = OrtBackend(tiny_model_path, threads=1, plan=plan, allow_fallback=True)
    assert [p for p, _ in asked[0]] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert [p for p, _ in asked[1]] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert asked[1][0][1]["gpu_mem_limit"] == int(1024 * CUDA_ARENA_FRACTION) * MIB  # our options, kept
    assert backend.providers == ("CPUExecutionProvider",)
    with pytest.raises(UsageError, match="did not start"):
        OrtBackend(tiny_model_path, threads=1, plan=plan, allow_fallback=False)


def test_create_backend_keeps_its_old_call_and_takes_gpu_options(tiny_model_path: Path, tmp_path: Path) -> None:
    x = np.zeros((2, 3, 64, 64), np.float32)
    old = create_backend("onnxruntime-cpu", tiny_model_path, threads=1, embedding_output="embedding")
    new = create_backend(
        "onnxruntime-cpu", tiny_model_path, threads=1, precision="fp32", budget_mib=256, engine_dir=tmp_path
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


@pytest.mark.skipif(not HAS_CUDA_EP, reason="this onnxruntime build has no CUDAExecutionProvider (CPU wheel)")
def test_onnxruntime_cuda_parity(tiny_model_path: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(2).uniform(0, 255, (4, 3, 64, 64)).astype(np.float32)
    cpu = create_backend("onnxruntime-cpu", tiny_model_path, threads=1).embed(x)
    gpu = create_backend("onnxruntime-cuda", tiny_model_path, precision="fp32", budget_mib=512, engine_dir=tmp_path)
    assert gpu.providers[0] == "CUDAExecutionProvider"
    assert _cos(gpu.embed(x), cpu).min() >= 0.99


@pytest.mark.skipif(not HAS_TRT_EP, reason="this onnxruntime build has no TensorrtExecutionProvider")
def test_onnxruntime_tensorrt_ep_parity_and_engine_cache(tiny_model_path: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(3).uniform(0, 255, (1, 3, 64, 64)).astype(np.float32)
    cpu = create_backend("onnxruntime-cpu", tiny_model_path, threads=1).embed(x)
    try:
        gpu = create_backend(
            "onnxruntime-tensorrt", tiny_model_path, precision="fp32", budget_mib=512, engine_dir=tmp_path
        )
    except UsageError as exc:  # the provider is compiled in but TensorRT's libraries are missing
        pytest.skip(str(exc))
    assert gpu.providers[0] == "TensorrtExecutionProvider"
    assert _cos(gpu.embed(x), cpu).min() >= 0.99
    cache = trt_cache_dir(tmp_path, "fp32", model_key(tiny_model_path))
    assert any(cache.iterdir()), "the TensorRT EP wrote no engine cache"
