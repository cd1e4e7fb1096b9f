"""The seven readiness checks, each a pure function on numpy data returning a :class:`Check`.

Each check returns a value, the profile's threshold, a status (pass / warn / fail) and a detail that names the
classes involved.

Warn rule. A check warns when its value is inside a margin of its threshold, on the side of the threshold
where it still passes ("comfortable" means outside that margin):

- higher is worse (change rate, accuracy spread, ECE): warn above ``(1 - WARN_MARGIN) x threshold``;
- lower is worse (headroom, OOD detection, closest centroid pair): warn below ``(1 + WARN_MARGIN) x threshold``;
- class imbalance is the exception the issue fixes: warn above half of ``imbalance_max``.

A change rate without any history warns ("no history given"): unknown is neither pass nor fail.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import numpy as np

from edge_runtime.builder.readiness.history import ChangeHistory
from edge_runtime.head.prototypes import class_centroids, l2_normalise

WARN_MARGIN = 0.20
# How many named classes / pairs a detail string or the JSON evidence carries; the plots show the rest.
DETAIL_NAMES = 10
EVIDENCE_PAIRS = 200
# Above this many SKU pairs (about 2,000 SKUs) the distance percentile is estimated from a uniform sample.
MAX_EXACT_PAIRS = 2_000_000
PAIR_BLOCK_VALUES = 4_000_000  # floats per block of the centroid similarity matrix (16 MB)

Status = Literal["pass", "warn", "fail"]

CHECK_IDS = (
    "imbalance",
    "near_duplicates",
    "change_rate",
    "memory_headroom",
    "ood_detection",
    "accuracy_spread",
    "calibration",
)


@dataclass(frozen=True)
class Check:
    """One checklist line. ``evidence`` is small and goes into the JSON; ``data`` feeds the plots only."""

    id: str
    name: str
    value: float | None
    threshold: float
    status: Status
    detail: str
    unit: str  # "ratio" | "fraction" | "points" | "cosine distance" | "ece"
    warn_rule: str
    evidence: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The check as strict JSON types, without the plot data."""
        return jsonable(
            {
                "id": self.id,
                "name": self.name,
                "value": self.value,
                "threshold": self.threshold,
                "status": self.status,
                "detail": self.detail,
                "unit": self.unit,
                "warn_rule": self.warn_rule,
                "evidence": self.evidence,
            }
        )


class _CheckBase(TypedDict):
    """The fields of a ``Check`` that do not depend on the data (``Check(**base, value=..., ...)``)."""

    id: str
    name: str
    threshold: float
    unit: str


