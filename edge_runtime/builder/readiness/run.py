"""The readiness checklist as a whole: run the seven checks and the scale curve on what the build (or
edge-check) computed, warn when several checks are marginal at once, and write the report.

The combined warning exists because the axes interact: near-duplicate SKUs widen the accuracy spread, a
fast-changing catalogue leans on the OOD gate, and a thin headroom leaves no room for the catalogue to grow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.builder.readiness import report as report_mod
from edge_runtime.builder.readiness.checks import (
    WARN_MARGIN,
    Check,
    Status,
    check_accuracy_spread,
    check_calibration,
    check_change_rate,
    check_headroom,
    check_imbalance,
    check_near_duplicates,
    check_ood_detection,
    jsonable,
)
from edge_runtime.builder.readiness.history import history_from_manifest, read_history
from edge_runtime.builder.readiness.scale import (
    MIN_SCALE_CLASSES,
    SCALE_FRACTIONS,
    compute_scale_curve,
    head_bytes_at,
    head_projection_dim,
    head_shrinkage,
)
from edge_runtime.head.model import Head
from edge_runtime.profile import DeviceProfile
from edge_runtime.types import SkuInfo

log = logging.getLogger(__name__)

SCHEMA = "edge.readiness/1"
MIB = 1024 * 1024


@dataclass(frozen=True)
class ReadinessReport:
    """The checklist's outcome: the seven checks in ``CHECK_IDS`` order, the combined warning, the scale curve
    (None when too few SKUs or turned off) and what was checked."""

    checks: tuple[Check, ...]
    combined_warning: str | None
    scale_curve: dict[str, Any] | None
    profile: str
    n_skus: int
    n_images: int
    finetune: dict[str, Any] | None = None  # the fine-tuning record: which backbone the checks judged
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def failed(self) -> tuple[Check, ...]:
        """The failing checks (empty, hence falsy, when nothing fails)."""
        return tuple(c for c in self.checks if c.status == "fail")

    @property
    def warned(self) -> tuple[Check, ...]:
        """The checks that warn."""
        return tuple(c for c in self.checks if c.status == "warn")

    @property
    def overall(self) -> Status:
        """fail when any check fails; warn when any warns or the combined warning is raised; else pass."""
        if self.failed:
            return "fail"
        return "warn" if self.warned or self.combined_warning else "pass"

    def check(self, check_id: str) -> Check:
        """The check with this id (one of ``CHECK_IDS``); KeyError for another."""
        for c in self.checks:
            if c.id == check_id:
                return c
        raise KeyError(check_id)

    def to_json(self) -> dict[str, Any]:
        """The machine-readable report (a JSON-able dict; ``json.dumps`` it, or embed it in a manifest)."""
        return jsonable(
            {
                "schema": SCHEMA,
                "created": self.created,
                "profile": self.profile,
                "catalogue": {"skus": self.n_skus, "images": self.n_images},
                "finetune": self.finetune,
                "warn_margin": WARN_MARGIN,
                "checks": [c.to_json() for c in self.checks],
                "combined_warning": self.combined_warning,
                "scale_curve": self.scale_curve,
                "overall": self.overall,
                "failed": [c.id for c in self.failed],
            }
        )

    def dumps(self) -> str:
        """``to_json`` as indented, strict JSON (readiness.json)."""
        return json.dumps(self.to_json(), indent=2, allow_nan=False)


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
    finetune: dict[str, Any] | None = None,
) -> ReadinessReport:
    """Run the seven checks on what the build computed; ``embeddings`` are the raw backbone embeddings the head
    was fitted on. ``history`` (CSV) wins over ``previous_manifest`` when both are given. ``footprint_parts``
    (MiB by part, optional) only feeds the footprint plot; ``finetune`` is the build's fine-tuning record (with a
    fine-tuned backbone every figure comes from its calibration model, on what that model never saw)."""
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
            shrinkage=head_shrinkage(head_report),
            max_dim=head_projection_dim(head_report),
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
        planned = head_bytes_at(head, rd.planned_catalogue_size)
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
        finetune=finetune,
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
