"""The embedded broker really speaks Kafka: produce, group-consume and commit through kafka-python."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer

from screener.bus import EmbeddedBroker, ensure_topics

pytestmark = pytest.mark.integration


def test_produce_and_consume_in_a_group(broker: EmbeddedBroker, unique_name: Any) -> None:
    topic = unique_name("bus")
    ensure_topics(broker.bootstrap, {topic: 2})
    ensure_topics(broker.bootstrap, {topic: 2})  # idempotent
    # tansu answers kafka-python 2.3's InitProducerId with an error, so no idempotence on the embedded broker;
    # event_id dedupe and unique matches keep effects exactly-once anyway.
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", max_in_flight_requests_per_connection=1)
    for i in range(20):
        producer.send(topic, key=f"P{i % 5}".encode(), value=f"v{i}".encode())
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=unique_name("g"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    seen: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(seen) < 20 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            seen.extend(r.value for r in records)
    consumer.commit()
    consumer.close()
    assert sorted(seen) == sorted(f"v{i}".encode() for i in range(20))


def test_stopped_broker_refuses_connections() -> None:
    import socket

    b = EmbeddedBroker().start()
    port = b.port
    b.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
