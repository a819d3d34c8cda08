"""The engine's edges: the message source it consumes and the producer it writes to.

The engine talks to Kafka only through these two protocols (the kafka-python ``KafkaConsumer`` and
``KafkaProducer`` satisfy them; :mod:`screener.testing` has small in-memory ones for tests). Every consumer call
happens on one thread (the one that calls :meth:`screener.engine.Engine.step`), so an implementation need not be
thread-safe; rebalance callbacks must also run on that thread, inside :meth:`Consumer.poll`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

__all__ = ["Consumer", "Partition", "Producer", "RebalanceListener", "Record", "SendFuture"]


class Partition(NamedTuple):
    """A topic partition (kafka-python's ``TopicPartition`` has the same shape and compares equal)."""

    topic: str
    partition: int


class Record(Protocol):
    """One consumed record (kafka-python's ``ConsumerRecord`` has these attributes)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class RebalanceListener(Protocol):
    def on_partitions_revoked(self, revoked: Sequence[Any]) -> None: ...
    def on_partitions_assigned(self, assigned: Sequence[Any]) -> None: ...


@runtime_checkable
class Consumer(Protocol):
    """The consumer surface the engine uses (a subset of kafka-python's ``KafkaConsumer``).

    ``poll`` returns records by partition and calls the listener given to ``subscribe`` when the assignment
    changes; ``seek`` moves the next ``poll`` of a partition; ``commit`` stores the next offsets to read
    (``offsets`` maps a partition to an object with an ``offset`` attribute); ``committed`` is ``None`` when the
    group has no offset; ``highwater`` may be ``None`` when unknown (the engine then reports lag as unknown).
    """

    def subscribe(self, topics: list[str], listener: Any = None) -> None: ...
    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> Mapping[Any, list[Any]]: ...
    def seek(self, partition: Any, offset: int) -> None: ...
    def commit(self, offsets: Any = None, timeout_ms: int | None = None) -> None: ...
    def committed(self, partition: Any) -> int | None: ...
    def beginning_offsets(self, partitions: list[Any]) -> Mapping[Any, int]: ...
    def highwater(self, partition: Any) -> int | None: ...
    def close(self, autocommit: bool = True) -> None: ...


class SendFuture(Protocol):
    def get(self, timeout: float | None = None) -> Any: ...


@runtime_checkable
class Producer(Protocol):
    """The producer surface the engine uses (a subset of kafka-python's ``KafkaProducer``)."""

    def send(self, topic: str, value: Any = None, key: Any = None, headers: Any = None) -> Any: ...
    def flush(self, timeout: float | None = None) -> None: ...
    def close(self, timeout: float | None = None) -> None: ...
