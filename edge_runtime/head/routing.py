"""Routing: accept (automatic), verify (a person looks), unknown (a new product). Only accept is automatic."""

from __future__ import annotations

from edge_runtime.types import Route

# Top-2 SKUs from different groups this close (second/first probability) make the group itself uncertain.
GROUP_AMBIGUITY_RATIO = 0.5


def route(
    prob: float,
    accept_threshold: float,
    ood_score: float,
    ood_threshold: float,
    verify_band: float,
    group_ambiguous: bool = False,
    accept_ood_threshold: float | None = None,
) -> tuple[Route, tuple[str, ...]]:
    """Decide the route for one region and say why it is not ``accept``."""
    if ood_score > ood_threshold:
        return "unknown", (f"ood score {ood_score:.3f} over threshold {ood_threshold:.3f}",)
    unfamiliar = accept_ood_threshold is not None and ood_score > accept_ood_threshold
    if prob >= accept_threshold and not group_ambiguous and not unfamiliar:
        return "accept", ()
    reasons = []
    if group_ambiguous:
        reasons.append("group ambiguous")
    if unfamiliar:
        reasons.append(f"ood score {ood_score:.3f} over the accept limit {accept_ood_threshold:.3f}")
    if prob < accept_threshold:
        reasons.append(f"confidence {prob:.3f} under class threshold {min(accept_threshold, 1.0):.3f}")
    confident = prob >= accept_threshold
    if prob >= min(accept_threshold, 1.0) - verify_band or ((group_ambiguous or unfamiliar) and confident):
        return "verify", tuple(reasons)
    return "unknown", (*reasons, f"below the verify band of {verify_band:.2f}")
