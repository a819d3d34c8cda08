"""The parts of kafka-python's client objects that screener relies on, as Protocols.

kafka-python ships no type information, so without these every producer is ``Any``. A test passes any object
with these methods (``screener.testing``'s fakes, a recording stub) instead of a real client.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Producer", "SendFuture"]


class SendFuture(Protocol):
    """What ``Producer.send`` returns: ``get`` blocks until the broker acknowledged the record, or raises."""

    def get(self, timeout: float | None = None) -> object: ...


class Producer(Protocol):
    """A kafka-python ``KafkaProducer`` as screener uses it: send keyed bytes, flush, close."""

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> SendFuture: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...
