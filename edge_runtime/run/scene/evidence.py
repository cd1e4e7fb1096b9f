"""Track-level decisions: the evidence of every frame of a track fused, then routed once by the bundle's head.

A product is seen in many frames, most of them poor (moving, blurred, half out of the basket, under a hand).
Each observation adds its head input (the composed embedding the head reads) weighted by its quality; the fused
input is the weighted mean, which the head normalises, projects, matches, calibrates,
gates and routes with the bundle's calibrated rules exactly as it does a single region. The decision is revised
while the track lives (when it settles and every ``revise_every`` observations after) and made final when it
ends.

The best single frame (the observation whose own decision was most confident) is kept beside it, so
``benchmarks/scene_eval.py`` can measure the gain of the track over it on the same scenarios.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.types import Decision

__all__ = ["MOVING_WEIGHT", "PARTIAL_WEIGHT", "Evidence", "observation_weight"]

MOVING_WEIGHT = 0.3  # a moving object's frame: motion blur and a hand around it
PARTIAL_WEIGHT = 0.3  # a box cut by the zone's edge shows part of the product

Decide = Callable[[np.ndarray], Decision]  # one fused head input [D] -> its decision


def observation_weight(still: bool, partial: bool) -> float:
    """How much one frame's view of an object counts in its track's fused evidence."""
    return (1.0 if still else MOVING_WEIGHT) * (PARTIAL_WEIGHT if partial else 1.0)


@dataclass
class Evidence:
    """The fused observations of one track, its current decision and its best single frame."""

    total: np.ndarray | None = None  # weighted sum of head inputs
    weight: float = 0.0
    observations: int = 0
    since_decision: int = 0  # observations added since the decision was last made
    decision: Decision | None = None
    best_single: Decision | None = None  # the most confident single-frame decision seen
    best_weight: float = -1.0  # the weight of the frame the crop below was taken from
    crop: np.ndarray | None = field(default=None, repr=False)  # the best-quality view, copied

    def add(self, features: np.ndarray, weight: float, single: Decision, view: np.ndarray | None) -> None:
        """One observation: its head input, quality weight, its own decision and (optionally) its pixels."""
        vec = np.asarray(features, dtype=np.float32)
        self.total = vec * weight if self.total is None else self.total + vec * weight
        self.weight += weight
        self.observations += 1
        self.since_decision += 1
        if self.best_single is None or single.score > self.best_single.score:
            self.best_single = single
        if view is not None and weight >= self.best_weight:
            self.best_weight = weight
            self.crop = view.copy()

    def fused(self) -> np.ndarray | None:
        """The weighted mean head input, None before the first observation. Its length does not matter: the
        head normalises its input before anything else (``Projection.apply``)."""
        if self.total is None or self.weight <= 0:
            return None
        fused: np.ndarray = self.total / np.float32(self.weight)
        return fused

    def decide(self, decide: Decide) -> Decision | None:
        """Route the fused evidence now (and remember it as the current decision)."""
        fused = self.fused()
        if fused is None:
            return self.decision
        self.decision = decide(fused)
        self.since_decision = 0
        return self.decision
