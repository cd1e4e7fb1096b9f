"""Run edge-bench on the demo bundle and the six benchmark scripts, one after another, and print everything.

    python benchmarks/run_all.py [--quick]

Each script runs in its own process (a fresh interpreter, so one script's memory or threads never colour the
next one's figures) with the output streamed as it comes; the command and wall time of each are printed with it.
The demo bundle (out/demo/bundle) is built first when it is missing (and publish_ratio.py's one-thread variant of
it). About 8 minutes on 2 cores; ``--quick`` shrinks repeats and sizes for a smoke run (the figures are then
not the ones to quote).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from _common import REPO, demo_bundle, machine_line

BENCH = "import sys; from edge_runtime.cli import bench_main; sys.exit(bench_main(sys.argv[1:]))"


def steps(quick: bool) -> list[tuple[str, list[str]]]:
    py = sys.executable
    bundle = str(demo_bundle(None))
    return [
        ("edge-bench on the demo bundle", [py, "-c", BENCH, "--bundle", bundle, "--frames", "200", "-q"]),
        (
            "1. loop efficiency",
            [py, "benchmarks/loop_efficiency.py"] + (["--repeats", "1", "--seconds", "10"] if quick else []),
        ),
        ("2. precision variants", [py, "benchmarks/variants.py"] + (["--runs", "10", "--no-top1"] if quick else [])),
        (
            "3. catalogue scale",
            [py, "benchmarks/catalogue_scale.py"] + (["--sizes", "1000,10000", "--budget-s", "0.2"] if quick else []),
        ),
        ("4. outbox rate", [py, "benchmarks/outbox_rate.py"] + (["--repeats", "1"] if quick else [])),
        (
            "4b. publishing beside one inference thread",
            [py, "benchmarks/publish_ratio.py"] + (["--repeats", "1", "--frames", "100"] if quick else []),
        ),
        ("5. memory prediction", [py, "benchmarks/memory_prediction.py"] + (["--repeats", "1"] if quick else [])),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller, faster runs (a smoke test, not figures)")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    t_all = time.perf_counter()
    failed: list[str] = []
    times: list[tuple[str, float, int]] = []
    for title, cmd in steps(args.quick):
        shown = " ".join(["python" if c == sys.executable else c for c in cmd])
        print(f"\n{'=' * 100}\n{title}: {shown}\n{'=' * 100}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.run(cmd, cwd=REPO, check=False).returncode
        elapsed = time.perf_counter() - t0
        times.append((title, elapsed, code))
        # edge-bench exits 6 when outside the profile's limits: a result, not a failure of the suite.
        if code not in (0, 6) or (code == 6 and not title.startswith("edge-bench")):
            failed.append(title)
        print(f"-- {title}: exit {code}, {elapsed:.0f} s", flush=True)
    print(f"\n{'=' * 100}")
    for title, elapsed, code in times:
        print(f"{title:<36}{elapsed:>6.0f} s   exit {code}")
    print(f"{'total':<36}{time.perf_counter() - t_all:>6.0f} s")
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
