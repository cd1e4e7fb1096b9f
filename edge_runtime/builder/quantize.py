"""Make the model variants: input size, FP16 weights and activations, INT8 static QDQ.

INT8 uses explicit quantisation (QDQ nodes with per-channel weight scales and
symmetric activations) calibrated on catalogue images, so the scales come from
our data and TensorRT can consume the same file without its implicit
calibrator.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from edge_runtime.builder.backbone import MULTI_EMBEDDING_OUTPUT
from edge_runtime.errors import ModelError
from edge_runtime.types import Precision

log = logging.getLogger(__name__)


def load_model(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX model; a missing or invalid file is a ``ModelError`` naming it."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except FileNotFoundError:
        raise ModelError(f"{path}: model file not found") from None
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
        raise ModelError(f"{path}: not a valid ONNX model ({str(exc).splitlines()[0]})") from None
    return model


def image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The model's one image input, [N,3,S,S]; a ``ModelError`` for any other input layout."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"model has {len(inputs)} inputs ({[i.name for i in inputs]}); one image input is expected")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ModelError(f"model input {inputs[0].name} has rank {len(dims)}; [N,3,S,S] is expected")
    return inputs[0]


def native_input_size(model: onnx.ModelProto) -> int | None:
    """The fixed square input size the model was exported at, None when its spatial dims are symbolic."""
    dims = image_input(model).type.tensor_type.shape.dim
    if dims[2].HasField("dim_value") and dims[3].HasField("dim_value"):
        return int(dims[2].dim_value) if dims[2].dim_value == dims[3].dim_value else None
    return None


def with_input_size(model: onnx.ModelProto, size: int) -> onnx.ModelProto:
    """Fix the spatial input dims to ``size`` (batch stays symbolic) and drop stale inner shapes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    dims = image_input(out).type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = "N"
    for d in (dims[2], dims[3]):
        d.Clear()
        d.dim_value = size
    del out.graph.value_info[:]
    for output in out.graph.output:
        shape = output.type.tensor_type.shape
        if len(shape.dim):
            shape.dim[0].Clear()
            shape.dim[0].dim_param = "N"
    return out


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and compute, float32 at the edges so callers never see half floats."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)


class _Calibration:
    """Feeds calibration batches to onnxruntime's quantiser."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = 8) -> None:
        self.input_name = input_name
        self.batches = [images[i : i + batch].astype(np.float32) for i in range(0, len(images), batch)]
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.batches):
            return None
        self.pos += 1
        return {self.input_name: self.batches[self.pos - 1]}

    def rewind(self) -> None:
        self.pos = 0


Int8Scheme = Literal["u8s8", "s8s8"]


def int8_scheme_for(backend: str) -> Int8Scheme:
    """TensorRT only takes symmetric signed activations; x86/ARM CPU kernels are fastest with uint8 activations.

    Measured on the default backbone, 1 thread, onnxruntime 1.32 x86-64: u8s8 4.2 ms, s8s8 11.2 ms, fp32 8.0 ms;
    both keep embedding cosine to fp32 at 0.994-0.995.
    """
    return "s8s8" if "tensorrt" in backend else "u8s8"


def to_int8(model: onnx.ModelProto, calibration: np.ndarray, scheme: Int8Scheme = "u8s8") -> onnx.ModelProto:
    """Static INT8 QDQ: per-channel symmetric weights, activations from MinMax calibration."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ModelError("INT8 needs calibration images and the catalogue gave none")
    name = image_input(model).name
    with tempfile.TemporaryDirectory(prefix="edge-quant-") as tmp:
        src, pre, dst = Path(tmp, "in.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "out.onnx")
        onnx.save(model, str(src))
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception as exc:  # pre-processing is an optimisation; quantise the original if it fails
            log.warning("quantisation pre-processing skipped: %s", str(exc).splitlines()[0])
            pre = src
        quantize_static(
            str(pre),
            str(dst),
            _Calibration(name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8 if scheme == "s8s8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # The pooled-embedding tail is a few hundred FLOPs; rounding it to 8 bits only costs accuracy.
            nodes_to_exclude=[n.name for n in model.graph.node if n.name.startswith(MULTI_EMBEDDING_OUTPUT)],
            extra_options={
                "ActivationSymmetric": scheme == "s8s8",
                "WeightSymmetric": True,
                # TensorRT's ONNX parser takes DequantizeLinear on INT8/FP8 tensors only, and a quantised bias is
                # an INT32 initialiser feeding one (onnx-tensorrt#850): the TensorRT scheme keeps float biases,
                # which TensorRT fuses into the int8 convolution itself.
                "QuantizeBias": scheme != "s8s8",
            },
        )
        return onnx.load(str(dst))


def make_variant(
    fp32_model: onnx.ModelProto,
    precision: Precision,
    size: int,
    calibration: np.ndarray | None = None,
    int8_scheme: Int8Scheme = "u8s8",
) -> onnx.ModelProto:
    """The model for one (precision, input size) variant, built from the FP32 backbone."""
    sized = fp32_model if native_input_size(fp32_model) == size else with_input_size(fp32_model, size)
    if precision == "fp32":
        return sized
    if precision == "fp16":
        return to_fp16(sized)
    if calibration is None:
        raise ModelError("INT8 needs calibration images")
    return to_int8(sized, calibration, int8_scheme)
