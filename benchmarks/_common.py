"""What the benchmark scripts share: paths, the machine line, a demo bundle and video, a throwaway broker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The scripts run from a plain checkout too; build_scripts is imported for its broker helper.
sys.path.insert(0, str(REPO))

from build_scripts.demo_run import find_mosquitto, local_broker  # noqa: E402
from edge_runtime.bench import describe_machine  # noqa: E402

CACHE = Path(os.environ.get("EDGE_CACHE_DIR") or REPO / ".cache")
DEMO_BUNDLE = REPO / "out" / "demo" / "bundle"
GROCERY = REPO.parent / "shared" / "data" / "grocery"

__all__ = [
    "CACHE",
    "DEMO_BUNDLE",
    "GROCERY",
    "REPO",
    "broker",
    "demo_bundle",
    "demo_video",
    "find_mosquitto",
    "machine_line",
]


def machine_line() -> str:
    m = describe_machine()
    return (
        f"machine: {m['arch']} {m['os']}, {m['cpu']}, {m['cores_usable']} usable cores, "
        f"{m['memory_mib'] / 1024:.1f} GiB, Python {m['python']}, onnxruntime {m['onnxruntime']}, "
        f"load average {m['load_avg_1m']:.2f} at start"
    )


def demo_bundle(path: Path | None) -> Path:
    """The given bundle, or the demo bundle (built with `make demo`'s edge-build when it is missing)."""
    if path is not None:
        return path
    if not (DEMO_BUNDLE / "manifest.json").is_file():
        print(f"no demo bundle at {DEMO_BUNDLE}: building it (edge-build --profile dev-cpu)", flush=True)
        subprocess.run(_edge_build_cmd(), check=True, cwd=REPO)
    return DEMO_BUNDLE


def _edge_build_cmd() -> list[str]:
    code = "import sys; from edge_runtime.cli import build_main; sys.exit(build_main(sys.argv[1:]))"
    return [sys.executable, "-c", code, "--profile", "dev-cpu", "--out", str(DEMO_BUNDLE.parent), "-q"]


def demo_video(seconds: float, size: tuple[int, int] = (640, 480), fps: int = 10) -> Path:
    """A deterministic demo video (products held up or sliding past, idle gaps), made once in the cache."""
    from edge_runtime.demo import generate_demo_video

    target = CACHE / "bench" / f"demo-{seconds:g}s-{size[0]}x{size[1]}.mp4"
    for existing in (target, target.with_suffix(".avi")):
        if existing.is_file() and existing.with_suffix(".labels.json").is_file():
            return existing
    return generate_demo_video(target, seconds=seconds, fps=fps, size=size)


@contextmanager
def broker() -> Iterator[int | None]:
    """A throwaway mosquitto on a free loopback port (its port), or None when mosquitto is not installed."""
    binary = find_mosquitto()
    if binary is None:
        yield None
        return
    with local_broker(binary) as port:
        yield port
