"""The outbox sender: delivers pending outbox rows to the webhook and as per-team email digests.

Contract:
- Several senders may run (one per web process): each claims rows before sending them (a lease of
  ``lease_s``, default 5 minutes), so a row is delivered by one sender; a sender that dies mid-send leaves its
  rows to be retried when the lease ends.
- Rows are written by :meth:`SqlStore.record_matches` in the same transaction as the matches, so every new
  match is announced at least once, whatever happens to the network.
- A row is marked ``sent`` only after its sink accepted the message. On failure the rows stay ``pending`` with
  ``attempts + 1``, the error and ``next_attempt_at = now + min(max_backoff, base_backoff * 2**attempts)``
  (exponential backoff, no cap on the number of attempts: a message is never dropped).
- Webhook: every pass sends one message per study for all its due rows (a burst of matches is one message).
- Immediate alerts: a study with ``alert: immediate`` (acute: its windows close within hours) is also posted to
  the pager webhook (``pager_webhook_url``, a page/SMS-style gateway) on the next pass, and its team's email goes
  out on the next pass instead of waiting for the digest interval. Its messages start with "URGENT".
- Email: one digest per team, sent once the team's oldest pending row is ``digest_interval_s`` old (or when
  flushed); recipients are the team mailbox, else its members' addresses; a team nobody can receive for is
  parked as ``no_recipient`` (logged, counted) instead of retried forever.
- ``screener_delivery_attempts_total``/``..._failures_total{channel}`` count attempts; the
  ``screener_outbox_pending_messages{channel}`` gauge is refreshed after every pass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from screener.alerts.digest import team_digest, webhook_message
from screener.alerts.sinks.base import Sink
from screener.errors import DeliveryError
from screener.logging import get_logger

if TYPE_CHECKING:
    from screener.alerts.store import SqlStore
    from screener.metrics import Metrics
    from screener.settings import Settings

__all__ = ["OutboxSender"]

log = get_logger("screener.alerts.outbox")


class OutboxSender:
    """Deliver the outbox. ``run_once()`` is one pass; ``start()``/``stop()`` run passes on a thread."""

    def __init__(
        self,
        store: SqlStore,
        *,
        public_url: str,
        webhook: Sink | None = None,
        email: Sink | None = None,
        pager: Sink | None = None,
        metrics: Metrics | None = None,
        digest_interval_s: float = 3600.0,
        base_backoff_s: float = 5.0,
        max_backoff_s: float = 3600.0,
        lease_s: float = 300.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.store = store
        self.public_url = public_url
        self.sinks: dict[str, Sink] = {c: s for c, s in (("webhook", webhook), ("email", email)) if s is not None}
        if pager is not None:
            self.sinks["pager"] = pager
        self.metrics = metrics if metrics is not None else getattr(store, "metrics", None)
        self.digest_interval = timedelta(seconds=digest_interval_s)
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        #: How long a claimed row is reserved for this sender; after that another sender may retry it.
        self.lease = timedelta(seconds=lease_s)
        self.clock = clock or getattr(store, "clock", None) or (lambda: datetime.now(UTC))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings, store: SqlStore, *, metrics: Metrics | None = None) -> OutboxSender:
        from screener.alerts.sinks.email import EmailSink
        from screener.alerts.sinks.webhook import WebhookSink

        webhook = WebhookSink(settings.webhook_url) if settings.webhook_url else None
        pager_url = getattr(settings, "pager_webhook_url", None)
        pager = WebhookSink(pager_url, channel="pager") if pager_url else None
        email = None
        if settings.smtp_host:
            password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
            email = EmailSink(
                settings.smtp_host,
                settings.smtp_port,
                sender=settings.smtp_from,
                username=settings.smtp_username,
                password=password,
                starttls=getattr(settings, "smtp_starttls", False),
            )
        return cls(
            store,
            public_url=settings.public_url,
            webhook=webhook,
            email=email,
            pager=pager,
            metrics=metrics,
            digest_interval_s=settings.digest_interval_s,
        )

    def backoff(self, attempts: int) -> timedelta:
        """Delay before the next try after ``attempts`` earlier failed tries (0 for the first failure)."""
        return timedelta(seconds=min(self.max_backoff_s, self.base_backoff_s * 2 ** min(attempts, 30)))

    # --- one pass ---------------------------------------------------------------------------------------
    def run_once(self, *, flush_digests: bool = False) -> dict[str, int]:
        """Deliver what is due now. Returns counts: messages ``sent`` and ``failed``. Never raises on delivery
        failure (the rows stay pending); a database error propagates."""
        now = self.clock()
        stats = {"sent": 0, "failed": 0}
        for channel in ("webhook", "pager"):
            if channel not in self.sinks:
                continue
            groups: dict[str, list[dict[str, Any]]] = {}
            for row in self._claim(self.store.outbox_due(channel, now), now):
                groups.setdefault(row["study_id"], []).append(row)
            for study_id, rows in groups.items():
                self._deliver(channel, rows, webhook_message(study_id, rows, self.public_url), now, stats)
        if "email" in self.sinks:
            teams: dict[str, list[dict[str, Any]]] = {}
            for row in self.store.outbox_due("email", now):
                teams.setdefault(row["team"], []).append(row)
            for team, rows in teams.items():
                retrying = any(r["attempts"] > 0 for r in rows)
                urgent = any(r.get("alert") == "immediate" for r in rows)
                oldest = min(r["created_at"] for r in rows)
                if not (flush_digests or retrying or urgent or oldest + self.digest_interval <= now):
                    continue
                rows = self._claim(rows, now)
                if not rows:
                    continue
                recipients = self.store.team_recipients(team) if team else []
                if not recipients:
                    self.store.outbox_mark(
                        [r["id"] for r in rows],
                        status="no_recipient",
                        error="no team mailbox and no member with an email address",
                    )
                    log.warning("digest_no_recipient", team=team, rows=len(rows))
                    continue
                self._deliver("email", rows, team_digest(team, rows, self.public_url, recipients), now, stats)
        self._refresh_gauge()
        return stats

    def _claim(self, rows: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        claimed = self.store.outbox_claim([r["id"] for r in rows], now, self.lease)
        return [r for r in rows if r["id"] in claimed]

    def _deliver(
        self, channel: str, rows: list[dict[str, Any]], message: Any, now: datetime, stats: dict[str, int]
    ) -> None:
        ids = [r["id"] for r in rows]
        if self.metrics is not None:
            self.metrics.delivery_attempts.labels(channel).inc()
        try:
            self.sinks[channel].send(message)
        except DeliveryError as exc:
            attempts = max(r["attempts"] for r in rows)
            retry_at = now + self.backoff(attempts)
            self.store.outbox_mark(ids, status="pending", error=str(exc), retry_at=retry_at)
            if self.metrics is not None:
                self.metrics.delivery_failures.labels(channel).inc()
            log.warning(
                "delivery_failed",
                channel=channel,
                rows=len(ids),
                attempt=attempts + 1,
                retry_at=retry_at.isoformat(),
                error=str(exc),
            )
            stats["failed"] += 1
            return
        self.store.outbox_mark(ids, status="sent")
        log.info("delivered", channel=channel, rows=len(ids))
        stats["sent"] += 1

    def _refresh_gauge(self) -> None:
        if self.metrics is None:
            return
        counts = self.store.outbox_counts()
        for channel in ("webhook", "email", "pager"):
            self.metrics.outbox_pending.labels(channel).set(counts.get((channel, "pending"), 0))

    # --- background loop --------------------------------------------------------------------------------
    def start(self, interval_s: float = 5.0) -> OutboxSender:
        """Run a pass every ``interval_s`` seconds on a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return self
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.run_once()
                except Exception as exc:  # the database may be briefly unavailable; try again next pass
                    log.error("outbox_pass_failed", error=str(exc))
                self._stop.wait(interval_s)

        self._thread = threading.Thread(target=loop, name="screener-outbox", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
