"""Small, real, in-memory stand-ins for the engine's edges, for unit tests (ours and a hospital's connector tests).

- :class:`InMemoryLog`: topics -> partitions -> records, and the committed offsets of one consumer group.
- :class:`InMemoryConsumer` / :class:`InMemoryProducer`: the kafka-python surface the engine uses
  (:class:`screener.engine.Consumer` / :class:`screener.engine.Producer`) over an :class:`InMemoryLog`. The consumer
  assigns itself every partition of the subscribed topic at its first poll and calls the rebalance listener there,
  as kafka-python does. ``fetched`` records the first offset of every partition's first fetch after each seek
  (what a test asserts to prove a partition was restored rather than replayed).
- :data:`MemoryStore` (the worklist store) and :data:`FixedClock` (a clock that moves only when told to) are
  re-exported from where they live.

Usage::

    log = InMemoryLog(partitions=2)
    engine = Engine(settings, MemoryStore(), consumer=InMemoryConsumer(log), producer=InMemoryProducer(log),
                    clock=FixedClock(now)).start()
    log.publish(settings.events_topic, event)
    engine.step()
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from screener.alerts.memory import MemoryStore
from screener.clock import FixedClock
from screener.engine.base import CommitOffset, Partition, RebalanceListener
from screener.events import Event, dump_event

__all__ = [
    "FixedClock",
    "InMemoryConsumer",
    "InMemoryLog",
    "InMemoryProducer",
    "MemoryStore",
    "Partition",
    "Record",
    "SentFuture",
    "partition_for",
    "s3_server",
]


class Record(NamedTuple):
    """One record, with the attributes of kafka-python's ``ConsumerRecord`` that the engine reads."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes


def partition_for(key: bytes | None, partitions: int) -> int:
    """The partition :class:`InMemoryLog` puts a keyed record in: kafka-python's default partitioner (murmur2),
    as the connectors' producers do (a record without a key goes to partition 0)."""
    if key is None:
        return 0
    from kafka.partitioner.default import murmur2

    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


class InMemoryLog:
    """Topics -> partitions -> records, and committed offsets per (topic, partition). Thread-safe appends."""

    def __init__(self, partitions: int = 2) -> None:
        self.partitions = partitions
        self.topics: dict[str, dict[int, list[Record]]] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        #: Notified on every append (a consumer's poll waits on it, as a broker fetch does).
        self.appended = threading.Condition(self._lock)

    def append(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None, timestamp: int | None = None
    ) -> Record:
        """Append one record (to ``partition``, or the one its key hashes to) and return it."""
        with self._lock:
            parts = self.topics.setdefault(topic, {p: [] for p in range(self.partitions)})
            if partition is None:
                partition = partition_for(key, self.partitions)
            recs = parts[partition]
            stamp = timestamp or int(datetime.now(UTC).timestamp() * 1000)
            rec = Record(topic, partition, len(recs), stamp, key, value)
            recs.append(rec)
            self.appended.notify_all()
            return rec

    def publish(self, topic: str, event: Event) -> Record:
        """Append a canonical event, keyed by its patient (as the connectors do)."""
        return self.append(topic, event.patient_id.encode(), dump_event(event))

    def values(self, topic: str) -> list[dict[str, Any]]:
        """Every record's JSON value, partition by partition."""
        parts = self.topics.get(topic, {})
        return [json.loads(r.value) for p in sorted(parts) for r in parts[p]]

    def size(self, topic: str) -> int:
        return sum(len(recs) for recs in self.topics.get(topic, {}).values())


class SentFuture:
    """What :meth:`InMemoryProducer.send` returns: already acknowledged."""

    def get(self, timeout: float | None = None) -> None:
        return None


class InMemoryProducer:
    """Appends what it is sent to an :class:`InMemoryLog`; ``flush`` has nothing to wait for."""

    def __init__(self, log: InMemoryLog) -> None:
        self.log = log
        self.closed = False

    def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> SentFuture:
        """Append ``value`` (an empty payload when None) under ``key``; headers are not kept."""
        self.log.append(topic, key, value if value is not None else b"")
        return SentFuture()

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


