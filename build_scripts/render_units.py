"""Render the systemd units for one device profile from the templates in systemd/.

    python build_scripts/render_units.py --profile cart-v2 --out out/systemd
    python build_scripts/render_units.py --profile cart-v2 --out out/systemd --bin-dir /opt/edge/venv/bin

Fills in, from the profile: ``MemoryMax`` (device.memory_budget_mib), ``WatchdogSec`` (health.watchdog_s) and,
when [security] require_signature is set, ``--public-key`` with security.public_key_file, so the device's trust
anchor lives in the unit on the read-only root file system rather than in the bundle it checks. The install
paths (--bin-dir, --bundle) default to the layout in the README. Writes edge-run@.service, edge-bench.service
and edge.sysusers.conf to --out and prints the commands that enable one instance per camera.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

# Lets the script run from a plain checkout, where edge_runtime is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_runtime.errors import EdgeError
from edge_runtime.profile import DeviceProfile, load_profile

TEMPLATES = Path(__file__).resolve().parents[1] / "systemd"
UNITS = ("edge-run@.service", "edge-bench.service")
SYSUSERS = "edge.sysusers.conf"
DEFAULT_BIN_DIR = "/opt/edge/venv/bin"
DEFAULT_BUNDLE = "/opt/edge/bundle"


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def unit_values(profile: DeviceProfile, bin_dir: str, bundle: str) -> dict[str, str]:
    """The @NAME@ substitutions for ``profile``."""
    key = profile.security.public_key_file if profile.security.require_signature else None
    return {
        "PROFILE": profile.name,
        "CAMERAS": ", ".join(c.name for c in profile.cameras),
        "BIN_DIR": bin_dir.rstrip("/"),
        "BUNDLE": bundle,
        "MEMORY_MAX": f"{profile.device.memory_budget_mib}M",
        "WATCHDOG_SEC": _seconds(profile.health.watchdog_s),
        "PUBLIC_KEY_ARG": f" --public-key {shlex.quote(key)}" if key else "",
    }


def render(template: str, values: dict[str, str]) -> str:
    text = template
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    leftover = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if leftover:
        raise ValueError(f"unfilled placeholders in the template: {', '.join(leftover)}")
    return text


def render_units(
    profile: DeviceProfile, out: Path, bin_dir: str = DEFAULT_BIN_DIR, bundle: str = DEFAULT_BUNDLE
) -> list[Path]:
    """Write the rendered units and the sysusers file into ``out``; returns their paths."""
    for path in (bin_dir, bundle):
        if not path.startswith("/"):
            raise ValueError(f"{path!r}: systemd needs absolute paths")
    values = unit_values(profile, bin_dir, bundle)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in UNITS:
        target = out / name
        target.write_text(render((TEMPLATES / name).read_text(encoding="utf-8"), values), encoding="utf-8")
        written.append(target)
    sysusers = out / SYSUSERS
    sysusers.write_text((TEMPLATES / SYSUSERS).read_text(encoding="utf-8"), encoding="utf-8")
    written.append(sysusers)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, help="profile name in device_profiles/ or a path to a .toml")
    parser.add_argument("--out", type=Path, required=True, help="folder for the rendered units")
    parser.add_argument("--bin-dir", default=DEFAULT_BIN_DIR, help=f"where edge-run lives (default {DEFAULT_BIN_DIR})")
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE, help=f"installed bundle folder (default {DEFAULT_BUNDLE})")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.profile)
        written = render_units(profile, args.out, args.bin_dir, args.bundle)
    except EdgeError as exc:
        print(f"render_units: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ValueError, OSError) as exc:
        print(f"render_units: error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    cameras = " ".join(f"edge-run@{c.name}.service" for c in profile.cameras)
    print(
        f"install: cp {args.out}/edge-run@.service {args.out}/edge-bench.service /etc/systemd/system/ && "
        f"cp {args.out}/{SYSUSERS} /usr/lib/sysusers.d/edge.conf && systemd-sysusers && "
        f"systemctl daemon-reload && systemctl enable --now {cameras}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
