"""``connector_options``: the command-line options every connector command shares, and the sink they choose.

A connector's click command is decorated with :func:`connector_options`; it then takes ``--bootstrap``,
``--topic``, ``--no-idempotence`` and ``--dry-run`` and receives a ``sink_factory`` keyword argument
(a :class:`~screener.connector.base.SinkFactory`) instead of building a Kafka producer itself.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

import click

from screener.connector.base import PublishingSink
from screener.errors import ScreenerError
from screener.events import Event, dump_event

if TYPE_CHECKING:
    from screener.settings import Settings

__all__ = ["connector_options"]

R = TypeVar("R")


class _StdoutSink:
    """``--dry-run``: events as JSON lines on stdout, rejections as JSON lines on stderr."""

    def publish(self, events: Sequence[Event]) -> None:
        out = sys.stdout.buffer
        for ev in events:
            out.write(dump_event(ev) + b"\n")
        out.flush()

    def publish_raw(self, records: Iterable[tuple[bytes, bytes]]) -> int:
        n = 0
        for _key, value in records:
            sys.stdout.buffer.write(value + b"\n")
            n += 1
        return n

    def dead_letter(self, payload: bytes | str, source: str, position: str, reason: str) -> None:
        click.echo(json.dumps({"source": source, "position": position, "reason": reason}), err=True)

    def close(self) -> None:
        sys.stdout.flush()


class _SinkFactory:
    """The :class:`~screener.connector.base.SinkFactory` ``connector_options`` passes: Kafka, or stdout."""

    def __init__(self, settings: Settings, *, dry_run: bool) -> None:
        self.settings = settings
        self.dry_run = dry_run

    def __call__(self, name: str, /, **producer_options: object) -> PublishingSink:
        if self.dry_run:
            return _StdoutSink()
        from screener.connector.kafka import sink_from_settings

        return sink_from_settings(self.settings, name, producer_options=producer_options or None)


def connector_options(func: Callable[..., R]) -> Callable[..., R]:
    """Decorator for connector commands: ``--bootstrap``, ``--topic``, ``--dry-run``; passes ``sink_factory``.

    ``sink_factory(name, **producer_options)`` returns a :class:`~screener.connector.base.PublishingSink`: a
    Kafka sink built from :class:`~screener.settings.Settings` (topics created if missing), or stdout with
    ``--dry-run``; ``sink_factory.settings`` are those settings (command-line overrides applied: listener
    limits, health) and ``sink_factory.dry_run`` the flag. A :class:`~screener.errors.ScreenerError` raised by
    the command (an invalid setting included) becomes a click error (message on stderr, exit status 1) instead
    of a traceback.
    """

    @click.option(
        "--bootstrap",
        envvar="SCREENER_BOOTSTRAP_SERVERS",
        default=None,
        help="Kafka bootstrap servers (env SCREENER_BOOTSTRAP_SERVERS).",
    )
    @click.option(
        "--topic",
        envvar="SCREENER_EVENTS_TOPIC",
        default=None,
        help="Events topic (env SCREENER_EVENTS_TOPIC; default ehr.events).",
    )
    @click.option(
        "--no-idempotence",
        is_flag=True,
        default=False,
        help="Plain acks=all producer (the embedded tansu broker rejects idempotent produce).",
    )
    @click.option("--dry-run", is_flag=True, help="Print events as JSON lines instead of publishing.")
    @functools.wraps(func)
    def wrapper(
        *args: object, bootstrap: str | None, topic: str | None, no_idempotence: bool, dry_run: bool, **kwargs: object
    ) -> R:
        from screener.logging import configure_logging
        from screener.settings import load_settings

        base = load_settings()
        configure_logging(base.log_level, base.log_format)

        overrides: dict[str, str | bool | None] = {"bootstrap_servers": bootstrap, "events_topic": topic}
        if no_idempotence:
            overrides["producer_idempotence"] = False
        try:
            sink_factory = _SinkFactory(load_settings(None, **overrides), dry_run=dry_run)
            return func(*args, sink_factory=sink_factory, **kwargs)
        except ScreenerError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper
