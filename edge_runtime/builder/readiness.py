"""The readiness checklist: seven checks a catalogue and a device should pass before a bundle ships.

Each check is a pure function on numpy data returning a :class:`Check` with a value, the profile's threshold,
a status (pass / warn / fail) and a detail that names the classes involved. ``run_readiness`` runs all seven
on what the build (or edge-check) already computed, adds what the checklist cannot see on its own (a scale
curve towards the profile's planned catalogue size) and a combined warning when several checks are marginal
at once, because the axes interact: near-duplicate SKUs widen the accuracy spread, a fast-changing catalogue
leans on the OOD gate, and a thin headroom leaves no room for the catalogue to grow.

Warn rule. A check warns when its value is inside a margin of its threshold, on the side of the threshold
where it still passes ("comfortable" means outside that margin):

- higher is worse (change rate, accuracy spread, ECE): warn above ``(1 - WARN_MARGIN) x threshold``;
- lower is worse (headroom, OOD detection, closest centroid pair): warn below ``(1 + WARN_MARGIN) x threshold``;
- class imbalance is the exception the issue fixes: warn above half of ``imbalance_max``.

A change rate without any history warns ("no history given"): unknown is neither pass nor fail.

Plotting lives in ``report.py`` and imports matplotlib only inside its functions.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_runtime.builder import report as report_mod
from edge_runtime.errors import InputError
from edge_runtime.head.fit import cluster_folds
from edge_runtime.head.model import Head
from edge_runtime.head.ood import detection_at_keep
from edge_runtime.head.projection import Projection, fit_lda
from edge_runtime.head.prototypes import class_centroids, l2_normalise
from edge_runtime.profile import DeviceProfile
from edge_runtime.types import SkuInfo

log = logging.getLogger(__name__)

SCHEMA = "edge.readiness/1"
WARN_MARGIN = 0.20
DAYS_PER_MONTH = 365.25 / 12
MIB = 1024 * 1024
CHANGE_KINDS = ("added", "changed", "removed")
# How many named classes / pairs a detail string or the JSON evidence carries; the plots show the rest.
DETAIL_NAMES = 10
EVIDENCE_PAIRS = 200
# Above this many SKU pairs (about 2,000 SKUs) the distance percentile is estimated from a uniform sample.
MAX_EXACT_PAIRS = 2_000_000
PAIR_BLOCK_VALUES = 4_000_000  # floats per block of the centroid similarity matrix (16 MB)
SCALE_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
SCALE_REPEATS = 3
SCALE_HOLDOUT = 0.10  # share of classes held out as new products per fold, as in the head's simulation
SCALE_FOLDS = 4
MIN_SCALE_CLASSES = 4

Status = Literal["pass", "warn", "fail"]
_SEVERITY: dict[str, int] = {"pass": 0, "warn": 1, "fail": 2}

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
        return _jsonable(
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


@dataclass(frozen=True)
class ReadinessReport:
    checks: tuple[Check, ...]
    combined_warning: str | None
    scale_curve: dict[str, Any] | None
    profile: str
    n_skus: int
    n_images: int
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def failed(self) -> tuple[Check, ...]:
        """The failing checks (empty, hence falsy, when nothing fails)."""
        return tuple(c for c in self.checks if c.status == "fail")

    @property
    def warned(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "warn")

    @property
    def overall(self) -> Status:
        if self.failed:
            return "fail"
        return "warn" if self.warned or self.combined_warning else "pass"

    def check(self, check_id: str) -> Check:
        for c in self.checks:
            if c.id == check_id:
                return c
        raise KeyError(check_id)

    def to_json(self) -> dict[str, Any]:
        """The machine-readable report (a JSON-able dict; ``json.dumps`` it, or embed it in a manifest)."""
        return _jsonable(
            {
                "schema": SCHEMA,
                "created": self.created,
                "profile": self.profile,
                "catalogue": {"skus": self.n_skus, "images": self.n_images},
                "warn_margin": WARN_MARGIN,
                "checks": [c.to_json() for c in self.checks],
                "combined_warning": self.combined_warning,
                "scale_curve": self.scale_curve,
                "overall": self.overall,
                "failed": [c.id for c in self.failed],
            }
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, allow_nan=False)


def _jsonable(obj: Any) -> Any:
    """numpy scalars -> Python, NaN/inf -> None, tuples -> lists: the JSON stays strict."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
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


def _centroid_pairs(
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
    dist, cutoff, closest, n_under, n_close, exact = _centroid_pairs(cents, percentile, spread, EVIDENCE_PAIRS)
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


@dataclass(frozen=True)
class ChangeHistory:
    """Catalogue changes over a period: SKU codes per kind, the span in months and where it came from."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    months: float
    source: str


def _month_span(first: date, last: date) -> int:
    """Calendar months covered, both ends included: a year of monthly entries is 12 months, not 11."""
    return (last.year - first.year) * 12 + (last.month - first.month) + 1


def read_history(path: Path) -> ChangeHistory:
    """A CSV ``date,sku,change`` (ISO dates; change in added/changed/removed); every bad row is reported."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [(c or "").strip() for c in (reader.fieldnames or [])]
            missing = [c for c in ("date", "sku", "change") if c not in columns]
            if missing:
                raise InputError(
                    f"{path}: history is missing column(s) {', '.join(missing)}",
                    hint="the header must be date,sku,change",
                )
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except OSError as exc:
        raise InputError(f"{path}: cannot read the history ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: not a readable CSV ({exc})") from None
    kinds: dict[str, list[str]] = {k: [] for k in CHANGE_KINDS}
    dates: list[date] = []
    problems = []
    for line, row in enumerate(rows, start=2):
        try:
            when = date.fromisoformat(row.get("date", "")[:10])
        except ValueError:
            problems.append(f"line {line}: date {row.get('date')!r} is not YYYY-MM-DD")
            continue
        change = row.get("change", "").lower()
        if change not in kinds:
            problems.append(f"line {line}: change {row.get('change')!r} is not one of {', '.join(CHANGE_KINDS)}")
            continue
        if not row.get("sku"):
            problems.append(f"line {line}: empty sku")
            continue
        kinds[change].append(row["sku"])
        dates.append(when)
    if problems:
        raise InputError(f"{path}: {len(problems)} bad history row(s)", hint="; ".join(problems[:10]))
    if not dates:
        raise InputError(f"{path}: the history has no rows", hint="leave --history out when there is no history")
    return ChangeHistory(
        added=tuple(kinds["added"]),
        changed=tuple(kinds["changed"]),
        removed=tuple(kinds["removed"]),
        months=float(_month_span(min(dates), max(dates))),
        source=path.name,
    )


def _manifest_skus(manifest: dict[str, Any]) -> dict[str, tuple[str, str]] | None:
    """SKU code -> (name, group) from a manifest: ``catalogue.sku_codes``, a ``catalogue.skus`` list, or
    ``labels`` entries as in labels.json. None when the manifest lists no SKUs (older manifests hold a count)."""
    cat = manifest.get("catalogue") or {}
    for entries in (cat.get("sku_codes"), cat.get("skus"), manifest.get("labels")):
        if not isinstance(entries, list):
            continue
        out: dict[str, tuple[str, str]] = {}
        for e in entries:
            if isinstance(e, str):
                out[e] = ("", "")
            elif isinstance(e, dict) and "sku" in e:
                out[str(e["sku"])] = (str(e.get("name", "")), str(e.get("group", "")))
        return out
    return None


def history_from_manifest(
    previous: dict[str, Any], skus: Sequence[SkuInfo], now: datetime | None = None
) -> ChangeHistory | None:
    """Changes between a previous bundle's SKU list and this catalogue, over the time since it was built.

    A SKU counts as changed when the previous manifest recorded a different name or group for it. The span is
    at least one month, so a rebuild on the same day does not turn one new SKU into an infinite rate.
    """
    before = _manifest_skus(previous)
    created = previous.get("created")
    if before is None or not created:
        return None
    try:
        then = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        return None
    now = now or datetime.now(timezone.utc)
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    months = max(1.0, (now - then).total_seconds() / 86400.0 / DAYS_PER_MONTH)
    current = {s.code: (s.name, s.group) for s in skus}
    changed = [c for c in current if c in before and any(before[c]) and before[c] != current[c]]
    return ChangeHistory(
        added=tuple(c for c in current if c not in before),
        changed=tuple(changed),
        removed=tuple(c for c in before if c not in current),
        months=months,
        source=f"previous manifest ({str(created)[:10]})",
    )


def check_change_rate(history: ChangeHistory | None, n_skus: int, threshold: float, unknown_loop: bool) -> Check:
    """Additions and changes per quarter as a share of the catalogue, and the next 12 months at that pace.

    A catalogue that changes faster than the limit needs frequent rebuilds; with the unknown loop on (new
    products come back as labelled crops) that is an operational cost, not a blind spot: warn, not fail.
    """
    warn_at, rule = _upper_rule(threshold, "{:.1%}")
    rule += "; with routing.unknown_loop a fail becomes a warn; no history: warn"
    base = {"id": "change_rate", "name": "catalogue change rate", "threshold": threshold, "unit": "fraction"}
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
    acc = np.array([float(accuracy[i]) for i in idx]) if len(idx) else np.zeros(0)  # type: ignore[arg-type]
    spread = float(100.0 * acc.std()) if len(acc) else 0.0
    warn_at, rule = _upper_rule(threshold, "{:.1f} points")
    status = _higher_is_worse(spread, threshold, warn_at)
    order = np.lexsort((-np.asarray(support)[idx], acc)) if len(idx) else np.zeros(0, np.int64)
    worst = idx[order[:DETAIL_NAMES]]
    worst_rows = [{"sku": sku_codes[int(i)], "accuracy": float(accuracy[i]), "support": int(support[i])} for i in worst]  # type: ignore[arg-type]
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


# --------------------------------------------------------------------------- combined warning

# Why two marginal checks together are worse than either alone.
_INTERACTIONS: dict[frozenset[str], str] = {
    frozenset({"near_duplicates", "accuracy_spread"}): "look-alike SKUs are the usual cause of the weak classes",
    frozenset({"imbalance", "accuracy_spread"}): "SKUs with few images tend to be the weak ones",
    frozenset({"change_rate", "ood_detection"}): (
        "every new product the gate misses is taken for a known SKU, so a fast (or unknown) change rate "
        "multiplies the gate's misses"
    ),
    frozenset({"near_duplicates", "ood_detection"}): "a new flavour of a look-alike family slips past the gate",
    frozenset({"memory_headroom", "change_rate"}): "a growing catalogue eats headroom that is already thin",
    frozenset({"calibration", "ood_detection"}): "score-based gates depend on calibrated scores",
    frozenset({"calibration", "accuracy_spread"}): "accept thresholds are set from scores that mislead",
}


def combined_warning(checks: Sequence[Check]) -> str | None:
    """A warning when two or more checks are in warn or fail at once: the axes interact."""
    marginal = [c for c in checks if c.status != "pass"]
    if len(marginal) < 2:
        return None
    ids = {c.id for c in marginal}
    why = [text for pair, text in _INTERACTIONS.items() if pair <= ids]
    listed = ", ".join(f"{c.name} ({c.status})" for c in marginal)
    text = f"{len(marginal)} checks are not comfortable together: {listed}. Their effects compound"
    return text + (": " + "; ".join(why) + "." if why else ".")


# --------------------------------------------------------------------------- scale curve


def _shrinkage(head_report: dict[str, Any]) -> float | None:
    chosen = str(head_report.get("projection", {}).get("chosen", "none"))
    return None if chosen == "none" else float(chosen.split("-", 1)[1])


def _projection_dim(head_report: dict[str, Any]) -> int | None:
    """The head's cap on the LDA's output dimension, when it keeps fewer directions than the LDA would."""
    out = head_report.get("projection", {}).get("output_dim")
    if not out or out["dim"] >= out["full_dim"]:
        return None
    return int(out["dim"])


def _holdout_run(
    emb: np.ndarray,
    labels: np.ndarray,
    fold: np.ndarray,
    classes: np.ndarray,
    held: np.ndarray,
    test_fold: int,
    shrinkage: float | None,
    keep: float,
    max_dim: int | None = None,
) -> dict[str, Any] | None:
    """One simulation: fit on the known classes' training folds; top-1 on their test fold; max-cosine
    detection of every image of the held-out classes."""
    known = np.setdiff1d(classes, held)
    in_known = np.isin(labels, known)
    train = in_known & (fold != test_fold)
    test = in_known & (fold == test_fold)
    unknown = np.isin(labels, held)
    if len(known) < 2 or not test.any() or not unknown.any():
        return None
    remap = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
    remap[known] = np.arange(len(known))
    y_train = remap[labels[train]]
    if shrinkage is None or len(known) < 3:
        proj = Projection.identity(emb.shape[1])
    else:
        proj = fit_lda(emb[train], y_train, shrinkage, max_dim)
    cents = class_centroids(proj.apply(emb[train]), y_train, len(known))
    cos_k = proj.apply(emb[test]) @ cents.T
    cos_u = proj.apply(emb[unknown]) @ cents.T
    detection, threshold = detection_at_keep(1.0 - cos_k.max(1), 1.0 - cos_u.max(1), keep)
    caught = (1.0 - cos_u.max(1)) > threshold
    per_class = {}
    for c in held:
        mask = labels[unknown] == c
        taken = np.bincount(cos_u[mask].argmax(1), minlength=len(known)).argmax()
        per_class[int(c)] = (float(caught[mask].mean()), int(known[taken]))
    return {
        "n_known": len(known),
        "top1": float((cos_k.argmax(1) == remap[labels[test]]).mean()),
        "detection": float(detection),
        "per_class": per_class,
    }


# Two-sided 95 % Student t quantiles by degrees of freedom: with 4 sizes a slope has 2 degrees of freedom.
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45}


def _fit_log(n: np.ndarray, y: np.ndarray) -> dict[str, Any] | None:
    """Least squares y = a + b ln(n), with the slope's standard error; None with fewer than two sizes.

    ``resolved`` says whether the slope is distinguishable from zero at 95 %: a few held-out classes per run
    make detection noisy, and extrapolating noise by an order of magnitude would read as a finding.
    """
    if len(np.unique(n)) < 2:
        return None
    x = np.log(n)
    b, a = np.polyfit(x, y, 1)
    dof = len(x) - 2
    sxx = float(((x - x.mean()) ** 2).sum())
    se = math.sqrt(float(((y - (a + b * x)) ** 2).sum()) / dof / sxx) if dof > 0 else float("nan")
    resolved = dof > 0 and abs(b) > _T95.get(dof, 2.0) * se
    return {"a": float(a), "b_per_ln_class": float(b), "slope_se": se, "resolved": bool(resolved)}


def compute_scale_curve(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    shrinkage: float | None,
    keep: float,
    planned: int,
    seed: int = 0,
    fractions: Sequence[float] = SCALE_FRACTIONS,
    repeats: int = SCALE_REPEATS,
    max_dim: int | None = None,
) -> tuple[dict[str, Any], dict[int, tuple[float, int]]]:
    """Top-1 and OOD detection on random subsets of the classes, extrapolated to ``planned`` SKUs.

    Each run holds out 10 % of the subset's classes as new products and one cluster fold of the rest as test
    images; the projection is the head's LDA at the head's shrinkage and output dimension cap, matching is
    nearest centroid, the gate is max cosine. At 100 % every class is held out once, which also gives each SKU's
    own detection rate (second return value: class -> (share of its images caught, class it is taken for)).
    """
    rng = np.random.default_rng(seed)
    emb = np.asarray(embeddings, dtype=np.float32)
    fold = cluster_folds(emb, labels, SCALE_FOLDS, seed)
    all_classes = np.unique(labels)
    k = len(all_classes)
    levels = []
    per_class: dict[int, tuple[float, int]] = {}
    for frac in fractions:
        size = max(MIN_SCALE_CLASSES, round(frac * k)) if frac < 1 else k
        if size > k or (frac < 1 and size >= k) or size < MIN_SCALE_CLASSES:
            continue
        n_hold = max(1, round(size * SCALE_HOLDOUT))
        runs = []
        if frac >= 1:
            order = rng.permutation(all_classes)
            n_folds = max(2, math.ceil(k / n_hold))
            for f in range(n_folds):
                held = order[f::n_folds]
                run = _holdout_run(emb, labels, fold, all_classes, held, f % SCALE_FOLDS, shrinkage, keep, max_dim)
                if run:
                    runs.append(run)
                    per_class.update(run["per_class"])
        else:
            for r in range(repeats):
                subset = np.sort(rng.choice(all_classes, size=size, replace=False))
                held = rng.choice(subset, size=n_hold, replace=False)
                run = _holdout_run(emb, labels, fold, subset, held, r % SCALE_FOLDS, shrinkage, keep, max_dim)
                if run:
                    runs.append(run)
        if not runs:
            continue
        levels.append(
            {
                "fraction": frac,
                "classes": size,
                "known_classes": float(np.mean([r["n_known"] for r in runs])),
                "top1": float(np.mean([r["top1"] for r in runs])),
                "top1_std": float(np.std([r["top1"] for r in runs])),
                "detection": float(np.mean([r["detection"] for r in runs])),
                "detection_std": float(np.std([r["detection"] for r in runs])),
                "runs": len(runs),
            }
        )
        log.info(
            "scale curve: %d classes, top-1 %.3f, detection %.3f", size, levels[-1]["top1"], levels[-1]["detection"]
        )
    n = np.array([lv["known_classes"] for lv in levels])
    fits: dict[str, dict[str, Any] | None] = {}
    predicted: dict[str, float | None] = {}
    for key in ("top1", "detection"):
        fit = _fit_log(n, np.array([lv[key] for lv in levels])) if len(levels) >= 2 else None
        fits[key] = fit
        predicted[key] = float(np.clip(fit["a"] + fit["b_per_ln_class"] * math.log(planned), 0, 1)) if fit else None
    largest = float(n.max()) if len(n) else 0.0
    factor = planned / largest if largest else float("nan")
    note = (
        f"extrapolated {factor:.1f}x beyond the largest measured catalogue ({largest:.0f} known SKUs): a trend, "
        "not a guarantee (new SKUs may be harder or easier than these)"
        if largest and factor > 1
        else "the planned size is within the measured range"
    )
    curve = {
        "method": "random class subsets; 10 % of each held out as new products; LDA at the head's shrinkage, "
        "nearest centroid (top-1) and max-cosine gate (detection at the profile's keep); fit y = a + b ln(SKUs)",
        "shrinkage": shrinkage,
        "keep": keep,
        "levels": levels,
        "fit": fits,
        "planned_catalogue_size": planned,
        "predicted": predicted,
        "note": note,
    }
    return curve, per_class


def _head_bytes_at(head: Head, planned: int) -> int:
    """Bytes the prototype table and projection would take at ``planned`` SKUs, same precision: rows grow with
    the SKU count, and an LDA's width grows with the number of classes (up to the embedding size)."""
    width = head.table.rows.shape[1]
    full_dim = head.projection.in_dim
    if head.projection.is_identity:
        return int(planned * width * head.table.rows.dtype.itemsize + head.projection.nbytes)
    width_at = max(1, min(planned - 1, full_dim))
    table = planned * width_at * head.table.rows.dtype.itemsize
    return int(table + full_dim * width_at * 4 + full_dim * 4)


# --------------------------------------------------------------------------- entry point


def run_readiness(
    *,
    embeddings: np.ndarray,
    labels: np.ndarray,
    skus: list[SkuInfo],
    head: Head,
    head_report: dict,
    footprint_mib: float,
    budget_mib: float,
    profile: DeviceProfile,
    history: Path | None = None,
    previous_manifest: dict | None = None,
    scale_curve: bool = True,
    seed: int = 0,
    footprint_parts: dict[str, float] | None = None,
) -> ReadinessReport:
    """Run the seven checks on what the build computed; ``embeddings`` are the raw backbone embeddings the head
    was fitted on. ``history`` (CSV) wins over ``previous_manifest`` when both are given. ``footprint_parts``
    (MiB by part, optional) only feeds the footprint plot."""
    rd = profile.readiness
    labels = np.asarray(labels)
    codes = [s.code for s in skus]
    n_classes = len(skus)
    emb = np.asarray(embeddings, dtype=np.float32)
    checks: list[Check] = [check_imbalance(np.bincount(labels, minlength=n_classes), codes, rd.imbalance_max)]
    checks.append(check_near_duplicates(head.projection.apply(emb), labels, codes, rd.near_duplicate_percentile))

    changes = None
    if history is not None:
        changes = read_history(history)
    elif previous_manifest is not None:
        changes = history_from_manifest(previous_manifest, skus)
    checks.append(check_change_rate(changes, n_classes, rd.change_rate_max_per_quarter, profile.routing.unknown_loop))
    checks.append(check_headroom(footprint_mib, budget_mib, rd.headroom_min, footprint_parts))

    curve: dict[str, Any] | None = None
    hardest: list[dict[str, Any]] = []
    if n_classes >= MIN_SCALE_CLASSES:
        # The 100 % level alone names the SKUs a new look-alike would hide behind; the subsets make the curve.
        fractions = SCALE_FRACTIONS if scale_curve else (1.0,)
        curve, per_class = compute_scale_curve(
            emb,
            labels,
            shrinkage=_shrinkage(head_report),
            max_dim=_projection_dim(head_report),
            keep=head_report["ood"]["keep"],
            planned=rd.planned_catalogue_size,
            seed=seed,
            fractions=fractions,
        )
        ranked = sorted(per_class.items(), key=lambda kv: (kv[1][0], codes[kv[0]]))
        hardest = [{"sku": codes[c], "caught": rate, "taken_for": codes[other]} for c, (rate, other) in ranked]
        if not scale_curve:
            curve = None
    checks.append(check_ood_detection(head_report["ood"], rd.ood_detection_min, hardest))
    pc = head_report["per_class"]
    checks.append(check_accuracy_spread(pc["accuracy"], pc["support"], codes, rd.accuracy_spread_max))
    checks.append(check_calibration(head_report["calibration"], rd.ece_max))

    if curve is not None:
        now = head.table.nbytes + head.projection.nbytes
        planned = _head_bytes_at(head, rd.planned_catalogue_size)
        at_planned = footprint_mib + (planned - now) / MIB
        curve["memory"] = {
            "table_and_projection_mib_now": now / MIB,
            "table_and_projection_mib_at_planned": planned / MIB,
            "footprint_mib_at_planned": at_planned,
            "headroom_at_planned": 1.0 - at_planned / budget_mib,
            "note": "prototype table and projection scaled to the planned SKU count at the same precision; "
            "model, runtime and OOD arrays taken as fixed",
        }
    report = ReadinessReport(
        checks=tuple(checks),
        combined_warning=combined_warning(checks),
        scale_curve=curve,
        profile=profile.name,
        n_skus=n_classes,
        n_images=len(labels),
    )
    log.info("readiness: %s (%s)", report.overall, ", ".join(f"{c.id} {c.status}" for c in checks))
    return report


def write_report(report: ReadinessReport, out_dir: Path, plots: bool = True) -> list[Path]:
    """Write readiness.json, readiness.md and (with ``plots``, when matplotlib is installed) the PNG plots."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, Path] = {}
    if plots:
        try:
            pngs = report_mod.write_plots(report, out_dir)
        except ImportError as exc:  # the device install has no matplotlib; the report stays useful without
            log.warning("plots skipped: %s (install edge_runtime[build])", exc)
    json_path = out_dir / "readiness.json"
    json_path.write_text(report.dumps() + "\n", encoding="utf-8")
    md_path = out_dir / "readiness.md"
    md_path.write_text(report_mod.render_markdown(report, {k: p.name for k, p in pngs.items()}), encoding="utf-8")
    return [json_path, md_path, *pngs.values()]
