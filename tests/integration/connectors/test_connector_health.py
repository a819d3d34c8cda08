"""Connectors as real processes against a broker that goes away: /healthz tells, requests fail fast, SIGTERM exits.

Failed before: there was no /healthz on either listener; with the broker down a FHIR POST got no answer within
100 s, and `connect fhir` did not exit within 7 s of SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.hl7v2 import MLLPClient
from screener.bus import EmbeddedBroker, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).parents[3]
MSG = (
    "MSH|^~\\&|LAB|RR8|SCREENER|RR8|20260501100000||ADT^A28|CTRL-{n}|P|2.5\r"
    "PID|1||H{n}^^^RR8^MR||Smith^Jane||19610302|F\r"
)
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1961-03-02", "gender": "female"}


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test's own (it is stopped half-way), not the session's."""
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as b:
        yield b


def start(args: list[str], broker: EmbeddedBroker, tmp_path: Path, **env: str) -> subprocess.Popen[bytes]:
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SCREENER_CONNECTOR_HEALTH_INTERVAL_S": "0.5",
        "SCREENER_LOG_FORMAT": "console",
        **env,
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from screener.cli import main; main()",
            "connect",
            *args,
            "--bootstrap",
            broker.bootstrap,
            "--no-idempotence",
            "--topic",
            f"health-{tmp_path.name[-20:]}",
        ],
        env=full_env,
        stdout=(tmp_path / "out.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for(predicate: Any, seconds: float, what: str) -> float:
    """Seconds until ``predicate()`` was true; fails after ``seconds``."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            if predicate():
                return time.monotonic() - started
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"not {what} within {seconds}s")


def terminate_within(proc: subprocess.Popen[bytes], seconds: float, tmp_path: Path) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.wait()
        raise AssertionError(
            f"no exit within {seconds}s of SIGTERM:\n{(tmp_path / 'out.log').read_text()[-2000:]}"
        ) from exc
    return time.monotonic() - started


def test_fhir_endpoint_health_503_and_sigterm(own_broker: EmbeddedBroker, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(["fhir", "--listen", f"127.0.0.1:{port}"], own_broker, tmp_path)
    try:
        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, 30, "healthy")
        assert httpx.post(f"{url}/Patient", json=PATIENT, timeout=30).status_code == 200
        own_broker.stop()
        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 503, 8, "503 on /healthz")
        assert "broker unreachable" in httpx.get(f"{url}/healthz", timeout=2).text
        started = time.monotonic()
        resp = httpx.post(f"{url}/Patient", json=PATIENT, timeout=30)
        assert resp.status_code == 503 and time.monotonic() - started < 5
        seconds = terminate_within(proc, 10, tmp_path)
        print(f"fhir exited {seconds:.1f}s after SIGTERM")
        # uvicorn shuts down gracefully, then re-raises the signal: killed by SIGTERM is the clean exit here
        assert proc.returncode in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_mllp_listener_health_503_ae_and_sigterm(own_broker: EmbeddedBroker, tmp_path: Path) -> None:
    port, health_port = free_port(), free_port()
    url = f"http://127.0.0.1:{health_port}"
    proc = start(
        ["hl7v2", "--listen", f"127.0.0.1:{port}"],
        own_broker,
        tmp_path,
        SCREENER_MLLP_HEALTH_LISTEN=f"127.0.0.1:{health_port}",
    )
    try:
        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, 30, "healthy")
        with MLLPClient("127.0.0.1", port, timeout=30) as client:
            assert "MSA|AA|CTRL-1" in client.send(MSG.format(n=1))
            own_broker.stop()
            wait_for(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 503, 8, "503 on /healthz")
            assert "broker unreachable" in httpx.get(f"{url}/healthz", timeout=2).text
            started = time.monotonic()
            ack = client.send(MSG.format(n=2))
            assert "MSA|AE|CTRL-2" in ack and time.monotonic() - started < 5
            metrics = httpx.get(f"{url}/metrics", timeout=2).text
            assert "screener_connector_broker_up 0.0" in metrics and "screener_mllp_connections 1.0" in metrics
            # an open, quiet connection does not hold the exit up
            seconds = terminate_within(proc, 10, tmp_path)
            print(f"hl7v2 exited {seconds:.1f}s after SIGTERM")
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
