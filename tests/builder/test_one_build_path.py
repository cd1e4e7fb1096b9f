"""edge-check judges the head edge-build ships: both run the same steps (inputs, backbone, embedding, head fit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.builder.check import run_check
from edge_runtime.bundle import load_bundle
from tests.faultkit import Assets


@pytest.mark.slow
def test_edge_check_reports_on_the_head_edge_build_ships(tmp_path: Path, tiny_assets: Assets) -> None:
    # The session bundle has one variant (fp32 at its only input size, fp32 table): the one edge-check judges,
    # so the two must agree. Its profile turns colour on: the colour decision travels the same path too.
    bundle = load_bundle(tiny_assets.bundle)
    assert bundle.manifest["variant"]["variant"] == "fp32-96-table-fp32"
    assert bundle.manifest["head"]["colour"]["used"] is True
    shipped = bundle.read_json("report/readiness.json")
    checked = run_check(
        tiny_assets.catalogue, tiny_assets.model, str(tiny_assets.profile), None, tmp_path, runs=3, plots=False
    )
    judged = checked.to_json()
    # Everything that depends on the head is the same; only the measured footprint (another process) differs.
    for ship, judge in zip(shipped["checks"], judged["checks"], strict=True):
        assert ship["id"] == judge["id"]
        if ship["id"] != "memory_headroom":
            assert ship == judge
    assert {k: v for k, v in shipped["scale_curve"].items() if k != "memory"} == {
        k: v for k, v in judged["scale_curve"].items() if k != "memory"
    }
    assert shipped["checks"][4]["evidence"]["methods"]  # the OOD methods compared, not an empty report
