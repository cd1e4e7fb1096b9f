"""The review store on SQLite without a broker: intake checks, once-only storage, grouping, labels and undo, export,
the CLI's stats, and edge-build's merge of several catalogues."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.builder.catalogue import load_catalogues
from edge_runtime.cli import review_main
from edge_runtime.errors import CatalogueError, UsageError
from edge_runtime.review.auth import Reviewers, add_reviewer
from edge_runtime.review.export import export_catalogue
from edge_runtime.review.intake import Rejected, parse_event
from edge_runtime.review.labels import LabelError, apply_label, undo_last
from edge_runtime.review.schema import open_engine
from edge_runtime.review.store import ReviewStore
from edge_runtime.types import SkuInfo


def _message(n: int, *, device: str = "d1", kind: str = "unknown", colour: int = 0) -> bytes:
    image = np.full((40, 40, 3), colour, np.uint8)
    image[:, : 10 + n % 20] = 255 - colour
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    body = {
        "schema": f"edge.{kind}/1",
        "id": f"ev{n}",
        "device_id": device,
        "frame_id": n,
        "source_ref": f"{n}.jpg",
        "ts": f"2026-12-01T10:{n % 60:02d}:00.000Z",
        "box": [0, 0, 40, 40],
        "ood_score": 0.7,
        "nearest": [["milk", 0.6], ["juice", 0.3]],
        "crop": {"format": "jpeg", "width": 40, "height": 40, "data": base64.b64encode(jpeg.tobytes()).decode()},
    }
    if kind == "verify":
        body.update(sku="milk", name="Milk", group="Dairy", score=0.6)
    return json.dumps(body).encode()


@pytest.fixture
def store(tmp_path: Path) -> ReviewStore:
    s = ReviewStore(open_engine(f"sqlite:///{tmp_path / 'r.db'}"), tmp_path / "data", group_threshold=0.9)
    s.set_bundle_skus([SkuInfo("milk", "Milk", "Dairy"), SkuInfo("juice", "Juice", "Drinks")])
    return s


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, np.float32)
    return a / np.linalg.norm(a)


def test_intake_refuses_each_bad_field_with_its_reason() -> None:
    good = json.loads(_message(1))
    cases = {
        "invalid_json": b"{",
        "not_object": b"[]",
        "missing_field": json.dumps({k: v for k, v in good.items() if k != "nearest"}).encode(),
        "unknown_schema": json.dumps({**good, "schema": "edge.unknown/2"}).encode(),
        "wrong_type": json.dumps({**good, "ood_score": "high"}).encode(),
        "bad_crop": json.dumps({**good, "crop": {"format": "jpeg", "data": base64.b64encode(b"GIF89a").decode()}}),
    }
    for reason, payload in cases.items():
        data = payload.encode() if isinstance(payload, str) else payload
        with pytest.raises(Rejected) as exc:
            parse_event("edge/d1/unknown", data)
        assert exc.value.reason == reason
    with pytest.raises(Rejected, match="bad_topic"):
        parse_event("edge/d1/results", _message(1))
    event = parse_event("edge/d1/unknown", _message(1))
    assert event.device_id == "d1" and event.jpeg is not None and event.nearest[0] == ("milk", 0.6)


def test_events_are_stored_once_and_look_alikes_share_a_group(store: ReviewStore) -> None:
    a, b, c = _unit([1, 0, 0]), _unit([0.95, 0.05, 0]), _unit([0, 1, 0])
    for n, vec in ((1, a), (2, b), (3, c)):
        assert store.add_event(parse_event("edge/d1/unknown", _message(n)), vec)
    assert not store.add_event(parse_event("edge/d1/unknown", _message(1)), a)  # a redelivery
    items = store.queue()
    assert sorted(len(i.events) for i in items) == [1, 2]
    assert store.stats()["events"] == 3 and store.stats()["groups"] == 1


def test_labels_record_who_and_undo_restores(store: ReviewStore, tmp_path: Path) -> None:
    for n in range(1, 4):
        store.add_event(parse_event("edge/d1/unknown", _message(n)), _unit([1, 0.01 * n, 0]))
    store.add_event(parse_event("edge/d2/verify", _message(9, device="d2", kind="verify")), None)
    done = apply_label(store, ["ev1", "ev2", "ev3"], "new", "ann", sku="oat-drink", name="Oat Drink", group="Drinks")
    assert sorted(done.events) == [("ev1", "d1"), ("ev2", "d1"), ("ev3", "d1")]
    assert {e.labelled_by for e in store.labelled()} == {"ann"}
    with pytest.raises(LabelError, match="labelled already"):
        apply_label(store, ["ev1"], "not_product", "ann")
    with pytest.raises(LabelError) as unknown:
        apply_label(store, ["nope"], "confirm", "ann", sku="milk")
    assert unknown.value.reason == "unknown_event"
    with pytest.raises(LabelError, match="candidates"):
        apply_label(store, ["ev9"], "confirm", "bob", sku="juice-xl")
    apply_label(store, ["ev9"], "confirm", "bob", sku="milk")
    result = export_catalogue(store, tmp_path / "delta")
    assert result.new_skus == ["oat-drink"] and result.images == 4 and result.skus == 2
    catalogue = load_catalogues([tmp_path / "delta" / "catalogue.csv"])
    assert {s.code: s.name for s in catalogue.skus} == {"oat-drink": "Oat Drink", "milk": "Milk"}
    undone = undo_last(store, "ann")
    assert undone is not None and undone.kind == "new"
    assert store.pending_count() == 3 and "oat-drink" not in [s[0] for s in store.all_skus()]
    assert undo_last(store, "ann") is None
    with pytest.raises(LabelError, match="letters, digits"):
        apply_label(store, ["ev1"], "new", "ann", sku="../etc")


def test_several_catalogues_merge_and_a_group_clash_is_refused(tmp_path: Path) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    for root, group, sku in (("a", "Dairy", "milk"), ("b", "Dairy", "milk"), ("b", "Drinks", "oat"), ("c", "X", "oat")):
        folder = tmp_path / root / group / sku
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{root}.jpg"), image)
    merged = load_catalogues([tmp_path / "a", tmp_path / "b"])
    assert [s.code for s in merged.skus] == ["milk", "oat"] and len(merged.items) == 3
    with pytest.raises(CatalogueError, match="disagree"):
        load_catalogues([tmp_path / "b", tmp_path / "c"])


def test_reviewers_file_holds_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "reviewers"
    add_reviewer(path, "ann", "long enough secret")
    assert "long enough secret" not in path.read_text() and path.stat().st_mode & 0o077 == 0
    reviewers = Reviewers.load(path)
    assert reviewers.check("ann", "long enough secret") and not reviewers.check("ann", "wrong")
    path.write_text("ann:plaintext\n")
    with pytest.raises(UsageError, match="user:hash"):
        Reviewers.load(path)


def test_stats_command_prints_json(store: ReviewStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store.add_event(parse_event("edge/d1/unknown", _message(1)), None)
    assert review_main(["-q", "stats", "--db", f"sqlite:///{tmp_path / 'r.db'}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events"] == 1 and report["pending"] == 1 and report["devices"]["d1"]["unknown"] == 1
    assert review_main(["-q", "stats", "--db", "mysql://x/y"]) == 2


def test_serve_refuses_bad_setup_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["-q", "serve", "--data", str(tmp_path / "data"), "--port", "0"]
    assert review_main([*base, "--db", f"sqlite:///{tmp_path / 'r.db'}", "--reviewers", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read the reviewers file" in err[0] and "edge-review passwd" in err[0]
    add_reviewer(tmp_path / "reviewers", "ann", "long enough secret")
    assert review_main([*base, "--db", "oracle://x", "--reviewers", str(tmp_path / "reviewers")]) == 2
    assert "unsupported database" in capsys.readouterr().err
