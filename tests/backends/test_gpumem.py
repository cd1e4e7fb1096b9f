"""GPU memory readers: tegrastats, /proc/meminfo and nvmap on a Jetson, and the footprint rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.backends import gpumem

# --------------------------------------------------------------------------- GPU memory readers

TEGRASTATS = {
    "jetpack4-nano": (
        "RAM 1664/3964MB (lfb 139x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
        "CPU [7%@1479,4%@1479,3%@1479,3%@1479] EMC_FREQ 3%@1600 GR3D_FREQ 23%@76 APE 25 PLL@25C CPU@28C "
        "PMIC@100C GPU@26.5C AO@35C thermal@27.25C POM_5V_IN 2302/2302 POM_5V_GPU 40/40 POM_5V_CPU 361/361",
        {"ram_used_mb": 1664, "ram_total_mb": 3964, "swap_used_mb": 0, "swap_total_mb": 1982},
        (23, 76),
    ),
    "jetpack5-orin": (
        "RAM 2448/30536MB (lfb 6037x4MB) SWAP 0/15268MB (cached 0MB) CPU [0%@729,0%@729,0%@729,0%@729] "
        "EMC_FREQ 0%@2133 GR3D_FREQ 61%@[611,611] VIC_FREQ 729 APE 174 CV0@-256C CPU@45.375C Tboard@34C",
        {"ram_used_mb": 2448, "ram_total_mb": 30536, "swap_used_mb": 0, "swap_total_mb": 15268},
        (61, 611),
    ),
    "jetpack6-orin-nano": (
        "04-17-2024 10:12:33 RAM 2847/7620MB (lfb 2x4MB) SWAP 12/3810MB (cached 0MB) "
        "CPU [2%@729,1%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 12% cpu@47.5C "
        "soc2@46.4C VDD_IN 4470mW/4470mW VDD_CPU_GPU_CV 479mW/479mW VDD_SOC 1436mW/1436mW",
        {"ram_used_mb": 2847, "ram_total_mb": 7620, "swap_used_mb": 12, "swap_total_mb": 3810},
        (12, None),
    ),
}


@pytest.mark.parametrize("name", sorted(TEGRASTATS))
def test_tegrastats_lines(name: str) -> None:
    line, memory, (load, mhz) = TEGRASTATS[name]
    stats = gpumem.parse_tegrastats(line)
    assert {k: stats[k] for k in memory} == memory
    assert stats["gr3d_freq_pct"] == load
    assert stats.get("gr3d_mhz") == mhz


def test_tegrastats_real_jetpack6_line_and_garbage() -> None:
    # A JetPack 6 line as tegrastats prints it: RAM, SWAP, CPU, GR3D; no nvmap figure of any kind.
    line = (
        "RAM 3162/7620MB (lfb 4x2MB) SWAP 0/3810MB (cached 0MB) CPU [3%@1510,2%@1510,1%@1510,0%@1510,"
        "off,off] EMC_FREQ 0% GR3D_FREQ 1% cpu@49.2C soc2@47.9C VDD_IN 5120mW/5120mW"
    )
    stats = gpumem.parse_tegrastats(line)
    assert stats == {"ram_used_mb": 3162, "ram_total_mb": 7620, "swap_used_mb": 0, "swap_total_mb": 3810,
                     "gr3d_freq_pct": 1}  # fmt: skip
    with pytest.raises(ValueError, match="not a tegrastats line"):
        gpumem.parse_tegrastats("CPU [1%@729] GR3D_FREQ 0%")


MEMINFO = """\
MemTotal:        7802604 kB
MemFree:          986452 kB
MemAvailable:    4551240 kB
Buffers:           52344 kB
Cached:          3427548 kB
SwapTotal:       3901296 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
NvMapMemFree:      57264 kB
NvMapMemUsed:     603904 kB
"""

NVMAP_CLIENTS = """\
CLIENT                        PROCESS      PID        SIZE
user                   nvargus-daemon      912      43008K
user                          python3     4242     262144K
user                          python3     4242       1024K
user                          python3    14242       2048K
total                                               308224K
"""


def test_meminfo_parser() -> None:
    info = gpumem.parse_meminfo(MEMINFO)
    assert info["MemTotal"] == pytest.approx(7802604 / 1024)
    assert info["MemAvailable"] == pytest.approx(4551240 / 1024)
    assert info["NvMapMemUsed"] == pytest.approx(589.75)
    assert "HugePages_Total" not in info


def _fake_jetson(root: Path, *, marker: str = "tegra", clients: bool = False) -> Path:
    if marker == "tegra":
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    else:
        (root / "proc" / "device-tree").mkdir(parents=True)
        (root / "proc" / "device-tree" / "model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "meminfo").write_text(MEMINFO)
    if clients:
        debug = root / "sys" / "kernel" / "debug" / "nvmap" / "iovmm"
        debug.mkdir(parents=True)
        (debug / "clients").write_text(NVMAP_CLIENTS)
    return root


def test_jetson_detection_and_unified_memory(tmp_path: Path) -> None:
    plain = tmp_path / "x86"
    (plain / "proc").mkdir(parents=True)
    (plain / "proc" / "meminfo").write_text(MEMINFO)
    assert not gpumem.is_jetson(plain)
    assert gpumem.unified_memory_used_mib(plain) is None and gpumem.jetson_memory(plain) is None
    for marker in ("tegra", "device-tree"):
        root = _fake_jetson(tmp_path / marker, marker=marker)
        assert gpumem.is_jetson(root)
        assert gpumem.unified_memory_used_mib(root) == pytest.approx(589.75)
        assert gpumem.jetson_memory(root) == pytest.approx(
            {"total_mib": 7802604 / 1024, "available_mib": 4551240 / 1024, "nvmap_used_mib": 589.75}
        )


def test_nvmap_clients_per_process(tmp_path: Path) -> None:
    assert gpumem.parse_nvmap_clients(NVMAP_CLIENTS, 4242) == pytest.approx(257.0)
    assert gpumem.parse_nvmap_clients(NVMAP_CLIENTS, 912) == pytest.approx(42.0)
    # Not listed is unknown, not zero: the system-wide nvmap growth then decides the footprint.
    assert gpumem.parse_nvmap_clients(NVMAP_CLIENTS, 1) is None
    assert gpumem.footprint_gpu_mib(gpumem.parse_nvmap_clients(NVMAP_CLIENTS, 1), 100.0, 160.0) == 60.0
    root = _fake_jetson(tmp_path / "j", clients=True)
    assert gpumem.gpu_memory_used_mib(4242, root=root) == pytest.approx(257.0)
    assert gpumem.gpu_memory_used_mib(4242, root=_fake_jetson(tmp_path / "k")) is None  # debugfs needs root


def test_nvmap_total_and_the_fallback_where_meminfo_has_no_nvmap_field(tmp_path: Path) -> None:
    assert gpumem.parse_nvmap_total(NVMAP_CLIENTS) == pytest.approx(301.0)  # the table's own total line
    rows_only = "\n".join(line for line in NVMAP_CLIENTS.splitlines() if not line.startswith("total"))
    assert gpumem.parse_nvmap_total(rows_only) == pytest.approx(301.0)  # else the sum of the client rows
    assert gpumem.parse_nvmap_total("CLIENT PROCESS PID SIZE\n") is None
    root = _fake_jetson(tmp_path / "j", clients=True)
    meminfo = root / "proc" / "meminfo"
    meminfo.write_text("".join(line + "\n" for line in MEMINFO.splitlines() if not line.startswith("NvMap")))
    assert gpumem.unified_memory_used_mib(root) == pytest.approx(301.0)
    assert gpumem.system_gpu_used_mib(root) == pytest.approx(301.0)
    assert gpumem.unified_memory_used_mib(_fake_jetson(tmp_path / "k")) == pytest.approx(589.75)


def test_gpu_memory_used_is_none_here() -> None:
    if gpumem._load_nvml() is not None or gpumem.is_jetson():
        pytest.skip("this machine has an NVIDIA driver")
    assert gpumem.gpu_memory_used_mib() is None
    assert gpumem.nvml_memory_used_mib(1) is None
    # Per process means per process: no device-wide total stands in for it; that one has its own name.
    assert gpumem.nvml_device_used_mib() is None and gpumem.system_gpu_used_mib() is None
    assert gpumem.unified_memory_used_mib() is None


def test_footprint_gpu_rule() -> None:
    assert gpumem.footprint_gpu_mib(None, None, None) == 0.0
    assert gpumem.footprint_gpu_mib(300.0, 100.0, 900.0) == 300.0  # per process wins
    assert gpumem.footprint_gpu_mib(None, 600.0, 850.0) == 250.0  # Jetson: nvmap growth across the run
    assert gpumem.footprint_gpu_mib(None, 600.0, 590.0) == 0.0
