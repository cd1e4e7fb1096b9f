"""Thin command-line entry points. Each command is a function taking argv and returning an exit code.

This is the only module that configures logging: progress goes to stderr,
results to stdout, so ``--json`` output stays machine-readable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from edge_runtime.errors import EXIT_USAGE, EdgeError

EXIT_INTERNAL = 70  # an unexpected bug; EDGE_DEBUG=1 shows the traceback
EXIT_INTERRUPTED = 130


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    package = logging.getLogger("edge_runtime")
    for old in [h for h in package.handlers if getattr(h, "edge_cli", False)]:
        package.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.edge_cli = True  # type: ignore[attr-defined]
    package.addHandler(handler)
    package.setLevel(level)
    package.propagate = False
    # Libraries (onnxruntime's quantiser logs at INFO on the root logger) only get to say warnings.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _guarded(prog: str, body: Callable[[], int]) -> int:
    """Turn package errors into one-line messages and documented exit codes, never tracebacks."""
    try:
        return body()
    except EdgeError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("EDGE_DEBUG"):
            traceback.print_exc()
        print(f"{prog}: internal error: {type(exc).__name__}: {exc} (set EDGE_DEBUG=1 for details)", file=sys.stderr)
        return EXIT_INTERNAL


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more progress detail on stderr")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    return parser


def build_main(argv: list[str] | None = None) -> int:
    parser = _parser("edge-build", "Build a verified bundle that fits a device profile's memory budget.")
    parser.add_argument("--profile", default="dev-cpu", help="profile name in device_profiles/ or a path to a .toml")
    parser.add_argument("--catalogue", type=Path, help="SKU folder tree or CSV (default: generated demo catalogue)")
    parser.add_argument(
        "--model", type=Path, help="backbone ONNX with an embedding output (default: EfficientNet-Lite0)"
    )
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder for bundle/ and bundle.tar.gz")
    parser.add_argument("--cache-dir", type=Path, help="where the default backbone and demo catalogue are cached")
    parser.add_argument("--runs", type=int, default=30, help="timed inference runs per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else 0
    _configure_logging(args.verbose, args.quiet)

    def body() -> int:
        from edge_runtime.build.pipeline import BuildOptions, dumps_summary, run_build, summary_text

        opts = BuildOptions(
            profile=args.profile,
            out=args.out,
            catalogue=args.catalogue,
            model=args.model,
            seed=args.seed,
            runs=max(3, args.runs),
        )
        if args.cache_dir is not None:
            opts.cache_dir = args.cache_dir
        result = run_build(opts)
        print(dumps_summary(result) if args.json else summary_text(result))
        return 0

    return _guarded("edge-build", body)


def _not_yet(prog: str) -> Callable[[list[str] | None], int]:
    def main(argv: list[str] | None = None) -> int:
        print(f"{prog}: not yet implemented in this version of edge_runtime", file=sys.stderr)
        return EXIT_USAGE

    return main


run_main = _not_yet("edge-run")
bench_main = _not_yet("edge-bench")
check_main = _not_yet("edge-check")


def _entry(main: Callable[[list[str] | None], int]) -> Callable[[], None]:
    def entry() -> None:
        sys.exit(main(None))

    return entry


build = _entry(build_main)
run = _entry(run_main)
bench = _entry(bench_main)
check = _entry(check_main)
