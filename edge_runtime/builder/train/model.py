"""EfficientNet-Lite0 in torch, built from the same state dict the ONNX exporter reads.

The checkpoint comes through ``builder.backbone.read_legacy_checkpoint`` (the restricted reader: no pickle
execution, no hub download), and the fine-tuned weights go back out as a state dict with the checkpoint's own
key names, so ``builder.backbone.build_efficientnet_lite0`` writes the ONNX graph exactly as it does for the
pretrained weights (batch norm folded, TF "SAME" padding, the multi-layer embedding). The torch graph here only
has to agree with that export, which ``tests/builder/test_train.py`` checks to 1e-4.

Layout (Tan and Le 2019, the Lite variant: no squeeze-excitation, ReLU6): a stem conv, 16 inverted-residual
blocks in 7 stages, a 1x1 head conv to 1280 channels, global average pooling and a linear classifier.
Training runs the network from a stage boundary (``forward_from``), so the frozen early stages are computed
once per augmented view by onnxruntime and cached (``builder.train.views``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_runtime.builder.backbone import (
    BN_EPSILON,
    HEAD_CHANNELS,
    INPUT_MEAN,
    INPUT_SCALE,
    LITE0_STAGES,
    MULTI_STAGES,
    STEM_CHANNELS,
)
from edge_runtime.errors import ModelError


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) for one spatial side: the extra pixel goes after, as in the export."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBN(nn.Module):
    """Conv (no bias) + batch norm (+ ReLU6), with SAME padding computed from the input size."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=0, groups=groups, bias=False)
        # momentum 0.01 as the reference implementation (PyTorch's 0.1 forgets the pretrained statistics fast).
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPSILON, momentum=0.01)
        self.kernel, self.stride, self.act = kernel, stride, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel > 1 or self.stride > 1:
            top, bottom = same_pads(x.shape[-2], self.kernel, self.stride)
            left, right = same_pads(x.shape[-1], self.kernel, self.stride)
            x = F.pad(x, (left, right, top, bottom))
        x = self.bn(self.conv(x))
        return F.relu6(x) if self.act else x


