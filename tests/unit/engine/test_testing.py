"""The shipped fakes (screener.testing) and the clock's monotonic reading behave as the engine relies on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from screener.clock import FixedClock, SystemClock
from screener.engine import Consumer, Producer
from screener.testing import InMemoryConsumer, InMemoryLog, InMemoryProducer, Partition


def test_fixed_clock_steps_both_readings_and_set_moves_only_the_calendar() -> None:
    clock = FixedClock(datetime(2026, 1, 1, tzinfo=UTC))
    assert clock.monotonic() == 0.0
    clock.advance(1.5)
    assert clock.monotonic() == 1.5 and clock.now() == datetime(2026, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)
    clock.set(datetime(2020, 1, 1, tzinfo=UTC))  # back in calendar time: the interval timer does not go back
    assert clock.monotonic() == 1.5
    with pytest.raises(ValueError, match="non-negative"):
        clock.advance(timedelta(seconds=-1))
    system = SystemClock()
    assert system.monotonic() <= system.monotonic()


def test_in_memory_consumer_and_producer_satisfy_the_engine_protocols_and_record_first_fetches() -> None:
    log = InMemoryLog(partitions=2)
    consumer, producer = InMemoryConsumer(log), InMemoryProducer(log)
    assert isinstance(consumer, Consumer) and isinstance(producer, Producer)
    for _ in range(3):
        log.append("t", b"k", b"{}", partition=1)
    consumer.subscribe(["t"])
    got = consumer.poll()
    assert [r.offset for r in got[Partition("t", 1)]] == [0, 1, 2]
    consumer.seek(Partition("t", 1), 2)
    assert [r.offset for r in consumer.poll()[Partition("t", 1)]] == [2]
    assert consumer.fetched == {1: [0, 2]}  # partition 0 never had a record to fetch
    producer.send("out", key=b"a", value=b'{"x": 1}')
    assert log.values("out") == [{"x": 1}]
