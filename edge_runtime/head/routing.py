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
) -> tuple[Route, tuple[str, ...]]:
    """Decide the route for one region and say why it is not ``accept``."""
    if ood_score > ood_threshold:
        return "unknown", (f"ood score {ood_score:.3f} over threshold {ood_threshold:.3f}",)
    if prob >= accept_threshold and not group_ambiguous:
        return "accept", ()
    reasons = []
    if group_ambiguous:
        reasons.append("group ambiguous")
    if prob < accept_threshold:
        reasons.append(f"confidence {prob:.3f} under class threshold {min(accept_threshold, 1.0):.3f}")
    if prob >= min(accept_threshold, 1.0) - verify_band or (group_ambiguous and prob >= accept_threshold):
        return "verify", tuple(reasons)
    return "unknown", (*reasons, f"below the verify band of {verify_band:.2f}")
