"""Real processes for the web tests: uvicorn on a free port, a local SMTP server (aiosmtpd), a local HTTP
webhook receiver, and (in test_browser) headless Chromium."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest

from screener.alerts.store import SqlStore

PATIENT_A = "MRN-A-0042"
PATIENT_B = "MRN-B-0077"
NHS_A = "9434765919"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _study(id: str, team: str) -> SimpleNamespace:
    return SimpleNamespace(
        id=id,
        title=f"Study {id}",
        summary=f"Summary of {id}.",
        team=team,
        sponsor="non-commercial",
        portfolio=True,
        target=50,
        opens=date(2026, 1, 1),
        closes=date(2099, 12, 31),
        settings=("hospital",),
        horizon=timedelta(hours=6),
        content_hash="d" * 64,
        render_markdown=lambda: f"- adults in {id}",
        lay_summary=f"A study of a new treatment ({id}). Taking part means three visits over a month.",
        contacts=(
            SimpleNamespace(
                name="Dr Priya Shah", role="Principal investigator", email="p.shah@example.org", phone="0161 555 0100"
            ),
        ),
        protocol_url="https://example.org/protocol.pdf",
        pis_url="https://example.org/pis.pdf",
        sites=("Salford Royal",),
        include=(
            SimpleNamespace(name="adult", display="Aged 18 or over"),
            SimpleNamespace(name="stroke_within_6h", display="Had a stroke in the last 6 hours"),
        ),
        exclude=(SimpleNamespace(name="on_anticoagulant", display="Taking blood-thinning medicine"),),
    )


def _frame(rows: list[tuple[str, str]]) -> pl.DataFrame:
    crit = json.dumps(
        [
            {"name": "adult", "group": "include", "result": True, "evidence": "age 71"},
            {"name": "stroke_within_6h", "group": "include", "result": None, "evidence": "onset time not recorded"},
            {
                "name": "nihss_over_5",
                "label": "NIHSS over 5 within 6 hours",
                "group": "include",
                "result": True,
                "evidence": "latest nihss 18 {score}",
                "expires_at": (datetime.now(UTC) + timedelta(hours=2, minutes=30)).isoformat(),
            },
        ]
    )
    now = datetime.now(UTC)
    return pl.DataFrame(
        {
            "study_id": [r[0] for r in rows],
            "patient_id": [r[1] for r in rows],
            "outcome": ["possible"] * len(rows),
            "rule_hash": ["h1"] * len(rows),
            "criteria": [crit] * len(rows),
            "matched_at": [now] * len(rows),
            "setting": ["hospital"] * len(rows),
            "imd_decile": [1] * len(rows),
            "ethnic_group": ["black"] * len(rows),
            "event_time": [None] * len(rows),
            "location": ["Stroke unit, bed 4"] * len(rows),
        }
    )


@pytest.fixture
def make_matches() -> Any:
    return _frame


@pytest.fixture
def seeded(tmp_path: Any) -> Iterator[SqlStore]:
    store = SqlStore(f"sqlite:///{tmp_path / 'worklist.db'}")
    store.sync_studies([_study("STROKE-1", "stroke"), _study("RESP-1", "respiratory")])
    store.add_user("nina", "nina-long-password", "nurse", ["stroke"], email="nina@example.org")
    store.add_user("rory", "rory-long-password", "nurse", ["respiratory"], email="rory@example.org")
    store.record_matches(_frame([("STROKE-1", PATIENT_A), ("RESP-1", PATIENT_B)]))
    yield store
    store.close()


class Received:
    """What a local receiver got, with a condition to wait on."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.cond = threading.Condition()

    def add(self, item: Any) -> None:
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def wait_for(self, n: int, timeout_s: float = 20.0) -> list[Any]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.items) >= n, timeout_s)
            return list(self.items)


class WebhookReceiver:
    """A local HTTP server that records JSON POST bodies (start/stop on a fixed port to simulate outages)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hook"
        self.received = Received()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> WebhookReceiver:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.add(
                    {"path": self.path, "content_type": self.headers.get("content-type"), "body": json.loads(body)}
                )
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class SmtpReceiver:
    """aiosmtpd on a local port, recording every message."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received = Received()
        self._controller: Any = None

    def start(self) -> SmtpReceiver:
        from aiosmtpd.controller import Controller

        received = self.received

        class Handler:
            async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
                received.add(
                    {
                        "from": envelope.mail_from,
                        "to": list(envelope.rcpt_tos),
                        "data": envelope.content.decode("utf-8", "replace"),
                    }
                )
                return "250 OK"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(free_port())
    yield r
    r.stop()


@pytest.fixture
def smtp_receiver() -> Iterator[SmtpReceiver]:
    r = SmtpReceiver(free_port())
    yield r
    r.stop()
