"""Export for the next build: the labelled crops as a catalogue delta that edge-build reads beside today's catalogue.

``OUT/GROUP/SKU/*.jpg`` holds every crop labelled as a SKU (confirmed, corrected or a new product), named by the
event id; ``OUT/catalogue.csv`` lists the same files with their names (``image,sku,group,name``: a folder tree
can only name a SKU by its code); ``OUT/history.csv`` has a ``date,sku,change`` row ``added`` per new product, for
``edge-build --history``. Then::

    edge-build --catalogue catalogue/ --catalogue OUT/catalogue.csv --history OUT/history.csv

An export replaces what an earlier export wrote in ``OUT`` (a crop evicted since is simply absent).
"""

from __future__ import annotations

import csv
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from edge_runtime.errors import UsageError
from edge_runtime.review import schema as t
from edge_runtime.review.store import ReviewStore

__all__ = ["ExportResult", "export_catalogue"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MANAGED = ("catalogue.csv", "history.csv")


@dataclass(frozen=True)
class ExportResult:
    out: Path
    images: int
    skus: int
    new_skus: list[str]
    missing_crops: int  # labelled events whose crop was evicted or never kept

    def to_json(self) -> dict[str, object]:
        return {
            "out": str(self.out),
            "images": self.images,
            "skus": self.skus,
            "new_skus": self.new_skus,
            "missing_crops": self.missing_crops,
            "catalogue_csv": str(self.out / "catalogue.csv"),
            "history_csv": str(self.out / "history.csv"),
        }


def _folder(name: str) -> str:
    return _UNSAFE.sub("-", name).strip(".-") or "Ungrouped"


def export_catalogue(store: ReviewStore, out: Path) -> ExportResult:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file", hint="name a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "catalogue.csv").is_file():
        raise UsageError(f"--out {out} holds other files", hint="name an empty folder or an earlier export's")
    if out.is_dir():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    info = {code: (name, group, added) for code, name, group, added in store.all_skus()}
    rows: list[tuple[str, str, str, str]] = []
    missing = 0
    for event in store.labelled():
        sku = event.label_sku
        if sku is None or sku not in info:
            continue
        data = store.crops.read(event.crop_sha) if event.crop_sha else None
        if data is None:
            missing += 1
            continue
        name, group, _ = info[sku]
        folder = out / _folder(group) / _folder(sku)
        folder.mkdir(parents=True, exist_ok=True)
        image = folder / f"{_folder(event.id)}.jpg"
        image.write_bytes(data)
        rows.append((image.relative_to(out).as_posix(), sku, group, name))
    with open(out / "catalogue.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "sku", "group", "name"])
        writer.writerows(rows)
    exported = {r[1] for r in rows}
    added = sorted(code for code, (_, _, is_new) in info.items() if is_new and code in exported)
    created = _creation_times(store)
    with open(out / "history.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["date", "sku", "change"])
        for code in added:
            day = datetime.fromtimestamp(created.get(code) or 0.0, tz=timezone.utc).date().isoformat()
            writer.writerow([day, code, "added"])
    return ExportResult(out=out, images=len(rows), skus=len(exported), new_skus=added, missing_crops=missing)


def _creation_times(store: ReviewStore) -> dict[str, float]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(t.skus.c.code, t.skus.c.created_at).where(t.skus.c.added.is_(True))).all()
    return {r.code: float(r.created_at or 0.0) for r in rows}
