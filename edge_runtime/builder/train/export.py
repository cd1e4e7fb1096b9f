"""Fine-tuned weights back to ONNX (through the project's own exporter) and to the build cache.

The export does not trace torch: the trained module's state goes back under the checkpoint's key names and
``builder.backbone.build_efficientnet_lite0`` writes the graph exactly as for the pretrained weights, so the bundle
keeps today's contract (``image`` raw RGB 0..255 ``[N,3,S,S]``, ``embedding``, ``logits`` with one column per
catalogue SKU, ``embedding_multi``; dynamic batch; opset 17, which TensorRT 8.6 and 10 parse) and every later
step (activation clip, fp16 and int8 variants, footprint) treats it like the default backbone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_runtime.builder.backbone import build_efficientnet_lite0
from edge_runtime.builder.train.model import Lite0, to_state_dict
from edge_runtime.bundle import npz_bytes

CACHE_SCHEMA = "edge.finetune/1"


def export_onnx(model: Lite0, input_size: int) -> onnx.ModelProto:
    """The fine-tuned backbone as the project's ONNX graph (batch norm folded) at ``input_size``."""
    return build_efficientnet_lite0(to_state_dict(model), input_size)


def save_state(path: Path, state: dict[str, np.ndarray], record: dict[str, Any]) -> None:
    """Write the fine-tuned state dict (npz, never pickled) and its record (json) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, data in (
        (path.with_suffix(".npz"), npz_bytes(state)),
        (path.with_suffix(".json"), json.dumps({"schema": CACHE_SCHEMA, **record}).encode()),
    ):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)  # fmt: skip


def load_state(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """A cached fine-tune, or None when there is none (or it is unreadable: it is then trained again)."""
    npz, meta = path.with_suffix(".npz"), path.with_suffix(".json")
    if not (npz.is_file() and meta.is_file()):
        return None
    try:
        record = json.loads(meta.read_text())
        with np.load(npz, allow_pickle=False) as data:
            state = {k: data[k] for k in data.files}
    except (OSError, ValueError):
        return None
    if record.get("schema") != CACHE_SCHEMA:
        return None
    return state, record
