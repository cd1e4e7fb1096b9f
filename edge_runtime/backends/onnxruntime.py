"""ONNX Runtime backend: the CPU provider everywhere, the CUDA and TensorRT execution providers on NVIDIA GPUs.

Which providers a session gets, in which order and with which options, is a ``ProviderPlan`` made by the pure
function ``provider_plan()`` from the backend name, the bundle's precision, the profile's memory budget and
the device's engine folder; ``open_session()`` turns a plan into a session and checks which provider really runs.

Memory: the profile's ``device.memory_budget_mib`` covers the whole service (interpreter, model, engine
workspace, prototype table, frame buffers), so the GPU providers get fixed shares of it:

- TensorRT EP ``trt_max_workspace_size`` = 25 % of the budget (``TRT_WORKSPACE_FRACTION``): the scratch memory
  TensorRT may use while building and running an engine. Tactics that need more are skipped, not failed.
- CUDA EP ``gpu_mem_limit`` = 50 % of the budget (``CUDA_ARENA_FRACTION``): the cap of ONNX Runtime's CUDA
  arena (weights, activations), grown by exactly what is requested (``arena_extend_strategy=kSameAsRequested``)
  instead of doubling, which on a 4-8 GB Jetson would waste shared memory.

GPU builds of onnxruntime: the CUDA and TensorRT providers exist only in a GPU build of onnxruntime. On x86-64
that is the ``onnxruntime-gpu`` wheel from PyPI. On a Jetson (aarch64, JetPack) it is NOT on PyPI: install
NVIDIA's ``onnxruntime-gpu`` wheel built for your JetPack release (Jetson Zoo / Jetson AI Lab package index).
Both install the same ``onnxruntime`` module as the CPU wheel but under another distribution name, so a later
``pip install onnxruntime`` -- or ``pip install edge_runtime`` without ``--no-deps``, whose dependency is
named ``onnxruntime`` -- pulls the CPU wheel and overwrites the GPU build's files. Install the GPU wheel first,
then edge_runtime with ``--no-deps`` (and its other dependencies by name), and check with
``python -c "import onnxruntime as ort; print(ort.get_available_providers())"``. If the CPU wheel went over it:
``pip uninstall -y onnxruntime onnxruntime-gpu`` and reinstall the GPU wheel.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnxruntime as ort

from edge_runtime.backends.base import DEFAULT_MAX_BATCH, TensorSpec
from edge_runtime.errors import ModelError, UsageError

log = logging.getLogger(__name__)

MIB = 1024 * 1024

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
# The registry name that honestly describes a session whose first provider is this one.
BACKEND_OF_PROVIDER = {ep: f"onnxruntime-{short}" for short, ep in PROVIDERS.items()}
# Providers of each registry backend, in order: ONNX Runtime gives each node to the first provider that takes it.
PLAN_PROVIDERS = {
    "onnxruntime-cpu": ("cpu",),
    "onnxruntime-cuda": ("cuda", "cpu"),
    "onnxruntime-tensorrt": ("tensorrt", "cuda", "cpu"),
}

TRT_WORKSPACE_FRACTION = 0.25  # of device.memory_budget_mib, for trt_max_workspace_size
CUDA_ARENA_FRACTION = 0.50  # of device.memory_budget_mib, for the CUDA EP's gpu_mem_limit

GPU_INSTALL_HINT = (
    "install a GPU build of onnxruntime: on x86-64 `pip uninstall -y onnxruntime && pip install onnxruntime-gpu`; "
    "on a Jetson, NVIDIA's onnxruntime-gpu wheel for your JetPack release (Jetson Zoo / Jetson AI Lab index), "
    "then never `pip install onnxruntime` over it (install edge_runtime with --no-deps)"
)
TRT_EP_HINT = (
    "the TensorRT EP also needs TensorRT's libraries (libnvinfer) of the version this onnxruntime was built for"
)

OptionValue = str | int | bool


@dataclass(frozen=True)
class ProviderPlan:
    """Execution providers in order, each with its ONNX Runtime options (read-only mappings).

    ``backend`` is the registry name the plan was made for (e.g. ``onnxruntime-tensorrt``). Not hashable.
    """

    backend: str
    providers: tuple[str, ...]
    options: tuple[Mapping[str, OptionValue], ...]

    def __post_init__(self) -> None:
        if len(self.providers) != len(self.options) or not self.providers:
            raise ValueError("a provider plan needs one options mapping per provider, and at least one provider")
        object.__setattr__(self, "options", tuple(MappingProxyType(dict(o)) for o in self.options))

    @property
    def primary(self) -> str:
        return self.providers[0]

    def options_for(self, provider: str) -> dict[str, OptionValue]:
        return dict(self.options[self.providers.index(provider)])

    def for_ort(self) -> list[tuple[str, dict[str, OptionValue]]]:
        """The ``providers=`` argument of ``ort.InferenceSession``."""
        return [(p, dict(o)) for p, o in zip(self.providers, self.options, strict=True)]

    def without(self, provider: str) -> ProviderPlan:
        """The same plan minus one provider (used when falling back past a missing one)."""
        keep = [i for i, p in enumerate(self.providers) if p != provider]
        first = self.providers[keep[0]] if keep else PROVIDERS["cpu"]
        return ProviderPlan(
            backend=BACKEND_OF_PROVIDER.get(first, self.backend),
            providers=tuple(self.providers[i] for i in keep) or (PROVIDERS["cpu"],),
            options=tuple(self.options[i] for i in keep) or ({},),
        )


def _backend_name(name: str) -> str:
    """Accept the registry name (``onnxruntime-cuda``) or the short provider name (``cuda``)."""
    full = name if name.startswith("onnxruntime-") else f"onnxruntime-{name}"
    if full not in PLAN_PROVIDERS:
        raise UsageError(
            f"no onnxruntime provider plan for backend {name!r}", hint=f"use one of {', '.join(PLAN_PROVIDERS)}"
        )
    return full


def model_key(model: Path) -> str:
    """The first 16 hex digits of the model file's sha256 (which covers its input size)."""
    digest = hashlib.sha256()
    with open(model, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def trt_cache_dir(engine_dir: Path, precision: str, model: str | None = None) -> Path:
    """Where the TensorRT EP keeps its engines and timing cache.

    Keyed by onnxruntime version, precision and the model's ``model_key``: every bundle ships its model as
    ``model.onnx``, and the EP names engine files by model path and GPU, so without the model's digest a rebuilt
    model would silently run on the old model's engine. An engine from another onnxruntime/TensorRT release
    or precision setting must not be picked up either.
    """
    name = f"onnxruntime-{ort.__version__}-trt-{precision}" + (f"-{model}" if model else "")
    return Path(engine_dir) / name


def trt_profile_shapes(name: str, size: int, max_batch: int) -> dict[str, OptionValue]:
    """The TensorRT EP's optimisation profile for a ``[N, 3, size, size]`` input called ``name``: batches 1 to
    ``max_batch``, tuned for 1 (full-frame regions, the default, send one region per frame)."""
    if size < 1 or max_batch < 1 or not name or any(c in name for c in ":,"):  # the option's own separators
        raise UsageError(
            f"cannot give TensorRT an engine profile for input {name!r} of {size} px, batch {max_batch}",
            hint="rebuild the bundle with edge-build (its manifest records the model's input)",
        )
    shape = f"3x{size}x{size}"
    return {
        "trt_profile_min_shapes": f"{name}:1x{shape}",
        "trt_profile_opt_shapes": f"{name}:1x{shape}",
        "trt_profile_max_shapes": f"{name}:{max_batch}x{shape}",
    }


def provider_plan(
    backend_name: str,
    precision: str | None,
    budget_mib: float | None,
    engine_dir: Path | None,
    device_id: int = 0,
    model: str | None = None,
    image_input: tuple[str, int] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    jetson: bool = False,
) -> ProviderPlan:
    """The providers and options for one backend; pure (no GPU, no file system access).

    ``precision`` is the bundle model's precision (fp32, fp16, int8; None = fp32). For the TensorRT EP it sets
    ``trt_fp16_enable`` (fp16 and int8: layers outside Q/DQ pairs may run in fp16) and ``trt_int8_enable``
    (int8: the QDQ model's explicit scales are used, no calibration table). ``budget_mib`` None leaves
    ONNX Runtime's memory defaults; ``engine_dir`` None disables the engine and timing caches; ``model`` is the
    model's ``model_key``, which the engine cache folder is named by. ``image_input`` (name, S) of a
    ``[N, 3, S, S]`` model gives the TensorRT EP an explicit profile for batches 1..``max_batch``: without one it
    builds its engine for the first batch it sees and rebuilds it whenever a larger one arrives (minutes of
    stalled inference on a Jetson). ``jetson``: the CUDA EP picks convolution algorithms by cuDNN's heuristics
    instead of trying every one (the default search allocates each candidate's workspace from the memory the
    CPU shares, and adds seconds to the first inference).
    """
    backend = _backend_name(backend_name)
    precision = precision or "fp32"
    if precision not in ("fp32", "fp16", "int8"):
        raise UsageError(f"unknown model precision {precision!r}", hint="fp32, fp16 or int8")
    providers: list[str] = []
    options: list[dict[str, OptionValue]] = []
    for short in PLAN_PROVIDERS[backend]:
        providers.append(PROVIDERS[short])
        if short == "cpu":
            options.append({})
        elif short == "cuda":
            cuda: dict[str, OptionValue] = {"device_id": device_id, "arena_extend_strategy": "kSameAsRequested"}
            if jetson:
                cuda["cudnn_conv_algo_search"] = "HEURISTIC"
            if budget_mib is not None:
                cuda["gpu_mem_limit"] = int(budget_mib * CUDA_ARENA_FRACTION) * MIB
            options.append(cuda)
        else:
            trt: dict[str, OptionValue] = {
                "device_id": device_id,
                "trt_fp16_enable": precision in ("fp16", "int8"),
                "trt_int8_enable": precision == "int8",
            }
            if budget_mib is not None:
                trt["trt_max_workspace_size"] = int(budget_mib * TRT_WORKSPACE_FRACTION) * MIB
            if image_input is not None:
                trt.update(trt_profile_shapes(*image_input, max_batch))
            if engine_dir is not None:
                cache = str(trt_cache_dir(engine_dir, precision, model))
                trt.update(
                    trt_engine_cache_enable=True,
                    trt_engine_cache_path=cache,
                    trt_timing_cache_enable=True,
                    trt_timing_cache_path=cache,
                )
            else:
                trt.update(trt_engine_cache_enable=False, trt_timing_cache_enable=False)
            options.append(trt)
    return ProviderPlan(backend=backend, providers=tuple(providers), options=tuple(options))


def provider_missing_reason(provider: str) -> str | None:
    """None when this onnxruntime build has the provider (``cpu``, ``cuda``, ``tensorrt``), else why not + fix."""
    wanted = PROVIDERS[provider]
    available = ort.get_available_providers()
    if wanted in available:
        return None
    return (
        f"this onnxruntime build ({ort.__version__}, providers: {', '.join(available)}) has no {wanted}; "
        f"{GPU_INSTALL_HINT}"
    )


def session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = max(0, threads)
    # One model, one request at a time: parallel graph branches buy nothing and cost threads.
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


def _usable_plan(plan: ProviderPlan, allow_fallback: bool) -> ProviderPlan:
    """Drop providers this onnxruntime build lacks: refused for the primary one unless fallback is allowed."""
    available = set(ort.get_available_providers())
    for provider in plan.providers:
        if provider in available:
            continue
        short = next(k for k, v in PROVIDERS.items() if v == provider)
        reason = provider_missing_reason(short)
        if provider == plan.primary and not allow_fallback:
            raise UsageError(
                f"backend {plan.backend}: {provider} is not available here",
                hint=f"{GPU_INSTALL_HINT}; or set backend.allow_fallback = true in the profile",
            )
        log.warning("backend %s: skipping %s: %s", plan.backend, provider, reason)
        plan = plan.without(provider)
    return plan


def _new_session(source: str | bytes, threads: int, plan: ProviderPlan, where: str) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(source, sess_options=session_options(threads), providers=plan.for_ort())
    except Exception as exc:  # onnxruntime raises several unrelated exception types for bad models
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{where}: onnxruntime cannot load it ({first_line})", hint="pass a valid ONNX model"
        ) from None


