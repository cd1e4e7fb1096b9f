"""What a build records: the bundle's manifest, the build report for people, tool versions and the summary.

The manifest is the bundle's contract with edge-run, edge-bench and the next build (``--previous-bundle``): its
keys and their meaning are documented in DESIGN's Formats section; change them only together with the readers.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_runtime import __version__
from edge_runtime.builder.choose import format_table
from edge_runtime.builder.embedding import FittedHead
from edge_runtime.builder.finetune import finetune_lines
from edge_runtime.builder.footprint import MIB, regions_per_frame, tensor_queue_bytes
from edge_runtime.builder.inputs import BuildInputs, MeasurementPlan
from edge_runtime.builder.quantize import image_input
from edge_runtime.builder.readiness import ReadinessReport
from edge_runtime.builder.variants import VariantSet
from edge_runtime.bundle import MODEL, Bundle, sha256_bytes, sha256_file
from edge_runtime.profile import DeviceProfile
from edge_runtime.types import Candidate, Footprint


def build_manifest(
    profile: DeviceProfile,
    inputs: BuildInputs,
    variants: VariantSet,
    chosen: Candidate,
    fitted: FittedHead,
    footprint: Footprint,
    plan: MeasurementPlan,
    readiness: ReadinessReport,
    *,
    model_bytes: bytes,
    clip_report: dict[str, Any],
    default_backbone: bool,
    finetune_report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a bundle (``bundle.write_bundle`` adds the files' hashes and the signature).

    ``footprint`` is the chosen variant's with the fitted head in place of the ranking table;
    ``default_backbone`` says the backbone is the default EfficientNet-Lite0 rather than a ``--model``.
    """
    budget = float(profile.device.memory_budget_mib)
    spec = chosen.spec
    skus = inputs.skus
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": {
            "name": profile.name,
            "sha256": profile.content_hash(),
            "files": [p.name for p in profile.source_files],
        },
        "backbone": {
            "sha256": sha256_file(inputs.backbone_path),
            "source": "default EfficientNet-Lite0" if default_backbone else inputs.backbone_path.name,
            "embedding_output": inputs.embedding_output,
            "activation_clip": clip_report,
            "finetune": finetune_report or {"enabled": False, "why": "not asked"},
        },
        "model": {
            "file": MODEL,
            "sha256": sha256_bytes(model_bytes),
            "input_size": spec.model.input_size,
            # The image input's name: a GPU engine's optimisation profile is given per input name.
            "input_name": image_input(inputs.backbone).name,
            "precision": spec.model.precision,
            "embedding_dim": int(fitted.features.embeddings.shape[1]),  # the backbone's, without colour
            "int8_scheme": variants.int8_scheme if spec.model.precision == "int8" else None,
        },
        "variant": chosen.as_row(),
        "footprint": {
            "total_mib": round(footprint.total_mib, 2),
            "process_peak_mib": round(footprint.process_peak_mib, 2),
            "head_mib": round(footprint.table_mib, 4),
            "gpu_mib": round(footprint.gpu_mib, 2),
            "frame_queue_mib": round(plan.frame_bytes / MIB, 2),
            "tensor_queue_mib": round(tensor_queue_bytes(regions_per_frame(profile), spec.model.input_size) / MIB, 2),
        },
        "budget_mib": budget,
        "min_headroom": profile.device.min_headroom,
        "headroom": round(1.0 - footprint.total_mib / budget, 4),
        "accuracy": {
            "top1_heldout": round(chosen.accuracy.top1, 4),
            "n_eval": chosen.accuracy.n_eval,
            "cosine_to_fp32_mean": round(chosen.accuracy.cosine_to_fp32_mean, 5),
        },
        "measurement": {
            "backend": plan.backend,
            "host_estimate": plan.host_estimate,
            "why_estimate": plan.why_estimate,
            "host": f"{platform.machine()} {platform.system()} {os.cpu_count()} cpu",
            "threads": profile.backend.threads,
        },
        "catalogue": {
            "source": " + ".join(Path(p).name for p in inputs.catalogue_sources or (inputs.catalogue_path,)),
            "skus": len(skus),
            "images": len(inputs.labels),
            "sku_codes": [s.code for s in skus],
            "skipped": [[p.name, why] for p, why in inputs.decoded.catalogue.skipped],
        },
        "decision_table": [c.as_row() for c in variants.candidates],
        "head": fitted.report,
        "readiness": {"overall": readiness.overall, "failed": [c.id for c in readiness.failed]},
        "tool_versions": tool_versions(),
    }


def tool_versions() -> dict[str, str]:
    """Versions of what made the bundle: this package, Python and the libraries the numbers depend on."""
    import cv2
    import onnxruntime

    return {
        "edge_runtime": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opencv": cv2.__version__,
    }


