"""The peak samplers edge-build's footprint child and edge-bench measure with."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from edge_runtime.memory import PeakSampler, RssPeakSampler


def test_peak_sampler_keeps_the_largest_reading_and_skips_failures() -> None:
    values = iter([3.0, None, 9.0, 4.0])

    def reader() -> float | None:
        value = next(values, 1.0)
        if value == 4.0:
            raise RuntimeError("the GPU library went away")
        return value

    sampler = PeakSampler(reader, 0.001, "test-peak")
    sampler.start()
    deadline = time.monotonic() + 5
    while sampler.peak != 9.0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sampler.halt() == 9.0 and not sampler.is_alive()
    assert PeakSampler(lambda: None, 0.01, "never").halt() is None  # never started, nothing read


def test_rss_peak_sampler_sees_a_transient_allocation() -> None:
    sampler = RssPeakSampler(0.001)
    sampler.start()
    before = psutil.Process().memory_info().rss
    block = np.ones(64 * 1024 * 1024, np.uint8)  # touched: resident
    time.sleep(0.05)
    del block
    peak = sampler.stop()
    assert peak >= before + 0.8 * 64 * 1024 * 1024


def test_process_memory_splits_anonymous_from_mapped_files() -> None:
    from edge_runtime.memory import read_process_memory

    before = read_process_memory()
    if before is None:
        pytest.skip("no /proc on this platform")
    # Above glibc's largest mmap threshold (32 MiB): fresh pages, never heap a long test run already holds.
    block = np.ones(64 * 1024 * 1024, np.uint8)  # touched: anonymous and resident
    during = read_process_memory(shares=True)
    assert during is not None
    assert during.anon_mib >= before.anon_mib + 60 and during.hwm_mib >= during.rss_mib - 0.5
    assert during.rss_mib == pytest.approx(during.anon_mib + during.file_mib + during.shmem_mib, abs=1.0)
    assert during.file_mib > 1  # the interpreter and numpy's libraries are mapped
    if during.pss_mib is not None and during.uss_mib is not None:  # smaps_rollup (Linux 4.14+)
        assert during.uss_mib <= during.pss_mib <= during.rss_mib + 0.5
    del block
    assert read_process_memory(2**22 + 12345) is None  # no such process


def test_cgroup_mounts_are_found_for_v2_and_v1_hierarchies() -> None:
    from edge_runtime.memory import _cgroup_mounts

    v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
    hybrid = (
        "31 25 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
        "35 25 0:31 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n"
        "36 25 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    )
    assert _cgroup_mounts(v2) == ("/sys/fs/cgroup", None)
    assert _cgroup_mounts(hybrid) == ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/memory")
    assert _cgroup_mounts("garbage\n\n") == (None, None)


def test_cgroup_charge_of_this_process_where_the_kernel_exposes_one() -> None:
    from edge_runtime.memory import read_cgroup_charge

    charge = read_cgroup_charge()
    if charge is None:
        pytest.skip("no readable memory cgroup here (a v2 hierarchy without the memory controller, or no /proc)")
    assert charge.version in (1, 2) and charge.current_mib > 0 and charge.processes >= 1
    assert charge.peak_mib is None or charge.peak_mib >= charge.current_mib - 1
    assert charge.anon_mib + charge.file_mib <= charge.current_mib * 1.05 + 1
    assert set(charge.as_dict()) >= {"current_mib", "peak_mib", "anon_mib", "file_mib", "processes"}


def test_the_footprint_clip_decodes_as_camera_frames(tmp_path: Path) -> None:
    import cv2

    from edge_runtime.builder.footprint import CLIP_FRAMES, write_camera_clip

    clip = write_camera_clip(tmp_path, 640 * 480 * 3)
    assert clip is not None, "this OpenCV cannot write MPEG-4: the footprint child would fall back to JPEG stills"
    video = cv2.VideoCapture(str(clip))
    frames = []
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames.append(frame)
    video.release()
    assert len(frames) == CLIP_FRAMES and frames[0].shape == (480, 640, 3)
    assert float(np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean()) > 1  # it moves
