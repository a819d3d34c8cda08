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


def test_a_port_held_by_another_process_is_an_error_not_ready() -> None:
    """Failed before: start() connected to whatever listened on the port and called it ready."""
    import subprocess
    import sys

    from screener.bus import _listening_pids, free_port
    from screener.errors import ConnectorError

    port = free_port()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket,sys,time\n"
            f"s=socket.socket(); s.bind(('127.0.0.1',{port})); s.listen(); print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"ready"
        assert _listening_pids(port) == {holder.pid}
        started = time.monotonic()
        with pytest.raises(ConnectorError, match="already in use by another process"):
            EmbeddedBroker(port=port).start(timeout=10)
        assert time.monotonic() - started < 2
    finally:
        holder.kill()
        holder.wait()


def test_the_started_broker_is_the_one_answering(broker: EmbeddedBroker) -> None:
    from screener.bus import _listening_pids

    assert broker.pid is not None and _listening_pids(broker.port) == {broker.pid}
