"""edge-check judges the head edge-build ships: both run the same steps (inputs, backbone, embedding, head fit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.builder.check import run_check
from edge_runtime.builder.pipeline import BuildOptions, run_build

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_edge_check_reports_on_the_head_edge_build_ships(
    tmp_path: Path, tiny_model_path: Path, small_catalogue: Path
) -> None:
    # One variant only (fp32 at the first size, fp32 table): the one edge-check judges, so the two must agree.
    profile = tmp_path / "one-variant.toml"
    profile.write_text(
        f'extends = "{REPO / "device_profiles" / "dev-cpu.toml"}"\n'
        '[device]\nname = "one-variant"\n'
        '[backend]\nprecisions = ["fp32"]\ninput_sizes = [96]\ntable_precisions = ["fp32"]\ncalibration_images = 16\n'
        '[head]\ncolour = "on"\n'  # the colour descriptor and its decision travel the same path too
    )
    opts = BuildOptions(str(profile), tmp_path / "build", catalogue=small_catalogue, model=tiny_model_path, runs=3)
    result = run_build(opts)
    shipped = result.bundle.read_json("report/readiness.json")
    checked = run_check(small_catalogue, tiny_model_path, str(profile), None, tmp_path / "check", runs=3, plots=False)
    judged = checked.to_json()

    assert result.chosen.spec.name == "fp32-96-table-fp32"
    assert result.bundle.manifest["head"]["colour"]["used"] is True
    # Everything that depends on the head is the same; only the measured footprint (another process) differs.
    for ship, judge in zip(shipped["checks"], judged["checks"], strict=True):
        assert ship["id"] == judge["id"]
        if ship["id"] != "memory_headroom":
            assert ship == judge
    assert {k: v for k, v in shipped["scale_curve"].items() if k != "memory"} == {
        k: v for k, v in judged["scale_curve"].items() if k != "memory"
    }
    assert shipped["checks"][4]["evidence"]["methods"]  # the OOD methods compared, not an empty report