def jsonable(obj: Any) -> Any:
    """numpy scalars -> Python, NaN/inf -> None, tuples -> lists: the JSON stays strict."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return round(f, 6) if math.isfinite(f) else None
    return obj


# --------------------------------------------------------------------------- status rules


def _higher_is_worse(value: float, threshold: float, warn_above: float) -> Status:
    if value > threshold:
        return "fail"
    return "warn" if value > warn_above else "pass"


def _lower_is_worse(value: float, threshold: float, warn_below: float) -> Status:
    if value < threshold:
        return "fail"
    return "warn" if value < warn_below else "pass"


def _upper_rule(threshold: float, fmt: str) -> tuple[float, str]:
    warn_at = (1.0 - WARN_MARGIN) * threshold
    text = f"fail above {fmt.format(threshold)}; warn above {fmt.format(warn_at)} (within {WARN_MARGIN:.0%} below it)"
    return warn_at, text


def _lower_rule(threshold: float, fmt: str) -> tuple[float, str]:
    warn_at = (1.0 + WARN_MARGIN) * threshold
    text = f"fail below {fmt.format(threshold)}; warn below {fmt.format(warn_at)} (within {WARN_MARGIN:.0%} above it)"
    return warn_at, text


def _names(codes: Sequence[str], idx: Sequence[int] | np.ndarray, values: Sequence[str] | None = None) -> str:
    items = [codes[int(i)] + (f" ({values[k]})" if values is not None else "") for k, i in enumerate(idx)]
    return ", ".join(items)


# --------------------------------------------------------------------------- 1. class imbalance


def check_imbalance(counts: np.ndarray, sku_codes: Sequence[str], threshold: float) -> Check:
    """Mean images per SKU in the top decile of SKUs over the bottom decile (at least one SKU each)."""
    counts = np.asarray(counts, dtype=np.float64)
    k = max(1, math.ceil(len(counts) / 10))
    order = np.argsort(counts, kind="stable")
    bottom, top = order[:k], order[::-1][:k]
    low, high = float(counts[bottom].mean()), float(counts[top].mean())
    ratio = high / max(low, 1e-12)
    warn_at = threshold / 2.0
    status = _higher_is_worse(ratio, threshold, warn_at)
    fewest = bottom[:DETAIL_NAMES]
    detail = (
        f"top decile ({k} SKU{'s' if k != 1 else ''}) averages {high:.1f} images, bottom decile {low:.1f}: "
        f"{ratio:.1f}:1; fewest images: {_names(sku_codes, fewest, [f'{int(counts[i])}' for i in fewest])}"
    )
    return Check(
        id="imbalance",
        name="class imbalance",
        value=ratio,
        threshold=threshold,
        status=status,
        detail=detail,
        unit="ratio",
        warn_rule=f"fail above {threshold:g}:1; warn above {warn_at:g}:1 (half the limit)",
        evidence={
            "decile_size": k,
            "top_decile_mean": high,
            "bottom_decile_mean": low,
            "fewest": [{"sku": sku_codes[int(i)], "images": int(counts[i])} for i in fewest],
            "most": [{"sku": sku_codes[int(i)], "images": int(counts[i])} for i in top[:DETAIL_NAMES]],
        },
        data={"counts": counts},
    )


# --------------------------------------------------------------------------- 2. near-duplicate classes


def centroid_pairs(
    cents: np.ndarray, percentile: float, spread: float, keep: int, seed: int = 0
) -> tuple[np.ndarray, float, list[tuple[int, int, float]], int, int, bool]:
    """Pairwise cosine distances of L2-normalised centroids, in row blocks so 100k SKUs fit in memory.

    Returns (distances for the histogram: all of them, or a uniform sample when there are more than
    MAX_EXACT_PAIRS; the ``percentile`` distance; the ``keep`` closest pairs (i, j, d), exact; the number of
    pairs at or under the percentile distance; the number closer than ``spread``; whether it was exact).
    """
    k = len(cents)
    exact = k * (k - 1) // 2 <= MAX_EXACT_PAIRS
    cutoff = float("nan")
    if not exact:
        rng = np.random.default_rng(seed)
        a, b = rng.integers(k, size=(2, MAX_EXACT_PAIRS))
        a, b = a[a != b], b[a != b]
        sample = np.concatenate(
            [
                1.0 - np.einsum("ij,ij->i", cents[a[s : s + 65536]], cents[b[s : s + 65536]])
                for s in range(0, len(a), 65536)
            ]
        )
        cutoff = float(np.percentile(sample, percentile))
    rows = max(1, PAIR_BLOCK_VALUES // k)
    collected: list[np.ndarray] = []
    best = np.zeros((0, 3))
    n_under = n_close = 0
    for start in range(0, k - 1, rows):
        d = 1.0 - cents[start : start + rows] @ cents.T
        r, c = np.nonzero(np.arange(k)[None, :] > np.arange(start, start + len(d))[:, None])
        dist = d[r, c].astype(np.float64)
        if exact:
            collected.append(dist)
        else:
            n_under += int((dist <= cutoff).sum())
        n_close += int((dist < spread).sum())
        if len(dist) > keep:
            part = np.argpartition(dist, keep)[:keep]
            r, c, dist = r[part], c[part], dist[part]
        best = np.vstack([best, np.column_stack([r + start, c, dist])])
        if len(best) > keep:
            best = best[np.argsort(best[:, 2], kind="stable")[:keep]]
    if exact:
        sample = np.concatenate(collected)
        cutoff = float(np.percentile(sample, percentile))
        n_under = int((sample <= cutoff).sum())
    best = best[np.lexsort((best[:, 1], best[:, 0], best[:, 2]))]
    closest = [(int(i), int(j), float(d)) for i, j, d in best]
    return sample, cutoff, closest, n_under, n_close, exact


def check_near_duplicates(feats: np.ndarray, labels: np.ndarray, sku_codes: Sequence[str], percentile: float) -> Check:
    """Cosine distances between SKU centroids in the head's space, against the within-class spread.

    ``feats`` are the embeddings as the head sees them (projected, L2-normalised). Two SKUs whose centroids
    are closer than a typical image is to its own centroid cannot be told apart reliably by a nearest-prototype
    head: fail. The pairs under the ``percentile`` of all pair distances are listed by name either way.
    """
    n_classes = len(sku_codes)
    feats = l2_normalise(feats)
    cents = class_centroids(feats, labels, n_classes)
    spread = float(np.median(1.0 - np.sum(feats * cents[labels], axis=1)))
    if n_classes < 2:
        return Check(
            id="near_duplicates",
            name="near-duplicate classes",
            value=None,
            threshold=spread,
            status="pass",
            detail="a single SKU has no pairs",
            unit="cosine distance",
            warn_rule="",
        )
    dist, cutoff, closest, n_under, n_close, exact = centroid_pairs(cents, percentile, spread, EVIDENCE_PAIRS)
    value = closest[0][2]
    warn_at, rule = _lower_rule(spread, "{:.4f}")
    rule = (
        "threshold = within-class spread (median cosine distance of catalogue images to their SKU centroid, "
        "in-sample: the projection was fitted on these images, so new photos spread wider); " + rule
    )
    status = _lower_is_worse(value, spread, warn_at)

    def pair(i: int, j: int, d: float) -> dict[str, Any]:
        return {"a": sku_codes[i], "b": sku_codes[j], "distance": d}

    under = [pair(*p) for p in closest if p[2] <= cutoff]
    listed = "; ".join(f"{p['a']} ~ {p['b']} ({p['distance']:.4f})" for p in under[:DETAIL_NAMES])
    more = f" and {n_under - DETAIL_NAMES} more" if n_under > DETAIL_NAMES else ""
    detail = (
        f"{n_under} pair(s) under the {percentile:g}th percentile of centroid distances ({cutoff:.4f}): "
        f"{listed}{more}; within-class spread {spread:.4f}"
    )
    if n_close:
        detail = f"{n_close} pair(s) closer than the within-class spread; " + detail
    return Check(
        id="near_duplicates",
        name="near-duplicate classes",
        value=value,
        threshold=spread,
        status=status,
        detail=detail,
        unit="cosine distance",
        warn_rule=rule,
        evidence={
            "percentile": percentile,
            "percentile_distance": cutoff,
            "percentile_exact": exact,
            "within_class_spread": spread,
            "pairs_under_percentile": n_under,
            "pairs_closer_than_spread": n_close,
            "closest_pairs": under,  # at most EVIDENCE_PAIRS, closest first
        },
        data={"distances": dist, "cutoff": cutoff, "spread": spread, "closest": under[:5], "exact": exact},
    )


# --------------------------------------------------------------------------- 3. catalogue change rate


def check_change_rate(history: ChangeHistory | None, n_skus: int, threshold: float, unknown_loop: bool) -> Check:
    """Additions and changes per quarter as a share of the catalogue, and the next 12 months at that pace.

    A catalogue that changes faster than the limit needs frequent rebuilds; with the unknown loop on (new
    products come back as labelled crops) that is an operational cost, not a blind spot: warn, not fail.
    """
    warn_at, rule = _upper_rule(threshold, "{:.1%}")
    rule += "; with routing.unknown_loop a fail becomes a warn; no history: warn"
    base: _CheckBase = {
        "id": "change_rate",
        "name": "catalogue change rate",
        "threshold": threshold,
        "unit": "fraction",
    }
    if history is None:
        return Check(
            **base, value=None, status="warn", detail="no history given", warn_rule=rule, evidence={"source": None}
        )
    events = len(history.added) + len(history.changed)
    per_month = events / history.months
    per_quarter = 3.0 * per_month / max(1, n_skus)
    next_year = 12.0 * per_month
    status = _higher_is_worse(per_quarter, threshold, warn_at)
    loop_note = ""
    if status == "fail" and unknown_loop:
        status = "warn"
        loop_note = " (over the limit, but routing.unknown_loop sends new products back for labelling: warn)"
    recent = [*history.added[-DETAIL_NAMES:], *history.changed[-DETAIL_NAMES:]][-DETAIL_NAMES:]
    detail = (
        f"{len(history.added)} added, {len(history.changed)} changed ({len(history.removed)} removed) over "
        f"{history.months:.1f} month(s) from {history.source}: {per_month:.2f} SKU/month = {per_quarter:.1%} of "
        f"{n_skus} SKUs per quarter; next 12 months ≈ {next_year:.0f} SKUs ({next_year / max(1, n_skus):.0%})"
        f"{loop_note}" + (f"; latest: {', '.join(recent)}" if recent else "")
    )
    return Check(
        **base,
        value=per_quarter,
        status=status,
        detail=detail,
        warn_rule=rule,
        evidence={
            "source": history.source,
            "months": history.months,
            "added": len(history.added),
            "changed": len(history.changed),
            "removed": len(history.removed),
            "per_month": per_month,
            "projected_next_12_months": next_year,
            "projected_next_12_months_fraction": next_year / max(1, n_skus),
            "unknown_loop": unknown_loop,
        },
    )


# --------------------------------------------------------------------------- 4. memory headroom


def check_headroom(
    footprint_mib: float, budget_mib: float, threshold: float, parts: dict[str, float] | None = None
) -> Check:
    """headroom = 1 - footprint / budget, against the profile's minimum."""
    headroom = 1.0 - footprint_mib / budget_mib
    warn_at, rule = _lower_rule(threshold, "{:.1%}")
    status = _lower_is_worse(headroom, threshold, warn_at)
    parts = dict(parts or {})
    biggest = max(parts, key=lambda k: parts[k]) if parts else None
    detail = (
        f"footprint {footprint_mib:.1f} MiB of {budget_mib:.0f} MiB: headroom {headroom:.1%} "
        f"(limit {threshold:.0%}, i.e. at most {budget_mib * (1 - threshold):.1f} MiB)"
    )
    if biggest:
        detail += f"; largest part: {biggest} {parts[biggest]:.1f} MiB"
    return Check(
        id="memory_headroom",
        name="memory headroom",
        value=headroom,
        threshold=threshold,
        status=status,
        detail=detail,
        unit="fraction",
        warn_rule=rule,
        evidence={"footprint_mib": footprint_mib, "budget_mib": budget_mib, "parts_mib": parts},
        data={"footprint_mib": footprint_mib, "budget_mib": budget_mib, "parts": parts},
    )


