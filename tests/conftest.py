"""Shared fixtures: small real ONNX models built with onnx.helper, real images, the shared data when present, and
for the whole session one tiny real bundle, one test video and one mosquitto broker.

The session bundle is built once by edge-build (the slow part of every run test); a test that changes a bundle
makes a changed copy (``faultkit.rebundle``, ``faultkit.copy_bundle``, ``shutil.copytree``) and never writes
into ``tiny_assets``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:
    from tests.broker import Mosquitto
    from tests.faultkit import Assets

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GROCERY = SHARED / "data" / "grocery"
REFERENCE_BACKBONE = SHARED / "models" / "efficientnet_lite0_fp32.onnx"


def tiny_backbone(input_size: int = 64, dim: int = 16, seed: int = 0) -> onnx.ModelProto:
    """A small real CNN with the backbone contract: image [N,3,S,S] 0..255 -> embedding [N,dim], logits [N,10]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(np.array(127.0, np.float32), "mean"),
        numpy_helper.from_array(np.array(128.0, np.float32), "std"),
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (dim, 8, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, (dim,)).astype(np.float32), "b2"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6.0, np.float32), "six"),
        numpy_helper.from_array(rng.normal(0, 0.3, (10, dim)).astype(np.float32), "wc"),
        numpy_helper.from_array(np.zeros(10, np.float32), "bc"),
        numpy_helper.from_array(np.array([-1, dim], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Sub", ["image", "mean"], ["x0"]),
        helper.make_node("Div", ["x0", "std"], ["x1"]),
        helper.make_node("Conv", ["x1", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["c1", "zero", "six"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["c2", "zero", "six"], ["r2"]),
        helper.make_node("ReduceMean", ["r2"], ["pooled"], axes=[2, 3], keepdims=1),
        helper.make_node("Reshape", ["pooled", "flat"], ["embedding"]),
        helper.make_node("Gemm", ["embedding", "wc", "bc"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, input_size, input_size])],
        [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def tiny_model_path(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_backbone(), str(path))
    return path


def grocery_images(split: str = "train", limit: int = 16) -> list[Path]:
    root = GROCERY / split
    if not root.is_dir():
        pytest.skip(f"shared grocery data not present at {root}")
    return sorted(root.rglob("*.jpg"))[:: max(1, len(list(root.rglob("*.jpg"))) // limit)][:limit]


# --------------------------------------------------------------------------- the session's bundle and video

# What the session bundle's profile adds to faultkit's: a head that reads colour whatever the build would choose,
# so every run test goes through the composed head input as well.
TINY_PROFILE_EXTRA = '[head]\ncolour = "on"\n'
TINY_VIDEO_FRAMES = 30  # 3 s at 10 fps, at faultkit.FRAME_SIZE


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    """The tiny backbone over a small demo catalogue, built once by edge-build: fixed regions (the whole frame and
    a small box, ``faultkit.BOXES``), crops capped at ``faultkit.CROP_CAP``, input 96, fp32, colour on."""
    from tests.faultkit import build_assets

    return build_assets(tmp_path_factory.mktemp("tiny") / "assets", extra_profile=TINY_PROFILE_EXTRA)


@pytest.fixture(scope="session")
def tiny_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo video of ``TINY_VIDEO_FRAMES`` frames at 10 fps (seed 1); read it, never write it."""
    from tests.faultkit import make_video

    return make_video(tmp_path_factory.mktemp("video") / "video30.mp4", TINY_VIDEO_FRAMES)


# --------------------------------------------------------------------------- mosquitto


@pytest.fixture(scope="session")
def session_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One anonymous, non-persistent broker for the session (use ``mosquitto``, which clears it per test)."""
    from tests.broker import SBIN_DIRS, Mosquitto, find_mosquitto

    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto not installed (looked in PATH and " + ", ".join(SBIN_DIRS) + "); apt install mosquitto")
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto-session"), binary=binary)
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def mosquitto(session_mosquitto: Mosquitto) -> Mosquitto:
    """A started, anonymous, non-persistent broker on a free port of 127.0.0.1: the session's, holding no retained
    message from an earlier test. Tests that stop or reconfigure a broker use ``mosquitto_factory``."""
    session_mosquitto.start()  # a no-op while it runs
    session_mosquitto.clear_retained()
    return session_mosquitto


@pytest.fixture
def mosquitto_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Mosquitto]]:
    """``make(**options)`` -> a configured, not yet started Mosquitto; all are killed after the test."""
    from tests.broker import SBIN_DIRS, Mosquitto, find_mosquitto

    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto not installed (looked in PATH and " + ", ".join(SBIN_DIRS) + "); apt install mosquitto")
    brokers: list[Mosquitto] = []

    def make(**options: Any) -> Mosquitto:
        broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), binary=binary, **options)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.kill()