def open_session(
    model: Path | bytes,
    threads: int,
    provider: ProviderPlan | str = "cpu",
    *,
    allow_fallback: bool = False,
) -> ort.InferenceSession:
    """An inference session following ``provider`` (a plan, or ``cpu``/``cuda``/``tensorrt`` with defaults).

    ONNX Runtime silently falls back to other providers when one cannot start (missing CUDA/TensorRT
    libraries, no GPU). The providers the session really has are checked against the plan: a missing primary
    provider raises UsageError unless ``allow_fallback``, in which case it is logged.
    """
    plan = provider if isinstance(provider, ProviderPlan) else provider_plan(provider, None, None, None)
    plan = _usable_plan(plan, allow_fallback)
    for opts in plan.options:
        cache = opts.get("trt_engine_cache_path")
        if isinstance(cache, str) and cache:
            Path(cache).mkdir(parents=True, exist_ok=True)
    source = model if isinstance(model, bytes) else str(model)
    where = "model bytes" if isinstance(model, bytes) else str(model)
    session = _new_session(source, threads, plan, where)
    running = tuple(session.get_providers())
    if plan.primary not in running:
        message = f"backend {plan.backend}: {plan.primary} did not start for {where}; onnxruntime runs {running}"
        if not allow_fallback:
            hint = TRT_EP_HINT if plan.primary == PROVIDERS["tensorrt"] else "check the CUDA/cuDNN libraries"
            raise UsageError(message, hint=f"{hint}; onnxruntime's log (severity 0-2) says why")
        log.warning("%s (falling back)", message)
        if len(plan.providers) > 1:
            # onnxruntime's own fallback retries with the remaining providers' default options (no
            # gpu_mem_limit: the CUDA arena could outgrow the budget); reopen from our plan without the primary.
            plan = plan.without(plan.primary)
            session = _new_session(source, threads, plan, where)
            running = tuple(session.get_providers())
    if plan.primary != PROVIDERS["cpu"] or len(plan.providers) > 1:
        log.info("onnxruntime session for %s runs on %s", where, ", ".join(running))
    return session