# --------------------------------------------------------------------------- 5. OOD detection


def check_ood_detection(
    ood_report: dict[str, Any], threshold: float, hardest: list[dict[str, Any]] | None = None
) -> Check:
    """Detection of simulated new products by the chosen OOD method, at the profile's known-retention point.

    ``ood_report`` is the head report's "ood" section (every SKU held out once, 10 % per fold).
    ``hardest``: held-out SKUs least often caught, from readiness' own max-cosine simulation, to name names.
    """
    method = ood_report["chosen"]
    row = ood_report["methods"][method]
    value = float(row["detection"])
    warn_at, rule = _lower_rule(threshold, "{:.1%}")
    status = _lower_is_worse(value, threshold, warn_at)
    detail = (
        f"{method}: {value:.1%} of held-out SKUs' images caught at {ood_report['keep']:.0%} of known images kept "
        f"(AUROC {row['auroc']:.3f}; {row.get('folds', '?')} folds of {row.get('held_out_per_fold', '?')} SKUs, "
        f"every SKU held out once)"
    )
    if row.get("detection_siblings") is not None:
        detail += f"; new products with a sibling in their group: {row['detection_siblings']:.1%}"
    if hardest:
        named = ", ".join(f"{h['sku']} ({h['caught']:.0%}, taken for {h['taken_for']})" for h in hardest[:5])
        rarely = sum(h["caught"] < 0.1 for h in hardest)
        detail += (
            f"; hardest to catch (max-cosine simulation, {rarely} of {len(hardest)} SKUs caught under 10 % "
            f"when new): {named}"
        )
    return Check(
        id="ood_detection",
        name="OOD detection on held-out classes",
        value=value,
        threshold=threshold,
        status=status,
        detail=detail,
        unit="fraction",
        warn_rule=rule,
        evidence={
            "method": method,
            "keep": ood_report["keep"],
            "methods": {m: r["detection"] for m, r in ood_report["methods"].items()},
            "hardest": (hardest or [])[:DETAIL_NAMES],
        },
    )


