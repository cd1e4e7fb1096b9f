from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_runtime.backends import create_backend
from edge_runtime.builder.footprint import measure_in_subprocess
from edge_runtime.builder.quantize import load_model, make_variant, native_input_size
from edge_runtime.errors import ModelError
from tests.conftest import tiny_backbone


def _embed(model: onnx.ModelProto, x: np.ndarray, tmp_path: Path, name: str) -> np.ndarray:
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    backend = create_backend("onnxruntime-cpu", path, threads=1)
    return backend.embed(x)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_variants_of_a_small_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    base = tiny_backbone(64)
    x = rng.uniform(0, 255, (6, 3, 64, 64)).astype(np.float32)
    calib = rng.uniform(0, 255, (16, 3, 64, 64)).astype(np.float32)
    ref = _embed(base, x, tmp_path, "fp32")

    fp16 = make_variant(base, "fp16", 64)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)
    assert _cos(_embed(fp16, x, tmp_path, "fp16"), ref).min() > 0.999

    int8 = make_variant(base, "int8", 64, calib)
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
    assert _cos(_embed(int8, x, tmp_path, "int8"), ref).mean() > 0.98


def _dequantised_initialiser_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of every initialiser a DequantizeLinear reads, by name."""
    inits = {i.name: i.data_type for i in model.graph.initializer}
    return {
        n.input[0]: inits[n.input[0]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits
    }


def test_the_tensorrt_int8_scheme_keeps_float_biases(tmp_path: Path) -> None:
    """TensorRT's parser takes DequantizeLinear on INT8/FP8 only: no INT32 (quantised bias) may feed one."""
    rng = np.random.default_rng(2)
    base = tiny_backbone(64)
    calib = rng.uniform(0, 255, (16, 3, 64, 64)).astype(np.float32)
    trt = make_variant(base, "int8", 64, calib, "s8s8")
    read = _dequantised_initialiser_types(trt)
    assert read and set(read.values()) == {onnx.TensorProto.INT8}, read  # the weights, per channel
    biases = {n.input[2] for n in trt.graph.node if n.op_type == "Conv" and len(n.input) > 2}
    floats = {i.name for i in trt.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert biases and biases <= floats
    x = rng.uniform(0, 255, (6, 3, 64, 64)).astype(np.float32)
    ref = _embed(base, x, tmp_path, "fp32")
    assert _cos(_embed(trt, x, tmp_path, "s8s8"), ref).mean() > 0.98
    # The CPU scheme still quantises biases (onnxruntime fuses them into its integer kernels).
    cpu = make_variant(base, "int8", 64, calib, "u8s8")
    assert onnx.TensorProto.INT32 in set(_dequantised_initialiser_types(cpu).values())


def test_input_size_variant(tmp_path: Path) -> None:
    sized = make_variant(tiny_backbone(64), "fp32", 96)
    assert native_input_size(sized) == 96
    out = _embed(sized, np.zeros((2, 3, 96, 96), np.float32), tmp_path, "s96")
    assert out.shape == (2, 16)


def test_int8_needs_calibration() -> None:
    with pytest.raises(ModelError):
        make_variant(tiny_backbone(64), "int8", 64, None)


def test_load_model_refuses_non_onnx(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf at all \x00\xff")
    with pytest.raises(ModelError, match=r"bad\.onnx"):
        load_model(bad)
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing.onnx")


def test_missing_embedding_output_is_named(tiny_model_path: Path) -> None:
    with pytest.raises(ModelError, match="features"):
        create_backend("onnxruntime-cpu", tiny_model_path, embedding_output="features")


def test_footprint_measured_in_a_subprocess(tiny_model_path: Path) -> None:
    frame_bytes = 64 * 1024 * 1024
    small = measure_in_subprocess(tiny_model_path, backend="onnxruntime-cpu", threads=1, runs=5, warmup=1)
    big = measure_in_subprocess(
        tiny_model_path, backend="onnxruntime-cpu", threads=1, runs=5, warmup=1, frame_bytes=frame_bytes
    )
    assert small.backend == "onnxruntime-cpu"
    assert small.peak_rss_mib >= small.baseline_rss_mib > 10  # an interpreter with numpy and onnxruntime
    assert small.latency_ms_p50 > 0 and small.latency_ms_p95 >= small.latency_ms_p50
    # The 64 MiB frame queue is really allocated and touched in the child, so the peak must show it.
    assert big.peak_rss_mib - small.peak_rss_mib > 0.8 * 64
    tensors = measure_in_subprocess(
        tiny_model_path, backend="onnxruntime-cpu", threads=1, runs=5, warmup=1, tensor_bytes=frame_bytes
    )
    assert tensors.peak_rss_mib - small.peak_rss_mib > 0.8 * 64  # so is the tensor queue


def test_the_footprint_child_opens_the_model_with_edge_runs_settings(tiny_model_path: Path, tmp_path: Path) -> None:
    """Precision, budget, batch profile and input reach the child's backend (a GPU engine built without them is
    another engine); the CPU backend takes and ignores them, and the child's engine folder goes with it."""
    before = set(Path(tempfile.gettempdir()).glob("edge-probe-*"))
    m = measure_in_subprocess(
        tiny_model_path, backend="onnxruntime-cpu", threads=1, runs=3, warmup=1,
        precision="int8", budget_mib=512.0, max_batch=4, image_input=("image", 64),
    )  # fmt: skip
    assert m.backend == "onnxruntime-cpu" and m.latency_ms_p50 > 0
    assert set(Path(tempfile.gettempdir()).glob("edge-probe-*")) == before
    with pytest.raises(ModelError, match="measurement process failed"):
        measure_in_subprocess(tiny_model_path, backend="onnxruntime-cpu", threads=1, runs=1, precision="int4")


def test_build_counts_every_frame_and_tensor_edge_run_can_hold() -> None:
    from edge_runtime.builder.footprint import (
        FRAME_QUEUE_DEPTH,
        TENSOR_QUEUE_DEPTH,
        regions_per_frame,
        tensor_queue_bytes,
    )
    from edge_runtime.profile import load_profile
    from edge_runtime.run import queues as run

    assert FRAME_QUEUE_DEPTH == run.FRAME_QUEUE + run.TENSOR_QUEUE + run.PUBLISH_QUEUE
    assert TENSOR_QUEUE_DEPTH == run.TENSOR_QUEUE
    assert tensor_queue_bytes(3, 224) == TENSOR_QUEUE_DEPTH * 3 * 3 * 224 * 224 * 4
    shelf = load_profile("shelf-cam-v1")  # a shelf scene: every facing of the planogram, every frame
    assert shelf.scene.shelf is not None
    assert regions_per_frame(shelf) == sum(s.facings for s in shelf.scene.shelf.slots) == 16
    assert load_profile("dev-cpu").regions.mode == "full" and regions_per_frame(load_profile("dev-cpu")) == 1


def test_measurement_failure_is_a_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="measurement process failed"):
        measure_in_subprocess(bad, backend="onnxruntime-cpu", threads=1, runs=3, warmup=1)
