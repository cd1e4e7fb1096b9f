"""The MQTT publisher's in-flight ledger without a broker: mids, early PUBACKs, resend cost, shutdown."""

from __future__ import annotations

from edge_runtime.run.mqtt_inflight import InflightLedger


def test_an_ack_after_registration_names_the_message_once() -> None:
    ledger = InflightLedger()
    ledger.add("m1", 120)
    assert len(ledger) == 1
    assert ledger.register(7, "m1") is False  # no PUBACK yet: remembered
    assert ledger.acked(7) == "m1"
    ledger.discard("m1")
    assert len(ledger) == 0
    # A second PUBACK for the same mid is not this message's any more: it is kept as an early ack for the mid's
    # next use, and never names m1 again.
    assert ledger.acked(7) is None
    assert ledger.register(7, "m2") is True


def test_an_ack_that_overtakes_its_registration_completes_at_registration() -> None:
    # paho's network thread processed the PUBACK before publish() returned the mid to the sender thread.
    ledger = InflightLedger()
    ledger.add("m1", 50)
    assert ledger.acked(3) is None  # unknown yet: kept
    assert ledger.register(3, "m1") is True  # the caller completes m1 now
    # The early ack was used up and m1 was not remembered: paho reusing mid 3 starts afresh.
    assert ledger.register(3, "m9") is False
    assert ledger.acked(3) == "m9"


def test_direct_publishes_are_tracked_by_mid_but_not_counted() -> None:
    ledger = InflightLedger()
    assert ledger.register(1, None) is False  # the retained status: not an outbox message
    assert len(ledger) == 0 and ledger.resend_bytes() == 0
    assert ledger.acked(1) is None
    assert ledger.register(1, "m1") is False  # its ack was consumed, not kept as an early one


def test_resend_cost_and_shutdown() -> None:
    ledger = InflightLedger()
    for i, cost in enumerate((100, 250, 7)):
        ledger.add(f"m{i}", cost)
    ledger.add("m1", 250)  # the same message again: counted once
    assert len(ledger) == 3 and ledger.resend_bytes() == 357
    ledger.discard("m0")
    ledger.discard("unknown")  # harmless
    assert ledger.resend_bytes() == 257
    assert sorted(ledger.take_all()) == ["m1", "m2"]
    assert len(ledger) == 0 and not ledger and ledger.take_all() == []
