"""Region finders: full frame, fixed boxes, and a real ONNX detector run by onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_runtime.errors import ModelError
from edge_runtime.profile import Regions
from edge_runtime.run.regions import (
    DetectorRegions,
    FixedRegions,
    FullFrame,
    RegionFinder,
    crop,
    make_region_finder,
    nms,
)
from edge_runtime.types import Region

IN_W, IN_H = 64, 48
# Candidate boxes in input pixels (x1, y1, x2, y2). B overlaps A (IoU 0.62), F reaches outside the input.
ANCHORS = {
    "A": (4, 4, 20, 20),
    "B": (6, 6, 22, 22),
    "C": (30, 10, 50, 30),
    "D": (40, 30, 60, 46),
    "E": (0, 0, 64, 48),
    "F": (-8, -8, 8, 8),
}
RED = (0, 0, 255)  # BGR
BLUE = (255, 0, 0)


def red_detector(
    *,
    normalized: bool = False,
    input_range: float = 255.0,
    metadata: dict[str, str] | None = None,
    dynamic: bool = False,
    outputs: tuple[str, str] = ("boxes", "scores"),
) -> onnx.ModelProto:
    """A real detector graph: score of each fixed candidate box = mean red (RGB channel 0) inside it, 0..1.

    Slice picks the red plane, MatMul with per-box averaging masks computes the scores, so the scores are
    what onnxruntime computes from the actual input tensor.
    """
    names = list(ANCHORS)
    masks = np.zeros((IN_H * IN_W, len(names)), np.float32)
    for k, name in enumerate(names):
        x1, y1, x2, y2 = ANCHORS[name]
        m = np.zeros((IN_H, IN_W), np.float32)
        m[max(y1, 0) : min(y2, IN_H), max(x1, 0) : min(x2, IN_W)] = 1.0
        masks[:, k] = m.reshape(-1) / (m.sum() * input_range)
    boxes = np.array([ANCHORS[n] for n in names], np.float32)[np.newaxis]
    if normalized:
        boxes = boxes / np.array([IN_W, IN_H, IN_W, IN_H], np.float32)
    inits = [
        numpy_helper.from_array(masks, "masks"),
        numpy_helper.from_array(boxes, "anchors"),
        numpy_helper.from_array(np.array([0], np.int64), "c0"),
        numpy_helper.from_array(np.array([1], np.int64), "c1"),
        numpy_helper.from_array(np.array([1, -1], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Slice", ["image", "c0", "c1", "c1"], ["red"]),  # channel 0 of RGB
        helper.make_node("Reshape", ["red", "flat"], ["red_flat"]),
        helper.make_node("MatMul", ["red_flat", "masks"], [outputs[1]]),
        helper.make_node("Identity", ["anchors"], [outputs[0]]),
    ]
    shape: list[int | str] = ["N", 3, "H", "W"] if dynamic else [1, 3, IN_H, IN_W]
    graph = helper.make_graph(
        nodes,
        "red_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [
            helper.make_tensor_value_info(outputs[0], TensorProto.FLOAT, [1, len(names), 4]),
            helper.make_tensor_value_info(outputs[1], TensorProto.FLOAT, [1, len(names)]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


# Source 640x240: x scales by 10, y by 5, so a swapped axis would show.
SX, SY = 10, 5
SRC_W, SRC_H = IN_W * SX, IN_H * SY


def paint(image: np.ndarray, x1: int, y1: int, x2: int, y2: int, colour: tuple[int, int, int] = RED) -> None:
    """Paint an input-pixel rectangle in source pixels."""
    image[max(y1, 0) * SY : y2 * SY, max(x1, 0) * SX : x2 * SX] = colour


def scene(colour: tuple[int, int, int] = RED) -> np.ndarray:
    image = np.zeros((SRC_H, SRC_W, 3), np.uint8)
    image[:, :, :2] = 40  # grey-green background with no red, so scores are exact fractions
    paint(image, *ANCHORS["A"], colour=colour)  # A: 1.0, B: 196/256 = 0.77 but suppressed by A
    paint(image, *ANCHORS["C"], colour=colour)  # C: 1.0
    paint(image, 40, 30, 50, 46, colour=colour)  # half of D: 0.5
    paint(image, 0, 0, 2, 2, colour=colour)  # F's in-image part (8x8): these 4 pixels + 16 of A = 20/64
    return image


def src_box(x1: int, y1: int, x2: int, y2: int) -> tuple[int, int, int, int]:
    x1, y1 = max(x1, 0), max(y1, 0)
    return (x1 * SX, y1 * SY, (x2 - x1) * SX, (y2 - y1) * SY)


@pytest.fixture
def detector_path(tmp_path: Path) -> Path:
    return save(red_detector(), tmp_path / "det.onnx")


def test_detector_scales_thresholds_and_suppresses(detector_path: Path) -> None:
    det = DetectorRegions(detector_path, score_threshold=0.45, max_regions=16)
    assert det.input_size == (IN_W, IN_H)
    regions = det.find(scene())
    assert [r.box for r in regions] == [src_box(*ANCHORS["A"]), src_box(*ANCHORS["C"]), src_box(*ANCHORS["D"])]
    assert [r.detector_score for r in regions] == pytest.approx([1.0, 1.0, 0.5], abs=1e-5)
    assert isinstance(det, RegionFinder)


def test_detector_threshold_and_max_regions(detector_path: Path) -> None:
    image = scene()
    assert [r.box for r in DetectorRegions(detector_path, 0.6, 16).find(image)] == [
        src_box(*ANCHORS["A"]),
        src_box(*ANCHORS["C"]),
    ]
    assert [r.box for r in DetectorRegions(detector_path, 0.45, 1).find(image)] == [src_box(*ANCHORS["A"])]
    # Without NMS overlap suppression B (0.77) would come back; a looser IoU limit lets it through.
    loose = DetectorRegions(detector_path, 0.45, 16, nms_iou=0.9).find(image)
    assert src_box(*ANCHORS["B"]) in [r.box for r in loose]


def test_detector_clips_boxes_outside_the_frame(detector_path: Path) -> None:
    regions = DetectorRegions(detector_path, 0.05, 16, nms_iou=1.0).find(scene())
    f = next(r for r in regions if r.detector_score == pytest.approx(20 / 64, abs=1e-4))
    assert f.box == (0, 0, 8 * SX, 8 * SY)
    for r in regions:
        x, y, w, h = r.box
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= SRC_W and y + h <= SRC_H


def test_detector_feeds_rgb(detector_path: Path) -> None:
    # The model scores red in RGB channel 0; blue (BGR channel 0) must not light it up, red must.
    detector = DetectorRegions(detector_path, 0.45, 16)
    assert detector.find(scene(BLUE)) == []
    assert [r.box for r in detector.find(scene(RED))] == [src_box(*ANCHORS[k]) for k in "ACD"]
    # Half-intensity red (BGR 0, 0, 128): each score is the red level the model read, 128/255, which only the
    # red plane of an RGB tensor in 0..255 holds (D, half covered, falls below the threshold).
    dim = detector.find(scene((0, 0, 128)))
    assert [r.box for r in dim] == [src_box(*ANCHORS[k]) for k in "AC"]
    assert [r.detector_score for r in dim] == pytest.approx([128 / 255] * 2, abs=1e-5)


@pytest.mark.parametrize(
    ("model_kwargs", "det_kwargs"),
    [
        ({"normalized": True}, {"box_format": "normalized"}),
        ({"normalized": True, "metadata": {"edge.box_format": "normalized"}}, {}),
        ({"input_range": 1.0}, {"input_range": 1.0}),
        ({"input_range": 1.0, "metadata": {"edge.input_range": "1"}}, {}),
        ({"dynamic": True}, {"input_size": (IN_W, IN_H)}),
    ],
)
def test_detector_conventions(tmp_path: Path, model_kwargs: dict, det_kwargs: dict) -> None:
    path = save(red_detector(**model_kwargs), tmp_path / "det.onnx")
    regions = DetectorRegions(path, 0.45, 16, **det_kwargs).find(scene())
    assert [r.box for r in regions] == [src_box(*ANCHORS["A"]), src_box(*ANCHORS["C"]), src_box(*ANCHORS["D"])]


def test_detector_contract_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        DetectorRegions(tmp_path / "missing.onnx")
    dynamic = save(red_detector(dynamic=True), tmp_path / "dyn.onnx")
    with pytest.raises(ModelError, match="input_size"):
        DetectorRegions(dynamic)
    fixed = save(red_detector(), tmp_path / "fixed.onnx")
    with pytest.raises(ModelError, match="64x48"):
        DetectorRegions(fixed, input_size=96)
    renamed = save(red_detector(outputs=("bbox", "conf")), tmp_path / "renamed.onnx")
    with pytest.raises(ModelError, match="missing boxes, scores"):
        DetectorRegions(renamed)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelError):
        DetectorRegions(garbage)


def test_nms_keeps_best_of_overlapping() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float64)
    scores = np.array([0.8, 0.9, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.5, limit=1).tolist() == [1]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 2]


def test_full_frame() -> None:
    image = np.zeros((120, 200, 3), np.uint8)
    assert FullFrame().find(image) == [Region(box=(0, 0, 200, 120))]


def test_fixed_regions_clip_and_drop() -> None:
    finder = FixedRegions([[10, 10, 50, 40], [180, 100, 50, 50], [300, 10, 20, 20], [0, 0, 200, 120]])
    image = np.zeros((120, 200, 3), np.uint8)
    boxes = [r.box for r in finder.find(image)]
    assert boxes == [(10, 10, 50, 40), (180, 100, 20, 20), (0, 0, 200, 120)]
    assert all(r.detector_score == 1.0 for r in finder.find(image))
    # Another frame size is clipped on its own, not from the cache of the first.
    assert [r.box for r in finder.find(np.zeros((60, 100, 3), np.uint8))] == [(10, 10, 50, 40), (0, 0, 100, 60)]


def test_crop() -> None:
    image = np.arange(120 * 200 * 3, dtype=np.uint32).reshape(120, 200, 3)
    piece = crop(image, Region(box=(10, 20, 30, 40)))
    assert piece.shape == (40, 30, 3)
    assert np.array_equal(piece, image[20:60, 10:40])
    assert crop(image, Region(box=(190, 110, 50, 50))).shape == (10, 10, 3)
    with pytest.raises(ValueError, match="outside"):
        crop(image, Region(box=(500, 500, 10, 10)))


def test_make_region_finder(tmp_path: Path) -> None:
    assert isinstance(make_region_finder(Regions(), tmp_path), FullFrame)
    fixed = make_region_finder(Regions(mode="fixed", fixed=[[0, 0, 10, 10], [5, 5, 10, 10]], max_regions=1), tmp_path)
    assert isinstance(fixed, FixedRegions)
    assert len(fixed.find(np.zeros((50, 50, 3), np.uint8))) == 1
    (tmp_path / "models").mkdir()
    save(red_detector(), tmp_path / "models" / "det.onnx")
    section = Regions(mode="detector", detector_model="models/det.onnx", detector_score=0.6, max_regions=1)
    det = make_region_finder(section, tmp_path, threads=1)
    assert isinstance(det, DetectorRegions)
    assert det.model_path == tmp_path / "models" / "det.onnx"
    assert [r.box for r in det.find(scene())] == [src_box(*ANCHORS["A"])]
    absolute = Regions(mode="detector", detector_model=str(tmp_path / "models" / "det.onnx"))
    assert isinstance(make_region_finder(absolute, Path("/nonexistent")), DetectorRegions)
