"""Native TensorRT backend: an engine built on the device from the bundle's (QDQ) ONNX model, cached and verified.

This room holds the probe (probe.py: is TensorRT usable here, asked in a subprocess), the engine cache
(cache.py: keys, sidecars, verification, atomic writes, build lock), the CUDA buffers (cuda.py: cuda-python or
pycuda) and the engine build with the backend itself (engine.py: ``build_engine``, ``TensorRTBackend``).

Optional: ``pip install edge_runtime[tensorrt]`` adds TensorRT and NVIDIA's cuda-python. On a Jetson, TensorRT
comes with JetPack (apt package ``python3-libnvinfer``); a virtual environment sees it only when created with
``--system-site-packages``. pycuda works instead of cuda-python where the image provides it. Nothing here
imports ``tensorrt`` or a CUDA binding at module import time: only the functions that need them do, so the
package imports (and its tests run) on machines without a GPU.
"""

from edge_runtime.backends.base import ENGINE_DIR_ENV, default_engine_dir
from edge_runtime.backends.tensorrt.cache import (
    KEY_SCHEMA,
    SIDECAR_SCHEMA,
    CacheCheck,
    check_cached_engine,
    engine_cache_key,
    engine_cache_path,
    engine_key_fields,
    load_cached_engine,
    sidecar_path,
    write_cached_engine,
)
from edge_runtime.backends.tensorrt.cuda import CudaBinding, CudaError, CudaPython, PyCuda, open_cuda
from edge_runtime.backends.tensorrt.engine import DEFAULT_WORKSPACE_MIB, TensorRTBackend, build_engine, workspace_bytes
from edge_runtime.backends.tensorrt.probe import (
    CUDA_BINDING_HINT,
    PROBE_TIMEOUT_S,
    TRT_INSTALL_HINT,
    ProbeResult,
    probe_info,
    run_probe,
    tensorrt_probe,
)

__all__ = [
    "CUDA_BINDING_HINT",
    "DEFAULT_WORKSPACE_MIB",
    "ENGINE_DIR_ENV",
    "KEY_SCHEMA",
    "PROBE_TIMEOUT_S",
    "SIDECAR_SCHEMA",
    "TRT_INSTALL_HINT",
    "CacheCheck",
    "CudaBinding",
    "CudaError",
    "CudaPython",
    "ProbeResult",
    "PyCuda",
    "TensorRTBackend",
    "build_engine",
    "check_cached_engine",
    "default_engine_dir",
    "engine_cache_key",
    "engine_cache_path",
    "engine_key_fields",
    "load_cached_engine",
    "open_cuda",
    "probe_info",
    "run_probe",
    "sidecar_path",
    "tensorrt_probe",
    "workspace_bytes",
    "write_cached_engine",
]