class Block(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 project, residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = ConvBN(c_in, hidden) if expand != 1 else None
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, c_out, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return y + x if self.residual else y


def _stage_spans() -> list[tuple[int, int]]:
    """(first block, end block) of each stage."""
    spans, start = [], 0
    for repeats, *_ in LITE0_STAGES:
        spans.append((start, start + repeats))
        start += repeats
    return spans


STAGE_SPANS = _stage_spans()


class Lite0(nn.Module):
    """EfficientNet-Lite0 with a classifier of ``n_classes`` (1000 for the ImageNet checkpoint)."""

    def __init__(self, n_classes: int = 1000) -> None:
        super().__init__()
        self.stem = ConvBN(3, STEM_CHANNELS, 3, 2)
        blocks: list[nn.Module] = []
        c_in = STEM_CHANNELS
        for repeats, kernel, first_stride, expand, c_out in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(Block(c_in, c_out, kernel, first_stride if r == 0 else 1, expand))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvBN(c_in, HEAD_CHANNELS)
        self.classifier = nn.Linear(HEAD_CHANNELS, n_classes)

    def stem_forward(self, image: torch.Tensor) -> torch.Tensor:
        """Raw RGB 0..255 [N,3,S,S] -> the stem's output (the input scaling is inside, as in the export)."""
        return self.stem((image - INPUT_MEAN) / INPUT_SCALE)

    def stages(self, x: torch.Tensor, first: int, last: int) -> Iterator[torch.Tensor]:
        """Run stages ``first``..``last`` (inclusive) on ``x``, the output of stage ``first - 1`` (or the stem's),
        yielding each stage's output."""
        for stage in range(first, last + 1):
            begin, end = STAGE_SPANS[stage]
            for index in range(begin, end):
                x = self.blocks[index](x)
            yield x

    def features_from(self, x: torch.Tensor, first: int) -> dict[str, torch.Tensor]:
        """From the output of stage ``first - 1``: the pooled head features, the logits and the multi-layer
        embedding, as the ONNX export's ``embedding``, ``logits`` and ``embedding_multi``."""
        outs = list(self.stages(x, first, len(LITE0_STAGES) - 1))
        by_stage = dict(zip(range(first, len(LITE0_STAGES)), outs, strict=True))
        by_stage[first - 1] = x  # training from stage 6 still needs stage 5's output for the multi embedding
        head = self.head(outs[-1])
        pooled = head.mean(dim=(2, 3))
        parts = [_unit(pooled)] + [_unit(by_stage[i].mean(dim=(2, 3))) for i in reversed(MULTI_STAGES)]
        multi = torch.cat(parts, dim=1) / math.sqrt(1 + len(MULTI_STAGES))
        return {"embedding": pooled, "logits": self.classifier(pooled), "embedding_multi": multi}

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.features_from(self.stem_forward(image), 0)

    def stage_output(self, image: torch.Tensor, stage: int) -> torch.Tensor:
        """The output of ``stage`` for raw images (what the ONNX trunk computes for training)."""
        outs = list(self.stages(self.stem_forward(image), 0, stage))
        return outs[-1]


def _unit(x: torch.Tensor) -> torch.Tensor:
    # The export divides by the L2 norm plus 1e-6 (a black frame stays finite); the same here.
    return x / (x.norm(dim=1, keepdim=True) + 1e-6)


# --------------------------------------------------------------------------------------------------------------
# State dict <-> module (the checkpoint's key names, numpy arrays)
# --------------------------------------------------------------------------------------------------------------


def _bn_keys(prefix: str) -> dict[str, str]:
    return {"weight": f"{prefix}.weight", "bias": f"{prefix}.bias", "running_mean": f"{prefix}.running_mean",
            "running_var": f"{prefix}.running_var"}  # fmt: skip


def _key_map(model: Lite0) -> dict[str, str]:
    """torch parameter/buffer name -> checkpoint key."""
    pairs: list[tuple[str, str, str]] = [("stem", "_conv_stem", "_bn0"), ("head", "_conv_head", "_bn1")]
    for i, block in enumerate(model.blocks):
        assert isinstance(block, Block)
        if block.expand is not None:
            pairs.append((f"blocks.{i}.expand", f"_blocks.{i}._expand_conv", f"_blocks.{i}._bn0"))
        pairs.append((f"blocks.{i}.depthwise", f"_blocks.{i}._depthwise_conv", f"_blocks.{i}._bn1"))
        pairs.append((f"blocks.{i}.project", f"_blocks.{i}._project_conv", f"_blocks.{i}._bn2"))
    out = {}
    for name, conv, bn in pairs:
        out[f"{name}.conv.weight"] = f"{conv}.weight"
        for attr, key in _bn_keys(bn).items():
            out[f"{name}.bn.{attr}"] = key
    out["classifier.weight"] = "_fc.weight"
    out["classifier.bias"] = "_fc.bias"
    return out


def from_state_dict(state: dict[str, np.ndarray], n_classes: int | None = None) -> Lite0:
    """A ``Lite0`` holding the checkpoint's weights. With ``n_classes`` other than the checkpoint's, the
    classifier is left freshly initialised (the caller fits it)."""
    fc = state.get("_fc.weight")
    classes = n_classes if n_classes is not None else (len(fc) if fc is not None else 1000)
    model = Lite0(classes)
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    for name, key in _key_map(model).items():
        if name.startswith("classifier.") and (fc is None or len(fc) != classes):
            continue
        if key not in state:
            raise ModelError(f"checkpoint has no tensor {key}", hint="is this an EfficientNet-Lite0 state dict?")
        value = torch.from_numpy(np.asarray(state[key], dtype=np.float32))
        if tuple(value.shape) != tuple(own[name].shape):
            raise ModelError(f"checkpoint tensor {key} has shape {tuple(value.shape)}, expected {own[name].shape}")
        with torch.no_grad():
            own[name].copy_(value)
    return model


def to_state_dict(model: Lite0) -> dict[str, np.ndarray]:
    """The module's weights under the checkpoint's key names, float32 numpy (what the ONNX exporter reads)."""
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    return {key: own[name].detach().cpu().numpy().astype(np.float32) for name, key in _key_map(model).items()}
