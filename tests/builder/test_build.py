"""edge-build end to end through its CLI function, with a small real model and a real (generated) catalogue."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.builder.catalogue import decode_catalogue, load_catalogue
from edge_runtime.bundle import load_bundle
from edge_runtime.cli import build_main
from edge_runtime.errors import EXIT_INPUT, EXIT_NOTHING_FITS, EXIT_READINESS, EXIT_USAGE, CatalogueError
from edge_runtime.head.prototypes import PrototypeTable

REPO = Path(__file__).resolve().parents[2]


def _profile(tmp_path: Path, budget: int = 1024, extra: str = "") -> Path:
    path = tmp_path / "test-cpu.toml"
    path.write_text(
        f'extends = "{REPO / "device_profiles" / "dev-cpu.toml"}"\n'
        f'[device]\nname = "test-cpu"\nmemory_budget_mib = {budget}\n'
        "[backend]\ninput_sizes = [96, 128]\ncalibration_images = 16\n" + extra
    )
    return path


@pytest.mark.slow
def test_build_writes_a_verified_bundle(
    tmp_path: Path, tiny_model_path: Path, small_catalogue: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = build_main(
        [
            "--profile",
            str(_profile(tmp_path)),
            "--catalogue",
            str(small_catalogue),
            "--model",
            str(tiny_model_path),
            "--out",
            str(out),
            "--runs",
            "5",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert set(summary) >= {"bundle", "variant", "footprint_mib", "budget_mib", "headroom", "latency_ms", "accuracy"}
    assert "measuring footprint" in captured.err  # progress goes to stderr, results to stdout
    bundle = load_bundle(Path(summary["bundle"]))
    m = bundle.manifest
    assert m["profile"]["name"] == "test-cpu" and len(m["profile"]["sha256"]) == 64
    assert m["model"]["input_name"] == "image"  # a GPU engine's optimisation profile is given per input name
    # 2 precisions x 2 sizes x 3 table precisions, each measured and listed
    assert len(m["decision_table"]) == 12
    assert {r["precision"] for r in m["decision_table"]} == {"fp32", "int8"}
    assert m["footprint"]["total_mib"] <= 1024 * 0.8 and 0 < m["headroom"] < 1
    assert m["measurement"]["host_estimate"] is False
    colour = m["head"]["colour"]  # auto: measured both ways on the held-out split, the reason recorded
    assert colour["setting"] == "auto" and {"top1_with", "top1_without", "used"} <= set(colour)
    head_doc = bundle.read_json("head.json")
    assert m["backbone"]["activation_clip"]["limit"] is None  # a --model backbone has no multi-layer tail to clip
    assert "multi-layer" in m["backbone"]["activation_clip"]["why_not"]
    assert head_doc["input"]["colour_weight"] == (colour["weight"] if colour["used"] else 0.0)
    labels = bundle.read_json("labels.json")
    table = PrototypeTable.from_arrays(bundle.read_arrays("prototypes.npz"))
    assert len(table) == len(labels) == len(load_catalogue(small_catalogue).skus)
    assert table.precision == m["variant"]["table_precision"]
    assert (out / "bundle.tar.gz").is_file()
    assert not (out / ".work").exists()


@pytest.mark.slow
def test_nothing_fits_exits_4_with_the_table(
    tmp_path: Path, tiny_model_path: Path, small_catalogue: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = build_main(
        [
            "--profile",
            str(_profile(tmp_path, budget=40)),
            "--catalogue",
            str(small_catalogue),
            "--model",
            str(tiny_model_path),
            "--out",
            str(tmp_path / "out"),
            "--runs",
            "3",
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_NOTHING_FITS
    assert "no variant fits" in err and "int8-128-table-int8" in err and "> 32.0 MiB" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "bundle").exists()


@pytest.mark.slow
def test_cross_build_marks_host_estimates(
    tmp_path: Path, tiny_model_path: Path, small_catalogue: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "jetson.toml"
    profile.write_text(
        f'extends = "{REPO / "device_profiles" / "cart-v2.toml"}"\n'
        "[backend]\ninput_sizes = [96]\ncalibration_images = 16\nmax_latency_ms = 0.001\n"
    )
    code = build_main(
        [
            "--profile",
            str(profile),
            "--catalogue",
            str(small_catalogue),
            "--model",
            str(tiny_model_path),
            "--out",
            str(tmp_path / "out"),
            "--runs",
            "3",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    m = load_bundle(tmp_path / "out" / "bundle").manifest
    assert m["measurement"]["host_estimate"] is True
    assert "tensorrt" in m["measurement"]["why_estimate"]
    # The 1 µs ceiling cannot be met on any host: a cross-build leaves latency to edge-bench on the device.
    assert m["variant"]["precision"] in {"int8", "fp16"}
    assert m["model"]["int8_scheme"] in {"s8s8", None}


def test_invalid_profile_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[device]\nname = "x"\nplatform = "p"\narch = "sparc"\nmemory_budget_mib = -1\nbogus = 1\n')
    assert build_main(["--profile", str(bad), "--out", str(tmp_path / "o")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "bad.toml" in err and "device.arch" in err and "device.memory_budget_mib" in err and "bogus" in err
    assert build_main(["--profile", "no-such-profile"]) == EXIT_USAGE
    assert build_main(["--no-such-flag"]) == EXIT_USAGE


def test_catalogue_errors_exit_3(tmp_path: Path, tiny_model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = tmp_path / "cat.csv"
    csv_path.write_text("path,label\na.jpg,x\n")
    code = build_main(
        [
            "--profile",
            str(_profile(tmp_path)),
            "--catalogue",
            str(csv_path),
            "--model",
            str(tiny_model_path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == EXIT_INPUT
    assert "missing column(s) image, sku" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_main(["--catalogue", str(empty), "--model", str(tiny_model_path), "--out", str(tmp_path / "o")]) == 3
    not_onnx = tmp_path / "m.onnx"
    not_onnx.write_text("hello")
    assert build_main(["--catalogue", str(empty), "--model", str(not_onnx), "--out", str(tmp_path / "o")]) == 3


def test_corrupt_images_are_skipped_and_listed(tmp_path: Path, small_catalogue: Path) -> None:
    with open(small_catalogue / "catalogue.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(small_catalogue / rows[0]["image"]).read_bytes()[:200])  # truncated JPEG
    (tmp_path / "empty.jpg").write_bytes(b"")
    with open(tmp_path / "cat.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "sku", "group"])
        for r in rows[:6]:
            w.writerow([str(small_catalogue / r["image"]), r["sku"], r["group"]])
        w.writerow([str(broken), rows[0]["sku"], rows[0]["group"]])
        w.writerow([str(tmp_path / "empty.jpg"), rows[0]["sku"], rows[0]["group"]])
    decoded = decode_catalogue(load_catalogue(tmp_path / "cat.csv"), [64])
    skipped = {p.name for p, _ in decoded.catalogue.skipped}
    assert skipped == {"broken.jpg", "empty.jpg"} or skipped == {"empty.jpg"}  # OpenCV may salvage a truncated JPEG
    assert decoded.pixels[64].shape == (len(decoded.labels), 3, 64, 64)
    assert decoded.pixels[64].dtype == np.uint8
    # A SKU whose only image is corrupt leaves it empty: that is an error naming the SKU.
    with open(tmp_path / "only-bad.csv", "w", newline="") as fh:
        fh.write(f"image,sku\n{tmp_path / 'empty.jpg'},ghost\n{small_catalogue / rows[0]['image']},real\n")
    with pytest.raises(CatalogueError, match="ghost"):
        decode_catalogue(load_catalogue(tmp_path / "only-bad.csv"), [64])


@pytest.mark.slow
def test_readiness_report_in_the_bundle_and_strict_refuses(
    tmp_path: Path, tiny_model_path: Path, small_catalogue: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = _profile(tmp_path, extra="[readiness]\nood_detection_min = 0.999\n")  # unreachable: the check fails
    args = [
        "--profile",
        str(profile),
        "--catalogue",
        str(small_catalogue),
        "--model",
        str(tiny_model_path),
        "--runs",
        "3",
        "-q",
    ]
    assert build_main([*args, "--out", str(tmp_path / "lenient")]) == 0
    bundle = load_bundle(tmp_path / "lenient" / "bundle")
    report = bundle.read_json("report/readiness.json")
    assert report["schema"] == "edge.readiness/1" and len(report["checks"]) == 7
    assert bundle.manifest["readiness"]["overall"] == "fail"
    assert "ood_detection" in bundle.manifest["readiness"]["failed"]
    assert any(name.endswith(".png") for name in bundle.manifest["files"])
    capsys.readouterr()
    assert build_main([*args, "--out", str(tmp_path / "strict"), "--strict"]) == EXIT_READINESS
    assert "readiness checklist failed" in capsys.readouterr().err
    assert not (tmp_path / "strict" / "bundle").exists()


def test_engine_on_device_without_tensorrt_fails_fast_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_runtime.backends.tensorrt import tensorrt_probe

    if tensorrt_probe() is None:
        pytest.skip("TensorRT is usable here: the engine build itself is covered by tests/test_backends_gpu.py")
    code = build_main(["--engine-on-device", "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "--engine-on-device needs TensorRT" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # refused before any build work
