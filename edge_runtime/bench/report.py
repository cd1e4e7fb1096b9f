"""The bench's report: the measured figures, the limits they are checked against, the table and the JSON.

Its own room because it is the bench's output format (``edge.bench/1``, read by CI and by people) and holds no
measuring: ``runner.run_bench`` fills it in.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_runtime.errors import BenchLimitError

BENCH_SCHEMA = "edge.bench/1"


@dataclass(frozen=True)
class Limits:
    budget_mib: float
    min_headroom: float
    max_latency_ms: float
    source: str  # where they came from, for the report


@dataclass(frozen=True)
class BenchReport:
    """Everything one bench run measured; ``as_dict()`` is the ``--json`` object."""

    bundle: str
    bundle_id: str
    variant: str
    backend: str
    precision: str
    table_precision: str
    input_size: int
    threads: dict[str, int]  # configured (0 = backend default) and used
    machine: dict[str, Any]
    source: str
    published: bool
    frames: dict[str, int]  # measured, warmup, read, processed, errors, dropped
    regions: int  # in the measured frames
    routes: dict[str, int]  # whole run, warm-up included
    latency_ms: dict[str, dict[str, float]]  # stage -> {p50, p95, p99, mean}; end_to_end, end_to_end_saturated
    throughput: dict[str, float]  # fps, regions_per_s, seconds
    memory: dict[str, Any]  # peak_rss_mib, vm_hwm_mib, gpu_mib (None: not exposed), peak_mib, budget, headroom
    predicted_footprint_mib: float | None  # what edge-build measured for this bundle
    limits: Limits
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {ok, value, limit}

    @property
    def passed(self) -> bool:
        return all(c["ok"] for c in self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["schema"] = BENCH_SCHEMA
        out["passed"] = self.passed
        return out

    def dumps(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True, allow_nan=False)

    def raise_if_outside_limits(self) -> None:
        failed = [name for name, c in self.checks.items() if not c["ok"]]
        if failed:
            raise BenchLimitError(
                "outside the profile's limits: " + "; ".join(self.checks[name]["text"] for name in failed),
                hint="choose a smaller variant (edge-build), or revisit the profile's budget or latency ceiling",
            )

    def text(self) -> str:
        m, t = self.memory, self.throughput
        threads = f"{self.threads['used']} thread(s)" + (" (backend default)" if not self.threads["configured"] else "")
        lines = [
            f"edge-bench: {self.variant} on {self.backend} ({self.precision}, input {self.input_size} px, {threads})",
            f"  bundle:  {self.bundle} ({self.bundle_id[:19]}...)",
            f"  machine: {_machine_line(self.machine)}",
            f"  source:  {self.source}; {self.frames['measured']} frames measured after {self.frames['warmup']} "
            f"warm-up, {self.regions} regions, publishing {'on (outbox + broker)' if self.published else 'off'}",
            "",
            f"  {'stage':<22}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'mean ms':>9}",
        ]
        for name, row in self.latency_ms.items():
            label = {
                "end_to_end": "end to end",
                "end_to_end_saturated": "saturated, queued",
            }.get(name, name)
            if name == "end_to_end":
                lines.append("  " + "-" * 58)
            lines.append(f"  {label:<22}{row['p50']:>9.2f}{row['p95']:>9.2f}{row['p99']:>9.2f}{row['mean']:>9.2f}")
        gpu = "not exposed here" if m["gpu_mib"] is None else f"{m['gpu_mib']:.1f} MiB"
        predicted = (
            f"; edge-build predicted {self.predicted_footprint_mib:.1f} MiB"
            if self.predicted_footprint_mib is not None
            else ""
        )
        lines += [
            "  (end to end: sum of a frame's stages, no queue waits; saturated: read to stored with full queues)",
            "",
            f"  throughput: {t['fps']:.1f} frames/s, {t['regions_per_s']:.1f} regions/s over {t['seconds']:.2f} s",
            f"  memory: peak {m['peak_mib']:.1f} MiB = resident high-water mark (sampled {m['peak_rss_mib']:.1f}, "
            f"VmHWM {m['vm_hwm_mib']:.1f} MiB) + GPU {gpu}{predicted}",
            f"  limits from {self.limits.source}:",
        ]
        for check in self.checks.values():
            lines.append(f"    {'ok  ' if check['ok'] else 'FAIL'} {check['text']}")
        lines.append(f"  {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def _machine_line(machine: dict[str, Any]) -> str:
    parts = [
        f"{machine['arch']} {machine['os']}",
        str(machine.get("model") or machine.get("cpu") or "cpu"),
        f"{machine['cores_logical']} cores",
        f"{machine['memory_mib'] / 1024:.1f} GiB",
        f"Python {machine['python']}",
        f"onnxruntime {machine['onnxruntime']}",
        f"load {machine['load_avg_1m']:.2f}",
    ]
    return ", ".join(parts)
