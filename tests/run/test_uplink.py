"""The uplink cap's token bucket and accounting, on a fake clock (test_mqtt.py paces a real broker with it)."""

from __future__ import annotations

import pytest

from edge_runtime.run.uplink import UPLINK_BURST_S, TokenBucket, Uplink, uplink_cost
from edge_runtime.types import OutMessage


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_paces_bursts_and_lets_big_messages_through_in_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1000, burst=500, clock=clock)
    assert bucket.wait_s(500) == 0.0  # starts full: one burst goes at once
    bucket.take(400)
    assert bucket.wait_s(100) == 0.0
    assert bucket.wait_s(300) == pytest.approx(0.2)  # 100 in the bucket, 200 more at 1000 B/s
    clock.now += 0.2
    assert bucket.wait_s(300) == 0.0
    bucket.take(300)
    clock.now += 10.0
    assert bucket.tokens == 500  # refill stops at the burst: idle time does not bank bandwidth

    # Larger than the burst: it goes when the bucket is full, and its debt holds back what follows.
    assert bucket.wait_s(2500) == 0.0
    bucket.take(2500)
    assert bucket.tokens == -2000
    assert bucket.wait_s(100) == pytest.approx(2.1)
    clock.now += 2.1
    assert bucket.wait_s(100) == 0.0

    # Over a long run the average is the rate: 1000 messages of 50 B need 50 s at 1000 B/s, minus the burst.
    clock.now += 10.0
    start, sent = clock.now, 0
    for _ in range(1000):
        clock.now += bucket.wait_s(50)
        bucket.take(50)
        sent += 50
    assert clock.now - start == pytest.approx((sent - 500) / 1000, abs=1e-6)

    clock.now -= 5.0  # a clock stepping back neither drains nor fills the bucket
    assert bucket.tokens == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)


def test_uplink_counts_bytes_waits_and_the_wait_in_progress() -> None:
    clock = FakeClock()
    unlimited = Uplink(None, clock=clock)
    assert not unlimited.limited and unlimited.wait_needed_s(10**9) == 0.0
    unlimited.spend(123)
    assert unlimited.bytes_sent == 123 and unlimited.cap is None

    capped = Uplink(1000, clock=clock)  # default burst: UPLINK_BURST_S of the cap
    assert capped.limited and capped.cap == 1000
    assert capped.wait_needed_s(round(1000 * UPLINK_BURST_S)) == 0.0
    capped.spend(1500)  # a message larger than the burst goes when full, in debt
    assert capped.bytes_sent == 1500
    assert capped.wait_needed_s(100) == pytest.approx(0.6)  # 500 of debt + 100 at 1000 B/s
    capped.begin_wait()
    clock.now += 0.25
    capped.begin_wait()  # still the same wait: counted once
    assert capped.waiting and capped.waits == 1 and capped.wait_s() == pytest.approx(0.25)
    clock.now += 0.35
    capped.end_wait()
    assert not capped.waiting and capped.wait_s() == pytest.approx(0.6)
    assert capped.wait_needed_s(100) == 0.0
    capped.end_wait()  # no wait in progress: nothing added
    assert capped.wait_s() == pytest.approx(0.6)
    assert Uplink(1000, burst=50, clock=clock).wait_needed_s(100) == 0.0  # an explicit burst, full at start


def test_uplink_cost_is_payload_and_topic_bytes() -> None:
    msg = OutMessage(id="m1", topic="edge/cämera/results", payload=b"x" * 40, kind="result", created=0.0)
    assert uplink_cost(msg) == 40 + len("edge/cämera/results".encode())