# --------------------------------------------------------------------------- 6. per-class accuracy spread


def check_accuracy_spread(
    accuracy: Sequence[float | None], support: Sequence[int], sku_codes: Sequence[str], threshold: float
) -> Check:
    """Standard deviation (points) of held-out per-class accuracy over classes with support >= 1."""
    idx = np.array([i for i, (a, n) in enumerate(zip(accuracy, support, strict=True)) if a is not None and n >= 1])
    acc = np.array([float(accuracy[i]) for i in idx]) if len(idx) else np.zeros(0)
    spread = float(100.0 * acc.std()) if len(acc) else 0.0
    warn_at, rule = _upper_rule(threshold, "{:.1f} points")
    status = _higher_is_worse(spread, threshold, warn_at)
    order = np.lexsort((-np.asarray(support)[idx], acc)) if len(idx) else np.zeros(0, np.int64)
    worst = idx[order[:DETAIL_NAMES]]
    worst_rows = [{"sku": sku_codes[int(i)], "accuracy": float(accuracy[i]), "support": int(support[i])} for i in worst]
    detail = "no SKU has held-out images"
    if len(idx):
        worst_text = ", ".join(f"{r['sku']} ({r['accuracy']:.0%} of {r['support']})" for r in worst_rows)
        detail = (
            f"std {spread:.1f} points over {len(idx)} SKUs (mean {100 * acc.mean():.1f} %) on held-out catalogue "
            f"images (out-of-fold, held out by clusters of look-alike images); worst: {worst_text}"
        )
    return Check(
        id="accuracy_spread",
        name="per-class accuracy spread",
        value=spread,
        threshold=threshold,
        status=status,
        detail=detail,
        unit="points",
        warn_rule=rule,
        evidence={
            "classes": len(idx),
            "mean_accuracy": float(acc.mean()) if len(acc) else None,
            "worst": worst_rows,
        },
        data={"accuracy": acc},
    )


