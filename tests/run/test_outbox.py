"""The durable outbox on real SQLite files: order, byte cap, TTL, restart, corruption, full disk."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from edge_runtime.profile import load_profile
from edge_runtime.run.outbox import (
    DROP_CLOSED,
    DROP_DISK_FULL,
    DROP_FULL,
    DROP_OVERSIZE,
    DROP_TTL,
    OUTBOX_FILENAME,
    Outbox,
    OutboxError,
    message_size,
)
from edge_runtime.types import MessageKind, OutMessage

TOPIC = "edge/dev/x"  # 10 bytes


def msg(n: int, kind: MessageKind = "result", size: int = 100, created: float = 0.0) -> OutMessage:
    # Fixed-width ids so every message of the same payload size counts the same against the cap.
    return OutMessage(id=f"{kind[0]}{n:04d}", topic=TOPIC, payload=b"x" * size, kind=kind, created=created)


UNIT = message_size(msg(0))  # 100 + 10 + 5


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / OUTBOX_FILENAME


def test_put_next_ack_in_order(db: Path) -> None:
    with Outbox(db, max_bytes=1 << 20, ttl_s=3600) as box:
        for i in range(5):
            assert box.put(msg(i))
        assert [m.id for m in box.next_batch(10)] == ["r0000", "r0001", "r0002", "r0003", "r0004"]
        assert [m.id for m in box.next_batch(2)] == ["r0000", "r0001"]
        first = box.next_batch(1)[0]
        assert first == msg(0)  # every field round-trips

        box.mark_inflight(["r0000", "r0001"])
        assert [m.id for m in box.next_batch(2)] == ["r0002", "r0003"]  # in flight is not handed out twice
        box.ack("r0000")
        box.release(["r0001"])
        assert [m.id for m in box.next_batch(10)] == ["r0001", "r0002", "r0003", "r0004"]
        stats = box.stats()
        assert (stats.depth, stats.bytes, stats.inflight, stats.drops) == (4, 4 * UNIT, 0, {})

        assert box.put(msg(2))  # same id: already stored, stored once
        assert box.depth == 4
        box.ack("r0002")
        box.ack("r0002")  # a duplicate PUBACK is harmless
        box.ack("unknown")
        assert box.depth == 3


def test_byte_cap_drops_crops_first_then_heartbeats_then_results_never_status(db: Path) -> None:
    with Outbox(db, max_bytes=10 * UNIT, ttl_s=3600) as box:
        for i in range(4):
            assert box.put(msg(i, "crop"))
        for i in range(2):
            assert box.put(msg(i, "heartbeat"))
        for i in range(3):
            assert box.put(msg(i, "result"))
        assert box.put(msg(0, "status"))
        assert box.stats().bytes == 10 * UNIT  # exactly full, nothing dropped yet
        assert box.stats().drops == {}

        for i in range(3, 8):  # 5 new results: 4 crops go, then 1 heartbeat, oldest first
            assert box.put(msg(i, "result"))
        stats = box.stats()
        assert stats.drops == {(DROP_FULL, "crop"): 4, (DROP_FULL, "heartbeat"): 1}
        assert stats.dropped == {DROP_FULL: 5}
        assert stats.dropped_by_kind == {"crop": 4, "heartbeat": 1}
        ids = [m.id for m in box.next_batch(20)]
        assert ids == ["h0001", "r0000", "r0001", "r0002", "s0000", "r0003", "r0004", "r0005", "r0006", "r0007"]

        # A crop may only push out crops: with none left it is refused itself.
        assert not box.put(msg(9, "crop"))
        # A heartbeat may push out heartbeats.
        assert box.put(msg(5, "heartbeat"))
        assert box.stats().drops[(DROP_FULL, "heartbeat")] == 2
        # Heartbeats rank below results: a new result evicts the remaining heartbeat before any result,
        # then the oldest result.
        assert box.put(msg(8, "result"))
        assert box.put(msg(9, "result"))
        assert box.stats().drops == {(DROP_FULL, "crop"): 5, (DROP_FULL, "heartbeat"): 3, (DROP_FULL, "result"): 1}
        assert "r0000" not in {m.id for m in box.next_batch(20)}
        assert box.stats().bytes <= 10 * UNIT

        # In-flight messages are not evicted (they are about to be acked, not lost): the next oldest goes.
        box.mark_inflight(["r0001"])
        assert box.put(msg(10, "result"))
        box.release(["r0001"])
        kept = [m.id for m in box.next_batch(20)]
        assert kept[:2] == ["r0001", "s0000"]
        assert "r0002" not in kept


def test_status_is_never_evicted(db: Path) -> None:
    with Outbox(db, max_bytes=3 * UNIT, ttl_s=3600) as box:
        for i in range(3):
            assert box.put(msg(i, "status"))
        assert not box.put(msg(0, "result"))
        assert not box.put(msg(3, "status"))
        assert box.stats().drops == {(DROP_FULL, "result"): 1, (DROP_FULL, "status"): 1}
        assert [m.id for m in box.next_batch(5)] == ["s0000", "s0001", "s0002"]


def test_message_larger_than_the_cap_is_dropped_and_counted(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Outbox(db, max_bytes=2 * UNIT, ttl_s=3600) as box:
        assert box.put(msg(0, "crop"))
        with caplog.at_level(logging.WARNING, logger="edge_runtime.run.outbox"):
            assert not box.put(msg(1, "crop", size=3 * UNIT))
        assert box.stats().drops == {(DROP_OVERSIZE, "crop"): 1}
        assert box.depth == 1  # nothing was evicted for a message that could never fit
        assert "oversize" in caplog.text


def test_ttl_expiry(db: Path) -> None:
    clock = FakeClock(1000.0)
    with Outbox(db, max_bytes=1 << 20, ttl_s=100, clock=clock) as box:
        box.put(msg(0, created=910.0))
        box.put(msg(1, "crop", created=950.0))
        box.put(msg(2, created=999.0))
        assert box.expire() == 0
        clock.now = 1060.0
        assert box.expire() == 2
        assert [m.id for m in box.next_batch(5)] == ["r0002"]
        assert box.stats().drops == {(DROP_TTL, "result"): 1, (DROP_TTL, "crop"): 1}
        assert box.stats().bytes == UNIT


def test_messages_survive_restart_and_inflight_is_forgotten(db: Path) -> None:
    box = Outbox(db, max_bytes=1 << 20, ttl_s=3600)
    for i in range(3):
        box.put(msg(i, "crop" if i == 1 else "result", size=100 + i))
    box.mark_inflight(["r0000"])
    box.ack("r0002")
    box.close()
    assert not box.put(msg(9))  # after close: refused and counted, not an exception
    assert box.stats().drops == {(DROP_CLOSED, "result"): 1}

    again = Outbox(db, max_bytes=1 << 20, ttl_s=3600)
    try:
        batch = again.next_batch(10)
        assert [m.id for m in batch] == ["r0000", "c0001"]  # r0000 was in flight: pending again after restart
        assert batch[1] == msg(1, "crop", size=101)
        assert again.stats().depth == 2
        assert again.stats().bytes == message_size(msg(0)) + message_size(msg(1, "crop", size=101))
    finally:
        again.close()


def test_corrupt_database_is_moved_aside(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not an sqlite database " * 200)
    with caplog.at_level(logging.ERROR, logger="edge_runtime.run.outbox"), Outbox(db, 1 << 20, 3600) as box:
        assert box.put(msg(0))
        assert [m.id for m in box.next_batch(1)] == ["r0000"]
    aside = list(db.parent.glob(f"{OUTBOX_FILENAME}.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not an sqlite database")
    assert "corrupt" in caplog.text and str(aside[0]) in caplog.text


def test_damaged_pages_are_detected_at_open(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Outbox(db, 1 << 20, 3600) as box:
        for i in range(60):
            box.put(msg(i, size=2000))
    data = bytearray(db.read_bytes())
    assert len(data) > 16 * 4096
    data[5 * 4096 : 12 * 4096] = b"\xa5" * (7 * 4096)  # trash b-tree pages, keep the header valid
    db.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="edge_runtime.run.outbox"), Outbox(db, 1 << 20, 3600) as box:
        assert box.depth == 0
        assert box.put(msg(0))
    assert len(list(db.parent.glob(f"{OUTBOX_FILENAME}.corrupt-*"))) == 1


def test_newer_schema_is_moved_aside_not_misread(db: Path) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with Outbox(db, 1 << 20, 3600) as box:
        assert box.put(msg(0))
    assert len(list(db.parent.glob(f"{OUTBOX_FILENAME}.incompatible-*"))) == 1


def test_full_disk_drops_counts_logs_once_and_recovers(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    # max_page_count makes SQLite itself answer SQLITE_FULL ("database or disk is full"), exactly what
    # a full filesystem produces, without needing root to mount a tiny one.
    with caplog.at_level(logging.WARNING, logger="edge_runtime.run.outbox"):
        box = Outbox(db, max_bytes=1 << 30, ttl_s=3600, max_file_bytes=48 * 1024)
        stored = []
        failed = 0
        for i in range(200):
            if box.put(msg(i, size=1000)):
                stored.append(f"r{i:04d}")
            else:
                failed += 1
        assert stored and failed
        assert box.stats().drops == {(DROP_DISK_FULL, "result"): failed}
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, "one error per episode, not one per message"
        assert f"free space in {db.parent}" in errors[0].getMessage()

        for msg_id in stored:  # the broker acks: pages are freed and reused
            box.ack(msg_id)
        assert box.depth == 0
        assert box.put(msg(500, size=1000))
        assert "writes work again" in caplog.text
        assert [m.id for m in box.next_batch(5)] == ["r0500"]
        box.close()


def test_state_dir_that_cannot_exist_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutboxError, match="state directory"):
        Outbox(blocker / "sub" / OUTBOX_FILENAME, 1 << 20, 3600)


def test_concurrent_put_and_ack(db: Path) -> None:
    box = Outbox(db, max_bytes=1 << 24, ttl_s=3600)
    n_threads, per_thread = 4, 50
    done = threading.Event()
    acked: list[str] = []

    def producer(t: int) -> None:
        for i in range(per_thread):
            assert box.put(OutMessage(id=f"{t}-{i}", topic=TOPIC, payload=b"p" * 64, kind="result", created=0.0))

    def consumer() -> None:
        while not done.is_set() or box.depth:
            batch = box.next_batch(16)
            if not batch:
                done.wait(0.001)
            box.mark_inflight(m.id for m in batch)
            for m in batch:
                box.ack(m.id)
                acked.append(m.id)

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(n_threads)]
    ack_thread = threading.Thread(target=consumer)
    ack_thread.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    done.set()
    ack_thread.join(30)
    assert sorted(acked) == sorted(f"{t}-{i}" for t in range(n_threads) for i in range(per_thread))
    assert box.stats().depth == 0 and box.stats().bytes == 0
    box.close()


def test_from_profile_uses_the_outbox_section(tmp_path: Path) -> None:
    profile = load_profile("dev-cpu")
    with Outbox.from_profile(profile, tmp_path) as box:
        assert box.path == tmp_path / OUTBOX_FILENAME
        assert box.max_bytes == int(profile.outbox.max_mib * 1024 * 1024)


def test_next_batch_can_ask_for_some_kinds_only(db: Path) -> None:
    # What the MQTT publisher's sender reads while the uplink cap holds crops back.
    with Outbox(db, max_bytes=1 << 20, ttl_s=3600) as box:
        for i, kind in enumerate(["crop", "result", "crop", "heartbeat"]):
            assert box.put(OutMessage(id=f"m{i}", topic="t", payload=b"x", kind=kind, created=time.time()))
        assert [m.id for m in box.next_batch(10, kinds=("result", "heartbeat"))] == ["m1", "m3"]
        assert [m.id for m in box.next_batch(10)] == ["m0", "m1", "m2", "m3"]


def _rows(db: Path) -> list[str]:
    """The ids physically in the file, read through a connection of its own (what a restart would find)."""
    conn = sqlite3.connect(str(db))
    try:
        return [r[0] for r in conn.execute("SELECT id FROM messages ORDER BY seq")]
    finally:
        conn.close()


def test_put_many_is_one_transaction_with_put_semantics(db: Path) -> None:
    # A frame's results and crops go in together: one commit (one fsync), each message what put() would say.
    cap = 4 * UNIT
    with Outbox(db, max_bytes=cap, ttl_s=3600) as box:
        assert box.put_many([msg(0, "crop"), msg(1), msg(2, "crop")]) == [True, True, True]
        assert _rows(db) == ["c0000", "r0001", "c0002"]  # committed: another connection sees them
        big = OutMessage(id="r9999", topic=TOPIC, payload=b"x" * (cap + 1), kind="result", created=0.0)
        # Over the cap a later message evicts the oldest crop, a duplicate id is stored once, an oversize one is
        # refused, and the rest of the batch still goes in.
        assert box.put_many([msg(3), msg(4), msg(1), big]) == [True, True, True, False]
        assert _rows(db) == ["r0001", "c0002", "r0003", "r0004"]
        stats = box.stats()
        assert (stats.depth, stats.bytes) == (4, cap)
        assert stats.drops == {(DROP_FULL, "crop"): 1, (DROP_OVERSIZE, "result"): 1}
        assert box.put_many([]) == []


def test_acks_hide_at_once_and_delete_with_the_next_write(db: Path) -> None:
    with Outbox(db, max_bytes=1 << 20, ttl_s=3600) as box:
        box.put_many([msg(i) for i in range(4)])
        box.mark_inflight(["r0000", "r0001"])
        box.ack("r0000")
        box.ack("r0001")
        # Gone for everyone asking the outbox, still in the file until a write deletes them.
        assert (box.depth, box.stats().bytes, box.stats().inflight, box.acks_pending) == (2, 2 * UNIT, 0, 2)
        assert [m.id for m in box.next_batch(10)] == ["r0002", "r0003"]
        assert _rows(db) == ["r0000", "r0001", "r0002", "r0003"]
        assert box.put(msg(4))  # the put's transaction deletes them
        assert _rows(db) == ["r0002", "r0003", "r0004"] and box.acks_pending == 0
        box.ack("r0002")
        box.sync_acks()  # the publisher's idle path: a transaction of its own
        assert _rows(db) == ["r0003", "r0004"]
        assert box._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again for the next put
        box.ack("r0003")
    assert _rows(db) == ["r0004"]  # close() deletes what is pending
    with Outbox(db, max_bytes=1 << 20, ttl_s=3600) as box:
        assert [m.id for m in box.next_batch(10)] == ["r0004"]


def test_acked_messages_are_not_counted_as_ttl_drops(db: Path) -> None:
    clock = FakeClock(1000.0)
    with Outbox(db, max_bytes=1 << 20, ttl_s=100, clock=clock) as box:
        box.put_many([msg(0, created=900.0), msg(1, created=900.0)])
        box.ack("r0000")
        clock.now = 1101.0
        assert box.expire() == 1
        assert box.stats().drops == {(DROP_TTL, "result"): 1}
        assert (box.depth, box.acks_pending, _rows(db)) == (0, 0, [])


def test_next_batch_from_memory_always_matches_the_file(db: Path) -> None:
    # next_batch hands recent messages over from memory (FRESH_MAX of them) and reads the file otherwise: under
    # any mix of puts, evictions, sends, acks, failed sends and a restart, it must say what the file says.
    import random

    rng = random.Random(7)
    kinds: list[MessageKind] = ["result", "crop", "heartbeat"]
    box = Outbox(db, max_bytes=60 * UNIT, ttl_s=3600)
    inflight: set[str] = set()
    acked: set[str] = set()
    kind_of: dict[str, str] = {}
    n = warm = 0
    try:
        for step in range(300):
            op = rng.random()
            if op < 0.35:
                batch = [msg(n + i, rng.choice(kinds)) for i in range(rng.randint(1, 3))]
                n += len(batch)
                kind_of.update((m.id, m.kind) for m in batch)
                box.put_many(batch)
            elif op < 0.6:
                got = box.next_batch(rng.randint(1, 8))
                chosen = [m.id for m in got if rng.random() < 0.8]
                box.mark_inflight(chosen)
                inflight.update(chosen)
            elif op < 0.85 and inflight:
                done = rng.choice(sorted(inflight))
                inflight.discard(done)
                box.ack(done)
                acked.add(done)
            elif op < 0.93 and inflight:
                back = rng.sample(sorted(inflight), k=min(len(inflight), 2))
                box.release(back)
                inflight.difference_update(back)
            elif op < 0.95:
                box.close()  # a restart: nothing is in flight any more
                box = Outbox(db, max_bytes=60 * UNIT, ttl_s=3600)
                inflight.clear()
            only = rng.choice([None, ("crop",), ("result", "heartbeat")])
            want = [i for i in _rows(db) if i not in inflight and i not in acked and (not only or kind_of[i] in only)]
            limit = rng.randint(1, 70)
            warm += box._cold() == 0  # served from memory
            assert [m.id for m in box.next_batch(limit, kinds=only)] == want[:limit], f"step {step}"
    finally:
        box.close()
    assert 30 < warm < 270, warm  # both paths were taken
