"""The engine's edges: the message source it consumes and the producer it writes to.

The engine talks to Kafka only through these two protocols (the kafka-python ``KafkaConsumer`` and
``KafkaProducer`` satisfy them; :mod:`screener.testing` has small in-memory ones for tests). Every consumer call
happens on one thread (the one that calls :meth:`screener.engine.Engine.step`), so an implementation need not be
thread-safe; rebalance callbacks must also run on that thread, inside :meth:`Consumer.poll`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = ["CommitOffset", "Consumer", "Partition", "Producer", "RebalanceListener", "Record", "SendFuture"]


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
    """Told, inside :meth:`Consumer.poll`, which partitions this consumer lost and which it got (kafka-python
    passes sets, :class:`screener.testing.InMemoryConsumer` lists)."""

    def on_partitions_revoked(self, revoked: Collection[Partition]) -> None: ...
    def on_partitions_assigned(self, assigned: Collection[Partition]) -> None: ...


class CommitOffset(Protocol):
    """The value of an offsets mapping given to :meth:`Consumer.commit` (kafka-python's ``OffsetAndMetadata``)."""

    @property
    def offset(self) -> int: ...


@runtime_checkable
class Consumer(Protocol):
    """The consumer surface the engine uses (a subset of kafka-python's ``KafkaConsumer``).

    ``poll`` returns records by partition and calls the listener given to ``subscribe`` when the assignment
    changes; ``seek`` moves the next ``poll`` of a partition; ``commit`` stores the next offsets to read
    (``offsets`` maps a partition to an object with an ``offset`` attribute); ``committed`` is ``None`` when the
    group has no offset; ``highwater`` may be ``None`` when unknown (the engine then reports lag as unknown).
    A partition is anything shaped like :class:`Partition` (kafka-python's ``TopicPartition``).
    """

    def subscribe(self, topics: list[str], listener: RebalanceListener | None = None) -> None: ...
    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> Mapping[Partition, Sequence[Record]]: ...
    def seek(self, partition: Partition, offset: int) -> None: ...
    def commit(
        self, offsets: Mapping[Partition, CommitOffset] | None = None, timeout_ms: int | None = None
    ) -> None: ...
    def committed(self, partition: Partition) -> int | None: ...
    def beginning_offsets(self, partitions: list[Partition]) -> Mapping[Partition, int]: ...
    def highwater(self, partition: Partition) -> int | None: ...
    def close(self, autocommit: bool = True) -> None: ...


class SendFuture(Protocol):
    """What :meth:`Producer.send` returns: ``get`` blocks until the broker acknowledged the record, or raises."""

    def get(self, timeout: float | None = None) -> object: ...


@runtime_checkable
class Producer(Protocol):
    """The producer surface the engine uses (a subset of kafka-python's ``KafkaProducer``): keyed bytes, with
    optional headers (the dead-letter records carry their reason as one)."""

    def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> SendFuture: ...
    def flush(self, timeout: float | None = None) -> None: ...
    def close(self, timeout: float | None = None) -> None: ...
