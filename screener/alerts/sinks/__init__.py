"""Outbound channels. Each sink sends one already-composed message and raises DeliveryError on failure;
retries, backoff and bookkeeping live in :mod:`screener.alerts.outbox`."""

from screener.alerts.sinks.base import Message, Sink
from screener.alerts.sinks.email import EmailSink
from screener.alerts.sinks.webhook import WebhookSink

__all__ = ["EmailSink", "Message", "Sink", "WebhookSink"]
