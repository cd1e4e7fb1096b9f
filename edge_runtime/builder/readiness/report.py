"""The readiness report for people: markdown, PNG plots and the CLI summary.

matplotlib is a build-time extra: it is imported inside the plotting functions only (Agg canvas, no pyplot
state), so importing this module costs nothing on a device install, where plots are simply skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.builder.finetune import finetune_lines
from edge_runtime.builder.readiness.checks import Check

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from edge_runtime.builder.readiness.run import ReadinessReport

log = logging.getLogger(__name__)

PLOT_FILES = {
    "imbalance": "sample_counts.png",
    "near_duplicates": "centroid_distances.png",
    "memory_headroom": "footprint.png",
    "accuracy_spread": "per_class_accuracy.png",
    "calibration": "reliability.png",
    "scale_curve": "scale_curve.png",
}
_CAPTIONS = {
    "imbalance": "Images per SKU",
    "near_duplicates": "Cosine distance between SKU centroids, closest pairs marked",
    "memory_headroom": "Footprint against the budget",
    "accuracy_spread": "Held-out accuracy per SKU",
    "calibration": "Reliability diagram (15 bins, after calibration)",
    "scale_curve": "Top-1 and OOD detection as the catalogue grows",
}
_FIGSIZE = (6.4, 3.6)
_DPI = 100
_STATUS_MARK = {"pass": "✅ pass", "warn": "⚠️ warn", "fail": "❌ fail"}


def format_value(check: Check, value: float | None) -> str:
    """A value or threshold in the check's unit, for people."""
    if value is None:
        return "n/a"
    if check.unit == "ratio":
        return f"{value:.1f}:1"
    if check.unit == "fraction":
        return f"{value:.1%}"
    if check.unit == "points":
        return f"{value:.1f} pts"
    if check.unit == "ece":
        return f"{value:.3f}"
    return f"{value:.4f}"


# --------------------------------------------------------------------------- plots


