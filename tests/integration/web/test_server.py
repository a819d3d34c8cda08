"""The worklist over a real HTTP server (uvicorn on a free port), with real webhook and SMTP receivers."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from screener.alerts.outbox import OutboxSender
from screener.alerts.sinks import EmailSink, WebhookSink
from screener.metrics import Metrics
from screener.settings import Settings
from screener.web import serve

pytestmark = pytest.mark.integration

PATIENT_A = "MRN-A-0042"
PATIENT_B = "MRN-B-0077"
FORBIDDEN = (PATIENT_A, PATIENT_B, "9434765919", "age 71", "onset time")


def _login(base: str, username: str) -> tuple[httpx.Client, str]:
    c = httpx.Client(base_url=base, follow_redirects=False, timeout=10)
    page = c.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = c.post("/login", data={"username": username, "password": f"{username}-long-password", "csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/worklist"
    html = c.get("/worklist").text
    return c, re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _wait(cond: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_real_server_access_control_and_actions(seeded: Any) -> None:
    registry = CollectorRegistry()
    seeded.metrics = Metrics(registry=registry)
    with serve(Settings(web_port=0), seeded, registry) as handle:
        assert httpx.get(f"{handle.url}/worklist").status_code == 303
        assert httpx.get(f"{handle.url}/api/worklist").status_code == 401
        assert httpx.get(f"{handle.url}/studies").status_code == 200
        nina, nina_csrf = _login(handle.url, "nina")
        rory, rory_csrf = _login(handle.url, "rory")
        token = nina.get("/api/worklist").json()[0]["token"]
        assert rory.get(f"/matches/{token}").status_code == 404
        assert rory.get(f"/api/matches/{token}").status_code == 404
        assert (
            rory.post(
                f"/api/matches/{token}/actions", json={"action": "reviewed"}, headers={"X-CSRF-Token": rory_csrf}
            ).status_code
            == 404
        )
        assert nina.post(f"/matches/{token}/action", data={"action": "reviewed"}).status_code == 403
        r = nina.post(f"/matches/{token}/action", data={"action": "approached", "csrf_token": nina_csrf})
        assert r.status_code == 303
        assert nina.get("/api/worklist").json()[0]["stage"] == "approached"
        metrics = httpx.get(f"{handle.url}/metrics").text
        assert 'screener_funnel_actions_total{setting="hospital",stage="approached",study="STROKE-1"} 1.0' in metrics
        assert PATIENT_A not in metrics
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{handle.url}/studies", timeout=2)


def test_new_matches_reach_the_webhook_and_the_email_digest_without_identifiers(
    seeded: Any, webhook_receiver: Any, smtp_receiver: Any, make_matches: Any
) -> None:
    webhook_receiver.start()
    smtp_receiver.start()
    settings = Settings(
        web_port=0,
        webhook_url=webhook_receiver.url,
        smtp_host="127.0.0.1",
        smtp_port=smtp_receiver.port,
        smtp_from="screener@hospital.example",
        public_url="https://worklist.hospital.example",
        outbox_interval_s=0.1,
        digest_interval_s=0.5,
    )
    registry = CollectorRegistry()
    seeded.metrics = Metrics(registry=registry)
    # Written before the sender starts, so its first pass sees all of them: one message per study.
    seeded.record_matches(make_matches([("STROKE-1", "MRN-A-0043"), ("STROKE-1", "9434765919")]))
    with serve(settings, seeded, registry) as handle:
        assert handle.sender is not None
        hooks = webhook_receiver.received.wait_for(2)
        mails = smtp_receiver.received.wait_for(2)
    texts = sorted(h["body"]["text"] for h in hooks)
    assert all(h["content_type"] == "application/json" and set(h["body"]) == {"text"} for h in hooks)
    assert texts[0].startswith("URGENT: screener: 1 new match for RESP-1 (Study RESP-1).")  # 6-hour windows
    assert texts[1].startswith("URGENT: screener: 3 new matches for STROKE-1 (Study STROKE-1).")
    assert "https://worklist.hospital.example/worklist?study=STROKE-1" in texts[1]
    by_rcpt = {tuple(m["to"]): m["data"] for m in mails}
    assert set(by_rcpt) == {("nina@example.org",), ("rory@example.org",)}
    assert "3 new matches" in by_rcpt[("nina@example.org",)]
    assert "https://worklist.hospital.example/worklist?study=STROKE-1" in by_rcpt[("nina@example.org",)]
    for blob in [*texts, *by_rcpt.values()]:
        for secret in (*FORBIDDEN, "MRN-A-0043"):
            assert secret not in blob
    assert registry.get_sample_value("screener_delivery_attempts_total", {"channel": "email"}) >= 2
    assert seeded.outbox_counts().get(("webhook", "pending"), 0) == 0


def test_outbox_retries_while_receivers_are_down_and_delivers_later(
    seeded: Any, webhook_receiver: Any, smtp_receiver: Any
) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry=registry)
    sender = OutboxSender(
        seeded,
        public_url="http://localhost:8080",
        metrics=metrics,
        webhook=WebhookSink(webhook_receiver.url, timeout_s=2),
        email=EmailSink("127.0.0.1", smtp_receiver.port, timeout_s=2),
        digest_interval_s=0.0,
        base_backoff_s=0.1,
        max_backoff_s=0.4,
    ).start(interval_s=0.05)
    try:

        def failures(channel: str) -> float:
            return registry.get_sample_value("screener_delivery_failures_total", {"channel": channel}) or 0

        _wait(lambda: failures("webhook") >= 3 and failures("email") >= 3)
        counts = seeded.outbox_counts()
        assert counts[("webhook", "pending")] == 2 and counts[("email", "pending")] == 2
        assert registry.get_sample_value("screener_outbox_pending_messages", {"channel": "webhook"}) == 2
        webhook_receiver.start()
        smtp_receiver.start()
        hooks = webhook_receiver.received.wait_for(2)
        mails = smtp_receiver.received.wait_for(2)
    finally:
        sender.stop()
    assert len(hooks) == 2 and len(mails) == 2
    assert seeded.outbox_counts().get(("webhook", "sent")) == 2
    assert seeded.outbox_counts().get(("email", "sent")) == 2
    for blob in [h["body"]["text"] for h in hooks] + [m["data"] for m in mails]:
        for secret in FORBIDDEN:
            assert secret not in blob


def test_an_acute_study_reaches_the_webhook_and_the_pager_within_one_delivery_pass(
    tmp_path: Any, webhook_receiver: Any, smtp_receiver: Any
) -> None:
    """STROKE-1's windows are 6 hours (``alert`` defaults to immediate): one pass posts it to the team webhook and
    to the pager webhook and mails the team at once; the 180-day study waits for its digest and never pages."""
    from datetime import timedelta
    from types import SimpleNamespace

    from screener.alerts.store import SqlStore
    from tests.integration.web.conftest import WebhookReceiver, _frame, _study, free_port

    pager = WebhookReceiver(free_port()).start()
    webhook_receiver.start()
    smtp_receiver.start()
    try:
        store = SqlStore(f"sqlite:///{tmp_path / 'w.db'}", channels=("webhook", "email", "pager"))
        slow = _study("RESP-1", "stroke")
        slow.horizon = timedelta(days=180)
        store.sync_studies([_study("STROKE-1", "stroke"), SimpleNamespace(**{**vars(slow), "alert": None})])
        store.add_user("nina", "nina-long-password", "nurse", ["stroke"], email="nina@example.org")
        store.record_matches(_frame([("STROKE-1", PATIENT_A), ("RESP-1", PATIENT_B)]))
        sender = OutboxSender(
            store,
            public_url="http://worklist.example",
            webhook=WebhookSink(webhook_receiver.url),
            pager=WebhookSink(pager.url, channel="pager"),
            email=EmailSink("127.0.0.1", smtp_receiver.port, sender="screener@example.org"),
            digest_interval_s=3600,
        )
        stats = sender.run_once()  # one pass, nothing flushed
        hooks = webhook_receiver.received.wait_for(2, timeout_s=5)
        pages = pager.received.wait_for(1, timeout_s=5)
        mails = smtp_receiver.received.wait_for(1, timeout_s=5)
        assert stats["failed"] == 0
        texts = sorted(h["body"]["text"] for h in hooks)
        assert any(t.startswith("URGENT: screener: 1 new match for STROKE-1") for t in texts)
        assert [p["body"]["text"].split("\n")[0] for p in pages] == [
            "URGENT: screener: 1 new match for STROKE-1 (Study STROKE-1)."
        ]
        assert len(mails) == 1 and "URGENT" in mails[0]["data"] and "STROKE-1" in mails[0]["data"]
        for item in [*hooks, *pages, *mails]:
            for secret in FORBIDDEN:
                assert secret not in str(item)
        assert store.outbox_counts().get(("pager", "sent")) == 1 and ("pager", "pending") not in store.outbox_counts()
        store.close()
    finally:
        pager.stop()
