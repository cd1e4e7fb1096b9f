"""Fine-tuning at build time (the [train] extra): the torch twin of the default backbone, a tiny fine-tune, its
export, the cache, and what happens without torch."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_runtime.builder import catalogue as cat
from edge_runtime.builder.backbone import build_efficientnet_lite0, default_checkpoint_path, read_legacy_checkpoint
from edge_runtime.builder.finetune import TRAIN_EXTRA_HINT, should_finetune
from edge_runtime.builder.holdout import HoldoutPlan
from edge_runtime.errors import UsageError
from edge_runtime.profile import Train
from tests.faultkit import edge_cmd

torch = pytest.importorskip("torch", reason="the [train] extra (torch) is not installed: pip install .[train]")

from edge_runtime.builder.train.finetune import finetune, forward_rows  # noqa: E402
from edge_runtime.builder.train.model import from_state_dict, to_state_dict  # noqa: E402
from edge_runtime.builder.train.pipeline import train_pair  # noqa: E402
from edge_runtime.builder.train.recipe import Recipe  # noqa: E402
from edge_runtime.builder.train.views import build_view_cache, stage_output_name  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SIZE = 96  # small enough for a test, large enough for every stage (96 -> 3x3 at stage 6)

# A sitecustomize that makes `import torch` fail in a child process, as on a device that never has torch.
BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch' (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, _NoTorch())
"""


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return read_legacy_checkpoint(default_checkpoint_path())


@pytest.fixture(scope="module")
def tiny(small_catalogue: Path, tmp_path_factory: pytest.TempPathFactory) -> cat.DecodedCatalogue:
    """Six SKUs of the demo catalogue, as a CSV catalogue."""
    full = cat.load_catalogue(small_catalogue)
    keep = [s.code for s in full.skus[:6]]
    path = tmp_path_factory.mktemp("tiny") / "catalogue.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "sku", "group"])
        for item in full.items:
            if item.sku in keep:
                w.writerow([str(item.image), item.sku, "g" + item.sku[:3]])
    return cat.decode_catalogue(cat.load_catalogue(path), [SIZE])


def _onnx_outputs(model: object, batch: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": batch}), strict=True))


def test_torch_twin_matches_the_onnx_export(state: dict[str, np.ndarray], tiny: cat.DecodedCatalogue) -> None:
    batch = tiny.batch(SIZE, np.arange(6))
    ref = _onnx_outputs(build_efficientnet_lite0(state, SIZE), batch)
    with torch.no_grad():
        out = from_state_dict(state).eval()(torch.from_numpy(batch))
    for name in ("embedding", "logits", "embedding_multi"):
        assert np.abs(out[name].numpy() - ref[name]).max() < 1e-4, name
    assert ref["logits"].shape == (6, 1000)


def test_stage_outputs_name_the_exported_tensors() -> None:
    assert [stage_output_name(s) for s in (0, 4, 5, 6)] == [
        "block0_project", "block10_residual", "block14_residual", "block15_project",
    ]  # fmt: skip


def test_tiny_finetune_lowers_heldout_loss_and_exports_exactly(
    state: dict[str, np.ndarray], tiny: cat.DecodedCatalogue
) -> None:
    labels = tiny.labels.astype(np.int64)
    paths = [item.image for item in tiny.catalogue.items]
    onnx_model = build_efficientnet_lite0(state, SIZE)
    cache = build_view_cache(onnx_model, 5, paths, tiny.pixels[SIZE], labels, 2, SIZE, Recipe().augment, 0, 1)
    # Every second photo of each SKU is held out.
    rank = np.array([np.sum(labels[:i] == labels[i]) for i in range(len(labels))])
    train, held = np.flatnonzero(rank % 2 == 0), np.flatnonzero(rank % 2 == 1)
    recipe = Recipe(first_trained_stage=6, views=2, epochs=6, batch=8, lr=3e-4, seed=0, objective="softmax")
    model = from_state_dict(state, n_classes=6)
    losses = []

    def heldout_loss(_: int, m: object) -> None:
        rows = cache.rows(held, plain=True)
        logits = torch.from_numpy(forward_rows(m, cache, rows, 6, torch.device("cpu"))["logits"])  # type: ignore[arg-type]
        losses.append(float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(cache.labels[rows]))))

    heldout_loss(-1, model)  # a fresh classifier: the loss before anything is fitted
    log = finetune(model, cache, train, 6, recipe, heldout_images=held, on_epoch=heldout_loss)
    assert losses[-1] < losses[0] and log.probe_top1 is not None
    assert len(log.epochs) == 6 and log.epochs[-1]["train_top1"] >= 0.9
    # The export is the project's own graph with the tuned weights: it computes what torch computes.
    exported = build_efficientnet_lite0(to_state_dict(model), SIZE)
    batch = tiny.batch(SIZE, held[:4])
    ref = _onnx_outputs(exported, batch)
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(batch))
    for name in ("embedding", "logits", "embedding_multi"):
        assert np.abs(out[name].numpy() - ref[name]).max() < 1e-4, name
    assert ref["logits"].shape == (4, 6)


