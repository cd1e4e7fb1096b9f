from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.builder.choose import choose, format_table, violations
from edge_runtime.builder.ranking import heldout_ood, stand_in_new_classes
from edge_runtime.builder.variants import ood_violation
from edge_runtime.errors import EXIT_NOTHING_FITS, BudgetError
from edge_runtime.types import Accuracy, Candidate, Footprint, Measurement, ModelVariant, VariantSpec


def _cand(precision: str, table: str, mib: float, ms: float, top1: float, budget: float = 100.0) -> Candidate:
    broken = violations(mib, ms, budget_mib=budget, min_headroom=0.2, max_latency_ms=20.0, enforce_latency=True)
    return Candidate(
        spec=VariantSpec(ModelVariant(precision, 224), table),  # type: ignore[arg-type]
        footprint=Footprint(process_peak_mib=mib, table_mib=0.0, model_file_mib=1.0),
        measurement=Measurement("onnxruntime-cpu", 1, 1, 10.0, mib, 0.0, ms, ms * 1.1, 10),
        accuracy=Accuracy(
            top1=top1, n_eval=200, cosine_to_fp32_mean=0.99, cosine_to_fp32_min=0.95, top1_agreement_fp32=0.98
        ),
        model_path=Path("m.onnx"),
        host_estimate=False,
        violations=broken,
    )


def test_best_accuracy_among_those_that_fit() -> None:
    big = _cand("fp32", "fp32", 90.0, 10.0, 0.95)  # over 80 MiB (100 with 20 % headroom)
    slow = _cand("fp16", "fp32", 50.0, 25.0, 0.94)  # over the latency ceiling
    good = _cand("int8", "fp32", 40.0, 5.0, 0.90)
    worse = _cand("int8", "int8", 39.0, 5.0, 0.80)
    assert not big.fits and "footprint" in big.violations[0]
    assert not slow.fits and "latency" in slow.violations[0]
    assert choose([big, slow, good, worse]) is good


def test_ties_within_resolution_go_to_the_faster_variant() -> None:
    fp32 = _cand("fp32", "fp32", 60.0, 12.0, 0.902)
    int8 = _cand("int8", "fp16", 40.0, 5.0, 0.900)  # one held-out image in 200 is 0.005: a tie
    assert choose([fp32, int8]) is int8
    clearly_better = _cand("fp32", "fp32", 60.0, 12.0, 0.93)
    assert choose([clearly_better, int8]) is clearly_better


def test_nothing_fits_lists_every_variant_and_its_constraint() -> None:
    cands = [_cand("fp32", "fp32", 90.0, 10.0, 0.95), _cand("int8", "int8", 85.0, 30.0, 0.9)]
    with pytest.raises(BudgetError) as err:
        choose(cands)
    assert err.value.exit_code == EXIT_NOTHING_FITS
    text = str(err.value)
    assert "fp32-224-table-fp32" in text and "int8-224-table-int8" in text
    assert "footprint 90.0 MiB > 80.0 MiB" in text and "latency 30.0 ms" in text


def test_host_estimates_do_not_enforce_latency() -> None:
    assert violations(10, 500, budget_mib=100, min_headroom=0.2, max_latency_ms=20, enforce_latency=False) == ()
    table = format_table([_cand("fp32", "fp32", 10, 5, 0.9)])
    assert "fp32-224-table-fp32" in table


def _clusters(n_classes: int, per: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, 32))
    labels = np.repeat(np.arange(n_classes), per)
    return (centres[labels] + spread * rng.normal(size=(len(labels), 32))).astype(np.float32), labels


def test_new_product_detection_tells_distinct_skus_from_look_alikes() -> None:
    feats, labels = _clusters(14, 12, 0.3)
    split = (np.flatnonzero(np.arange(len(labels)) % 3 != 0), np.flatnonzero(np.arange(len(labels)) % 3 == 0))
    new = stand_in_new_classes(14)
    assert new.tolist() == [3, 10]
    rates, n_new = heldout_ood(feats, labels, split, new, 14, ["fp32", "int8"])
    distinct = rates["fp32"]
    assert abs(rates["int8"] - distinct) < 0.1  # one projection, scored with each table precision
    assert n_new == 24
    # The same photos, with every new product's photos moved onto a known SKU: nothing new to catch.
    look_alike = feats.copy()
    for c in new:
        look_alike[labels == c] = feats[labels == c + 1][: int(np.sum(labels == c))]
    assert distinct > 0.9
    assert heldout_ood(look_alike, labels, split, new, 14, ["fp32"])[0]["fp32"] < 0.2
    assert np.isnan(heldout_ood(feats, labels, split, stand_in_new_classes(5), 5, ["fp32"])[0]["fp32"])


def test_a_variant_that_loses_new_product_detection_is_not_a_candidate() -> None:
    assert ood_violation(0.30, 0.32, 300) == ()
    assert "new-product detection" in ood_violation(0.25, 0.32, 300)[0]
    # One or two images of 27 is noise, whatever the share: the demo catalogue holds out 27.
    assert ood_violation(0.0, 1 / 27, 27) == () and ood_violation(1 / 27, 3 / 27, 27) == ()
    assert ood_violation(0.0, 3 / 27, 27) != ()
    assert ood_violation(float("nan"), 0.32, 300) == () and ood_violation(0.25, float("nan"), 300) == ()
