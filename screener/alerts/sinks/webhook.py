"""Incoming-webhook sink: POSTs ``{"text": ...}``, the payload Slack, Microsoft Teams (incoming webhook
connector), Mattermost, Rocket.Chat and Google Chat all accept."""

from __future__ import annotations

import httpx

from screener.alerts.sinks.base import Message
from screener.errors import DeliveryError

__all__ = ["WebhookSink"]


class WebhookSink:
    channel = "webhook"

    def __init__(self, url: str, *, timeout_s: float = 10.0, channel: str = "webhook") -> None:
        self.url = url
        #: ``webhook`` for the team chat, ``pager`` for the page/SMS-style gateway of immediate alerts.
        self.channel = channel
        self.timeout_s = timeout_s

    def payload(self, message: Message) -> dict[str, str]:
        """The JSON body; chat tools turn the bare URL into a link."""
        return {"text": f"{message.text}\nOpen the worklist: {message.link}"}

    def send(self, message: Message) -> None:
        """POST the message; any transport error or non-2xx answer raises DeliveryError (never logs the URL,
        which often embeds a secret)."""
        try:
            response = httpx.post(self.url, json=self.payload(message), timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"webhook request failed: {type(exc).__name__}", channel=self.channel) from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"webhook answered HTTP {response.status_code}", channel=self.channel)
