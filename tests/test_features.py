"""The head's input: embedding plus colour descriptor, computed alike at build and run time."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest

from edge_runtime.bundle import json_bytes, npz_bytes
from edge_runtime.features import (
    COLOUR_BINS,
    COLOUR_DIM,
    colour_descriptor,
    compose,
    head_input,
    looks_monochrome,
)
from edge_runtime.head.fit import FitSettings, fit_head
from edge_runtime.head.model import Head
from edge_runtime.preprocess import prepare_batch, read_image
from edge_runtime.types import SkuInfo
from tests.conftest import grocery_images


def _solid(bgr: tuple[int, int, int], size: int = 64) -> np.ndarray:
    return np.full((size, size, 3), bgr, dtype=np.uint8)


def _bin(bgr: tuple[int, int, int]) -> int:
    hsv = cv2.cvtColor(_solid(bgr, 1), cv2.COLOR_BGR2HSV)[0, 0]
    return int(hsv[0]) * COLOUR_BINS[0] // 180 * COLOUR_BINS[1] + int(hsv[1]) * COLOUR_BINS[1] // 256


def test_solid_colours_fill_one_bin_and_halves_share_two() -> None:
    red, blue = (0, 0, 255), (255, 0, 0)
    d = colour_descriptor(prepare_batch([_solid(red), _solid(blue)], 32))
    assert d.shape == (2, COLOUR_DIM)
    assert d[0, _bin(red)] == pytest.approx(1.0) and d[1, _bin(blue)] == pytest.approx(1.0)
    assert _bin(red) != _bin(blue)
    half = np.concatenate([_solid(red, 256)[:, :128], _solid(blue, 256)[:, :128]], axis=1)
    h = colour_descriptor(prepare_batch([half], 224))[0]
    # The resize blends the seam into a few purple pixels; nearly half and half otherwise.
    assert h[_bin(red)] == pytest.approx(np.sqrt(0.5), abs=0.02)
    assert h[_bin(blue)] == pytest.approx(np.sqrt(0.5), abs=0.02)
    # Square roots of a distribution: unit length, so cosine is the Bhattacharyya coefficient.
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, rtol=1e-5)


def test_real_photos_are_told_apart_by_colour_but_not_by_exposure() -> None:
    paths = grocery_images("train", limit=8)
    images = [read_image(str(p)) for p in paths]
    d = colour_descriptor(prepare_batch(images, 224))
    darker = colour_descriptor(prepare_batch([cv2.convertScaleAbs(im, alpha=0.8) for im in images], 224))
    same = np.sum(d * darker, axis=1)  # the same photo, 20 % darker
    other = d @ d.T
    np.fill_diagonal(other, np.nan)
    assert np.nanmedian(other) < same.min(), "exposure changed the colour more than a different product did"


def test_compose_appends_weighted_colour_only_when_asked() -> None:
    emb = np.ones((3, 4), dtype=np.float32)
    pixels = prepare_batch([_solid((0, 255, 0))] * 3, 32)
    assert head_input(emb, pixels, 0.0) is emb
    out = head_input(emb, pixels, 0.5)
    assert out.shape == (3, 4 + COLOUR_DIM) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out[:, 4:], axis=1), 0.5, rtol=1e-5)
    with pytest.raises(ValueError, match="colour"):
        compose(emb, None, 0.5)


def test_head_records_the_colour_it_reads_and_refuses_another_descriptor() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 20)
    x = (rng.normal(size=(6, 16))[labels] + 0.3 * rng.normal(size=(120, 16))).astype(np.float32)
    skus = [SkuInfo(f"s{i}", f"S {i}", f"g{i // 2}") for i in range(6)]
    head, _ = fit_head(x, labels, skus, FitSettings(folds=3, shrinkages=(0.2,), colour_weight=0.6))
    doc = json.loads(json_bytes(head.to_json()))
    assert doc["input"] == {"colour_weight": 0.6, "colour_bins": list(COLOUR_BINS)}
    arrays = np.load(io.BytesIO(npz_bytes(head.to_arrays())), allow_pickle=False)
    again = Head.from_parts(skus, {k: arrays[k] for k in arrays.files}, doc)
    assert again.config.colour_weight == 0.6
    doc["input"]["colour_bins"] = [12, 4]
    with pytest.raises(ValueError, match="colour histogram"):
        Head.from_parts(skus, {k: arrays[k] for k in arrays.files}, doc)
    del doc["input"]  # a bundle from before the descriptor reads embeddings only
    assert Head.from_parts(skus, {k: arrays[k] for k in arrays.files}, doc).config.colour_weight == 0.0


def test_monochrome_frames_are_recognised_in_every_form_a_camera_delivers() -> None:
    photo = read_image(str(grocery_images("train", limit=1)[0]))
    grey = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    assert not looks_monochrome(photo)
    assert looks_monochrome(grey) and looks_monochrome(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    # A luma-only stream through a YUV -> BGR conversion (neutral chroma): equal channels up to rounding.
    h, w = grey.shape
    i420 = np.concatenate([grey, np.full((h // 2, w), 128, np.uint8)])[: h * 3 // 2]
    assert looks_monochrome(cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420))
