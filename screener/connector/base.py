"""The connector interface: what every EHR adapter in ``connectors/`` implements, and where it sends events.

A connector is discovered through the entry-point group ``screener.connectors`` (see
:mod:`screener.connector.registry`) and exposes a click command; ``screener connect NAME`` runs that command.
Connectors never talk to Kafka directly: they hand canonical events to an :class:`EventSink`, which
returns only once the broker has acknowledged every one of them (so an HL7 ACK can wait on it), and they
hand every input they reject to :meth:`EventSink.dead_letter` with a reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import click

from screener.events import Event

if TYPE_CHECKING:
    from screener.settings import Settings

__all__ = [
    "Connector",
    "EventSink",
    "Feed",
    "MemorySink",
    "PublishingSink",
    "RecordSink",
    "Rejection",
    "SimpleConnector",
    "SinkFactory",
]


@runtime_checkable
class EventSink(Protocol):
    """Where connectors put what they read.

    ``publish`` returns only after the broker acknowledged every event (acks=all), or raises
    :class:`~screener.errors.DeliveryError`; nothing is acknowledged upstream before it returns.
    ``dead_letter`` records an input that was rejected: the original ``payload`` (bytes or text), the
    ``source`` connector name, the ``position`` in the source (file:line, socket peer and control id, ...)
    and a human ``reason``. It also returns only after the broker acknowledged the record.
    """

    def publish(self, events: Sequence[Event]) -> None: ...

    def dead_letter(self, payload: bytes | str, source: str, position: str, reason: str) -> None: ...


@runtime_checkable
class RecordSink(Protocol):
    """What a bulk loader needs of its sink: ``publish_raw`` of pre-serialised ``(key, value)`` records (key = patient
    id, value = the event's JSON), returning the record count once all are acknowledged. A
    :class:`PublishingSink` is one; a test can pass a small class with only this method."""

    def publish_raw(self, records: Iterable[tuple[bytes, bytes]]) -> int: ...


@runtime_checkable
class PublishingSink(EventSink, Protocol):
    """The sink a connector command gets from ``sink_factory``: an :class:`EventSink` that also takes
    pre-serialised records (bulk loaders that build the event JSON themselves) and must be closed.

    ``publish_raw`` sends ``(key, value)`` pairs (key = patient id, value = the event's JSON) to the events
    topic, returns the record count once all are acknowledged, and raises like ``publish``. ``close`` flushes
    and releases the producer; nothing may be published after it.
    """

    def publish_raw(self, records: Iterable[tuple[bytes, bytes]]) -> int: ...

    def close(self) -> None: ...


class SinkFactory(Protocol):
    """``sink_factory(name, **producer_options)``, passed to a command decorated with ``connector_options``.

    ``name`` is the connector's name (metric label, dead-letter key); ``producer_options`` override the
    Kafka producer's throughput defaults (``linger_ms``, ``batch_size``, ...) and are ignored by ``--dry-run``.
    ``settings`` are the effective settings (command-line overrides applied); ``dry_run`` is true when the sink
    is stdout (no broker, so no health probe).
    """

    @property
    def settings(self) -> Settings: ...

    @property
    def dry_run(self) -> bool: ...

    def __call__(self, name: str, /, **producer_options: object) -> PublishingSink: ...


@runtime_checkable
class Connector(Protocol):
    """An EHR adapter. ``name`` is the entry-point name; ``summary`` one line for ``connect --list``.

    ``command()`` builds the click command that runs it (``screener connect NAME [OPTIONS]``).
    """

    name: str
    summary: str

    def command(self) -> click.Command: ...


class Feed(Protocol):
    """An in-process source of canonical events, one patient's list at a time (``screener demo`` runs one).

    ``feed(n, seed=S, now=T, start_index=I)`` yields the events of patients ``I .. I+n-1``, the person event
    first; the same arguments always give the same events.
    """

    def __call__(
        self, n: int, *, seed: int, now: datetime | None = None, start_index: int = 0
    ) -> Iterable[Sequence[Event]]: ...


@dataclass(frozen=True)
class SimpleConnector:
    """A :class:`Connector` made of a name, a summary and a factory for its click command.

    ``feed``: optional, for a connector that can also generate events in process (found with
    :func:`screener.connector.registry.load_feed`).
    ``history_source``: optional, for a connector that can write a backfill straight into the history store
    (``screener backfill NAME PATH --into-store URL``; found with
    :func:`screener.connector.registry.load_history_source`): called as ``history_source(path, tables=...,
    chunk_rows=..., now=...)``, it yields the event frames (:func:`screener.ingest` shape) chunk by chunk and raises
    ``click.BadParameter`` for a bad option. A frame may be given as the function that makes it
    (:data:`screener.history.backfill.Frame`: the backfill calls it on a decode worker).
    """

    name: str
    summary: str
    factory: Callable[[], click.Command]
    feed: Feed | None = None
    history_source: Callable[..., Iterable[Any]] | None = None

    def command(self) -> click.Command:
        return self.factory()


@dataclass(frozen=True)
class Rejection:
    """One dead-lettered input as a :class:`MemorySink` keeps it."""

    payload: bytes | str
    source: str
    position: str
    reason: str


class MemorySink:
    """An :class:`EventSink` that keeps everything in lists. For tests and dry runs (``--dry-run``)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.rejections: list[Rejection] = []

    def publish(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    def dead_letter(self, payload: bytes | str, source: str, position: str, reason: str) -> None:
        self.rejections.append(Rejection(payload, source, position, reason))