# --------------------------------------------------------------------------- 7. calibration


def check_calibration(calibration: dict[str, Any], threshold: float) -> Check:
    """ECE (15 bins) after temperature scaling, measured on out-of-fold scores."""
    value = float(calibration["ece_after"])
    warn_at, rule = _upper_rule(threshold, "{:.3f}")
    status = _higher_is_worse(value, threshold, warn_at)
    rel = [tuple(r) for r in calibration.get("reliability", [])]
    total = sum(int(n) for _, _, n in rel) or 1
    # The bin that adds most to the ECE is where scores mislead most.
    worst = max(rel, key=lambda r: int(r[2]) / total * abs(r[1] - r[0]), default=None)
    detail = (
        f"ECE {value:.3f} after temperature {calibration['temperature']:.4f} "
        f"({calibration['ece_before']:.3f} before), 15 bins"
    )
    if worst is not None and worst[2]:
        kind = "over-confident" if worst[0] > worst[1] else "under-confident"
        detail += (
            f"; largest gap: {int(worst[2])} images at confidence {worst[0]:.2f} are {worst[1]:.0%} right ({kind})"
        )
    return Check(
        id="calibration",
        name="calibration",
        value=value,
        threshold=threshold,
        status=status,
        detail=detail,
        unit="ece",
        warn_rule=rule,
        evidence={
            "temperature": calibration["temperature"],
            "ece_before": calibration["ece_before"],
            "reliability": [list(r) for r in rel],
        },
        data={"reliability": rel},
    )
