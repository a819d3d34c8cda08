"""SMTP email sink (smtplib): plain-text digests to a team's mailbox or its members."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from email.utils import make_msgid

from screener.alerts.sinks.base import Message
from screener.errors import DeliveryError

__all__ = ["EmailSink"]


class EmailSink:
    channel = "email"

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        sender: str = "screener@localhost",
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout_s: float = 30.0,
    ) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.username, self.password, self.starttls, self.timeout_s = username, password, starttls, timeout_s

    def build(self, message: Message) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = ", ".join(message.recipients)
        mail["Subject"] = message.subject
        mail["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or "localhost")
        mail.set_content(f"{message.text}\n\nOpen the worklist: {message.link}\n")
        return mail

    def send(self, message: Message) -> None:
        """Send one email to ``message.recipients``; raises DeliveryError on any SMTP or network failure."""
        if not message.recipients:
            raise DeliveryError("email has no recipients", channel=self.channel)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls()
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(self.build(message))
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"SMTP delivery failed: {type(exc).__name__}: {exc}", channel=self.channel) from exc
