"""The readiness checklist: each check on inputs whose answer is known, the report files, and edge-check."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_runtime.builder.readiness import (
    CHECK_IDS,
    SCHEMA,
    Check,
    ReadinessReport,
    check_accuracy_spread,
    check_calibration,
    check_change_rate,
    check_headroom,
    check_imbalance,
    check_near_duplicates,
    check_ood_detection,
    checks,
    combined_warning,
    history_from_manifest,
    read_history,
    run_readiness,
    write_report,
)
from edge_runtime.cli import check_main
from edge_runtime.errors import EXIT_INPUT, EXIT_READINESS, InputError
from edge_runtime.head.fit import FitSettings, fit_head
from edge_runtime.head.prototypes import l2_normalise
from edge_runtime.profile import DeviceProfile, Readiness, Routing, load_profile
from edge_runtime.types import SkuInfo

REPO = Path(__file__).resolve().parents[2]
DIM = 32


def _codes(n: int) -> list[str]:
    return [f"sku-{i:02d}" for i in range(n)]


def _skus(n: int) -> list[SkuInfo]:
    return [SkuInfo(f"sku-{i:02d}", f"SKU {i}", f"g{i // 3}") for i in range(n)]


def _world(noise: float, n_classes: int = 12, per_class: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, DIM))
    labels = np.repeat(np.arange(n_classes), per_class)
    return (means[labels] + rng.normal(scale=noise, size=(len(labels), DIM))).astype(np.float32), labels


def _fit(noise: float) -> tuple[np.ndarray, np.ndarray, Any, dict[str, Any]]:
    emb, labels = _world(noise)
    settings = FitSettings(folds=3, shrinkages=(0.1, 0.3), ood_holdout=0.25, min_support=5)
    head, report = fit_head(emb, labels, _skus(12), settings)
    return emb, labels, head, report


@pytest.fixture(scope="module")
def easy() -> tuple[np.ndarray, np.ndarray, Any, dict[str, Any]]:
    return _fit(0.35)  # well separated: every answer is right and every new product is caught


@pytest.fixture(scope="module")
def hard() -> tuple[np.ndarray, np.ndarray, Any, dict[str, Any]]:
    return _fit(2.5)  # heavily overlapping classes


def _profile(unknown_loop: bool = True, **readiness: Any) -> DeviceProfile:
    base = load_profile("dev-cpu")
    return base.model_copy(update={"readiness": Readiness(**readiness), "routing": Routing(unknown_loop=unknown_loop)})


def _check(check_id: str, status: str) -> Check:
    return Check(check_id, check_id.replace("_", " "), 1.0, 1.0, status, "", "fraction", "")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the seven checks


def test_imbalance_balanced_passes_twenty_to_one_fails_names_the_smallest() -> None:
    assert check_imbalance(np.full(10, 20), _codes(10), 10.0).status == "pass"
    skewed = check_imbalance(np.array([40] * 5 + [2] * 5), _codes(10), 10.0)
    assert skewed.value == pytest.approx(20.0) and skewed.status == "fail"
    assert "sku-05 (2)" in skewed.detail
    # 7:1 is under the limit but over half of it: warn
    assert check_imbalance(np.array([14, 8, 8, 8, 8, 8, 8, 8, 8, 2]), _codes(10), 10.0).status == "warn"


def test_planted_near_duplicate_pair_is_listed_by_name_and_fails() -> None:
    rng = np.random.default_rng(4)
    means = rng.normal(size=(10, DIM))
    labels = np.repeat(np.arange(10), 15)
    feats = means[labels] + rng.normal(scale=0.35, size=(len(labels), DIM))
    ok = check_near_duplicates(l2_normalise(feats), labels, _codes(10), 5.0)
    assert ok.status == "pass" and ok.value > ok.threshold
    # class 10 is class 3 with a different label: closer than any image is to its own centroid
    twin = means[3] + rng.normal(scale=0.02, size=DIM)
    feats2 = np.vstack([feats, twin + rng.normal(scale=0.35, size=(15, DIM))])
    labels2 = np.concatenate([labels, np.full(15, 10)])
    dup = check_near_duplicates(l2_normalise(feats2), labels2, _codes(11), 5.0)
    assert dup.status == "fail" and dup.value < dup.threshold
    assert dup.evidence["closest_pairs"][0]["a"] == "sku-03" and dup.evidence["closest_pairs"][0]["b"] == "sku-10"
    assert "sku-03 ~ sku-10" in dup.detail and "closer than the within-class spread" in dup.detail


def test_centroid_pairs_in_blocks_and_sampled_match_the_exact_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    cents = l2_normalise(np.random.default_rng(0).normal(size=(400, 16)))
    i, j = np.triu_indices(400, k=1)
    dist = 1.0 - np.sum(cents[i] * cents[j], axis=1)
    exact = checks.centroid_pairs(cents, 5.0, 0.3, 20)
    assert exact[5] and exact[1] == pytest.approx(np.percentile(dist, 5.0))
    assert [p[2] for p in exact[2]] == pytest.approx(np.sort(dist)[:20], abs=1e-6)
    monkeypatch.setattr(checks, "MAX_EXACT_PAIRS", 20_000)  # sample the percentile, small row blocks
    monkeypatch.setattr(checks, "PAIR_BLOCK_VALUES", 3_000)
    sampled = checks.centroid_pairs(cents, 5.0, 0.3, 20)
    assert not sampled[5] and sampled[4] == exact[4] == int((dist < 0.3).sum())
    # The same pairs in the same order; distances to float32 rounding, since row blocks of another size take
    # another BLAS path (1e-7 apart on some machines). A wrong pair is still caught by its indices.
    assert [p[:2] for p in sampled[2]] == [p[:2] for p in exact[2]]
    assert [p[2] for p in sampled[2]] == pytest.approx([p[2] for p in exact[2]], abs=1e-6)
    assert sampled[1] == pytest.approx(exact[1], rel=0.05)


def _history(path: Path, per_month: int, months: int = 12) -> Path:
    rows = ["date,sku,change"]
    for m in range(months):
        rows += [f"2025-{m + 1:02d}-15,new-{m}-{k},added" for k in range(per_month)]
    rows.append("2025-06-01,old-1,removed")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_change_rate_from_history(tmp_path: Path) -> None:
    slow = read_history(_history(tmp_path / "slow.csv", 1))  # 12 additions over 12 months, 100 SKUs: 3 %/quarter
    assert slow.months == 12 and len(slow.added) == 12 and len(slow.removed) == 1
    c = check_change_rate(slow, 100, 0.05, unknown_loop=False)
    assert c.value == pytest.approx(0.03) and c.status == "pass"
    assert c.evidence["projected_next_12_months"] == pytest.approx(12)
    fast = read_history(_history(tmp_path / "fast.csv", 5))  # 60 over 12 months: 15 %/quarter
    assert check_change_rate(fast, 100, 0.05, unknown_loop=False).status == "fail"
    looped = check_change_rate(fast, 100, 0.05, unknown_loop=True)
    assert looped.status == "warn" and "unknown_loop" in looped.detail
    none = check_change_rate(None, 100, 0.05, unknown_loop=False)
    assert none.status == "warn" and none.detail == "no history given" and none.value is None
    bad = tmp_path / "bad.csv"
    bad.write_text("date,sku,change\n2025-13-01,a,added\n2025-01-01,b,renamed\n")
    with pytest.raises(InputError, match="2 bad history row"):
        read_history(bad)


def test_change_rate_from_a_previous_manifest() -> None:
    before = _skus(100)
    now = before[:99] + [SkuInfo("sku-01", "SKU 1 new pack", "g0")] + [SkuInfo(f"new-{i}", "", "") for i in range(5)]
    now = [s for i, s in enumerate(now) if i != 1]  # sku-01 is kept once, with its new name
    created = (datetime.now(timezone.utc) - timedelta(days=365.25 / 4)).isoformat()
    manifest = {"created": created, "labels": [{"sku": s.code, "name": s.name, "group": s.group} for s in before]}
    h = history_from_manifest(manifest, now)
    assert h is not None and len(h.added) == 5 and h.changed == ("sku-01",) and h.removed == ("sku-99",)
    assert h.months == pytest.approx(3.0, abs=0.01)
    c = check_change_rate(h, len(now), 0.05, unknown_loop=False)
    assert c.value == pytest.approx(6 / len(now), rel=0.01) and c.status == "fail"
    # a manifest that holds only a count cannot be compared
    assert history_from_manifest({"created": created, "catalogue": {"skus": 100}}, now) is None


def test_headroom() -> None:
    assert check_headroom(500, 1000, 0.2).status == "pass"
    assert check_headroom(780, 1000, 0.2).status == "warn"  # 22 %: within 20 % of the 20 % minimum
    low = check_headroom(900, 1000, 0.2, {"weights": 600, "runtime": 300})
    assert low.value == pytest.approx(0.1) and low.status == "fail" and "weights" in low.detail


def test_ood_detection_from_a_fitted_head(easy: tuple, hard: tuple) -> None:
    good = check_ood_detection(easy[3]["ood"], 0.70)
    assert good.status == "pass" and good.value > 0.84
    poor = check_ood_detection(hard[3]["ood"], 0.70)
    assert poor.status == "fail" and poor.value < 0.70
    assert poor.evidence["method"] == hard[3]["ood"]["chosen"]


def test_accuracy_spread() -> None:
    even = check_accuracy_spread([0.9] * 10, [5] * 10, _codes(10), 15.0)
    assert even.value == pytest.approx(0.0) and even.status == "pass"
    split = check_accuracy_spread([1.0] * 5 + [0.5] * 5 + [None], [5] * 10 + [0], _codes(11), 15.0)
    assert split.value == pytest.approx(25.0) and split.status == "fail"
    assert split.evidence["classes"] == 10  # the class without held-out images does not count
    assert {w["sku"] for w in split.evidence["worst"][:5]} == {f"sku-{i:02d}" for i in range(5, 10)}
    assert "sku-05 (50% of 5)" in split.detail


def test_accuracy_spread_and_calibration_from_a_fitted_head(easy: tuple, hard: tuple) -> None:
    pc = easy[3]["per_class"]
    assert check_accuracy_spread(pc["accuracy"], pc["support"], _codes(12), 15.0).status == "pass"
    assert check_calibration(easy[3]["calibration"], 0.05).status == "pass"
    cal = hard[3]["calibration"]
    assert cal["ece_after"] > 0.05 and check_calibration(cal, 0.05).status == "fail"
    assert check_calibration({**cal, "ece_after": 0.045}, 0.05).status == "warn"


def test_combined_warning_needs_two_checks_off_pass() -> None:
    one = [_check("imbalance", "warn"), *(_check(i, "pass") for i in CHECK_IDS[1:])]
    assert combined_warning(one) is None
    two = [_check("near_duplicates", "warn"), _check("accuracy_spread", "fail"), _check("calibration", "pass")]
    text = combined_warning(two)
    assert text is not None and "near duplicates (warn)" in text and "accuracy spread (fail)" in text
    assert "look-alike" in text


# --------------------------------------------------------------------------- the report


def test_run_readiness_writes_json_markdown_and_valid_pngs(tmp_path: Path, hard: tuple) -> None:
    emb, labels, head, head_report = hard
    report = run_readiness(
        embeddings=emb,
        labels=labels,
        skus=_skus(12),
        head=head,
        head_report=head_report,
        footprint_mib=700.0,
        budget_mib=1000.0,
        profile=_profile(unknown_loop=False, planned_catalogue_size=200),
        history=_history(tmp_path / "h.csv", 1),
        footprint_parts={"runtime": 100.0, "weights": 600.0},
    )
    assert [c.id for c in report.checks] == list(CHECK_IDS)
    assert report.overall == "fail" and report.failed and report.combined_warning
    assert report.check("ood_detection").evidence["hardest"]  # named from the hold-out simulation
    sc = report.scale_curve
    assert sc is not None and [lv["fraction"] for lv in sc["levels"]] == [0.25, 0.5, 0.75, 1.0]
    assert sc["planned_catalogue_size"] == 200 and 0 <= sc["predicted"]["top1"] <= 1
    written = write_report(report, tmp_path / "report")
    names = {p.name for p in written}
    assert {"readiness.json", "readiness.md"} <= names
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(pngs) == 6
    for png in pngs:
        image = cv2.imread(str(png))
        assert image is not None and image.ndim == 3 and image.shape[0] >= 200 and image.shape[1] >= 300
    doc = json.loads((tmp_path / "report" / "readiness.json").read_text())
    assert doc["schema"] == SCHEMA and doc["overall"] == "fail" and doc["combined_warning"]
    assert all({"id", "name", "value", "threshold", "status", "detail"} <= set(c) for c in doc["checks"])
    assert doc["scale_curve"]["levels"]
    md = (tmp_path / "report" / "readiness.md").read_text()
    assert all(f"]({p.name})" in md for p in pngs)  # embedded by relative path


def test_plotting_stays_out_of_the_device_runtime() -> None:
    # Every module of the device runtime and the head, and the readiness package with its report module, imports
    # without loading matplotlib (a fresh interpreter: this session may have plotted already).
    code = (
        "import importlib, pkgutil, sys\n"
        "import edge_runtime.run, edge_runtime.head\n"
        "for pkg in (edge_runtime.run, edge_runtime.head):\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "import edge_runtime.builder.readiness, edge_runtime.builder.readiness.report\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib')\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_report_without_matplotlib_skips_only_the_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A device install has no matplotlib: the report is still written, as JSON and markdown without images.
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    monkeypatch.setattr(logging.getLogger("edge_runtime"), "propagate", True)  # the CLI tests turn it off
    check = check_imbalance(np.array([20, 2, 10, 10]), _codes(4), 10.0)
    report = ReadinessReport(
        checks=(check,), combined_warning=None, scale_curve=None, profile="p", n_skus=4, n_images=42
    )
    written = write_report(report, tmp_path)
    assert [p.name for p in written] == ["readiness.json", "readiness.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["readiness.json", "readiness.md"]
    assert "plots skipped" in caplog.text
    md = (tmp_path / "readiness.md").read_text()
    assert "](" not in md and "class imbalance" in md
    assert json.loads((tmp_path / "readiness.json").read_text())["checks"][0]["value"] == pytest.approx(10.0)


# --------------------------------------------------------------------------- edge-check


def _test_profile(tmp_path: Path, budget: int = 1024) -> Path:
    path = tmp_path / "test-cpu.toml"
    path.write_text(
        f'extends = "{REPO / "device_profiles" / "dev-cpu.toml"}"\n'
        f'[device]\nname = "test-cpu"\nmemory_budget_mib = {budget}\n[backend]\ninput_sizes = [96]\n'
    )
    return path


@pytest.mark.slow
def test_edge_check_cli(
    tmp_path: Path, tiny_model_path: Path, small_catalogue: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--catalogue", str(small_catalogue), "--model", str(tiny_model_path)]
    out = tmp_path / "out"
    code = check_main([*common, "--profile", str(_test_profile(tmp_path)), "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err  # failures are reported, not fatal, without --strict
    doc = json.loads(captured.out)
    assert doc["schema"] == SCHEMA and [c["id"] for c in doc["checks"]] == list(CHECK_IDS)
    assert doc["overall"] in {"pass", "warn", "fail"} and doc["catalogue"]["skus"] == 31
    assert doc["checks"][2]["detail"] == "no history given"
    assert {p.name for p in out.iterdir()} >= {"readiness.json", "readiness.md", "scale_curve.png"}
    # 16 MiB cannot hold any model: the headroom check fails, and --strict turns that into exit 5
    tight = tmp_path / "tight"
    tight.mkdir()
    code = check_main([*common, "--profile", str(_test_profile(tight, 16)), "--out", str(tight), "--strict", "-q"])
    captured = capsys.readouterr()
    assert code == EXIT_READINESS, captured.err
    assert "[fail] memory headroom" in captured.out and "memory headroom" in captured.err
    # a bad history is refused before any embedding
    bad = tmp_path / "h.csv"
    bad.write_text("when,what\n")
    assert check_main([*common, "--history", str(bad), "--out", str(tmp_path / "x"), "-q"]) == EXIT_INPUT
    assert "missing column" in capsys.readouterr().err
