"""What the scene tests share: one rendered cart session, and the session bundle's head with real head inputs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_runtime.bundle import load_bundle
from edge_runtime.demo.cart_scenes import CartScenario, cart_scenario
from edge_runtime.features import colour_descriptor, compose
from edge_runtime.head.model import Head, load_head
from edge_runtime.preprocess import prepare_batch
from edge_runtime.run.pipeline import RunOptions, RunSummary, run
from edge_runtime.run.startup import bundle_profile, open_checked_backend
from edge_runtime.types import Decision
from tests.broker import Collector, Mosquitto
from tests.faultkit import Assets


@dataclass
class RealHead:
    """The session bundle's head and, per SKU, the head input of one of its catalogue photos."""

    head: Head
    inputs: dict[str, np.ndarray]

    def decide(self, fused: np.ndarray) -> Decision:
        return self.head.decide(fused[None, :])[0]

    def decisions(self, features: np.ndarray) -> list[Decision]:
        return self.head.decide(features)


@pytest.fixture(scope="module")
def real_head(tiny_assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealHead]:
    bundle = load_bundle(tiny_assets.bundle)
    head = load_head(bundle)
    with contextlib.ExitStack() as stack:
        state = tmp_path_factory.mktemp("scene-backend")
        backend, size = open_checked_backend(bundle, bundle_profile(bundle), head, state, stack)
        inputs: dict[str, np.ndarray] = {}
        for sku in head.skus:
            photo = next(iter(sorted(Path(tiny_assets.catalogue).rglob(f"{sku.code}/*.jpg"))), None)
            if photo is None:
                continue
            image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
            batch = prepare_batch([image], size)
            weight = head.config.colour_weight
            colour = colour_descriptor(batch) if weight > 0 else None
            inputs[sku.code] = compose(backend.embed(batch), colour, weight)[0]
        yield RealHead(head, inputs)


@pytest.fixture(scope="session")
def cart_session() -> tuple[CartScenario, list[np.ndarray]]:
    """One rendered cart session (seed 2): three products in, one out, a lighting step; frames in memory."""
    scenario = cart_scenario(2, actions=4)
    assert "lighting" in scenario.features and scenario._lighting is not None
    return scenario, list(scenario.frames())


def run_to_broker(
    bundle: Path, video: Path, state: Path, broker: Mosquitto, device: str
) -> tuple[RunSummary, list[Any]]:
    """edge-run on ``video`` every frame, publishing to ``broker`` as ``device``: its summary and every message the
    broker delivered on the device's topics while it ran (``Collector`` messages: topic, payload, retain)."""
    collector = Collector(broker.host, broker.port, f"edge/{device}/#")
    try:
        summary = run(
            RunOptions(
                bundle=bundle,
                source=str(video),
                state_dir=state,
                metrics_port=0,
                mqtt_host=broker.host,
                mqtt_port=broker.port,
                device_id=device,
                every_frame=True,
                handle_signals=False,
                drain_timeout_s=15.0,
            )
        )
        return summary, list(collector.messages)
    finally:
        collector.close()
