"""The systemd units: rendered from every shipped profile, hardened as the README says, clean under systemd-analyze."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from build_scripts.render_units import main as render_main
from build_scripts.render_units import render_units
from edge_runtime.profile import list_profiles, load_profile

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = str(Path(sys.executable).parent)  # a real edge-run: systemd-analyze checks that ExecStart exists


def directives(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("name", ["cart-v2", "shelf-cam-v1", "dev-cpu"])
def test_units_carry_the_profile_budget_watchdog_and_hardening(tmp_path: Path, name: str) -> None:
    profile = load_profile(name)
    run_unit, bench_unit, _ = render_units(profile, tmp_path, bin_dir=BIN_DIR, bundle="/opt/edge/bundle")
    d = directives(run_unit)
    assert d["ExecStart"] == [f"{BIN_DIR}/edge-run --bundle /opt/edge/bundle --camera %i"]
    assert d["Type"] == ["notify"] and d["Restart"] == ["on-failure"]
    assert d["RestartPreventExitStatus"] == ["2 3 7"]
    assert d["MemoryMax"] == [f"{profile.device.memory_budget_mib}M"]
    assert float(d["WatchdogSec"][0]) == profile.health.watchdog_s
    assert d["User"] == ["edge"] and d["SupplementaryGroups"] == ["video"]
    # The instance's own folder (outbox) first, then the engine folder every instance and edge-bench share.
    assert d["StateDirectory"] == ["edge/%i edge/engines"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert d[key] == ["yes"], key
    assert d["ProtectSystem"] == ["strict"]
    bench = directives(bench_unit)
    assert bench["Type"] == ["oneshot"] and "edge-bench --bundle /opt/edge/bundle" in bench["ExecStart"][0]
    assert bench["StateDirectory"] == ["edge/bench edge/engines"]
    # systemd unescapes $$ and %% before the shell sees the line: the report goes to the first state directory.
    shell = bench["ExecStart"][0].replace("$$", "$").replace("%%", "%")
    script = shell.split("-c ", 1)[1].strip("'").replace(f"exec {BIN_DIR}/edge-bench", "echo")
    (tmp_path / "bench").mkdir()
    env = {"STATE_DIRECTORY": f"{tmp_path}/bench:{tmp_path}/engines", "PATH": "/usr/bin:/bin"}
    subprocess.run(["/bin/sh", "-c", script], env=env, check=True)
    assert "--bundle /opt/edge/bundle --json" in (tmp_path / "bench" / "report.json").read_text()
    assert "@" not in "".join(v for vs in {**d, **bench}.values() for v in vs if "%i" not in v)


def test_a_profile_that_requires_signatures_puts_the_device_key_in_the_unit(tmp_path: Path) -> None:
    toml = tmp_path / "signed.toml"
    toml.write_text(
        f'extends = "{REPO / "device_profiles" / "cart-v2.toml"}"\n'
        '[security]\nrequire_signature = true\npublic_key_file = "/etc/edge/bundle-signing.pub"\n'
    )
    assert render_main(["--profile", str(toml), "--out", str(tmp_path / "u"), "--bin-dir", BIN_DIR]) == 0
    (exec_start,) = directives(tmp_path / "u" / "edge-run@.service")["ExecStart"]
    assert exec_start.endswith("--camera %i --public-key /etc/edge/bundle-signing.pub")


@pytest.mark.integration
def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian/Ubuntu package: systemd)")
    for name in list_profiles():
        out = tmp_path / name
        units = render_units(load_profile(name), out, bin_dir=BIN_DIR)
        for unit in units[:2]:
            done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
            # verify exits 0 on warnings (an unknown key, an unparsable value): any output is a failure.
            assert done.returncode == 0 and not done.stderr.strip(), f"{name}/{unit.name}:\n{done.stderr}"
