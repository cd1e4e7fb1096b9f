"""The Backend protocol and the registry that maps profile names to implementations.

Two kinds of model run on a backend: the embedding model (``Backend``: image batches in, embeddings out), and
models whose outputs are used as they are, such as a region detector (``RawModel``: named inputs in, named
outputs out). Both are opened by registry name, and callers walk the profile's ``backend.prefer`` list to choose
(``first_available``, ``open_raw_model``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_runtime.errors import UsageError


class Backend(Protocol):
    """Runs the embedding model: float32 [N,3,S,S] raw RGB in, float32 [N,D] embeddings out."""

    name: str  # registry name, e.g. "onnxruntime-cpu"
    input_size: int
    providers: tuple[str, ...]  # what actually runs, for logs and status messages

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings of a batch: ``batch`` is float32 ``[N, 3, S, S]``, RGB in 0..255 as ``prepare_batch``
        makes it (S = ``input_size``); the result is float32 ``[N, D]``, one row per image, in batch order."""
        ...

    def close(self) -> None:
        """Release the model and its device memory; the backend is unusable afterwards."""
        ...


@dataclass(frozen=True)
class TensorSpec:
    """A model input: its name and shape; a dimension that is not fixed is a name or None."""

    name: str
    shape: tuple[int | str | None, ...]


