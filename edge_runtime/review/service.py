"""``edge-review serve`` wiring, top to bottom: database and crop folder, the bundle's model, metrics, the collector,
the feedback outbox, the review page. Also the ``stats`` and ``export`` commands' functions.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

from edge_runtime.errors import UsageError
from edge_runtime.review.auth import Reviewers
from edge_runtime.review.collector import BrokerOptions, Collector, FeedbackSender
from edge_runtime.review.export import ExportResult, export_catalogue
from edge_runtime.review.grouping import DEFAULT_GROUP_THRESHOLD, Embedder
from edge_runtime.review.metrics import ReviewMetrics
from edge_runtime.review.schema import open_engine
from edge_runtime.review.store import ReviewStore
from edge_runtime.review.web import ReviewApp, create_app

__all__ = ["ReviewServer", "ServeOptions", "export", "open_store", "start_server", "stats"]

log = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    db: str
    data: Path
    reviewers: Path
    bundle: Path | None = None
    broker: BrokerOptions = field(default_factory=BrokerOptions)
    bind: str = "127.0.0.1"  # the page holds store photos: localhost unless told otherwise
    port: int = 8780
    quota_mib: float | None = None
    group_threshold: float = DEFAULT_GROUP_THRESHOLD


def open_store(db: str, data: Path, **kwargs: Any) -> ReviewStore:
    data = Path(data)
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--data {data}: cannot create it ({exc.strerror})", hint="choose a writable folder") from None
    return ReviewStore(open_engine(db), data, **kwargs)


class ReviewServer:
    """A running collector, feedback sender and page; ``url`` is the page's address, ``stop()`` ends them all."""

    def __init__(
        self,
        store: ReviewStore,
        collector: Collector,
        feedback: FeedbackSender,
        http: BaseWSGIServer,
        embedder: Embedder | None,
        metrics: ReviewMetrics,
    ) -> None:
        self.store = store
        self.collector = collector
        self.feedback = feedback
        self.metrics = metrics
        self._http = http
        self.app = http.app  # the Flask app as served (a test client can drive it)
        self._embedder = embedder
        self._thread = threading.Thread(target=http.serve_forever, name="review-http", daemon=True)
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://{self._http.host}:{self._http.server_port}"

    def start(self) -> None:
        self.feedback.start()
        self.collector.start()
        self._thread.start()
        log.info("review page on %s", self.url)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        steps = [
            self._http.shutdown,
            lambda: self._thread.join(10),
            self._http.server_close,
            self.collector.close,
            lambda: self.feedback.flush(5.0),
            self.feedback.close,
            self._embedder.close if self._embedder is not None else (lambda: None),
            self.store.engine.dispose,
        ]
        for step in steps:
            try:
                step()
            except Exception:  # one part failing to stop must not leave the others running
                log.exception("edge-review: error while stopping")

    def __enter__(self) -> ReviewServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(opts: ServeOptions) -> ReviewServer:
    """Open everything, check every input, then start; UsageError/BundleError before anything runs."""
    reviewers = Reviewers.load(opts.reviewers)
    if opts.quota_mib is not None and opts.quota_mib <= 0:
        raise UsageError(f"--quota-mib {opts.quota_mib}: must be positive", hint="leave it out for no quota")
    if not 0.0 < opts.group_threshold <= 1.0:
        raise UsageError(f"--group-threshold {opts.group_threshold}: must be in (0, 1]", hint="0.8 is the default")
    quota = int(opts.quota_mib * 1024 * 1024) if opts.quota_mib is not None else None
    store = open_store(opts.db, opts.data, quota_bytes=quota, group_threshold=opts.group_threshold)
    embedder = Embedder(opts.bundle) if opts.bundle is not None else None
    if embedder is not None:
        store.set_bundle_skus(embedder.head.skus)
    else:
        log.warning("no --bundle: crops are not grouped and the page cannot say why the device did not accept them")
    metrics = ReviewMetrics(lambda: float(store.pending_count()))
    collector = Collector(store, embedder, metrics, opts.broker)
    feedback = FeedbackSender(opts.data, opts.broker, metrics)
    app = create_app(
        ReviewApp(
            store=store,
            reviewers=reviewers,
            metrics=metrics,
            feedback=feedback,
            head=embedder.head if embedder else None,
        ),
        secret_key=secrets.token_bytes(32),
    )
    # werkzeug logs every request at INFO (crop fetches by the dozen); refusals and errors still show.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        http = make_server(opts.bind, opts.port, app, threaded=True)
    except OSError as exc:
        feedback.close()
        raise UsageError(
            f"cannot listen on {opts.bind}:{opts.port}: {exc.strerror}", hint="choose another --port"
        ) from None
    server = ReviewServer(store, collector, feedback, http, embedder, metrics)
    server.start()
    return server


def stats(db: str) -> dict[str, Any]:
    """``edge-review stats``: what the store holds (no data folder needed: crops are not read)."""
    store = ReviewStore(open_engine(db), Path("."))  # stats never touches the crop folder
    try:
        return store.stats()
    finally:
        store.engine.dispose()


def export(db: str, data: Path, out: Path) -> ExportResult:
    store = open_store(db, data)
    try:
        return export_catalogue(store, out)
    finally:
        store.engine.dispose()


def stats_text(report: dict[str, Any]) -> str:
    lines = [
        f"events stored   {report['events']}",
        f"pending         {report['pending']}",
        "labelled        " + (", ".join(f"{k} {v}" for k, v in sorted(report["labelled"].items())) or "none"),
        f"groups          {report['groups']} ({report['grouped_events']} events)",
        f"new SKUs        {report['new_skus']}",
    ]
    for device, d in sorted(report["devices"].items()):
        lines.append(
            f"device {device}: {d['events']} events, {d['unknown']} unknown "
            f"({d['unknown_share']:.0%}, {d['unknown_per_hour']}/h)"
        )
    if report["counters"]:
        lines.append("counters        " + json.dumps(report["counters"], sort_keys=True))
    return "\n".join(lines)
