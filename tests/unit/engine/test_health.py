"""Honest health (issue 17, engine side; each of these failed on the previous code): /healthz turns 503 with the
reason when the broker is unreachable or the group is lost, lag reads unknown (NaN) rather than 0 meanwhile,
and a SIGTERM stop is bounded in time."""

from __future__ import annotations

import json
import math
import signal
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from screener.alerts.memory import MemoryStore
from screener.clock import FixedClock
from screener.engine import Engine
from screener.engine.health import consumer_health, serve_health
from screener.metrics import Metrics
from screener.testing import InMemoryConsumer, InMemoryLog, InMemoryProducer


def make(settings: Any, mini: Any, tmp_path: Path) -> tuple[Engine, InMemoryConsumer, InMemoryLog]:
    (Path(settings.rules_dir) / "a.yaml").write_text("id=ADULT min_age=18")
    log = InMemoryLog(2)
    consumer = InMemoryConsumer(log)
    engine = Engine(
        settings.model_copy(update={"health_broker_timeout_s": 5.0}),
        MemoryStore(),
        metrics=Metrics(CollectorRegistry()),
        clock=FixedClock(datetime(2026, 6, 1, tzinfo=UTC)),
        consumer=consumer,
        producer=InMemoryProducer(log),
        loader=mini["loader"],
        screen=mini["screen"],
    ).start()
    return engine, consumer, log


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def lag(engine: Engine, partition: int) -> float | None:
    return engine.metrics.registry.get_sample_value(
        "screener_consumer_lag_records", {"topic": "ev", "partition": str(partition)}
    )


@pytest.mark.parametrize(
    ("flag", "reason"), [("broker_up", "broker unreachable"), ("group_held", "consumer group lost")]
)
def test_healthz_turns_503_with_the_reason_and_lag_is_unknown(
    settings: Any, mini: Any, tmp_path: Path, make_event: Any, flag: str, reason: str
) -> None:
    engine, consumer, log = make(settings, mini, tmp_path)
    server, url = serve_health(engine, engine.metrics.registry, "127.0.0.1", 0)
    try:
        log.publish("ev", make_event(kind="person", patient_id="P1", person={"birth_date": "1970-01-01"}, code=None))
        engine.step()
        assert get(f"{url}/healthz") == (200, {"status": "ok", "partitions": [0, 1]})
        assert lag(engine, 0) == 0.0
        setattr(consumer, flag, False)
        engine.clock.advance(1.0)  # type: ignore[attr-defined]
        engine.step()
        assert get(f"{url}/healthz")[0] == 200, "a short blip is not an outage"
        engine.clock.advance(5.0)  # type: ignore[attr-defined]
        engine.step()
        status, doc = get(f"{url}/healthz")
        assert status == 503 and doc["status"] == "unavailable" and reason in doc["reason"]
        value = lag(engine, 0)
        assert value is not None and math.isnan(value), "lag is unknown, not 0, while the broker is out of reach"
        assert engine.metrics.registry.get_sample_value("screener_engine_healthy") == 0
        setattr(consumer, flag, True)
        engine.step()
        assert get(f"{url}/healthz")[0] == 200 and lag(engine, 0) == 0.0
    finally:
        server.shutdown()


def test_kafka_consumer_health_reads_connections_and_coordinator() -> None:
    class Conn:
        def __init__(self, up: bool) -> None:
            self.up = up

        def connected(self) -> bool:
            return self.up

    class Coordinator:
        group_id = "g"

        def __init__(self, up: bool) -> None:
            self.up = up

        def connected(self) -> bool:
            return self.up

    class Client:
        def __init__(self, *conns: Conn) -> None:
            self._conns = dict(enumerate(conns))

    class KafkaLike:
        def __init__(self, conns: tuple[Conn, ...], coordinator: bool) -> None:
            self._client = Client(*conns)
            self._coordinator = Coordinator(coordinator)

    assert consumer_health(KafkaLike((Conn(False), Conn(True)), True)) == (True, None)
    ok, why = consumer_health(KafkaLike((Conn(False),), True))
    assert not ok and why is not None and why.startswith("broker unreachable")
    ok, why = consumer_health(KafkaLike((Conn(True),), False))
    assert not ok and why is not None and why.startswith("consumer group lost")


def test_sigterm_stop_is_bounded_when_the_engine_does_not_return() -> None:
    from screener.commands.service import _stop_on_signals

    stop, forced = threading.Event(), threading.Event()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        _stop_on_signals(stop, timeout_s=0.05, on_timeout=lambda _s: forced.set())
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        handler(signal.SIGTERM, None)
        assert stop.is_set()
        assert forced.wait(5), "a process still running after the stop timeout is ended"
    finally:
        signal.signal(signal.SIGTERM, previous)
