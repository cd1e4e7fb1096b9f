"""Where in a frame to look: the whole frame, fixed boxes from the profile, or a detector model.

Every finder returns ``Region`` boxes as ``(x, y, width, height)`` in source pixels, inside the image and
never empty, so later stages can crop without checking.

Detector contract (``DetectorRegions``)
---------------------------------------
An ONNX model with

* one input, float32 ``[1, 3, H, W]`` (``N`` may be symbolic), **RGB**, values ``0..255`` by default or
  ``0..1`` (``input_range=1.0``). The frame is resized to ``W x H`` without letterboxing, so boxes map back
  by a plain per-axis scale. ``H, W`` come from the model when they are fixed, else from ``input_size``.
* an output named ``boxes``, ``[1, K, 4]`` (or ``[K, 4]``), ``x1, y1, x2, y2`` in input pixels by default
  or normalised to ``0..1`` (``box_format="normalized"``);
* an output named ``scores``, ``[1, K]`` (or ``[K]``), higher = more likely a product.

No NMS or thresholding is expected inside the model; this module applies the score threshold, greedy NMS,
clipping and the ``max_regions`` cap. A model can declare its own conventions in its ONNX metadata
(``edge.input_range`` = ``255`` | ``1``, ``edge.box_format`` = ``pixels`` | ``normalized``), which is how a
profile that only names the model file selects them; explicit constructor arguments win over metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, cast, runtime_checkable

import cv2
import numpy as np

from edge_runtime.backends.base import LAST_RESORT, open_raw_model
from edge_runtime.errors import ModelError
from edge_runtime.profile import Regions
from edge_runtime.types import Region

__all__ = [
    "BOXES_OUTPUT",
    "SCORES_OUTPUT",
    "DetectorRegions",
    "FixedRegions",
    "FullFrame",
    "RegionFinder",
    "crop",
    "make_region_finder",
    "nms",
]

log = logging.getLogger(__name__)

BOXES_OUTPUT = "boxes"
SCORES_OUTPUT = "scores"
META_INPUT_RANGE = "edge.input_range"
META_BOX_FORMAT = "edge.box_format"

BoxFormat = Literal["pixels", "normalized"]


@runtime_checkable
class RegionFinder(Protocol):
    def find(self, image: np.ndarray) -> list[Region]:
        """The regions of a BGR frame to classify, in source pixels."""
        ...


def _clip_xyxy(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Round to whole pixels and clip into the image; the result may be empty (x2 <= x1 or y2 <= y1)."""
    cx1 = int(min(max(round(x1), 0), width))
    cy1 = int(min(max(round(y1), 0), height))
    cx2 = int(min(max(round(x2), 0), width))
    cy2 = int(min(max(round(y2), 0), height))
    return cx1, cy1, cx2, cy2


def crop(image: np.ndarray, region: Region) -> np.ndarray:
    """The pixels of ``region`` (clipped to the image) as a view into ``image``; copy it to keep it."""
    height, width = image.shape[:2]
    x, y, w, h = region.box
    x1, y1, x2, y2 = _clip_xyxy(x, y, x + w, y + h, width, height)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"region {region.box} lies outside the {width}x{height} image")
    return image[y1:y2, x1:x2]


class FullFrame:
    """The whole frame as one region."""

    def find(self, image: np.ndarray) -> list[Region]:
        height, width = image.shape[:2]
        return [Region(box=(0, 0, int(width), int(height)))]