def build_report(profile: DeviceProfile, manifest: dict[str, Any], variants: VariantSet, chosen: Candidate) -> str:
    """report/build_report.md: the manifest's main figures, the head and the decision table, for people."""
    m = manifest
    lines = [
        f"# Build report: {profile.name}",
        "",
        f"- created: {m['created']}",
        f"- catalogue: {m['catalogue']['skus']} SKUs, {m['catalogue']['images']} images "
        f"({len(m['catalogue']['skipped'])} skipped)",
        f"- chosen variant: **{m['variant']['variant']}**",
        f"- footprint: {m['footprint']['total_mib']:.1f} MiB of {m['budget_mib']:.0f} MiB "
        f"(headroom {m['headroom']:.1%}, minimum {m['min_headroom']:.0%})",
        f"- held-out top-1 (nearest centroid): {m['accuracy']['top1_heldout']:.1%} on {m['accuracy']['n_eval']} images",
        f"- measured with {m['measurement']['backend']} on {m['measurement']['host']}"
        + (f" — host estimate: {m['measurement']['why_estimate']}" if m["measurement"]["host_estimate"] else ""),
        "",
        "## Fine-tuning",
        "",
        *finetune_lines(m["backbone"].get("finetune", {})),
        "",
        "## Recognition head",
        "",
        *_head_lines(m["head"]),
        "",
        "## Decision table",
        "",
        "```",
        format_table(variants.candidates, chosen),
        "```",
        "",
    ]
    return "\n".join(lines)


def _dim_text(out: dict[str, Any] | None) -> str:
    if not out:
        return ""
    text = f"; keeps {out['dim']} of {out['full_dim']} directions ({out['rule']}"
    return text + (f": {out['cv_top1']})" if "cv_top1" in out else ")")


def _head_lines(h: dict[str, Any]) -> list[str]:
    ood, rt, cal = h["ood"], h["routing"], h["calibration"]
    lines = [
        f"- projection: {h['projection']['chosen']} (cross-validated top-1 by choice: {h['projection']['cv_top1']})"
        + _dim_text(h["projection"].get("output_dim")),
        f"- out-of-fold top-1 {h['accuracy']['top1_oof']:.1%}, group top-1 {h['accuracy']['group_top1_oof']:.1%} "
        f"on {h['accuracy']['n_eval']} images (held out by clusters of look-alike images)",
        f"- calibration: temperature {cal['temperature']:.4f}, ECE {cal['ece_before']:.3f} before, "
        f"{cal['ece_after']:.3f} after (15 bins)",
        f"- OOD gate: {ood['chosen']}, threshold {ood['threshold']:.4f} keeps {ood['keep']:.0%} of known images",
        f"- accept rule for precision {rt['accept_precision_target']}: class thresholds fitted at "
        f"{rt['class_threshold_target']} (levels {rt['threshold_levels']}, {rt['never_accepted_classes']} class(es) "
        f"never auto-accepted) and an OOD accept limit {rt['accept_ood_threshold']:.4f} that keeps "
        f"{rt['accept_gate_keep']:.0%} of gated known images; cross-fitted on unseen halves: precision "
        f"{rt['accepted_precision_crossfit']} (one-sided {rt['accept_confidence']:.0%} lower bound "
        f"{rt['accepted_precision_crossfit_lower']}, the figure the rule was chosen on) with "
        f"{rt['unknown_share_assumed']:.0%} simulated new products in the stream, "
        f"{rt['known_auto_accepted_crossfit']:.1%} of known images auto-accepted",
        "",
        "| OOD method | detection at keep | AUROC | siblings | extra bytes |",
        "|---|---|---|---|---|",
    ]
    for name, row in ood["methods"].items():
        lines.append(
            f"| {name} | {row['detection']:.1%} | {row['auroc']:.3f} | {row['detection_siblings']} | "
            f"{row['extra_bytes']} |"
        )
    return lines


def build_summary(bundle: Bundle, chosen: Candidate, profile: DeviceProfile, footprint: Footprint) -> dict[str, Any]:
    """edge-build's result in a few figures (``--json`` prints it; ``summary_text`` words it)."""
    m = bundle.manifest
    return {
        "bundle": str(bundle.root),
        "tarball": str(bundle.root.parent / "bundle.tar.gz"),
        "bundle_id": bundle.bundle_id,
        "profile": profile.name,
        "variant": chosen.spec.name,
        "footprint_mib": round(footprint.total_mib, 2),
        "budget_mib": profile.device.memory_budget_mib,
        "headroom": m["headroom"],
        "latency_ms": round(chosen.measurement.latency_ms_p50, 3),
        "accuracy": round(chosen.accuracy.top1, 4),
        "ood_method": m["head"]["ood"]["chosen"],
        "known_auto_accepted": m["head"]["routing"]["known_auto_accepted"],
        "host_estimate": chosen.host_estimate,
        "skus": m["catalogue"]["skus"],
    }


def summary_text(s: dict[str, Any]) -> str:
    """edge-build's summary for people, from ``build_summary``."""
    est = " (host estimate: confirm with edge-bench on the device)" if s["host_estimate"] else ""
    return (
        f"edge-build {s['profile']}: {s['variant']} for {s['skus']} SKUs\n"
        f"  footprint {s['footprint_mib']:.1f} MiB of {s['budget_mib']} MiB budget, headroom {s['headroom']:.1%}\n"
        f"  latency {s['latency_ms']:.2f} ms per image{est}\n"
        f"  held-out top-1 {s['accuracy']:.1%}; OOD gate {s['ood_method']}; "
        f"{s['known_auto_accepted']:.0%} of known images auto-accepted\n"
        f"  bundle {s['bundle']}\n"
        f"  tarball {s['tarball']}\n"
        f"  bundle id {s['bundle_id']}"
    )
