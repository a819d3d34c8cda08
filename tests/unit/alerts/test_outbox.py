"""OutboxSender with small in-process sinks: grouping, digests, retries with backoff, no loss, no identifiers."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from screener.alerts.digest import team_digest, webhook_message
from screener.alerts.outbox import OutboxSender
from screener.alerts.sinks.base import Message, Sink
from screener.alerts.store import SqlStore
from screener.errors import DeliveryError
from screener.metrics import Metrics


class RecordingSink:
    """A real sink that keeps what it receives, and fails while ``down`` is set."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.sent: list[Message] = []
        self.down = False
        #: set on every delivery, so a test waits for a background sender on an event, not a sleep
        self.delivered = threading.Event()

    def send(self, message: Message) -> None:
        if self.down:
            raise DeliveryError("receiver down", channel=self.channel)
        self.sent.append(message)
        self.delivered.set()


@pytest.fixture
def setup(store: SqlStore, make_study: Any, make_frame: Any) -> Any:
    registry = CollectorRegistry()
    store.metrics = Metrics(registry=registry)
    store.sync_studies([make_study("CKD-1", team="renal"), make_study("RESP-1", team="respiratory")])
    store.add_user("nina", "violet-harbour-17", "nurse", ["renal"], email="nina@example.org")
    store.set_team_email("respiratory", "resp@example.org")
    webhook, email = RecordingSink("webhook"), RecordingSink("email")
    sender = OutboxSender(
        store,
        public_url="https://screener.example.org/",
        webhook=webhook,
        email=email,
        digest_interval_s=3600,
        base_backoff_s=10,
        max_backoff_s=300,
    )
    return store, sender, webhook, email, registry


def _pids(n: int, prefix: str = "NHS-943") -> list[str]:
    return [f"{prefix}{i:07d}" for i in range(n)]


def test_sinks_satisfy_the_protocol() -> None:
    from screener.alerts.sinks import EmailSink, WebhookSink

    assert isinstance(WebhookSink("http://x"), Sink) and isinstance(EmailSink("localhost"), Sink)


def test_webhook_gets_one_message_per_study_with_count_and_link(setup: Any, make_frame: Any) -> None:
    store, sender, webhook, _email, registry = setup
    store.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": p} for p in _pids(3)]))
    store.record_matches(
        make_frame([{"study_id": "CKD-1", "patient_id": "X9"}, {"study_id": "RESP-1", "patient_id": "X9"}])
    )
    assert sender.run_once() == {"sent": 2, "failed": 0}
    texts = sorted(m.text for m in webhook.sent)
    assert texts == [
        "screener: 1 new match for RESP-1 (Study RESP-1).",
        "screener: 4 new matches for CKD-1 (Study CKD-1).",
    ]
    assert {m.link for m in webhook.sent} == {
        "https://screener.example.org/worklist?study=CKD-1",
        "https://screener.example.org/worklist?study=RESP-1",
    }
    assert sender.run_once() == {"sent": 0, "failed": 0}
    assert registry.get_sample_value("screener_delivery_attempts_total", {"channel": "webhook"}) == 2
    assert registry.get_sample_value("screener_outbox_pending_messages", {"channel": "webhook"}) == 0


def test_email_digest_waits_for_the_interval_then_goes_to_each_team(setup: Any, make_frame: Any) -> None:
    store, sender, _webhook, email, registry = setup
    store.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": p} for p in _pids(2)]))
    store.clock.advance(minutes=30)
    store.record_matches(make_frame([{"study_id": "RESP-1", "patient_id": "Q1"}]))
    sender.run_once()
    assert email.sent == []
    assert registry.get_sample_value("screener_outbox_pending_messages", {"channel": "email"}) == 2
    store.clock.advance(minutes=31)  # renal's oldest row is now 61 minutes old; respiratory's 31
    sender.run_once()
    assert [(m.recipients, m.subject) for m in email.sent] == [
        (("nina@example.org",), "screener: 2 new matches for renal")
    ]
    sender.run_once(flush_digests=True)
    assert email.sent[1].recipients == ("resp@example.org",)
    assert "RESP-1 - Study RESP-1: 1 new match" in email.sent[1].text


