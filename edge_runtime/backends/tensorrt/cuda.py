"""CUDA device buffers and a stream for the TensorRT backend, through cuda-python or pycuda (imported lazily).

cuda-python (NVIDIA's runtime bindings, in ``edge_runtime[tensorrt]``) is preferred; pycuda works instead where
the device image provides it, and also where cuda-python is installed but cannot talk to the driver (a
cuda-python built for a newer CUDA than the JetPack's driver fails at its first call, not at import). Both
classes offer the same small interface (``CudaBinding``): device info, device malloc/free, page-locked host
buffers, a stream, asynchronous host<->device copies and synchronisation, every failure raised as CudaError.

Host buffers are page-locked (pinned) because a copy from pageable memory is staged through a driver buffer
and is synchronous with respect to the host: with pinned buffers, copy in, inference and copy out are queued on
one stream and the host waits once per call.
"""

from __future__ import annotations

import contextlib
import ctypes
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

    def host_empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """A page-locked host array (cudaMallocHost), freed with ``host_free``."""
        count = max(1, int(np.prod(shape)))
        nbytes = count * np.dtype(dtype).itemsize
        ptr = int(self._call("cudaMallocHost", nbytes))
        raw = memoryview((ctypes.c_ubyte * nbytes).from_address(ptr)).cast("B")
        return np.frombuffer(raw, dtype=np.dtype(dtype), count=count).reshape(shape)

    def host_free(self, array: np.ndarray) -> None:
        self._call("cudaFreeHost", array.ctypes.data)

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
    """The same buffer path with pycuda (driver API, the device's primary context, shared with TensorRT)."""

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

    def host_empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        array: np.ndarray = self._guard("pagelocked_empty", self.drv.pagelocked_empty, shape, dtype)
        return array

    def host_free(self, array: np.ndarray) -> None:
        base = getattr(array, "base", None)
        if base is not None and hasattr(base, "free"):
            self._guard("free host", base.free)

    def stream(self) -> Any:
        return self._guard("Stream", self.drv.Stream)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def htod(self, dst: int, host: np.ndarray, stream: Any) -> None:
        self._guard("memcpy_htod_async", self.drv.memcpy_htod_async, dst, host, stream)

    def dtoh(self, host: np.ndarray, src: int, stream: Any) -> None:
        self._guard("memcpy_dtoh_async", self.drv.memcpy_dtoh_async, host, src, stream)

    def synchronize(self, stream: Any) -> None:
        self._guard("stream synchronize", stream.synchronize)

    def destroy(self, stream: Any) -> None:
        del stream


CudaBinding = CudaPython | PyCuda


def open_cuda(device_id: int = 0) -> CudaBinding:
    """cuda-python when installed and the driver accepts it, else pycuda; UsageError naming both when neither is
    installed, CudaError with each one's reason when neither can open the device."""
    failures: list[str] = []
    cudart = _import_cudart()
    if cudart is not None:
        try:
            return CudaPython(cudart, device_id)
        except Exception as exc:  # a driver older than the bindings, no device: pycuda may still work
            failures.append(f"cuda-python: {exc}")
    try:
        import pycuda.driver as drv
    except ImportError:
        if failures:
            raise CudaError(
                f"CUDA device {device_id} cannot be opened ({failures[0]}; pycuda is not installed)",
                hint="install the cuda-python release that matches the driver's CUDA (JetPack 6: cuda-python 12.x)",
            ) from None
        raise UsageError(
            "the tensorrt backend needs cuda-python or pycuda and neither is installed", hint=CUDA_BINDING_HINT
        ) from None
    try:
        return PyCuda(drv, device_id)
    except Exception as exc:
        failures.append(f"pycuda: {exc}")
    raise CudaError(
        f"CUDA device {device_id} cannot be opened: {'; '.join(failures)}",
        hint="check the GPU and its driver (nvidia-smi or tegrastats) and that the CUDA bindings match the driver",
    )
