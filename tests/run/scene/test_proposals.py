"""Learned-basket proposals on a rendered cart scenario (real images through OpenCV's MOG2)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.demo.cart_scenes import CartScenario
from edge_runtime.profile.scene import CartConfig
from edge_runtime.run.scene.proposals import BasketProposals
from edge_runtime.run.scene.tracker import iou

LEARN = 15


@pytest.fixture
def scene(cart_session: tuple[CartScenario, list[np.ndarray]]) -> tuple[CartScenario, list[np.ndarray]]:
    return cart_session


class _Uncompensated(BasketProposals):
    """The same proposals without the gain compensation."""

    def _compensate(self, small: np.ndarray) -> np.ndarray:
        return small


def test_proposals_follow_the_objects_lying_in_the_basket(scene: tuple[CartScenario, list[np.ndarray]]) -> None:
    scenario, frames = scene
    proposals = BasketProposals(CartConfig(learn_frames=LEARN))
    found = [proposals.find(f) for f in frames]
    assert all(not r for r in found[:LEARN]) and proposals.ready
    quiet = [(i, n) for i in range(LEARN, len(frames)) if (n := scenario.lying(i)) is not None]
    assert len(quiet) > 60 and any(n == 0 for _, n in quiet) and max(n for _, n in quiet) >= 2
    wrong = [(i, n, [r.box for r in found[i]]) for i, n in quiet if len(found[i]) != n]
    assert len(wrong) <= 0.03 * len(quiet), wrong[:5]
    # A lying object's box does not wander between frames (the lighting step included).
    first = next(i for i, n in quiet if n == 1)
    boxes = [found[i][0].box for i, n in quiet if n == 1 and len(found[i]) == 1 and i < first + 20]
    assert len(boxes) > 5 and min(iou(boxes[0], b) for b in boxes) > 0.8


def test_a_lighting_step_is_compensated(scene: tuple[CartScenario, list[np.ndarray]]) -> None:
    scenario, frames = scene
    assert scenario._lighting is not None
    step = scenario._lighting[0]
    after = range(step + 4, min(len(frames), step + 14))
    kept, raw = BasketProposals(CartConfig(learn_frames=LEARN)), _Uncompensated(CartConfig(learn_frames=LEARN))
    for f in frames[: after[0]]:
        kept.find(f), raw.find(f)
    for i in after:
        n = scenario.lying(i)
        assert n is None or len(kept.find(frames[i])) == n
    # Without compensation the same step floods the mask: nothing or too much is proposed.
    lying = [scenario.lying(i) for i in after]
    assert [len(raw.find(frames[i])) for i in after] != lying


def test_relearn_forgets_the_basket(scene: tuple[CartScenario, list[np.ndarray]]) -> None:
    _scenario, frames = scene
    proposals = BasketProposals(CartConfig(learn_frames=LEARN))
    for f in frames[: LEARN + 2]:
        proposals.find(f)
    proposals.relearn()
    assert not proposals.ready and proposals.find(frames[LEARN + 2]) == []
