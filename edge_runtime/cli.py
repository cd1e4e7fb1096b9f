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
from typing import TYPE_CHECKING

from edge_runtime.errors import EXIT_USAGE, EdgeError, UsageError

if TYPE_CHECKING:
    from edge_runtime.profile import Camera

EXIT_INTERNAL = 70  # an unexpected bug; EDGE_DEBUG=1 shows the traceback
EXIT_INTERRUPTED = 130
DEMO_VIDEO_SECONDS = 10.0

log = logging.getLogger(__name__)


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


# One folder of GPU engines per device (backends.base.default_engine_dir says why and how it is found).
ENGINE_DIR_HELP = (
    "GPU engine cache folder, shared by every edge-run instance, edge-bench and edge-build --engine-on-device "
    "(default: $EDGE_ENGINE_DIR, systemd's StateDirectory entry 'engines', else ~/.local/state/edge_runtime/engines)"
)


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more progress detail on stderr")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    return parser


def build_main(argv: list[str] | None = None) -> int:
    parser = _parser("edge-build", "Build a verified bundle that fits a device profile's memory budget.")
    parser.add_argument("--profile", default="dev-cpu", help="profile name in device_profiles/ or a path to a .toml")
    parser.add_argument(
        "--catalogue",
        type=Path,
        action="append",
        help="SKU folder tree or CSV; repeat to merge several, e.g. today's catalogue and edge-review's export "
        "(default: generated demo catalogue)",
    )
    parser.add_argument(
        "--model", type=Path, help="backbone ONNX with an embedding output (default: EfficientNet-Lite0)"
    )
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder for bundle/ and bundle.tar.gz")
    parser.add_argument("--cache-dir", type=Path, help="where the default backbone and demo catalogue are cached")
    parser.add_argument(
        "--signing-key",
        type=Path,
        help="Ed25519 private key (PEM) to sign the bundle with: writes bundle/signature.ed25519",
    )
    parser.add_argument("--history", type=Path, help="catalogue change history CSV (date,sku,change) for readiness")
    parser.add_argument("--previous-bundle", type=Path, help="the bundle this one replaces (catalogue change rate)")
    parser.add_argument("--strict", action="store_true", help="exit 5 and write no bundle when a readiness check fails")
    parser.add_argument(
        "--engine-on-device",
        action="store_true",
        help="also build the TensorRT engine now, on this device, into the engine folder edge-run reads "
        "(instead of on first start)",
    )
    parser.add_argument("--engine-dir", type=Path, help=ENGINE_DIR_HELP)
    parser.add_argument("--runs", type=int, default=30, help="timed inference runs per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else 0
    _configure_logging(args.verbose, args.quiet)

    def body() -> int:
        if args.engine_on_device:
            from edge_runtime.backends.tensorrt import tensorrt_probe

            reason = tensorrt_probe()  # before the build: fail in seconds, not after minutes
            if reason is not None:
                raise UsageError(
                    f"--engine-on-device needs TensorRT on this machine: {reason}",
                    hint="run edge-build on the device itself, or leave the engine to edge-run's first start",
                )
        import json

        from edge_runtime.builder.manifest import summary_text
        from edge_runtime.builder.pipeline import BuildOptions, run_build
        from edge_runtime.bundle import load_signing_key

        if args.signing_key is not None:
            load_signing_key(args.signing_key)  # a bad key fails now, not after the build
        opts = BuildOptions(
            profile=args.profile,
            out=args.out,
            catalogue=args.catalogue,
            model=args.model,
            seed=args.seed,
            runs=max(3, args.runs),
            signing_key=args.signing_key,
            history=args.history,
            previous_bundle=args.previous_bundle,
            strict=args.strict,
        )
        if args.cache_dir is not None:
            opts.cache_dir = args.cache_dir
        result = run_build(opts)
        if args.engine_on_device:
            from edge_runtime.backends.tensorrt import build_engine, default_engine_dir

            m = result.bundle.manifest
            engine, seconds = build_engine(
                result.bundle.path("model.onnx"),
                args.engine_dir or default_engine_dir(),
                str(m["model"]["precision"]),
                float(m["budget_mib"]),
                result.profile.regions.max_regions,
            )
            print(
                f"TensorRT engine {engine} ({'cached' if seconds == 0 else f'built in {seconds:.1f} s'})",
                file=sys.stderr,
            )
        summary = result.summary()
        print(json.dumps(summary, sort_keys=True) if args.json else summary_text(summary))
        return 0

    return _guarded("edge-build", body)


def demo_source(state_dir: Path, camera: Camera) -> str:
    """The generated demo video under the state dir (made once): what dev-cpu's empty camera source means to
    edge-run (``RunOptions.fallback_source``)."""
    # Imported here, so a device, whose cameras all have a source, never loads the generator.
    from edge_runtime.demo import generate_demo_video

    target = state_dir / "demo" / "demo-video.mp4"
    for existing in (target, target.with_suffix(".avi")):
        if existing.is_file() and existing.with_suffix(".labels.json").is_file():
            return str(existing)
    log.info("camera %r has no source: generating the demo video in %s", camera.name, target.parent)
    video = generate_demo_video(
        target, seconds=DEMO_VIDEO_SECONDS, fps=max(1, round(camera.fps)), size=(camera.width, camera.height)
    )
    return str(video)


def run_main(argv: list[str] | None = None) -> int:
    parser = _parser("edge-run", "Recognise SKUs on a camera with a bundle; publish over MQTT, export metrics.")
    parser.add_argument("--bundle", type=Path, required=True, help="bundle/ folder (or bundle.tar.gz) from edge-build")
    parser.add_argument(
        "--source", help="video file, image folder, rtsp://..., /dev/videoN, csi://N (default: the camera's source)"
    )
    parser.add_argument("--camera", help="camera name in the bundle's profile (default: the first)")
    parser.add_argument(
        "--state-dir", type=Path, help="outbox location (default: $STATE_DIRECTORY or ~/.local/state/edge_runtime)"
    )
    parser.add_argument("--engine-dir", type=Path, help=ENGINE_DIR_HELP)
    parser.add_argument("--max-frames", type=int, help="stop after this many frames read from the source")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (default: the profile's; 0 = off)")
    parser.add_argument("--mqtt-host", help="broker host (default: the profile's)")
    parser.add_argument("--mqtt-port", type=int, help="broker port (default: the profile's)")
    parser.add_argument(
        "--device-id",
        help="device id in MQTT topics (default: the profile's, + -CAMERA when it has several cameras)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="seconds to wait at the end for the broker to acknowledge everything (default 10)",
    )
    parser.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeat messages")
    parser.add_argument(
        "--public-key",
        type=Path,
        help="Ed25519 public key (PEM): run only bundles signed with its private half (exit 3 otherwise)",
    )
    parser.add_argument("--every-frame", action="store_true", help="bypass the motion sampler: infer on every frame")
    parser.add_argument(
        "--realtime", action="store_true", help="play files at their frame rate (folders: the camera's), like a camera"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else 0
    if args.max_frames is not None and args.max_frames < 1:
        print("edge-run: error: --max-frames must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.drain_timeout < 0 or args.heartbeat < 0:
        print("edge-run: error: --drain-timeout and --heartbeat must not be negative", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(args.verbose, args.quiet)

    def body() -> int:
        from edge_runtime.run.pipeline import RunOptions, dumps_summary, run

        summary = run(
            RunOptions(
                bundle=args.bundle,
                source=args.source,
                state_dir=args.state_dir,
                engine_dir=args.engine_dir,
                max_frames=args.max_frames,
                metrics_port=args.metrics_port,
                mqtt_host=args.mqtt_host,
                mqtt_port=args.mqtt_port,
                device_id=args.device_id,
                camera=args.camera,
                drain_timeout_s=args.drain_timeout,
                every_frame=args.every_frame,
                realtime=args.realtime,
                heartbeat_s=args.heartbeat,
                public_key=args.public_key,
                fallback_source=demo_source,
            )
        )
        print(dumps_summary(summary) if args.json else summary.text(), flush=True)
        return 0

    return _guarded("edge-run", body)


def bench_main(argv: list[str] | None = None) -> int:
    parser = _parser(
        "edge-bench",
        "Run a bundle's pipeline on this device: stage latencies, throughput, peak memory and headroom, "
        "checked against the profile's limits (exit 6 when outside them).",
    )
    parser.add_argument("--bundle", type=Path, required=True, help="bundle/ folder (or bundle.tar.gz) from edge-build")
    parser.add_argument("--frames", type=int, default=200, help="frames measured after the warm-up (default 200)")
    parser.add_argument(
        "--source",
        help="video file, image folder, rtsp://..., /dev/videoN, csi://N "
        "(default: synthetic frames at the camera's resolution)",
    )
    parser.add_argument("--warmup", type=int, default=10, help="frames run before measuring (default 10)")
    parser.add_argument("--camera", help="camera name in the bundle's profile (default: the first)")
    parser.add_argument("--engine-dir", type=Path, help=ENGINE_DIR_HELP)
    parser.add_argument(
        "--publish",
        action="store_true",
        help="send the messages through the outbox to the broker, under DEVICE-bench (default: build and drop them)",
    )
    parser.add_argument("--mqtt-host", help="broker host with --publish (default: the profile's)")
    parser.add_argument("--mqtt-port", type=int, help="broker port with --publish (default: the profile's)")
    parser.add_argument(
        "--profile", help="check against this profile's limits (name or .toml) instead of the bundle's own"
    )
    parser.add_argument("--budget-mib", type=float, help="what-if: check against this memory budget (MiB)")
    parser.add_argument("--max-latency-ms", type=float, help="what-if: check against this latency ceiling (ms)")
    parser.add_argument(
        "--public-key",
        type=Path,
        help="Ed25519 public key (PEM): bench only a bundle signed with its private half, as edge-run (exit 3)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else 0
    _configure_logging(args.verbose, args.quiet)

    def body() -> int:
        from edge_runtime.bench import BenchOptions, run_bench

        report = run_bench(
            BenchOptions(
                bundle=args.bundle,
                frames=args.frames,
                warmup=args.warmup,
                source=args.source,
                camera=args.camera,
                engine_dir=args.engine_dir,
                publish=args.publish,
                profile=args.profile,
                budget_mib=args.budget_mib,
                max_latency_ms=args.max_latency_ms,
                mqtt_host=args.mqtt_host,
                mqtt_port=args.mqtt_port,
                public_key=args.public_key,
                handle_signals=True,
            )
        )
        # The figures are printed whatever the verdict: a failed bench is still a measurement.
        print(report.dumps() if args.json else report.text(), flush=True)
        report.raise_if_outside_limits()
        return 0

    return _guarded("edge-bench", body)


def check_main(argv: list[str] | None = None) -> int:
    parser = _parser("edge-check", "Run the readiness checklist on a catalogue without building a bundle.")
    parser.add_argument("--catalogue", type=Path, required=True, help="SKU folder tree or CSV")
    parser.add_argument(
        "--model", type=Path, help="backbone ONNX with an embedding output (default: EfficientNet-Lite0)"
    )
    parser.add_argument("--profile", default="dev-cpu", help="profile name in device_profiles/ or a path to a .toml")
    parser.add_argument("--history", type=Path, help="catalogue change history CSV: date,sku,change")
    parser.add_argument(
        "--out", type=Path, default=Path("out") / "readiness", help="folder for readiness.json, .md and plots"
    )
    parser.add_argument("--cache-dir", type=Path, help="where the default backbone is cached")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the readiness JSON instead of the summary")
    parser.add_argument("--strict", action="store_true", help="exit 5 when any check fails (default: report only)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else 0
    _configure_logging(args.verbose, args.quiet)

    def body() -> int:
        import json

        from edge_runtime.builder.check import run_check
        from edge_runtime.builder.readiness.report import summary_text
        from edge_runtime.errors import ReadinessError

        report = run_check(
            args.catalogue, args.model, args.profile, args.history, args.out, args.seed, cache_dir=args.cache_dir
        )
        if args.json:
            print(json.dumps(report.to_json(), sort_keys=False, allow_nan=False))
        else:
            print(summary_text(report, [args.out / "readiness.md"]))
        if report.failed and args.strict:
            raise ReadinessError(
                f"readiness checklist failed: {', '.join(c.name for c in report.failed)}",
                hint=f"see {args.out / 'readiness.md'}; without --strict failures are reported and exit 0",
            )
        return 0

    return _guarded("edge-check", body)


def review_main(argv: list[str] | None = None) -> int:
    """``edge-review serve | export | stats | passwd``: the back office of the unknown-object loop."""
    parser = _parser("edge-review", "Collect unknown/verify crops, label them in a web page, export a catalogue delta.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the collector and the review page")
    serve.add_argument("--db", required=True, help="sqlite:////abs/path.db or postgresql://user@host/db")
    serve.add_argument("--data", type=Path, required=True, help="folder for crops and the feedback outbox")
    serve.add_argument("--bundle", type=Path, help="the fleet's bundle: groups crops with its model, names SKUs")
    serve.add_argument("--reviewers", type=Path, required=True, help="credentials file (edge-review passwd)")
    serve.add_argument("--mqtt-host", default="127.0.0.1")
    serve.add_argument("--mqtt-port", type=int, default=1883)
    serve.add_argument("--prefix", default="edge", help="the fleet's MQTT topic prefix")
    serve.add_argument("--name", default="review", help="this collector's name (client ids, outbox)")
    serve.add_argument("--tls-ca-file")
    serve.add_argument("--tls-cert-file")
    serve.add_argument("--tls-key-file")
    serve.add_argument("--credentials-file", help="MQTT username:password file (mode 600)")
    serve.add_argument("--bind", default="127.0.0.1", help="address of the page (default: localhost only)")
    serve.add_argument("--port", type=int, default=8780, help="port of the page and /metrics")
    serve.add_argument("--quota-mib", type=float, help="cap on crop files; the oldest reviewed go first")
    serve.add_argument("--group-threshold", type=float, help="cosine at which a crop joins a group (0.8)")
    export = sub.add_parser("export", help="write the labelled crops as a catalogue delta for edge-build")
    export.add_argument("--db", required=True)
    export.add_argument("--data", type=Path, required=True, help="the serve command's --data folder")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--json", action="store_true")
    stats = sub.add_parser("stats", help="what the store holds")
    stats.add_argument("--db", required=True)
    stats.add_argument("--json", action="store_true")
    passwd = sub.add_parser("passwd", help="add a reviewer (password read from the terminal or stdin)")
    passwd.add_argument("file", type=Path)
    passwd.add_argument("user")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else 0
    _configure_logging(args.verbose, args.quiet)

    def body() -> int:
        import json

        try:
            from edge_runtime.review import service
        except ImportError as exc:
            raise UsageError(
                f"edge-review needs the [review] extra ({exc})", hint="pip install edge_runtime[review]"
            ) from None
        if args.command == "stats":
            report = service.stats(args.db)
            print(json.dumps(report, sort_keys=True) if args.json else service.stats_text(report))
            return 0
        if args.command == "export":
            result = service.export(args.db, args.data, args.out)
            print(json.dumps(result.to_json()) if args.json else f"exported {result.images} crops of {result.skus} "
                  f"SKUs ({len(result.new_skus)} new) to {result.out}")  # fmt: skip
            return 0
        if args.command == "passwd":
            import getpass

            from edge_runtime.review.auth import add_reviewer

            password = getpass.getpass(f"password for {args.user}: ") if sys.stdin.isatty() else sys.stdin.readline()
            add_reviewer(args.file, args.user, password.rstrip("\n"))
            return 0
        import signal
        import threading

        from edge_runtime.review.collector import BrokerOptions

        opts = service.ServeOptions(
            db=args.db,
            data=args.data,
            reviewers=args.reviewers,
            bundle=args.bundle,
            broker=BrokerOptions(
                host=args.mqtt_host,
                port=args.mqtt_port,
                prefix=args.prefix,
                name=args.name,
                tls_ca_file=args.tls_ca_file,
                tls_cert_file=args.tls_cert_file,
                tls_key_file=args.tls_key_file,
                credentials_file=args.credentials_file,
            ),
            bind=args.bind,
            port=args.port,
            quota_mib=args.quota_mib,
        )
        if args.group_threshold is not None:
            opts.group_threshold = args.group_threshold
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        server = service.start_server(opts)
        print(f"edge-review: page on {server.url}, collecting from {args.mqtt_host}:{args.mqtt_port}", flush=True)
        try:
            while not stop.wait(1.0):
                pass
        finally:
            server.stop()
        return 0

    return _guarded("edge-review", body)


def _entry(main: Callable[[list[str] | None], int]) -> Callable[[], None]:
    def entry() -> None:
        sys.exit(main(None))

    return entry


build = _entry(build_main)
run = _entry(run_main)
bench = _entry(bench_main)
check = _entry(check_main)
review = _entry(review_main)
