"""Fixtures for connector integration tests: per-test topics on the session broker, a sink, a reader."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from screener.bus import ensure_topics
from screener.sources.kafka import KafkaSink


@dataclass
class Topics:
    events: str
    dlq: str


@pytest.fixture
def topics(broker: Any, unique_name: Any) -> Topics:
    t = Topics(unique_name("ehr.events"), unique_name("ehr.events.dlq"))
    ensure_topics(broker.bootstrap, {t.events: 2, t.dlq: 1})
    return t


@pytest.fixture
def kafka_sink(broker: Any, topics: Topics) -> Iterator[KafkaSink]:
    # idempotent=False: tansu 0.6 (memory storage) rejects idempotent produce requests; see KafkaSink.
    sink = KafkaSink(
        broker.bootstrap, connector="test", events_topic=topics.events, dlq_topic=topics.dlq, idempotent=False
    )
    yield sink
    sink.close()


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
    """Every record of ``topic`` from the beginning (no consumer group), waiting until ``expected`` arrived."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    try:
        parts = None
        deadline = time.monotonic() + timeout
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                time.sleep(0.1)
        assert parts, f"topic {topic} has no partitions"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=100_000).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def dlq_docs(records: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]


@pytest.fixture
def reader(broker: Any) -> Any:
    """``reader(topic, expected, timeout=30)`` -> the topic's records (see :func:`read_topic`)."""

    def _read(topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
        return read_topic(broker.bootstrap, topic, expected, timeout)

    return _read
