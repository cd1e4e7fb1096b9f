"""The frozen early stages, computed once per training view by onnxruntime and kept as float16.

Fine-tuning changes only the last stages (``recipe.first_trained_stage`` on), so everything before them is a
fixed function of the view. Computing it once per view with onnxruntime (about 4 ms per 224-px image on two
cores, against tens of ms through torch's CPU kernels with autograd bookkeeping) and caching the stage output
turns each training step into a pass through the last stages only. Float16 halves the cache (stage 4's output
is 112x14x14 per view at 224 px: 43 KB) and costs nothing measurable: the trained stages see the same values
to 3 significant digits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.utils

from edge_runtime.backends.onnxruntime import open_session
from edge_runtime.builder.backbone import INPUT_NAME, LITE0_STAGES, STEM_CHANNELS
from edge_runtime.builder.train.augment import Augment, canvas, random_view
from edge_runtime.errors import CatalogueError
from edge_runtime.preprocess import read_image

log = logging.getLogger(__name__)

BATCH = 32


def stage_output_name(stage: int) -> str:
    """The tensor name of stage ``stage``'s output in the project's ONNX export (``backbone.build_...``)."""
    end = sum(repeats for repeats, *_ in LITE0_STAGES[: stage + 1]) - 1
    repeats, _, first_stride, _, c_out = LITE0_STAGES[stage]
    # The stage's last block: a repeat (stride 1, same width) or, for a one-block stage, its first block.
    c_in = c_out if repeats > 1 else (LITE0_STAGES[stage - 1][4] if stage > 0 else STEM_CHANNELS)
    stride = 1 if repeats > 1 else first_stride
    return f"block{end}_residual" if stride == 1 and c_in == c_out else f"block{end}_project"


def trunk_model(backbone: onnx.ModelProto, stage: int) -> onnx.ModelProto:
    """The backbone cut after stage ``stage``: raw image in, that stage's feature map out."""
    name = stage_output_name(stage)
    if name not in {out for node in backbone.graph.node for out in node.output}:
        raise CatalogueError(f"the backbone has no tensor {name}: fine-tuning needs the default backbone")
    # The extractor needs every tensor's type, which the exporter leaves to shape inference.
    return onnx.utils.Extractor(onnx.shape_inference.infer_shapes(backbone)).extract_model([INPUT_NAME], [name])


@dataclass
class ViewCache:
    """Stage outputs of every view: view 0 of each image is the device's own crop, the others random views."""

    features: np.ndarray  # float16 [M, C, H, W]
    labels: np.ndarray  # int64 [M]
    source: np.ndarray  # int64 [M]: the catalogue image each row is a view of
    view: np.ndarray  # int64 [M]: 0 = the evaluation crop, 1.. = random views

    def rows(self, images: np.ndarray, plain: bool | None = None) -> np.ndarray:
        """Row indices of the views of ``images`` (catalogue indices); ``plain`` True/False selects view 0 only
        or random views only."""
        mask = np.isin(self.source, images)
        if plain is not None:
            mask &= (self.view == 0) if plain else (self.view > 0)
        return np.flatnonzero(mask)

    def by_source(self) -> dict[int, np.ndarray]:
        """Catalogue image -> the row indices of its views."""
        order = np.argsort(self.source, kind="stable")
        cuts = np.flatnonzero(np.diff(self.source[order])) + 1
        return {int(self.source[rows[0]]): rows for rows in np.split(order, cuts)}


def build_view_cache(
    backbone: onnx.ModelProto,
    stage: int,
    image_paths: Sequence[Path],
    plain_pixels: np.ndarray,
    labels: np.ndarray,
    views: int,
    size: int,
    aug: Augment,
    seed: int,
    threads: int = 0,
) -> ViewCache:
    """Run the trunk (through ``stage``) on the evaluation crop (``plain_pixels``, uint8 [N,3,S,S] as
    ``catalogue.decode_catalogue`` made them) and on ``views`` random views of each photo."""
    t0 = time.perf_counter()
    session = open_session(trunk_model(backbone, stage).SerializeToString(), threads)
    rng = np.random.default_rng(seed)
    n = len(labels)
    chunks: list[np.ndarray] = []
    sources: list[np.ndarray] = []
    view_ids: list[np.ndarray] = []

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {INPUT_NAME: batch})[0]).astype(np.float16)

    for start in range(0, n, BATCH):
        index = np.arange(start, min(n, start + BATCH))
        chunks.append(run(plain_pixels[index].astype(np.float32)))
        sources.append(index)
        view_ids.append(np.zeros(len(index), np.int64))
        if views:
            canvases = []
            for i in index:
                path = image_paths[int(i)]
                image = read_image(str(path))
                if image is None:  # decoded once already, so this is a file changed under the build
                    raise CatalogueError(f"{path}: unreadable on the second read", hint="rerun the build")
                canvases.append(canvas(image, size))
            for v in range(1, views + 1):
                batch = np.stack([random_view(c, size, rng, aug) for c in canvases])
                chunks.append(run(batch))
                sources.append(index)
                view_ids.append(np.full(len(index), v, np.int64))
        if (start // BATCH) % 20 == 19:
            log.info("training views: %d/%d images (%.0f s)", index[-1] + 1, n, time.perf_counter() - t0)
    source = np.concatenate(sources)
    features = np.concatenate(chunks)
    log.info(
        "training views: %d views of %d images through stage %d in %.1f s (%.0f MiB cached)",
        len(source), n, stage, time.perf_counter() - t0, features.nbytes / 2**20,
    )  # fmt: skip
    return ViewCache(
        features=features, labels=labels[source].astype(np.int64), source=source, view=np.concatenate(view_ids)
    )
