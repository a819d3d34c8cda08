"""The synthetic connector end to end: canonical to the broker, and HL7 v2 over MLLP through the hl7v2 server."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from connectors.hl7v2 import MLLPServer, ServerThread
from screener.cli import main
from screener.events import parse_event

pytestmark = pytest.mark.integration
NOW = "2026-06-01T00:00:00Z"


def test_canonical_feed_to_the_broker(broker: Any, topics: Any, reader: Any) -> None:
    result = CliRunner().invoke(
        main,
        [
            "connect",
            "synthetic",
            "--patients",
            "5",
            "--seed",
            "3",
            "--now",
            NOW,
            "--bootstrap",
            broker.bootstrap,
            "--topic",
            topics.events,
            "--no-idempotence",
        ],
    )
    assert result.exit_code == 0, result.output
    sent = int(result.output.split("patients, ")[1].split()[0])
    records = reader(topics.events, expected=sent)
    assert len(records) == sent
    events = [parse_event(r.value) for r in records]
    assert sum(e.kind == "person" for e in events) == 5
    assert all(r.key == e.patient_id.encode() for r, e in zip(records, events, strict=True))


def test_hl7v2_feed_over_mllp(kafka_sink: Any, topics: Any, reader: Any) -> None:
    with ServerThread(MLLPServer(kafka_sink, host="127.0.0.1", port=0)) as srv:
        result = CliRunner().invoke(
            main,
            [
                "connect",
                "synthetic",
                "--patients",
                "4",
                "--seed",
                "3",
                "--now",
                NOW,
                "--format",
                "hl7v2",
                "--target",
                f"127.0.0.1:{srv.port}",
            ],
        )
        assert result.exit_code == 0, result.output
        assert result.output.strip().endswith("0 rejected")
        messages = int(result.output.split("patients, ")[1].split()[0])
    # every message yields at least one event (ORU results also add abnormal-flag observations)
    events = [parse_event(r.value) for r in reader(topics.events, expected=messages)]
    assert len(events) >= messages
    assert {e.kind for e in events} >= {"person", "measurement"}
    assert len({e.patient_id for e in events}) == 4
