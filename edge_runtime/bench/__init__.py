"""edge-bench: run a bundle's real pipeline on the device and check it against the profile's limits.

This room holds the flow (runner.py: ``BenchOptions``, ``run_bench``), the report with its limits, table and JSON
(report.py: ``BenchReport``, ``Limits``, ``BENCH_SCHEMA``), the synthetic camera (synthetic.py:
``SyntheticSource``, rendered in a child process) and the machine description with the GPU memory readers
(machine.py: ``describe_machine``).

The frames go through ``run.pipeline.run`` itself, the code edge-run runs: the same backend selection, region
finder, preprocessing, ``Head.decide``, JSON and JPEG crop encoding, in the same capture / inference / publish
threads. Only the sink differs: without ``publish`` every message is built and serialised, then discarded (the
pipeline's ``NullPublisher``), so a bench run neither needs a broker nor leaves anything in an outbox; with it,
messages go through the durable outbox to the broker as in service (under a ``-bench`` device id, so the bench
never takes the service's MQTT session or overwrites its retained status).

What is measured, and why this way:

* **Frames** are read as fast as the pipeline takes them (files never drop), every frame is processed (the
  motion sampler is off): throughput is the pipeline's capacity, not the camera's rate. The first ``warmup``
  frames (session start-up, first-call allocations, cold caches) are not counted.
* **Stage latencies** per frame: capture (read and decode), regions, preprocess, inference, head, encode (JSON
  and JPEG crops) and publish (serialisation; plus the fsynced outbox write with ``publish``).
* **End to end** is the sum of a frame's stages: its latency when it waits in no queue, which is the case on a
  camera the pipeline keeps up with. ``end_to_end_saturated`` (read start to stored, queue waits included)
  is what it becomes when frames arrive faster than they are processed, as in this bench; it is reported,
  not checked, because the bench makes the queues full on purpose.
* **Memory**: the process's peak resident set (a sampler thread and the kernel's high-water mark VmHWM, which
  also covers start-up), plus GPU memory where the platform tells (NVML, nvmap), the same sum edge-build's
  footprint makes. Headroom = 1 - peak / budget.

Limits: headroom >= ``device.min_headroom`` and p95 end to end <= ``backend.max_latency_ms``, from the bundle's
own profile, or from another profile (what-if: the same bundle on a smaller device), each overridable.
"""

from edge_runtime.bench.machine import describe_machine
from edge_runtime.bench.report import BENCH_SCHEMA, BenchReport, Limits
from edge_runtime.bench.runner import BenchOptions, run_bench
from edge_runtime.bench.synthetic import SyntheticSource, render_frames

__all__ = [
    "BENCH_SCHEMA",
    "BenchOptions",
    "BenchReport",
    "Limits",
    "SyntheticSource",
    "describe_machine",
    "render_frames",
    "run_bench",
]
