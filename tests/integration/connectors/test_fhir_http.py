"""FHIR over real HTTP (uvicorn) into the session broker: Bundles become events; bad input is a 4xx outcome."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from connectors.fhir import build_app
from screener.bus import free_port
from screener.events import parse_event

pytestmark = pytest.mark.integration
DATA = Path(__file__).parents[2] / "data" / "fhir"


@pytest.fixture
def base_url(kafka_sink: Any) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_app(kafka_sink), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_post_synthea_format_bundle(base_url: str, topics: Any, reader: Any) -> None:
    body = (DATA / "synthea_format_transaction_bundle.json").read_bytes()
    resp = httpx.post(f"{base_url}/", content=body, headers={"content-type": "application/fhir+json"})
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["type"] == "transaction-response" and len(doc["entry"]) == 11
    records = reader(topics.events, expected=9)
    events = [parse_event(r.value) for r in records]
    assert len(events) == 9
    assert sorted(e.kind for e in events) == [
        "condition",
        "drug",
        "measurement",
        "measurement",
        "measurement",
        "observation",
        "person",
        "procedure",
        "visit",
    ]
    assert {r.key for r in records} == {b"5cbc121b-cd71-4428-b8b7-31e53eba8184"}


def test_post_single_resource_to_type_endpoint(base_url: str, topics: Any, reader: Any) -> None:
    obs = json.loads((DATA / "bulk_export.ndjson").read_text().splitlines()[1])
    resp = httpx.post(f"{base_url}/Observation", json=obs)
    assert resp.status_code == 200 and resp.json()["resourceType"] == "OperationOutcome"
    assert len(reader(topics.events, expected=1)) == 1


def test_bad_resource_is_422_operation_outcome_and_dead_lettered(base_url: str, topics: Any, reader: Any) -> None:
    bad = {
        "resourceType": "Bundle",
        "type": "transaction",  # atomic: one bad entry rejects the whole Bundle
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "eGFR"},
                    "subject": {"reference": "Patient/1"},
                    "valueQuantity": {"value": "41"},
                }
            }
        ],
    }
    resp = httpx.post(f"{base_url}/", json=bad)
    assert resp.status_code == 422
    issue = resp.json()["issue"][0]
    assert issue["severity"] == "error" and issue["expression"] == ["Bundle.entry[0].resource.valueQuantity.value"]
    assert "Observation" in issue["diagnostics"]
    [letter] = [json.loads(r.value) for r in reader(topics.dlq, expected=1)]
    assert letter["source"] == "fhir" and json.loads(letter["payload"]) == bad
    assert letter["reason"].startswith("422: Observation at Bundle.entry[0]")
    assert reader(topics.events, expected=0, timeout=1) == []


def test_batch_refuses_only_the_bad_entry(base_url: str, topics: Any, reader: Any) -> None:
    good = json.loads((DATA / "bulk_export.ndjson").read_text().splitlines()[1])
    bad = {**good, "id": "bad-1", "valueQuantity": {"value": "41"}}
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": bad}, {"resource": good}]}
    resp = httpx.post(f"{base_url}/", json=batch)
    assert resp.status_code == 200
    statuses = [e["response"]["status"] for e in resp.json()["entry"]]
    assert statuses == ["422 Rejected", "201 Created"]
    [letter] = [json.loads(r.value) for r in reader(topics.dlq, expected=1)]
    assert json.loads(letter["payload"]) == bad and "Bundle.entry[0].resource.valueQuantity.value" in letter["position"]
    assert len(reader(topics.events, expected=1)) == 1


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        (b"{not json", "application/fhir+json", 400),
        (b"[]", "application/json", 400),
        (b'{"resourceType": "Claim"}', "application/json", 422),
        (b"<Patient/>", "application/fhir+xml", 415),
    ],
)
def test_other_errors(base_url: str, body: bytes, ctype: str, status: int) -> None:
    resp = httpx.post(f"{base_url}/", content=body, headers={"content-type": ctype})
    assert resp.status_code == status
    assert resp.json()["resourceType"] == "OperationOutcome"


def test_wrong_type_for_url_is_400(base_url: str) -> None:
    resp = httpx.post(f"{base_url}/Patient", json={"resourceType": "Observation"})
    assert resp.status_code == 400 and "Patient" in resp.json()["issue"][0]["diagnostics"]


def test_capability_statement(base_url: str) -> None:
    doc = httpx.get(f"{base_url}/metadata").json()
    assert doc["fhirVersion"] == "4.0.1"
    assert {r["type"] for r in doc["rest"][0]["resource"]} >= {"Patient", "Observation", "Encounter"}


def test_synthetic_fhir_feed_posts_bundles(base_url: str, topics: Any, reader: Any) -> None:
    from click.testing import CliRunner

    from screener.cli import main

    result = CliRunner().invoke(
        main,
        [
            "connect",
            "synthetic",
            "--patients",
            "3",
            "--seed",
            "4",
            "--format",
            "fhir",
            "--now",
            "2026-06-01T00:00:00Z",
            "--target",
            base_url,
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("3 fhir records sent, 0 rejected")
    from datetime import UTC, datetime

    from connectors.fhir import parse_payload
    from connectors.synthetic import population

    expected = sum(
        len(parse_payload(population.to_fhir(evs)).events)
        for evs in population.generate(3, seed=4, now=datetime(2026, 6, 1, tzinfo=UTC))
    )
    events = [parse_event(r.value) for r in reader(topics.events, expected=expected)]
    assert len(events) == expected
    assert sum(e.kind == "person" for e in events) == 3 and len({e.patient_id for e in events}) == 3