class FixedRegions:
    """Fixed ``[x, y, w, h]`` boxes, clipped to each frame; boxes that end up empty are dropped.

    A box that does not fit means the profile was written for another capture size, so it is logged once
    per frame size rather than per frame.
    """

    def __init__(self, boxes: Sequence[Sequence[int]]) -> None:
        self.boxes: list[tuple[int, int, int, int]] = []
        for box in boxes:
            if len(box) != 4:
                raise ValueError(f"a fixed region is [x, y, w, h]; got {list(box)}")
            x, y, w, h = (int(v) for v in box)
            self.boxes.append((x, y, w, h))
        self._cache: dict[tuple[int, int], list[Region]] = {}

    def find(self, image: np.ndarray) -> list[Region]:
        height, width = (int(v) for v in image.shape[:2])
        cached = self._cache.get((width, height))
        if cached is None:
            cached = []
            for x, y, w, h in self.boxes:
                x1, y1, x2, y2 = _clip_xyxy(x, y, x + w, y + h, width, height)
                if x2 <= x1 or y2 <= y1:
                    log.warning("fixed region %s lies outside the %dx%d frame; dropped", [x, y, w, h], width, height)
                    continue
                clipped = (x1, y1, x2 - x1, y2 - y1)
                if clipped != (x, y, w, h):
                    log.warning(
                        "fixed region %s exceeds the %dx%d frame; clipped to %s",
                        [x, y, w, h],
                        width,
                        height,
                        list(clipped),
                    )
                cached.append(Region(box=clipped))
            self._cache[(width, height)] = cached
        return list(cached)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept ``x1,y1,x2,y2`` boxes, best score first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep: list[int] = []
    while order.size and (limit is None or len(keep) < limit):
        best, rest = order[0], order[1:]
        keep.append(int(best))
        iw = np.maximum(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0)
        ih = np.maximum(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0)
        inter = iw * ih
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    width, height = (int(v) for v in size)
    return width, height