def test_cosine_objective_trains_the_multi_embedding(state: dict[str, np.ndarray], tiny: cat.DecodedCatalogue) -> None:
    labels = tiny.labels.astype(np.int64)
    paths = [item.image for item in tiny.catalogue.items]
    cache = build_view_cache(build_efficientnet_lite0(state, SIZE), 5, paths, tiny.pixels[SIZE], labels, 1, SIZE,
                             Recipe().augment, 0, 1)  # fmt: skip
    assert Recipe().objective == "cosface"  # the shipped default (benchmarks/RESULTS.md, fine-tuning recipes)
    recipe = Recipe(first_trained_stage=6, views=1, epochs=4, batch=8, lr=3e-4, objective="cosface")
    rank = np.array([np.sum(labels[:i] == labels[i]) for i in range(len(labels))])
    train, held = np.flatnonzero(rank % 2 == 0), np.flatnonzero(rank % 2 == 1)
    model = from_state_dict(state, n_classes=6)
    before = to_state_dict(model)
    log = finetune(model, cache, train, 6, recipe, heldout_images=held)
    after = to_state_dict(model)
    # Held-out photos of the same SKUs, named by the nearest learned centre: no worse than the class means it
    # started from.
    assert log.probe_top1 is not None and log.epochs[-1]["heldout_top1"] >= log.probe_top1
    assert not np.allclose(before["_blocks.15._project_conv.weight"], after["_blocks.15._project_conv.weight"])
    assert np.allclose(before["_blocks.10._project_conv.weight"], after["_blocks.10._project_conv.weight"])
    # The exported logits stay the linear probe's: the cosine classifier is not part of the model.
    assert model.classifier.weight.requires_grad is False


def test_train_pair_holds_out_the_plan_and_is_cached(
    state: dict[str, np.ndarray], tiny: cat.DecodedCatalogue, tmp_path: Path
) -> None:
    labels = tiny.labels.astype(np.int64)
    paths = [item.image for item in tiny.catalogue.items]
    unseen = np.zeros(len(labels), bool)
    unseen[np.flatnonzero(labels == 0)[:2]] = True
    plan = HoldoutPlan(unseen=unseen, new_classes=np.array([5]))
    recipe = Recipe(first_trained_stage=6, views=1, epochs=1, batch=8)
    args = (state, build_efficientnet_lite0(state, SIZE), paths, tiny.pixels[SIZE], labels, 6, plan, recipe)
    first = train_pair(*args, size=SIZE, device="cpu", threads=1, cache_path=tmp_path / "ft")
    assert first.record["cache"] == "miss"
    assert first.record["calibration_model"]["skus"] == 5 and first.record["shipped_model"]["skus"] == 6
    assert first.record["calibration_model"]["photos"] == int((labels != 5).sum()) - 2
    assert first.calibration["_fc.weight"].shape[0] == 5 and first.shipped["_fc.weight"].shape[0] == 6
    again = train_pair(*args, size=SIZE, device="cpu", threads=1, cache_path=tmp_path / "ft")
    assert again.record["cache"] == "hit"
    assert all(np.array_equal(first.shipped[k], again.shipped[k]) for k in first.shipped)
    # Seeded: training again from scratch (another cache) gives the same weights, so two builds agree.
    fresh = train_pair(*args, size=SIZE, device="cpu", threads=1, cache_path=tmp_path / "ft-again")
    assert fresh.record["cache"] == "miss"
    assert all(np.allclose(first.shipped[k], fresh.shipped[k], atol=1e-6) for k in first.shipped)
    assert all(np.allclose(first.calibration[k], fresh.calibration[k], atol=1e-6) for k in first.calibration)


def test_without_torch_the_build_says_which_extra_and_a_required_fine_tune_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edge_runtime.builder import finetune as ft

    assert should_finetune(Train(enabled=False), True) == (False, "off in the profile ([train] enabled = false)")
    assert should_finetune(Train(), False)[0] is False
    with pytest.raises(UsageError, match="default backbone"):
        should_finetune(Train(enabled=True), False)
    monkeypatch.setattr(ft, "torch_available", lambda: False)
    run, why = should_finetune(Train(), True)
    assert run is False and TRAIN_EXTRA_HINT in why
    with pytest.raises(UsageError) as err:
        should_finetune(Train(enabled=True), True)
    assert err.value.exit_code == 2 and err.value.hint == TRAIN_EXTRA_HINT


def _blocked_env(tmp_path: Path) -> dict[str, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "sitecustomize.py").write_text(BLOCK_TORCH)
    return {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "EDGE_CACHE_DIR": str(tmp_path / "cache"),
    }


