"""The one image -> tensor function: the EfficientNet evaluation crop, cut from the source before shrinking."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_runtime.preprocess import CROP_RATIO, center_crop, prepare, read_image, resize_short_side, shrink_square
from tests.conftest import grocery_images


def _resize_then_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The textbook order: the whole image resized, then the centre cut (what the crop-first path must match)."""
    crop = center_crop(resize_short_side(image, round(size / CROP_RATIO)), size)
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).transpose(2, 0, 1).astype(np.float32)


@pytest.mark.parametrize("frame", [None, (1280, 720), (480, 640)])
def test_crop_first_matches_resize_then_crop_on_real_photos(frame: tuple[int, int] | None) -> None:
    diffs = []
    for path in grocery_images("val", limit=6):
        image = read_image(str(path))
        if frame is not None:
            image = cv2.resize(image, frame, interpolation=cv2.INTER_AREA)
        ours, textbook = prepare(image, 224), _resize_then_crop(image, 224)
        assert ours.shape == (3, 224, 224) and ours.dtype == np.float32 and ours.flags.c_contiguous
        diffs.append(float(np.abs(ours - textbook).mean()))
    # The two differ by resampling phase (the textbook crop rounds its offset in the resized image, ours in the
    # source: under one output pixel apart), which textured photos show as a few levels; a wrong window or
    # offset shows as tens of levels.
    assert np.median(diffs) < 3.0 and max(diffs) < 8.0, diffs


@pytest.mark.parametrize(("side", "size"), [(480, 192), (720, 224), (1040, 224), (303, 224), (224, 224)])
def test_shrinking_matches_area_averaging_on_busy_real_photos(side: int, size: int) -> None:
    # A mosaic of whole photos at their own resolution: edges and print at every scale, where a plain bilinear
    # shrink aliases (2 to 7 levels off); the two-step shrink must stay within a level of INTER_AREA, and an
    # image no larger than the input is resized once, with no detour.
    photos = [
        cv2.resize(read_image(str(p)), (200, 200), interpolation=cv2.INTER_AREA) for p in grocery_images("val", 36)
    ]
    n = -(-side // 200)
    mosaic = np.vstack([np.hstack(photos[r * n : (r + 1) * n]) for r in range(n)])[:side, :side].copy()
    ours = shrink_square(mosaic, size).astype(np.float32)
    area = cv2.resize(mosaic, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert ours.shape == (size, size, 3)
    assert float(np.abs(ours - area).mean()) < 1.0
    if side <= size:
        assert np.array_equal(ours, area)


def test_the_centre_of_the_frame_lands_in_the_centre_of_the_tensor() -> None:
    frame = np.zeros((720, 1280, 3), dtype=np.uint8)
    cv2.rectangle(frame, (600, 320), (680, 400), (0, 0, 255), thickness=-1)  # red square at the centre
    red = prepare(frame, 224)[0]
    ys, xs = np.nonzero(red > 128)
    assert abs(ys.mean() - 111.5) < 1.5 and abs(xs.mean() - 111.5) < 1.5
    # The crop keeps CROP_RATIO of the shorter side: the 80 px square is 80 * 224 / (720 * 0.875) px wide.
    assert xs.max() - xs.min() + 1 == pytest.approx(80 * 224 / (720 * CROP_RATIO), abs=2)


def test_small_grey_and_alpha_images_are_accepted() -> None:
    small = np.full((60, 90, 3), 200, dtype=np.uint8)  # upscaled, the textbook path
    np.testing.assert_array_equal(prepare(small, 96), _resize_then_crop(small, 96))
    grey = np.full((300, 400), 77, dtype=np.uint8)
    assert np.all(prepare(grey, 96) == 77)
    bgra = np.dstack([np.full((300, 400, 3), (10, 20, 30), np.uint8), np.full((300, 400), 255, np.uint8)])
    assert prepare(bgra, 96)[:, 0, 0].tolist() == [30.0, 20.0, 10.0]  # RGB order out