class DetectorRegions:
    """Regions from an ONNX detector (contract in the module doc), run on the first backend of ``prefer`` that can
    run it as it is (``backends.base.open_raw_model``; the default is onnxruntime on the CPU)."""

    def __init__(
        self,
        model_path: Path | str,
        score_threshold: float = 0.5,
        max_regions: int = 16,
        input_size: int | tuple[int, int] | None = None,
        *,
        input_range: float | None = None,
        box_format: BoxFormat | None = None,
        nms_iou: float = 0.5,
        threads: int = 0,
        prefer: Sequence[str] = (LAST_RESORT,),
        allow_fallback: bool = False,
        engine_dir: Path | None = None,
    ) -> None:
        """``input_size`` is one side or ``(width, height)``; ``threads`` = intra-op threads, 0 = all cores;
        ``prefer``, ``allow_fallback`` and ``engine_dir`` (engine caches) as the profile's ``[backend]``."""
        path = Path(model_path)
        if not path.is_file():
            raise ModelError(
                f"region detector model not found: {path}",
                hint="set regions.detector_model to an ONNX file (relative paths are relative to the bundle)",
            )
        if max_regions < 1 or not 0 <= score_threshold <= 1 or not 0 <= nms_iou <= 1:
            raise ValueError("need max_regions >= 1, score_threshold and nms_iou in 0..1")
        self.model_path = path
        self.score_threshold = float(score_threshold)
        self.max_regions = int(max_regions)
        self.nms_iou = float(nms_iou)
        self.model = open_raw_model(path, prefer, allow_fallback=allow_fallback, threads=threads, engine_dir=engine_dir)

        inputs = self.model.inputs
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 3:
            shapes = {i.name: list(i.shape) for i in inputs}
            raise ModelError(f"{path}: a region detector takes one [1,3,H,W] image input, found {shapes}")
        self.input_name = inputs[0].name
        model_h, model_w = inputs[0].shape[2], inputs[0].shape[3]
        fixed = (model_w, model_h) if isinstance(model_w, int) and isinstance(model_h, int) else None
        wanted = _size_pair(input_size) if input_size is not None else None
        if fixed and wanted and fixed != wanted:
            raise ModelError(
                f"{path}: the model takes {fixed[0]}x{fixed[1]} input but input_size asks for {wanted[0]}x{wanted[1]}"
            )
        size = fixed or wanted
        if size is None:
            raise ModelError(
                f"{path}: the detector's input size is not fixed ({inputs[0].shape})", hint="pass input_size"
            )
        self.input_size: tuple[int, int] = size  # (width, height)

        outputs = list(self.model.outputs)
        missing = [name for name in (BOXES_OUTPUT, SCORES_OUTPUT) if name not in outputs]
        if missing:
            raise ModelError(
                f"{path}: a region detector needs outputs {BOXES_OUTPUT!r} and {SCORES_OUTPUT!r}; "
                f"missing {', '.join(missing)} (outputs: {', '.join(outputs)})",
                hint="rename the outputs when exporting, or wrap the model (see edge_runtime/run/regions.py)",
            )

        meta = self.model.metadata
        if input_range is None:
            input_range = float(meta.get(META_INPUT_RANGE, "255"))
        if box_format is None:
            box_format = cast(BoxFormat, meta.get(META_BOX_FORMAT, "pixels"))
        if not input_range > 0 or box_format not in ("pixels", "normalized"):
            raise ModelError(
                f"{path}: input_range must be positive and box_format 'pixels' or 'normalized'; "
                f"got {input_range!r} and {box_format!r}"
            )
        self.input_range = float(input_range)
        self.box_format: BoxFormat = box_format

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """BGR (or grey) frame -> float32 [1,3,H,W] RGB in 0..input_range."""
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        shrink = image.shape[1] > self.input_size[0] or image.shape[0] > self.input_size[1]
        # Area averaging keeps small products visible when a 1280x720 frame shrinks 10x; linear skips pixels.
        resized = cv2.resize(image, self.input_size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        tensor = rgb.transpose(2, 0, 1)[np.newaxis].astype(np.float32)
        if self.input_range != 255.0:
            tensor *= self.input_range / 255.0
        return np.ascontiguousarray(tensor)

    def find(self, image: np.ndarray) -> list[Region]:
        height, width = (int(v) for v in image.shape[:2])
        raw_boxes, raw_scores = self.model.run([BOXES_OUTPUT, SCORES_OUTPUT], {self.input_name: self.preprocess(image)})
        boxes = np.asarray(raw_boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(raw_scores, dtype=np.float64).reshape(-1)
        if boxes.shape[0] != scores.shape[0]:
            raise ModelError(
                f"{self.model_path}: {boxes.shape[0]} boxes but {scores.shape[0]} scores; the contract is one each"
            )
        usable = np.isfinite(scores) & np.isfinite(boxes).all(axis=1) & (scores >= self.score_threshold)
        boxes, scores = boxes[usable], scores[usable]
        if not scores.size:
            return []

        if self.box_format == "normalized":
            scale = np.array([width, height, width, height], dtype=np.float64)
        else:
            in_w, in_h = self.input_size
            scale = np.array([width / in_w, height / in_h, width / in_w, height / in_h])
        boxes = boxes * scale
        # Some exporters emit corners in either order; normalise rather than drop them.
        xyxy = np.stack(
            [
                np.clip(np.minimum(boxes[:, 0], boxes[:, 2]), 0, width),
                np.clip(np.minimum(boxes[:, 1], boxes[:, 3]), 0, height),
                np.clip(np.maximum(boxes[:, 0], boxes[:, 2]), 0, width),
                np.clip(np.maximum(boxes[:, 1], boxes[:, 3]), 0, height),
            ],
            axis=1,
        )
        regions: list[Region] = []
        for i in nms(xyxy, scores, self.nms_iou):
            x1, y1, x2, y2 = _clip_xyxy(xyxy[i, 0], xyxy[i, 1], xyxy[i, 2], xyxy[i, 3], width, height)
            if x2 > x1 and y2 > y1:  # boxes entirely outside the frame clip to nothing
                regions.append(Region(box=(x1, y1, x2 - x1, y2 - y1), detector_score=float(scores[i])))
                if len(regions) == self.max_regions:
                    break
        return regions


def make_region_finder(
    section: Regions,
    base_dir: Path,
    *,
    threads: int = 0,
    prefer: Sequence[str] = (LAST_RESORT,),
    allow_fallback: bool = False,
    engine_dir: Path | None = None,
) -> RegionFinder:
    """The finder the profile's ``[regions]`` asks for; ``detector_model`` is relative to ``base_dir``.

    A detector runs on the first backend of ``prefer`` (the profile's ``backend.prefer``) that can run it.
    """
    if section.mode == "full":
        return FullFrame()
    if section.mode == "fixed":
        boxes = section.fixed
        if len(boxes) > section.max_regions:
            log.warning(
                "regions.fixed lists %d boxes but max_regions is %d; using the first %d",
                len(boxes),
                section.max_regions,
                section.max_regions,
            )
            boxes = boxes[: section.max_regions]
        return FixedRegions(boxes)
    assert section.detector_model  # the profile validator guarantees it for mode "detector"
    model = Path(section.detector_model).expanduser()
    if not model.is_absolute():
        model = Path(base_dir) / model
    return DetectorRegions(
        model,
        section.detector_score,
        section.max_regions,
        threads=threads,
        prefer=prefer,
        allow_fallback=allow_fallback,
        engine_dir=engine_dir,
    )
