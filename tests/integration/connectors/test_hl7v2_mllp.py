"""HL7 v2 over a real MLLP socket into the session broker: AA only after Kafka acknowledged; AE to the DLQ."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from connectors.hl7v2 import MLLPClient, MLLPServer, ServerThread
from screener.events import parse_event

pytestmark = pytest.mark.integration

GOOD = (
    "MSH|^~\\&|LAB|RR8|SCREENER|RR8|20260501100000||ORU^R01|CTRL-{n}|P|2.5\r"
    "PID|1||H{n}^^^RR8^MR~9434765919^^^NHS^NH||Ünal^Zoë||19610302|F\r"
    "OBR|1|PL{n}|FIL{n}|U&E|||20260501083000\r"
    "OBX|1|NM|EGFR^eGFR^L||41|mL/min/1.73m2|>60|L|||F|||20260501090000\r"
)
BAD = "MSH|^~\\&|LAB|RR8|SCREENER|RR8|20260501100000||ADT^A01|CTRL-BAD|P|2.5\rPID|1||H1^^^RR8^MR||X||1961-03-02|F\r"


class TimedSink:
    """Wraps the Kafka sink and records when publish() returned (i.e. when the broker acknowledged)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.acked_at: list[float] = []

    def publish(self, events: Any) -> None:
        self.inner.publish(events)
        self.acked_at.append(time.monotonic())

    def dead_letter(self, *args: Any) -> None:
        self.inner.dead_letter(*args)


@pytest.fixture
def server(kafka_sink: Any) -> Iterator[tuple[MLLPServer, TimedSink]]:
    sink = TimedSink(kafka_sink)
    with ServerThread(MLLPServer(sink, host="127.0.0.1", port=0)) as srv:
        yield srv, sink


def send(port: int, payload: str | bytes) -> tuple[str, float]:
    """Send one message; return the ACK text and the time it arrived."""
    with MLLPClient("127.0.0.1", port) as client:
        return client.send(payload), time.monotonic()


def test_message_is_on_the_topic_before_the_ack(server: Any, topics: Any, reader: Any) -> None:
    srv, sink = server
    ack, ack_at = send(srv.port, GOOD.format(n=1))
    assert "MSA|AA|CTRL-1" in ack
    assert sink.acked_at and sink.acked_at[0] <= ack_at  # the broker acked before the ACK left
    records = reader(topics.events, expected=2)
    assert len(records) == 2  # the measurement and its abnormal-flag observation
    assert all(r.offset >= 0 and r.timestamp > 0 for r in records)
    events = [parse_event(r.value) for r in records]
    assert {e.kind for e in events} == {"measurement", "observation"}
    assert {r.key for r in records} == {b"H1"}  # keyed by the hospital patient id
    assert b"9434765919" not in b"".join(r.value for r in records)  # NHS number only in person events


def test_malformed_message_gets_ae_and_lands_on_the_dlq(server: Any, topics: Any, reader: Any) -> None:
    srv, _sink = server
    ack, _ = send(srv.port, BAD)
    segments = ack.split("\r")
    assert segments[1].startswith("MSA|AE|CTRL-BAD")
    assert segments[2].startswith("ERR||PID^1^7|102^Data type error^HL70357|E")
    [letter] = [json.loads(r.value) for r in reader(topics.dlq, expected=1)]
    assert letter["source"] == "hl7v2" and letter["payload"] == BAD
    assert "PID-1-7" in letter["reason"] and "control_id=CTRL-BAD" in letter["position"]
    assert reader(topics.events, expected=0, timeout=1) == []


def test_garbage_bytes_get_ae_and_base64_dead_letter(server: Any, topics: Any, reader: Any) -> None:
    srv, _sink = server
    ack, _ = send(srv.port, b"\xff\xfe\x00 not hl7 at all")
    assert "|AE|" in ack
    [letter] = [json.loads(r.value) for r in reader(topics.dlq, expected=1)]
    assert letter["payload_encoding"] in ("utf-8", "base64") and letter["reason"].startswith("AE:")


def test_unsupported_type_gets_ar(server: Any, topics: Any, reader: Any) -> None:
    srv, _sink = server
    ack, _ = send(srv.port, "MSH|^~\\&|A|B|C|D|20260501||SIU^S12|S1|P|2.5\rPID|1||H1\r")
    assert "MSA|AR|S1" in ack and "200^Unsupported message type" in ack
    assert len(reader(topics.dlq, expected=1)) == 1


def test_several_messages_on_one_connection_in_order(server: Any, topics: Any, reader: Any) -> None:
    srv, _sink = server
    with MLLPClient("127.0.0.1", srv.port) as client:
        for n in range(5):
            assert f"MSA|AA|CTRL-{n}" in client.send(GOOD.format(n=n))
    assert len(reader(topics.events, expected=10)) == 10
