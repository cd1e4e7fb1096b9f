"""CUDA device buffers and a stream for the TensorRT backend, through cuda-python or pycuda (imported lazily).

cuda-python (NVIDIA's runtime bindings, in ``edge_runtime[tensorrt]``) is preferred; pycuda works instead where
the device image provides it. Both classes offer the same small interface (``CudaBinding``): device info,
malloc/free, a stream, host<->device copies and synchronisation, every failure raised as CudaError.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np

from edge_runtime.backends.tensorrt.probe import CUDA_BINDING_HINT
from edge_runtime.errors import UsageError

T = TypeVar("T")


class CudaError(UsageError):
    """The GPU runtime refused an operation (no device, out of memory, driver mismatch)."""


def _import_cudart() -> Any | None:
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (cuda-python >= 12.6) or ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # type: ignore[attr-defined,unused-ignore]  # needed only where cuda-python is installed

        return cudart
    except ImportError:
        return None


class CudaPython:
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


class PyCuda:
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


CudaBinding = CudaPython | PyCuda


def open_cuda(device_id: int = 0) -> CudaBinding:
    """cuda-python when installed, else pycuda; UsageError naming both when neither is."""
    cudart = _import_cudart()
    if cudart is not None:
        return CudaPython(cudart, device_id)
    try:
        import pycuda.driver as drv
    except ImportError:
        raise UsageError(
            "the tensorrt backend needs cuda-python or pycuda and neither is installed", hint=CUDA_BINDING_HINT
        ) from None
    return PyCuda(drv, device_id)
