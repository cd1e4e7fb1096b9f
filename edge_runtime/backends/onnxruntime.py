"""ONNX Runtime backend (CPU now; the CUDA and TensorRT execution providers share the code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_runtime.errors import ModelError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def provider_missing_reason(provider: str) -> str | None:
    wanted = PROVIDERS[provider]
    if wanted in ort.get_available_providers():
        return None
    return f"this onnxruntime build ({ort.__version__}) has no {wanted}"


def session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = max(0, threads)
    # One model, one request at a time: parallel graph branches buy nothing and cost threads.
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


def open_session(model: Path | bytes, threads: int, provider: str = "cpu") -> ort.InferenceSession:
    source = model if isinstance(model, bytes) else str(model)
    providers = [PROVIDERS[provider]]
    if provider != "cpu":
        providers.append(PROVIDERS["cpu"])
    try:
        return ort.InferenceSession(source, sess_options=session_options(threads), providers=providers)
    except Exception as exc:  # onnxruntime raises several unrelated exception types for bad models
        where = "model bytes" if isinstance(model, bytes) else str(model)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{where}: onnxruntime cannot load it ({first_line})", hint="pass a valid ONNX model"
        ) from None


class OrtBackend:
    """Embeds preprocessed batches with an ONNX Runtime session."""

    def __init__(self, model: Path, *, threads: int = 0, embedding_output: str = "embedding", provider: str = "cpu"):
        self.name = f"onnxruntime-{provider}"
        self.session = open_session(model, threads, provider)
        self.providers = tuple(self.session.get_providers())
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{model}: expected one image input, found {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        if len(shape) != 4 or not isinstance(shape[2], int) or shape[2] != shape[3]:
            raise ModelError(f"{model}: input {self.input_name} must be [N,3,S,S] with a fixed S, found {shape}")
        self.input_size = int(shape[2])
        outputs = [o.name for o in self.session.get_outputs()]
        if embedding_output not in outputs:
            raise ModelError(
                f"{model}: no output named {embedding_output!r} (outputs: {', '.join(outputs)})",
                hint="set backend.embedding_output in the profile to the embedding output's name",
            )
        self.output_names = [embedding_output]

    def embed(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(self.output_names, {self.input_name: batch})
        return np.asarray(out, dtype=np.float32).reshape(out.shape[0], -1)

    def close(self) -> None:
        del self.session