@pytest.mark.integration
def test_a_profile_requiring_fine_tuning_exits_2_naming_the_extra_when_torch_is_missing(tmp_path: Path) -> None:
    profile = tmp_path / "needs-train.toml"
    profile.write_text(f'extends = "{REPO / "device_profiles" / "dev-cpu.toml"}"\n\n[train]\nenabled = true\n')
    done = subprocess.run(
        edge_cmd("build", "--profile", str(profile), "--out", str(tmp_path / "o")),
        capture_output=True, text=True, env=_blocked_env(tmp_path / "site"), timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "edge_runtime[train]" in done.stderr and "Traceback" not in done.stderr


def test_the_blocker_really_blocks_torch(tmp_path: Path) -> None:
    code = "try:\n    import torch\nexcept ImportError:\n    print('blocked')"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_blocked_env(tmp_path), timeout=60
    )
    assert done.stdout.strip() == "blocked", done.stderr


@pytest.fixture(scope="module")
def finetuned_bundle(
    state: dict[str, np.ndarray], tiny: cat.DecodedCatalogue, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A bundle whose model is a fine-tuned export (one epoch on the tiny catalogue), built by edge-build."""
    root = tmp_path_factory.mktemp("finetuned")
    labels = tiny.labels.astype(np.int64)
    plan = HoldoutPlan(unseen=np.zeros(len(labels), bool), new_classes=np.array([5]))
    pair = train_pair(
        state, build_efficientnet_lite0(state, SIZE), [item.image for item in tiny.catalogue.items],
        tiny.pixels[SIZE], labels, 6, plan, Recipe(first_trained_stage=6, views=1, epochs=1, batch=8),
        size=SIZE, device="cpu", threads=1, cache_path=None,
    )  # fmt: skip
    model = root / "finetuned.onnx"
    model.write_bytes(build_efficientnet_lite0(pair.shipped, SIZE).SerializeToString())
    catalogue = root / "catalogue.csv"
    with catalogue.open("w", newline="") as fh:
        csv.writer(fh).writerows([["image", "sku"], *[[str(i.image), i.sku] for i in tiny.catalogue.items]])
    profile = root / "tiny.toml"
    profile.write_text(
        f'extends = "{REPO / "device_profiles" / "dev-cpu.toml"}"\n'
        '[backend]\nprecisions = ["fp32"]\ninput_sizes = [96]\ntable_precisions = ["fp32"]\n'
        "calibration_images = 16\n[train]\nenabled = false\n"
    )
    done = subprocess.run(
        edge_cmd("build", "--profile", str(profile), "--catalogue", str(catalogue), "--model", str(model),
                 "--out", str(root / "out"), "-q"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "out" / "bundle"


@pytest.mark.integration
@pytest.mark.slow
def test_a_fine_tuned_bundle_runs_in_edge_run_and_edge_bench_without_torch(
    finetuned_bundle: Path, tiny_video: Path, tmp_path: Path
) -> None:
    env = _blocked_env(tmp_path / "site")
    run = subprocess.run(
        edge_cmd("run", "--bundle", str(finetuned_bundle), "--source", str(tiny_video), "--every-frame",
                 "--state-dir", str(tmp_path / "state"), "--max-frames", "5", "--metrics-port", "0",
                 "--mqtt-port", "1", "--drain-timeout", "0", "--json"),
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "torch" not in run.stderr and json.loads(run.stdout)["frames_processed"] == 5
    bench = subprocess.run(
        edge_cmd("bench", "--bundle", str(finetuned_bundle), "--frames", "5", "--warmup", "1", "--json"),
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert bench.returncode in (0, 6), bench.stderr[-3000:]
    assert "torch" not in bench.stderr and json.loads(bench.stdout)["frames"]["measured"] == 5


def test_the_pull_toward_the_frozen_embedding_keeps_it_closer(
    state: dict[str, np.ndarray], tiny: cat.DecodedCatalogue
) -> None:
    labels = tiny.labels.astype(np.int64)
    paths = [item.image for item in tiny.catalogue.items]
    cache = build_view_cache(build_efficientnet_lite0(state, SIZE), 5, paths, tiny.pixels[SIZE], labels, 1, SIZE,
                             Recipe().augment, 0, 1)  # fmt: skip
    rows = cache.rows(np.arange(len(labels)), plain=True)
    frozen = forward_rows(from_state_dict(state, n_classes=6), cache, rows, 6, torch.device("cpu"))["embedding_multi"]

    def drift(distill: float) -> float:
        model = from_state_dict(state, n_classes=6)
        recipe = Recipe(first_trained_stage=6, views=1, epochs=3, batch=8, lr=1e-3, distill=distill)
        finetune(model, cache, np.arange(len(labels)), 6, recipe)
        tuned = forward_rows(model, cache, rows, 6, torch.device("cpu"))["embedding_multi"]
        return float(1.0 - np.mean(np.sum(tuned * frozen, axis=1)))

    assert drift(20.0) < 0.5 * drift(0.0)
