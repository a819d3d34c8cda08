"""The sink interface: one small Protocol, implementations beside it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["Message", "Sink"]


@dataclass(frozen=True)
class Message:
    """One outbound message. It names studies, counts and a link into the worklist; never a patient.

    ``recipients`` is used by email (ignored by the webhook); ``link`` is the worklist URL.
    """

    subject: str
    text: str
    link: str
    recipients: tuple[str, ...] = field(default=())


@runtime_checkable
class Sink(Protocol):
    channel: str

    def send(self, message: Message) -> None:
        """Deliver ``message`` once. Raises :class:`screener.errors.DeliveryError` on any failure (the outbox
        retries later); returning means the receiver accepted it."""
        ...