class InMemoryConsumer:
    """One consumer-group member that owns every partition of the subscribed topic (assigned at the first poll)."""

    def __init__(self, log: InMemoryLog) -> None:
        self.log = log
        self.listener: RebalanceListener | None = None
        self.topic = ""
        self.assigned: list[Partition] = []
        self.position: dict[Partition, int] = {}
        #: Per partition: the first offset fetched after each assignment or seek, in order.
        self.fetched: dict[int, list[int]] = {}
        self._fresh: set[int] = set()
        self.closed = False
        #: Set these to False to play a broker outage or a lost group (see :meth:`health`).
        self.broker_up = True
        self.group_held = True

    def health(self) -> tuple[bool, str | None]:
        """The link to the broker and group, as :func:`screener.engine.health.consumer_health` reads it."""
        if not self.broker_up:
            return False, "broker unreachable (in-memory consumer told so)"
        if not self.group_held:
            return False, "consumer group lost (in-memory consumer told so)"
        return True, None

    def subscribe(self, topics: list[str], listener: RebalanceListener | None = None) -> None:
        self.topic = topics[0]
        self.listener = listener
        self.log.topics.setdefault(self.topic, {p: [] for p in range(self.log.partitions)})

    def poll(self, timeout_ms: int = 0, max_records: int | None = 500) -> dict[Partition, list[Record]]:
        if not self.assigned:
            self.assign_all()
        limit = max_records if max_records is not None else 500
        if timeout_ms and not self._available():
            # Like a broker fetch: wait up to timeout_ms for a record rather than return at once (a loop polling
            # an idle log would otherwise spin).
            with self.log.appended:
                self.log.appended.wait_for(self._available, timeout=timeout_ms / 1000)
        out: dict[Partition, list[Record]] = {}
        n = 0
        for tp in self.assigned:
            recs = self.log.topics[tp.topic][tp.partition][self.position[tp] :][: limit - n]
            if recs:
                if tp.partition in self._fresh:
                    self._fresh.discard(tp.partition)
                    self.fetched.setdefault(tp.partition, []).append(recs[0].offset)
                out[tp] = recs
                self.position[tp] += len(recs)
                n += len(recs)
        return out

    def _available(self) -> bool:
        return any(len(self.log.topics[tp.topic][tp.partition]) > self.position[tp] for tp in self.assigned)

    def assign_all(self) -> None:
        """Take every partition (positions from the committed offsets) and tell the listener."""
        self.assigned = [Partition(self.topic, p) for p in range(self.log.partitions)]
        for tp in self.assigned:
            self.position[tp] = self.log.committed.get((tp.topic, tp.partition), 0)
            self._fresh.add(tp.partition)
        if self.listener is not None:
            self.listener.on_partitions_assigned(self.assigned)

    def revoke_all(self) -> None:
        """Give every partition up (the listener's revocation callback runs first, as in a rebalance)."""
        if self.listener is not None:
            self.listener.on_partitions_revoked(self.assigned)
        self.assigned = []

    def seek(self, tp: Partition, offset: int) -> None:
        self.position[tp] = offset
        self._fresh.add(tp.partition)

    def committed(self, tp: Partition) -> int | None:
        return self.log.committed.get((tp.topic, tp.partition))

    def commit(self, offsets: Mapping[Partition, CommitOffset] | None = None, timeout_ms: int | None = None) -> None:
        for tp, om in (offsets or {}).items():
            self.log.committed[(tp.topic, tp.partition)] = om.offset

    def beginning_offsets(self, tps: Sequence[Partition]) -> dict[Partition, int]:
        return dict.fromkeys(tps, 0)

    def end_offsets(self, tps: Sequence[Partition]) -> dict[Partition, int]:
        return {tp: len(self.log.topics[tp.topic][tp.partition]) for tp in tps}

    def highwater(self, tp: Partition) -> int | None:
        return len(self.log.topics[tp.topic][tp.partition])

    def close(self, autocommit: bool = True) -> None:
        self.closed = True


@contextlib.contextmanager
def s3_server(bucket: str = "screener") -> Iterator[dict[str, str]]:
    """A real S3-compatible server on loopback (``moto``'s server mode: the ``test`` extra) with ``bucket``
    created. Yields the ``storage_options`` for :func:`screener.history.open_store` (also usable as ``AWS_*``
    environment variables, upper-cased, for a subprocess); stops the server on exit."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "aws_endpoint_url": f"http://{host}:{port}",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "aws_region": "us-east-1",
        "aws_allow_http": "true",
    }
    try:
        boto3.client(
            "s3",
            endpoint_url=options["aws_endpoint_url"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=bucket)
        yield options
    finally:
        server.stop()


if TYPE_CHECKING:  # mypy checks here that the fakes keep satisfying the engine's edge protocols
    from screener.engine.base import Consumer, Producer

    def _fakes_satisfy_the_engine_protocols(log: InMemoryLog) -> tuple[Consumer, Producer]:
        return InMemoryConsumer(log), InMemoryProducer(log)
