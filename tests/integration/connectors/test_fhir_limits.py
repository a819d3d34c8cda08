"""FHIR endpoint limits and honest failures over real HTTP (uvicorn on loopback, in-memory sink).

Each test failed on the endpoint before: it read the whole body before its size check (a 200 MB POST took 13 s
and 452 MB), JSON nested 1,000 deep was a plain 500 with a traceback and no dead letter, a 415 was not
dead-lettered, /healthz did not exist, and with the broker down a POST hung for the producer's ~100 s of retries.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psutil
import pytest
import uvicorn

from connectors.fhir import build_app
from screener.bus import free_port
from screener.sources.base import MemorySink
from screener.sources.health import BrokerHealth

pytestmark = pytest.mark.integration
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1961-03-02", "gender": "female"}


@pytest.fixture
def endpoint() -> Iterator[Callable[..., str]]:
    """``endpoint(sink, **build_app options) -> base URL`` of a uvicorn server on a thread."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def _start(sink: Any, **options: Any) -> str:
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                build_app(sink, **options), host="127.0.0.1", port=port, log_level="warning", access_log=False
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield _start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


def raw_post(url: str, headers: dict[str, str], body_chunks: Iterator[bytes]) -> tuple[int, bytes, float]:
    """POST over a raw socket, writing ``body_chunks`` until the server answers or stops reading.

    Returns (status, response bytes, seconds until the status line arrived).
    """
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    started = time.monotonic()
    sock.sendall(f"POST / HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode())
    answer = bytearray()

    def read() -> None:
        try:
            while chunk := sock.recv(65536):
                answer.extend(chunk)
        except OSError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    answered_at = None
    try:
        for chunk in body_chunks:
            if answer and answered_at is None:
                answered_at = time.monotonic()
                break
            sock.sendall(chunk)
    except OSError:
        pass  # the server closed while we were still sending
    reader.join(15)
    sock.close()
    answered_at = answered_at or time.monotonic()
    status = int(bytes(answer).split(b" ", 2)[1]) if answer else 0
    return status, bytes(answer), answered_at - started


def test_a_200_mb_post_is_refused_on_its_content_length_without_reading_it(endpoint: Any) -> None:
    sink = MemorySink()
    url = endpoint(sink)
    process = psutil.Process()
    before = process.memory_info().rss
    chunk = b"{" + b" " * (1024 * 1024 - 1)
    status, answer, seconds = raw_post(
        url,
        {"Content-Type": "application/fhir+json", "Content-Length": str(200 * 1024 * 1024)},
        iter([chunk] * 200),
    )
    assert status == 413 and b"OperationOutcome" in answer and b"too-costly" in answer
    assert seconds < 3
    assert (process.memory_info().rss - before) / 1e6 < 50
    [letter] = sink.rejections
    assert letter.reason.startswith("413: body larger than") and 0 < len(letter.payload) <= 4096


def test_a_streamed_body_without_length_stops_at_the_limit(endpoint: Any) -> None:
    sink = MemorySink()
    url = endpoint(sink, max_body_bytes=4 * 1024 * 1024)
    piece = b" " * (256 * 1024)
    chunked = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    status, _answer, seconds = raw_post(
        url,
        {"Content-Type": "application/fhir+json", "Transfer-Encoding": "chunked"},
        iter([chunked] * 800),  # 200 MB if it were all read
    )
    assert status == 413 and seconds < 5
    assert len(sink.rejections) == 1 and sink.rejections[0].payload == b" " * 4096


def test_json_nested_1000_deep_is_400_operation_outcome_and_dead_lettered(endpoint: Any) -> None:
    sink = MemorySink()
    url = endpoint(sink)
    body = b'{"resourceType": "Patient", "extension": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    resp = httpx.post(f"{url}/", content=body, headers={"content-type": "application/fhir+json"})
    assert resp.status_code == 400
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome" and "nested too deeply" in outcome["issue"][0]["diagnostics"]
    assert "Traceback" not in resp.text
    [letter] = sink.rejections
    assert letter.payload == body and letter.reason.startswith("400:")


def test_xml_is_415_and_dead_lettered(endpoint: Any) -> None:
    sink = MemorySink()
    url = endpoint(sink)
    body = b'<Patient xmlns="http://hl7.org/fhir"><id value="p1"/></Patient>'
    resp = httpx.post(f"{url}/", content=body, headers={"content-type": "application/fhir+xml"})
    assert resp.status_code == 415 and resp.json()["resourceType"] == "OperationOutcome"
    [letter] = sink.rejections
    assert letter.payload == body and letter.reason.startswith("415:")


class HangingSink(MemorySink):
    """A broker that stopped answering: every call blocks (as the producer does through its retries)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def publish(self, events: Any) -> None:
        self.release.wait(120)

    def dead_letter(self, *args: Any) -> None:
        self.release.wait(120)


def test_broker_down_is_503_within_seconds_and_healthz_tells(endpoint: Any) -> None:
    sink = HangingSink()
    down: list[str | None] = [None]
    health = BrokerHealth(probe=lambda: down[0], interval_s=0.2).start()
    try:
        url = endpoint(sink, health=health, publish_timeout_s=60)
        assert httpx.get(f"{url}/healthz").status_code == 200
        # the broker goes away while a POST waits for its acknowledgement: the probe notices, the POST gets 503
        timer = threading.Timer(0.5, lambda: down.__setitem__(0, "broker unreachable: test"))
        timer.start()
        started = time.monotonic()
        resp = httpx.post(f"{url}/Patient", json=PATIENT, timeout=30)
        assert resp.status_code == 503 and time.monotonic() - started < 5
        assert resp.json()["issue"][0]["code"] == "transient"
        health_resp = httpx.get(f"{url}/healthz")
        assert health_resp.status_code == 503 and "broker unreachable: test" in health_resp.text
        # while it is down, a POST is answered at once
        started = time.monotonic()
        assert httpx.post(f"{url}/Patient", json=PATIENT).status_code == 503
        assert time.monotonic() - started < 1
        # a 4xx whose dead letter cannot be stored is 503 too (the client retries; nothing is lost)
        assert (
            httpx.post(f"{url}/", content=b"not json", headers={"content-type": "application/json"}).status_code == 503
        )
        down[0] = None
        deadline = time.monotonic() + 5
        while httpx.get(f"{url}/healthz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{url}/healthz").text == "ok\n"
    finally:
        sink.release.set()
        health.stop()


def test_success_still_works_with_health(endpoint: Any) -> None:
    sink = MemorySink()
    health = BrokerHealth(probe=lambda: None, interval_s=0.2).start()
    try:
        url = endpoint(sink, health=health)
        resp = httpx.post(f"{url}/Patient", json=PATIENT)
        assert resp.status_code == 200, resp.text
        assert [e.kind for e in sink.events] == ["person"]
        assert json.loads(resp.text)["resourceType"] == "OperationOutcome"
    finally:
        health.stop()
