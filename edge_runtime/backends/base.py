"""The Backend protocol and the registry that maps profile names to implementations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_runtime.errors import UsageError


class Backend(Protocol):
    """Runs the embedding model: float32 [N,3,S,S] raw RGB in, float32 [N,D] embeddings out."""

    name: str  # registry name, e.g. "onnxruntime-cpu"
    input_size: int
    providers: tuple[str, ...]  # what actually runs, for logs and status messages

    def embed(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


Factory = Callable[[Path, int, str], Backend]
Probe = Callable[[], str | None]  # None when usable here, else the reason it is not


def _ort_factory(provider: str) -> Factory:
    def make(model: Path, threads: int, embedding_output: str) -> Backend:
        from edge_runtime.backends.onnxruntime import OrtBackend

        return OrtBackend(model, threads=threads, embedding_output=embedding_output, provider=provider)

    return make


def _ort_probe(provider: str) -> Probe:
    def probe() -> str | None:
        from edge_runtime.backends.onnxruntime import provider_missing_reason

        return provider_missing_reason(provider)

    return probe


def _tensorrt_probe() -> str | None:
    return "the native TensorRT backend is not part of this build of edge_runtime yet"


def _tensorrt_factory(model: Path, threads: int, embedding_output: str) -> Backend:
    raise UsageError(f"backend 'tensorrt' is not available: {_tensorrt_probe()}")


# Profile name -> (factory, probe). Order does not matter: the profile's `prefer` list decides.
REGISTRY: dict[str, tuple[Factory, Probe]] = {
    "onnxruntime-cpu": (_ort_factory("cpu"), _ort_probe("cpu")),
    "onnxruntime-cuda": (_ort_factory("cuda"), _ort_probe("cuda")),
    "onnxruntime-tensorrt": (_ort_factory("tensorrt"), _ort_probe("tensorrt")),
    "tensorrt": (_tensorrt_factory, _tensorrt_probe),
}


def unavailable_reason(name: str) -> str | None:
    if name not in REGISTRY:
        return f"unknown backend {name!r} (known: {', '.join(sorted(REGISTRY))})"
    return REGISTRY[name][1]()


def available_backends() -> list[str]:
    return [name for name in REGISTRY if unavailable_reason(name) is None]


def first_available(prefer: Sequence[str]) -> tuple[str | None, dict[str, str]]:
    """First usable backend from a preference list, and why each earlier one was skipped."""
    skipped: dict[str, str] = {}
    for name in prefer:
        reason = unavailable_reason(name)
        if reason is None:
            return name, skipped
        skipped[name] = reason
    return None, skipped


def create_backend(name: str, model: Path, *, threads: int = 0, embedding_output: str = "embedding") -> Backend:
    reason = unavailable_reason(name)
    if reason is not None:
        raise UsageError(f"backend {name!r} is not available here: {reason}")
    return REGISTRY[name][0](model, threads, embedding_output)