class OrtModel:
    """A ``RawModel`` on ONNX Runtime: any ONNX model run as it is (a region detector).

    ``plan`` wins over ``provider``; without either the CPU runs. ``name`` is the registry name of what really
    runs, as for ``OrtBackend``.
    """

    def __init__(
        self,
        model: Path,
        *,
        threads: int = 0,
        provider: str = "cpu",
        plan: ProviderPlan | None = None,
        allow_fallback: bool = False,
    ) -> None:
        plan = plan or provider_plan(provider, None, None, None)
        self.session = open_session(model, threads, plan, allow_fallback=allow_fallback)
        self.providers = tuple(self.session.get_providers())
        self.name = BACKEND_OF_PROVIDER.get(self.providers[0], plan.backend)
        self.inputs = tuple(TensorSpec(i.name, tuple(i.shape)) for i in self.session.get_inputs())
        self.outputs = tuple(o.name for o in self.session.get_outputs())
        self.metadata: Mapping[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, outputs: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The named ``outputs`` for ``feeds`` (input name -> array), as numpy arrays in that order."""
        return [np.asarray(out) for out in self.session.run(list(outputs), dict(feeds))]

    def close(self) -> None:
        """Drop the session (idempotent)."""
        self.__dict__.pop("session", None)


class OrtBackend:
    """Embeds preprocessed batches with an ONNX Runtime session.

    ``plan`` wins over ``provider``; without either the CPU runs. ``name`` is the registry name of what really
    runs: after an allowed fallback from the TensorRT EP to the CUDA EP it says ``onnxruntime-cuda``.
    """

    def __init__(
        self,
        model: Path,
        *,
        threads: int = 0,
        embedding_output: str = "embedding",
        provider: str = "cpu",
        plan: ProviderPlan | None = None,
        allow_fallback: bool = False,
    ) -> None:
        raw = OrtModel(model, threads=threads, provider=provider, plan=plan, allow_fallback=allow_fallback)
        self.session = raw.session
        self.providers = raw.providers
        self.name = raw.name
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
        """Embeddings of ``batch`` (float32 ``[N, 3, S, S]``, RGB 0..255) as float32 ``[N, D]``, in one session
        run; whatever trailing shape the embedding output has is flattened into D."""
        (out,) = self.session.run(self.output_names, {self.input_name: batch})
        return np.asarray(out, dtype=np.float32).reshape(out.shape[0], -1)

    def close(self) -> None:
        """Drop the session (idempotent)."""
        self.__dict__.pop("session", None)
