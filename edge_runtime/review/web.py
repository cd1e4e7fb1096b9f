"""The review page: Flask, server-rendered Jinja2 templates, a few lines of JavaScript for keyboard shortcuts.

Why Flask: the page is a queue and a handful of form posts, which server-side rendering serves with no build
step and nothing to install on the reviewers' machines; Flask is small, long-lived and well kept, its test
client and werkzeug's password helpers come with it, and it runs inside the collector's process (served by
waitress) so the page and the collector share one store and one set of metrics.

Routes: ``/login`` and ``/logout``; ``/`` the queue (filters: ``device``, ``route``, ``since``, ``until``);
``POST /label`` and ``POST /undo`` (CSRF token per session); ``/crop/SHA`` the crop files; ``/skus?q=`` the SKU
search; ``/metrics`` Prometheus (no login: it holds counts, no crops or names; bind to localhost or firewall it).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import wraps
from typing import Any

from flask import Flask, Response, abort, flash, jsonify, redirect, render_template, request, session, url_for

from edge_runtime.head.model import Head
from edge_runtime.head.routing import route as head_route
from edge_runtime.review.auth import Reviewers
from edge_runtime.review.collector import FeedbackSender
from edge_runtime.review.labels import PRODUCT_LABELS, LabelError, apply_label, undo_last
from edge_runtime.review.metrics import ReviewMetrics
from edge_runtime.review.store import EventView, ReviewStore

__all__ = ["ReviewApp", "create_app", "reasons"]

log = logging.getLogger(__name__)


@dataclass
class ReviewApp:
    store: ReviewStore
    reviewers: Reviewers
    metrics: ReviewMetrics
    feedback: FeedbackSender | None = None
    head: Head | None = None  # the bundle's head: the thresholds an event's reasons are read against


def reasons(event: EventView, head: Head | None) -> list[str]:
    """Why the device did not accept this object, from its scores and the bundle's own thresholds."""
    if head is None or not event.nearest:
        return [f"routed to {event.kind}", f"OOD score {event.ood_score:.3f}"]
    index = {s.code: i for i, s in enumerate(head.skus)}
    top, p1 = event.nearest[0]
    best = index.get(top)
    if best is None:
        return [f"routed to {event.kind} (its top SKU {top!r} is not in this bundle)"]
    ambiguous = False
    if len(event.nearest) > 1 and event.nearest[1][0] in index:
        second = index[event.nearest[1][0]]
        ambiguous = bool(head.group_of_class[second] != head.group_of_class[best] and event.nearest[1][1] >= 0.5 * p1)
    c = head.config
    _, why = head_route(
        p1,
        float(c.accept_thresholds[best]),
        event.ood_score,
        c.ood_threshold,
        c.verify_band,
        ambiguous,
        c.accept_ood_threshold,
    )
    return list(why) or [f"routed to {event.kind}"]


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def create_app(ctx: ReviewApp, secret_key: bytes | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key or secrets.token_bytes(32),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        MAX_CONTENT_LENGTH=256 * 1024,
    )
    app.jinja_env.globals.update(when=_when, reasons=lambda e: reasons(e, ctx.head))

    def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if "user" not in session:
                return redirect(url_for("login", next=request.full_path))
            return view(*args, **kwargs)

        return wrapped

    def check_csrf() -> None:
        sent = request.form.get("csrf", "")
        if not hmac.compare_digest(sent, session.get("csrf", "")):
            ctx.metrics.label_rejected.labels("bad_request").inc()
            abort(400, "stale or missing form token: reload the page")

    @app.get("/login")
    def login() -> str:
        return render_template("login.html", next=request.args.get("next", "/"))

    @app.post("/login")
    def login_post() -> Any:
        user = request.form.get("user", "")
        if not ctx.reviewers.check(user, request.form.get("password", "")):
            log.warning("review page: failed login for %r from %s", user[:64], request.remote_addr)
            flash("wrong user or password")
            return render_template("login.html", next=request.form.get("next", "/")), 401
        session.clear()
        session.update(user=user, csrf=secrets.token_urlsafe(24))
        target = request.form.get("next", "/")
        return redirect(target if target.startswith("/") and not target.startswith("//") else "/")

    @app.post("/logout")
    def logout() -> Any:
        session.clear()
        return redirect(url_for("login"))

    @app.get("/")
    @login_required
    def queue() -> str:
        args = request.args
        items = ctx.store.queue(
            device=args.get("device") or None,
            route=args.get("route") if args.get("route") in ("unknown", "verify") else None,
            since=_parse_time(args.get("since")),
            until=_parse_time(args.get("until")),
        )
        return render_template(
            "queue.html",
            items=items,
            devices=ctx.store.devices(),
            args=args,
            pending=ctx.store.pending_count(),
            user=session["user"],
            csrf=session["csrf"],
        )

    @app.post("/label")
    @login_required
    def label() -> Any:
        check_csrf()
        form = request.form
        ids = [i for i in form.get("event_ids", "").split(",") if i]
        kind = form.get("kind", "")
        try:
            done = apply_label(
                ctx.store,
                ids,
                kind,
                session["user"],
                sku=(form.get("sku") or "").strip() or None,
                name=form.get("name"),
                group=form.get("group"),
            )
        except LabelError as exc:
            ctx.metrics.label_rejected.labels(exc.reason).inc()
            log.info("label refused (%s): %s", exc.reason, exc)
            status = 404 if exc.reason == "unknown_event" else 409
            return render_template("message.html", message=f"not labelled: {exc}"), status
        ctx.metrics.labels.labels(kind).inc(len(done.events))
        sent = 0
        if ctx.feedback is not None and kind in PRODUCT_LABELS and done.sku:
            sent = sum(ctx.feedback.send(device, event_id, done.sku) for event_id, device in done.events)
        flash(f"{kind}: {len(done.events)} event(s){f' as {done.sku}' if done.sku else ''}; feedback to {sent}")
        return redirect(request.referrer or url_for("queue"))

    @app.post("/undo")
    @login_required
    def undo() -> Any:
        check_csrf()
        undone = undo_last(ctx.store, session["user"])
        flash(f"undone: {undone.kind} of {len(undone.events)} event(s)" if undone else "nothing to undo")
        return redirect(request.referrer or url_for("queue"))

    @app.get("/crop/<sha>")
    @login_required
    def crop(sha: str) -> Response:
        try:
            data = ctx.store.crops.read(sha)
        except ValueError:
            data = None
        if data is None:
            abort(404)
        response = Response(data, mimetype="image/jpeg")
        response.headers["Cache-Control"] = "private, max-age=86400, immutable"
        return response

    @app.get("/skus")
    @login_required
    def skus() -> Response:
        q = request.args.get("q", "").strip().lower()
        found = [
            {"code": code, "name": name, "group": group, "added": added}
            for code, name, group, added in ctx.store.all_skus()
            if not q or q in code.lower() or q in name.lower()
        ]
        return jsonify(found[:50])

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(ctx.metrics.exposition(), mimetype="text/plain; version=0.0.4")

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    @app.errorhandler(400)
    def bad_request(exc: Any) -> tuple[str, int]:
        return f"bad request: {getattr(exc, 'description', '')}", 400

    return app
