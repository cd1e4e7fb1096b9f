"""edge-run's start-up helpers that need no process: what the bundle manifest tells the backend."""

from __future__ import annotations

from edge_runtime.run.startup import manifest_image_input


def test_the_bundle_manifest_names_the_engine_input() -> None:
    assert manifest_image_input({"model": {"input_size": 192, "input_name": "pixels"}}) == ("pixels", 192)
    # Bundles from before the manifest recorded the name carry the default backbone's input.
    assert manifest_image_input({"model": {"input_size": 224}}) == ("image", 224)
    assert manifest_image_input({"model": {}}) is None
