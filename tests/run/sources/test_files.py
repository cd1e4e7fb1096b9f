"""The finite sources on real media: a demo video, truncated files, and a folder of real and broken images."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.demo import generate_demo_video
from edge_runtime.run.sources import ImageFolderSource, SourceError, VideoFileSource, open_source

# --------------------------------------------------------------------------- media


@pytest.fixture(scope="module")
def demo_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_video(
        tmp_path_factory.mktemp("video") / "demo.mp4", seed=3, seconds=2, fps=10, size=(160, 120)
    )


def decode_all(path: Path) -> list[np.ndarray]:
    """Every frame as OpenCV decodes it directly: the reference a source must match."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames


def mjpg_avi(path: Path, n: int = 20) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    assert writer.isOpened()
    for i in range(n):
        image = np.full((120, 160, 3), 20, np.uint8)
        cv2.putText(image, str(i), (40, 80), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3)
        writer.write(image)
    writer.release()
    return path


def jpeg_bytes(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


# --------------------------------------------------------------------------- video files


def test_video_reads_every_frame_once_in_order(demo_video: Path) -> None:
    reference = decode_all(demo_video)
    assert len(reference) == 20
    source = open_source(str(demo_video), camera="cam0")
    assert isinstance(source, VideoFileSource) and not source.live
    frames = list(source)
    assert [f.index for f in frames] == list(range(20))
    assert [f.source_ref for f in frames] == [str(i) for i in range(20)]
    assert all(f.camera == "cam0" for f in frames)
    assert all(np.array_equal(f.image, ref) for f, ref in zip(frames, reference, strict=True))
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(frames))
    assert source.read() is None and source.read() is None  # ended stays ended
    assert source.frames_read == 20 and source.read_failures == 0
    assert "20 frames" in source.describe()
    source.close()


def test_truncated_video_ends_cleanly(tmp_path: Path) -> None:
    full = mjpg_avi(tmp_path / "full.avi")
    reference = decode_all(full)
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with open_source(str(cut)) as source:
        frames = list(source)
        assert 1 < len(frames) < len(reference)
        assert [f.index for f in frames] == list(range(len(frames)))
        # The frame the cut went through may decode partially (FFMPEG fills what it has); the rest are exact.
        assert all(np.array_equal(f.image, reference[f.index]) for f in frames[:-1])
        assert frames[-1].image.shape == reference[0].shape
        assert source.read() is None
        assert source.read_failures >= 1  # the reads past the cut, before it gave up
        assert source.read() is None


def test_truncated_mp4_without_index_is_a_clear_error(demo_video: Path, tmp_path: Path) -> None:
    # OpenCV writes the mp4 index at the end; without it the container cannot be opened at all.
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(demo_video.read_bytes()[: demo_video.stat().st_size // 2])
    with pytest.raises(SourceError, match=r"cannot open video file .*cut\.mp4"):
        open_source(str(cut))


# --------------------------------------------------------------------------- image folders


def test_folder_reads_readable_images_in_name_order(tmp_path: Path) -> None:
    names = ["img_010.jpg", "img_002.jpg", "img_001.png", "img_003.jpeg", "img_007.JPG"]
    for i, name in enumerate(names):
        if name.endswith(".png"):
            cv2.imwrite(str(tmp_path / name), np.full((30, 40, 3), i * 40, np.uint8))
        else:
            (tmp_path / name).write_bytes(jpeg_bytes(i))
    (tmp_path / "img_004.jpg").write_bytes(jpeg_bytes(99)[:300])  # truncated mid-scan
    (tmp_path / "img_005.jpg").write_bytes(b"this is not a jpeg at all")
    (tmp_path / "img_006.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image, ignored")
    (tmp_path / ".hidden.jpg").write_bytes(jpeg_bytes(5))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "img_000.jpg").write_bytes(jpeg_bytes(6))  # not recursive

    source = open_source(str(tmp_path))
    assert isinstance(source, ImageFolderSource) and not source.live
    frames = list(source)
    expected = ["img_001.png", "img_002.jpg", "img_003.jpeg", "img_007.JPG", "img_010.jpg"]
    assert [f.source_ref for f in frames] == expected
    assert [f.index for f in frames] == list(range(5))
    for frame in frames:
        assert np.array_equal(frame.image, cv2.imread(str(tmp_path / frame.source_ref)))
    assert source.read() is None
    assert source.skipped == 3
    assert [name for name, _ in source.skipped_files] == ["img_004.jpg", "img_005.jpg", "img_006.jpg"]
    assert "truncated" in source.skipped_files[0][1]


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(SourceError, match=str(tmp_path)):
        open_source(str(tmp_path))
