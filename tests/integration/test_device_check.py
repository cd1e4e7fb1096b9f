"""benchmarks/device_check.py, the prepared device check: what it does on a machine without a GPU (this one, CI).

On a GPU machine it is run by hand (`make device-check`) and its table goes to benchmarks/RESULTS.md; here the
parts that need no GPU are checked: it refuses with exit 2 and one line, and the CUDA binding fails with the
driver's reason, not a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import device_check  # noqa: E402


def test_without_a_gpu_it_says_so_and_exits_2() -> None:
    if device_check.gpu_description()[0] is not None:
        pytest.skip("this machine has an NVIDIA GPU: run `make device-check` instead")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "device_check.py")], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2 and "no NVIDIA GPU here" in proc.stdout and "Traceback" not in proc.stderr


def test_the_binding_check_reports_why_no_device_opens(tmp_path: Path) -> None:
    if device_check.gpu_description()[0] is not None:
        pytest.skip("this machine has an NVIDIA GPU")
    checks = device_check.Checks(tmp_path / "rows.json", 60.0, tmp_path)
    checks.run("cuda-python round trip", checks.binding)
    (row,) = checks.rows
    assert row["status"] == "FAIL" and ("cuda-python" in row["detail"] or "pycuda" in row["detail"])
    table = device_check.render(checks.rows, "test machine", "this interpreter")
    assert table.splitlines()[0] == "device check: test machine" and "cuda-python round trip" in table
    checks.deadline = 0.0  # a spent budget skips what is left, with the reason
    checks.run("CUDA EP vs CPU", checks.cuda_ep)
    assert checks.rows[-1] == {"check": "CUDA EP vs CPU", "status": "skip", "figure": "", "detail": "time budget spent"}
