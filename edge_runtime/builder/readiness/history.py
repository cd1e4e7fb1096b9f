"""Catalogue change history for the change-rate check: a ``date,sku,change`` CSV, or the difference between
the previous bundle's manifest and this catalogue over the time since it was built."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from edge_runtime.errors import InputError
from edge_runtime.types import SkuInfo

DAYS_PER_MONTH = 365.25 / 12
CHANGE_KINDS = ("added", "changed", "removed")


@dataclass(frozen=True)
class ChangeHistory:
    """Catalogue changes over a period: SKU codes per kind, the span in months and where it came from."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    months: float
    source: str


def _month_span(first: date, last: date) -> int:
    """Calendar months covered, both ends included: a year of monthly entries is 12 months, not 11."""
    return (last.year - first.year) * 12 + (last.month - first.month) + 1


def read_history(path: Path) -> ChangeHistory:
    """A CSV ``date,sku,change`` (ISO dates; change in added/changed/removed); every bad row is reported."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [(c or "").strip() for c in (reader.fieldnames or [])]
            missing = [c for c in ("date", "sku", "change") if c not in columns]
            if missing:
                raise InputError(
                    f"{path}: history is missing column(s) {', '.join(missing)}",
                    hint="the header must be date,sku,change",
                )
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except OSError as exc:
        raise InputError(f"{path}: cannot read the history ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: not a readable CSV ({exc})") from None
    kinds: dict[str, list[str]] = {k: [] for k in CHANGE_KINDS}
    dates: list[date] = []
    problems = []
    for line, row in enumerate(rows, start=2):
        try:
            when = date.fromisoformat(row.get("date", "")[:10])
        except ValueError:
            problems.append(f"line {line}: date {row.get('date')!r} is not YYYY-MM-DD")
            continue
        change = row.get("change", "").lower()
        if change not in kinds:
            problems.append(f"line {line}: change {row.get('change')!r} is not one of {', '.join(CHANGE_KINDS)}")
            continue
        if not row.get("sku"):
            problems.append(f"line {line}: empty sku")
            continue
        kinds[change].append(row["sku"])
        dates.append(when)
    if problems:
        raise InputError(f"{path}: {len(problems)} bad history row(s)", hint="; ".join(problems[:10]))
    if not dates:
        raise InputError(f"{path}: the history has no rows", hint="leave --history out when there is no history")
    return ChangeHistory(
        added=tuple(kinds["added"]),
        changed=tuple(kinds["changed"]),
        removed=tuple(kinds["removed"]),
        months=float(_month_span(min(dates), max(dates))),
        source=path.name,
    )


def manifest_skus(manifest: dict[str, Any]) -> dict[str, tuple[str, str]] | None:
    """SKU code -> (name, group) from a manifest: ``catalogue.sku_codes``, a ``catalogue.skus`` list, or
    ``labels`` entries as in labels.json. None when the manifest lists no SKUs (older manifests hold a count)."""
    cat = manifest.get("catalogue") or {}
    for entries in (cat.get("sku_codes"), cat.get("skus"), manifest.get("labels")):
        if not isinstance(entries, list):
            continue
        out: dict[str, tuple[str, str]] = {}
        for e in entries:
            if isinstance(e, str):
                out[e] = ("", "")
            elif isinstance(e, dict) and "sku" in e:
                out[str(e["sku"])] = (str(e.get("name", "")), str(e.get("group", "")))
        return out
    return None


def history_from_manifest(
    previous: dict[str, Any], skus: Sequence[SkuInfo], now: datetime | None = None
) -> ChangeHistory | None:
    """Changes between a previous bundle's SKU list and this catalogue, over the time since it was built.

    A SKU counts as changed when the previous manifest recorded a different name or group for it. The span is
    at least one month, so a rebuild on the same day does not turn one new SKU into an infinite rate.
    """
    before = manifest_skus(previous)
    created = previous.get("created")
    if before is None or not created:
        return None
    try:
        then = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        return None
    now = now or datetime.now(timezone.utc)
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    months = max(1.0, (now - then).total_seconds() / 86400.0 / DAYS_PER_MONTH)
    current = {s.code: (s.name, s.group) for s in skus}
    changed = [c for c in current if c in before and any(before[c]) and before[c] != current[c]]
    return ChangeHistory(
        added=tuple(c for c in current if c not in before),
        changed=tuple(changed),
        removed=tuple(c for c in before if c not in current),
        months=months,
        source=f"previous manifest ({str(created)[:10]})",
    )