def test_failed_delivery_is_retried_with_exponential_backoff_and_never_lost(setup: Any, make_frame: Any) -> None:
    store, sender, webhook, _email, registry = setup
    store.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": "P1"}]))
    webhook.down = True
    assert sender.run_once()["failed"] == 1
    row = store.outbox_due("webhook", store.clock() + timedelta(days=1))[0]
    assert row["attempts"] == 1 and "receiver down" in row["last_error"]
    assert row["next_attempt_at"] - store.clock() == timedelta(seconds=10)
    assert sender.run_once() == {"sent": 0, "failed": 0}  # not due yet
    delays = []
    for _ in range(6):
        store.clock.advance(seconds=400)
        before = store.clock()
        sender.run_once()
        delays.append(store.outbox_due("webhook", before + timedelta(days=1))[0]["next_attempt_at"] - before)
    assert [d.total_seconds() for d in delays] == [20, 40, 80, 160, 300, 300]
    assert registry.get_sample_value("screener_delivery_failures_total", {"channel": "webhook"}) == 7
    assert registry.get_sample_value("screener_outbox_pending_messages", {"channel": "webhook"}) == 1
    store.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": "P2"}]))
    webhook.down = False
    store.clock.advance(seconds=301)
    assert sender.run_once()["sent"] == 1
    assert webhook.sent[0].text.startswith("screener: 2 new matches for CKD-1")
    assert store.outbox_counts()[("webhook", "sent")] == 2


def test_a_team_without_recipients_is_parked_not_retried(store: SqlStore, make_study: Any, make_frame: Any) -> None:
    store.sync_studies([make_study("ORPHAN", team="nobody")])
    email = RecordingSink("email")
    sender = OutboxSender(store, public_url="http://x", email=email)
    store.record_matches(make_frame([{"study_id": "ORPHAN", "patient_id": "P1"}]))
    sender.run_once(flush_digests=True)
    assert email.sent == [] and store.outbox_counts()[("email", "no_recipient")] == 1


def test_messages_never_carry_patient_data() -> None:
    rows = [
        {
            "study_id": "CKD-1",
            "title": "Kidney study",
            "team": "renal",
            "count": 2,
            "attempts": 0,
            "patient_id": "MRN-1",
            "nhs_number": "9434765919",
            "name": "Jane Doe",
        }
    ]
    for msg in (webhook_message("CKD-1", rows, "https://h"), team_digest("renal", rows, "https://h", ["a@b"])):
        blob = f"{msg.subject}{msg.text}{msg.link}"
        assert "MRN-1" not in blob and "9434765919" not in blob and "Jane" not in blob
        assert "2 new matches" in blob


def test_sender_thread_delivers_in_the_background(setup: Any, make_frame: Any) -> None:
    store, sender, webhook, _email, _registry = setup
    store.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": "P1"}]))
    sender.start(interval_s=0.05)
    try:
        assert webhook.delivered.wait(timeout=10)
    finally:
        sender.stop()
    assert len(webhook.sent) == 1


def test_two_senders_never_deliver_the_same_row_twice(setup: Any, make_frame: Any) -> None:
    store, sender, webhook, _email, _registry = setup
    other_webhook = RecordingSink("webhook")
    other = OutboxSender(store, public_url="http://x", webhook=other_webhook, lease_s=60)
    store.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": "P1"}]))
    due = store.outbox_due("webhook", store.clock())
    assert store.outbox_claim([r["id"] for r in due], store.clock(), timedelta(seconds=60)) == {due[0]["id"]}
    assert other.run_once() == {"sent": 0, "failed": 0} and sender.run_once()["sent"] == 0  # claimed elsewhere
    store.clock.advance(seconds=61)  # the claimer died: the lease ends and the row is retried
    assert other.run_once()["sent"] == 1 and sender.run_once()["sent"] == 0
    assert len(other_webhook.sent) + len(webhook.sent) == 1
