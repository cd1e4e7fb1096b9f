"""Pick the variant to ship: best accuracy that fits the budget and the latency ceiling."""

from __future__ import annotations

import math

from edge_runtime.errors import BudgetError
from edge_runtime.types import Candidate


def violations(
    footprint_mib: float,
    latency_ms: float,
    *,
    budget_mib: float,
    min_headroom: float,
    max_latency_ms: float,
    enforce_latency: bool,
) -> tuple[str, ...]:
    """The constraints a candidate breaks, as readable phrases (empty when it fits)."""
    broken = []
    limit = budget_mib * (1.0 - min_headroom)
    if footprint_mib > limit:
        broken.append(
            f"footprint {footprint_mib:.1f} MiB > {limit:.1f} MiB "
            f"(budget {budget_mib:.0f} MiB with {min_headroom:.0%} headroom)"
        )
    if enforce_latency and latency_ms > max_latency_ms:
        broken.append(f"latency {latency_ms:.1f} ms > ceiling {max_latency_ms:.1f} ms")
    return tuple(broken)


def accuracy_resolution(n_eval: int) -> float:
    """Accuracies closer than one held-out image (or half a point) are a tie, not a ranking."""
    return max(0.005, 1.0 / n_eval) if n_eval else 0.005


def rank_key(candidate: Candidate, resolution: float) -> tuple[float, float, float]:
    """Sort key: accuracy in steps of ``resolution`` (higher first), then latency, then footprint."""
    bucket = math.floor(candidate.accuracy.top1 / resolution + 1e-9)
    return (-bucket, candidate.measurement.latency_ms_p50, candidate.footprint.total_mib)


def choose(candidates: list[Candidate]) -> Candidate:
    """Best accuracy (to the resolution of the held-out set), then lowest latency, then smallest footprint."""
    fitting = [c for c in candidates if c.fits]
    if not fitting:
        raise BudgetError(
            f"no variant fits: all {len(candidates)} candidates break a constraint",
            table=format_table(candidates),
            hint="raise device.memory_budget_mib or max_latency_ms, allow int8 or smaller input_sizes, "
            "or lower min_headroom in the profile (a variant refused for new-product detection needs fp16/fp32 "
            "or a larger budget)",
        )
    resolution = accuracy_resolution(max(c.accuracy.n_eval for c in fitting))
    return min(fitting, key=lambda c: rank_key(c, resolution))


def format_table(candidates: list[Candidate], chosen: Candidate | None = None) -> str:
    """The decision table for people: one row per candidate with its figures and why it fits or not."""
    header = f"{'variant':<26} {'footprint':>10} {'latency':>9} {'top-1':>7} {'new':>7} {'cos':>7}  status"
    lines = [header, "-" * len(header)]
    for c in candidates:
        status = "CHOSEN" if chosen is not None and c is chosen else ("fits" if c.fits else "; ".join(c.violations))
        est = "*" if c.host_estimate else " "
        lines.append(
            f"{c.spec.name:<26} {c.footprint.total_mib:>7.1f}MiB {c.measurement.latency_ms_p50:>7.2f}ms{est}"
            f"{c.accuracy.top1:>7.1%} {_share(c.accuracy.ood_detection):>7} {c.accuracy.cosine_to_fp32_mean:>7.4f}"
            f"  {status}"
        )
    lines.append("new: new products caught at 95 % of known images kept (held-out SKUs)")
    if any(c.host_estimate for c in candidates):
        lines.append("* measured on this host with a stand-in backend: confirm on the device with edge-bench")
    return "\n".join(lines)


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"