def _figure(height: float = _FIGSIZE[1]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(_FIGSIZE[0], height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, whatever backend pyplot may be using elsewhere
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=_DPI)
    return path


def _plot_counts(check: Check, path: Path) -> Path:
    counts = np.asarray(check.data["counts"])
    fig = _figure()
    ax = fig.add_subplot()
    ax.hist(counts, bins=min(30, max(5, len(np.unique(counts)))), color="#4c72b0")
    ev = check.evidence
    low, high = ev["bottom_decile_mean"], ev["top_decile_mean"]
    ax.axvline(low, color="#c44e52", ls="--", label=f"bottom decile {low:.1f}")
    ax.axvline(high, color="#55a868", ls="--", label=f"top decile {high:.1f}")
    ax.set_xlabel("images per SKU")
    ax.set_ylabel("SKUs")
    ax.set_title(f"{_CAPTIONS['imbalance']}: {check.value:.1f}:1 (limit {check.threshold:g}:1)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_distances(check: Check, path: Path) -> Path:
    d = check.data
    fig = _figure(height=4.4)
    # Names are long: list the closest pairs under the histogram, numbered, rather than on top of it.
    grid = fig.add_gridspec(2, 1, height_ratios=[3, 1])
    ax = fig.add_subplot(grid[0])
    ax.hist(d["distances"], bins=50, color="#4c72b0")
    ax.axvline(d["cutoff"], color="#dd8452", ls="--", label=f"{check.evidence['percentile']:g}th percentile")
    ax.axvline(d["spread"], color="#c44e52", ls="-", label="within-class spread (fail below)")
    lines = []
    for i, p in enumerate(d["closest"], 1):
        ax.plot([p["distance"]], [0], marker="v", color="#c44e52", ms=7, clip_on=False)
        ax.annotate(
            str(i),
            (p["distance"], 0),
            (0, 8 + 9 * (i - 1)),
            textcoords="offset points",
            fontsize=7,
            ha="center",
            color="#c44e52",
        )
        lines.append(f"{i}. {p['a']} ~ {p['b']} ({p['distance']:.3f})")
    ax.set_xlabel("cosine distance between SKU centroids (head's projection)", fontsize=8)
    ax.set_ylabel("SKU pairs")
    ax.set_title(_CAPTIONS["near_duplicates"], fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    text = fig.add_subplot(grid[1])
    text.axis("off")
    text.text(0, 1, "closest pairs:\n" + "\n".join(lines), va="top", fontsize=7, family="monospace")
    return _save(fig, path)


def _plot_reliability(check: Check, path: Path) -> Path:
    rel = check.data["reliability"]
    bins = len(rel) or 15
    edges = np.linspace(0, 1, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    acc = np.array([r[1] for r in rel])
    count = np.array([r[2] for r in rel])
    fig = _figure()
    ax = fig.add_subplot()
    shown = count > 0
    ax.bar(centres[shown], acc[shown], width=1 / bins, edgecolor="white", color="#4c72b0", label="accuracy")
    conf = np.array([r[0] for r in rel])
    ax.plot(conf[shown], acc[shown], "o", color="#c44e52", ms=3, label="accuracy at the bin's mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{_CAPTIONS['calibration']}: ECE {check.value:.3f}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def _plot_accuracy(check: Check, path: Path) -> Path:
    acc = 100 * np.asarray(check.data["accuracy"])
    fig = _figure()
    ax = fig.add_subplot()
    ax.hist(acc, bins=np.linspace(0, 100, 21).tolist(), color="#4c72b0")
    if len(acc):
        ax.axvline(acc.mean(), color="#c44e52", ls="--", label=f"mean {acc.mean():.1f} %, std {check.value:.1f} pts")
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel("held-out top-1 per SKU (%)")
    ax.set_ylabel("SKUs")
    ax.set_title(_CAPTIONS["accuracy_spread"], fontsize=10)
    return _save(fig, path)


def _plot_footprint(check: Check, path: Path) -> Path:
    d = check.data
    budget, total = float(d["budget_mib"]), float(d["footprint_mib"])
    parts = {k: v for k, v in (d["parts"] or {"footprint": total}).items() if v > 0}
    fig = _figure()
    ax = fig.add_subplot()
    left = 0.0
    colours = ["#4c72b0", "#55a868", "#8172b2", "#ccb974", "#64b5cd", "#dd8452"]
    for i, (name, mib) in enumerate(parts.items()):
        ax.barh(["footprint"], [mib], left=left, color=colours[i % len(colours)], label=f"{name} {mib:.1f} MiB")
        left += mib
    ax.barh(["budget"], [budget], color="#dddddd")
    limit = budget * (1 - check.threshold)
    ax.axvline(limit, color="#c44e52", ls="--", label=f"limit at {check.threshold:.0%} headroom: {limit:.0f} MiB")
    ax.axvline(budget, color="black", lw=0.8)
    ax.set_xlabel("MiB")
    ax.set_title(
        f"{_CAPTIONS['memory_headroom']}: {total:.1f} of {budget:.0f} MiB, headroom {check.value:.1%}", fontsize=10
    )
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _plot_scale(curve: dict[str, Any], path: Path) -> Path:
    levels = curve["levels"]
    n = np.array([lv["known_classes"] for lv in levels])
    planned = curve["planned_catalogue_size"]
    fig = _figure(height=4.4)
    ax = fig.add_subplot()
    xs = np.geomspace(max(2.0, n.min()), max(planned, n.max()), 100) if len(n) else np.zeros(0)
    for key, label, colour in (("top1", "top-1", "#4c72b0"), ("detection", "OOD detection (max cosine)", "#dd8452")):
        y = np.array([lv[key] for lv in levels])
        err = np.array([lv[f"{key}_std"] for lv in levels])
        ax.errorbar(n, y, yerr=err, fmt="o", color=colour, label=label, capsize=3)
        fit = curve["fit"][key]
        if fit:
            style = "--" if fit["resolved"] else ":"
            ax.plot(
                xs,
                np.clip(fit["a"] + fit["b_per_ln_class"] * np.log(xs), 0, 1),
                style,
                color=colour,
                lw=1,
                label=f"{label} fit" + ("" if fit["resolved"] else " (trend not resolved)"),
            )
            pred = curve["predicted"][key]
            ax.plot([planned], [pred], "o", mfc="none", color=colour, ms=8)
            ax.annotate(f"{pred:.0%}", (planned, pred), (5, 3), textcoords="offset points", fontsize=8, color=colour)
    ax.axvline(planned, color="grey", ls=":", label=f"planned {planned} SKUs")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("SKUs in the catalogue (known classes, log scale)")
    ax.set_ylabel("rate")
    ax.set_title(_CAPTIONS["scale_curve"], fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return _save(fig, path)


_PLOTTERS = {
    "imbalance": _plot_counts,
    "near_duplicates": _plot_distances,
    "memory_headroom": _plot_footprint,
    "accuracy_spread": _plot_accuracy,
    "calibration": _plot_reliability,
}


def write_plots(report: ReadinessReport, out_dir: Path) -> dict[str, Path]:
    """One PNG per plotted check and the scale curve; key = check id (or "scale_curve"). Raises ImportError
    without matplotlib."""
    import matplotlib  # noqa: F401  (fail early and once when the build extra is missing)

    out: dict[str, Path] = {}
    for check in report.checks:
        plotter = _PLOTTERS.get(check.id)
        if plotter is None or not check.data:
            continue
        out[check.id] = plotter(check, out_dir / PLOT_FILES[check.id])
    if report.scale_curve and report.scale_curve["levels"]:
        out["scale_curve"] = _plot_scale(report.scale_curve, out_dir / PLOT_FILES["scale_curve"])
    return out


# --------------------------------------------------------------------------- markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(report: ReadinessReport, plots: dict[str, str]) -> str:
    """The report for people; ``plots`` maps a check id (or "scale_curve") to a PNG path relative to the file."""
    lines = [
        f"# Readiness: {report.profile}",
        "",
        f"**Overall: {report.overall.upper()}** — {report.n_skus} SKUs, {report.n_images} catalogue images; "
        f"{len(report.failed)} failed, {len(report.warned)} warned. Created {report.created}.",
        "",
        "Backbone:",
        *finetune_lines(report.finetune or {"why": "not recorded"}),
        "",
        "| # | check | status | value | threshold |",
        "|---|---|---|---|---|",
    ]
    for i, c in enumerate(report.checks, 1):
        lines.append(
            f"| {i} | {c.name} | {_STATUS_MARK[c.status]} | {format_value(c, c.value)} | "
            f"{format_value(c, c.threshold)} |"
        )
    lines.append("")
    if report.combined_warning:
        lines += [f"> **Combined warning:** {report.combined_warning}", ""]
    for i, c in enumerate(report.checks, 1):
        lines += [
            f"## {i}. {c.name[0].upper()}{c.name[1:]}: {c.status}",
            "",
            _md_escape(c.detail),
            "",
            f"*Rule:* {c.warn_rule}.",
            "",
        ]
        if c.id in plots:
            lines += [f"![{_CAPTIONS[c.id]}]({plots[c.id]})", ""]
        lines += _pair_table(c)
    lines += _scale_lines(report.scale_curve, plots.get("scale_curve"))
    lines += [
        "## How to read this",
        "",
        "A check **warns** when its value is inside 20 % of its threshold on the passing side: above 80 % of the "
        "limit for change rate, accuracy spread and ECE; below 120 % of the minimum for headroom, OOD detection "
        "and the closest centroid pair (whose threshold is the within-class spread); above half the limit for "
        "class imbalance. A change rate without history warns. The combined warning appears when two or more "
        "checks are not in pass together. Accuracy, calibration and OOD figures are out-of-fold: test images "
        "are whole clusters of look-alike photos, new products are whole SKUs held out.",
        "",
    ]
    return "\n".join(lines)


def _pair_table(check: Check) -> list[str]:
    """Every near-duplicate pair the JSON lists, folded away: the detail names only the closest few."""
    pairs = check.evidence.get("closest_pairs") if check.id == "near_duplicates" else None
    if not pairs:
        return []
    total = check.evidence["pairs_under_percentile"]
    shown = f"the {len(pairs)} closest of {total}" if total > len(pairs) else f"all {total}"
    lines = [
        f"<details><summary>Pairs under the {check.evidence['percentile']:g}th percentile ({shown})</summary>",
        "",
        "| SKU | SKU | cosine distance |",
        "|---|---|---|",
    ]
    lines += [f"| {_md_escape(p['a'])} | {_md_escape(p['b'])} | {p['distance']:.4f} |" for p in pairs]
    return [*lines, "", "</details>", ""]


def _scale_lines(curve: dict[str, Any] | None, plot: str | None) -> list[str]:
    lines = ["## What the checklist cannot see: the scale curve", ""]
    if not curve or not curve["levels"]:
        return [*lines, "Not computed (too few SKUs, or turned off).", ""]
    lines += [
        curve["method"] + ".",
        "",
        "| SKUs in subset | known SKUs | runs | top-1 | OOD detection |",
        "|---|---|---|---|---|",
    ]
    for lv in curve["levels"]:
        lines.append(
            f"| {lv['classes']} ({lv['fraction']:.0%}) | {lv['known_classes']:.0f} | {lv['runs']} | "
            f"{lv['top1']:.1%} ± {lv['top1_std']:.1%} | {lv['detection']:.1%} ± {lv['detection_std']:.1%} |"
        )
    pred, planned = curve["predicted"], curve["planned_catalogue_size"]
    lines.append("")
    if pred["top1"] is not None:
        lines.append(
            f"At the planned **{planned} SKUs** the fit gives top-1 **{pred['top1']:.1%}** and OOD detection "
            f"**{pred['detection']:.1%}** ({_slope(curve['fit']['top1'])} top-1, "
            f"{_slope(curve['fit']['detection'])} detection per doubling of the catalogue); {curve['note']}."
        )
        for key, label in (("top1", "top-1"), ("detection", "detection")):
            fit = curve["fit"][key]
            if fit and not fit["resolved"]:
                lines.append(
                    f"The {label} trend is **not resolved** by these measurements (the slope is within its 95 % "
                    f"uncertainty of zero): read {pred[key]:.1%} as unknown, not as a forecast."
                )
    mem = curve.get("memory")
    if mem:
        lines.append(
            f"Memory at {planned} SKUs: table and projection {mem['table_and_projection_mib_now']:.2f} → "
            f"{mem['table_and_projection_mib_at_planned']:.2f} MiB, footprint ≈ {mem['footprint_mib_at_planned']:.1f}"
            f" MiB, headroom ≈ {mem['headroom_at_planned']:.1%} ({mem['note']})."
        )
    lines.append("")
    if plot:
        lines += [f"![{_CAPTIONS['scale_curve']}]({plot})", ""]
    return lines


def _slope(fit: dict[str, Any] | None) -> str:
    if not fit:
        return "n/a"
    per_doubling = 100 * math.log(2)
    se = fit["slope_se"]
    spread = f" ± {se * per_doubling:.1f}" if se is not None and math.isfinite(se) else ""
    return f"{fit['b_per_ln_class'] * per_doubling:+.1f}{spread} pts"


# --------------------------------------------------------------------------- CLI summary


def summary_text(report: ReadinessReport, written: Sequence[Path] = ()) -> str:
    """edge-check's human summary: one line per check."""
    lines = [
        f"edge-check {report.profile}: {report.overall.upper()} for {report.n_skus} SKUs, {report.n_images} images "
        f"({len(report.failed)} failed, {len(report.warned)} warned)"
    ]
    for c in report.checks:
        lines.append(f"  [{c.status}] {c.name}: {format_value(c, c.value)} (threshold {format_value(c, c.threshold)})")
    if report.combined_warning:
        lines.append(f"  combined warning: {report.combined_warning}")
    sc = report.scale_curve
    if sc and sc["levels"] and sc["predicted"]["top1"] is not None:
        last = sc["levels"][-1]
        pred = {
            k: f"{sc['predicted'][k]:.1%}" + ("" if sc["fit"][k]["resolved"] else " (trend not resolved)")
            for k in ("top1", "detection")
        }
        lines.append(
            f"  scale curve: top-1 {last['top1']:.1%}, detection {last['detection']:.1%} at "
            f"{last['known_classes']:.0f} SKUs -> top-1 {pred['top1']}, detection {pred['detection']} "
            f"at {sc['planned_catalogue_size']} SKUs (extrapolated)"
        )
    md = [p for p in written if p.suffix == ".md"]
    if md:
        lines.append(f"  report {md[0]}")
    return "\n".join(lines)
