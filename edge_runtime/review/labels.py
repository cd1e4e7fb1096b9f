"""Reviewer actions on stored events: confirm a candidate, pick another SKU, a new product, not a product, skip,
and undo of a reviewer's last action. Every label records who and when; every action is kept (``actions``) with
the events' previous state, which is what undo restores.

``apply_label`` returns the events it labelled, with their devices, so the caller can send each device its
``edge.feedback/1``. Feedback already published is not taken back by an undo (the device has counted it); the
store and the export are.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa

from edge_runtime.review import schema as t
from edge_runtime.review.store import ReviewStore

__all__ = ["LABEL_KINDS", "PRODUCT_LABELS", "LabelError", "Labelled", "apply_label", "undo_last"]

LABEL_KINDS: Final = ("confirm", "other", "new", "not_product", "skip")
PRODUCT_LABELS: Final = ("confirm", "other", "new")  # labels that name a SKU: feedback and export
SKU_CODE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a folder name on every filesystem


class LabelError(ValueError):
    """A label the store refuses; ``reason`` is the metric label (``unknown_event``, ``invalid_sku``, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Labelled:
    action_id: int
    kind: str
    sku: str | None
    events: list[tuple[str, str]]  # (event id, device id) of every event labelled


def apply_label(
    store: ReviewStore,
    event_ids: list[str],
    kind: str,
    user: str,
    *,
    sku: str | None = None,
    name: str | None = None,
    group: str | None = None,
    now: float | None = None,
) -> Labelled:
    """Label the pending events among ``event_ids`` (one transaction); LabelError for anything the store refuses."""
    if kind not in LABEL_KINDS:
        raise LabelError("invalid_label", f"unknown action {kind!r}; one of {', '.join(LABEL_KINDS)}")
    ids = list(dict.fromkeys(i for i in event_ids if i))[:10_000]
    if not ids:
        raise LabelError("unknown_event", "no event named")
    when = float(now if now is not None else time.time())
    e = t.events
    with store.engine.begin() as conn:
        rows = conn.execute(
            sa.select(e.c.id, e.c.device_id, e.c.label, e.c.skipped_at, e.c.sku, e.c.nearest).where(e.c.id.in_(ids))
        ).all()
        if len(rows) < len(ids):
            missing = sorted(set(ids) - {r.id for r in rows})
            raise LabelError("unknown_event", f"no such event: {', '.join(m[:40] for m in missing[:3])}")
        pending = [r for r in rows if r.label is None]
        if not pending:
            raise LabelError("already_labelled", "every event named is labelled already (reload the page)")
        created = False
        if kind == "confirm":
            candidates = {c for r in pending for c, _ in json.loads(r.nearest)} | {r.sku for r in pending if r.sku}
            if sku not in candidates:
                raise LabelError("invalid_sku", f"{sku!r} is not one of the device's candidates")
        elif kind == "other":
            if sku is None or conn.execute(sa.select(t.skus.c.code).where(t.skus.c.code == sku)).first() is None:
                raise LabelError("invalid_sku", f"{sku!r} is not a known SKU (search by code or name)")
        elif kind == "new":
            if sku is None or not SKU_CODE.match(sku):
                raise LabelError("invalid_sku", "a new product's code is 1-128 letters, digits, '.', '_' or '-'")
            known = conn.execute(sa.select(t.skus).where(t.skus.c.code == sku)).first()
            if known is None:
                conn.execute(
                    sa.insert(t.skus).values(
                        code=sku,
                        name=(name or sku).strip()[:256] or sku,
                        group_name=(group or "New").strip()[:256] or "New",
                        added=True,
                        created_by=user,
                        created_at=when,
                    )
                )
                created = True
        else:
            sku = None
        previous = {r.id: {"label": r.label, "skipped_at": r.skipped_at} for r in pending}
        result = conn.execute(
            sa.insert(t.actions).values(
                user=user,
                at=when,
                kind=kind,
                sku=sku,
                event_ids=json.dumps([r.id for r in pending]),
                previous=json.dumps({"events": previous, "created_sku": created}),
                undone=False,
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        action_id = int(key[0])
        chosen = e.c.id.in_([r.id for r in pending])
        if kind == "skip":
            conn.execute(sa.update(e).where(chosen).values(skipped_at=when, action_id=action_id))
        else:
            conn.execute(
                sa.update(e)
                .where(chosen)
                .values(label=kind, label_sku=sku, labelled_by=user, labelled_at=when, action_id=action_id)
            )
    return Labelled(action_id, kind, sku, [(r.id, r.device_id) for r in pending])


def undo_last(store: ReviewStore, user: str) -> Labelled | None:
    """Undo ``user``'s last action that is not undone yet; None when there is none."""
    a, e = t.actions, t.events
    with store.engine.begin() as conn:
        row = conn.execute(
            sa.select(a).where((a.c.user == user) & a.c.undone.is_(False)).order_by(a.c.id.desc()).limit(1)
        ).first()
        if row is None:
            return None
        previous = json.loads(row.previous)
        for event_id, state in previous["events"].items():
            conn.execute(
                sa.update(e)
                .where((e.c.id == event_id) & (e.c.action_id == row.id))
                .values(
                    label=state["label"],
                    label_sku=None,
                    labelled_by=None,
                    labelled_at=None,
                    skipped_at=state["skipped_at"],
                    action_id=None,
                )
            )
        if previous.get("created_sku") and row.sku:
            still_used = conn.execute(sa.select(e.c.id).where(e.c.label_sku == row.sku).limit(1)).first()
            if still_used is None:
                conn.execute(sa.delete(t.skus).where((t.skus.c.code == row.sku) & t.skus.c.added.is_(True)))
        conn.execute(sa.update(a).where(a.c.id == row.id).values(undone=True))
        devices = dict(conn.execute(sa.select(e.c.id, e.c.device_id).where(e.c.id.in_(list(previous["events"])))).all())
    return Labelled(row.id, row.kind, row.sku, [(i, str(devices.get(i, ""))) for i in previous["events"]])