class RawModel(Protocol):
    """Runs a model as it is: named float inputs in, named outputs out (a region detector; not the embedder)."""

    name: str  # registry name of what really runs, e.g. "onnxruntime-cpu"
    providers: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]  # output names
    metadata: Mapping[str, str]  # the model's own key/value metadata (ONNX metadata_props)

    def run(self, outputs: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The named ``outputs`` for the input arrays in ``feeds`` (input name -> array), in that order."""
        ...

    def close(self) -> None:
        """Release the model; unusable afterwards."""
        ...


ENGINE_DIR_ENV = "EDGE_ENGINE_DIR"


def default_engine_dir() -> Path:
    """The one folder of GPU engine caches on this device, shared by every edge-run instance (one per camera),
    edge-bench and ``edge-build --engine-on-device``: an engine takes minutes to build on a Jetson and is the
    same for every process that runs the same model on the same GPU (the cache key says so), so each camera
    building its own, or edge-bench measuring another one, would only cost time and flash.

    ``$EDGE_ENGINE_DIR``; else, under systemd, the ``StateDirectory=`` entry named ``engines`` (the units list
    ``StateDirectory=edge/%i edge/engines``: systemd passes both in ``$STATE_DIRECTORY``, colon-separated);
    else ``$XDG_STATE_HOME/edge_runtime/engines`` (``~/.local/state/edge_runtime/engines``).
    """
    explicit = os.environ.get(ENGINE_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit)
    for entry in os.environ.get("STATE_DIRECTORY", "").split(":"):
        if entry.strip() and Path(entry.strip()).name == "engines":
            return Path(entry.strip())
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "edge_runtime" / "engines"


DEFAULT_MAX_BATCH = 16  # regions.max_regions' default: the largest batch a GPU engine is built for


@dataclass(frozen=True)
class BackendOptions:
    """What a factory needs besides the model. The GPU fields are ignored by the CPU backend."""

    threads: int = 0
    embedding_output: str = "embedding"
    precision: str | None = None  # the bundle model's precision (fp32, fp16, int8); None = unknown
    budget_mib: float | None = None  # device.memory_budget_mib: GPU workspace and arena limits derive from it
    engine_dir: Path | None = None  # engine caches live under it; None = no ORT engine cache, default dir for TRT
    max_batch: int = DEFAULT_MAX_BATCH
    allow_fallback: bool = False  # accept onnxruntime running fewer providers than planned (logged)
    image_input: tuple[str, int] | None = None  # the model's image input (name, S): GPU engine profiles need it


Factory = Callable[[Path, BackendOptions], Backend]
RawFactory = Callable[[Path, BackendOptions], RawModel]
Probe = Callable[[], str | None]  # None when usable here, else the reason it is not


def _ort_factory(provider: str) -> Factory:
    def make(model: Path, opts: BackendOptions) -> Backend:
        from edge_runtime.backends.gpumem import is_jetson
        from edge_runtime.backends.onnxruntime import OrtBackend, model_key, provider_plan

        # The TensorRT EP's engine cache is named by the model's digest (a rebuilt model.onnx gets a new engine).
        key = model_key(model) if provider == "tensorrt" and opts.engine_dir is not None else None
        plan = provider_plan(
            provider,
            opts.precision,
            opts.budget_mib,
            opts.engine_dir,
            model=key,
            image_input=opts.image_input,
            max_batch=opts.max_batch,
            jetson=provider != "cpu" and is_jetson(),
        )
        return OrtBackend(
            model,
            threads=opts.threads,
            embedding_output=opts.embedding_output,
            plan=plan,
            allow_fallback=opts.allow_fallback,
        )

    return make


def _ort_raw_factory(provider: str) -> RawFactory:
    def make(model: Path, opts: BackendOptions) -> RawModel:
        from edge_runtime.backends.gpumem import is_jetson
        from edge_runtime.backends.onnxruntime import OrtModel, model_key, provider_plan

        key = model_key(model) if provider == "tensorrt" and opts.engine_dir is not None else None
        jetson = provider != "cpu" and is_jetson()
        plan = provider_plan(provider, opts.precision, opts.budget_mib, opts.engine_dir, model=key, jetson=jetson)
        return OrtModel(model, threads=opts.threads, plan=plan, allow_fallback=opts.allow_fallback)

    return make


def _ort_probe(provider: str) -> Probe:
    def probe() -> str | None:
        from edge_runtime.backends.onnxruntime import provider_missing_reason

        return provider_missing_reason(provider)

    return probe


def _tensorrt_probe() -> str | None:
    from edge_runtime.backends.tensorrt import tensorrt_probe

    return tensorrt_probe()


def _tensorrt_factory(model: Path, opts: BackendOptions) -> Backend:
    from edge_runtime.backends.tensorrt import TensorRTBackend

    return TensorRTBackend(
        model,
        engine_dir=opts.engine_dir,
        precision=opts.precision,
        budget_mib=opts.budget_mib,
        max_batch=opts.max_batch,
        embedding_output=opts.embedding_output,
    )


# Profile name -> (factory, probe). Order does not matter: the profile's `prefer` list decides.
REGISTRY: dict[str, tuple[Factory, Probe]] = {
    "onnxruntime-cpu": (_ort_factory("cpu"), _ort_probe("cpu")),
    "onnxruntime-cuda": (_ort_factory("cuda"), _ort_probe("cuda")),
    "onnxruntime-tensorrt": (_ort_factory("tensorrt"), _ort_probe("tensorrt")),
    "tensorrt": (_tensorrt_factory, _tensorrt_probe),
}

# Backends that can run a RawModel, and why the others cannot (yet).
RAW_REGISTRY: dict[str, RawFactory] = {
    "onnxruntime-cpu": _ort_raw_factory("cpu"),
    "onnxruntime-cuda": _ort_raw_factory("cuda"),
    "onnxruntime-tensorrt": _ort_raw_factory("tensorrt"),
}
RAW_UNSUPPORTED: dict[str, str] = {
    "tensorrt": "the native TensorRT backend runs only the embedding model; region detectors are not supported "
    "on it yet (list an onnxruntime backend, e.g. onnxruntime-tensorrt, in backend.prefer, or set "
    "backend.allow_fallback = true)",
}

LAST_RESORT = "onnxruntime-cpu"
PRECISIONS = ("fp32", "fp16", "int8")


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


def incompatible_reason(name: str, bundle_precision: str, int8_scheme: str | None = None) -> str | None:
    """Why a bundle's model cannot run on a backend even where the backend exists; None when it can.

    TensorRT takes only symmetric signed INT8 (s8s8); a model quantised with uint8 activations (u8s8, the
    scheme for CPU targets) is refused by its ONNX parser.
    """
    if bundle_precision == "int8" and int8_scheme == "u8s8" and "tensorrt" in name:
        return (
            "the bundle's int8 model has asymmetric uint8 activations (u8s8), which TensorRT refuses; "
            "build the bundle for a profile that prefers a TensorRT backend (s8s8)"
        )
    return None


def select_backend(
    prefer: Sequence[str],
    bundle_precision: str | None,
    allow_fallback: bool,
    *,
    int8_scheme: str | None = None,
) -> tuple[str, list[str]]:
    """The backend to run a bundle with, and one log line for each preferred backend that was passed over.

    Without ``allow_fallback`` only the first preferred backend may run: UsageError when it is not available
    here or cannot run the bundle's model. With it, the first usable one in ``prefer`` wins, and when none is,
    ``onnxruntime-cpu`` (always installed) runs as the last resort, said so in the log lines.
    """
    precision = bundle_precision or "fp32"
    if precision not in PRECISIONS:
        raise UsageError(f"unknown bundle precision {bundle_precision!r}", hint=f"one of {', '.join(PRECISIONS)}")
    if not prefer:
        raise UsageError("the profile's backend.prefer list is empty", hint="list at least one backend")
    lines: list[str] = []
    reasons: dict[str, str] = {}
    candidates = list(dict.fromkeys(prefer))
    if allow_fallback and LAST_RESORT not in candidates:
        candidates.append(LAST_RESORT)
    for name in candidates if allow_fallback else candidates[:1]:
        reason = incompatible_reason(name, precision, int8_scheme) or unavailable_reason(name)
        if reason is None:
            if name not in prefer:
                lines.append(f"no preferred backend is usable here; falling back to {name} (always installed)")
            return name, lines
        reasons[name] = reason
        lines.append(f"backend {name} skipped: {reason}")
    detail = "; ".join(f"{k}: {v}" for k, v in reasons.items())
    if not allow_fallback:
        raise UsageError(
            f"backend {prefer[0]} cannot run here ({detail}) and backend.allow_fallback is false",
            hint="install what the backend needs (see the reason), or set backend.allow_fallback = true",
        )
    raise UsageError(f"no usable inference backend ({detail})", hint="install onnxruntime")


def create_backend(
    name: str,
    model: Path,
    *,
    threads: int = 0,
    embedding_output: str = "embedding",
    precision: str | None = None,
    budget_mib: float | None = None,
    engine_dir: Path | None = None,
    max_batch: int | None = None,
    allow_fallback: bool = False,
    image_input: tuple[str, int] | None = None,
) -> Backend:
    """Open ``model`` on backend ``name``; UsageError when the backend is not available here.

    ``precision``, ``budget_mib`` and ``engine_dir`` configure the GPU backends (precision flags, workspace and
    arena limits from the memory budget, engine caches); ``max_batch`` is the largest batch a TensorRT engine
    is built for, ``image_input`` (the model's input name and size, from the bundle manifest) what its
    optimisation profile is given for. The CPU backend ignores them.
    """
    reason = unavailable_reason(name)
    if reason is not None:
        raise UsageError(f"backend {name!r} is not available here: {reason}")
    opts = BackendOptions(
        threads=threads,
        embedding_output=embedding_output,
        precision=precision,
        budget_mib=budget_mib,
        engine_dir=Path(engine_dir) if engine_dir is not None else None,
        max_batch=max_batch or DEFAULT_MAX_BATCH,
        allow_fallback=allow_fallback,
        image_input=image_input,
    )
    return REGISTRY[name][0](model, opts)


def open_raw_model(
    model: Path,
    prefer: Sequence[str],
    *,
    allow_fallback: bool = False,
    threads: int = 0,
    budget_mib: float | None = None,
    engine_dir: Path | None = None,
) -> RawModel:
    """Open ``model`` (ONNX, run as it is, in fp32) on the first backend of ``prefer`` that exists here and can run
    a raw model.

    Without ``allow_fallback`` only the first preferred backend may run it: UsageError, naming the fix, when it
    is not available here or cannot run raw models (the native TensorRT backend). With it, the first usable one
    wins, and ``onnxruntime-cpu`` (always installed) is the last resort. ModelError when the file is not a model
    the backend can load.
    """
    candidates = list(dict.fromkeys(prefer))
    if allow_fallback and LAST_RESORT not in candidates:
        candidates.append(LAST_RESORT)
    reasons: dict[str, str] = {}
    for name in candidates if allow_fallback else candidates[:1]:
        reason = RAW_UNSUPPORTED.get(name) or unavailable_reason(name)
        if reason is None and name not in RAW_REGISTRY:
            reason = "no raw-model support"
        if reason is None:
            opts = BackendOptions(
                threads=threads,
                budget_mib=budget_mib,
                engine_dir=Path(engine_dir) if engine_dir is not None else None,
                allow_fallback=allow_fallback,
            )
            return RAW_REGISTRY[name](Path(model), opts)
        reasons[name] = reason
    detail = "; ".join(f"{k}: {v}" for k, v in reasons.items()) or "backend.prefer lists none"
    raise UsageError(
        f"no backend here can run {Path(model).name} ({detail})",
        hint="list a backend in backend.prefer that exists here and runs ONNX models through onnxruntime",
    )
